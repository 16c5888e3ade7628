"""Orbax checkpoints: a run saved mid-way and resumed into fresh objects is bit for bit the uninterrupted run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import jaxopt_zoo as jz
from tests.conftest import assert_trees_equal, grad_fn, make_params
from tests.test_linesearch import on_objective, rosenbrock
from tests.test_momo_sophia import driven

STEPS, SAVE_AT = 8, 5


def _gradients(params, t, nan_step: bool):
    grads = jax.tree.map(lambda p: grad_fn(p, t, jnp).astype(p.dtype), params)
    if nan_step:  # a non-finite step before the save, for apply_if_finite to skip and count
        grads = jax.tree.map(lambda g: jnp.where(t == 3, jnp.nan, g), grads)
    return grads


CASES = {
    "selective_transform": lambda: jz.combine.selective_transform(
        jz.adam(1e-2), freeze_mask={"dense": {"w": False, "b": True}, "scale": False}
    ),
    "flatten": lambda: jz.combine.flatten(jz.chain(jz.clip_by_global_norm(1.0), jz.adam(1e-2))),
    "inject_stateful_hyperparams": lambda: jz.wrappers.inject_stateful_hyperparams(jz.adamw)(
        learning_rate=jz.linear_schedule(1e-2, 1e-3, STEPS), weight_decay=0.1
    ),
    "chain": lambda: jz.chain(
        jz.clip_by_global_norm(1.0),
        jz.scale_by_adam(),
        jz.add_decayed_weights(1e-2, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
        jz.scale_by_learning_rate(jz.cosine_decay_schedule(1e-2, STEPS)),
    ),
    "inject_hyperparams": lambda: jz.inject_hyperparams(jz.adamw)(
        learning_rate=jz.linear_schedule(1e-2, 1e-3, STEPS), weight_decay=0.1
    ),
    # Saved after 5 micro-steps of 3: the checkpoint holds a half-full accumulator.
    "MultiSteps": lambda: jz.MultiSteps(jz.lamb(1e-2), every_k_schedule=3),
    "apply_if_finite": lambda: jz.apply_if_finite(jz.sgd(0.1, momentum=0.9, nesterov=True), 2),
    "partition": lambda: jz.partition({"adam": jz.amsgrad(1e-2), "sgd": jz.rmsprop(1e-2, centered=True)},
                                      {"dense": {"w": "adam", "b": "sgd"}, "scale": "sgd"}),
    "torch": lambda: jz.torch.adam(lr=1e-2, amsgrad=True, weight_decay=0.1),
    "lookahead": lambda: jz.lookahead(jz.adam(1e-2), sync_period=3, slow_step_size=0.5),
    "torch.rprop": lambda: jz.torch.rprop(lr=0.05, prev_dtype=jnp.bfloat16),
    "torch.asgd": lambda: jz.torch.asgd(lr=0.05, t0=2.0, ax_dtype=jz.StochasticBF16()),
    # NAdam keeps the running product of its momentum coefficients, a float32 scalar, in its state.
    "torch.nadam": lambda: jz.torch.nadam(lr=1e-2, weight_decay=0.1, nu_dtype=jz.StochasticBF16()),
    "torch.sparse_adam": lambda: jz.torch.sparse_adam(lr=1e-2, nu_dtype=jz.Blockwise8Bit(min_size=0, max_shards=1)),
    # Row and column factors, and scalar stand-ins where a param has no such moment.
    "torch.adafactor": lambda: jz.torch.adafactor(lr=0.1, weight_decay=0.1, variance_dtype=jz.StochasticBF16()),
    # Muon for the matrix, AdamW for the vector and the scalar (torch.optim.Muon takes 2-D params only).
    "torch.muon": lambda: jz.partition(
        {"muon": jz.torch.muon(lr=0.02, mu_dtype=jz.StochasticBF16()), "adamw": jz.torch.adamw(lr=1e-2)},
        lambda params: jax.tree.map(lambda p: "muon" if p.ndim == 2 else "adamw", params),
    ),
    # Lion's momentum stochastically rounded to bfloat16: its draws depend on the restored step count.
    "lion": lambda: jz.lion(1e-2, weight_decay=0.1, mu_dtype=jz.StochasticBF16()),
    # optax.contrib.muon: Muon (count, momentum, Newton-Schulz coefficients) for the matrix, NAdamW for the rest.
    "muon": lambda: jz.muon(1e-2, ns_coeffs="dion", weight_decay=0.1, mu_dtype=jz.StochasticBF16()),
    # Adafactor with the matrix factored (row and column moments, (1,) stand-ins) and a rounded momentum.
    "adafactor": lambda: jz.adafactor(1e-2, 3, momentum=0.9, dtype_momentum=jz.StochasticBF16()),
    # SM3's per-axis accumulator lists, stochastically rounded: the count field exists only for the rounding.
    "sm3": lambda: jz.sm3(1e-2, mu_dtype=jz.StochasticBF16()),
    # AdaBelief with Nesterov momentum, its first moment stochastically rounded to bfloat16.
    "adabelief": lambda: jz.adabelief(1e-2, nesterov=True, mu_dtype=jz.StochasticBF16()),
    # Adan keeps the previous gradient; its count field exists only for the stochastic rounding.
    "adan": lambda: jz.adan(1e-2, weight_decay=0.1, g_dtype=jz.StochasticBF16()),
    # NovoGrad's per-array second moments (scalars, one bfloat16 for the bfloat16 param) and a rounded first moment.
    "novograd": lambda: jz.novograd(1e-2, weight_decay=0.1, mu_dtype=jz.StochasticBF16()),
    # The optimistic step's first-step flag and previous ratio, stochastically rounded to bfloat16.
    "optimistic_adam_v2": lambda: jz.optimistic_adam_v2(1e-2, previous_gradient_dtype=jz.StochasticBF16()),
    # DoG's per-array distances and gradient sums, and its initial params kept in bfloat16.
    "distance_over_gradients": lambda: jz.chain(
        jz.scale_by_distance_over_gradients(1e-2, param_dtype=jnp.bfloat16), jz.scale(-1.0)
    ),
    # Global DoG: the first-step flag, the initial params stochastically rounded to bfloat16 (a count for the draws).
    "dog": lambda: jz.dog(init_step=("learning_rate", 1e-2), param_dtype=jz.StochasticBF16()),
    # COCOB's five per-parameter trees, its four sums stochastically rounded to bfloat16.
    "cocob": lambda: jz.cocob(weight_decay=1e-2, accumulator_dtype=jz.StochasticBF16()),
    # Mechanic past its first step: a resume keeps x0 (taken at the first update) and Adam's state inside.
    "mechanize": lambda: jz.mechanize(jz.adam(1e-2), s_init=1e-2, num_betas=3),
    # Saved after 5 steps of groups of 3: a partial sum, stochastically rounded to bfloat16, waits in the state.
    "apply_every": lambda: jz.chain(jz.apply_every(3, accumulator_dtype=jz.StochasticBF16()), jz.adam(1e-2)),
    # A step counter deciding the next branch, and measurements whose structure is fixed from init on.
    "conditionally_mask+monitor": lambda: jz.chain(
        jz.conditionally_mask(jz.sgd(0.1, momentum=0.9), lambda step: step % 2 == 0),
        jz.monitor({"norm": jz.tree.global_norm, "norm_ema": jz.measure_with_ema(jz.tree.global_norm, 0.9)}),
    ),
    # L-BFGS's secant ring buffer mid-way, and the zoom search's stored value and gradient, which the next step
    # reuses (on_objective drives it with a fixed objective, whatever gradients the step is given).
    "lbfgs": lambda: on_objective(jz.lbfgs(memory_size=3, memory_dtype=jnp.bfloat16), rosenbrock),
    # Optax's rprop returns its previous step from the state: a resume must hand back that step.
    "rprop": lambda: jz.rprop(0.05, prev_dtype=jz.StochasticBF16()),
    # MoMo-Adam's loss and inner-product averages and its adapted lower bound (bfloat16 scalars: the lowest param
    # dtype), driven by the loss at each step; its second moment stochastically rounded.
    "momo_adam": lambda: driven(jz.momo_adam(1e-2, adapt_lower_bound=True, nu_dtype=jz.StochasticBF16())),
    # Sophia saved between Hessian refreshes: the Hutchinson key and the count decide the next refresh and draw.
    "sophia": lambda: driven(jz.sophia(1e-2, update_interval=3, nu_dtype=jz.StochasticBF16())),
    # ADOPT saved after its first (recording) step: its count decides the decays and the clipping bound.
    "adopt": lambda: jz.adopt(1e-2, nesterov=True, nu_dtype=jz.StochasticBF16()),
    # AdEMAMix's two step counts drive the b3 and alpha schedules; its slow EMA is stochastically rounded.
    "ademamix": lambda: jz.ademamix(1e-2, b3=lambda step: 0.99 - 0.09 / (1.0 + step),
                                    alpha=lambda step: jnp.minimum(step, 5.0), m2_dtype=jz.StochasticBF16()),
    # MADGRAD keeps the initial params: a resume must anchor its steps to them, not to the restored params.
    "madgrad": lambda: jz.madgrad(1e-2, weight_decay=0.1, s_dtype=jz.StochasticBF16()),
    # GaLore saved between SVD refreshes (every 3 steps): projectors, and Adam's moments in the projected space
    # with its first moment stochastically rounded to bfloat16.
    "galore": lambda: jz.galore(1e-2, rank=2, update_proj_gap=3, weight_decay=0.1,
                                base_optimizer=jz.scale_by_adam(mu_dtype=jz.StochasticBF16())),
    # SAM mid-period (5 steps of 3): the params cache, the step within the period, Adam's and the adversary's states.
    "sam": lambda: jz.sam(jz.adam(1e-2), jz.chain(jz.normalize(), jz.sgd(0.05, momentum=0.5)), sync_period=3,
                          reset_state=False),
    # reduce_on_plateau mid-accumulation and mid-cooldown, fed the gradients' norm as its value= (a stand-in loss).
    "reduce_on_plateau": lambda: (lambda tx: jz.GradientTransformation(
        tx.init, lambda u, s, p=None: tx.update(u, s, p, value=jz.tree.global_norm(u))
    ))(jz.chain(jz.sgd(0.1), jz.reduce_on_plateau(0.5, patience=1, rtol=0.5, cooldown=1, accumulation_size=2))),
    # Schedule-Free: the iterate z stochastically rounded (its draws read the restored 1-based step), mid-warmup.
    "schedule_free_adamw": lambda: jz.schedule_free_adamw(1e-2, warmup_steps=6, weight_decay=0.1,
                                                          state_dtype=jz.StochasticBF16()),
    # Schedule-Free SGD under an injected, scheduled rate and under gradient accumulation.
    "inject_hyperparams+schedule_free_sgd": lambda: jz.inject_hyperparams(jz.schedule_free_sgd)(
        learning_rate=jz.linear_schedule(0.1, 0.01, STEPS), weight_decay=1e-2
    ),
    "MultiSteps+schedule_free_adamw": lambda: jz.MultiSteps(jz.schedule_free_adamw(1e-2), every_k_schedule=2),
    # D-adaptation: whole-tree scalars (d, its numerator) and Prodigy's copy of the initial params, in bfloat16.
    "prodigy": lambda: jz.prodigy(0.5, estim_lr0=1e-3, weight_decay=0.1, exp_avg_dtype=jz.StochasticBF16(),
                                  params0_dtype=jnp.bfloat16),
    "dadapt_adamw": lambda: jz.dadapt_adamw(jz.linear_schedule(0.0, 1.0, 4), grad_sum_dtype=jz.StochasticBF16()),
    # PSGD-Kron mid-run: the key data decides the next update draws and probes, the count the stochastic rounding of
    # the momentum; the triangular and diagonal factors (float32, also for the bfloat16 scalar) must come back exact.
    "psgd_kron": lambda: jz.psgd_kron(1e-2, weight_decay=0.1, preconditioner_update_probability=0.5,
                                      mu_dtype=jz.StochasticBF16(), key=3),
    # ... with the factors' products kept (cached): formed on fits only, so a resume must bring them back too.
    "psgd_kron_cached": lambda: jz.psgd_kron(1e-2, preconditioner_update_probability=0.5, key=3, cached=True),
    # Shampoo saved between root refreshes (every 3 steps): blocked factors and roots (float32), the grafting Adam
    # state and both filtered gradients stochastically rounded; the count decides the next refresh.
    "shampoo": lambda: jz.shampoo(1e-2, eps=1e-4, precondition_frequency=3, max_precond_dim=2, weight_decay=0.1,
                                  mu_dtype=jz.StochasticBF16()),
    # SOAP saved between basis refreshes (every 3 steps): blocked factors and eigenbases (float32), Adam's moments
    # in the rotated coordinates (the first stochastically rounded, the second 8-bit); the count decides the next.
    "soap": lambda: jz.soap(1e-2, precondition_frequency=3, max_precond_dim=2, precondition_1d=True,
                            mu_dtype=jz.StochasticBF16(), nu_dtype=jz.Blockwise8Bit()),
    # The bfloat16 param rounded stochastically: its draws depend on the restored step count.
    "round_params_stochastically": lambda: jz.chain(jz.adam(1e-2), jz.round_params_stochastically()),
    # What rounding left out of the bfloat16 param, carried in a stochastically rounded compensation.
    "compensate_params_rounding": lambda: jz.chain(jz.adam(1e-2), jz.compensate_params_rounding(jz.StochasticBF16())),
    # C-AdamW: the wrapped Adam state (its first moment stochastically rounded) inside CautiousState.
    "cautious_adamw": lambda: jz.cautious_adamw(1e-2, weight_decay=0.1, mu_dtype=jz.StochasticBF16()),
    # MARS-AdamW: the previous gradient (stochastically rounded) and the count that says a previous one exists,
    # under a scheduled gamma.
    "mars_adamw": lambda: jz.mars_adamw(1e-2, weight_decay=0.1, gamma=lambda step: 0.01 * jnp.minimum(step, 5.0),
                                        prev_dtype=jz.StochasticBF16()),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_resumed_trajectory_is_bit_identical(name, tmp_path):
    tx = CASES[name]()
    params = make_params()
    params = params | {"scale": params["scale"].astype(jnp.bfloat16)}  # dtypes must survive the round trip
    if name == "lookahead":
        params = jz.LookaheadParams.init_synced(params)

    @jax.jit
    def step(params, state, t):
        grads = _gradients(params.fast if name == "lookahead" else params, t, nan_step=name == "apply_if_finite")
        updates, state = tx.update(grads, state, params)
        return jz.apply_updates(params, updates), state

    def run(params, state, start, stop):
        # Committed to one device, as Orbax restores them: otherwise the resumed run would compile step again.
        params, state = jax.device_put((params, state), jax.devices()[0])
        trajectory = []
        for t in range(start, stop):
            params, state = step(params, state, t)
            trajectory.append((params, state))
        return trajectory

    uninterrupted = run(params, tx.init(params), 1, STEPS + 1)

    checkpointer = ocp.StandardCheckpointer()
    saved_params, saved_state = uninterrupted[SAVE_AT - 1]
    saved = {"params": saved_params, "opt_state": saved_state}
    checkpointer.save(tmp_path / "ckpt", saved)
    checkpointer.wait_until_finished()

    # A fresh optimizer object; its abstract state is the restore target.
    fresh = CASES[name]()
    target = jax.eval_shape(lambda: {"params": params, "opt_state": fresh.init(params)})
    restored = checkpointer.restore(tmp_path / "ckpt", target)
    assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(saved_state)
    assert_trees_equal(restored["opt_state"], saved_state)
    assert [x.dtype for x in jax.tree.leaves(restored)] == [x.dtype for x in jax.tree.leaves(saved)]

    resumed = run(restored["params"], restored["opt_state"], SAVE_AT + 1, STEPS + 1)
    assert len(resumed) == STEPS - SAVE_AT
    for (ours, ours_state), (theirs, theirs_state) in zip(resumed, uninterrupted[SAVE_AT:]):
        assert_trees_equal(ours, theirs)
        assert_trees_equal(ours_state, theirs_state)
    # The resumed steps moved the params, so equality above is not vacuous.
    first, last = jax.tree.leaves(saved_params), jax.tree.leaves(resumed[-1][0])
    assert all(np.isfinite(np.asarray(x, np.float32)).all() for x in last)
    assert any(not np.array_equal(a, b) for a, b in zip(first, last))
