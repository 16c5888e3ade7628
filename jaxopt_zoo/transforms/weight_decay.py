"""Decoupled weight decay: adding a multiple of the parameters to the updates."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import (
    EmptyState,
    GradientTransformation,
    Params,
    ScalarOrSchedule,
    check_state,
    safe_increment,
    zero_count,
)
from jaxopt_zoo.combine import masked


class WeightDecayScheduleState(NamedTuple):
    """Step count for a scheduled weight decay."""

    count: jax.Array


def add_decayed_weights(
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any | Callable[[Params], Any] | None = None,
) -> GradientTransformation:
    """Add the parameters times the weight decay to the updates: :math:`u_t = g_t + \\lambda_t \\theta_t`.

    Placed before the learning-rate scaling (as in :func:`jaxopt_zoo.adamw`)
    this is decoupled weight decay, :math:`\\theta_{t+1} = \\theta_t - \\alpha_t
    (\\ldots + \\lambda \\theta_t)` (Loshchilov & Hutter 2019); placed first in a
    chain it is L2 regularisation.

    Args:
        weight_decay: :math:`\\lambda \\ge 0`, or a schedule of the step count.
        mask: a tree of booleans shaped like the params (or a prefix of it), or
            a callable building one from the params: ``True`` where decay applies;
            ``None`` (the default) decays every param.

    Example:
        >>> import jax, jaxopt_zoo as jz
        >>> no_bias = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
        >>> tx = jz.add_decayed_weights(1e-4, mask=no_bias)

    References:
        Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """
    validation.scalar_or_schedule("add_decayed_weights", "weight_decay", weight_decay)
    return add_params_times(weight_decay, mask)


def add_params_times(
    rate: ScalarOrSchedule, mask: Any | Callable[[Params], Any] | None = None, *, owner: str = "add_decayed_weights"
) -> GradientTransformation:
    """:math:`u_t = g_t + r_t \\theta_t` for a rate of any sign: :func:`add_decayed_weights` without its check.

    For rules whose rate is negative by design (Fromage's shrinkage); errors name ``owner``.
    """
    weight_decay = rate
    scheduled = callable(weight_decay)
    # As Optax: a literal zero adds nothing (and reads no parameter), but the
    # transformation and its state keep their usual form.
    literal_zero = validation.is_literal_zero(weight_decay)

    def init(params):
        del params
        return WeightDecayScheduleState(zero_count()) if scheduled else EmptyState()

    def update(updates, state, params=None, **extra_args):
        del extra_args
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, params, "the params")
        if scheduled:
            check_state(owner, state, WeightDecayScheduleState)
        new_state = WeightDecayScheduleState(safe_increment(state.count)) if scheduled else state
        if literal_zero:
            return updates, new_state
        rate = weight_decay(state.count) if scheduled else weight_decay
        updates = tree.map_updates(lambda g, p: g + rate * p, updates, params)
        return updates, new_state

    decay = GradientTransformation(init, update)
    return decay if mask is None else masked(decay, mask)
