"""Layer-wise optimizers: NovoGrad (a per-array second moment) and Fromage (per-array relative steps)."""

from __future__ import annotations

import jax

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, ScalarOrSchedule
from jaxopt_zoo.combine import chain
from jaxopt_zoo.sharding import AxisName
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.transforms import scale_by_learning_rate, scale_by_novograd, scale_by_trust_ratio
from jaxopt_zoo.transforms.weight_decay import add_params_times

__all__ = ["fromage", "novograd"]


def novograd(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.25,
    eps: jax.typing.ArrayLike = 1e-6,
    eps_root: jax.typing.ArrayLike = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    *,
    mu_dtype: StateDtype = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """NovoGrad (Ginsburg et al. 2019): layer-wise normalised gradients with momentum.

    .. math::

        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) \\|g_t\\|^2 \\;(v_1 = \\|g_1\\|^2), \\qquad
        m_t = \\beta_1 m_{t-1} + \\frac{g_t}{\\sqrt{v_t + \\varepsilon_r} + \\varepsilon} + \\lambda \\theta_t, \\qquad
        \\theta_{t+1} = \\theta_t - \\alpha_t m_t,

    with one :math:`v` per parameter array. Recipe: ``chain(scale_by_novograd(b1, b2,
    eps, eps_root, weight_decay, mu_dtype, axis_name=axis_name),
    scale_by_learning_rate(learning_rate))``, numerically identical to
    ``optax.novograd`` (note its ``eps=1e-6``, where ``scale_by_novograd`` has 1e-8).
    Deviations from Optax are those of :func:`~jaxopt_zoo.transforms.scale_by_novograd`
    (notably, a ``weight_decay`` schedule works); ``mu_dtype`` and ``axis_name`` are additions.

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, or a schedule of the step count.
        b1: decay :math:`\\beta_1 \\in [0, 1)` of the first moment.
        b2: decay :math:`\\beta_2 \\in [0, 1)` of the layer-wise second moment.
        eps: :math:`\\varepsilon \\ge 0`, added to the denominator.
        eps_root: :math:`\\varepsilon_r \\ge 0`, added inside the square root.
        weight_decay: :math:`\\lambda \\ge 0`, or a schedule of the step count.
        mu_dtype: storage of the first moment: a storage (see :mod:`jaxopt_zoo.storage`).
        axis_name: inside ``shard_map``, the mesh axes the gradients may be sharded over.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.novograd(1e-2, weight_decay=1e-3)

    References:
        Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive
        Moments for Training of Deep Networks", 2019 (arXiv:1905.11286).
        Li et al., "Jasper: An End-to-End Convolutional Neural Acoustic Model", 2019.
    """
    owner = "novograd"
    validation.learning_rate(owner, learning_rate)
    validation.decay_rate(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    validation.epsilon(owner, "eps", eps)
    validation.epsilon(owner, "eps_root", eps_root)
    validation.scalar_or_schedule(owner, "weight_decay", weight_decay)
    validation.axis_name(owner, axis_name)
    validation.state_dtypes(owner, mu_dtype=mu_dtype)
    return chain(
        scale_by_novograd(b1, b2, eps, eps_root, weight_decay, mu_dtype, axis_name=axis_name),
        scale_by_learning_rate(learning_rate),
    )


def fromage(learning_rate: ScalarOrSchedule, min_norm: jax.typing.ArrayLike = 1e-6, *, axis_name: AxisName = None) -> GradientTransformation:
    """Fromage, Frobenius-matched gradient descent (Bernstein et al. 2020).

    Each parameter array moves by a step relative to its own norm, then shrinks
    so that its norm does not grow:

    .. math::

        \\theta_{t+1} = \\frac{1}{\\sqrt{1 + \\alpha_t^2}}
        \\Big(\\theta_t - \\alpha_t \\frac{\\|\\theta_t\\|}{\\|g_t\\|} g_t\\Big),

    with both norms at least ``min_norm`` (a ratio of 1 where either is zero).
    Recipe: ``chain(scale_by_trust_ratio(min_norm, axis_name=axis_name),
    scale_by_learning_rate(alpha / sqrt(1 + alpha**2)), <add (1/sqrt(1 + alpha**2) - 1) theta>)``
    (the last two as schedules when ``learning_rate`` is one), numerically identical to
    ``optax.fromage``. Deviations from Optax: ``learning_rate=None`` means a rate
    of 1 (Optax fails), and ``axis_name`` is an addition.

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, or a schedule of the step count.
        min_norm: floor :math:`\\ge 0` of the parameter and gradient norms.
        axis_name: inside ``shard_map``, the mesh axes the params and gradients
            may be sharded over, so that each norm is the whole array's.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.fromage(1e-2)

    References:
        Bernstein et al., "On the distance between two neural networks and the
        stability of learning", NeurIPS 2020.
    """
    owner = "fromage"
    validation.learning_rate(owner, learning_rate)
    validation.non_negative(owner, "min_norm", min_norm)
    validation.axis_name(owner, axis_name)
    if learning_rate is None:
        learning_rate = 1.0
    trust = scale_by_trust_ratio(min_norm, axis_name=axis_name)
    if callable(learning_rate):
        shrink = lambda count: 1 / (1 + learning_rate(count) ** 2) ** 0.5
        return chain(
            trust,
            scale_by_learning_rate(lambda count: shrink(count) * learning_rate(count)),
            add_params_times(lambda count: shrink(count) - 1, owner="fromage"),
        )
    shrink = 1 / (1 + learning_rate**2) ** 0.5
    return chain(trust, scale_by_learning_rate(learning_rate * shrink), add_params_times(shrink - 1, owner="fromage"))
