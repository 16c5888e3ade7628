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

Complex parameters are updated as pairs of real numbers, as PyTorch does
(``view_as_real``): each recipe is wrapped in :func:`split_real_and_imaginary`.

The options ``foreach``, ``fused``, ``capturable`` and ``differentiable``
select PyTorch kernels, not update rules; they are accepted and have no effect
(everything here is jit-compiled and differentiable). Parameter groups with
their own options are built with ``partition``/``masked``.

Additions to PyTorch: keyword-only ``*_dtype`` options (``mu_dtype``,
``nu_dtype``, ``accumulator_dtype``) choose how each state buffer is stored:
``None`` (the params' dtype, as PyTorch), a floating dtype, or
``jz.Blockwise8Bit()`` for 8-bit state (see :mod:`jaxopt_zoo.quantization`).

Deviations from PyTorch: a ``None`` gradient leaves its parameter and state
unchanged, as a ``grad=None`` does in PyTorch, but step counts are kept per
optimizer step, not per parameter, so a parameter whose gradients start late
gets Adam's bias correction, Adagrad's ``lr_decay`` and SGD's undampened first
step from the global step. ``dampening`` must lie in [0, 1] and RMSprop's
``alpha`` in [0, 1] (PyTorch accepts any dampening and any ``alpha >= 0``).
``eps=0`` is accepted as in PyTorch, but where the denominator is then 0 (all
gradients so far zero) Adam's and RMSprop's step is 0, not PyTorch's NaN;
Adadelta's ``eps`` must be positive (with 0 its steps stay 0); a denormal
``eps`` (below 1.18e-38, flushed to 0 by the hardware) raises.
A numeric option given as an array (e.g. injected by ``inject_hyperparams``)
keeps its step in the chain even when it is zero, so the state's structure does
not depend on its value; the numbers are PyTorch's either way.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.torch.sgd(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-4)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, ScalarOrSchedule
from jaxopt_zoo.combine import chain, split_real_and_imaginary
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.transforms import (
    add_decayed_weights,
    scale,
    scale_by_adadelta,
    scale_by_adam,
    scale_by_amsgrad,
    scale_by_learning_rate,
    scale_by_rms,
    scale_by_rss,
    scale_by_stddev,
    trace,
)

__all__ = ["adadelta", "adagrad", "adam", "adamw", "rmsprop", "sgd"]

Number = float | jax.Array


def _recipe(
    owner: str, lr: ScalarOrSchedule, maximize: bool, weight_decay: Number, *steps: GradientTransformation
) -> GradientTransformation:
    # PyTorch's shared frame: negate for maximize, L2 weight decay, the rule, then the rate;
    # complex leaves as real pairs. The options are checked here under PyTorch's names.
    validation.scalar_or_schedule(owner, "lr", lr)
    validation.flag(owner, "maximize", maximize)
    validation.non_negative(owner, "weight_decay", weight_decay)
    prologue = [scale(-1.0)] if maximize else []
    if not validation.is_literal_zero(weight_decay):
        prologue.append(add_decayed_weights(weight_decay))
    return split_real_and_imaginary(chain(*prologue, *steps, scale_by_learning_rate(lr)))


def _betas(owner: str, betas: Any) -> tuple[Number, Number]:
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}.")
    for index, beta in enumerate(betas):
        validation.decay_rate(owner, f"betas[{index}]", beta)
    return betas[0], betas[1]


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
    if nesterov and (mu == 0 or (tau is not None and tau != 0)):
        raise ValueError(
            f"torch.sgd: nesterov=True requires a momentum > 0 and zero dampening, "
            f"got momentum={momentum!r}, dampening={dampening!r}."
        )
    if validation.is_literal_zero(momentum):
        return _recipe("torch.sgd", lr, maximize, weight_decay)
    if not isinstance(momentum, (int, float)):
        # PyTorch keeps no buffer when momentum is 0, so dampening must not act then;
        # an array momentum may be 0 only at run time.
        dampening = jnp.where(jnp.asarray(momentum) == 0, 0.0, dampening)
    momentum_trace = trace(momentum, nesterov=nesterov, dampening=dampening, accumulator_dtype=accumulator_dtype)
    return _recipe("torch.sgd", lr, maximize, weight_decay, momentum_trace)


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
        \\theta \\leftarrow \\theta - \\gamma b_t \\quad (b_t = g / (\\sqrt{\\tilde v_t} + \\varepsilon) \\text{ when } \\mu = 0).

    Unlike :func:`jaxopt_zoo.rmsprop` (Optax's form) the learning rate comes
    after the momentum, as in PyTorch. ``alpha`` must lie in [0, 1] (PyTorch
    accepts any ``alpha >= 0``). Recipe: ``chain(..., scale_by_rms(alpha, eps, 0.0, eps_in_sqrt=False,
    nu_dtype=nu_dtype)`` (or ``scale_by_stddev(..., mu_dtype=mu_dtype, nu_dtype=nu_dtype)`` when
    ``centered``), ``trace(momentum, accumulator_dtype=accumulator_dtype), scale_by_learning_rate(lr))``.
    The three storage options are additions to PyTorch.

    Args:
        nu_dtype: storage of the mean square: a storage (see :mod:`jaxopt_zoo.storage`).
        mu_dtype: storage of the mean (``centered`` only): a storage (see :mod:`jaxopt_zoo.storage`).
        accumulator_dtype: storage of the momentum buffer: a storage (see :mod:`jaxopt_zoo.storage`).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.torch.rmsprop(lr=1e-3, momentum=0.9, centered=True)
    """
    del capturable, foreach, differentiable
    owner = "torch.rmsprop"
    validation.fraction(owner, "alpha", alpha)
    validation.epsilon(owner, "eps", eps)
    validation.flag(owner, "centered", centered)
    validation.non_negative(owner, "momentum", momentum)
    validation.state_dtypes(owner, nu_dtype=nu_dtype, mu_dtype=mu_dtype, accumulator_dtype=accumulator_dtype)
    if centered:
        scaling = scale_by_stddev(alpha, eps, 0.0, eps_in_sqrt=False, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    else:
        scaling = scale_by_rms(alpha, eps, 0.0, eps_in_sqrt=False, nu_dtype=nu_dtype)
    # The momentum buffer sums g / avg before the rate: b = mu b + g / avg, theta -= lr b.
    steps = [] if validation.is_literal_zero(momentum) else [trace(momentum, accumulator_dtype=accumulator_dtype)]
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
        \\theta \\leftarrow \\theta - \\gamma \\frac{m_t / (1 - \\beta_1^t)}{\\sqrt{\\hat v_t / (1 - \\beta_2^t)} + \\varepsilon}

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
    :math:`\\theta \\leftarrow \\theta - \\gamma \\lambda \\theta - \\gamma \\hat m_t / (\\sqrt{\\hat v_t} + \\varepsilon)`.

    The default ``weight_decay`` is PyTorch's 1e-2 (Optax's ``adamw`` uses 1e-4).
    Recipe: :func:`adam`'s, with ``add_decayed_weights(weight_decay)`` after the scaling
    and no L2 term. ``mu_dtype`` and ``nu_dtype`` are additions to PyTorch.

    Args:
        mu_dtype: storage of the first moment: a storage (see :mod:`jaxopt_zoo.storage`).
        nu_dtype: storage of the second moment (and max): a storage (see :mod:`jaxopt_zoo.storage`).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.torch.adamw(lr=1e-3)
    """
    del foreach, capturable, differentiable, fused
    return _adam_family(
        "torch.adamw", lr, betas, eps, weight_decay, amsgrad, maximize, True, mu_dtype=mu_dtype, nu_dtype=nu_dtype
    )
