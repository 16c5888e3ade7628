"""reduce_on_plateau: scale updates down when a monitored value stops improving.

The monitored value (a validation loss, or the training loss averaged over
``accumulation_size`` calls) comes in as ``update(..., value=v)``; the state
holds the scale, the best value so far and the plateau and cooldown counters.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.chain(jz.adam(1e-3), jz.reduce_on_plateau(factor=0.5, patience=5))
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, expects_state, safe_increment

__all__ = ["ReduceLROnPlateauState", "reduce_on_plateau"]


class ReduceLROnPlateauState(NamedTuple):
    """The scale, the best (averaged) value, the plateau and cooldown counters, and the running average."""

    scale: jax.Array  # in the params' narrowest float dtype, so it does not widen the updates
    best_value: jax.Array  # in the params' widest float dtype
    plateau_count: jax.Array  # int32: averaged values since the last improvement
    cooldown_count: jax.Array  # int32: averaged values left before plateaus count again
    count: jax.Array  # int32: values in the running average so far
    avg_value: jax.Array  # the running average of the values of this accumulation


def _extreme_float_dtype(params, widest: bool):
    dtypes = [jnp.result_type(x) for x in jax.tree.leaves(params)]
    dtypes = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)] or [jnp.dtype(jnp.float32)]
    return max(dtypes, key=lambda d: d.itemsize) if widest else min(dtypes, key=lambda d: d.itemsize)


def reduce_on_plateau(
    factor: jax.typing.ArrayLike = 0.1,
    patience: jax.typing.ArrayLike = 10,
    rtol: jax.typing.ArrayLike = 1e-4,
    atol: jax.typing.ArrayLike = 0.0,
    cooldown: jax.typing.ArrayLike = 0,
    accumulation_size: jax.typing.ArrayLike = 1,
    min_scale: jax.typing.ArrayLike = 0.0,
) -> GradientTransformation:
    """Multiply the updates by a scale that drops by ``factor`` when the monitored value plateaus.

    Every ``accumulation_size`` calls, the average :math:`\\bar v` of the
    values passed as ``update(..., value=v)`` is compared with the best so far:

    .. math::

        \\text{improved} \\iff \\bar v < v_{best} - r\\, |v_{best}| - a, \\qquad
        s \\leftarrow \\max(\\gamma s, s_{min}) \\text{ after } p \\text{ averages without improvement},

    after which the plateau counter restarts and, for ``cooldown`` averages,
    plateaus are not counted. The updates are :math:`s\\, g` at every call.
    Keras's ``ReduceLROnPlateau`` (mode ``min``, relative threshold); PyTorch's
    reduces after :math:`p + 1` values without improvement, so its ``patience=p``
    is ``patience=p + 1`` here.

    Numerically ``optax.contrib.reduce_on_plateau`` for positive values. Differences:
    the relative threshold is taken of :math:`|v_{best}|` (Optax's, Keras's and
    PyTorch's :math:`(1 - r)\\, v_{best}` lies above a negative best, so a negative
    loss, such as a negative log-likelihood, that stays flat or slowly worsens
    counts as improving and the scale never drops); the first
    average always improves on the initial :math:`v_{best} = +\\infty` (with
    ``rtol=1`` Optax forms :math:`0 \\cdot \\infty = \\mathrm{NaN}` there and never
    records a best value); ``patience``, ``cooldown`` and ``accumulation_size``
    must be whole numbers (``patience`` and ``accumulation_size`` at least 1:
    Optax's ``patience=0`` never reduces) and ``min_scale`` must be in
    [0, 1]; the scale keeps its dtype when ``min_scale`` is a wider array;
    update without ``value=``, or with a ``value`` that is not a scalar (an
    unreduced loss), raises naming it; ``None`` updates stay ``None``.

    Args:
        factor: :math:`\\gamma \\in (0, 1)`, the scale's multiplier at each plateau.
        patience: :math:`p \\ge 1`, averages without improvement before the scale drops.
        rtol: :math:`r \\in [0, 1]`, the relative improvement required.
        atol: :math:`a \\ge 0`, the absolute improvement required (``rtol`` and ``atol`` not both 0).
        cooldown: averages after a drop during which plateaus are not counted.
        accumulation_size: values averaged before each comparison (1 for a validation loss).
        min_scale: :math:`s_{min}`, the scale below which it does not drop.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.reduce_on_plateau(factor=0.5, patience=2)
        >>> state = tx.init(jnp.zeros(2))
        >>> for loss in [1.0, 1.0, 1.0]:  # an improvement, then a plateau of 2
        ...     updates, state = tx.update(jnp.ones(2), state, value=loss)
        >>> updates, state.scale
        (Array([0.5, 0.5], dtype=float32), Array(0.5, dtype=float32))

    References:
        The ``ReduceLROnPlateau`` callbacks of Keras and PyTorch.
    """
    owner = "reduce_on_plateau"
    factor_value = validation.real_scalar(owner, "factor", factor)
    if factor_value is not None and not 0.0 < factor_value < 1.0:
        raise ValueError(f"{owner}: factor must be in (0, 1), got {factor!r}.")
    if not isinstance(patience, jax.core.Tracer):
        validation.whole_number(owner, "patience", patience, 1, validation.INT32_MAX)
    rtol_value = validation.fraction(owner, "rtol", rtol)
    atol_value = validation.non_negative(owner, "atol", atol)
    if rtol_value == 0.0 and atol_value == 0.0:
        raise ValueError(f"{owner}: rtol and atol must not both be 0 (nothing would count as a plateau's end).")
    if not isinstance(cooldown, jax.core.Tracer):
        validation.whole_number(owner, "cooldown", cooldown, 0, validation.INT32_MAX)
    if not isinstance(accumulation_size, jax.core.Tracer):
        validation.whole_number(owner, "accumulation_size", accumulation_size, 1, validation.INT32_MAX)
    validation.fraction(owner, "min_scale", min_scale)

    def init(params):
        widest = _extreme_float_dtype(params, widest=True)
        return ReduceLROnPlateauState(
            scale=jnp.asarray(1.0, _extreme_float_dtype(params, widest=False)),
            best_value=jnp.asarray(jnp.inf, widest),
            plateau_count=jnp.asarray(0, jnp.int32),
            cooldown_count=jnp.asarray(0, jnp.int32),
            count=jnp.asarray(0, jnp.int32),
            avg_value=jnp.asarray(0.0, widest),
        )

    def compare(state):
        # Called once per accumulation_size values, on their average.
        average, best = state.avg_value, state.best_value
        # best - rtol |best| - atol, formed as Optax's (1 - rtol) best - atol where best >= 0; +inf: nothing yet.
        relative = jnp.where(best >= 0, (1 - rtol) * best, (1 + rtol) * best)
        threshold = jnp.where(best == jnp.inf, jnp.inf, relative - atol)
        improved = average < threshold
        plateau = jnp.where(improved, 0, safe_increment(state.plateau_count))
        reduce = (state.cooldown_count <= 0) & (plateau == patience)
        scale = jnp.where(reduce, jnp.maximum(state.scale * factor, min_scale), state.scale)
        cooling = state.cooldown_count > 0
        cooldown_count = jnp.where(cooling, state.cooldown_count - 1, jnp.where(reduce, cooldown, 0))
        return ReduceLROnPlateauState(
            scale=scale.astype(state.scale.dtype),
            best_value=jnp.where(improved, average.astype(best.dtype), best),
            plateau_count=jnp.where(cooling | reduce, 0, plateau).astype(jnp.int32),
            cooldown_count=cooldown_count.astype(jnp.int32),
            count=jnp.zeros_like(state.count),
            avg_value=jnp.zeros_like(state.avg_value),
        )

    def update(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        if value is None:
            raise ValueError(f"{owner} needs the monitored value: call update(updates, state, params, value=loss).")
        validation.scalar_loss(owner, "value", value)
        count = safe_increment(state.count)
        average = (state.count * state.avg_value + jnp.asarray(value).astype(state.avg_value.dtype)) / count
        state = state._replace(avg_value=average.astype(state.avg_value.dtype), count=count)
        state = jax.lax.cond(count == accumulation_size, compare, lambda s: s, state)
        return tree.map_updates(lambda g: state.scale * g, updates), state

    return expects_state(owner, GradientTransformation(init, update), ReduceLROnPlateauState)
