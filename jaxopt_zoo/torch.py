"""``torch.optim``-compatible optimizers: PyTorch's argument names, defaults and update rules.

Each function takes the keyword arguments of the ``torch.optim`` class of the
same name (without ``params``) and returns a :class:`GradientTransformation`
whose parameter trajectory equals PyTorch's for the same gradients. Each is a
``chain(...)`` of the shared transforms, in PyTorch's order of operations:

1. ``maximize=True`` negates the gradient (``scale(-1.0)``);
2. ``weight_decay`` adds :math:`\\lambda \\theta` to it (L2, coupled), except in AdamW;
3. the optimizer's own scaling;
4. the learning rate, last. ``lr`` may be a schedule of the step count
   (0 on the first step), standing in for a ``torch.optim.lr_scheduler``.

Rprop and ASGD hold their rates in their own state (Rprop's ``lr`` is only
its initial step size), AdamW, Adafactor and Muon decay the weights beside the
step (decoupled), and Adam, NAdam and RAdam do so with ``decoupled_weight_decay=True``;
each docstring gives its rule.

Complex parameters are updated as pairs of real numbers, as PyTorch does
(``view_as_real``): each recipe is wrapped in :func:`split_real_and_imaginary`,
except four that raise for complex params at ``init``: ``adafactor``, ``muon`` and
``sparse_adam``, as PyTorch's Adafactor, Muon and SparseAdam refuse them, and ``lbfgs``,
where PyTorch's LBFGS takes them as real pairs (a deviation, named in its docstring).

The options ``foreach``, ``fused``, ``capturable`` and ``differentiable``
select PyTorch kernels, not update rules; they are accepted and have no effect
(everything here is jit-compiled and differentiable). Parameter groups with
their own options are built with ``partition``/``masked``.

Additions to PyTorch: keyword-only ``*_dtype`` options (``mu_dtype``,
``nu_dtype``, ``accumulator_dtype``, ``factors_dtype``, ``ax_dtype``, ...:
one per state buffer, named in each docstring) choose how each buffer is
stored: ``None`` (the params' dtype, as PyTorch), a floating dtype,
``jz.StochasticBF16()``, or ``jz.Blockwise8Bit()`` for 8-bit state (see
:mod:`jaxopt_zoo.storage`).

Deviations from PyTorch: a ``None`` gradient leaves its parameter and state
unchanged, as a ``grad=None`` does in PyTorch, but step counts are kept per
optimizer step, not per parameter, so a parameter whose gradients start late
gets Adam's bias correction, Adagrad's ``lr_decay`` and SGD's undampened first
step from the global step. ``dampening`` must lie in [0, 1] and RMSprop's
``alpha`` in [0, 1) (PyTorch accepts any dampening and any ``alpha >= 0``).
``eps=0`` is accepted as in PyTorch, but where the denominator is then 0 (all
gradients so far zero) Adam's and RMSprop's step is 0, not PyTorch's NaN;
Adadelta's ``eps`` must be positive (with 0 its steps stay 0), and SparseAdam's, as PyTorch's; a denormal
``eps`` (below 1.18e-38, flushed to 0 by the hardware) raises.
A numeric option given as an array (e.g. injected by ``inject_hyperparams``)
keeps its step in the chain even when it is zero, so the state's structure does
not depend on its value; the numbers are PyTorch's either way. Such an array
must be 0-d (PyTorch also takes a one-element tensor such as ``tensor([0.01])``:
pass ``x.reshape(())``, as the error says), and ``betas`` may mix floats and
arrays (PyTorch asks for both floats or both tensors).

    >>> import jaxopt_zoo as jz
    >>> tx = jz.torch.sgd(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-4)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, ScalarOrSchedule, init_only
from jaxopt_zoo.combine import as_real_pairs, chain
from jaxopt_zoo.docstrings import document_args
from jaxopt_zoo.sharding import AxisName
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.transforms import (
    add_decayed_weights,
    clip_by_block_rms,
    scale,
    scale_by_adadelta,
    scale_by_adam,
    scale_by_amsgrad,
    scale_by_learning_rate,
    scale_by_rms,
    scale_by_rss,
    scale_by_schedule,
    scale_by_stddev,
    trace,
)
from jaxopt_zoo.transforms.adam_variants import (
    scale_by_adamax,
    scale_by_radam,
    scale_by_scheduled_nadam,
    scale_by_sparse_adam,
)
from jaxopt_zoo.transforms.adaptive import check_rms_options
from jaxopt_zoo.transforms.averaging import average_iterates, scale_by_asgd
from jaxopt_zoo.transforms.factored import TORCH_COMPLEX_WHY as _ADAFACTOR_COMPLEX_WHY
from jaxopt_zoo.transforms.factored import relative_step_size, scale_by_factored_second_moment, scale_by_param_block_rms
from jaxopt_zoo.transforms.lbfgs import torch_lbfgs
from jaxopt_zoo.transforms.orthogonal import NS_COEFFICIENTS, TORCH_LAYOUT, check_options, newton_schulz
from jaxopt_zoo.transforms.orthogonal import require_matrices, scale_by_muon
from jaxopt_zoo.transforms.rprop import check_options as _check_rprop_options, scale_by_resilient_step

__all__ = [
    "adadelta", "adafactor", "adagrad", "adam", "adamax", "adamw", "asgd", "lbfgs", "muon", "nadam", "radam", "rmsprop",
    "rprop", "sgd", "sparse_adam",
]

Number = float | jax.Array

TORCH_ARGUMENTS = {
    "lr": (
        ":math:`\\gamma \\ge 0`, the learning rate, applied last; or a schedule :math:`\\gamma_t`, a callable of the\n"
        "step count (0 on the first step), standing in for a ``torch.optim.lr_scheduler``."
    ),
    "betas": (
        "``(beta1, beta2)``: :math:`\\beta_1` and :math:`\\beta_2` of the rule above, each in [0, 1); a tuple, a\n"
        "list or an array of two."
    ),
    "eps": ":math:`\\varepsilon \\ge 0`, added to the square root in the denominator; a denormal one raises.",
    "weight_decay": (
        ":math:`\\lambda \\ge 0` (not a schedule): L2 decay, :math:`\\lambda \\theta` added to the gradient\n"
        "(after ``maximize``'s negation), before the rule's own scaling."
    ),
    "amsgrad": (
        "``True``: divide by the running maximum of the raw second moment, bias-corrected after the\n"
        "maximum (PyTorch's AMSGrad)."
    ),
    "decoupled_weight_decay": (
        "``True``: decay the weights beside the step instead,\n"
        ":math:`\\theta \\leftarrow \\theta - \\gamma \\lambda \\theta` (AdamW's rule), with no L2 term."
    ),
    "maximize": "``True``: ascend the objective: the gradient is negated first.",
    "foreach": "accepted and ignored: PyTorch's choice of its multi-tensor kernel.",
    "capturable": "accepted and ignored: PyTorch's option for CUDA-graph capture (XLA compiles the update anyway).",
    "differentiable": "accepted and ignored: PyTorch's option for autograd through the step (JAX's works anyway).",
    "fused": "accepted and ignored: PyTorch's choice of its fused kernel (XLA fuses the compiled update anyway).",
}
"""The arguments that mean the same in several functions of this module, under PyTorch's names: a source of their
``Args:`` entries for :func:`~jaxopt_zoo.docstrings.document_args` (a function's own entry wins)."""


def _frame(owner: str, maximize: bool, weight_decay: Number, *steps: GradientTransformation) -> GradientTransformation:
    # PyTorch's shared frame: negate for maximize, L2 weight decay, the rule; complex leaves as real pairs.
    # The options are checked here under PyTorch's names.
    validation.flag(owner, "maximize", maximize)
    validation.non_negative(owner, "weight_decay", weight_decay)
    prologue = [scale(-1.0)] if maximize else []
    if not validation.is_literal_zero(weight_decay):
        prologue.append(add_decayed_weights(weight_decay))
    return as_real_pairs(chain(*prologue, *steps))


def _recipe(
    owner: str, lr: ScalarOrSchedule, maximize: bool, weight_decay: Number, *steps: GradientTransformation
) -> GradientTransformation:
    # The frame with the rate last (Rprop and ASGD hold their rates themselves and use _frame alone).
    validation.scalar_or_schedule(owner, "lr", lr)
    return _frame(owner, maximize, weight_decay, *steps, scale_by_learning_rate(lr))


def _pair(owner: str, name: str, value: Any, meaning: str) -> tuple[Any, Any]:
    # A NumPy or JAX array of two numbers is a pair too, as torch unpacks it.
    if not (isinstance(value, (tuple, list)) and len(value) == 2 or getattr(value, "shape", None) == (2,)):
        raise ValueError(f"{owner}: {name} must be a pair {meaning}, got {value!r}.")
    return value[0], value[1]


def _betas(owner: str, betas: Any) -> tuple[Number, Number]:
    betas = _pair(owner, "betas", betas, "(beta1, beta2)")
    for index, beta in enumerate(betas):
        validation.decay_rate(owner, f"betas[{index}]", beta)
    return betas[0], betas[1]


@document_args(TORCH_ARGUMENTS, trace)
def sgd(
    lr: ScalarOrSchedule = 1e-3,
    momentum: Number = 0,
    dampening: Number = 0,
    weight_decay: Number = 0,
    nesterov: bool = False,
    *,
    maximize: bool = False,
    foreach: bool | None = None,
    differentiable: bool = False,
    fused: bool | None = None,
    accumulator_dtype: StateDtype = None,
) -> GradientTransformation:
    """``torch.optim.SGD``:

    .. math::

        g \\leftarrow \\pm g + \\lambda \\theta, \\quad
        b_1 = g, \\ b_t = \\mu b_{t-1} + (1 - \\tau) g, \\quad
        \\theta \\leftarrow \\theta - \\gamma \\cdot (g + \\mu b_t \\text{ if nesterov else } b_t)

    (no buffer at all when :math:`\\mu = 0`). As PyTorch, ``nesterov`` needs a
    positive momentum and zero dampening; unlike PyTorch, ``dampening`` must lie in [0, 1].
    Recipe: ``chain(..., trace(momentum, nesterov, dampening, accumulator_dtype), scale_by_learning_rate(lr))``;
    ``accumulator_dtype`` is an addition to PyTorch.

    Args:
        momentum: :math:`\\mu \\ge 0`. A literal 0 keeps no buffer (plain SGD); an array keeps one, which, as
            PyTorch's, starts (undamped) on the first step where the array is not 0 and is left as it is on the
            steps where it is 0 (plain SGD's step there, ``nesterov`` or not: ``trace(..., idle_at_zero=True)``,
            whose step reads the decayed gradient twice, so XLA keeps it in memory: on CPU, 1.5 times the bytes of a
            float momentum's step).
        nesterov: ``True``: step along :math:`g + \\mu b_t`, not :math:`b_t` (Nesterov's momentum, in PyTorch's form).
        accumulator_dtype: storage of the momentum buffer: a storage (see :mod:`jaxopt_zoo.storage`).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.torch.sgd(lr=0.1, momentum=0.9, nesterov=True)
        >>> tx_8bit = jz.torch.sgd(lr=0.1, momentum=0.9, accumulator_dtype=jz.Blockwise8Bit())
    """
    del foreach, differentiable, fused
    mu = validation.non_negative("torch.sgd", "momentum", momentum)
    tau = validation.fraction("torch.sgd", "dampening", dampening)
    validation.flag("torch.sgd", "nesterov", nesterov)
    validation.state_dtypes("torch.sgd", accumulator_dtype=accumulator_dtype)
    # As PyTorch checks only as it is built, a JAX array momentum (injected: rebuilt at every step) may be 0 with
    # nesterov (plain SGD's step there).
    if nesterov and (mu == 0 and not isinstance(momentum, jax.Array) or (tau is not None and tau != 0)):
        raise ValueError(
            f"torch.sgd: nesterov=True requires a momentum > 0 and zero dampening, "
            f"got momentum={momentum!r}, dampening={dampening!r}."
        )
    if validation.is_literal_zero(momentum):
        return _recipe("torch.sgd", lr, maximize, weight_decay)
    array = not isinstance(momentum, (int, float))
    if array:
        # PyTorch's buffer starts undamped on the first step with a non-zero momentum: an array dampening (weakly
        # typed, as the number) makes trace count the steps its buffer takes.
        dampening = jnp.asarray(dampening)
    momentum_trace = trace(momentum, nesterov=nesterov, dampening=dampening, accumulator_dtype=accumulator_dtype,
                           idle_at_zero=array)
    return _recipe("torch.sgd", lr, maximize, weight_decay, momentum_trace)


@init_only("initial_accumulator_value")
@document_args(TORCH_ARGUMENTS, scale_by_rss)
def adagrad(
    lr: ScalarOrSchedule = 1e-2,
    lr_decay: Number = 0,
    weight_decay: Number = 0,
    initial_accumulator_value: Number = 0,
    eps: Number = 1e-10,
    foreach: bool | None = None,
    *,
    maximize: bool = False,
    differentiable: bool = False,
    fused: bool | None = None,
    accumulator_dtype: StateDtype = None,
) -> GradientTransformation:
    """``torch.optim.Adagrad``:

    .. math::

        g \\leftarrow \\pm g + \\lambda \\theta, \\quad s_t = s_{t-1} + g^2, \\ s_0 = a, \\quad
        \\theta \\leftarrow \\theta - \\frac{\\gamma}{1 + (t - 1) \\eta} \\cdot \\frac{g}{\\sqrt{s_t} + \\varepsilon}

    with :math:`\\eta` the ``lr_decay``. Recipe: ``chain(..., scale_by_rss(a, eps,
    eps_in_sqrt=False, accumulator_dtype=accumulator_dtype), scale_by_learning_rate(lr / (1 + t * lr_decay)))``.
    Deviation: where :math:`s_t = 0` the step is 0 (PyTorch computes 0/0 there if ``eps=0``).
    ``accumulator_dtype`` is an addition to PyTorch.

    Args:
        lr_decay: :math:`\\eta \\ge 0`: the rate at step :math:`t` is :math:`\\gamma_t / (1 + (t - 1) \\eta)`, with the
            optimizer's step count :math:`t`.
        accumulator_dtype: storage of the sum of squares: a storage (see :mod:`jaxopt_zoo.storage`).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.torch.adagrad(lr=0.1, lr_decay=1e-3)
    """
    del foreach, differentiable, fused
    owner = "torch.adagrad"
    validation.scalar_or_schedule(owner, "lr", lr)
    validation.non_negative(owner, "lr_decay", lr_decay)
    validation.non_negative(owner, "initial_accumulator_value", initial_accumulator_value)
    validation.epsilon(owner, "eps", eps)
    validation.state_dtypes(owner, accumulator_dtype=accumulator_dtype)
    rate = lr
    if not validation.is_literal_zero(lr_decay):
        rate = lambda count: (lr(count) if callable(lr) else lr) / (1 + count * lr_decay)
    scaling = scale_by_rss(initial_accumulator_value, eps, eps_in_sqrt=False, accumulator_dtype=accumulator_dtype)
    return _recipe(owner, rate, maximize, weight_decay, scaling)


@document_args(TORCH_ARGUMENTS)
def adadelta(
    lr: ScalarOrSchedule = 1.0,
    rho: Number = 0.9,
    eps: Number = 1e-6,
    weight_decay: Number = 0,
    foreach: bool | None = None,
    *,
    capturable: bool = False,
    maximize: bool = False,
    differentiable: bool = False,
    accumulator_dtype: StateDtype = None,
) -> GradientTransformation:
    """``torch.optim.Adadelta``:

    .. math::

        g \\leftarrow \\pm g + \\lambda \\theta, \\quad v_t = \\rho v_{t-1} + (1 - \\rho) g^2, \\quad
        \\Delta = \\frac{\\sqrt{u_{t-1} + \\varepsilon}}{\\sqrt{v_t + \\varepsilon}} g, \\quad
        u_t = \\rho u_{t-1} + (1 - \\rho) \\Delta^2, \\quad \\theta \\leftarrow \\theta - \\gamma \\Delta

    Recipe: ``chain(..., scale_by_adadelta(rho, eps, accumulator_dtype=accumulator_dtype),
    scale_by_learning_rate(lr))``; ``accumulator_dtype`` is an addition to PyTorch.

    Args:
        rho: :math:`\\rho \\in [0, 1]`, the decay of both running means.
        eps: :math:`\\varepsilon > 0`, added inside both square roots (0 raises, as does a denormal one).
        accumulator_dtype: storage of both running means: a storage (see :mod:`jaxopt_zoo.storage`).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.torch.adadelta()
    """
    del foreach, capturable, differentiable
    validation.fraction("torch.adadelta", "rho", rho)
    validation.epsilon("torch.adadelta", "eps", eps, allow_zero=False, why_positive=" (with eps=0 every step is 0: the mean square of the steps starts at 0 and stays there)")
    validation.state_dtypes("torch.adadelta", accumulator_dtype=accumulator_dtype)
    scaling = scale_by_adadelta(rho, eps, accumulator_dtype=accumulator_dtype)
    return _recipe("torch.adadelta", lr, maximize, weight_decay, scaling)


@document_args(TORCH_ARGUMENTS)
def rmsprop(
    lr: ScalarOrSchedule = 1e-2,
    alpha: Number = 0.99,
    eps: Number = 1e-8,
    weight_decay: Number = 0,
    momentum: Number = 0,
    centered: bool = False,
    capturable: bool = False,
    foreach: bool | None = None,
    maximize: bool = False,
    differentiable: bool = False,
    *,
    nu_dtype: StateDtype = None,
    mu_dtype: StateDtype = None,
    accumulator_dtype: StateDtype = None,
) -> GradientTransformation:
    """``torch.optim.RMSprop``:

    .. math::

        g \\leftarrow \\pm g + \\lambda \\theta, \\quad v_t = \\alpha v_{t-1} + (1 - \\alpha) g^2, \\quad
        \\tilde v_t = v_t - m_t^2 \\text{ if centered } (m_t = \\alpha m_{t-1} + (1 - \\alpha) g) \\text{ else } v_t,

    .. math::

        b_t = \\mu b_{t-1} + \\frac{g}{\\sqrt{\\tilde v_t} + \\varepsilon}, \\quad
        \\theta \\leftarrow \\theta - \\gamma b_t \\quad
        (b_t = g / (\\sqrt{\\tilde v_t} + \\varepsilon) \\text{ when } \\mu = 0).

    Unlike :func:`jaxopt_zoo.rmsprop` (Optax's form) the learning rate comes
    after the momentum, as in PyTorch. ``alpha`` must lie in [0, 1) (PyTorch
    accepts any ``alpha >= 0``; with 1 its average stays 0 and each step is
    g / eps). Recipe: ``chain(..., scale_by_rms(alpha, eps, 0.0, eps_in_sqrt=False, nu_dtype=nu_dtype)``
    (or ``scale_by_stddev(..., mu_dtype=mu_dtype, nu_dtype=nu_dtype)`` when
    ``centered``), ``trace(momentum, accumulator_dtype=accumulator_dtype), scale_by_learning_rate(lr))``.
    The three storage options are additions to PyTorch.

    Args:
        alpha: :math:`\\alpha \\in [0, 1)`, the decay of the mean square :math:`v_t` (and of the mean :math:`m_t`).
        momentum: :math:`\\mu \\ge 0`, the decay of the buffer :math:`b_t`; a literal 0 keeps no buffer, and an array's
            buffer is left as it is on the steps where the array is 0 (as PyTorch's).
        centered: ``True``: divide by the root of :math:`v_t - m_t^2`, keeping the mean :math:`m_t` too.
        nu_dtype: storage of the mean square: a storage (see :mod:`jaxopt_zoo.storage`).
        mu_dtype: storage of the mean (``centered`` only): a storage (see :mod:`jaxopt_zoo.storage`); in low
            precision the centering magnifies its rounding (:func:`scale_by_stddev`).
        accumulator_dtype: storage of the momentum buffer: a storage (see :mod:`jaxopt_zoo.storage`).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.torch.rmsprop(lr=1e-3, momentum=0.9, centered=True)
    """
    del capturable, foreach, differentiable
    owner = "torch.rmsprop"
    check_rms_options(owner, alpha, eps, 0.0, False, False, decay_name="alpha")
    validation.flag(owner, "centered", centered)
    validation.non_negative(owner, "momentum", momentum)
    validation.state_dtypes(owner, nu_dtype=nu_dtype, mu_dtype=mu_dtype, accumulator_dtype=accumulator_dtype)
    if centered:
        scaling = scale_by_stddev(alpha, eps, 0.0, eps_in_sqrt=False, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    else:
        scaling = scale_by_rms(alpha, eps, 0.0, eps_in_sqrt=False, nu_dtype=nu_dtype)
    # The momentum buffer sums g / avg before the rate: b = mu b + g / avg, theta -= lr b.
    steps = [] if validation.is_literal_zero(momentum) else [
        trace(momentum, accumulator_dtype=accumulator_dtype, idle_at_zero=not isinstance(momentum, (int, float)))]
    return _recipe(owner, lr, maximize, weight_decay, scaling, *steps)


def _adam_family(
    owner: str, lr, betas, eps, weight_decay, amsgrad: bool, maximize: bool, decoupled: bool,
    mu_dtype: StateDtype, nu_dtype: StateDtype,
) -> GradientTransformation:
    b1, b2 = _betas(owner, betas)
    validation.epsilon(owner, "eps", eps)
    validation.flag(owner, "amsgrad", amsgrad)
    validation.state_dtypes(owner, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    # PyTorch's AMSGrad keeps the maximum of the raw second moment and corrects it afterwards.
    if amsgrad:
        scaling = scale_by_amsgrad(b1, b2, eps, mu_dtype=mu_dtype, correct_after_max=True, nu_dtype=nu_dtype)
    else:
        scaling = scale_by_adam(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    if not decoupled:
        return _recipe(owner, lr, maximize, weight_decay, scaling)
    validation.non_negative(owner, "weight_decay", weight_decay)
    return _recipe(owner, lr, maximize, 0, scaling, add_decayed_weights(weight_decay))


@document_args(TORCH_ARGUMENTS)
def adam(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[Number, Number] = (0.9, 0.999),
    eps: Number = 1e-8,
    weight_decay: Number = 0,
    amsgrad: bool = False,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    capturable: bool = False,
    differentiable: bool = False,
    fused: bool | None = None,
    decoupled_weight_decay: bool = False,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """``torch.optim.Adam``:

    .. math::

        g \\leftarrow \\pm g + \\lambda \\theta, \\quad m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g, \\quad
        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g^2,

    .. math::

        \\hat v_t = \\max_{s \\le t} v_s \\text{ if amsgrad else } v_t, \\quad
        \\theta \\leftarrow \\theta - \\gamma
        \\frac{m_t / (1 - \\beta_1^t)}{\\sqrt{\\hat v_t / (1 - \\beta_2^t)} + \\varepsilon}

    ``decoupled_weight_decay=True`` is :func:`adamw`. With ``amsgrad`` the
    maximum is over the raw second moment, corrected afterwards (PyTorch's
    convention; Optax's :func:`jaxopt_zoo.amsgrad` takes it after correction).
    Recipe: ``chain(..., scale_by_adam(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype)`` (or
    ``scale_by_amsgrad(b1, b2, eps, mu_dtype=mu_dtype, correct_after_max=True, nu_dtype=nu_dtype)``),
    ``scale_by_learning_rate(lr))``. ``mu_dtype`` and ``nu_dtype`` are additions to PyTorch.

    Args:
        mu_dtype: storage of the first moment: a storage (see :mod:`jaxopt_zoo.storage`).
        nu_dtype: storage of the second moment (and max): a storage (see :mod:`jaxopt_zoo.storage`).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.torch.adam(lr=1e-3, weight_decay=1e-4, amsgrad=True)
    """
    del foreach, capturable, differentiable, fused
    validation.flag("torch.adam", "decoupled_weight_decay", decoupled_weight_decay)
    return _adam_family(
        "torch.adam", lr, betas, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay, mu_dtype, nu_dtype
    )


@document_args(TORCH_ARGUMENTS, adam)
def adamw(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[Number, Number] = (0.9, 0.999),
    eps: Number = 1e-8,
    weight_decay: Number = 1e-2,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
    foreach: bool | None = None,
    capturable: bool = False,
    differentiable: bool = False,
    fused: bool | None = None,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """``torch.optim.AdamW``: :func:`adam`'s step plus decoupled decay,
    :math:`\\theta \\leftarrow \\theta - \\gamma \\lambda \\theta - \\gamma \\hat m_t/(\\sqrt{\\hat v_t}+\\varepsilon)`.

    The default ``weight_decay`` is PyTorch's 1e-2 (Optax's ``adamw`` uses 1e-4).
    Recipe: :func:`adam`'s, with ``add_decayed_weights(weight_decay)`` after the scaling
    and no L2 term. ``mu_dtype`` and ``nu_dtype`` are additions to PyTorch.

    Args:
        weight_decay: :math:`\\lambda \\ge 0` (not a schedule), decoupled: the :math:`\\gamma \\lambda \\theta` above.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.torch.adamw(lr=1e-3)
    """
    del foreach, capturable, differentiable, fused
    return _adam_family(
        "torch.adamw", lr, betas, eps, weight_decay, amsgrad, maximize, True, mu_dtype=mu_dtype, nu_dtype=nu_dtype
    )


@document_args(TORCH_ARGUMENTS, scale_by_sparse_adam)
def sparse_adam(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[Number, Number] = (0.9, 0.999),
    eps: Number = 1e-8,
    maximize: bool = False,
    *,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """``torch.optim.SparseAdam``: Adam's step where the gradient is non-zero; elsewhere nothing moves.

    .. math::

        M = [g \\ne 0], \\quad m_t = m_{t-1} + M (1 - \\beta_1)(\\pm g - m_{t-1}),

    .. math::

        v_t = v_{t-1} + M (1 - \\beta_2)(g^2 - v_{t-1}),

    .. math::

        \\theta \\leftarrow \\theta - M \\gamma \\frac{\\sqrt{1 - \\beta_2^t}}{1 - \\beta_1^t}
        \\frac{m_t}{\\sqrt{v_t} + \\varepsilon}

    PyTorch's SparseAdam takes the sparse gradients of ``nn.Embedding(sparse=True)``; JAX's gradients are
    dense, so the entries it updates are those whose gradient is non-zero, the rule PyTorch's docstring gives for
    it. The one difference: an entry stored in a PyTorch sparse gradient with an exactly zero value (a looked-up
    embedding row whose gradient is 0) has its moments decayed there and moves by the decayed first moment; here
    it is left alone, moments included (with 8-bit storage up to the block's rounding: see the transformation).
    PyTorch refuses dense gradients; nothing is refused here, but on a dense layer's gradient this is Adam with
    the other epsilon placement and frozen moments wherever a gradient is exactly 0. Complex params raise at
    ``init``, as PyTorch's SparseAdam refuses them. Recipe: ``chain(scale(-1.0)`` (``maximize`` only),
    ``scale_by_sparse_adam(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype), scale_by_learning_rate(lr))``.
    ``mu_dtype`` and ``nu_dtype`` are additions to PyTorch.

    Args:
        lr: :math:`\\gamma > 0` (PyTorch refuses 0), the learning rate, applied last; or a schedule
            :math:`\\gamma_t`, a callable of the step count (0 on the first step).
        eps: :math:`\\varepsilon > 0` (PyTorch refuses 0), added to :math:`\\sqrt{v_t}`; a denormal one raises.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.torch.sparse_adam(lr=0.1)
        >>> table = jnp.ones((4, 2))  # an embedding: rows 1 and 3 were looked up
        >>> grads = jnp.array([[0.0, 0.0], [0.5, -1.0], [0.0, 0.0], [2.0, 0.0]])
        >>> updates, state = tx.update(grads, tx.init(table))
        >>> (updates != 0).astype(int)  # what moves: rows 0 and 2 stay, and so do their moments
        Array([[0, 0],
               [1, 1],
               [0, 0],
               [1, 0]], dtype=int32)
        >>> updates[1].round(3)  # the first step is about lr sign(g)
        Array([-0.1,  0.1], dtype=float32)
    """
    owner = "torch.sparse_adam"
    if callable(lr):
        validation.scalar_or_schedule(owner, "lr", lr)
    else:
        validation.positive(owner, "lr", lr)
    b1, b2 = _betas(owner, betas)
    validation.epsilon(owner, "eps", eps, allow_zero=False)
    validation.flag(owner, "maximize", maximize)
    validation.state_dtypes(owner, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    steps = [scale(-1.0)] if maximize else []
    steps += [scale_by_sparse_adam(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype), scale_by_learning_rate(lr)]
    return validation.refusing_complex(owner, chain(*steps), "as torch.optim.SparseAdam refuses them")


@document_args(newton_schulz, scale_by_muon, TORCH_ARGUMENTS)
def muon(
    lr: ScalarOrSchedule = 1e-3,
    weight_decay: Number = 0.1,
    momentum: Number = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[Number, Number, Number] = NS_COEFFICIENTS,
    eps: Number = 1e-7,
    ns_steps: int = 5,
    adjust_lr_fn: str | None = None,
    *,
    ns_dtype: Any = None,
    mu_dtype: StateDtype = None,
    layer_sharding: bool = False,
    axis_name: AxisName = None,
    partition_specs: Any = None,
) -> GradientTransformation:
    """``torch.optim.Muon`` (2-D parameters only, as PyTorch):

    .. math::

        B_t = \\mu B_{t-1} + (1 - \\mu) g, \\quad
        \\tilde B_t = (1 - \\mu) g + \\mu B_t \\text{ if nesterov else } B_t, \\quad
        \\theta \\leftarrow (1 - \\gamma \\lambda) \\theta - \\gamma s(m, n) \\, \\mathrm{NS}(\\tilde B_t)

    with :math:`\\mathrm{NS}` ``ns_steps`` Newton–Schulz steps (:func:`~jaxopt_zoo.newton_schulz`) and
    the shape factor :math:`s = \\sqrt{\\max(1, m/n)}` for an :math:`m \\times n` weight (``adjust_lr_fn``
    None or ``"original"``) or :math:`0.2 \\sqrt{\\max(m, n)}` (``"match_rms_adamw"``). The decay
    uses the plain :math:`\\gamma`. Recipe: Optax's transformation with PyTorch's options,
    ``chain(scale_by_muon(ns_coefficients, ns_steps, momentum, eps, mu_dtype, nesterov=nesterov,
    weight_dimension_numbers=MuonDimensionNumbers(1, 0), bias_correction=False, eps_floor=True,
    fan_out_first=True, shape_scale="width" (or 0.2 for "match_rms_adamw"), ns_dtype=ns_dtype),
    add_decayed_weights(weight_decay), scale_by_learning_rate(lr))`` (PyTorch's weights are (out, in): fan-in is
    axis 1). The state's ``mu`` is PyTorch's ``momentum_buffer`` (also readable under that name).

    ``init`` raises, naming the leaf's path and shape, for a parameter that is
    not a real 2-D array, as PyTorch's constructor does; give the others another
    optimizer with :func:`~jaxopt_zoo.partition`, e.g.
    ``jz.partition({"muon": jz.torch.muon(), "adamw": jz.torch.adamw()},
    lambda params: jax.tree.map(lambda p: "muon" if p.ndim == 2 else "adamw", params))``.
    PyTorch's weights are (out, in), so :math:`m/n` is fan-out over fan-in there;
    for a Flax (in, out) kernel the same array rule gives fan-in over fan-out.

    Differences from PyTorch: the Newton–Schulz iteration runs in the update's
    dtype (float32 for float32 params), where PyTorch runs it in bfloat16 whatever
    the params' dtype; ``ns_dtype=jnp.bfloat16`` (an addition) does the same, rounded
    where PyTorch rounds (each ``addmm`` summed in float32 and rounded once, the
    coefficients in float32).
    ``ns_steps`` must be an integer in [0, 99] and ``eps >= 0``, checked here
    (PyTorch checks ``ns_steps < 100`` at the first step); ``ns_coefficients`` whose
    iteration diverges on [0, 1] raise (PyTorch's updates are then inf or NaN);
    with ``eps=0`` a zero update stays 0 (PyTorch: NaN). The quintic's :math:`c A^2` is formed as :math:`(cA)A`
    (Optax's grouping; PyTorch's ``addmm`` forms :math:`c(AA)`): equal up to rounding. ``mu_dtype`` (storage of
    the momentum buffer, see :mod:`jaxopt_zoo.storage`) and ``layer_sharding``, ``axis_name`` and
    ``partition_specs`` (sharded params; those of :func:`~jaxopt_zoo.scale_by_muon`) are additions.
    PyTorch's Muon has no ``maximize``, ``foreach`` or complex support, and neither has this.

    Differences from ``optax.contrib.muon(learning_rate, ns_coeffs, ns_steps, beta, eps, weight_decay, ...)``:
    Optax's defaults are ``eps=1e-8`` (added to the norm: :math:`X / (\\|X\\|_F + \\varepsilon)`) and
    ``weight_decay=0``; its Nesterov blend is bias-corrected (different directions in the first
    steps; without ``nesterov`` the two agree, up to ``eps``); its width factor is
    :math:`\\sqrt{\\max(1, n/m)}` (the transpose of this one; ``consistent_rms=0.2`` is
    ``"match_rms_adamw"``); it sends non-2-D parameters to a Nesterov AdamW
    instead of raising, and reshapes higher-rank ones given dimension numbers.

    Args:
        weight_decay: :math:`\\lambda \\ge 0` (not a schedule), decoupled: the :math:`(1 - \\gamma \\lambda)` above.
        momentum: :math:`\\mu \\ge 0`, the decay of the momentum buffer :math:`B_t`.
        nesterov: ``True``: orthogonalise the blend :math:`\\tilde B_t` above, not :math:`B_t`.
        adjust_lr_fn: the shape factor :math:`s` above: ``None`` or ``"original"``, or ``"match_rms_adamw"``
            (anything else raises).
        ns_dtype: the floating dtype the Newton–Schulz iteration runs in (``None``: the update's).
        mu_dtype: storage of the momentum buffer: a storage (see :mod:`jaxopt_zoo.storage`).
        layer_sharding: orthogonalise each matrix whole on one device, as :func:`~jaxopt_zoo.scale_by_muon`
            (inside ``shard_map``: with ``axis_name`` and ``partition_specs``).

    Example:
        >>> import jax, jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.torch.muon(lr=0.02, adjust_lr_fn="match_rms_adamw")
        >>> state = tx.init({"w": jnp.ones((4, 8))})
        >>> labels = lambda params: jax.tree.map(lambda p: "muon" if p.ndim == 2 else "adamw", params)
        >>> mixed = jz.partition({"muon": jz.torch.muon(lr=0.02), "adamw": jz.torch.adamw(lr=3e-4)}, labels)
        >>> state = mixed.init({"w": jnp.ones((4, 8)), "b": jnp.zeros(8)})
    """
    owner = "torch.muon"
    validation.scalar_or_schedule(owner, "lr", lr)
    validation.non_negative(owner, "weight_decay", weight_decay)
    ns_steps = check_options(owner, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn, ns_dtype)
    validation.state_dtypes(owner, mu_dtype=mu_dtype)
    orthogonalised = scale_by_muon(
        ns_coefficients, ns_steps, momentum, eps, mu_dtype, nesterov=nesterov, weight_dimension_numbers=TORCH_LAYOUT,
        bias_correction=False, eps_floor=True, fan_out_first=True, shape_scale=0.2 if adjust_lr_fn == "match_rms_adamw" else "width",
        ns_dtype=ns_dtype, layer_sharding=layer_sharding, axis_name=axis_name, partition_specs=partition_specs,
    )
    decay = [] if validation.is_literal_zero(weight_decay) else [add_decayed_weights(weight_decay)]
    tx = chain(orthogonalised, *decay, scale_by_learning_rate(lr))

    def init(params):
        require_matrices(owner, params)  # before scale_by_muon's check, so that the message names torch.muon
        return tx.init(params)

    return GradientTransformation(init, tx.update)


# Rprop and ASGD (torch.optim.Rprop, torch.optim.ASGD). Their transformations hold the rates
# themselves (Rprop's step sizes, ASGD's eta), so no scale_by_learning_rate follows them.


@init_only("lr")
@document_args(TORCH_ARGUMENTS)
def rprop(
    lr: Number = 1e-2,
    etas: tuple[Number, Number] = (0.5, 1.2),
    step_sizes: tuple[Number, Number] = (1e-6, 50),
    *,
    capturable: bool = False,
    foreach: bool | None = None,
    maximize: bool = False,
    differentiable: bool = False,
    step_size_dtype: StateDtype = None,
    prev_dtype: StateDtype = None,
) -> GradientTransformation:
    """``torch.optim.Rprop``: with :math:`g \\leftarrow \\pm g`,
    :math:`s = \\operatorname{sign}(g) \\operatorname{sign}(g'_{t-1})`,

    .. math::

        \\Delta_t = \\operatorname{clip}(\\Delta_{t-1} \\cdot
        (\\eta_+ \\text{ if } s > 0, \\ \\eta_- \\text{ if } s < 0, \\ 1 \\text{ else}),
        \\Gamma_{\\min}, \\Gamma_{\\max}),
        \\quad g'_t = 0 \\text{ if } s < 0 \\text{ else } g, \\quad
        \\theta \\leftarrow \\theta - \\Delta_t \\operatorname{sign}(g'_t),

    with :math:`\\Delta_0 = ` ``lr``, :math:`g'_0 = 0`, ``etas`` :math:`= (\\eta_-, \\eta_+)` and
    ``step_sizes`` :math:`= (\\Gamma_{\\min}, \\Gamma_{\\max})`. Recipe: ``chain(...,
    scale_by_resilient_step(lr, *etas, *step_sizes, step_size_dtype=..., prev_dtype=...), scale(-1.0))``.

    ``lr`` is only the initial step size, as in PyTorch: it must be a number (a
    schedule raises; to scale the steps over time chain ``jz.scale_by_schedule``
    after this), and an ``inject_hyperparams`` learning rate acts only through
    ``init``, as changing a param group's ``lr`` does nothing to a started Rprop.
    As PyTorch, ``etas`` must satisfy :math:`0 < \\eta_- < 1 < \\eta_+`; unlike
    PyTorch (which accepts anything), ``step_sizes`` must satisfy
    :math:`0 \\le \\Gamma_{\\min} \\le \\Gamma_{\\max}`, both finite. The state keeps the
    sign of :math:`g'_t` where PyTorch keeps :math:`g'_t`: the two differ only where the
    product :math:`g \\cdot g'_{t-1}` underflows to 0 or is :math:`\\infty \\cdot 0` (see
    :func:`~jaxopt_zoo.scale_by_resilient_step`).

    Against ``optax.rprop`` (0.2.8, same defaults): Optax applies each step one step late (its
    first update is 0, a bug with an open fix, google-deepmind/optax pull request #1725), does not
    clip the step sizes where the sign product is 0, and has no ``maximize``.

    Args:
        lr: the initial step size :math:`\\Delta_0 \\ge 0`, a number (read by ``init`` only, as above).
        etas: ``(etaminus, etaplus)``, :math:`0 < \\eta_- < 1 < \\eta_+`: the factors of a step size where the
            gradient's sign flipped and where it held.
        step_sizes: ``(min, max)``, :math:`0 \\le \\Gamma_{\\min} \\le \\Gamma_{\\max}`, both finite: the bounds of
            every step size.
        step_size_dtype: storage of the per-element step sizes (non-negative): a storage (see
            :mod:`jaxopt_zoo.storage`). An addition to PyTorch.
        prev_dtype: storage of the previous gradient's sign (signed); ``jnp.bfloat16`` and
            ``jz.Blockwise8Bit()`` keep the signs exactly. An addition to PyTorch.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.torch.rprop(lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50))
        >>> small = jz.torch.rprop(prev_dtype=jnp.bfloat16, step_size_dtype=jz.Blockwise8Bit())
    """
    del capturable, foreach, differentiable
    owner = "torch.rprop"
    minus, plus = _pair(owner, "etas", etas, "(etaminus, etaplus)")
    smallest, largest = _pair(owner, "step_sizes", step_sizes, "(min, max)")
    _check_rprop_options(
        owner, ("lr", lr), ("etas[0]", minus), ("etas[1]", plus), ("step_sizes[0]", smallest), ("step_sizes[1]", largest)
    )
    validation.state_dtypes(owner, step_size_dtype=step_size_dtype, prev_dtype=prev_dtype)
    steps = scale_by_resilient_step(
        lr, minus, plus, smallest, largest, step_size_dtype=step_size_dtype, prev_dtype=prev_dtype
    )
    return _frame(owner, maximize, 0, steps, scale(-1.0))


@document_args(scale_by_asgd, average_iterates, TORCH_ARGUMENTS)
def asgd(
    lr: ScalarOrSchedule = 1e-2,
    lambd: Number = 1e-4,
    alpha: Number = 0.75,
    t0: Number = 1e6,
    weight_decay: Number = 0,
    foreach: bool | None = None,
    maximize: bool = False,
    differentiable: bool = False,
    capturable: bool = False,
    *,
    ax_dtype: StateDtype = None,
) -> GradientTransformation:
    """``torch.optim.ASGD``: with :math:`g \\leftarrow \\pm g + w \\theta` (``weight_decay`` :math:`w`),

    .. math::

        \\theta_t = \\theta_{t-1} (1 - \\lambda \\eta_t) - \\eta_t g, \\qquad
        \\bar\\theta_t = \\bar\\theta_{t-1} + \\mu_t (\\theta_t - \\bar\\theta_{t-1}),

    .. math::

        \\eta_1 = \\gamma, \\ \\eta_{t+1} = \\frac{\\gamma}{(1 + \\lambda \\gamma t)^{\\alpha}}, \\qquad
        \\mu_1 = 1, \\ \\mu_{t+1} = \\frac{1}{\\max(1, t - t_0)}

    (``lr`` :math:`\\gamma`, ``lambd`` :math:`\\lambda`), and :math:`\\bar\\theta_t = \\theta_t`
    exactly where :math:`\\mu_t = 1`. The averaged parameters :math:`\\bar\\theta` are in
    the state: read them with ``jz.averaged_params(state)``. Recipe: ``chain(...,
    scale_by_asgd(lr, lambd, alpha), scale(-1.0), average_iterates(t0, ax_dtype=ax_dtype))``.

    ``lr`` may be a schedule, and then gives PyTorch's trajectory under an
    ``lr_scheduler`` stepped once per step: :math:`\\eta_{t+1}` is formed at the end of
    step :math:`t` from that step's rate (the schedule at count :math:`t - 1`), so a
    change of rate acts one step later; an ``inject_hyperparams`` learning rate does
    the same. Unlike PyTorch, ``lambd`` must be >= 0 (a negative one can make
    :math:`1 + \\lambda \\gamma t` negative, and its power NaN) and ``alpha`` and ``t0``
    finite. Optax has no ASGD.

    Args:
        lr: :math:`\\gamma \\ge 0` of :math:`\\eta_t` above, or a schedule of the step count (a change of rate acts
            one step later, as above).
        weight_decay: :math:`w \\ge 0` (not a schedule): L2 decay, :math:`w \\theta` added to the gradient.
        ax_dtype: storage of the averaged parameters (signed): a storage (see
            :mod:`jaxopt_zoo.storage`). An addition to PyTorch.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.torch.asgd(lr=1e-2, t0=100, weight_decay=1e-4)
        >>> params = {"w": jnp.ones(3)}
        >>> updates, state = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
        >>> jz.averaged_params(state)  # the average is the first iterate after one step
        {'w': Array([0.98999..., 0.98999..., 0.98999...], dtype=float32)}
    """
    del foreach, differentiable, capturable
    owner = "torch.asgd"
    validation.scalar_or_schedule(owner, "lr", lr)
    validation.non_negative(owner, "lambd", lambd)
    validation.real_scalar(owner, "alpha", alpha)
    validation.real_scalar(owner, "t0", t0)
    validation.state_dtypes(owner, ax_dtype=ax_dtype)
    averaged = [scale_by_asgd(lr, lambd, alpha), scale(-1.0), average_iterates(t0, ax_dtype=ax_dtype)]
    return _frame(owner, maximize, weight_decay, *averaged)


# Adamax, NAdam and RAdam (torch.optim.Adamax, NAdam, RAdam): Adam's relatives in transforms/adam_variants.py.


def _decayed(
    owner: str, lr: ScalarOrSchedule, maximize: bool, weight_decay: Number, decoupled: bool,
    scaling: GradientTransformation,
) -> GradientTransformation:
    # L2 decay folded into the gradient, or (decoupled) theta <- theta - lr wd theta beside the step.
    validation.flag(owner, "decoupled_weight_decay", decoupled)
    if not decoupled:
        return _recipe(owner, lr, maximize, weight_decay, scaling)
    validation.non_negative(owner, "weight_decay", weight_decay)
    decay = [] if validation.is_literal_zero(weight_decay) else [add_decayed_weights(weight_decay)]
    return _recipe(owner, lr, maximize, 0, scaling, *decay)


@document_args(scale_by_adamax, TORCH_ARGUMENTS)
def adamax(
    lr: ScalarOrSchedule = 2e-3,
    betas: tuple[Number, Number] = (0.9, 0.999),
    eps: Number = 1e-8,
    weight_decay: Number = 0,
    foreach: bool | None = None,
    *,
    maximize: bool = False,
    differentiable: bool = False,
    capturable: bool = False,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """``torch.optim.Adamax``:

    .. math::

        g \\leftarrow \\pm g + \\lambda \\theta, \\quad m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g, \\quad
        u_t = \\max(\\beta_2 u_{t-1}, |g| + \\varepsilon), \\quad
        \\theta \\leftarrow \\theta - \\frac{\\gamma\\, m_t}{(1 - \\beta_1^t)\\, u_t}

    Recipe: ``chain(..., scale_by_adamax(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
    scale_by_learning_rate(lr))``. ``optax.adamax(learning_rate, b1, b2, eps)`` is the same rule
    (numerically identical without ``weight_decay`` and ``maximize``, which it lacks; its
    ``adamaxw`` decays decoupled, unlike PyTorch's L2 term here). Differences from PyTorch: with
    ``eps=0`` the step is 0 where :math:`u_t = 0` (PyTorch: NaN); ``mu_dtype`` and ``nu_dtype``
    (storage of ``exp_avg`` and ``exp_inf``, see :mod:`jaxopt_zoo.storage`) are additions.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.torch.adamax(lr=2e-3, weight_decay=1e-4)
    """
    del foreach, differentiable, capturable
    owner = "torch.adamax"
    b1, b2 = _betas(owner, betas)
    validation.epsilon(owner, "eps", eps)
    validation.state_dtypes(owner, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    scaling = scale_by_adamax(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    return _recipe(owner, lr, maximize, weight_decay, scaling)


@document_args(scale_by_scheduled_nadam, TORCH_ARGUMENTS)
def nadam(
    lr: ScalarOrSchedule = 2e-3,
    betas: tuple[Number, Number] = (0.9, 0.999),
    eps: Number = 1e-8,
    weight_decay: Number = 0,
    momentum_decay: Number = 4e-3,
    decoupled_weight_decay: bool = False,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    capturable: bool = False,
    differentiable: bool = False,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """``torch.optim.NAdam``: with :math:`\\mu_t = \\beta_1 (1 - \\frac12 0.96^{t \\psi})` and
    :math:`\\Pi_t = \\prod_{i \\le t} \\mu_i`,

    .. math::

        g \\leftarrow \\pm g + \\lambda \\theta, \\quad
        \\hat m_t = \\frac{\\mu_{t+1} m_t}{1 - \\Pi_t \\mu_{t+1}} + \\frac{(1 - \\mu_t) g}{1 - \\Pi_t}, \\quad
        \\theta \\leftarrow \\theta - \\gamma \\frac{\\hat m_t}{\\sqrt{v_t / (1 - \\beta_2^t)} + \\varepsilon}

    with Adam's moments :math:`m_t, v_t` and :math:`\\psi` the ``momentum_decay``.
    ``decoupled_weight_decay=True`` replaces the L2 term by
    :math:`\\theta \\leftarrow \\theta - \\gamma \\lambda \\theta` (NAdamW). Recipe:
    ``chain(..., scale_by_scheduled_nadam(b1, b2, eps, momentum_decay, mu_dtype=mu_dtype,
    nu_dtype=nu_dtype), scale_by_learning_rate(lr))``.

    Not ``optax.nadam`` (:func:`jaxopt_zoo.nadam`): Optax's NAdam fixes :math:`\\mu_t = \\beta_1`
    (so :math:`\\Pi_t = \\beta_1^t`), has no ``momentum_decay``, and its default rate is 1e-3; the
    two agree only as :math:`\\psi \\to \\infty` (here from ``momentum_decay=1e5`` on, to rounding).
    ``optax.nadamw`` is the decoupled form of Optax's rule, with ``weight_decay=1e-4``.

    Differences from PyTorch: :math:`\\Pi_t` is a float32 scalar in the state (float64 with
    64-bit types enabled), as PyTorch's ``mu_product`` tensor, but :math:`1 - \\Pi_t` and
    :math:`\\Pi_t \\mu_{t+1}` are formed in it too, where PyTorch uses Python floats (float32
    rounding, relative 1e-7; :math:`1 - \\beta_2^t` from a float32 :math:`\\beta_2`, as in
    ``adam``, relative 1e-5 at 0.999); it advances once per step for the whole tree, not per parameter;
    with ``eps=0`` the step is 0 where the denominator is 0 (PyTorch: NaN). ``mu_dtype`` and
    ``nu_dtype`` are additions.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.torch.nadam(lr=2e-3, weight_decay=1e-2, decoupled_weight_decay=True)
    """
    del foreach, capturable, differentiable
    owner = "torch.nadam"
    b1, b2 = _betas(owner, betas)
    validation.epsilon(owner, "eps", eps)
    validation.non_negative(owner, "momentum_decay", momentum_decay)
    validation.state_dtypes(owner, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    scaling = scale_by_scheduled_nadam(b1, b2, eps, momentum_decay, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    return _decayed(owner, lr, maximize, weight_decay, decoupled_weight_decay, scaling)


@document_args(scale_by_radam, TORCH_ARGUMENTS)
def radam(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[Number, Number] = (0.9, 0.999),
    eps: Number = 1e-8,
    weight_decay: Number = 0,
    decoupled_weight_decay: bool = False,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    capturable: bool = False,
    differentiable: bool = False,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """``torch.optim.RAdam``: with :math:`\\rho_\\infty = 2 / (1 - \\beta_2) - 1`,
    :math:`\\rho_t = \\rho_\\infty - 2 t \\beta_2^t / (1 - \\beta_2^t)` and the rectification
    :math:`r_t` of :func:`~jaxopt_zoo.transforms.adam_variants.scale_by_radam`,

    .. math::

        g \\leftarrow \\pm g + \\lambda \\theta, \\quad
        \\theta \\leftarrow \\theta - \\gamma \\frac{m_t}{1 - \\beta_1^t} \\cdot \\begin{cases}
        r_t \\sqrt{1 - \\beta_2^t} / (\\sqrt{v_t} + \\varepsilon) & \\rho_t > 5 \\\\
        1 & \\text{otherwise} \\end{cases}

    with Adam's moments :math:`m_t, v_t`. ``decoupled_weight_decay=True`` replaces the L2 term
    by :math:`\\theta \\leftarrow \\theta - \\gamma \\lambda \\theta`. Recipe: ``chain(...,
    scale_by_radam(b1, b2, eps, eps_before_correction=True, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
    scale_by_learning_rate(lr))``.

    Differences from ``optax.radam(learning_rate, b1, b2, eps, eps_root, threshold, nesterov)``:
    Optax adds :math:`\\varepsilon` to :math:`\\sqrt{\\hat v_t}`, after the bias correction (so its
    :math:`\\varepsilon` weighs :math:`1/\\sqrt{1 - \\beta_2^t}` times less: the two agree with
    ``eps=0``), and switches on :math:`\\rho_t \\ge 5`; its float32 :math:`\\rho_t` is inexact for
    :math:`\\beta_2` near 1 (see :func:`~jaxopt_zoo.transforms.adam_variants.scale_by_radam`); it
    has no weight decay or ``maximize``.

    Differences from PyTorch: the switch is :math:`\\rho_t \\ge 5`, which differs from PyTorch's
    :math:`\\rho_t > 5` only at a step whose :math:`\\rho_t` rounds to exactly 5; :math:`\\rho_t`
    and :math:`r_t` are computed in float32 (float64 with 64-bit types enabled) by a formula
    accurate to float32's precision, where PyTorch uses Python floats; with ``eps=0`` the step is 0
    where :math:`v_t = 0` (PyTorch: NaN). ``mu_dtype`` and ``nu_dtype`` are additions.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.torch.radam(lr=1e-3, weight_decay=1e-2, decoupled_weight_decay=True)
    """
    del foreach, capturable, differentiable
    owner = "torch.radam"
    b1, b2 = _betas(owner, betas)
    validation.epsilon(owner, "eps", eps)
    validation.state_dtypes(owner, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    scaling = scale_by_radam(b1, b2, eps, eps_before_correction=True, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    return _decayed(owner, lr, maximize, weight_decay, decoupled_weight_decay, scaling)


# Adafactor (torch.optim.Adafactor): the factored second moment, the parameter scale and the relative
# step size in transforms/factored.py, with the update-RMS clipping of transforms/clipping.py.


@document_args(scale_by_factored_second_moment, TORCH_ARGUMENTS)
def adafactor(
    lr: ScalarOrSchedule = 1e-2,
    beta2_decay: Number = -0.8,
    eps: tuple[Number | None, Number] = (None, 1e-3),
    d: Number = 1.0,
    weight_decay: Number = 0.0,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    factors_dtype: StateDtype = None,
    variance_dtype: StateDtype = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> GradientTransformation:
    """``torch.optim.Adafactor`` (Shazeer & Stern 2018, with PyTorch's use of ``lr`` and ``eps``):

    .. math::

        \\rho_t &= \\min(\\gamma_t, 1 / \\sqrt t),

        \\alpha_t &= \\max\\big(\\varepsilon_2, \\operatorname{RMS}(\\theta_{t-1})\\big) \\rho_t,

        U_t &= \\frac{\\pm g_t}{\\max(\\sqrt{\\hat V_t}, \\varepsilon_1)},

        \\theta_t &= \\theta_{t-1} - \\gamma_t \\lambda \\theta_{t-1}
        - \\frac{\\alpha_t \\, U_t}{\\max\\big(1, \\operatorname{RMS}(U_t) / d\\big)}

    with :math:`\\hat V_t` the factored second moment of :func:`~jaxopt_zoo.scale_by_factored_second_moment`
    (row and column factors over the last two dims of every param of two or more dims; a full moment
    for scalars and vectors; :math:`\\hat\\beta_{2,t} = 1 - t^{\\tau}`, :math:`\\tau` the
    ``beta2_decay``). ``eps=(eps1, eps2)``; ``eps1=None`` is the machine epsilon of each gradient's
    dtype. The decay uses ``lr``, not :math:`\\rho_t`, as PyTorch's does. Recipe:
    ``chain([scale(-1.0)], scale_by_factored_second_moment(beta2_decay, eps1, ...), clip_by_block_rms(d),
    scale_by_param_block_rms(eps2), scale_by_schedule(relative_step_size(lr)), [add_decayed_weights(lr * weight_decay)],
    scale(-1.0))``.

    Differences from ``optax.adafactor`` (same update once these coincide; tested):

    - Optax factors only params whose two largest dims are both at least ``min_dim_size_to_factor``
      (128), over those two dims; PyTorch factors every param of two or more dims over its last two.
      With ``min_dim_size_to_factor=1`` the two agree for matrices, and for higher-dim params whose
      last two dims are their largest.
    - Optax adds ``eps`` (1e-30) to :math:`g^2`; PyTorch floors the row mean at :math:`\\varepsilon_1`
      and the root at :math:`\\varepsilon_1` instead.
    - Optax's ``decay_rate=0.8`` is ``beta2_decay=-0.8`` (the same :math:`1 - t^{-0.8}`).
    - Optax multiplies by a fixed ``learning_rate``; PyTorch by :math:`\\rho_t = \\min(\\gamma, 1/\\sqrt t)`,
      which equals it while :math:`t \\le 1/\\gamma^2` (10,000 steps at the default ``lr``).
    - Optax's parameter scale (``multiply_by_parameter_scale=True``) has the fixed floor 1e-3, PyTorch's
      is :math:`\\varepsilon_2`; Optax's ``clipping_threshold`` is ``d``; its ``weight_decay_rate``
      is ``lr * weight_decay`` here. Optax's optional ``momentum`` has no PyTorch counterpart.

    Differences from PyTorch: ``eps1=None`` takes each gradient's dtype (PyTorch takes the first
    param's for all); with ``eps1=0`` the step is 0 where :math:`\\hat V_t = 0`, not NaN; a
    non-zero ``eps1`` whose square is denormal in float32 raises. The step count is the optimizer's,
    not per parameter. Additions: the storage options and ``axis_name``. Complex params raise at
    ``init``, as PyTorch's Adafactor refuses them (unlike most recipes here, it is not wrapped in
    :func:`split_real_and_imaginary`; wrap it to update their real and imaginary parts as real params).

    Args:
        lr: :math:`\\gamma \\ge 0`, or a schedule :math:`\\gamma_t` of the step count: the bound of :math:`\\rho_t`, and
            the decay's rate.
        eps: ``(eps1, eps2)``: :math:`\\varepsilon_1 \\ge 0` or ``None``, the floor of :math:`\\sqrt{\\hat V_t}`;
            :math:`\\varepsilon_2 \\ge 0`, the floor of the parameters' RMS.
        d: :math:`d \\ge 1`, the bound of the update's RMS.
        weight_decay: :math:`\\lambda \\ge 0` (not a schedule), decoupled: the :math:`\\gamma_t \\lambda \\theta_{t-1}`
            above.
        axis_name: inside ``shard_map``, the mesh axes the params may be sharded over, so that every
            RMS and every row or column mean is the whole array's (see :mod:`jaxopt_zoo.sharding`).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.torch.adafactor(lr=1e-2, weight_decay=1e-2)
        >>> tx_8bit = jz.torch.adafactor(factors_dtype=jz.Blockwise8Bit(), variance_dtype=jz.Blockwise8Bit())
    """
    del foreach
    owner = "torch.adafactor"
    validation.scalar_or_schedule(owner, "lr", lr)
    validation.non_positive(owner, "beta2_decay", beta2_decay)
    eps1, eps2 = _pair(owner, "eps", eps, "(eps1, eps2)")
    if eps1 is not None and (validation.epsilon(owner, "eps[0]", eps1) or 1.0) ** 2 < validation.SMALLEST_NORMAL:
        raise ValueError(f"{owner}: eps[0]={eps1!r} squared is denormal in float32 (flushed to 0); pass 0 or at least 1.1e-19.")
    validation.non_negative(owner, "eps[1]", eps2)
    d_value = validation.real_scalar(owner, "d", d)
    if d_value is not None and d_value < 1:
        raise ValueError(f"{owner}: d must be >= 1, got {d!r}.")
    validation.non_negative(owner, "weight_decay", weight_decay)
    validation.flag(owner, "maximize", maximize)
    validation.state_dtypes(owner, factors_dtype=factors_dtype, variance_dtype=variance_dtype)
    axis_name = validation.axis_name(owner, axis_name)
    steps = [scale(-1.0)] if maximize else []
    steps += [
        scale_by_factored_second_moment(
            beta2_decay, eps1, factors_dtype=factors_dtype, variance_dtype=variance_dtype, axis_name=axis_name
        ),
        clip_by_block_rms(d, axis_name=axis_name),
        scale_by_param_block_rms(eps2, axis_name=axis_name),
        scale_by_schedule(relative_step_size(lr)),
    ]
    if not validation.is_literal_zero(weight_decay):  # theta <- theta - lr wd theta, with PyTorch's lr (not rho_t)
        steps.append(add_decayed_weights((lambda count: lr(count) * weight_decay) if callable(lr) else lr * weight_decay))
    return validation.refusing_complex(owner, chain(*steps, scale(-1.0)), _ADAFACTOR_COMPLEX_WHY)

lbfgs = torch_lbfgs  # torch.optim.LBFGS: a whole step(closure) per update, driven by value_fn; see its docstring
