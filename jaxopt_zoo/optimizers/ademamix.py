"""AdEMAMix aliases: ademamix, simplified_ademamix, Optax's recipes of :mod:`jaxopt_zoo.transforms.ademamix`."""

from __future__ import annotations

from typing import Any, Callable

import jax

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, Params, ScalarOrSchedule
from jaxopt_zoo.combine import chain
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.transforms import add_decayed_weights, scale_by_learning_rate
from jaxopt_zoo.transforms.ademamix import scale_by_ademamix, scale_by_simplified_ademamix

__all__ = ["ademamix", "simplified_ademamix"]


def _common(owner: str, learning_rate: Any, b1: Any, b2: Any, alpha: Any, eps: Any, eps_root: Any,
            weight_decay: Any) -> None:
    # The checks both aliases share, under the alias's name.
    validation.learning_rate(owner, learning_rate)
    validation.decay_rate(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    validation.scalar_or_schedule(owner, "alpha", alpha)
    validation.epsilon(owner, "eps", eps)
    validation.epsilon(owner, "eps_root", eps_root)
    validation.scalar_or_schedule(owner, "weight_decay", weight_decay)


def ademamix(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    b3: ScalarOrSchedule = 0.9999,
    alpha: ScalarOrSchedule = 5.0,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: StateDtype = None,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any | Callable[[Params], Any] | None = None,
    *,
    m2_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """AdEMAMix (Pagliardini et al. 2024): AdamW whose numerator mixes a fast and a slow momentum.

    .. math::

        \\theta_{t+1} = \\theta_t - \\eta_t \\Big(\\frac{\\hat m^{(1)}_t + \\alpha(t)\\, m^{(2)}_t}
        {\\sqrt{\\hat\\nu_t + \\bar\\varepsilon} + \\varepsilon} + \\lambda \\theta_t\\Big),

    with the moments of :func:`jaxopt_zoo.scale_by_ademamix`. Recipe: ``chain(scale_by_ademamix(b1, b2, b3,
    alpha, eps, eps_root, mu_dtype, m2_dtype=m2_dtype, nu_dtype=nu_dtype), add_decayed_weights(weight_decay,
    mask), scale_by_learning_rate(learning_rate))``, as ``optax.contrib.ademamix``: the decay is multiplied by
    the learning rate. Its slow momentum needs many steps: the paper uses :math:`\\beta_3 = 0.9999` with
    warm-up schedules for :math:`\\alpha` and :math:`\\beta_3` on long runs, and a smaller
    :math:`\\beta_3` (0.999) on short ones. Note Optax's defaults: ``alpha=5.0`` here, 6.0 in the transformation.

    Differences from ``optax.contrib.ademamix``: those of :func:`jaxopt_zoo.scale_by_ademamix` (the moments
    stay in their storages; ``m2_dtype`` and ``nu_dtype`` are additions).

    Args:
        learning_rate: :math:`\\eta \\ge 0`, or a schedule of the step count.
        b1: decay :math:`\\beta_1 \\in [0, 1)` of the fast EMA.
        b2: decay :math:`\\beta_2 \\in [0, 1)` of the second moment.
        b3: decay :math:`\\beta_3 \\in [0, 1)` of the slow EMA, or a schedule of the step count.
        alpha: weight :math:`\\alpha \\ge 0` of the slow EMA, or a schedule of the step count.
        eps: :math:`\\varepsilon \\ge 0`, added outside the square root.
        eps_root: :math:`\\bar\\varepsilon \\ge 0`, added inside the square root.
        mu_dtype: storage of the fast EMA: a storage (see :mod:`jaxopt_zoo.storage`).
        weight_decay: :math:`\\lambda \\ge 0`, or a schedule of the step count.
        mask: a tree of booleans shaped like (a prefix of) the params, or a function of the params
            returning one: ``True`` where the weight decay applies.
        m2_dtype: storage of the slow EMA; ``None`` follows ``mu_dtype``.
        nu_dtype: storage of the second moment; ``None`` follows ``mu_dtype``.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.ademamix(1e-3, b3=0.999, weight_decay=0.1, mu_dtype=jz.StochasticBF16())

    References:
        Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older", ICLR 2025
        (arXiv:2409.03137).
    """
    owner = "ademamix"
    _common(owner, learning_rate, b1, b2, alpha, eps, eps_root, weight_decay)
    if not callable(b3):
        validation.decay_rate(owner, "b3", b3)
    validation.state_dtypes(owner, mu_dtype=mu_dtype, m2_dtype=m2_dtype, nu_dtype=nu_dtype)
    return chain(
        scale_by_ademamix(b1, b2, b3, alpha, eps, eps_root, mu_dtype, m2_dtype=m2_dtype, nu_dtype=nu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def simplified_ademamix(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.99,
    b2: jax.typing.ArrayLike = 0.95,
    alpha: ScalarOrSchedule = 0.0,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any | Callable[[Params], Any] | None = None,
    *,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """Simplified AdEMAMix (Morwani et al. 2025): one undamped momentum, no :math:`\\alpha` schedule needed.

    .. math::

        \\theta_{t+1} = \\theta_t - \\eta_t \\Big(\\frac{m_t + \\alpha(t)\\, g_t}
        {\\sqrt{\\hat n_t + \\bar\\varepsilon} + \\varepsilon} + \\lambda \\theta_t\\Big),
        \\qquad m_t = \\beta_1 m_{t-1} + g_t,

    with the moments of :func:`jaxopt_zoo.scale_by_simplified_ademamix`. Recipe:
    ``chain(scale_by_simplified_ademamix(b1, b2, alpha, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
    add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))``, as
    ``optax.contrib.simplified_ademamix``. The momentum is not an average (no :math:`1 - \\beta_1`), so the
    learning rate is :math:`1 - \\beta_1` times Adam's for the same step.

    Differences from ``optax.contrib.simplified_ademamix``: those of
    :func:`jaxopt_zoo.scale_by_simplified_ademamix` (complex gradients square to :math:`|g|^2`; the storage
    options are additions).

    Args:
        learning_rate: :math:`\\eta \\ge 0`, or a schedule of the step count.
        b1: decay :math:`\\beta_1 \\in [0, 1)` of the momentum.
        b2: decay :math:`\\beta_2 \\in [0, 1)` of the second moment.
        alpha: weight :math:`\\alpha \\ge 0` of the current gradient, or a schedule of the step count.
        eps: :math:`\\varepsilon \\ge 0`, added outside the square root.
        eps_root: :math:`\\bar\\varepsilon \\ge 0`, added inside the square root.
        weight_decay: :math:`\\lambda \\ge 0`, or a schedule of the step count.
        mask: where the weight decay applies; see :func:`jaxopt_zoo.add_decayed_weights`.
        mu_dtype: storage of the momentum: a storage (see :mod:`jaxopt_zoo.storage`).
        nu_dtype: storage of the second moment, as for ``mu_dtype``.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.simplified_ademamix(1e-4, alpha=2.0, weight_decay=0.1)

    References:
        Morwani et al., "Connections between Schedule-Free Optimizers, AdEMAMix, and Accelerated SGD
        Variants", arXiv:2502.02431, 2025.
    """
    owner = "simplified_ademamix"
    _common(owner, learning_rate, b1, b2, alpha, eps, eps_root, weight_decay)
    validation.state_dtypes(owner, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    return chain(
        scale_by_simplified_ademamix(b1, b2, alpha, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
