"""Wrappers that decide when or whether an update happens.

* :func:`apply_every` sums ``k`` gradients and emits the sum every ``k``-th step;
* :func:`conditionally_transform` and :func:`conditionally_mask` run an inner
  transformation only at the steps a predicate of the step count picks;
* :func:`skip_not_finite` and :func:`skip_large_updates` are the predicates
  :class:`~jaxopt_zoo.MultiSteps` takes as ``should_skip_update_fn``
  (see :class:`ShouldSkipUpdateFunction`);
* :func:`incremental_update` and :func:`periodic_update` move a slow copy of the
  parameters (a Polyak average, a target network) towards the live ones.

    >>> import functools, jaxopt_zoo as jz
    >>> skip = functools.partial(jz.skip_large_updates, max_squared_norm=1e4)
    >>> tx = jz.MultiSteps(jz.adam(1e-3), 4, should_skip_update_fn=skip)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import (
    GradientTransformation, OptState, Params, Updates, check_state, expects_state, safe_increment, zero_count,
)
from jaxopt_zoo.combine import as_transformation
from jaxopt_zoo.docstrings import document_args
from jaxopt_zoo.sharding import AxisName, sum_over_shards
from jaxopt_zoo.storage import StateDtype, resolve, with_storage

__all__ = [
    "ApplyEvery",
    "ConditionFn",
    "ConditionallyMaskState",
    "ConditionallyTransformState",
    "ShouldSkipUpdateFunction",
    "apply_every",
    "conditionally_mask",
    "conditionally_transform",
    "incremental_update",
    "periodic_update",
    "skip_large_updates",
    "skip_not_finite",
]


class ConditionFn(Protocol):
    """``should_transform_fn(step, **extra_args) -> bool scalar``: whether :func:`conditionally_transform`
    (or :func:`conditionally_mask`) runs its inner transformation at this int32 ``step``."""

    def __call__(self, step: jax.Array, **extra_args: Any) -> jax.typing.ArrayLike: ...


def _whole_number_unless_traced(owner: str, name: str, value: Any, minimum: int) -> None:
    # An injected (inject_hyperparams) or vmapped count arrives traced and cannot be inspected.
    if not isinstance(value, jax.core.Tracer):
        validation.whole_number(owner, name, value, minimum, validation.INT32_MAX)


class ApplyEvery(NamedTuple):
    """The step within the current group of ``k`` (``count``) and the sum of its gradients so far (``grad_acc``)."""

    count: jax.Array
    grad_acc: Updates


def apply_every(k: jax.typing.ArrayLike = 1, *, accumulator_dtype: StateDtype = None) -> GradientTransformation:
    """Sum the updates of ``k`` steps and emit the sum on the ``k``-th; emit zeros in between.

    With :math:`c_t = (t - 1) \\bmod k` for the ``t``-th call:

    .. math::

        a_t = [c_t \\ne 0]\\, a_{t-1} + g_t, \\qquad
        u_t = [c_t = k - 1]\\, a_t .

    Inside a chain, the members before and after still update their states at
    every step, so this is not :class:`~jaxopt_zoo.MultiSteps` (which runs its
    optimizer once per ``k`` steps on the mean): ``chain(apply_every(2), adam)``
    moves Adam's moments with the zero updates too.

    Numerically identical to ``optax.apply_every``, with the same state
    (:class:`ApplyEvery`). Deviations from Optax: ``k`` must be a whole number
    in ``[1, 2**31 - 1]`` (Optax takes ``0`` or ``2.5`` and then silently never
    emits an update, its count turning float for ``2.5``); a
    ``None`` update stays ``None`` and keeps its accumulator; ``accumulator_dtype``
    (an addition, keyword only) stores the sum in a dtype or a storage
    (:class:`~jaxopt_zoo.StochasticBF16`, :class:`~jaxopt_zoo.Blockwise8Bit`;
    ``None``, the default, is Optax's: the params' dtype, float32 for float16
    params as for every moment here). The emitted sum is the one computed
    this step, before it is stored.

    Args:
        k: emit every ``k``-th step, accumulate otherwise.
        accumulator_dtype: storage of the running sum (see :mod:`jaxopt_zoo.storage`).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.apply_every(2)
        >>> state = tx.init(jnp.zeros(2))
        >>> updates, state = tx.update(jnp.array([1.0, 2.0]), state)
        >>> updates  # the first of two steps: held back
        Array([0., 0.], dtype=float32)
        >>> updates, state = tx.update(jnp.array([0.5, 0.5]), state)
        >>> updates  # the second: the sum
        Array([1.5, 2.5], dtype=float32)
    """
    _whole_number_unless_traced("apply_every", "k", k, 1)
    accumulator_dtype = resolve("apply_every", "accumulator_dtype", accumulator_dtype)

    def init(params):
        return ApplyEvery(zero_count(), tree.moments_like(params))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure("apply_every", updates, state.grad_acc, "the accumulator (state.grad_acc)")
        c = state.count % k
        keep_sum = c != 0  # the first step of a group starts the sum afresh
        grad_acc = tree.map_state(lambda g, a: keep_sum * a + g, updates, state.grad_acc)
        emit = c == k - 1
        new_updates = tree.map_updates(lambda g, a: emit * a, updates, grad_acc)
        return new_updates, ApplyEvery(safe_increment(state.count) % k, grad_acc)

    tx = with_storage(GradientTransformation(init, update), signed={"grad_acc": accumulator_dtype})
    return expects_state("apply_every", tx, ApplyEvery)


# --- running an inner transformation at some steps only ----------------------------------------


def _predicate(owner: str, should_transform_fn: Callable[..., Any], step: jax.Array, extra_args: dict) -> jax.Array:
    decision = jnp.asarray(should_transform_fn(step, **extra_args))
    if decision.shape != () or not (decision.dtype == jnp.bool_ or jnp.issubdtype(decision.dtype, jnp.number)):
        raise ValueError(
            f"{owner}: should_transform_fn must return a boolean scalar, got {decision.dtype}{list(decision.shape)}; "
            "compare the step with something (for example `step % 4 == 0`)."
        )
    return decision if decision.dtype == jnp.bool_ else decision != 0  # a number as lax.cond reads it


def _conditional(owner: str, inner: Any, should_transform_fn: Any, forward_extra_args: bool, otherwise: Callable):
    """The update of an inner transformation run under ``lax.cond``: only the branch taken is computed.

    ``otherwise(updates, like)`` gives the updates of a step the inner skips, with
    the dtypes ``like`` of the inner's output, so that both branches agree.
    """
    inner = as_transformation(owner, inner)
    if not callable(should_transform_fn):
        raise ValueError(
            f"{owner}: should_transform_fn must be a callable of the step count, got {should_transform_fn!r}."
        )
    validation.flag(owner, "forward_extra_args", forward_extra_args)

    def run(updates, inner_state, step, params, extra_args):
        decision = _predicate(owner, should_transform_fn, step, extra_args if forward_extra_args else {})
        transform = lambda: inner.update(updates, inner_state, params, **extra_args)
        like, _ = jax.eval_shape(transform)
        return jax.lax.cond(decision, transform, lambda: (otherwise(updates, like), inner_state))

    return inner, run


def _astype_like(updates: Updates, like: Any) -> Updates:
    return tree.map_updates(lambda u, s: u.astype(s.dtype), updates, like)


def _zeros_like(updates: Updates, like: Any) -> Updates:
    return tree.map_updates(lambda u, s: jnp.zeros_like(u, dtype=s.dtype), updates, like)


class ConditionallyTransformState(NamedTuple):
    """The inner transformation's state and the number of calls so far (``step``), as in Optax."""

    inner_state: OptState
    step: jax.Array


def conditionally_transform(
    inner: GradientTransformation, should_transform_fn: Callable[..., Any], forward_extra_args: bool = False
) -> GradientTransformation:
    """Run ``inner`` only at the steps ``should_transform_fn(step)`` picks; pass the updates through elsewhere.

    .. math::

        (u_t, s_t) = \\begin{cases} \\mathrm{inner}(g_t, s_{t-1}) & f(t - 1) \\\\
                                  (g_t, s_{t-1}) & \\text{otherwise} \\end{cases}

    where :math:`f` is ``should_transform_fn``, called with the int32 count of
    earlier calls (and with the extra arguments of ``update`` when
    ``forward_extra_args``). It runs under ``lax.cond``, so a skipped step does
    not compute the inner update (under ``vmap`` both branches run). To zero
    the updates of the skipped steps instead, use :func:`conditionally_mask`.

    Numerically identical to ``optax.conditionally_transform``, with the same
    state. ``should_transform_fn`` returns a boolean scalar, or a number read
    as ``!= 0`` (as ``lax.cond`` reads it). Deviations from Optax: anything
    else (an array of several elements, say) raises naming this function; a
    passed-through update takes the dtype of the inner's updates (where
    Optax's ``lax.cond`` would raise on the mismatch); the other arguments are
    checked when it is built.

    Args:
        inner: the transformation run at the chosen steps (an Optax one too); its state is kept as it is
            at the other steps.
        should_transform_fn: a :class:`~jaxopt_zoo.ConditionFn`: called with the int32 count of earlier
            calls (0 at the first), it returns whether ``inner`` runs at this step, as a boolean scalar
            (or a number, true where non-zero).
        forward_extra_args: also pass ``update``'s extra keyword arguments to ``should_transform_fn``
            (``inner`` gets them either way); a bool.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.conditionally_transform(jz.scale(10.0), lambda step: step % 2 == 0)
        >>> state = tx.init(jnp.zeros(1))
        >>> for _ in range(3):
        ...     updates, state = tx.update(jnp.ones(1), state)
        ...     print(updates)  # scaled at steps 0 and 2, passed through at step 1
        [10.]
        [1.]
        [10.]
    """
    inner, run = _conditional("conditionally_transform", inner, should_transform_fn, forward_extra_args, _astype_like)

    def init(params):
        return ConditionallyTransformState(inner.init(params), zero_count())

    def update(updates, state, params=None, **extra_args):
        check_state("conditionally_transform", state, ConditionallyTransformState)
        new_updates, inner_state = run(updates, state.inner_state, state.step, params, extra_args)
        return new_updates, ConditionallyTransformState(inner_state, safe_increment(state.step))

    return GradientTransformation(init, update)


class ConditionallyMaskState(NamedTuple):
    """The number of calls so far (``step``) and the inner transformation's state, as in Optax."""

    step: jax.Array
    inner_state: OptState


@document_args(conditionally_transform)
def conditionally_mask(
    inner: GradientTransformation, should_transform_fn: Callable[..., Any], forward_extra_args: bool = False
) -> GradientTransformation:
    """Run ``inner`` only at the steps ``should_transform_fn(step)`` picks; emit zero updates elsewhere.

    .. math::

        (u_t, s_t) = \\begin{cases} \\mathrm{inner}(g_t, s_{t-1}) & f(t - 1) \\\\
                                  (0, s_{t-1}) & \\text{otherwise} \\end{cases}

    as :func:`conditionally_transform`, but a skipped step leaves the
    parameters where they are. It runs under ``lax.cond``: a skipped step
    does not compute the inner update.

    Numerically identical to ``optax.conditionally_mask``, with the same
    state. ``should_transform_fn`` returns a boolean scalar, or a number read
    as ``!= 0``. Deviations from Optax: anything else raises naming this
    function; a ``None`` update stays ``None``; the zeros take the dtype of
    the inner's updates.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.conditionally_mask(jz.sgd(0.1), lambda step: step >= 2)  # no updates for two steps
        >>> updates, state = tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))
        >>> updates
        Array([0., 0.], dtype=float32)
    """
    inner, run = _conditional("conditionally_mask", inner, should_transform_fn, forward_extra_args, _zeros_like)

    def init(params):
        return ConditionallyMaskState(zero_count(), inner.init(params))

    def update(updates, state, params=None, **extra_args):
        check_state("conditionally_mask", state, ConditionallyMaskState)
        new_updates, inner_state = run(updates, state.inner_state, state.step, params, extra_args)
        return new_updates, ConditionallyMaskState(safe_increment(state.step), inner_state)

    return GradientTransformation(init, update)


# --- predicates for MultiSteps' should_skip_update_fn ------------------------------------------


class ShouldSkipUpdateFunction(Protocol):
    """What :class:`~jaxopt_zoo.MultiSteps` takes as ``should_skip_update_fn``.

    ``fn(updates, gradient_step, params) -> (skip, skip_state)``: ``skip`` is a
    boolean scalar, true to drop this micro-step's updates as if the step had
    never happened; ``skip_state`` is any pytree (say, what was measured),
    kept in ``MultiStepsState.skip_state``. ``gradient_step`` is the count of
    applied steps, so a threshold can be annealed; ``params`` may be ``None``.
    :func:`skip_not_finite` and :func:`skip_large_updates` are two such functions.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> def skip_early(updates, gradient_step, params):
        ...     return gradient_step < 10, {}
        >>> tx = jz.MultiSteps(jz.sgd(0.1), 2, should_skip_update_fn=skip_early)
    """

    def __call__(
        self, updates: Updates, gradient_step: jax.typing.ArrayLike, params: Params | None
    ) -> tuple[jax.typing.ArrayLike, Any]: ...


def _leaves(updates: Updates) -> list[jax.Array]:
    return [u for u in jax.tree.leaves(updates) if u is not None]


def skip_not_finite(
    updates: Updates, gradient_step: jax.typing.ArrayLike, params: Params | None, *, axis_name: AxisName = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Skip a micro-step whose updates hold a NaN or an infinity (a :class:`ShouldSkipUpdateFunction`).

    .. math::

        n = \\#\\{\\, i : g_i \\notin \\mathbb{R} \\,\\}, \\qquad \\text{skip} = n > 0,

    counted over every leaf. Returns ``(skip, {"should_skip": skip,
    "num_not_finite": n})``, as ``optax.skip_not_finite`` does.

    Inside ``shard_map`` every device must take the same decision: pass
    ``axis_name`` (an addition to Optax, keyword only; bind it with
    ``functools.partial``), the mesh axes the updates may be sharded over, and
    ``n`` counts the whole arrays. Without it a sharded update raises there.

    Args:
        updates: the micro-step's updates (a tree; ``None`` leaves are left out).
        gradient_step: the count of applied steps, which :class:`~jaxopt_zoo.MultiSteps` passes; unused.
        params: the parameters (or ``None``), which :class:`~jaxopt_zoo.MultiSteps` passes; unused.
        axis_name: ``None``, a mesh axis name or a tuple of them: inside ``shard_map``, the mesh axes the
            updates may be sharded over, so that every device measures the whole arrays and takes the
            same decision (``()`` measures each device's shards alone).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> jz.skip_not_finite({"w": jnp.array([1.0, jnp.nan, jnp.inf])}, 0, None)[1]
        {'should_skip': Array(True, dtype=bool), 'num_not_finite': Array(2, dtype=int32)}
    """
    del gradient_step, params
    axis_name = validation.axis_name("skip_not_finite", axis_name)
    counts = [(jnp.sum(jnp.logical_not(jnp.isfinite(u))), u) for u in _leaves(updates)]
    num_not_finite = sum_over_shards("skip_not_finite", counts, axis_name)
    should_skip = num_not_finite > 0
    return should_skip, {"should_skip": should_skip, "num_not_finite": num_not_finite}


@document_args(skip_not_finite)
def skip_large_updates(
    updates: Updates,
    gradient_step: jax.typing.ArrayLike,
    params: Params | None,
    max_squared_norm: jax.typing.ArrayLike,
    *,
    axis_name: AxisName = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Skip a micro-step whose squared global norm is not below ``max_squared_norm``.

    A :class:`ShouldSkipUpdateFunction`:

    .. math::

        \\|g\\|^2 = \\sum_{\\text{leaves}} \\sum_i |g_i|^2, \\qquad \\text{skip} = \\lnot(\\|g\\|^2 < \\tau),

    so a NaN norm is skipped too. Returns ``(skip, {"should_skip": skip,
    "norm_squared": ||g||^2})``; bind ``max_squared_norm`` (:math:`\\tau`) with
    ``functools.partial``. Numerically identical to ``optax.skip_large_updates``
    on real updates.

    Inside ``shard_map`` pass ``axis_name`` (an addition to Optax, keyword
    only), the mesh axes the updates may be sharded over: the norm is then the
    whole arrays' on every device, and all take the same decision. Without it
    a sharded update raises there.

    Deviations from Optax: a concrete ``max_squared_norm`` must be > 0 (Optax
    takes ``<= 0`` and then skips every step), checked at the first call;
    complex entries count :math:`|g_i|^2` (Optax's ``g**2`` is complex and
    its comparison fails); float16 updates are squared in float32, where
    Optax's ``g**2`` overflows above 256.

    Args:
        max_squared_norm: :math:`\\tau > 0`, the squared global norm from which a micro-step is skipped;
            may be traced (then unchecked).

    Example:
        >>> import functools, jax.numpy as jnp, jaxopt_zoo as jz
        >>> skip = functools.partial(jz.skip_large_updates, max_squared_norm=10.0)
        >>> skip({"w": jnp.array([3.0, 4.0])}, 0, None)[1]
        {'should_skip': Array(True, dtype=bool), 'norm_squared': Array(25., dtype=float32)}
    """
    del gradient_step, params
    validation.positive("skip_large_updates", "max_squared_norm", max_squared_norm)
    axis_name = validation.axis_name("skip_large_updates", axis_name)
    squares = [(jnp.sum(tree.abs_sq(u)), u) for u in _leaves(updates)]
    norm_squared = sum_over_shards("skip_large_updates", squares, axis_name)
    should_skip = jnp.logical_not(norm_squared < max_squared_norm)
    return should_skip, {"should_skip": should_skip, "norm_squared": norm_squared}


# --- slow copies of the parameters -------------------------------------------------------------


def incremental_update(new_tensors: Params, old_tensors: Params, step_size: jax.typing.ArrayLike) -> Params:
    """Move a moving average of the parameters towards their latest values (Polyak averaging).

    .. math::

        \\bar\\theta \\leftarrow \\alpha\\, \\theta + (1 - \\alpha)\\, \\bar\\theta

    leaf by leaf, with :math:`\\alpha` the ``step_size``. Numerically identical to
    ``optax.incremental_update``; a ``None`` leaf of ``new_tensors`` gives
    ``None``, as there. Deviation from Optax: a concrete ``step_size`` must be
    in ``[0, 1]``, and trees of different structures raise naming the paths.

    Args:
        new_tensors: the latest parameters :math:`\\theta` (a tree; a ``None`` leaf gives ``None``).
        old_tensors: the moving average :math:`\\bar\\theta`, a tree of ``new_tensors``' structure.
        step_size: :math:`\\alpha \\in [0, 1]`, the weight of the latest values (1 copies them, 0 keeps the
            average); may be traced.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> jz.incremental_update({"w": jnp.array([1.0])}, {"w": jnp.array([0.0])}, step_size=0.25)
        {'w': Array([0.25], dtype=float32)}

    References:
        Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging", SIAM J. Control Optim. 1992.
    """
    validation.fraction("incremental_update", "step_size", step_size)
    tree.check_same_structure("incremental_update", new_tensors, old_tensors, "old_tensors")
    return tree.map_updates(lambda new, old: step_size * new + (1.0 - step_size) * old, new_tensors, old_tensors)


@document_args(incremental_update)
def periodic_update(
    new_tensors: Params, old_tensors: Params, steps: jax.typing.ArrayLike, update_period: jax.typing.ArrayLike
) -> Params:
    """A slow copy of the parameters that jumps to their latest values every ``update_period`` steps.

    .. math::

        \\bar\\theta \\leftarrow \\begin{cases} \\theta & \\text{steps} \\bmod K = 0 \\\\
                                     \\bar\\theta & \\text{otherwise} \\end{cases}

    with :math:`K` the ``update_period`` (a DQN target network, BYOL's slow
    weights). Selects leaf by leaf with ``jnp.where``, so it runs under
    ``vmap`` and ``jit`` and a batched ``steps`` picks per example. The same
    values as ``optax.periodic_update``. Deviations from Optax: a ``None``
    leaf of ``new_tensors`` gives ``None`` (as Optax's ``incremental_update``
    does; its ``periodic_update`` needs the same ``None`` leaves in both
    trees); each result keeps its ``old_tensors`` leaf's dtype; a concrete
    ``update_period`` must be a whole number >= 1 and a concrete ``steps`` one
    >= 0.

    Args:
        old_tensors: the slow copy :math:`\\bar\\theta`, a tree of ``new_tensors``' structure, whose leaves'
            dtypes the result keeps.
        steps: the step count, compared with multiples of ``update_period``: a whole number in
            :math:`[0, 2^{31} - 1]` where concrete; may be traced (under ``vmap``, one per example).
        update_period: :math:`K`, the steps between refreshes: a whole number in :math:`[1, 2^{31} - 1]`
            where concrete; may be traced.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> target = jz.periodic_update({"w": jnp.ones(1)}, {"w": jnp.zeros(1)}, steps=6, update_period=3)
        >>> target
        {'w': Array([1.], dtype=float32)}

    References:
        Mnih et al., "Human-level control through deep reinforcement learning", Nature 2015.
        Grill et al., "Bootstrap your own latent", NeurIPS 2020.
    """
    _whole_number_unless_traced("periodic_update", "update_period", update_period, 1)
    _whole_number_unless_traced("periodic_update", "steps", steps, 0)
    tree.check_same_structure("periodic_update", new_tensors, old_tensors, "old_tensors")
    refresh = jnp.mod(steps, update_period) == 0
    pick = lambda new, old: jnp.where(refresh, new, old).astype(jnp.result_type(old))
    return tree.map_updates(pick, new_tensors, old_tensors)
