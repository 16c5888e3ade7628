"""Line searches and L-BFGS in Optax's form: scale_by_lbfgs, scale_by_backtracking_linesearch, scale_by_zoom_linesearch.

A line search picks the step :math:`\\eta` along a given direction :math:`u`
by evaluating the objective :math:`f` at trial points :math:`w + \\eta u`. Its
``update`` therefore needs, besides the direction, the value and gradient at
the current params and the objective itself, as keyword arguments (Optax's
protocol; :func:`~jaxopt_zoo.chain` forwards them to every member)::

    value, grad = value_and_grad_from_state(f)(params, state=state)
    updates, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=f)

Any further keyword argument that ``value_fn`` accepts (a batch, say) is passed
on to it. :func:`value_and_grad_from_state` reuses the value and gradient the
line search computed at its accepted point, so a deterministic objective is
differentiated once per step.

Every inner product and norm here reduces whole arrays; inside ``shard_map``
pass ``axis_name`` (the mesh axes) to keep them exact (see :mod:`jaxopt_zoo.sharding`).

    >>> import jaxopt_zoo as jz
    >>> tx = jz.chain(jz.scale_by_lbfgs(), jz.scale(-1.0), jz.scale_by_zoom_linesearch(20))
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, Updates, expects_state, safe_increment, static_only
from jaxopt_zoo.sharding import AxisName, sum_over_shards, varying_like
from jaxopt_zoo.storage import StateDtype, resolve, with_storage

__all__ = [
    "BacktrackingLinesearchInfo",
    "ScaleByBacktrackingLinesearchState",
    "ScaleByLBFGSState",
    "ScaleByZoomLinesearchState",
    "ZoomLinesearchInfo",
    "scale_by_backtracking_linesearch",
    "scale_by_lbfgs",
    "scale_by_zoom_linesearch",
    "value_and_grad_from_state",
]


# --- whole-tree arithmetic (None updates are skipped) ------------------------------------------


def _present(updates: Any, *trees: Any) -> tuple[list[Any], ...]:
    """The leaves of ``updates`` that are not ``None``, and the matching leaves of ``trees``."""
    leaves = jax.tree.leaves(updates, is_leaf=tree.is_none)
    others = [jax.tree.leaves(t, is_leaf=tree.is_none) for t in trees]
    keep = [i for i, u in enumerate(leaves) if u is not None]
    return tuple([xs[i] for i in keep] for xs in (leaves, *others))


def _wide(x: jax.Array) -> jax.Array:
    # At least float32 (a no-op for float32 and float64): a float16 sum of squares overflows past 65504, and a
    # bfloat16 inner product keeps 8 bits; integer and bool leaves (params, their differences) become float32.
    return x.astype(jnp.promote_types(jnp.result_type(x), jnp.float32))


def _inner(owner: str, xs: list[jax.Array], ys: list[jax.Array], axis_name: AxisName) -> jax.Array:
    """:math:`\\operatorname{Re} \\sum_i \\langle x_i, y_i \\rangle` over leaf lists, each leaf whole (all shards),
    in float32 at least."""
    return jnp.real(tree.tree_vdot([_wide(x) for x in xs], [_wide(y) for y in ys], axis_name, owner))


def _norm_sq(owner: str, xs: list[jax.Array], axis_name: AxisName) -> jax.Array:
    xs = [_wide(x) for x in xs]
    return sum_over_shards(owner, ((jnp.sum(jnp.square(x.real) + jnp.square(x.imag)), x) for x in xs), axis_name)


def _axpy(x: Any, a: jax.Array, y: Any) -> Any:
    """``x + a y`` leaf by leaf; where ``y`` is ``None``, ``x`` is kept."""
    a = jnp.asarray(a)
    return jax.tree.map(lambda xi, yi: xi if yi is None else xi + a * yi, x, y, is_leaf=tree.is_none)


def _scaled(a: jax.Array, updates: Any) -> Any:
    """``a u`` in the dtype of ``u`` (``a`` is float32 at least; a bfloat16 direction stays bfloat16)."""
    return tree.map_updates(lambda u: (a * u).astype(jnp.result_type(u)), updates)


def _trial_point(params: Any, eta: jax.Array, updates: Any) -> Any:
    """The params :func:`~jaxopt_zoo.apply_updates` would make of ``_scaled(eta, updates)``: ``w + eta u`` in
    each param's dtype, except for integer and bool params, kept as the float sum (``f`` is differentiated there).
    Where ``u`` is ``None`` the param is kept."""

    def point(p, s):
        if s is None:
            return p
        return (p + s).astype(jnp.result_type(p)) if _gradient_dtype(p) is None else p + s

    return jax.tree.map(point, params, _scaled(eta, updates), is_leaf=tree.is_none)


def _value_dtype(params: Any) -> jnp.dtype:
    # The real dtype of the first inexact param, as Optax takes the first param's (whose int or bool first leaf
    # cannot hold the initial infinite value); JAX's default float where there is none (e.g. the placeholder of
    # tree.map_params). At least float32 (Optax keeps the params' dtype): in bfloat16 a value near 1000 was kept
    # off by up to 2 (the zoom's bracket values, the stored value reused as the next f(w)), and trial steps had 8 bits.
    inexact = [x for x in jax.tree.leaves(params) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    dtype = jnp.real(jnp.empty((), inexact[0].dtype)).dtype if inexact else jnp.zeros(()).dtype
    return jnp.promote_types(dtype, jnp.float32)


def _print_if(condition: jax.Array, message: str, **values: Any) -> None:
    """Print ``message.format(**values)`` where ``condition`` holds, deciding on the host: under ``vmap`` a
    ``lax.cond`` around ``jax.debug.print`` runs both branches, and every search printed its failure line."""
    jax.debug.callback(lambda flag, **v: print(message.format(**v)) if flag else None, condition, **values)


def _as_scalar(x: jax.Array, dtype: jnp.dtype) -> jax.Array:
    # A value of f widened to dtype, never narrowed (an f of float32 params may return float64 under x64).
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, dtype))


def _gradient_dtype(p: Any) -> jnp.dtype | None:
    # The dtype a gradient (or difference) of the param p is kept in: p's (None), or float32 for an integer or
    # bool param, whose gradient would be truncated (Optax keeps p's dtype, and its state changes dtype after a step).
    return None if jnp.issubdtype(jnp.result_type(p), jnp.inexact) else jnp.dtype(jnp.float32)


def _gradient_zeros(params: Any) -> Any:
    return jax.tree.map(lambda p: jnp.zeros_like(p, dtype=_gradient_dtype(p)), params)


def _in_gradient_dtypes(grads: Any, params: Any) -> Any:
    # An integer or bool param's gradient is float0 (jax.grad's allow_int, jax.vjp): float32 zeros instead.
    return jax.tree.map(
        lambda g, p: jnp.zeros(jnp.shape(p), _gradient_dtype(p)) if g.dtype == jax.dtypes.float0 else g, grads, params)


def _value_and_grad(f: Callable) -> Callable:
    """``jax.value_and_grad(f)`` of a tree that may hold integer or bool params (frozen, their updates ``None``),
    whose gradients are float32 zeros: ``jax.grad`` refuses such inputs, so a search over them failed (Optax's too)."""
    value_and_grad = jax.value_and_grad(f, allow_int=True)

    def value_and_float_grad(params, *args, **kwargs):
        value, grads = value_and_grad(params, *args, **kwargs)
        return value, _in_gradient_dtypes(grads, params)

    return value_and_float_grad


def _objective_arguments(owner: str, updates: Any, params: Any, extra_args: dict) -> tuple[Any, Any, Callable]:
    """``value``, ``grad`` and ``value_fn`` bound to the extra arguments it takes, checked (``value_fn`` checks what
    it returns); else an error saying what to pass. The updates are checked against the params and ``grad``."""
    validation.require_params(owner, params)
    missing = [name for name in ("value", "grad", "value_fn") if extra_args.get(name) is None]
    if missing:
        raise ValueError(
            f"{owner}: update needs {', '.join(missing)}: call update(grad, state, params, value=value, grad=grad, "
            "value_fn=f), with value, grad = jz.value_and_grad_from_state(f)(params, state=state)."
        )
    extra_args = dict(extra_args)
    value, grad, value_fn = extra_args.pop("value"), extra_args.pop("grad"), extra_args.pop("value_fn")
    validation.scalar_loss(owner, "value", value)
    validation.objective(owner, "value_fn", value_fn)
    tree.check_same_structure(owner, updates, params, "the params")
    if jax.tree.structure(grad, is_leaf=tree.is_none) == jax.tree.structure(params, is_leaf=tree.is_none):
        # A None leaf of grad (a frozen param, whose update is None too) is kept as zeros: the state's grad is whole.
        grad = jax.tree.map(lambda g, p: jnp.zeros_like(p, dtype=_gradient_dtype(p)) if g is None and p is not None
                            else g, grad, params, is_leaf=tree.is_none)
    tree.check_same_structure(owner, updates, grad, "grad (the extra argument)")
    accepted = inspect.signature(value_fn).parameters
    fn_kwargs = {k: v for k, v in extra_args.items() if k in accepted}
    unused = sorted(set(extra_args) - set(fn_kwargs))
    if unused:
        raise TypeError(f"{owner}: keyword arguments {unused} were passed to update, but value_fn does not take them.")
    bound = functools.partial(value_fn, **fn_kwargs)

    def objective(params):  # an unreduced loss would fail in jax.grad, or broadcast the search's scalars
        result = bound(params)
        validation.scalar_loss(owner, "value_fn", result, returned=True)
        return result

    return value, grad, objective


# --- L-BFGS --------------------------------------------------------------------------------------


class ScaleByLBFGSState(NamedTuple):
    """Step count, the last params and updates, and the last ``memory_size`` secant pairs.

    ``diff_params_memory`` and ``diff_updates_memory`` hold :math:`s_j = w_{j+1} - w_j`
    and :math:`y_j = g_{j+1} - g_j` stacked along a leading axis of length
    ``memory_size`` (a ring buffer), ``weights_memory`` the :math:`\\rho_j = 1 / \\langle y_j, s_j \\rangle`.
    """

    count: jax.Array
    params: Updates
    updates: Updates
    diff_params_memory: Updates
    diff_updates_memory: Updates
    weights_memory: jax.Array


def _two_loop(owner, g, s_mem, y_mem, rho, gamma, newest, axis_name):
    """:math:`H g` by the two-loop recursion (Nocedal & Wright, Algorithm 7.4) over leaf lists.

    The pairs are visited newest to oldest, then oldest to newest; ``newest``
    is the ring-buffer slot after the newest pair. Empty slots have :math:`\\rho = 0`.
    """
    m = rho.shape[0]
    order = (newest + jnp.arange(m)) % m  # oldest first

    def pair(j):
        return [s[j] for s in s_mem], [y[j] for y in y_mem]

    def backward(q, j):
        s, y = pair(j)
        alpha = rho[j] * _inner(owner, s, q, axis_name)
        return tree.cast_like(_axpy(q, -alpha, y), q), alpha

    q, alphas = jax.lax.scan(backward, g, order, reverse=True)
    r = tree.cast_like(_scaled(gamma, q), q)  # gamma is float32 at least; the direction keeps the gradient's dtype

    def forward(r, j_alpha):
        j, alpha = j_alpha
        s, y = pair(j)
        beta = rho[j] * _inner(owner, y, r, axis_name)
        return tree.cast_like(_axpy(r, alpha - beta, s), r), beta

    return jax.lax.scan(forward, r, (order, alphas))[0]


@static_only("memory_size")
def scale_by_lbfgs(
    memory_size: int = 10,
    scale_init_precond: bool = True,
    *,
    memory_dtype: StateDtype = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """The L-BFGS direction :math:`H_k g_k` (Liu & Nocedal 1989; Nocedal & Wright, Algorithms 7.4 and 7.5).

    With :math:`s_j = w_{j+1} - w_j`, :math:`y_j = g_{j+1} - g_j` and
    :math:`\\rho_j = 1 / \\langle y_j, s_j \\rangle` (0 where that product is 0)
    for the last :math:`m` steps, the inverse-Hessian estimate is

    .. math::

        H_k = V_{k-1}^\\top \\cdots V_{k-m}^\\top (\\gamma_k I) V_{k-m} \\cdots V_{k-1}
              + \\text{(the } \\rho_j s_j s_j^\\top \\text{ terms)}, \\qquad V_j = I - \\rho_j y_j s_j^\\top,

    applied to :math:`g_k` by the two-loop recursion without forming a matrix.
    :math:`\\gamma_k = \\langle s_{k-1}, y_{k-1} \\rangle / \\|y_{k-1}\\|^2` when
    ``scale_init_precond`` (1 where :math:`y_{k-1} = 0`), else 1; on the first
    step, :math:`\\gamma_0 = \\min(1, 1 / \\|g_0\\|)`, so the first direction is
    at most a unit step. The pair :math:`(s_{k-1}, y_{k-1})` enters the memory
    at step :math:`k` from the params and updates passed then, so after a line
    search the memory only learns from accepted steps. The output is the
    direction itself: chain ``scale(-1.0)`` (or a learning rate) and a line
    search after it, as :func:`jaxopt_zoo.lbfgs` does.

    Numerically identical to ``optax.scale_by_lbfgs`` for float32 and float64
    params, with the same state, while every pair has positive curvature. A pair
    with :math:`s^\\top y \\le 0` (possible without the Wolfe conditions: a fixed
    rate, or backtracking over a concave stretch) is kept with weight 0, so the
    recursion skips it, and :math:`\\gamma_k` is then the first step's scale
    (Nocedal and Wright 7.2; Optax stores the negative weight, and its direction
    can climb). Deviations for other dtypes: the inner
    products and norms are formed in float32 at least (Optax forms them in the
    params' dtype, where a float16 sum of squares overflows past 65504 and the
    first direction became 0), and the direction keeps the gradient's dtype; for
    integer and bool params the last gradient, the param differences and both
    memories are float32 (Optax keeps the param's dtype, which truncated
    :math:`y = g_{k+1} - g_k`, and its ``updates`` field turned float at the
    first step); a gradient of another dtype than at ``init`` is kept in that
    one, so the state's dtypes never change at a step. A gradient taken
    through its steps (``jax.grad`` of a loss after them) includes the first
    step's normalisation, whose gradient Optax stops, and stays finite where a
    gradient or :math:`y^\\top s` is 0.
    Additions: ``memory_dtype`` keeps the two stacked memories in a storage
    (a dtype, :class:`~jaxopt_zoo.storage.StochasticBF16`,
    :class:`~jaxopt_zoo.quantization.Blockwise8Bit`); ``axis_name`` makes the
    inner products exact inside ``shard_map``; a ``None`` update leaf keeps its
    memory and stays ``None`` (the other leaves form the vectors). The two
    memories are separate buffers, built from the params so that
    :func:`~jaxopt_zoo.init_sharded` shards them like the params (Optax's init
    hands one array to both, so its state cannot be donated to a jitted step).

    Args:
        memory_size: :math:`m \\ge 1`, how many secant pairs are kept.
        scale_init_precond: whether :math:`\\gamma_k` is the secant scaling above (else 1).
        memory_dtype: storage of ``diff_params_memory`` and ``diff_updates_memory`` (see :mod:`jaxopt_zoo.storage`).
        axis_name: inside ``shard_map``, the mesh axes the updates may be sharded over.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_lbfgs(memory_size=3)
        >>> params = jnp.array([3.0, 4.0])
        >>> direction, state = tx.update(params, tx.init(params), params)
        >>> direction  # gamma_0 = 1 / ||g|| = 0.2: a unit vector
        Array([0.6, 0.8], dtype=float32)

    References:
        Liu and Nocedal, "On the limited memory BFGS method for large scale optimization",
        Mathematical Programming 45, 1989.
        Nocedal and Wright, "Numerical Optimization", Springer 1999 (Algorithms 7.4, 7.5).
    """
    owner = "scale_by_lbfgs"
    memory_size = validation.whole_number(owner, "memory_size", memory_size, 1, validation.INT32_MAX)
    validation.flag(owner, "scale_init_precond", scale_init_precond)
    store = resolve(owner, "memory_dtype", memory_dtype)
    axis_name = validation.axis_name(owner, axis_name)

    def init(params):
        def stacked():
            # A leading axis of length m on every leaf, built from the param so it keeps the param's sharding;
            # a new buffer for each memory, so that the state can be donated.
            # Differences of an integer or bool param are float32, as its gradients are.
            return tree.map_reshaped(
                lambda p: jnp.broadcast_to(jnp.zeros_like(p, dtype=_gradient_dtype(p)), (memory_size,) + jnp.shape(p)),
                params,
            )

        return ScaleByLBFGSState(
            count=jnp.zeros([], jnp.int32),
            params=tree.zeros_like(params),
            updates=_gradient_zeros(params),
            diff_params_memory=stacked(),
            diff_updates_memory=stacked(),
            weights_memory=jnp.zeros(memory_size),
        )

    def update(updates, state, params=None, **extra_args):
        del extra_args
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, state.params, "the last params (state.params)")
        g, w, w_old, g_old, s_mem, y_mem = _present(
            updates, params, state.params, state.updates, state.diff_params_memory, state.diff_updates_memory
        )
        k = state.count
        slot, last_slot = k % memory_size, (k - 1) % memory_size
        started = k > 0  # no secant pair before the second step

        # An integer or bool param's steps in float32 (bools cannot be subtracted); float params as they are.
        as_gradient = lambda x: x if _gradient_dtype(x) is None else x.astype(jnp.float32)
        wg, wg_old = [as_gradient(a) for a in w], [as_gradient(b) for b in w_old]
        s = [jnp.where(started, a - b, jnp.zeros_like(a - b)) for a, b in zip(wg, wg_old)]
        y = [jnp.where(started, a - b, jnp.zeros_like(a - b)) for a, b in zip(g, g_old)]
        # <y, s> of the unmasked differences (equal to the masked ones once started).
        sy_raw = _inner(owner, [a - b for a, b in zip(g, g_old)], [a - b for a, b in zip(wg, wg_old)], axis_name)
        # A pair without positive curvature (<s, y> <= 0: possible without the Wolfe conditions, e.g. a fixed rate or
        # backtracking on a concave stretch) gets weight 0, so the two-loop recursion skips it; Optax stores
        # 1 / <s, y> < 0, and the direction can then climb.
        curved = started & (sy_raw > 0.0)
        rho = jnp.where(curved, 1.0 / jnp.where(curved, sy_raw, 1.0), 0.0)
        s_mem = [m.at[last_slot].set(x.astype(m.dtype)) for m, x in zip(s_mem, s)]
        y_mem = [m.at[last_slot].set(x.astype(m.dtype)) for m, x in zip(y_mem, y)]
        rho_mem = state.weights_memory.at[last_slot].set(rho)

        if scale_init_precond:
            sy, yy = _inner(owner, y, s, axis_name), _norm_sq(owner, y, axis_name)
            gamma = jnp.where(yy > 0.0, sy / jnp.where(yy > 0.0, yy, 1.0), 1.0)  # no 0/0 in the untaken branch
            # Differentiable (Optax stops the gradient of g here, so a gradient taken through the first step missed
            # the normalisation's share); 1/0 is kept out of the unused branch so that g = 0 stays finite. The
            # guard sits under the root: XLA then makes 1/sqrt one rsqrt, as in Optax's program (CPUs round rsqrt
            # by their own instructions, and a guard between the two made the first step differ by an ulp on some).
            g_sq = _norm_sq(owner, g, axis_name)
            inverse_norm = 1.0 / tree.root(jnp.where(g_sq > 0, g_sq, 1.0))
            # Without a usable pair (the first step, or no positive curvature): the first step's scale.
            gamma = jnp.where(curved, gamma, jnp.minimum(1.0, inverse_norm))
        else:
            gamma = 1.0
        direction = _two_loop(owner, g, s_mem, y_mem, rho_mem, gamma, slot, axis_name)

        def put(full, part):  # the computed leaves back into the tree; None-update leaves keep their objects
            leaves, treedef = jax.tree.flatten(full, is_leaf=tree.is_none)
            new = iter(part)
            return treedef.unflatten([x if u is None else next(new) for x, u in zip(leaves, update_leaves)])

        update_leaves = jax.tree.leaves(updates, is_leaf=tree.is_none)
        return put(updates, direction), ScaleByLBFGSState(
            count=safe_increment(k),
            params=put(state.params, w),
            # In the state's dtype, so that the state's dtypes do not change at a step (gradients of another dtype).
            updates=put(state.updates, tree.cast_like(g, g_old)),
            diff_params_memory=put(state.diff_params_memory, s_mem),
            diff_updates_memory=put(state.diff_updates_memory, y_mem),
            weights_memory=rho_mem,
        )

    tx = with_storage(
        GradientTransformation(init, update), signed={"diff_params_memory": store, "diff_updates_memory": store}
    )
    return expects_state(owner, tx, ScaleByLBFGSState)


# --- backtracking (Armijo) line search ---------------------------------------------------------


def _no_steps() -> jax.Array:
    # The step counter as update writes it (the default int, not weakly typed): a state whose types change after
    # the first update would compile a jitted step twice (Optax's weakly typed 0 does).
    return jnp.asarray(0, dtype=int)


class BacktrackingLinesearchInfo(NamedTuple):
    """How the last backtracking search went: trials made, and how far the last trial missed the criterion (0: met)."""

    num_linesearch_steps: jax.Array
    decrease_error: jax.Array


class ScaleByBacktrackingLinesearchState(NamedTuple):
    """The accepted step size, the value (and with ``store_grad`` the gradient) at the accepted point, and the info."""

    learning_rate: jax.Array
    value: jax.Array
    grad: Updates | None
    info: BacktrackingLinesearchInfo


class _Backtrack(NamedTuple):
    learning_rate: jax.Array
    new_value: jax.Array
    new_grad: Updates
    decrease_error: jax.Array
    iter_num: jax.Array


def _check_search_options(owner: str, max_steps_name: str, max_steps: Any, minimum: int) -> None:
    if not isinstance(max_steps, jax.core.Tracer):  # a traced count (inject_hyperparams) is taken as it is
        # compared with an int32 count: beyond int32 the loop never ends (the count saturates) or overflows
        validation.whole_number(owner, max_steps_name, max_steps, minimum, validation.INT32_MAX)


def scale_by_backtracking_linesearch(
    max_backtracking_steps: int,
    slope_rtol: jax.typing.ArrayLike = 1e-4,
    decrease_factor: jax.typing.ArrayLike = 0.8,
    increase_factor: jax.typing.ArrayLike = 1.5,
    max_learning_rate: jax.typing.ArrayLike = 1.0,
    atol: jax.typing.ArrayLike = 0.0,
    rtol: jax.typing.ArrayLike = 0.0,
    store_grad: bool = False,
    verbose: bool = False,
    *,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """Scale the updates by a step size found by backtracking to sufficient decrease (Armijo 1966).

    Starting from :math:`\\eta = \\min(\\kappa_+ \\eta_{\\text{prev}}, \\eta_{\\max})`
    (:math:`\\eta_{\\text{prev}} = 1` on the first step), :math:`\\eta` is
    multiplied by :math:`\\kappa_-` until

    .. math::

        f(w + \\eta u) \\le (1 + \\delta) f(w)
            + c\\, \\eta \\operatorname{Re}\\langle u, \\overline{\\nabla f(w)} \\rangle + \\epsilon

    (Nocedal & Wright, Algorithm 3.1, with the tolerances :math:`\\delta` =
    ``rtol`` and :math:`\\epsilon` = ``atol``), for at most
    ``max_backtracking_steps`` reductions; the update is :math:`\\eta u`. If no
    trial point had a finite value, :math:`\\eta = 0`. :math:`u` must be a
    descent direction (a negative slope): chain this after e.g. ``sgd(1.0)``.
    The state keeps :math:`f` at the last trial point and, with ``store_grad``,
    its gradient, for :func:`value_and_grad_from_state`.

    ``update`` takes the keyword arguments ``value`` (:math:`f(w)`), ``grad``
    (:math:`\\nabla f(w)`) and ``value_fn`` (:math:`f`), plus any keyword
    arguments of ``value_fn``. Numerically identical to
    ``optax.scale_by_backtracking_linesearch``, with the same state. Deviations:
    arguments are checked when it is built; ``verbose`` prints one line of our
    own wording when the search fails (one per failed search under ``vmap``,
    where Optax's prints for every search; one per device inside ``shard_map``);
    a missing ``value``/``grad``/``value_fn`` raises a ``ValueError`` saying
    what to pass, as do a ``value`` that is not a scalar, a ``value_fn`` that is
    not callable or returns no scalar (an unreduced loss), and updates or
    ``grad`` whose tree or shapes differ from the params' or the state's (naming
    the paths); ``axis_name`` (an addition) makes the slope exact inside ``shard_map``; ``None`` update leaves stay
    ``None`` (their params do not move in the trials). For bfloat16 and float16
    params the step size, value and decrease error are float32, and the slope
    and :math:`f`'s values are widened to float32 for the test (Optax keeps them
    in the first param's dtype: in bfloat16 a value near 16500 is off by up to
    64 and a step size keeps 8 bits), while the update and the trial points keep
    the updates' and params' dtypes; ``store_grad`` works there (Optax seeds the
    transpose with a float32 1.0 and fails). For integer and bool params the
    kept gradient and the trial points are float32 (Optax truncates the
    gradient to the param's dtype); the update is applied, and rounded, as usual.
    With these, the state's dtypes never change at a step.

    Args:
        max_backtracking_steps: the most reductions of :math:`\\eta` per step (an integer in [0, 2**31 - 1]).
        slope_rtol: :math:`c \\in [0, 1)`, the fraction of the linear decrease required.
        decrease_factor: :math:`\\kappa_- \\in (0, 1)`, the reduction factor.
        increase_factor: :math:`\\kappa_+ \\ge 1`, how much larger than the last accepted step the first trial is
            (``math.inf``: always start at ``max_learning_rate``).
        max_learning_rate: :math:`\\eta_{\\max} > 0`.
        atol: :math:`\\epsilon \\ge 0`.
        rtol: :math:`\\delta \\ge 0`.
        store_grad: also compute and keep the gradient at the accepted point.
        verbose: print a line when the search fails.
        axis_name: inside ``shard_map``, the mesh axes the updates may be sharded over.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> f = lambda w: jnp.sum(w**2)
        >>> tx = jz.chain(jz.sgd(1.0), jz.scale_by_backtracking_linesearch(15, store_grad=True))
        >>> w = jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(w)
        >>> for _ in range(3):
        ...     value, grad = jz.value_and_grad_from_state(f)(w, state=state)
        ...     updates, state = tx.update(grad, state, w, value=value, grad=grad, value_fn=f)
        ...     w = jz.apply_updates(w, updates)
        >>> print(f"{f(w):.3f}")
        0.653

    References:
        Armijo, "Minimization of functions having Lipschitz continuous first partial derivatives",
        Pacific Journal of Mathematics 16, 1966.
        Nocedal and Wright, "Numerical Optimization", Springer 1999 (Algorithm 3.1).
        Vaswani et al., "Painless Stochastic Gradient", NeurIPS 2019 (the increasing initial guess).
    """
    owner = "scale_by_backtracking_linesearch"
    _check_search_options(owner, "max_backtracking_steps", max_backtracking_steps, 0)
    c = validation.non_negative(owner, "slope_rtol", slope_rtol)
    if c is not None and c >= 1:
        raise ValueError(f"{owner}: slope_rtol must be in [0, 1), got {slope_rtol!r}.")
    shrink = validation.positive(owner, "decrease_factor", decrease_factor)
    if shrink is not None and shrink >= 1:
        raise ValueError(f"{owner}: decrease_factor must be in (0, 1), got {decrease_factor!r}.")
    if not (isinstance(increase_factor, (int, float)) and increase_factor == math.inf):
        grow = validation.real_scalar(owner, "increase_factor", increase_factor)
        if grow is not None and grow < 1:
            raise ValueError(f"{owner}: increase_factor must be >= 1 (or math.inf), got {increase_factor!r}.")
    validation.positive(owner, "max_learning_rate", max_learning_rate)
    validation.non_negative(owner, "atol", atol)
    validation.non_negative(owner, "rtol", rtol)
    validation.flag(owner, "store_grad", store_grad)
    validation.flag(owner, "verbose", verbose)
    axis_name = validation.axis_name(owner, axis_name)

    def init(params):
        dtype = _value_dtype(params)
        return ScaleByBacktrackingLinesearchState(
            learning_rate=jnp.array(1.0, dtype),
            value=jnp.array(jnp.inf, dtype),
            grad=_gradient_zeros(params) if store_grad else None,
            info=BacktrackingLinesearchInfo(_no_steps(), jnp.array(jnp.inf, dtype)),
        )

    def excess(eta, slope, value, new_value):
        # By how much f(w + eta u) misses the bound (0 when met; a NaN value counts as an infinite miss).
        error = new_value - (1.0 + rtol) * value - eta * slope_rtol * slope
        return jnp.maximum(jnp.where(jnp.isnan(error), jnp.inf, error), 0.0)

    def update(updates, state, params=None, **extra_args):
        value, grad, f = _objective_arguments(owner, updates, params, extra_args)
        if store_grad:
            tree.check_same_structure(owner, updates, state.grad, "the gradient kept in the state (state.grad)")
        dtype = _value_dtype(params)
        value = _as_scalar(value, dtype)
        u, g = _present(updates, grad)
        # d/d eta f(w + eta u) at 0, in Optax's complex convention <u, conj(g)>.
        slope = _inner(owner, u, [jnp.conj(x) for x in g], axis_name)

        def searching(search):
            return ~(search.decrease_error <= atol) & (search.iter_num <= max_backtracking_steps)

        def trial(search):
            eta = jnp.where(search.iter_num > 0, decrease_factor * search.learning_rate, search.learning_rate)
            w = _trial_point(params, eta, updates)
            if store_grad:
                # The value with its pullback, so the gradient costs nothing more than a backward pass, and only
                # at the accepted point. The cotangent has f's dtype.
                raw_value, pullback = jax.vjp(f, w)
                new_value = _as_scalar(raw_value, dtype)
                error = excess(eta, slope, value, new_value)
                accepted = (error <= atol) | (search.iter_num == max_backtracking_steps)
                new_grad = jax.lax.cond(
                    accepted,
                    lambda p: tree.cast_like(_in_gradient_dtypes(pullback(jnp.ones_like(raw_value))[0], p),
                                             search.new_grad),
                    lambda p: search.new_grad,
                    w,
                )
            else:
                new_value = _as_scalar(f(w), dtype)
                error = excess(eta, slope, value, new_value)
                new_grad = search.new_grad
            return tree.cast_like(_Backtrack(eta, new_value, new_grad, error, search.iter_num + 1), search)

        first = jnp.minimum(increase_factor * state.learning_rate, max_learning_rate)
        # Inside shard_map the loop's constants vary as what they meet: the scalars as the value and the slope (they
        # vary per device with axis_name=(), a search per device), the gradient as the params.
        first, value0, inf0, zero0 = varying_like((first, value, jnp.array(jnp.inf), jnp.asarray(0)), value, slope)
        start = _Backtrack(first, value0, varying_like(_gradient_zeros(params), params), inf0, zero0)
        search = jax.lax.while_loop(searching, trial, start)
        eta = jnp.where(jnp.isinf(search.decrease_error), 0.0, search.learning_rate)
        if verbose:
            _print_if(search.decrease_error > atol,
                      owner + ": no step size met the sufficient decrease criterion (value {v}, slope {s}, "
                      "last step size {e}, decrease error {d}); taking step size {t}.",
                      v=value, s=slope, e=search.learning_rate, d=search.decrease_error, t=eta)
        info = BacktrackingLinesearchInfo(search.iter_num, search.decrease_error)
        new_state = ScaleByBacktrackingLinesearchState(
            eta, search.new_value, search.new_grad if store_grad else None, info
        )
        return _scaled(eta, updates), tree.cast_like(new_state, state)

    return expects_state(owner, GradientTransformation(init, update), ScaleByBacktrackingLinesearchState)


# --- zoom (strong Wolfe) line search -----------------------------------------------------------


class ZoomLinesearchInfo(NamedTuple):
    """How the last zoom search went: trials made, and by how much the returned step misses the
    sufficient decrease and the curvature criteria (0: met; a positive curvature error is benign)."""

    num_linesearch_steps: jax.Array
    decrease_error: jax.Array
    curvature_error: jax.Array


class ScaleByZoomLinesearchState(NamedTuple):
    """The accepted step size, the value and gradient at the accepted point, and the info."""

    learning_rate: jax.Array
    value: jax.Array
    grad: Updates
    info: ZoomLinesearchInfo


class _Zoom(NamedTuple):
    """The search's running state: the last trial, the bracket [low, high], and the best safe point."""

    count: jax.Array
    stepsize: jax.Array  # the last trial point and what was measured there
    value: jax.Array
    grad: Updates
    slope: jax.Array
    decrease_error: jax.Array
    curvature_error: jax.Array
    error: jax.Array
    interval_found: jax.Array  # phase 2 (zoom) once a bracket is known
    done: jax.Array
    failed: jax.Array
    low: jax.Array  # value(low) <= value(high); low is not necessarily the smaller step
    value_low: jax.Array
    slope_low: jax.Array
    high: jax.Array
    value_high: jax.Array
    slope_high: jax.Array
    cubic_ref: jax.Array  # the third point of the cubic interpolation
    value_cubic_ref: jax.Array
    safe_stepsize: jax.Array  # the best step with sufficient decrease seen so far (0: none)
    safe_value: jax.Array
    safe_grad: Updates


def _cubic_minimizer(a, fa, fpa, b, fb, c, fc):
    """The local minimizer of the cubic through (a, fa), (b, fb), (c, fc) with slope fpa at a (NaN if none)."""
    db, dc = b - a, c - a
    denom = (db * dc) ** 2 * (db - dc)
    rows = jnp.array([[dc**2, -(db**2)], [-(dc**3), db**3]])
    coef3, coef2 = jnp.dot(
        rows, jnp.array([fb - fa - fpa * db, fc - fa - fpa * dc]), precision=jax.lax.Precision.HIGHEST
    ) / denom
    return a + (-coef2 + jnp.sqrt(coef2 * coef2 - 3.0 * coef3 * fpa)) / (3.0 * coef3)


def _quadratic_minimizer(a, fa, fpa, b, fb):
    """The critical point of the parabola through (a, fa), (b, fb) with slope fpa at a."""
    db = b - a
    curvature = (fb - fa - fpa * db) / (db**2)
    return a - fpa / (2.0 * curvature)


def scale_by_zoom_linesearch(
    max_linesearch_steps: int,
    max_learning_rate: jax.typing.ArrayLike | None = None,
    tol: jax.typing.ArrayLike = 0.0,
    increase_factor: jax.typing.ArrayLike = 2.0,
    slope_rtol: jax.typing.ArrayLike = 1e-4,
    curv_rtol: jax.typing.ArrayLike = 0.9,
    approx_dec_rtol: jax.typing.ArrayLike | None = 1e-6,
    stepsize_precision: jax.typing.ArrayLike = 1e-5,
    initial_guess_strategy: str = "keep",
    verbose: bool = False,
    *,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """Scale the updates by a step size meeting the strong Wolfe conditions, found by bracketing and zooming.

    It looks for :math:`\\eta` with sufficient decrease and small curvature along :math:`u`,

    .. math::

        f(w + \\eta u) \\le f(w) + c_1 \\eta \\langle u, \\nabla f(w) \\rangle + \\epsilon, \\qquad
        |\\langle \\nabla f(w + \\eta u), u \\rangle| \\le c_2 |\\langle \\nabla f(w), u \\rangle| + \\epsilon

    (:math:`c_1` = ``slope_rtol``, :math:`c_2` = ``curv_rtol``, :math:`\\epsilon` = ``tol``),
    by Nocedal & Wright's Algorithms 3.5 and 3.6: trial steps grow by
    ``increase_factor`` from the initial guess (1, or the last accepted step for
    ``"keep"``; capped at ``max_learning_rate``) until they bracket an
    acceptable step, and the bracket is then shrunk at the minimizer of a cubic
    through its ends and the previous point (if that lies in its middle 60%),
    else of a quadratic (middle 80%), else at its midpoint. Near a minimizer,
    where :math:`f(w + \\eta u) \\le f(w) + c_3 |f(w)|` (:math:`c_3` =
    ``approx_dec_rtol``; ``None`` turns this off), the decrease may instead be
    met approximately, :math:`\\langle \\nabla f(w + \\eta u), u \\rangle \\le (2 c_1 - 1)
    \\langle \\nabla f(w), u \\rangle` (Hager & Zhang 2006), which stays
    measurable in floating point. If the search stops (``max_linesearch_steps``
    trials, or a bracket shorter than ``stepsize_precision``) without both
    criteria, the best step with sufficient decrease is taken, else the last trial.
    The update is :math:`\\eta u`; the state keeps :math:`f` and
    :math:`\\nabla f` at the accepted point for :func:`value_and_grad_from_state`.

    ``update`` takes the keyword arguments ``value``, ``grad`` and ``value_fn``
    (see :func:`scale_by_backtracking_linesearch`). Numerically identical to
    ``optax.scale_by_zoom_linesearch``, with the same state. Deviations:
    arguments are checked when it is built (including :math:`0 \\le c_1 < c_2`);
    ``verbose`` prints one line of our own wording when the search fails (also when it stops at
    ``max_learning_rate``; one per failed search under ``vmap``, where Optax's prints for every search; one per
    device inside ``shard_map``); a missing ``value``/``grad``/``value_fn`` raises a ``ValueError`` saying
    what to pass, as do a non-scalar ``value``, a ``value_fn`` that is not callable or returns no scalar, and
    updates or ``grad`` shaped otherwise than the params or the state's ``grad``; ``axis_name`` (an addition)
    makes the slopes exact inside ``shard_map``; ``None`` update leaves stay ``None``. For bfloat16 and
    float16 params the step sizes, values, slopes and errors (in the state and
    in the search) are float32 (Optax keeps them in the first param's dtype,
    where trial steps keep 8 bits and the bracket's values near 16500 are off by
    up to 64), while the update and the trial points keep the updates' and
    params' dtypes. For integer and bool params the kept gradient and the trial
    points are float32 (Optax truncates the gradient to the param's dtype); the
    update is applied, and rounded, as usual. With these, the state's dtypes
    never change at a step.

    Args:
        max_linesearch_steps: the most trial points per step (an integer in [1, 2**31 - 1]).
        max_learning_rate: the largest step tried (> 0), or ``None`` for no bound.
        tol: :math:`\\epsilon \\ge 0`.
        increase_factor: > 1, the growth of the trial steps while bracketing.
        slope_rtol: :math:`c_1`, with :math:`0 \\le c_1 < c_2`.
        curv_rtol: :math:`c_2 > c_1` (``jnp.inf`` drops the curvature criterion).
        approx_dec_rtol: :math:`c_3 \\ge 0`, or ``None`` for the plain decrease criterion.
        stepsize_precision: the bracket length (>= 0) below which a step with sufficient decrease is taken.
        initial_guess_strategy: ``"one"`` (first trial 1) or ``"keep"`` (first trial the last accepted step).
        verbose: print a line when the search fails.
        axis_name: inside ``shard_map``, the mesh axes the updates may be sharded over.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> f = lambda w: jnp.sum((w - 1.0) ** 2)
        >>> tx = jz.chain(jz.sgd(1.0), jz.scale_by_zoom_linesearch(max_linesearch_steps=15))
        >>> w = jnp.zeros(3)
        >>> state = tx.init(w)
        >>> value, grad = jz.value_and_grad_from_state(f)(w, state=state)
        >>> updates, state = tx.update(grad, state, w, value=value, grad=grad, value_fn=f)
        >>> jz.apply_updates(w, updates)  # the exact minimizer along -grad
        Array([1., 1., 1.], dtype=float32)

    References:
        Nocedal and Wright, "Numerical Optimization", Springer 1999 (Algorithms 3.5, 3.6).
        Hager and Zhang, "Algorithm 851: CG_DESCENT", ACM TOMS 32, 2006 (the approximate Wolfe condition).
    """
    owner = "scale_by_zoom_linesearch"
    _check_search_options(owner, "max_linesearch_steps", max_linesearch_steps, 1)
    if max_learning_rate is not None:
        validation.positive(owner, "max_learning_rate", max_learning_rate)
    validation.non_negative(owner, "tol", tol)
    grow = validation.real_scalar(owner, "increase_factor", increase_factor)
    if grow is not None and grow <= 1:
        raise ValueError(f"{owner}: increase_factor must be > 1, got {increase_factor!r}.")
    c1 = validation.non_negative(owner, "slope_rtol", slope_rtol)
    c2 = math.inf if isinstance(curv_rtol, (int, float)) and curv_rtol == math.inf else (
        validation.positive(owner, "curv_rtol", curv_rtol))
    if c1 is not None and c2 is not None and not c1 < c2:
        raise ValueError(
            f"{owner}: slope_rtol must be < curv_rtol (0 <= c1 < c2), got {slope_rtol!r} >= {curv_rtol!r}."
        )
    if c1 is not None and c2 == math.inf and c1 >= 1:
        raise ValueError(f"{owner}: slope_rtol must be in [0, 1), got {slope_rtol!r}.")
    if approx_dec_rtol is not None:
        validation.non_negative(owner, "approx_dec_rtol", approx_dec_rtol)
    validation.non_negative(owner, "stepsize_precision", stepsize_precision)
    if initial_guess_strategy not in ("one", "keep"):
        raise ValueError(f"{owner}: initial_guess_strategy must be 'one' or 'keep', got {initial_guess_strategy!r}.")
    validation.flag(owner, "verbose", verbose)
    axis_name = validation.axis_name(owner, axis_name)

    def decrease_error(eta, value, slope, value_init, slope_init):
        # Armijo's criterion, or (near a minimizer, where values stop being comparable) Hager and Zhang's.
        error = value - value_init - slope_rtol * eta * slope_init
        if approx_dec_rtol is not None:
            approx = slope - (2 * slope_rtol - 1.0) * slope_init
            approx = jnp.maximum(approx, value - value_init - approx_dec_rtol * jnp.abs(value_init))
            error = jnp.minimum(approx, error)
        error = jnp.maximum(error, 0.0)
        return jnp.where(jnp.isnan(error), jnp.inf, error)

    def curvature_error(slope, slope_init):
        error = jnp.maximum(jnp.abs(slope) - curv_rtol * jnp.abs(slope_init), 0.0)
        return jnp.where(jnp.isnan(error), jnp.inf, error)

    def where(condition, xs, ys):
        return jax.tree.map(lambda x, y: jnp.where(condition, x, y), xs, ys)

    def init(params):
        dtype = _value_dtype(params)
        return ScaleByZoomLinesearchState(
            learning_rate=jnp.asarray(1.0, dtype),
            value=jnp.asarray(jnp.inf, dtype),
            grad=_gradient_zeros(params),
            info=ZoomLinesearchInfo(_no_steps(), jnp.asarray(jnp.inf, dtype), jnp.asarray(jnp.inf, dtype)),
        )

    def update(updates, state, params=None, **extra_args):
        value_init, grad, f = _objective_arguments(owner, updates, params, extra_args)
        tree.check_same_structure(owner, updates, state.grad, "the gradient kept in the state (state.grad)")
        dtype = _value_dtype(params)
        value_init = _as_scalar(value_init, dtype)
        u, g = _present(updates, grad)
        value_and_grad = _value_and_grad(f)
        slope_init = _inner(owner, u, g, axis_name)
        guess = jnp.asarray(1.0) if initial_guess_strategy == "one" else state.learning_rate

        def measure(eta):
            # f, its gradient and its slope along u at w + eta u.
            value, grad = value_and_grad(_trial_point(params, eta, updates))
            value = _as_scalar(value, dtype)
            slope = _inner(owner, [jnp.conj(x) for x in _present(updates, grad)[1]], u, axis_name)
            return value, grad, slope

        def errors(eta, value, slope):
            dec = decrease_error(eta, value, slope, value_init, slope_init)
            curv = curvature_error(slope, slope_init)
            return dec, curv, jnp.maximum(dec, curv)

        def bracket(s):  # Algorithm 3.5: grow the step until an acceptable one is bracketed
            eta = jnp.where(s.count == 0, guess, increase_factor * s.stepsize)
            if max_learning_rate is not None:
                at_max = eta >= max_learning_rate
                eta = jnp.minimum(eta, max_learning_rate)
            else:
                at_max = jnp.asarray(False)
            value, grad, slope = measure(eta)
            dec, curv, error = errors(eta, value, slope)
            safe = where(dec <= tol, [eta, value, grad], [s.safe_stepsize, s.safe_value, s.safe_grad])
            high_is_new = (dec > 0.0) | ((value >= s.value) & (s.count > 0))
            low_is_new = (slope >= 0.0) & ~high_is_new
            previous, new = [s.stepsize, s.value, s.slope], [eta, value, slope]
            low, value_low, slope_low, high, value_high, slope_high = where(
                low_is_new, new + previous, previous + new
            )
            found = high_is_new | low_is_new | (error <= tol)
            # At the largest step with no bracket: nothing larger can meet the curvature criterion.
            done = (error <= tol) | (at_max & ~found)
            failed = (s.count + 1 >= max_linesearch_steps) & ~done
            return _Zoom(safe_increment(s.count), eta, value, grad, slope, dec, curv, error, jnp.asarray(found),
                         jnp.asarray(done), jnp.asarray(failed), low, value_low, slope_low, high, value_high,
                         slope_high, low, value_low, *safe)

        def zoom(s):  # Algorithm 3.6: shrink the bracket at an interpolated point
            width = jnp.abs(s.high - s.low)
            left, right = jnp.minimum(s.high, s.low), jnp.maximum(s.high, s.low)
            cubic = _cubic_minimizer(s.low, s.value_low, s.slope_low, s.high, s.value_high, s.cubic_ref,
                                     s.value_cubic_ref)
            use_cubic = (cubic > left + 0.2 * width) & (cubic < right - 0.2 * width)
            quadratic = _quadratic_minimizer(s.low, s.value_low, s.slope_low, s.high, s.value_high)
            use_quadratic = ~use_cubic & (quadratic > left + 0.1 * width) & (quadratic < right - 0.1 * width)
            eta = jnp.where(use_cubic, cubic, s.cubic_ref)
            eta = jnp.where(use_quadratic, quadratic, eta)
            eta = jnp.where(~use_cubic & ~use_quadratic, (s.low + s.high) / 2.0, eta)
            value, grad, slope = measure(eta)
            dec, curv, error = errors(eta, value, slope)
            better = (dec <= tol) & (value < s.safe_value)
            safe = where(better, [eta, value, grad], [s.safe_stepsize, s.safe_value, s.safe_grad])
            done = error <= tol
            high_is_new = (dec > 0.0) | (value >= s.value_low)
            high_is_low = (slope * (s.high - s.low) >= 0.0) & ~high_is_new
            new = [eta, value, slope]
            low, high = [s.low, s.value_low, s.slope_low], [s.high, s.value_high, s.slope_high]
            high = where(high_is_low, low, where(high_is_new, new, high))
            low = where(~high_is_new, new, low)
            # The end that was replaced becomes the third point of the next cubic.
            cubic_ref = where(high_is_new | high_is_low, [s.high, s.value_high], [s.low, s.value_low])
            # Stop at a tiny bracket only once some step has sufficient decrease (steep functions need tiny steps).
            out_of_trials = jnp.asarray((s.count + 1) >= max_linesearch_steps)
            stop = out_of_trials | ((width <= stepsize_precision) & (safe[0] > 0.0))
            return _Zoom(safe_increment(s.count), eta, value, grad, slope, dec, curv, error, s.interval_found, done,
                         stop & ~done, *low, *high, *cubic_ref, *safe)

        def fall_back(s):  # out of trials: the best step with sufficient decrease, else the last trial
            use_safe = (s.safe_stepsize > 0.0) | jnp.isinf(s.decrease_error)
            safe, last = [s.safe_stepsize, s.safe_value, s.safe_grad], [s.stepsize, s.value, s.grad]
            eta, value, grad = where(use_safe, safe, last)
            return tree.cast_like(s._replace(stepsize=eta, value=value, grad=grad), s)

        def trial(s):
            # Each phase hands back the dtypes it was given (f of bfloat16 params may compute in float32).
            new = jax.lax.cond(
                s.interval_found, lambda x: tree.cast_like(zoom(x), x), lambda x: tree.cast_like(bracket(x), x), s
            )
            return tree.cast_like(jax.lax.cond(new.failed, fall_back, lambda x: x, new), s)

        zero, inf, false = jnp.asarray(0.0), jnp.asarray(jnp.inf), jnp.asarray(False)
        start = _Zoom(jnp.asarray(0), jnp.asarray(0.0, dtype), jnp.array(value_init, dtype), grad, slope_init,
                      inf, inf, inf, false, false, false, zero, value_init, slope_init, zero, value_init, slope_init,
                      zero, value_init, zero, value_init, grad)
        scalars = varying_like(start._replace(grad=None, safe_grad=None), value_init, slope_init)  # (as above)
        start = scalars._replace(grad=varying_like(start.grad, params), safe_grad=varying_like(start.safe_grad, params))
        final = jax.lax.while_loop(lambda s: ~(s.done | s.failed), trial, start)
        if verbose:  # from the final state: inside the loop, vmap runs every phase for every search
            report = dict(v=value_init, sl=slope_init, d=final.decrease_error, c=final.curvature_error,
                          t=final.stepsize)
            # Done with an error above tol happens only where the bracketing stopped at max_learning_rate.
            _print_if(final.done & (final.error > tol),
                      owner + ": no step size up to max_learning_rate met both criteria (value {v}, slope {sl}, "
                      "decrease error {d}, curvature error {c}); taking step size {t}.", **report)
            _print_if(final.failed,
                      owner + ": no step size met both criteria before the trials ran out or the bracket became "
                      "shorter than stepsize_precision (value {v}, slope {sl}, last trial's decrease error {d}, "
                      "curvature error {c}); taking step size {t}.", **report)
        info = ZoomLinesearchInfo(final.count, final.decrease_error, final.curvature_error)
        new_state = ScaleByZoomLinesearchState(final.stepsize, final.value, final.grad, info)
        return _scaled(final.stepsize, updates), tree.cast_like(new_state, state)

    return expects_state(owner, GradientTransformation(init, update), ScaleByZoomLinesearchState)


# --- reusing the line search's last evaluation -------------------------------------------------


def _fields_named(name: str, state: Any) -> list[Any]:
    """Every field called ``name`` of the NamedTuples anywhere in ``state``."""
    found = []
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        if name in state._fields:
            found.append(getattr(state, name))
        children = [getattr(state, f) for f in state._fields if f != name]
    elif isinstance(state, (tuple, list)):
        children = list(state)
    elif isinstance(state, dict):
        children = list(state.values())
    else:
        children = []
    for child in children:
        found += _fields_named(name, child)
    return found


def value_and_grad_from_state(
    value_fn: Callable[..., jax.typing.ArrayLike],
) -> Callable[..., tuple[jax.Array, Updates]]:
    """``jax.value_and_grad(value_fn)`` that first looks in the optimizer state for the value and gradient.

    The returned ``fn(params, *args, state=state, **kwargs)`` finds the one
    ``value`` and ``grad`` field in ``state`` (kept by
    :func:`scale_by_zoom_linesearch`, and by
    :func:`scale_by_backtracking_linesearch` with ``store_grad=True``): they
    are :math:`f` and :math:`\\nabla f` at the point the line search accepted,
    i.e. at the current params. Where the stored value is infinite or NaN (the
    first step, or a failed search) it evaluates
    ``jax.value_and_grad(value_fn)(params, *args, **kwargs)`` instead. Only
    valid for a deterministic objective: with mini-batches, compute the value
    and gradient on each batch. Same behaviour as
    ``optax.value_and_grad_from_state``; the errors say what to change (a
    ``ValueError`` where the state lacks the fields, Optax's ``KeyError``). The
    stored value and gradient are returned in the dtypes ``value_fn`` returns
    (the searches keep the value in float32 at least, where Optax's stored
    value would not match a float32 ``value_fn`` of bfloat16 params).

    Args:
        value_fn: the objective :math:`f`: a function of ``(params, *args, **kwargs)`` returning a scalar,
            differentiated with respect to ``params``.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> f = lambda w: jnp.sum(w**2)
        >>> tx = jz.lbfgs()
        >>> w = jnp.array([1.0, 2.0])
        >>> state = tx.init(w)
        >>> value_and_grad = jz.value_and_grad_from_state(f)
        >>> value, grad = value_and_grad(w, state=state)  # computed: nothing stored yet
        >>> updates, state = tx.update(grad, state, w, value=value, grad=grad, value_fn=f)
        >>> w = jz.apply_updates(w, updates)
        >>> value_and_grad(w, state=state)[0] == state[-1].value  # reused
        Array(True, dtype=bool)
    """
    owner = "value_and_grad_from_state"
    if not callable(value_fn):
        raise TypeError(f"{owner}: value_fn must be a callable returning a scalar, got {value_fn!r}.")

    def value_and_grad(params, *fn_args, state, **fn_kwargs):
        values, grads = _fields_named("value", state), _fields_named("grad", state)
        if len(values) != 1 or len(grads) != 1:
            raise ValueError(
                f"{owner}: expected one 'value' and one 'grad' field in the optimizer state, found {len(values)} "
                f"and {len(grads)}. Use an optimizer with exactly one line search that keeps them "
                "(scale_by_zoom_linesearch, or scale_by_backtracking_linesearch with store_grad=True)."
            )
        value, grad = values[0], grads[0]
        if grad is None:
            raise ValueError(
                f"{owner}: the state keeps no gradient; build scale_by_backtracking_linesearch with store_grad=True."
            )
        computed = lambda p, a, kw: _value_and_grad(value_fn)(p, *a, **kw)
        # The searches keep the value in float32 at least (f of bfloat16 params may return bfloat16, which
        # the widened value holds exactly): both branches return what value_fn returns.
        returned = jax.eval_shape(computed, params, fn_args, fn_kwargs)
        stored = jax.tree.map(lambda x, r: jnp.asarray(x).astype(r.dtype), (value, grad), returned)
        return jax.lax.cond(~jnp.isinf(value) & ~jnp.isnan(value), lambda *_: stored, computed, params, fn_args,
                            fn_kwargs)

    return value_and_grad
