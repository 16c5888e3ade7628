"""Cautious and variance-reduced variants: C-AdamW, C-Lion, C-SGD (:func:`jaxopt_zoo.cautious`) and MARS-AdamW,
MARS-Lion (:func:`jaxopt_zoo.mars_correction`), each a recipe of this library's transformations."""

from __future__ import annotations

from typing import Any, Callable

import jax

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, Params, ScalarOrSchedule, identity
from jaxopt_zoo.combine import chain
from jaxopt_zoo.sharding import AxisName
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.transforms import (
    add_decayed_weights,
    ema,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_lion,
    scale_by_sign,
    trace,
)
from jaxopt_zoo.transforms.cautious import cautious
from jaxopt_zoo.transforms.mars import mars_correction

__all__ = ["cautious_adamw", "cautious_lion", "cautious_sgd", "mars_adamw", "mars_lion"]


def _maybe_cautious(owner: str, inner: GradientTransformation, caution: bool,
                    axis_name: AxisName) -> GradientTransformation:
    validation.flag(owner, "caution", caution)
    validation.axis_name(owner, axis_name)
    return cautious(inner, axis_name=axis_name) if caution else inner


def cautious_adamw(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: StateDtype = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any | Callable[[Params], Any] | None = None,
    *,
    nesterov: bool = False,
    nu_dtype: StateDtype = None,
    caution: bool = True,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """C-AdamW (Liang et al. 2024): AdamW whose Adam direction is masked where it disagrees with the gradient.

    .. math::

        u_t = \\frac{\\hat m_t}{\\sqrt{\\hat v_t + \\bar\\varepsilon} + \\varepsilon}, \\qquad
        \\phi_t = \\mathbb{1}[u_t \\odot g_t > 0], \\qquad
        \\theta_{t+1} = \\theta_t - \\alpha_t \\Big(\\frac{d}{\\operatorname{nnz}(\\phi_t) + 1}\\, \\phi_t \\odot u_t
        + \\lambda \\theta_t\\Big),

    per leaf (see :func:`jaxopt_zoo.cautious`). Recipe: ``chain(cautious(scale_by_adam(b1, b2, eps, eps_root,
    mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype), axis_name=axis_name), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``: the decay is not masked and is multiplied by the learning rate,
    as in the paper's C-AdamW. Optax's ``adamw`` signature and defaults; ``caution=False`` is
    ``jaxopt_zoo.adamw`` bit for bit.

    Differences from the paper and the authors' code: those of :func:`jaxopt_zoo.cautious` (the authors' current
    code scales by :math:`1/\\max(\\operatorname{mean}\\phi, 10^{-3})`, heavyball by :math:`d/\\max(\\operatorname{nnz},
    1)`). The authors' code masks :math:`m_t` against :math:`g_t`; the sign of :math:`u_t` is that of :math:`m_t`,
    so this is the same mask. The paper's Algorithm 1 writes the decay as its own line after the masked step,
    which taken literally decays the already-updated weights (a difference of :math:`\\alpha^2\\lambda\\,
    \\tilde u_t` per step); here, as in the authors' code and in AdamW, :math:`\\theta_t` is decayed.
    ``caution``, ``axis_name`` and ``nu_dtype`` are additions.

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, or a schedule of the step count.
        b1: decay :math:`\\beta_1 \\in [0, 1)` of the first moment.
        b2: decay :math:`\\beta_2 \\in [0, 1)` of the second moment.
        eps: :math:`\\varepsilon \\ge 0`, added outside the square root.
        eps_root: :math:`\\bar\\varepsilon \\ge 0`, added inside the square root.
        mu_dtype: storage of the first moment: a storage (see :mod:`jaxopt_zoo.storage`).
        weight_decay: :math:`\\lambda \\ge 0`, or a schedule of the step count.
        mask: where the weight decay applies; see :func:`jaxopt_zoo.add_decayed_weights`.
        nesterov: Adam's Nesterov form (NAdamW) as the direction.
        nu_dtype: storage of the second moment, as for ``mu_dtype``.
        caution: apply the mask; ``False`` gives plain AdamW.
        axis_name: inside ``shard_map``, the mesh axes the params may be sharded over (the mask's count).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.cautious_adamw(1e-3, weight_decay=0.1, mu_dtype=jz.StochasticBF16())

    References:
        Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One Line of Code", 2024,
        arXiv:2411.16085.
    """
    owner = "cautious_adamw"
    validation.learning_rate(owner, learning_rate)
    validation.adam_options(owner, b1, b2, eps, eps_root, nesterov)
    validation.scalar_or_schedule(owner, "weight_decay", weight_decay)
    validation.state_dtypes(owner, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    direction = scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype)
    return chain(
        _maybe_cautious(owner, direction, caution, axis_name),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def cautious_lion(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    mu_dtype: StateDtype = None,
    weight_decay: ScalarOrSchedule = 1e-3,
    mask: Any | Callable[[Params], Any] | None = None,
    *,
    caution: bool = True,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """C-Lion (Liang et al. 2024): Lion whose sign step is masked where it disagrees with the gradient.

    .. math::

        u_t &= \\operatorname{sign}(\\beta_1 m_{t-1} + (1 - \\beta_1) g_t),

        \\theta_{t+1} &= \\theta_t - \\alpha_t \\Big(\\frac{d}{\\operatorname{nnz}(\\phi_t) + 1}\\, \\phi_t \\odot u_t
        + \\lambda \\theta_t\\Big),

        m_t &= \\beta_2 m_{t-1} + (1 - \\beta_2) g_t,

    with :math:`\\phi_t = \\mathbb{1}[u_t \\odot g_t > 0]` per leaf (see :func:`jaxopt_zoo.cautious`). Recipe:
    ``chain(cautious(scale_by_lion(b1, b2, mu_dtype), axis_name=axis_name), add_decayed_weights(weight_decay,
    mask), scale_by_learning_rate(learning_rate))``. Optax's ``lion`` signature and defaults; ``caution=False``
    is ``jaxopt_zoo.lion`` bit for bit.

    Differences from the paper and the authors' code: those of :func:`jaxopt_zoo.cautious`; ``caution`` and
    ``axis_name`` are additions.

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, or a schedule of the step count.
        b1: :math:`\\beta_1 \\in [0, 1]`, the weight of the momentum in the update's interpolation.
        b2: :math:`\\beta_2 \\in [0, 1)`, the decay of the momentum.
        mu_dtype: storage of the momentum: a storage (see :mod:`jaxopt_zoo.storage`).
        weight_decay: :math:`\\lambda \\ge 0`, or a schedule of the step count.
        mask: where the weight decay applies; see :func:`jaxopt_zoo.add_decayed_weights`.
        caution: apply the mask; ``False`` gives plain Lion.
        axis_name: inside ``shard_map``, the mesh axes the params may be sharded over (the mask's count).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.cautious_lion(1e-4, weight_decay=1e-2)

    References:
        Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One Line of Code", 2024,
        arXiv:2411.16085. Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023.
    """
    owner = "cautious_lion"
    validation.learning_rate(owner, learning_rate)
    validation.fraction(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    validation.state_dtypes(owner, mu_dtype=mu_dtype)
    validation.scalar_or_schedule(owner, "weight_decay", weight_decay)
    return chain(
        _maybe_cautious(owner, scale_by_lion(b1=b1, b2=b2, mu_dtype=mu_dtype), caution, axis_name),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def cautious_sgd(
    learning_rate: ScalarOrSchedule,
    momentum: jax.typing.ArrayLike | None = None,
    nesterov: bool = False,
    accumulator_dtype: StateDtype = None,
    *,
    caution: bool = True,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """Cautious SGD with (Nesterov) momentum: the momentum step masked where it disagrees with the gradient.

    .. math::

        b_t = g_t + \\mu b_{t-1}, \\qquad u_t = b_t \\ \\text{or} \\ g_t + \\mu b_t \\ (\\text{Nesterov}), \\qquad
        \\theta_{t+1} = \\theta_t - \\alpha_t \\frac{d}{\\operatorname{nnz}(\\phi_t) + 1}\\, \\phi_t \\odot u_t,

    with :math:`\\phi_t = \\mathbb{1}[u_t \\odot g_t > 0]` per leaf (see :func:`jaxopt_zoo.cautious`). Recipe:
    ``chain(cautious(trace(momentum, nesterov, accumulator_dtype=accumulator_dtype), axis_name=axis_name),
    scale_by_learning_rate(learning_rate))``. The paper's rule applies to any momentum method; heavyball 3.2.1's
    ``SGD`` takes ``caution=True``. Without momentum every nonzero entry agrees, so the mask only drops the
    zeros and scales by :math:`d / (\\operatorname{nnz} + 1)`. Optax's ``sgd`` signature and defaults;
    ``caution=False`` is ``jaxopt_zoo.sgd`` bit for bit (``nesterov=True`` without a ``momentum`` raises there too).

    Differences from heavyball's ``SGD(caution=True)``: those of :func:`jaxopt_zoo.cautious` (its momentum buffer
    is :math:`b_t = \\beta b_{t-1} + g_t`, as here); ``caution`` and ``axis_name`` are additions.

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, or a schedule of the step count.
        momentum: :math:`\\mu \\ge 0`; ``None`` for plain SGD.
        nesterov: use Nesterov momentum.
        accumulator_dtype: storage of the momentum buffer: a storage (see :mod:`jaxopt_zoo.storage`).
        caution: apply the mask; ``False`` gives plain SGD.
        axis_name: inside ``shard_map``, the mesh axes the params may be sharded over (the mask's count).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.cautious_sgd(0.1, momentum=0.9)

    References:
        Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One Line of Code", 2024,
        arXiv:2411.16085.
    """
    owner = "cautious_sgd"
    validation.learning_rate(owner, learning_rate)
    if momentum is not None:
        validation.non_negative(owner, "momentum", momentum)
    validation.nesterov_needs_momentum(owner, momentum, nesterov)
    validation.state_dtypes(owner, accumulator_dtype=accumulator_dtype)
    if momentum is None:
        direction = identity()
    else:
        direction = trace(momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype)
    return chain(_maybe_cautious(owner, direction, caution, axis_name), scale_by_learning_rate(learning_rate))


def mars_adamw(
    learning_rate: ScalarOrSchedule = 3e-3,
    b1: jax.typing.ArrayLike = 0.95,
    b2: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: StateDtype = None,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any | Callable[[Params], Any] | None = None,
    *,
    gamma: ScalarOrSchedule = 0.025,
    max_norm: jax.typing.ArrayLike | None = 1.0,
    nu_dtype: StateDtype = None,
    prev_dtype: StateDtype = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """MARS-AdamW (Yuan et al. 2024): AdamW on MARS's variance-reduced, clipped gradient.

    .. math::

        c_t = g_t + \\gamma_t \\frac{\\beta_1}{1 - \\beta_1} (g_t - g_{t-1}), \\quad
        \\tilde c_t = \\operatorname{clip}(c_t, 1), \\quad
        m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) \\tilde c_t, \\quad
        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) \\tilde c_t^2, \\\\
        \\theta_{t+1} = \\theta_t - \\alpha_t \\Big(\\frac{m_t / (1 - \\beta_1^t)}
        {\\sqrt{v_t / (1 - \\beta_2^t) + \\bar\\varepsilon} + \\varepsilon} + \\lambda \\theta_t\\Big),

    the clip per leaf (see :func:`jaxopt_zoo.mars_correction`; :math:`c_1 = g_1`). Recipe:
    ``chain(mars_correction(gamma, b1, max_norm, prev_dtype=prev_dtype, axis_name=axis_name),
    scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``. Defaults are the authors' ``MARS`` optimizer's (``lr=3e-3``,
    ``betas=(0.95, 0.99)``, ``eps=1e-8``, ``weight_decay=0``, ``gamma=0.025``); their GPT-2 runs use a learning
    rate of 6e-3 / 3e-3 / 2e-3 (small / medium / large) and ``weight_decay=1e-2``. Both moments are of the
    clipped :math:`\\tilde c_t`, as in the paper's MARS-AdamW and the authors' code.

    Differences from the authors' code: those of :func:`jaxopt_zoo.mars_correction` (:math:`c_1 = g_1`).
    The authors' ``MARS`` by default (``optimize_1d=False``) trains 1-D params with plain AdamW
    (``betas_1d=(0.9, 0.95)``, ``lr_1d=3e-3``, ``weight_decay_1d=0.1``); here MARS applies to every leaf (their
    ``optimize_1d=True``): to reproduce theirs, ``jz.partition`` the 1-D leaves to ``jz.adamw``. ``max_norm``,
    ``eps_root``, the storages and ``axis_name`` are additions; ``gamma`` may be a schedule (the paper's
    :math:`\\gamma_t`).

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, or a schedule of the step count.
        b1: :math:`\\beta_1 \\in [0, 1)`, Adam's first-moment decay, also in the correction's weight.
        b2: decay :math:`\\beta_2 \\in [0, 1)` of the second moment.
        eps: :math:`\\varepsilon \\ge 0`, added outside the square root.
        eps_root: :math:`\\bar\\varepsilon \\ge 0`, added inside the square root.
        mu_dtype: storage of the first moment: a storage (see :mod:`jaxopt_zoo.storage`).
        weight_decay: :math:`\\lambda \\ge 0`, or a schedule of the step count.
        mask: where the weight decay applies; see :func:`jaxopt_zoo.add_decayed_weights`.
        gamma: :math:`\\gamma \\ge 0`, the strength of the correction, or a schedule of the step count.
        max_norm: the norm each leaf's corrected gradient is clipped to (1 in the paper); ``None``: no clip.
        nu_dtype: storage of the second moment, as for ``mu_dtype``.
        prev_dtype: storage of the previous gradient, as for ``mu_dtype``.
        axis_name: inside ``shard_map``, the mesh axes the params may be sharded over (the clip's norm).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.mars_adamw(6e-3, weight_decay=1e-2, prev_dtype=jz.StochasticBF16())

    References:
        Yuan, Liu, Wu, Zhou & Gu, "MARS: Unleashing the Power of Variance Reduction for Training Large Models",
        ICML 2025 (arXiv:2411.10438).
    """
    owner = "mars_adamw"
    validation.learning_rate(owner, learning_rate)
    validation.adam_options(owner, b1, b2, eps, eps_root, False)
    validation.scalar_or_schedule(owner, "weight_decay", weight_decay)
    validation.scalar_or_schedule(owner, "gamma", gamma)
    if max_norm is not None:
        validation.positive(owner, "max_norm", max_norm)
    validation.state_dtypes(owner, mu_dtype=mu_dtype, nu_dtype=nu_dtype, prev_dtype=prev_dtype)
    validation.axis_name(owner, axis_name)
    return chain(
        mars_correction(gamma, b1, max_norm, prev_dtype=prev_dtype, axis_name=axis_name),
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def mars_lion(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.95,
    mu_dtype: StateDtype = None,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any | Callable[[Params], Any] | None = None,
    *,
    gamma: ScalarOrSchedule = 0.025,
    max_norm: jax.typing.ArrayLike | None = 1.0,
    prev_dtype: StateDtype = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """MARS-Lion (Yuan et al. 2024): the sign of a momentum of MARS's variance-reduced, clipped gradient.

    .. math::

        m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) \\tilde c_t, \\qquad
        \\theta_{t+1} = \\theta_t - \\alpha_t \\big(\\operatorname{sign}(m_t) + \\lambda \\theta_t\\big),

    with :math:`\\tilde c_t` of :func:`jaxopt_zoo.mars_correction`. The paper's preconditioner
    :math:`H_t = \\sqrt{\\operatorname{diag}(m_t^2)}` turns the step into :math:`\\operatorname{sign}(m_t)`: a
    single momentum, Signum-like, not Lion's two-decay interpolation (the paper shows Lion itself is close to a
    MARS instance). Recipe: ``chain(mars_correction(gamma, b1, max_norm, prev_dtype=prev_dtype,
    axis_name=axis_name), ema(b1, debias=False, accumulator_dtype=mu_dtype), scale_by_sign(),
    add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))``, the authors'
    ``mars_type="mars-lion"``. The authors tuned their defaults for MARS-AdamW and advise tuning the learning
    rate for MARS-Lion, so it has no default here.

    Differences from the authors' code: those of :func:`jaxopt_zoo.mars_adamw` (:math:`c_1 = g_1`; MARS on
    every leaf).

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, or a schedule of the step count.
        b1: :math:`\\beta_1 \\in [0, 1)`, the momentum decay, also in the correction's weight.
        mu_dtype: storage of the momentum: a storage (see :mod:`jaxopt_zoo.storage`).
        weight_decay: :math:`\\lambda \\ge 0`, or a schedule of the step count.
        mask: where the weight decay applies; see :func:`jaxopt_zoo.add_decayed_weights`.
        gamma: :math:`\\gamma \\ge 0`, the strength of the correction, or a schedule of the step count.
        max_norm: the norm each leaf's corrected gradient is clipped to (1 in the paper); ``None``: no clip.
        prev_dtype: storage of the previous gradient, as for ``mu_dtype``.
        axis_name: inside ``shard_map``, the mesh axes the params may be sharded over (the clip's norm).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.mars_lion(3e-4, weight_decay=1e-2)

    References:
        Yuan, Liu, Wu, Zhou & Gu, "MARS: Unleashing the Power of Variance Reduction for Training Large Models",
        ICML 2025 (arXiv:2411.10438).
    """
    owner = "mars_lion"
    validation.learning_rate(owner, learning_rate)
    validation.decay_rate(owner, "b1", b1)
    validation.scalar_or_schedule(owner, "weight_decay", weight_decay)
    validation.scalar_or_schedule(owner, "gamma", gamma)
    if max_norm is not None:
        validation.positive(owner, "max_norm", max_norm)
    validation.state_dtypes(owner, mu_dtype=mu_dtype, prev_dtype=prev_dtype)
    validation.axis_name(owner, axis_name)
    return chain(
        mars_correction(gamma, b1, max_norm, prev_dtype=prev_dtype, axis_name=axis_name),
        ema(b1, debias=False, accumulator_dtype=mu_dtype),
        scale_by_sign(),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
