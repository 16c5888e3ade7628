"""Constraints on params and updates: keep_params_nonnegative (params stay >= 0), round_params_stochastically and
compensate_params_rounding (low-precision params that keep small updates) and zero_nans (NaN updates become 0, and the
state records where it happened).

    >>> import jaxopt_zoo as jz
    >>> tx = jz.chain(jz.zero_nans(), jz.sgd(0.1), jz.keep_params_nonnegative())
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import rounding, tree, validation
from jaxopt_zoo.base import (
    EmptyState,
    GradientTransformation,
    Updates,
    check_state,
    expects_state,
    init_empty_state,
    safe_increment,
)
from jaxopt_zoo.sharding import AxisName, sum_over_shards
from jaxopt_zoo.storage import StateDtype, resolve, with_storage

__all__ = [
    "CompensateParamsRoundingState",
    "NonNegativeParamsState",
    "RoundParamsStochasticallyState",
    "ZeroNansState",
    "compensate_params_rounding",
    "keep_params_nonnegative",
    "round_params_stochastically",
    "zero_nans",
]

NonNegativeParamsState = EmptyState
"""The (empty) state of :func:`keep_params_nonnegative`, as in Optax."""


def keep_params_nonnegative() -> GradientTransformation:
    """Change the updates so that no param goes below zero:
    :math:`u = -\\theta` where :math:`\\theta + g < 0`, else :math:`u = g`.

    A projection onto :math:`\\theta \\ge 0`, so it belongs last in a chain (after the learning rate).
    A param that is already negative is moved to 0. Stateless; needs ``params``.

    Numerically identical to ``optax.keep_params_nonnegative``. Deviations: a ``None`` update stays
    ``None``, and updates shaped unlike the params raise naming the paths.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.keep_params_nonnegative()
        >>> params = jnp.array([1.0, 0.5, -1.0])
        >>> updates, _ = tx.update(jnp.array([-0.5, -2.0, 0.5]), tx.init(params), params)
        >>> jz.apply_updates(params, updates)
        Array([0.5, 0. , 0. ], dtype=float32)
    """
    owner = "keep_params_nonnegative"

    def update(updates, state, params=None, **extra_args):
        del extra_args
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, params, "the params")
        # As Optax, a None param gives a None update (nothing to keep non-negative).
        project = lambda g, p: None if p is None else jnp.where((p + g) < 0.0, -p, g)
        return tree.map_updates(project, updates, params), state

    return GradientTransformation(init_empty_state, update)


class RoundParamsStochasticallyState(NamedTuple):
    """``count``: the steps taken (int32, saturating), which seeds the random numbers."""

    count: jax.Array


_STOCHASTIC_ROUNDING = {jnp.dtype(jnp.bfloat16): rounding.to_bfloat16, jnp.dtype(jnp.float16): rounding.to_float16}



def round_params_stochastically() -> GradientTransformation:
    """Change the updates so that bfloat16 and float16 params are rounded stochastically, not to nearest:
    :math:`u' = \\mathrm{SR}(\\theta + u) - \\theta`, computed in float32, where

    .. math::
        \\mathrm{SR}(x) = \\begin{cases} \\lceil x \\rceil & \\text{with probability }
        (x - \\lfloor x \\rfloor) / (\\lceil x \\rceil - \\lfloor x \\rfloor) \\\\
        \\lfloor x \\rfloor & \\text{otherwise} \\end{cases}

    with :math:`\\lfloor x \\rfloor, \\lceil x \\rceil` the param dtype's neighbours of :math:`x`. Then
    :func:`~jaxopt_zoo.apply_updates` (or Optax's, or Flax's ``nnx.Optimizer``) makes
    :math:`\\theta + u' = \\mathrm{SR}(\\theta + u)` exactly, so
    :math:`E[\\theta_{t+1}] = \\theta_t + u_t`: a bfloat16 param keeps moving under updates below half its
    spacing (0.2 to 0.4% of its value), which rounding to nearest drops (Gupta et al. 2015, "Deep Learning
    with Limited Numerical Precision"; Zamirai et al. 2020, "Revisiting BFloat16 Training"). It belongs last in a
    chain (after the learning rate), and lets a model be trained in bfloat16 without float32 master weights.

    The random numbers hash the step count and the float32 value of :math:`\\theta + u`
    (:mod:`jaxopt_zoo.rounding`, as :class:`~jaxopt_zoo.StochasticBF16` does for moments), so jitted, vmapped,
    sharded and ``shard_map`` runs round alike and the state holds only the count. Elements of equal
    :math:`\\theta + u` round alike within a step: params that would stay equal in exact arithmetic stay
    equal. Other params (float32, float64, complex, integer) keep their updates as they are. The updates keep
    their dtype. A float32 :math:`u'` makes :math:`\\theta + u'` exactly :math:`\\mathrm{SR}(\\theta + u)`
    (unless a step shrinks a param more than :math:`2^{13}`-fold: then to within float32 rounding); a bfloat16
    one does whenever :math:`\\mathrm{SR}(\\theta + u)` is within a factor 2 of :math:`\\theta` (the
    difference is then a bfloat16 number), else to within its own rounding. :math:`\\theta + u` is first
    formed in float32, so an update below float32's resolution of :math:`\\theta` (:math:`2^{-24}` of it) is
    lost, as it would be by float32 params. A NaN or infinite :math:`\\theta + u` stays as it is. Differentiated
    (a gradient through optimizer steps), the rounding is the identity, the derivative of its expectation. An
    addition: neither Optax nor ``torch.optim`` has it (heavyball rounds its bfloat16 params this way, as does
    torchao's ``AdamW`` with ``bf16_stochastic_round``).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> w = (1 + jnp.arange(128) / 128).astype(jnp.bfloat16)  # every bfloat16 in [1, 2): spacing 2**-7
        >>> for tx in (jz.sgd(1e-3), jz.chain(jz.sgd(1e-3), jz.round_params_stochastically())):
        ...     params, state = w, tx.init(w)
        ...     for _ in range(10):  # the gradient of sum(w) is 1: each step moves w by -0.001
        ...         updates, state = tx.update(jnp.ones_like(params), state, params)
        ...         params = jz.apply_updates(params, updates)
        ...     print(round(float((params.astype(jnp.float32) - w.astype(jnp.float32)).mean()), 3))
        0.0
        -0.01
    """
    owner = "round_params_stochastically"

    def init(params):
        del params
        return RoundParamsStochasticallyState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, **extra_args):
        del extra_args
        check_state(owner, state, RoundParamsStochasticallyState)
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, params, "the params")

        def round_(u, p):
            to_dtype = None if p is None else _STOCHASTIC_ROUNDING.get(jnp.result_type(p))
            if to_dtype is None:
                return u
            u, p = jnp.asarray(u), jnp.asarray(p).astype(jnp.float32)  # u may be a Python float
            rounded = to_dtype(p + u.astype(jnp.float32), state.count).astype(jnp.float32)
            # 0, not inf - inf, where an infinite param stays; in the update's dtype (Optax's wrappers branch on it)
            return rounding.straight_through(u, jnp.where(rounded == p, 0.0, rounded - p).astype(u.dtype))

        return tree.map_updates(round_, updates, params), RoundParamsStochasticallyState(safe_increment(state.count))

    return GradientTransformation(init, update)


class CompensateParamsRoundingState(NamedTuple):
    """``compensation``: per param, the part of the past updates its rounding left out; ``count``: see
    :func:`~jaxopt_zoo.storage.with_storage`."""

    compensation: Updates
    count: jax.Array | None = None


def compensate_params_rounding(compensation_dtype: StateDtype = None) -> GradientTransformation:
    """Change the updates so that what rounding the params drops is carried to the next step (Kahan summation):

    .. math::
        y_t = u_t + c_{t-1}, \\qquad \\theta_{t+1} = \\mathrm{round}(\\theta_t + y_t), \\qquad
        c_t = y_t - (\\theta_{t+1} - \\theta_t), \\qquad u'_t = \\theta_{t+1} - \\theta_t,

    computed in float32 (or the params' wider dtype), with :math:`\\mathrm{round}` rounding to nearest in the
    param's dtype, as :func:`~jaxopt_zoo.apply_updates` (or Optax's, or Flax's ``nnx.Optimizer``) does: it then makes
    exactly :math:`\\theta_{t+1}` (the updates keep their dtype; where a bfloat16 :math:`u'_t` cannot hold the
    difference, :math:`c_t` takes the point it does reach). An update below half a bfloat16 param's spacing, which
    rounding drops, builds up in :math:`c` until it moves the param (Kahan 1965; for bfloat16 training, Zamirai et
    al. 2020, "Revisiting BFloat16 Training"). It belongs last in a chain (after the learning rate). Unlike
    :func:`round_params_stochastically` it is deterministic and close to float32 params' trajectory, for a
    compensation of the param's size (2 bytes for a bfloat16 param by default). Every real floating param is
    compensated (a float32 one for float32 rounding); integer and complex params, and ``None`` updates, keep their
    updates as they are. A NaN or infinite :math:`\\theta + y` is left as rounding to nearest leaves it, and
    carries nothing to the next step. An addition: neither Optax nor ``torch.optim`` has it (optimi's ``kahan_sum``
    does this for PyTorch).

    Args:
        compensation_dtype: storage of :math:`c`: ``None`` (the param's dtype; float32 for float16 params), a
            floating dtype, or a storage (see :mod:`jaxopt_zoo.storage`).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> w = (1 + jnp.arange(128) / 128).astype(jnp.bfloat16)  # every bfloat16 in [1, 2): spacing 2**-7
        >>> tx = jz.chain(jz.sgd(1e-3), jz.compensate_params_rounding())
        >>> params, state = w, tx.init(w)
        >>> for _ in range(10):  # the gradient of sum(w) is 1: each step moves w by -0.001
        ...     updates, state = tx.update(jnp.ones_like(params), state, params)
        ...     params = jz.apply_updates(params, updates)
        >>> moved = params.astype(jnp.float32) - w.astype(jnp.float32)  # whole spacings (rounding to nearest: 0)
        >>> carried = state[1].compensation.astype(jnp.float32)  # what they lack, to within its bfloat16 rounding
        >>> round(float(moved.mean()), 4), round(float((moved + carried).mean()), 4)
        (-0.0079, -0.01)
    """
    owner = "compensate_params_rounding"
    store = resolve(owner, "compensation_dtype", compensation_dtype)

    def compensated(u, c, p):
        # The update (in u's dtype: Optax's wrappers branch on it) that takes p to p + y rounded as apply_updates
        # rounds it, and the new compensation: y less where that update lands (in u's dtype it may be rounded too).
        if p is None or not jnp.issubdtype(jnp.result_type(p), jnp.floating):
            return u, c
        u, p = jnp.asarray(u), jnp.asarray(p)  # u may be a Python float
        wide = jnp.promote_types(p.dtype, jnp.float32)
        # Each narrowing behind a barrier: XLA may drop a narrowing and widening pair of converts (excess precision,
        # GPUs' bfloat16 normalisation), which here would lose the very rounding that is being compensated.
        narrowed = lambda x, dtype: jax.lax.optimization_barrier(x.astype(dtype)).astype(wide)  # noqa: E731
        y = u.astype(wide) + c.astype(wide)
        p_wide = p.astype(wide)
        # 0, not inf - inf, where an infinite param stays so (a NaN sum, an infinite param plus the opposite
        # infinity, stays NaN as rounding to nearest makes it)
        stays = jnp.isinf(p_wide) & ~jnp.isnan(p_wide + y)
        step = jnp.where(stays, 0.0, narrowed(p_wide + y, p.dtype) - p_wide)
        landed = jnp.where(stays, 0.0, narrowed(p_wide + narrowed(step, u.dtype), p.dtype) - p_wide)
        # Nothing carried from a step that overflowed (or went NaN): an infinite compensation would turn the next
        # step's infinite param into NaN, where rounding to nearest keeps it infinite.
        return step.astype(u.dtype), jnp.where(jnp.isfinite(landed), y - landed, 0.0).astype(c.dtype)

    def update(updates, state, params=None, **extra_args):
        del extra_args
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, params, "the params")
        # One pass over the leaves (a pair each), split into the updates and the compensation.
        pairs = jax.tree.map(lambda u, c, p: None if u is None else compensated(u, c, p), updates, state.compensation,
                             params, is_leaf=tree.is_none)
        new_updates = jax.tree.map(lambda u, pair: None if u is None else pair[0], updates, pairs, is_leaf=tree.is_none)
        compensation = jax.tree.map(lambda u, c, pair: c if u is None else pair[1], updates, state.compensation, pairs,
                                    is_leaf=tree.is_none)
        return new_updates, state._replace(compensation=compensation)

    def init(params):
        # Real zeros, also for the complex params it leaves alone (a complex leaf would be refused by a real storage);
        # zeros_like, so that init_sharded lays each out like its param.
        real = lambda dtype: jnp.real(jnp.zeros((), tree.moment_dtype(dtype))).dtype  # noqa: E731
        return CompensateParamsRoundingState(jax.tree.map(lambda p: jnp.zeros_like(p, real(jnp.result_type(p))),
                                                          params))

    tx = with_storage(GradientTransformation(init, update), signed={"compensation": store})
    return expects_state(owner, tx, CompensateParamsRoundingState)


class ZeroNansState(NamedTuple):
    """``found_nan``: one boolean scalar per param, whether its last update held a NaN (zeroed since)."""

    found_nan: Any


def zero_nans(*, axis_name: AxisName = None) -> GradientTransformation:
    """Replace every NaN in the updates by 0: :math:`u = 0` where :math:`g` is NaN, else :math:`g`;
    the state records, per param, whether its last update held one.

    ``found_nan`` is for the user to read (logging, skipping); the rule never reads it. Infinities
    pass (see :func:`jaxopt_zoo.apply_if_finite` to skip such steps). Inside :class:`~jaxopt_zoo.MultiSteps`
    it sees the accumulated gradient, where one NaN mini-batch has made the entry NaN: the other
    mini-batches' gradients are lost with it; skip such a mini-batch with ``should_skip_update_fn``.

    Numerically identical to ``optax.zero_nans``. Deviations: a ``None`` update keeps its flag (Optax
    puts ``None`` in the state); inside ``shard_map`` (an addition), ``axis_name`` names the mesh axes
    the updates may be sharded over, so that each flag covers the whole array, and a sharded leaf
    without it raises rather than flag one shard only.

    Args:
        axis_name: inside ``shard_map``, the mesh axes to combine each flag over (see :mod:`jaxopt_zoo.sharding`).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.zero_nans()
        >>> grads = {"a": jnp.array([1.0, jnp.nan]), "b": jnp.array(2.0)}
        >>> updates, state = tx.update(grads, tx.init(grads))
        >>> updates["a"], state.found_nan
        (Array([1., 0.], dtype=float32), {'a': Array(True, dtype=bool), 'b': Array(False, dtype=bool)})
    """
    owner = "zero_nans"
    axis_name = validation.axis_name(owner, axis_name)

    def init(params):
        return ZeroNansState(jax.tree.map(lambda p: jnp.asarray(False), params))

    def found(g, _):
        # A count, not jnp.any: booleans cannot be summed over shards.
        return sum_over_shards(owner, [(jnp.sum(jnp.isnan(g), dtype=jnp.int32), g)], axis_name) > 0

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_state(owner, state, ZeroNansState)
        found_nan = tree.map_state(found, updates, state.found_nan)
        zeroed = tree.map_updates(lambda g: jnp.where(jnp.isnan(g), jnp.zeros_like(g), g), updates)
        return zeroed, ZeroNansState(found_nan)

    return GradientTransformation(init, update)
