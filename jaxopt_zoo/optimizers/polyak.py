"""Polyak step-size SGD: polyak_sgd, Optax's recipe of :func:`jaxopt_zoo.transforms.polyak.scale_by_polyak`."""

from __future__ import annotations

import jax

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, ScalarOrSchedule
from jaxopt_zoo.combine import chain
from jaxopt_zoo.optimizers.classic import sgd
from jaxopt_zoo.sharding import AxisName
from jaxopt_zoo.transforms import scale_by_polyak
from jaxopt_zoo.transforms.polyak import POLYAK_VARIANTS

__all__ = ["polyak_sgd"]


def polyak_sgd(
    max_learning_rate: jax.typing.ArrayLike = 1.0,
    scaling: ScalarOrSchedule = 1.0,
    f_min: jax.typing.ArrayLike = 0.0,
    eps: jax.typing.ArrayLike = 0.0,
    variant: str = "sps",
    *,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """SGD with the stochastic Polyak step size (Loizou et al. 2021; SPS+, Garrigos et al. 2023).

    .. math::

        d_t = -s_t \\, g_t, \\qquad
        \\gamma_t = \\min\\left\\{\\frac{f(x_t) - f^\\star}{\\|d_t\\|^2 + \\epsilon},\\ \\gamma_{\\max}\\right\\},
        \\qquad
        \\theta_{t+1} = \\theta_t + \\gamma_t d_t,

    with ``variant="sps+"`` taking :math:`(f(x_t) - f^\\star)_+`. Recipe:
    ``chain(sgd(scaling), scale_by_polyak(f_min, max_learning_rate, eps, variant))``,
    Optax's. Call it with the objective's value:
    ``update(grads, state, params, value=f(params))``.

    Numerically identical to ``optax.polyak_sgd``. Note that, as in Optax, the
    Polyak step is computed from the already scaled direction :math:`d_t`, so
    for :math:`s \\ne 1` the step is
    :math:`\\min\\{(f - f^\\star)/(s \\|g\\|^2 + \\epsilon / s), s \\gamma_{\\max}\\} g`,
    not :math:`s` times the :math:`s = 1` step. ``axis_name`` is an addition
    (the norm of the whole tree inside ``shard_map``).

    Args:
        max_learning_rate: :math:`\\gamma_{\\max} \\ge 0`, the largest Polyak step.
        scaling: :math:`s \\ge 0`, a factor on the gradient, or a schedule of the step count.
        f_min: :math:`f^\\star`, a lower bound of the objective (0 for models that interpolate the data).
        eps: :math:`\\epsilon \\ge 0`, added to the squared norm.
        variant: ``"sps"`` or ``"sps+"``.
        axis_name: inside ``shard_map``, the mesh axes the gradients may be sharded over.

    Example:
        >>> import jax, jax.numpy as jnp, jaxopt_zoo as jz
        >>> f = lambda x: jnp.sum(x**2)
        >>> tx, params = jz.polyak_sgd(), jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(params)
        >>> value, grads = jax.value_and_grad(f)(params)
        >>> updates, state = tx.update(grads, state, params, value=value)
        >>> f(jz.apply_updates(params, updates))  # 14 / 4: the step 14 / 56 halves the params
        Array(3.5, dtype=float32)

    References:
        Loizou et al., "Stochastic Polyak Step-size for SGD: An Adaptive Learning Rate for Fast
        Convergence", AISTATS 2021 (arXiv:2002.10542).
        Garrigos et al., "Function Value Learning: Adaptive Learning Rates Based on the Polyak
        Stepsize and Function Splitting in ERM", 2023 (arXiv:2307.14528).
    """
    owner = "polyak_sgd"
    validation.non_negative(owner, "max_learning_rate", max_learning_rate)
    validation.scalar_or_schedule(owner, "scaling", scaling)
    validation.real_scalar(owner, "f_min", f_min)
    validation.epsilon(owner, "eps", eps)
    if not isinstance(variant, str) or variant not in POLYAK_VARIANTS:
        raise ValueError(f"{owner}: variant must be one of {', '.join(map(repr, POLYAK_VARIANTS))}, got {variant!r}.")
    validation.axis_name(owner, axis_name)
    return chain(
        sgd(learning_rate=scaling),
        scale_by_polyak(f_min, max_learning_rate, eps, variant, axis_name=axis_name),
    )
