"""The seed optimizers, each with its Optax twin, shared by run.py and convergence.py.

Each entry builds ours and Optax's optimizer from a learning rate (a float, or
a traced scalar when a benchmark vmaps over rates). Every other argument is
left at its default, which both libraries share.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import optax

import jaxopt_zoo as jz

MakeOptimizer = Callable[[Any], Any]  # learning rate -> GradientTransformation (ours or Optax's)
ExtraArgs = Callable[[Any, Any], dict[str, Any]]  # (params, grads) -> the update's keyword arguments


class SeedOptimizer(NamedTuple):
    ours: MakeOptimizer
    optax: MakeOptimizer
    learning_rate: float  # a typical rate, for benchmarks where only the cost of a step matters
    # For the rules that read the loss (Polyak's step, line searches): the same keywords go to both libraries.
    # The loss is half the squared norm of the params (its gradient is the params), so the cost of evaluating it
    # is the same for both; convergence.py, whose loops pass no keywords, leaves these optimizers out.
    extra_args: ExtraArgs | None = None
    # For the rules whose training point is not the point to evaluate (Schedule-Free): ``(opt_state, params) ->
    # params`` at which convergence.py measures the loss and accuracy.
    evaluate_at: Callable[[Any, Any], Any] | None = None


def half_squared_norm(params: Any) -> jax.Array:
    return 0.5 * sum(jax.numpy.vdot(p, p) for p in jax.tree.leaves(params))


def loss_value(params: Any, grads: Any) -> dict[str, Any]:
    return {"value": half_squared_norm(params)}


def loss_value_grad_and_fn(params: Any, grads: Any) -> dict[str, Any]:
    return {"value": half_squared_norm(params), "grad": grads, "value_fn": half_squared_norm}


def loss_value_and_objective(params: Any, grads: Any) -> dict[str, Any]:
    """MoMo reads ``value``, Sophia's Hutchinson estimator differentiates ``obj_fn`` (each ignores the other)."""
    return {"value": half_squared_norm(params), "obj_fn": half_squared_norm}


SEED_OPTIMIZERS: dict[str, SeedOptimizer] = {
    "sgd": SeedOptimizer(jz.sgd, optax.sgd, 1e-2),
    "momentum": SeedOptimizer(lambda lr: jz.sgd(lr, momentum=0.9), lambda lr: optax.sgd(lr, momentum=0.9), 1e-2),
    "nesterov": SeedOptimizer(
        lambda lr: jz.sgd(lr, momentum=0.9, nesterov=True),
        lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
        1e-2,
    ),
    "adagrad": SeedOptimizer(jz.adagrad, optax.adagrad, 1e-2),
    # Keyword for ours: jz.adadelta's learning rate defaults to None (descent at rate 1), Optax's ascends.
    "adadelta": SeedOptimizer(lambda lr: jz.adadelta(learning_rate=lr), optax.adadelta, 1.0),
    "rmsprop": SeedOptimizer(jz.rmsprop, optax.rmsprop, 1e-3),
    "adam": SeedOptimizer(jz.adam, optax.adam, 1e-3),
    "amsgrad": SeedOptimizer(jz.amsgrad, optax.amsgrad, 1e-3),
    "adamw": SeedOptimizer(jz.adamw, optax.adamw, 1e-3),
    "nadam": SeedOptimizer(jz.nadam, optax.nadam, 1e-3),
    "nadamw": SeedOptimizer(jz.nadamw, optax.nadamw, 1e-3),
    "lars": SeedOptimizer(jz.lars, optax.lars, 1e-2),
    "lamb": SeedOptimizer(jz.lamb, optax.lamb, 1e-3),
    # Optax's rprop is the twin in cost; in numbers it is one step late (see jz.scale_by_resilient_step).
    "torch.rprop": SeedOptimizer(lambda lr: jz.torch.rprop(lr=lr), optax.rprop, 1e-2),
    # Optax has no ASGD: optax.sgd is only the nearest cost baseline (same bytes but ASGD's average), not a twin.
    "torch.asgd": SeedOptimizer(lambda lr: jz.torch.asgd(lr=lr), optax.sgd, 1e-2),
    # PyTorch's classic rules against Optax's of the same names: twins in cost, not all in numbers (PyTorch's
    # Adagrad starts its sum at 0 and adds eps 1e-10 outside the root, Optax's at 0.1 with eps 1e-7; PyTorch's
    # RMSprop decays by 0.99 and adds eps outside the root, Optax's by 0.9 inside it; PyTorch's AdamW decays the
    # weights by 1e-2, Optax's by 1e-4). torch.lbfgs is left out: one step is up to 20 iterations (max_iter).
    "torch.sgd": SeedOptimizer(lambda lr: jz.torch.sgd(lr=lr, momentum=0.9), lambda lr: optax.sgd(lr, momentum=0.9),
                               1e-2),
    "torch.adagrad": SeedOptimizer(lambda lr: jz.torch.adagrad(lr=lr), optax.adagrad, 1e-2),
    "torch.adadelta": SeedOptimizer(lambda lr: jz.torch.adadelta(lr=lr), optax.adadelta, 1.0),
    "torch.rmsprop": SeedOptimizer(lambda lr: jz.torch.rmsprop(lr=lr), optax.rmsprop, 1e-2),
    "torch.adam": SeedOptimizer(lambda lr: jz.torch.adam(lr=lr), optax.adam, 1e-3),
    "torch.adamw": SeedOptimizer(lambda lr: jz.torch.adamw(lr=lr), optax.adamw, 1e-3),
    # Optax has no SparseAdam: optax.adam is the cost baseline (these gradients are dense: every entry moves).
    "torch.sparse_adam": SeedOptimizer(lambda lr: jz.torch.sparse_adam(lr=lr), optax.adam, 1e-3),
    "torch.adamax": SeedOptimizer(lambda lr: jz.torch.adamax(lr=lr), optax.adamax, 2e-3),  # the same rule
    # Optax's nadam fixes mu_t = b1 (no momentum_decay): the twin in cost, not in numbers.
    "torch.nadam": SeedOptimizer(lambda lr: jz.torch.nadam(lr=lr), optax.nadam, 2e-3),
    # Optax's radam adds eps after the bias correction, PyTorch's before: equal numbers only with eps=0.
    "torch.radam": SeedOptimizer(lambda lr: jz.torch.radam(lr=lr), optax.radam, 1e-3),
    # Optax's adafactor factors only dims >= 128 (its two largest), adds eps to g^2 and has a fixed rate
    # where PyTorch's is min(lr, 1/sqrt(t)): the twin in cost, equal in numbers only where these coincide.
    "torch.adafactor": SeedOptimizer(lambda lr: jz.torch.adafactor(lr=lr), optax.adafactor, 1e-2),
    # PyTorch's Muon takes matrices only: ours gives the other leaves NAdamW, as optax.contrib.muon does (its
    # adamw(nesterov=True)). Optax's weight decay is set to PyTorch's 0.1. Same work per step; different numbers
    # (Optax's bias-corrected Nesterov blend, eps added to the norm, transposed width factor: see jz.torch.muon).
    "torch.muon": SeedOptimizer(
        lambda lr: jz.partition(
            {"muon": jz.torch.muon(lr=lr), "adam": jz.nadamw(lr, weight_decay=0.0)},
            lambda params: jax.tree.map(lambda p: "muon" if p.ndim == 2 else "adam", params),
        ),
        lambda lr: optax.contrib.muon(lr, weight_decay=0.1),
        2e-2,
    ),
    # optax.contrib.muon's own rule (Muon on matrices, NAdamW on the rest): the twin in cost and in numbers.
    "muon": SeedOptimizer(jz.muon, optax.contrib.muon, 2e-2),
    # The sign methods: the same rules as Optax's, so twins in cost and in numbers.
    "sign_sgd": SeedOptimizer(jz.sign_sgd, optax.sign_sgd, 1e-3),
    "signum": SeedOptimizer(jz.signum, optax.signum, 1e-3),
    "lion": SeedOptimizer(jz.lion, optax.lion, 1e-4),
    # Factored second moments: Optax's Adafactor recipe (no sm3 twin: optax.sm3 raises on scalar params).
    "adafactor": SeedOptimizer(jz.adafactor, optax.adafactor, 1e-2),
    # Adam's relatives: Optax's rules under Optax's names (radam forms rho_t without float32 cancellation).
    "adamax": SeedOptimizer(jz.adamax, optax.adamax, 2e-3),
    "adamaxw": SeedOptimizer(jz.adamaxw, optax.adamaxw, 2e-3),
    "radam": SeedOptimizer(jz.radam, optax.radam, 1e-3),
    "yogi": SeedOptimizer(jz.yogi, optax.yogi, 1e-2),
    "adabelief": SeedOptimizer(jz.adabelief, optax.adabelief, 1e-3),
    # Adan weights its gradient difference by b2 as the authors' code (Optax by 1 - b2): the same cost, other numbers.
    "adan": SeedOptimizer(jz.adan, optax.adan, 1e-3),
    # Layer-wise rules: Optax's NovoGrad and Fromage, twins in cost and in numbers.
    "novograd": SeedOptimizer(jz.novograd, optax.novograd, 1e-2),
    "fromage": SeedOptimizer(jz.fromage, optax.fromage, 1e-2),
    # Gradient noise and optimistic steps: Optax's rules (the same key gives the same draws), twins in cost and numbers.
    "noisy_sgd": SeedOptimizer(lambda lr: jz.noisy_sgd(lr, key=0), lambda lr: optax.noisy_sgd(lr, key=0), 1e-2),
    "optimistic_gradient_descent": SeedOptimizer(jz.optimistic_gradient_descent, optax.optimistic_gradient_descent, 1e-2),
    "optimistic_adam_v2": SeedOptimizer(jz.optimistic_adam_v2, optax.optimistic_adam_v2, 1e-3),
    # Optax's rprop (one step late, as Optax computes it): the twin in cost and in numbers.
    "rprop": SeedOptimizer(jz.rprop, optax.rprop, 1e-2),
    # optax.contrib's Adam family: the same rules as Optax's, twins in cost and in numbers, except ACProp, whose
    # second moment Optax centres on the previous mean (the same work per step; see jz.scale_by_acprop).
    "adopt": SeedOptimizer(jz.adopt, optax.contrib.adopt, 1e-3),
    "ademamix": SeedOptimizer(jz.ademamix, optax.contrib.ademamix, 1e-3),
    "simplified_ademamix": SeedOptimizer(jz.simplified_ademamix, optax.contrib.simplified_ademamix, 1e-4),
    "acprop": SeedOptimizer(jz.acprop, optax.contrib.acprop, 1e-3),
    "madgrad": SeedOptimizer(jz.madgrad, optax.contrib.madgrad, 1e-2),
    # SAM (transparent mode: every other call is the ascent step), SGD outside, normalised SGD as the adversary:
    # optax.contrib.sam's recipe, twins in cost and numbers. (dpsgd needs per-example gradients: not in this harness.)
    "sam": SeedOptimizer(
        lambda lr: jz.sam(jz.sgd(lr), jz.chain(jz.normalize(), jz.sgd(0.05))),
        lambda lr: optax.contrib.sam(optax.sgd(lr), optax.chain(optax.contrib.normalize(), optax.sgd(0.05))),
        1e-2,
    ),
    # Optax's sm3 raises on scalar params; the benchmark trees have none.
    "sm3": SeedOptimizer(jz.sm3, optax.sm3, 1e-2),
    "polyak_sgd": SeedOptimizer(lambda lr: jz.polyak_sgd(lr), lambda lr: optax.polyak_sgd(lr), 1.0, loss_value),
    # L-BFGS with its zoom line search: value_fn is evaluated inside the search, the same number of times in both.
    "lbfgs": SeedOptimizer(jz.lbfgs, optax.lbfgs, 1.0, loss_value_grad_and_fn),
    # GaLore (rank 128, Adam in the projected space, an SVD refresh every 200 steps): Optax's contrib rule,
    # twins in cost and in numbers.
    "galore": SeedOptimizer(jz.galore, optax.contrib.galore, 1e-3),
    # Schedule-Free AdamW: the same recipe as optax.contrib's (z beside Adam's second moment), twins in cost and numbers.
    "schedule_free_adamw": SeedOptimizer(jz.schedule_free_adamw, optax.contrib.schedule_free_adamw, 2.5e-3,
                                         evaluate_at=jz.schedule_free_eval_params),
    "schedule_free_sgd": SeedOptimizer(jz.schedule_free_sgd, optax.contrib.schedule_free_sgd, 1e-2,
                                       evaluate_at=jz.schedule_free_eval_params),
    # D-adaptation: Optax's contrib rules, twins in cost and in numbers (the rate is a multiplier of the estimate d).
    "prodigy": SeedOptimizer(jz.prodigy, optax.contrib.prodigy, 1.0),
    "dadapt_adamw": SeedOptimizer(jz.dadapt_adamw, optax.contrib.dadapt_adamw, 1.0),
    # Parameter-free rules (optax.contrib): the rate is a multiplier of the learned step; twins in cost and numbers.
    "dog": SeedOptimizer(jz.dog, optax.contrib.dog, 1.0),
    "dowg": SeedOptimizer(jz.dowg, optax.contrib.dowg, 1.0),
    "cocob": SeedOptimizer(jz.cocob, optax.contrib.cocob, 1.0),
    # Mechanic learns the scale of Adam's updates, whose own rate is then 1 (Mechanic's advice); both keep x0
    # beside Adam's moments.
    "mechanize_adam": SeedOptimizer(
        lambda lr: jz.mechanize(jz.adam(lr)), lambda lr: optax.contrib.mechanize(optax.adam(lr)), 1.0
    ),
    # MoMo (optax.contrib): the loss value at each step; twins in cost and numbers (weight decay 0: with decay
    # Optax's step differs, see jz.momo). Sophia: a Hessian-vector product every update_interval (10) steps.
    "momo": SeedOptimizer(jz.momo, optax.contrib.momo, 1.0, loss_value_and_objective),
    "momo_adam": SeedOptimizer(jz.momo_adam, optax.contrib.momo_adam, 1e-2, loss_value_and_objective),
    "sophia": SeedOptimizer(jz.sophia, optax.contrib.sophia, 1e-3, loss_value_and_objective),
    # C-AdamW and MARS-AdamW: no Optax twin; optax.adamw as the baseline (C-AdamW adds a sign mask and a count
    # per leaf, MARS-AdamW a previous-gradient read/write and a norm per leaf, to AdamW's work).
    "cautious_adamw": SeedOptimizer(jz.cautious_adamw, optax.adamw, 1e-3),
    "mars_adamw": SeedOptimizer(jz.mars_adamw, optax.adamw, 3e-3),
    # Their Lion and SGD relatives, against the rule they mask or correct (Optax's lion and SGD with momentum).
    "cautious_lion": SeedOptimizer(jz.cautious_lion, optax.lion, 1e-4),
    "cautious_sgd": SeedOptimizer(lambda lr: jz.cautious_sgd(lr, momentum=0.9), lambda lr: optax.sgd(lr, momentum=0.9),
                                  1e-2),
    "mars_lion": SeedOptimizer(jz.mars_lion, optax.lion, 1e-4),
    # Shampoo (Adam-grafted, roots refreshed every 10 steps as issue 19's speed goal asks): no Optax twin; the issue
    # compares it with optax.adamw.
    "shampoo": SeedOptimizer(lambda lr: jz.shampoo(lr, precondition_frequency=10), optax.adamw, 1e-3),
    # SOAP (official defaults, bases refreshed every 10 steps as issue 19's speed goal asks): no Optax twin; the
    # issue compares it with optax.adamw.
    "soap": SeedOptimizer(lambda lr: jz.soap(lr, precondition_frequency=10), optax.adamw, 3e-3),
    # PSGD-Kron (psgd-jax's defaults: the preconditioner fitted with probability 1 for 500 steps, then less often):
    # no Optax twin; optax.adamw as the baseline, as issue 19 compares it.
    "psgd_kron": SeedOptimizer(lambda lr: jz.psgd_kron(lr), optax.adamw, 1e-3),
}


# Left out of run.py's full CPU run unless named in --optimizers: Newton-Schulz on its 4096 x 4096 leaf is
# ~2 TFLOP a step, about 70 s on a 2-core CPU (the `muon` part times it at smaller sizes).
SLOW_ON_CPU = {"torch.muon"}
# GaLore's first step (an SVD refresh) takes the SVD of that 4096 x 4096 leaf, tens of seconds on such a CPU.
SLOW_ON_CPU |= {"galore"}
SLOW_ON_CPU |= {"muon"}  # the same Newton-Schulz work as torch.muon
# Compiling the step on 1024 leaves takes too long on a 2-core CPU, in both libraries alike: on 64 leaves of 1024
# polyak_sgd compiles in 2.1 s (Optax's 2.2 s) and lbfgs in 18.9 s (Optax's 20.0 s); on the 1024-leaf tree
# polyak_sgd had not finished after 35 minutes of a loaded machine. Name them in --optimizers to run them.
SLOW_ON_CPU |= {"polyak_sgd", "lbfgs", "noisy_sgd"}
# SOAP on the 4096 x 4096 leaf (one block at max_precond_dim=10000): two 4096 x 4096 eigh at the first step and
# six 4096^3 matrix products every step (rotations and factors): measured on a loaded 2-core CPU, 61 s for the
# first step (the eigh) and 20-40 s for each later one.
SLOW_ON_CPU |= {"soap"}
# Shampoo on the 4096 x 4096 leaf (16 blocks of 1024 at max_precond_dim=1024): four 1024^3 products per block every
# step (statistics, preconditioning); measured on a loaded 2-core CPU, 6.3 s a step (AdamW: 0.58 s in the same run).
SLOW_ON_CPU |= {"shampoo"}


def select(names: str | list[str] | None) -> dict[str, SeedOptimizer]:
    """The optimizers named in a list or a comma-separated string (all of them for ``None``), in the table's order.

    Raises ValueError for an unknown name or an empty list."""
    if names is None:
        return dict(SEED_OPTIMIZERS)
    wanted = [name.strip() for name in (names.split(",") if isinstance(names, str) else names) if name.strip()]
    if not wanted:
        raise ValueError(f"no optimizer named in {names!r}; choose from {', '.join(SEED_OPTIMIZERS)}")
    unknown = sorted(set(wanted) - set(SEED_OPTIMIZERS))
    if unknown:
        raise ValueError(f"unknown optimizers {unknown}; choose from {', '.join(SEED_OPTIMIZERS)}")
    return {name: pair for name, pair in SEED_OPTIMIZERS.items() if name in wanted}
