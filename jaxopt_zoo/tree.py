"""Tree helpers shared by every transformation.

``None`` leaves in ``updates`` mean "no update for this parameter": every helper
passes them through and leaves the matching state leaf unchanged.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxopt_zoo.docstrings import document_args
from jaxopt_zoo.sharding import AxisName, sum_over_shards


def is_none(x: Any) -> bool:
    """``is_leaf`` predicate that makes ``None`` a leaf instead of an empty subtree."""
    return x is None


def moment_dtype(dtype: jax.typing.DTypeLike) -> jnp.dtype:
    """The dtype a moment of values of ``dtype`` is computed and, by default, kept in.

    ``dtype`` itself, except float32 for float16, integers and bools: float16's
    range flushes squared gradients below ~2e-4 to zero (Adam's ``(1 - b2) g^2``
    below ~7e-3), and integers would truncate a moment. bfloat16 has float32's
    range and stays bfloat16, as in Optax.
    """
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float16 or not jnp.issubdtype(dtype, jnp.inexact):
        return jnp.dtype(jnp.float32)
    return dtype


def scalar_dtype(params: Any) -> jnp.dtype:
    """The dtype of an optimizer's whole-tree scalars (step-size estimates, weight sums, running losses).

    float64 when every floating param is float64 (a complex one counts by its parts: complex128 as float64),
    float32 otherwise. Optax keeps such scalars in the params' lowest dtype; in bfloat16 a running sum stops
    growing after ~256 equal terms and a decay of 0.9995 rounds to 1, so here they never go below float32 (the
    same numbers as Optax's for float32 and float64 params).
    """
    inexact = [jnp.finfo(d).dtype for d in (jnp.result_type(x) for x in jax.tree.leaves(params))
               if jnp.issubdtype(d, jnp.inexact)]
    return jnp.dtype(jnp.float64 if inexact and all(d == jnp.float64 for d in inexact) else jnp.float32)


def tree_vdot(xs: Any, ys: Any, axis_name: AxisName = None, owner: str = "tree_vdot") -> jax.Array:
    """:math:`\\sum_i \\langle x_i, y_i \\rangle` over the leaves where ``xs`` is not ``None`` (conjugating ``x``),
    at full precision, summed over the mesh axes ``axis_name`` inside ``shard_map``."""
    pairs = zip(jax.tree.leaves(xs, is_leaf=is_none), jax.tree.leaves(ys, is_leaf=is_none))
    return sum_over_shards(owner, ((_vdot(x, y), x) for x, y in pairs if x is not None and y is not None), axis_name)


def _vdot(x: jax.Array, y: jax.Array) -> jax.Array:
    # One contraction at the highest precision (Optax's order of operations, for its bits); the scalar is
    # replicated when the mesh has Explicit axes (some of them Manual inside a shard_map naming only others),
    # where JAX asks for the result's layout.
    x = jnp.asarray(x)
    mesh = jax.typeof(x).sharding.mesh
    explicit = any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)
    replicated = jax.sharding.NamedSharding(mesh, jax.P()) if explicit else None
    return jnp.tensordot(jnp.conj(x), y, x.ndim, precision=jax.lax.Precision.HIGHEST, out_sharding=replicated)


def widen(x: jax.Array) -> jax.Array:
    """``x`` in :func:`moment_dtype` of its dtype (float16 becomes float32; anything else stays as it is)."""
    return x.astype(jnp.float32) if jnp.result_type(x) == jnp.float16 else x


def as_inexact(x: jax.Array) -> jax.Array:
    """``x`` itself if it is floating or complex, else (integers, bools) in :func:`moment_dtype`, float32."""
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(moment_dtype(x.dtype))


def moments_like(params: Any, fill: jax.typing.ArrayLike = 0.0) -> Any:
    """A moment tree shaped like ``params`` and filled with ``fill``, in each param's :func:`moment_dtype`.

    Transformations build their per-parameter moments with it, so that a
    moment of a float16, integer or bool param is float32 instead of
    flushing or truncating (a deviation from Optax for float16 params).
    """
    return jax.tree.map(lambda p: jnp.full_like(p, fill, dtype=moment_dtype(jnp.result_type(p))), params)


def _is_flax_variable(x: Any) -> bool:
    nnx = sys.modules.get("flax.nnx")  # not imported: no Variable exists
    return nnx is not None and isinstance(x, nnx.Variable)


def map_reshaped(fn: Callable[..., Any], params: Any, *rest: Any) -> Any:
    """``jax.tree.map(fn, params, *rest)`` for state leaves that need not be shaped like their param.

    ``nnx.Optimizer`` initialises on params wrapped in Flax NNX ``Variable``s, and a
    ``jax.tree.map`` result keeps its Variable's metadata, the param's sharding names
    among it; Flax then lays the state leaf out by those names, which do not fit a
    leaf of another shape (an Adafactor factor, a NovoGrad scalar, an L-BFGS memory:
    ``nnx.Optimizer`` raised for a model annotated with ``nnx.with_partitioning``, as
    Optax's do). Here ``fn`` gets each Variable's value (and ``rest``'s); a result
    shaped like that value stays in the Variable, any other is left bare (Flax keeps
    it as the computation made it). ``None`` params stay ``None``.
    """

    def leaf(p: Any, *others: Any) -> Any:
        if p is None:
            return None
        if not _is_flax_variable(p):
            return fn(p, *others)
        value = p.get_value()
        if not hasattr(value, "shape"):  # a Variable holding a tree: map inside it, as jax.tree.map would
            return jax.tree.map(fn, p, *others)
        result = fn(value, *(o.get_value() if _is_flax_variable(o) else o for o in others))
        same_shape = isinstance(result, jax.Array | jax.ShapeDtypeStruct) and jnp.shape(result) == jnp.shape(value)
        return jax.tree.map(lambda _: result, p) if same_shape else result

    return jax.tree.map(leaf, params, *rest, is_leaf=lambda x: x is None or _is_flax_variable(x))


def through_variables(update: Callable[..., tuple[Any, Any]]) -> Callable[..., tuple[Any, Any]]:
    """``update`` run on bare arrays where the updates, state or params hold Flax NNX ``Variable``\\ s, its results
    put back in the same Variables.

    For the rules whose state leaves are not all shaped like their params (:func:`map_reshaped` leaves those bare):
    called with the Variables of ``nnx.split``'s params (Optax's take them), their leaf-by-leaf maps would pair a
    Variable with a bare array.
    """

    def unwrapped(updates, state, params=None, **extra_args):
        is_leaf = lambda x: x is None or _is_flax_variable(x)  # noqa: E731
        if not any(_is_flax_variable(x) for t in (updates, state, params) for x in jax.tree.leaves(t, is_leaf=is_leaf)):
            return update(updates, state, params, **extra_args)
        def bare(t):
            return jax.tree.map(lambda x: x.get_value() if _is_flax_variable(x) else x, t, is_leaf=is_leaf)

        def like(old, new):  # each Variable of ``old`` holding the value computed for it
            return jax.tree.map(lambda o, n: jax.tree.map(lambda _: n, o) if _is_flax_variable(o) else n, old, new,
                                is_leaf=is_leaf)

        new_updates, new_state = update(bare(updates), bare(state), bare(params), **extra_args)
        return like(updates, new_updates), like(state, new_state)

    return unwrapped


def zeros_like(tree: Any, dtype: jax.typing.DTypeLike | None = None) -> Any:
    """A tree of zeros shaped like ``tree``; ``dtype=None`` keeps each leaf's dtype.

    Built with ``jax.tree.map`` so it keeps the tree's containers (Flax
    ``Variable`` metadata included) and, under ``jit``, its shardings.
    """
    return jax.tree.map(lambda x: jnp.zeros_like(x, dtype=dtype), tree)


def cast(tree: Any, dtype: jax.typing.DTypeLike | None) -> Any:
    """Cast every array leaf to ``dtype``; ``None`` leaves and ``dtype=None`` change nothing."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: None if x is None else jnp.asarray(x).astype(dtype), tree, is_leaf=is_none)


def cast_like(tree: Any, reference: Any) -> Any:
    """Cast every leaf of ``tree`` to the dtype of the matching leaf of ``reference``."""
    return jax.tree.map(
        lambda x, r: x if x is None or r is None else jnp.asarray(x).astype(jnp.asarray(r).dtype),
        tree,
        reference,
        is_leaf=is_none,
    )


def _paths(tree: Any) -> list[str]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)
    return [jax.tree_util.keystr(path) or "<root>" for path, _ in leaves]


def _listing(paths: list[str], limit: int = 8) -> str:
    if not paths:
        return "(none)"
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def check_same_structure(owner: str, updates: Any, other: Any, other_name: str) -> None:
    """Raise a ``ValueError`` naming the differing paths when ``updates`` and ``other`` differ.

    ``other`` is a per-parameter tree the transformation pairs with the updates
    (a moment in its state, or the params). Both the tree structure and each
    leaf's shape must agree, so a gradient never broadcasts into a state or
    parameter of another shape. A ``None`` update matches anything; an update
    where ``other`` holds ``None`` (a param that was ``None`` when the state was
    built, e.g. filtered out by ``eqx.filter``, that now has a gradient) raises.
    The check runs at trace time only.
    """
    ours = jax.tree.structure(updates, is_leaf=is_none)
    theirs = jax.tree.structure(other, is_leaf=is_none)
    if ours == theirs:
        pairs = list(zip(jax.tree.leaves(updates, is_leaf=is_none), jax.tree.leaves(other, is_leaf=is_none)))
        unexpected = [path for path, (u, o) in zip(_paths(updates), pairs) if u is not None and o is None]
        if unexpected:
            raise ValueError(
                f"{owner}: the updates have arrays at {_listing(unexpected)}, where {other_name} is None (a leaf "
                "left out of the params, e.g. by eqx.filter, when the state was built). Give those leaves None "
                "updates too (filter the gradients as the params were: eqx.filter(grads, eqx.is_array)), or build "
                "the state from params that have them."
            )
        shapes = [None if u is None else (jnp.shape(u), jnp.shape(o)) for u, o in pairs]
        if all(pair is None or pair[0] == pair[1] for pair in shapes):
            return
        wrong = [f"{path} {pair[0]} vs {pair[1]}" for path, pair in zip(_paths(updates), shapes)
                 if pair and pair[0] != pair[1]]
        detail = f"shapes differ at {_listing(wrong)}"
    else:
        update_paths, other_paths = _paths(updates), _paths(other)
        only_updates = [p for p in update_paths if p not in set(other_paths)]
        only_other = [p for p in other_paths if p not in set(update_paths)]
        if only_updates or only_other:
            detail = (
                f"paths only in updates: {_listing(only_updates)}; "
                f"paths only in {other_name}: {_listing(only_other)}"
            )
        else:
            detail = f"same paths but different containers: updates are {ours}, {other_name} is {theirs}"
    raise ValueError(
        f"{owner}: the updates tree does not match {other_name}: {detail}. "
        "Pass updates shaped like the params the state was initialised with."
    )


def map_updates(fn: Callable[..., jax.Array], updates: Any, *trees: Any) -> Any:
    """``fn(g, *xs)`` leaf by leaf over the updates and matching trees; ``None`` updates stay ``None``."""
    return jax.tree.map(lambda g, *xs: None if g is None else fn(g, *xs), updates, *trees, is_leaf=is_none)


def map_state(fn: Callable[..., jax.Array], updates: Any, state: Any, *trees: Any) -> Any:
    """``fn(g, s, *xs)`` leaf by leaf to a new state tree; where the update is ``None`` the state leaf is kept.

    A kept leaf is the very object that was passed in, which is how
    :func:`jaxopt_zoo.storage.with_storage` knows to keep its stored form bit for bit.
    """
    return jax.tree.map(lambda g, s, *xs: s if g is None else fn(g, s, *xs), updates, state, *trees, is_leaf=is_none)


def abs_sq(x: jax.Array) -> jax.Array:
    """:math:`|x|^2`: ``x * x`` for real arrays, ``(conj(x) x).real`` for complex ones (as Optax forms it).

    float16 is squared in float32 (:func:`widen`): its square overflows above 256 and flushes below 2e-4.
    """
    x = widen(x)
    return (jnp.conj(x) * x).real if jnp.iscomplexobj(x) else x * x


def _power(g: jax.Array, order: int) -> jax.Array:
    # For complex gradients an even moment is a power of the modulus |g|^2.
    if order % 2 == 0 and jnp.iscomplexobj(g):
        return abs_sq(g) ** (order // 2)
    return g**order


def update_moment(updates: Any, moments: Any, decay: jax.typing.ArrayLike, order: int) -> Any:
    """Exponential moving average of ``g**order``: :math:`m_t = (1-\\beta) g_t^k + \\beta m_{t-1}`.

    As Optax's ``update_moment``, complex gradients are raised to the power as
    they are (:math:`g^2`, not :math:`|g|^2`: see :func:`update_moment_per_elem_norm`).
    The result has the promoted dtype of the gradient (float16 widened to
    float32) and the moment; the storage casts it back (see :mod:`jaxopt_zoo.storage`).
    Where an update is ``None`` the moment is kept as it is (Optax returns ``None`` there).

    Args:
        updates: the gradients :math:`g_t`, a tree (``None`` leaves allowed).
        moments: the previous moments :math:`m_{t-1}`, a tree shaped like ``updates``.
        decay: :math:`\\beta`, the weight of the previous moment (a number or scalar array, traced or not).
        order: :math:`k`, the power of the gradient.
    """
    return map_state(lambda g, m: (1 - decay) * widen(g) ** order + decay * m, updates, moments)


@document_args(update_moment)
def update_moment_per_elem_norm(updates: Any, moments: Any, decay: jax.typing.ArrayLike, order: int) -> Any:
    """Exponential moving average of :math:`|g|^k`: :math:`m_t = (1-\\beta) |g_t|^k + \\beta m_{t-1}` for even
    ``k``.

    For real gradients and for odd ``k`` this is :func:`update_moment`; for
    complex gradients an even moment is a power of the modulus (as Optax forms
    Adam's second moment), so it stays real.
    """
    return map_state(lambda g, m: (1 - decay) * _power(widen(g), order) + decay * m, updates, moments)


@document_args(update_moment)
def update_infinity_moment(updates: Any, moments: Any, decay: jax.typing.ArrayLike,
                           eps: jax.typing.ArrayLike) -> Any:
    """The decayed running maximum of :math:`|g|`: :math:`u_t = \\max(|g_t| + \\epsilon, \\beta u_{t-1})` (Adamax).

    Args:
        eps: :math:`\\epsilon`, added to :math:`|g_t|`.
    """
    return map_state(lambda g, u: jnp.maximum(jnp.abs(widen(g)) + eps, decay * u), updates, moments)


def bias_correction(moment: Any, decay: jax.typing.ArrayLike, count: jax.Array) -> Any:
    """Divide each moment by :math:`1 - \\beta^t`, with the scalar computed once per step.

    The scalar is formed in float32 (or wider) and only then cast to each
    moment's dtype, since :math:`\\beta^t` rounds to 1 in bfloat16.

    Args:
        moment: a tree of moments (``None`` leaves stay ``None``; integer ones, such as integer gradients, are
            corrected in float32).
        decay: :math:`\\beta`, the moments' decay (a number or scalar array).
        count: :math:`t`, the step count as an array (usually the int32 ``count`` already incremented for this
            step; at 0 the division is by 0).
    """
    correction = 1 - decay**count

    def corrected(m):
        m = as_inexact(m)  # an integer gradient (NAdam's correction of g_t): int(1 - beta) would be 0
        return m / correction.astype(m.dtype)

    return jax.tree.map(lambda m: None if m is None else corrected(m), moment, is_leaf=is_none)


def _bias_correction_traced_once(fn: Callable[..., Any]) -> Callable[..., Any]:
    # Traced, also when a step runs eagerly: there a concrete count made decay**count an integer power with the count
    # baked in, compiled again at every step (~20 ms) and rounded otherwise than under jit (Optax jits it too).
    traced = jax.jit(fn, inline=True)

    @functools.wraps(fn)
    def bias_correction(moment: Any, decay: jax.typing.ArrayLike, count: jax.Array) -> Any:
        return traced(moment, decay, count)

    return bias_correction


bias_correction = _bias_correction_traced_once(bias_correction)


def is_function_of_params(x: Any) -> bool:
    """Whether a mask, labels or spec argument is a function to call on the params rather than a tree: a tree whose
    class happens to be callable (an Equinox module of booleans, with its ``__call__``) is a tree (Optax's rule)."""
    leaves = jax.tree.leaves(x)
    return callable(x) and bool(leaves) and all(callable(leaf) for leaf in leaves)


def full_like(tree: Any, value: jax.typing.ArrayLike, dtype: jax.typing.DTypeLike | None = None) -> Any:
    """A tree filled with ``value``, shaped like ``tree``; ``dtype=None`` keeps each leaf's dtype."""
    return jax.tree.map(lambda x: jnp.full_like(x, value, dtype=dtype), tree)


def once_per_shape(fn: Callable[..., Any] | None = None, *, static_argnums: int | tuple[int, ...] = ()) -> Any:
    """``fn`` traced once per shape and dtype of its arguments, not at every call, and inlined where it is called, so
    that the program (and its derivative) is the one written out: ``jax.jit(fn, inline=True)``.

    For the pieces a step applies leaf by leaf or block by block (a transformer has hundreds of leaves of a handful of
    shapes) and for ``custom_jvp`` functions, which JAX traces again at every call (~0.15 ms each). Scalar arguments
    become traced values: give it only those that meet arrays, where they round alike traced or constant.
    """
    if fn is None:
        return functools.partial(once_per_shape, static_argnums=static_argnums)
    return jax.jit(fn, static_argnums=static_argnums, inline=True)


@jax.custom_jvp
def root(x: jax.Array) -> jax.Array:
    """:math:`\\sqrt{x}` for :math:`x \\ge 0`, whose derivative at 0 is taken as 0 instead of :math:`\\infty`.

    The same values as ``jnp.sqrt``. Its argument is a sum of squares (a second moment, a squared norm),
    which is 0 only at its minimum, where its own derivative is 0 too: there ``jnp.sqrt``'s chain rule gives
    :math:`\\infty \\cdot 0 = \\text{NaN}`, so a gradient taken through an optimizer step (of a loss after
    some steps, with respect to the initial params or a hyperparameter) was NaN wherever a gradient entry
    or a whole leaf's gradient was exactly 0 (a dead unit, an unused embedding). Optax's are NaN there.
    """
    return jnp.sqrt(x)


@root.defjvp
def _root_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = jnp.sqrt(x)
    positive = x > 0
    return y, jnp.where(positive, dx / (2 * jnp.where(positive, y, 1)), jnp.zeros_like(y))


root = once_per_shape(root)  # per leaf of every step: its custom_jvp cost more to trace than Adam's direction


@jax.custom_jvp
def cube_root(x: jax.Array) -> jax.Array:
    """:math:`\\sqrt[3]{x}` for :math:`x \\ge 0` (a sum of squares), its derivative at 0 taken as 0 as
    :func:`root`'s."""
    return jnp.cbrt(x)


@cube_root.defjvp
def _cube_root_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = jnp.cbrt(x)
    positive = x > 0
    return y, jnp.where(positive, dx / (3 * jnp.where(positive, y, 1) ** 2), jnp.zeros_like(y))


cube_root = once_per_shape(cube_root)


def divide_unless_small(numerator: jax.Array, denominator: jax.Array, small: jax.typing.ArrayLike) -> jax.Array:
    """:math:`n / d`, or 0 where :math:`d \\le` ``small``: the division by a small :math:`d` is never formed (a
    ``where`` around it would still give its NaN/inf slope to a gradient taken through the step). Elsewhere the bits
    of ``n / d``."""
    tiny = denominator <= small
    return jnp.where(tiny, jnp.zeros_like(numerator), numerator / jnp.where(tiny, 1, denominator))


@jax.custom_jvp
def divide_with_finite_slope(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """:math:`n / d`, the same program (and bits) as ``n / d``, whose derivative is taken with :math:`d = 1` where
    :math:`d = 0`: for a branch a ``select`` discards there (a clip of a zero gradient), where the chain rule
    would give :math:`0 \\cdot \\infty = \\text{NaN}` to a gradient taken through the step. A guard on the
    denominator itself would change the program XLA fuses, and the bits."""
    return numerator / denominator


@divide_with_finite_slope.defjvp
def _divide_with_finite_slope_jvp(primals, tangents):
    (n, d), (dn, dd) = primals, tangents
    safe = jnp.where(d == 0, 1, d)
    return n / d, dn / safe - (n / safe) * (dd / safe)


divide_with_finite_slope = once_per_shape(divide_with_finite_slope)


def global_norm(updates: Any, axis_name: AxisName = None, owner: str = "global_norm") -> jax.Array:
    """The Euclidean norm of all leaves taken together: :math:`\\sqrt{\\sum_i \\|x_i\\|^2}`.

    Args:
        updates: a tree of arrays (``None`` leaves are skipped).
        axis_name: inside ``shard_map``, the mesh axes the leaves may be sharded over; each leaf's sum of
            squares is summed over those of them it varies along (see :mod:`jaxopt_zoo.sharding`). Without it a
            leaf that varies over a mesh axis raises; ``()`` asks for each shard's own norm.
        owner: the name the error messages start with (the calling transformation's).
    """
    return root(global_sum_of_squares(updates, axis_name, owner))


@document_args(global_norm)
def global_sum_of_squares(updates: Any, axis_name: AxisName = None, owner: str = "global_sum_of_squares") -> jax.Array:
    """:math:`\\sum_i \\|x_i\\|^2` over all leaves: :func:`global_norm` squared, without the root (for a caller that
    guards a zero under it, so that XLA forms ``1 / sqrt`` as one ``rsqrt``, as Optax's programs do)."""
    leaves = [x for x in jax.tree.leaves(updates) if x is not None]
    return sum_over_shards(owner, ((jnp.sum(abs_sq(x)), x) for x in leaves), axis_name)


def sum_of_squares(x: jax.Array, axis_name: AxisName = None, owner: str = "sum_of_squares") -> jax.Array:
    """:math:`\\|x\\|^2` of one array; inside ``shard_map``, of the whole array across its shards."""
    return sum_over_shards(owner, [(jnp.sum(abs_sq(x)), x)], axis_name)


def over_root(numerator: jax.Array, inner: jax.Array, eps: Any, guard: bool) -> jax.Array:
    """:math:`n / (\\sqrt{a} + \\epsilon)` for :math:`a \\ge 0`, :math:`\\epsilon \\ge 0`, formed as Optax forms it.

    ``guard`` (when :math:`\\epsilon` may be 0, see :func:`jaxopt_zoo.validation.may_all_be_zero`) gives 0
    where the denominator is 0 instead of 0/0 = NaN, with a finite gradient; elsewhere the bits are the
    unguarded ones. The guard goes under the square root: with a literal zero :math:`\\epsilon` XLA computes
    :math:`n / \\sqrt{a}` as :math:`n \\cdot \\mathrm{rsqrt}(a)`, for Optax and here alike (a guard around the
    whole denominator rounded differently).
    """
    if not guard:
        return numerator / (root(inner) + eps)
    zero = (inner == 0) & (eps == 0)
    return jnp.where(zero, 0, numerator / (root(jnp.where(zero, 1, inner)) + eps))


def moment_ratio(updates: Any, mu_hat: Any, nu_hat: Any, eps: Any, eps_root: Any, guard: bool = False) -> Any:
    """Adam's direction :math:`\\hat m / (\\sqrt{\\hat v + \\epsilon_{root}} + \\epsilon)`, leaf by leaf; ``None``
    updates stay ``None``; ``guard`` as in :func:`over_root` (when both epsilons may be 0)."""
    return map_updates(lambda g, m, v: over_root(m, v + eps_root, eps, guard), updates, mu_hat, nu_hat)


def norm_at_least(x: jax.Array, min_norm: jax.typing.ArrayLike, axis_name: AxisName = None,
                  owner: str = "norm_at_least") -> jax.Array:
    """:math:`\\max(\\|x\\|, n_{min})` of a whole array (across its shards inside ``shard_map``), from one reduction.

    The square root is taken of 1 wherever the norm is clamped, so the gradient
    is finite at :math:`x = 0`; where it is not clamped the value is Optax's
    ``safe_norm`` bit for bit (which takes a second norm of a masked array instead).
    """
    squares = sum_of_squares(x, axis_name, owner)
    clamped = jnp.sqrt(squares) <= min_norm
    return jnp.where(clamped, min_norm, jnp.sqrt(jnp.where(clamped, 1.0, squares)))


@jax.tree_util.register_pytree_node_class
class _ParamsPlaceholder:
    # A pytree with no leaves: tree maps over it (zeros_like, full_like) return it
    # unchanged, so it marks where an init puts per-parameter trees. ``encoded``,
    # when given, tells which leaves of the tree a storage keeps as codes, not values.
    def __init__(self, encoded: Callable[[Any], bool] | None = None):
        self.encoded = encoded

    def tree_flatten(self):
        return (), self.encoded

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux)


def params_placeholder(encoded: Callable[[Any], bool] | None = None) -> Any:
    """The placeholder :func:`map_params` initialises with; a storage that keeps some leaves as codes
    returns one whose ``encoded(leaf)`` tells which."""
    return _ParamsPlaceholder(encoded)


def is_params_placeholder(x: Any) -> bool:
    """Whether ``x`` is the placeholder :func:`map_params` initialises transformations with, or the one
    ``optax.tree.map_params`` does (so that Optax's finds the per-parameter parts of this library's states too)."""
    return isinstance(x, _ParamsPlaceholder) or is_optax_params_placeholder(x)


def is_optax_params_placeholder(x: Any) -> bool:
    """Whether ``x`` is ``optax.tree.map_params``'s placeholder (looked up only where Optax is imported)."""
    optax_state_utils = sys.modules.get("optax.tree_utils._state_utils")
    return optax_state_utils is not None and isinstance(x, getattr(optax_state_utils, "_ParamsPlaceholder", ()))


def map_params(initable: Any, fn: Callable[..., Any], state: Any, *rest: Any,
               transform_non_params: Callable[[Any], Any] | None = None) -> Any:
    """Apply ``fn`` to every leaf of the per-parameter parts of an optimizer state.

    ``initable`` is the transformation (or its ``init``) that built ``state``:
    it is initialised on a placeholder to find which parts of the state are
    shaped like the params (moments, buffers) and which are not (step counts,
    hyperparameters); the latter pass through, or through ``transform_non_params``.
    ``rest`` are trees shaped like the params, passed to ``fn`` leaf by leaf.
    Transformations whose init calls a function of the params (``masked`` with
    a callable mask, ``partition`` with callable labels) cannot be mapped. A moment whose storage keeps
    codes rather than values (8-bit moments) reaches ``fn`` as its stored
    array; ``fn`` may move it (a sharding, a device) but must not change its
    dtype or shape, which would change what it decodes to: that raises.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.adam(1e-3)
        >>> state = tx.init({"w": jnp.ones(3)})
        >>> half = jz.tree.map_params(tx, lambda x: x.astype(jnp.bfloat16), state)
        >>> half[0].mu["w"].dtype, half[0].count.dtype
        (dtype(bfloat16), dtype('int32'))
    """
    init = initable.init if hasattr(initable, "init") else initable
    marked = init(_ParamsPlaceholder())

    def keep_encoding(is_encoded, path, old, new):
        if is_encoded(old) and hasattr(new, "dtype") and (jnp.result_type(new) != jnp.result_type(old)
                                                           or jnp.shape(new) != jnp.shape(old)):
            raise ValueError(
                f"map_params: the state leaf at {jax.tree_util.keystr(path) or '<root>'} holds encoded values "
                f"({jnp.result_type(old)} codes {jnp.shape(old)}), and fn made it {jnp.result_type(new)} "
                f"{jnp.shape(new)}, "
                "which would decode to other values. Map such leaves with a function that keeps their dtype and "
                "shape, or build the optimizer with a floating storage (a dtype) for this moment."
            )
        return new

    def visit(marker, value):
        if isinstance(marker, _ParamsPlaceholder):
            mapped = jax.tree.map(fn, value, *rest)
            if marker.encoded is None:
                return mapped
            return jax.tree_util.tree_map_with_path(functools.partial(keep_encoding, marker.encoded), value, mapped)
        return value if transform_non_params is None else transform_non_params(value)

    return jax.tree.map(visit, marked, state, is_leaf=lambda x: isinstance(x, _ParamsPlaceholder))
