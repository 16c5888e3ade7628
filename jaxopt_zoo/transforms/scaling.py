"""Scaling by a constant, a learning rate, or a schedule of the step count."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import validation
from jaxopt_zoo.base import (
    GradientTransformation,
    ScalarOrSchedule,
    Schedule,
    check_state,
    init_empty_state,
    safe_increment,
    zero_count,
)
from jaxopt_zoo.tree import map_updates


def scale(step_size: jax.typing.ArrayLike) -> GradientTransformation:
    """Multiply updates by a constant: :math:`u_t = s \\, g_t`.

    Args:
        step_size: the scalar :math:`s` (any sign).

    ``scale(-1.0)`` first in a chain turns any optimizer into a maximizer
    (PyTorch's ``maximize=True``: the gradient is negated before anything else).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.scale(-0.01)   # plain gradient descent with rate 0.01
        >>> ascent = jz.chain(jz.scale(-1.0), jz.adam(1e-3))   # maximizes the objective
    """
    validation.real_scalar("scale", "step_size", step_size)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        return map_updates(lambda g: step_size * g, updates), state

    return GradientTransformation(init_empty_state, update)


class ScaleByScheduleState(NamedTuple):
    """The number of updates applied so far (int32, saturating)."""

    count: jax.Array


def scale_by_schedule(step_size_fn: Schedule) -> GradientTransformation:
    """Multiply updates by a schedule of the step count: :math:`u_t = s(t) \\, g_t`, :math:`t = 0, 1, ...`.

    Args:
        step_size_fn: a pure, jit-safe function of the int32 step count
            (0 on the first update) returning a scalar.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.scale_by_schedule(lambda t: -0.1 * 0.99**t)
    """
    if not callable(step_size_fn):
        raise ValueError(
            f"scale_by_schedule: step_size_fn must be a callable of the step count, got {step_size_fn!r}."
        )

    def init(params):
        del params
        return ScaleByScheduleState(count=zero_count())

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_state("scale_by_schedule", state, ScaleByScheduleState)
        step_size = step_size_fn(state.count)
        updates = map_updates(lambda g: jnp.asarray(step_size, dtype=g.dtype) * g, updates)
        return updates, ScaleByScheduleState(count=safe_increment(state.count))

    return GradientTransformation(init, update)


def scale_by_learning_rate(
    learning_rate: ScalarOrSchedule | None, *, flip_sign: bool = True
) -> GradientTransformation:
    """Multiply updates by the negative learning rate: :math:`u_t = -\\alpha_t \\, g_t`.

    Args:
        learning_rate: a constant :math:`\\alpha \\ge 0`, or a schedule
            :math:`\\alpha_t` (a callable of the step count, see
            :func:`scale_by_schedule`). ``None`` means a rate of 1, so every
            optimizer given ``learning_rate=None`` still descends. Deviation from
            Optax, whose aliases then skip this step and so climb the gradient.
        flip_sign: when ``False``, scale by :math:`+\\alpha_t` (gradient ascent).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.chain(jz.scale_by_adam(), jz.scale_by_learning_rate(1e-3))
    """
    validation.flag("scale_by_learning_rate", "flip_sign", flip_sign)
    if learning_rate is None:
        learning_rate = 1.0
    validation.scalar_or_schedule("scale_by_learning_rate", "learning_rate", learning_rate)
    sign = -1 if flip_sign else 1
    if callable(learning_rate):
        return scale_by_schedule(lambda count: sign * learning_rate(count))
    return scale(sign * learning_rate)
