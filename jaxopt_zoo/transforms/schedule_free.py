"""Schedule-Free optimisation (Defazio et al. 2024): schedule_free, schedule_free_eval_params.

Schedule-Free replaces a base optimizer's momentum and its learning-rate decay
by an interpolation and an average of three sequences: the base optimizer steps
the iterate ``z``; ``x`` is a weighted average of the ``z``'s (the point to
evaluate at); gradients are taken at ``y``, between the two. The caller's
params are ``y``; the state keeps ``z``, and ``x`` is recovered from the two
(:func:`schedule_free_eval_params`), so the memory is the base optimizer's plus
one params-sized tree.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.schedule_free(jz.sgd(0.1), learning_rate=0.1)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, OptState, Params, ScalarOrSchedule, check_state, safe_increment
from jaxopt_zoo.combine import as_transformation
from jaxopt_zoo.storage import StateDtype, read_leaf, resolve_floating

__all__ = [
    "ScheduleFreeState",
    "schedule_free",
    "schedule_free_eval_params",
]


def _b1_in_open_closed_unit(owner: str, b1: Any) -> None:
    # y = (1 - b1) z + b1 x is inverted to recover x = (y - (1 - b1) z) / b1: b1 = 0 loses x.
    if validation.fraction(owner, "b1", b1) == 0:
        raise ValueError(f"{owner}: b1 must be in (0, 1] (x is recovered by dividing by b1), got {b1!r}.")


def _iterate_storage(owner: str, state_dtype: StateDtype) -> Any:
    """How ``z`` is kept: a floating dtype (``None``: the param's) or :class:`~jaxopt_zoo.storage.StochasticBF16`.

    8-bit blocks are refused: ``z`` is an iterate, not a moment. Its steps are the
    learning rate times a normalised gradient, far below an 8-bit code's resolution
    of ~1% of its block's largest entry, and the rounding noise would enter the
    params (``y``) and the evaluation point (``x``) directly.
    """
    return resolve_floating(
        owner, "state_dtype", state_dtype,
        "would keep the iterate z as 8-bit codes, whose rounding (about 1% of each block's largest entry) swamps the "
        "steps z takes and goes straight into the params; use a floating dtype (None for the params' dtype, "
        "jnp.bfloat16) or jz.StochasticBF16().")


def _scalar_dtype(params: Params) -> jnp.dtype:
    # float64 when every param is float64, float32 otherwise: a bfloat16 weight sum stops growing after
    # ~256 equal weights, and a bfloat16 b1 rounds 0.9 to 0.898 (Optax keeps both in the params' lowest dtype).
    return tree.scalar_dtype(params)


def _averaging_weight(weight: jax.Array, weight_sum: jax.Array) -> jax.Array:
    """:math:`c_t = w_t / \\sum_{i \\le t} w_i`; 0 while every weight so far is 0 (no positive rate yet)."""
    return jnp.where(weight_sum == 0, jnp.zeros_like(weight), weight / weight_sum)


class ScheduleFreeState(NamedTuple):
    """The interpolation weight ``b1`` the last step used, the sum of the averaging weights, the 1-based step,
    the largest learning rate so far, the base optimizer's state, and the iterate ``z``."""

    b1: jax.Array
    weight_sum: jax.Array
    step_count: jax.Array
    max_lr: jax.Array
    base_optimizer_state: OptState
    z: Params


def schedule_free(
    base_optimizer: GradientTransformation,
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    weight_lr_power: jax.typing.ArrayLike = 2.0,
    state_dtype: StateDtype = None,
) -> GradientTransformation:
    """Schedule-Free learning (Defazio et al. 2024) around a momentum-free base optimizer.

    With :math:`\\Delta_t` the base optimizer's update of the gradient at :math:`y_t`
    (the params), and :math:`\\gamma_t` the learning rate at step :math:`t = 1, 2, \\ldots`:

    .. math::

        z_{t+1} &= z_t + \\Delta_t,

        c_{t+1} &= \\frac{w_t}{\\sum_{i \\le t} w_i}, \\ w_t = (\\max_{i \\le t} \\gamma_i)^{p},

        x_{t+1} &= (1 - c_{t+1})\\, x_t + c_{t+1} z_{t+1},

        y_{t+1} &= \\beta_1 x_{t+1} + (1 - \\beta_1)\\, z_{t+1},

    from :math:`z_1 = x_1 = y_1` (the initial params), with :math:`p` the ``weight_lr_power``.
    For SGD, :math:`\\Delta_t = -\\gamma_t \\nabla f(y_t)`. The state keeps :math:`z`; :math:`x_t`
    is recovered as :math:`(y_t - (1 - \\beta_1) z_t) / \\beta_1` each step (so a transformation
    wrapped around this one may move :math:`y`) and by :func:`schedule_free_eval_params`,
    where a model should be evaluated. Turn the base optimizer's momentum off; give it the
    same ``learning_rate`` (a constant, or a warmup to a constant: no decay is needed).

    Numerically identical to ``optax.contrib.schedule_free`` in float32 (the same state
    leaves; the learning rate of the weights is read at the 1-based ``step_count``, as there).
    Differences from ``optax.contrib.schedule_free``:

    * ``b1``, ``weight_sum`` and ``max_lr`` are float32 (float64 when all params are);
      Optax keeps them in the params' lowest dtype, where with bfloat16 params the weight
      sum stops growing after ~256 steps (the average turns into a moving average) and the
      stored ``b1`` (0.898 for 0.9) differs from the one the update used, so Optax's
      evaluation params are off by ~0.2% of ``z``. With bfloat16 params the interpolation
      is computed in float32 and the updates cast back to the params' dtype.
    * The state's ``b1`` is the one the last step used (Optax keeps the first), so an
      injected ``b1`` (:func:`~jaxopt_zoo.inject_hyperparams`) is evaluated consistently.
    * ``c`` is 0 while all weights are 0 (Optax: the same, through ``nan_to_num``) and NaN
      when a weight is NaN or infinite (Optax turns an infinite one into 0).
    * ``b1`` must be in (0, 1] and ``weight_lr_power`` >= 0 (Optax checks neither); ``None``
      gradient leaves pass through and keep their ``z``; any object with ``init`` and
      ``update`` is a base optimizer; a state whose ``z`` was built for params of other shapes
      raises (Optax's broadcasts ``z``, which then grows to the new shape).
    * ``state_dtype`` (how ``z`` is kept) also takes :class:`~jaxopt_zoo.storage.StochasticBF16`
      (bfloat16, rounded stochastically from the step count: ``z``'s small steps survive on
      average). :class:`~jaxopt_zoo.quantization.Blockwise8Bit` is refused (see above). The
      new ``y`` and ``x`` are built from ``z`` as stored, so ``x`` is recovered exactly next step.

    Args:
        base_optimizer: the transformation whose updates step :math:`z` (without momentum).
        learning_rate: :math:`\\gamma_t \\ge 0`, a number or a schedule of the step count; only
            the averaging weights read it (the base optimizer applies its own).
        b1: :math:`\\beta_1 \\in (0, 1]`, the weight of :math:`x` in :math:`y`.
        weight_lr_power: :math:`p \\ge 0`, the power of the largest rate so far in the weights
            (2 in the paper: steps taken during a warmup count less).
        state_dtype: how :math:`z` is kept: ``None`` (the params' dtype), a floating dtype, or
            :class:`~jaxopt_zoo.storage.StochasticBF16`.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.schedule_free(jz.sgd(0.5), learning_rate=0.5, b1=0.5)
        >>> params = jnp.array([2.0])
        >>> state = tx.init(params)
        >>> updates, state = tx.update(params, state, params)  # the gradient of x^2 / 2 at y = 2
        >>> state.z, params + updates  # z = 2 - 0.5 * 2; x = z after one step; y = (x + z) / 2
        (Array([1.], dtype=float32), Array([1.], dtype=float32))
        >>> jz.schedule_free_eval_params(state, params + updates)
        Array([1.], dtype=float32)

    References:
        Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road Less Scheduled",
        NeurIPS 2024 (Algorithm 1).
    """
    owner = "schedule_free"
    base = as_transformation(owner, base_optimizer)
    validation.scalar_or_schedule(owner, "learning_rate", learning_rate)
    _b1_in_open_closed_unit(owner, b1)
    validation.non_negative(owner, "weight_lr_power", weight_lr_power)
    store = _iterate_storage(owner, state_dtype)

    def init(params):
        dtype = _scalar_dtype(params)
        # A copy: z must not alias the params, so that both can be donated to a jitted step.
        z = jax.tree.map(lambda p: store.create(jnp.array(p, copy=True), True), params)
        scalar = lambda value: jnp.full([], value, dtype)
        return ScheduleFreeState(scalar(b1), scalar(0.0), jnp.ones([], jnp.int32), scalar(0.0), base.init(params), z)

    def update(updates, state, params=None, **extra_args):
        check_state(owner, state, ScheduleFreeState)
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, params, "the params")
        tree.check_same_structure(owner, updates, state.z, "the iterate (state.z)")
        rate = learning_rate(state.step_count) if callable(learning_rate) else learning_rate
        max_lr = jnp.maximum(state.max_lr, jnp.asarray(rate, state.max_lr.dtype))
        weight = max_lr**weight_lr_power
        weight_sum = state.weight_sum + weight
        c = _averaging_weight(weight, weight_sum)
        step_count = safe_increment(state.step_count)

        steps, base_state = base.update(updates, state.base_optimizer_state, params, **extra_args)
        # z is stepped and stored first: y and x are built from z as it is kept, so that next step's
        # x = (y - (1 - b1) z) / b1 is exactly this step's x (and a stochastic rounding is unbiased).
        z = tree.map_state(lambda dz, z: store.write(store.read(z) + dz, z, step_count), steps, state.z)

        def interpolate(dz, y, z_before, z_after):
            y_wide = y.astype(jnp.promote_types(y.dtype, c.dtype))  # bfloat16 params: in float32
            x_before = (y_wide - (1.0 - b1) * store.read(z_before)) / b1
            x = (1.0 - c) * x_before + c * store.read(z_after)
            return (b1 * x + (1.0 - b1) * store.read(z_after) - y_wide).astype(y.dtype)

        # Read through a barrier: otherwise XLA may skip the rounding of a narrow z that is widened right back
        # (excess precision), build y from z + dz unrounded, and keep dz and a copy of the old z alive. One barrier
        # per leaf: one for the tree would mark every leaf as varying over the shard_map axes any of them varies over.
        stored = jax.tree.map(jax.lax.optimization_barrier, z)
        new_updates = tree.map_updates(interpolate, steps, params, state.z, stored)
        # An injected (array) b1 may change between steps: record the one used, for the evaluation params.
        b1_used = state.b1 if isinstance(b1, (int, float)) else jnp.asarray(b1, state.b1.dtype)
        return new_updates, ScheduleFreeState(b1_used, weight_sum, step_count, max_lr, base_state, z)

    return GradientTransformation(init, update)


def _is_schedule_free_state(x: Any) -> bool:
    # Ours, Optax's, or one restored as another NamedTuple with the same fields.
    return getattr(type(x), "_fields", None) == ScheduleFreeState._fields


def _find_schedule_free_state(state: Any) -> Any:
    if _is_schedule_free_state(state):
        return state
    found = [s for s in jax.tree.leaves(state, is_leaf=_is_schedule_free_state) if _is_schedule_free_state(s)]
    if len(found) != 1:
        what = "none" if not found else f"{len(found)}"
        raise ValueError(
            "schedule_free_eval_params requires the state of a schedule_free optimizer (a ScheduleFreeState, or a "
            f"state holding exactly one, as inject_hyperparams, MultiSteps or chain build); found {what} in "
            f"{type(state).__name__}."
        )
    return found[0]


def schedule_free_eval_params(state: OptState, params: Params) -> Params:
    """The point to evaluate a Schedule-Free run at: :math:`x = (y - (1 - \\beta_1) z) / \\beta_1`.

    The result has the params' structure and dtypes (with Flax NNX, pass
    ``nnx.state(model, nnx.Param)`` and ``optimizer.opt_state``: leaves are paired in order,
    so the params' ``Param`` and the state's ``OptVariable`` containers need not match).

    Same numbers as ``optax.contrib.schedule_free_eval_params``. Differences: ``state`` may
    also be a state holding one ``ScheduleFreeState`` (``inject_hyperparams``,
    ``MultiSteps``, ``chain``); params and ``z`` are paired leaf by leaf, so NNX's
    differently-typed containers work (Optax raises); a mismatch of leaf count or shape
    raises a ``ValueError`` saying so.

    Args:
        state: the optimizer state, which gives :math:`z` and :math:`\\beta_1`: a ``ScheduleFreeState``
            or a state holding exactly one.
        params: the training params :math:`y`, leaf for leaf the shapes of the state's :math:`z`.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.schedule_free_sgd(0.1)
        >>> params = {"w": jnp.ones(3)}
        >>> state = tx.init(params)
        >>> jz.schedule_free_eval_params(state, params)  # x = y = z before any step
        {'w': Array([1., 1., 1.], dtype=float32)}

    References:
        Defazio et al., "The Road Less Scheduled", NeurIPS 2024.
    """
    found = _find_schedule_free_state(state)
    b1 = jax.tree.leaves(found.b1)[0]  # an NNX OptArray holds the array as its one leaf
    ys, treedef = jax.tree.flatten(params)
    zs = jax.tree.leaves(found.z)
    if len(ys) != len(zs) or any(jnp.shape(y) != jnp.shape(z) for y, z in zip(ys, zs)):
        raise ValueError(
            f"schedule_free_eval_params: the params ({len(ys)} leaves, shapes {[jnp.shape(y) for y in ys][:8]}) do "
            f"not match the state's z ({len(zs)} leaves, shapes {[jnp.shape(z) for z in zs][:8]}); pass the params "
            "the optimizer was initialised and stepped with."
        )

    def evaluation_point(y, z):
        y_wide = y.astype(jnp.promote_types(y.dtype, b1.dtype))
        return ((y_wide - (1.0 - b1) * read_leaf(z)) / b1).astype(y.dtype)

    return jax.tree.unflatten(treedef, [evaluation_point(y, z) for y, z in zip(ys, zs)])
