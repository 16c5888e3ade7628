"""Polyak step sizes: scale_by_polyak.

The step that would reach the minimum value :math:`f^\\star` if the objective
were linear, :math:`(f(x) - f^\\star) / \\|g\\|^2`, capped. It needs the
objective's value at each step: ``update(updates, state, params, value=f(params))``.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.chain(jz.scale(-1.0), jz.scale_by_polyak(f_min=0.0))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, init_empty_state
from jaxopt_zoo.sharding import AxisName, sum_over_shards

__all__ = ["scale_by_polyak"]

POLYAK_VARIANTS = ("sps", "sps+")

# Optax tests the denominator against float64's machine epsilon, whatever the dtype of the norm.
_TINY_DENOMINATOR = float(jnp.finfo(float).eps)


def scale_by_polyak(
    f_min: jax.typing.ArrayLike = 0.0,
    max_learning_rate: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 0.0,
    variant: str = "sps",
    *,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """Scale the updates by the stochastic Polyak step size (Loizou et al. 2021).

    .. math::

        \\gamma_t = \\min\\left\\{\\frac{f(x_t) - f^\\star}{\\|u_t\\|^2 + \\epsilon},\\ \\gamma_{\\max}\\right\\},
        \\qquad u_t \\leftarrow \\gamma_t u_t,

    with :math:`\\gamma_t = 0` where :math:`\\|u_t\\|^2 + \\epsilon` is at most
    float64's machine epsilon (:math:`2.2 \\times 10^{-16}`). :math:`\\|u_t\\|` is
    the norm of the whole updates tree. ``variant="sps+"`` (Garrigos et al. 2023)
    uses the positive part :math:`(f(x_t) - f^\\star)_+` of the gap. The value
    :math:`f(x_t)` comes with each call: ``update(updates, state, params,
    value=f(params))``; without it ``update`` raises.

    Numerically identical to ``optax.scale_by_polyak``. Deviations from Optax: an
    unknown ``variant`` and bad numbers raise when the transformation is built
    (Optax raises at the first update); a missing ``value``, or one that is
    not a scalar (an unreduced loss, which Optax turns into per-element step
    sizes), raises a ``ValueError`` that says how to pass it; ``None`` updates stay ``None``
    and count for nothing in the norm; float16 updates are squared and summed
    in float32; ``axis_name`` is an addition.

    Args:
        f_min: :math:`f^\\star`, a lower bound of the objective (0 for models that interpolate the data).
        max_learning_rate: :math:`\\gamma_{\\max} \\ge 0`, the largest step size.
        eps: :math:`\\epsilon \\ge 0`, added to the squared norm.
        variant: ``"sps"`` or ``"sps+"``.
        axis_name: inside ``shard_map``, the mesh axes the updates may be sharded
            over, so that :math:`\\|u_t\\|` is the whole tree's.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_polyak()
        >>> updates, _ = tx.update(jnp.array([2.0, 0.0]), tx.init(None), value=1.0)
        >>> updates  # (1 - 0) / 4 times the updates
        Array([0.5, 0. ], dtype=float32)

    References:
        Loizou et al., "Stochastic Polyak Step-size for SGD: An Adaptive Learning Rate for Fast
        Convergence", AISTATS 2021 (arXiv:2002.10542).
        Garrigos et al., "Function Value Learning: Adaptive Learning Rates Based on the Polyak
        Stepsize and Function Splitting in ERM", 2023 (arXiv:2307.14528).
    """
    owner = "scale_by_polyak"
    validation.real_scalar(owner, "f_min", f_min)
    validation.non_negative(owner, "max_learning_rate", max_learning_rate)
    validation.epsilon(owner, "eps", eps)
    if not isinstance(variant, str) or variant not in POLYAK_VARIANTS:
        raise ValueError(f"{owner}: variant must be one of {', '.join(map(repr, POLYAK_VARIANTS))}, got {variant!r}.")
    axis_name = validation.axis_name(owner, axis_name)

    def update(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        if value is None:
            raise ValueError(
                f"{owner} needs the objective's value at the current params: call "
                "update(updates, state, params, value=f(params)) (jax.value_and_grad gives both)."
            )
        validation.scalar_loss(owner, "value", value)  # an unreduced loss would give per-element step sizes
        # Summed leaf by leaf in tree order, as Optax sums, for the same bits.
        leaves = [u for u in jax.tree.leaves(updates) if u is not None]
        norm_sq = sum_over_shards(owner, ((jnp.sum(tree.abs_sq(u)), u) for u in leaves), axis_name)
        gap = jnp.array(value - f_min).astype(norm_sq.dtype)
        if variant == "sps+":
            gap = jnp.maximum(gap, 0)
        # No direction to step along: no step.
        step = jnp.minimum(tree.divide_unless_small(gap, norm_sq + eps, _TINY_DENOMINATOR), max_learning_rate)
        return tree.map_updates(lambda u: step * u, updates), state

    return GradientTransformation(init_empty_state, update)

