"""``torch.optim.LBFGS`` as a pure, jit-able transformation driven by the objective.

One ``update`` is one ``LBFGS.step(closure)``: up to ``max_iter`` quasi-Newton
iterations, each with a fixed step or PyTorch's strong-Wolfe line search, all
inside ``jax.lax.while_loop``s, so the whole step compiles to one program. The
closure becomes ``value_fn(params) -> scalar``, which ``update`` differentiates
itself. ``jz.torch.lbfgs`` is :func:`torch_lbfgs`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import sharding, tree, validation
from jaxopt_zoo.base import GradientTransformation, check_state, safe_increment, static_only, zero_count
from jaxopt_zoo.sharding import require_whole_arrays

__all__ = ["TorchLbfgsState", "torch_lbfgs"]

_OWNER = "torch.lbfgs"
_CURVATURE_MIN = 1e-10  # torch keeps a pair (y, s) only when y.s exceeds this
_C1, _C2, _LS_TOLERANCE = 1e-4, 0.9, 1e-9  # torch's strong-Wolfe constants (its step passes none of them)


class TorchLbfgsState(NamedTuple):
    """PyTorch's LBFGS state over the flattened parameter vector (length ``n``).

    ``old_dirs``/``old_stps`` hold the curvature pairs :math:`y_i, s_i` as a ring
    of ``history_size`` rows (``num_old`` of them in use, the oldest at row
    ``start``) and ``ro`` their :math:`1 / y_i^\\top s_i`; ``h_diag`` scales the
    initial inverse Hessian; ``d``, ``t`` and ``prev_flat_grad`` are the last
    direction, step length and gradient, carried into the next step as PyTorch
    carries them; ``func_evals`` and ``n_iter`` count evaluations and iterations
    over all steps (``n_iter == 0``: the next iteration is the very first).
    """

    old_dirs: jax.Array
    old_stps: jax.Array
    ro: jax.Array
    start: jax.Array
    num_old: jax.Array
    h_diag: jax.Array
    d: jax.Array
    t: jax.Array
    prev_flat_grad: jax.Array
    prev_loss: jax.Array
    func_evals: jax.Array
    n_iter: jax.Array


def _py_max(a, b):
    return jnp.where(b > a, b, a)  # Python's max(a, b) (torch's code calls it on numbers): a unless b > a


def _py_min(a, b):
    return jnp.where(b < a, b, a)  # Python's min(a, b): a unless b < a


def _cubic_minimum(x1, f1, g1, x2, f2, g2, lo, hi):
    # The minimiser of the cubic through (x1, f1, slope g1) and (x2, f2, slope g2), clipped to [lo, hi];
    # (lo + hi) / 2 when the cubic has no real minimiser. torch's operations in torch's order.
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 * d1 - g1 * g2
    real = d2_square >= 0
    d2 = jnp.sqrt(jnp.where(real, d2_square, 0))
    forward = x1 <= x2
    xa, xb, ga, gb = (jnp.where(forward, u, v) for u, v in ((x2, x1), (x1, x2), (g2, g1), (g1, g2)))
    minimum = xa - (xa - xb) * ((ga + d2 - d1) / (ga - gb + 2 * d2))
    return jnp.where(real, _py_min(_py_max(minimum, lo), hi), (lo + hi) / 2.0)


class _Search(NamedTuple):
    # The strong-Wolfe search between two evaluations. phase 0: bracketing, 1: zooming (both waiting for the
    # value at t), 2: finished, 3: about to choose the next zoom point. The bracket's two points a and b are
    # (step, value, slope, gradient) tuples; while bracketing, a is the previous point. low_b: b is the lower.
    phase: jax.Array
    t: jax.Array
    iters: jax.Array
    evals: jax.Array
    a: tuple
    b: tuple
    low_b: jax.Array
    done: jax.Array
    stalled: jax.Array


def _pick(index, *points):
    # points[index] field by field (index a traced int).
    return tuple(jnp.select([index == i for i in range(len(points) - 1)], fields[:-1], fields[-1])
                 for fields in zip(*points))


def _strong_wolfe(probe, dot, t, d, f, g, gtd, max_ls, run):
    """torch's ``_strong_wolfe`` (bracketing, then zoom by cubic interpolation) as one while loop.

    ``probe(t) -> (value, grad)`` evaluates the objective at ``x + t d``; every
    loop iteration makes exactly one evaluation. Returns ``(value, grad, t, evals)``
    at the accepted point; with ``run`` false, ``(f, g, 0, 0)`` without evaluating.
    """
    d_norm = jnp.max(jnp.abs(d), initial=-jnp.inf)
    origin = (jnp.zeros_like(t), f, gtd, g)
    sufficient = lambda t_new, f_new: ~(f_new > f + _C1 * t_new * gtd)  # Armijo
    curvature = lambda gtd_new: jnp.abs(gtd_new) <= -_C2 * gtd  # strong Wolfe

    def after_probe(s, new):
        t_new, f_new, gtd_new, _ = new
        a, b = s.a, s.b
        wolfe = curvature(gtd_new)
        # Bracketing (a: the previous point): out of evaluations -> [origin, new]; no sufficient decrease, no
        # decrease from a, or an upward slope -> zoom on [a, new]; the curvature condition -> accept new;
        # else extrapolate by a cubic step from (a, new).
        out = ~(s.iters < max_ls)
        rising = ~sufficient(t_new, f_new) | ((s.iters > 1) & (f_new >= a[1]))
        accept = ~out & ~rising & wolfe
        extend = ~out & ~rising & ~wolfe & ~(gtd_new >= 0)
        t_next = _cubic_minimum(a[0], a[1], a[2], t_new, f_new, gtd_new, t_new + 0.01 * (t_new - a[0]), t_new * 10)
        bracketing = (jnp.where(out, 2, jnp.where(accept | extend, 1, 0)), jnp.int32(1),
                      jnp.where(out | accept, 2, jnp.where(extend, 0, 3)), jnp.where(extend, t_next, s.t),
                      s.iters + extend, accept)
        # Zooming: a point no lower than the low end (or without sufficient decrease) replaces the high end;
        # otherwise it becomes the low end, the old low end replacing the high one when the slope says so.
        f_low = jnp.where(s.low_b, b[1], a[1])
        higher = ~sufficient(t_new, f_new) | (f_new >= f_low)
        swap = ~higher & ~wolfe & (gtd_new * jnp.where(s.low_b, a[0] - b[0], b[0] - a[0]) >= 0)
        # Where each end comes from: 0 itself, 1 the new point, 2 the origin, 3 the other end.
        source_a = jnp.where(higher, jnp.where(s.low_b, 1, 0), jnp.where(s.low_b, jnp.where(swap, 3, 0), 1))
        source_b = jnp.where(higher, jnp.where(s.low_b, 0, 1), jnp.where(s.low_b, 1, jnp.where(swap, 3, 0)))
        zooming = (source_a, source_b, jnp.int32(3), s.t, s.iters, ~higher & wolfe)
        source_a, source_b, phase, t_, iters, done = (
            jnp.where(s.phase == 0, u, v) for u, v in zip(bracketing, zooming))
        a, b = _pick(source_a, s.a, new, origin, s.b), _pick(source_b, s.b, new, origin, s.a)
        # The lower end: a after an acceptance (the bracket is [new]), kept when the new point became the low
        # end, else recomputed (torch: low is 0 when f_a <= f_b).
        recompute = jnp.where(s.phase == 0, ~accept, higher)
        low_b = jnp.where(recompute, ~(a[1] <= b[1]), jnp.where(s.phase == 0, False, s.low_b))
        return s._replace(phase=phase.astype(jnp.int32), t=t_, iters=iters, a=a, b=b, low_b=low_b, done=done)

    def choose_zoom_point(s):
        a, b = s.a, s.b
        finished = s.done | ~(s.iters < max_ls) | (jnp.abs(b[0] - a[0]) * d_norm < _LS_TOLERANCE)
        top, bottom = _py_max(a[0], b[0]), _py_min(a[0], b[0])
        t_new = _cubic_minimum(a[0], a[1], a[2], b[0], b[1], b[2], bottom, top)
        # Too close to an end twice in a row, or outside: move to 0.1 of the bracket's length inside it.
        margin = 0.1 * (top - bottom)
        near_end = _py_min(top - t_new, t_new - bottom) < margin
        move = near_end & (s.stalled | (t_new >= top) | (t_new <= bottom))
        moved = jnp.where(jnp.abs(t_new - top) < jnp.abs(t_new - bottom), top - margin, bottom + margin)
        return s._replace(phase=jnp.where(finished, 2, 1).astype(jnp.int32),
                          t=jnp.where(finished | ~move, t_new, moved),
                          stalled=jnp.where(finished, s.stalled, near_end & ~move), iters=s.iters + ~finished)

    def body(s):
        value, grad = probe(s.t)
        s = after_probe(s._replace(evals=s.evals + 1), (s.t, value, dot(grad, d), grad))
        return jax.tree.map(lambda u, v: jnp.where(s.phase == 3, u, v), choose_zoom_point(s), s)

    int0, false = jnp.int32(0), jnp.bool_(False)
    phase = jnp.where(run, 0, 2).astype(jnp.int32)  # not run: the origin, without evaluating
    start = _Search(phase, t, int0, int0, origin, origin, false, false, false)
    s = jax.lax.while_loop(lambda s: s.phase != 2, body, start)
    t_low, f_low, _, g_low = (jnp.where(s.low_b, u, v) for u, v in zip(s.b, s.a))
    return f_low, g_low, t_low, s.evals


class _Flat:
    # The params as one vector (leaf order of jax.tree.leaves, each leaf raveled), as torch concatenates
    # p.grad.view(-1); None gradient leaves are frozen through a 0/1 mask.
    def __init__(self, params):
        self.leaves, self.treedef = jax.tree.flatten(params)
        for leaf in self.leaves:
            dtype = jnp.result_type(leaf)
            if not jnp.issubdtype(dtype, jnp.floating):
                raise ValueError(
                    f"{_OWNER}: every parameter must be a real floating array, got one of dtype {dtype} (complex "
                    "parameters: optimise their real and imaginary parts as separate real leaves)."
                )
        promoted = jnp.result_type(*self.leaves) if self.leaves else jnp.float32
        self.dtype = tree.moment_dtype(promoted)  # the params' dtype (float32 for float16, as every moment here)
        self.scalar_dtype = jnp.promote_types(self.dtype, jnp.float32)

    def ravel(self, leaves):
        # Leaves split over Explicit mesh axes are gathered: JAX concatenates only parts laid out alike (the
        # vector and its history are whole on every device; unravel lays each piece out like its leaf again).
        parts = [jnp.ravel(sharding.gathered(jnp.asarray(x))[0]).astype(self.dtype) for x in leaves]
        return jnp.concatenate(parts) if parts else jnp.zeros((0,), self.dtype)

    def unravel(self, flat, like=None):
        out, offset = [], 0
        for leaf, keep in zip(self.leaves, like or self.leaves):
            size = jnp.size(leaf)
            piece = flat[offset: offset + size].reshape(jnp.shape(leaf)).astype(jnp.result_type(leaf))
            layout = sharding.explicit_layout(leaf)
            out.append(None if keep is None else piece if layout is None else jax.sharding.reshard(piece, layout))
            offset += size
        return jax.tree.unflatten(self.treedef, out)


def _count(name: str, value: Any, minimum: int) -> Any:
    # An iteration or evaluation budget: a whole number, or a traced one (inject_hyperparams) used as it is.
    if isinstance(value, jax.core.Tracer):
        return value
    return validation.whole_number(_OWNER, name, value, minimum, validation.INT32_MAX)


@static_only("history_size")
def torch_lbfgs(
    lr: float | jax.Array = 1,
    max_iter: int = 20,
    max_eval: int | None = None,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
    history_size: int = 100,
    line_search_fn: str | None = None,
) -> GradientTransformation:
    """``torch.optim.LBFGS``: one ``update`` is one ``step(closure)``, with the closure as ``value_fn``.

    Call it as ``update(grads, state, params, value_fn=f, value=f(params))``
    where ``grads`` (and ``value``, evaluated if omitted) are ``f``'s at
    ``params`` (PyTorch's first closure call) and ``f(params)`` returns a real
    scalar; it must be deterministic. ``update`` evaluates ``jax.value_and_grad(f)``
    itself as often as PyTorch calls the closure, and returns the whole step's
    displacement. Extra keyword arguments (Optax's ``grad=``) are ignored.
    Each step, with :math:`g` the gradient over the flattened params:

    * stop at once when :math:`\\max|g| \\le` ``tolerance_grad``; else iterate, at most ``max_iter`` times:
    * keep the pair :math:`y = g - g_{prev}, s = t d` when :math:`y^\\top s > 10^{-10}` (the
      oldest is dropped beyond ``history_size``) and set :math:`H = y^\\top s / y^\\top y`;
    * :math:`d = -H_k g` by the two-loop recursion (:math:`-g` on the very first iteration);
    * :math:`t = \\min(1, 1 / \\lVert g \\rVert_1)\\,\\gamma` on the very first iteration, :math:`\\gamma` after;
      stop if :math:`g^\\top d > -` ``tolerance_change``;
    * ``line_search_fn=None``: :math:`x \\leftarrow x + t d`, evaluated again unless it is the last iteration;
      ``"strong_wolfe"``: PyTorch's search (bracketing, then zoom by cubic interpolation, :math:`c_1 = 10^{-4}`,
      :math:`c_2 = 0.9`, at most ``max_eval`` evaluations in the step) picks :math:`t`;
    * stop after ``max_iter`` iterations, ``max_eval`` evaluations (default ``max_iter * 5 // 4``),
      when :math:`\\max|g| \\le` ``tolerance_grad``, :math:`\\max|t d| \\le` ``tolerance_change`` or
      the loss changed by less than ``tolerance_change``.

    The history, direction and counts persist between steps as in PyTorch (so
    only the first step's first iteration is a gradient step). Liu & Nocedal
    (1989), "On the limited memory BFGS method for large scale optimization";
    the line search is minFunc's (Schmidt), which PyTorch ports.

    How it is stored: the parameter tree is flattened into one vector of the
    params' dtype (float32 for float16), in ``jax.tree.leaves`` order, as
    PyTorch concatenates ``p.grad.view(-1)`` (params split over Explicit mesh
    axes are gathered for it: the vector and its history are whole on every
    device, and each update is laid out like its param). The history is two
    ``(history_size, n)`` ring buffers allocated at ``init`` (PyTorch grows its
    lists up to that size), so the state has a fixed shape and the step jits.
    There are no ``*_dtype`` storage options: the curvature pairs enter the
    inverse-Hessian estimate through differences and inner products such as
    :math:`1 / y^\\top s`, which low precision or 8-bit blocks would spoil, so
    they stay in the params' dtype. Scalars (step lengths, losses, inner
    products) are float32 at least.

    Deviations from PyTorch: a ``None`` gradient leaf freezes that parameter for
    the step (its gradient entries are taken as 0 in every evaluation, as PyTorch
    does for ``grad=None``, and its entries of the direction are 0, so it does not
    move and its update is ``None``; PyTorch would move it along the history's
    direction if it had had gradients before). Invalid options fail at
    construction: ``line_search_fn`` other than ``None``/``"strong_wolfe"`` (PyTorch
    raises at the first step), ``history_size < 1``, ``max_eval < 1`` and a negative
    ``max_iter`` (which PyTorch accepts and then fails on, or treats as 1 or 0). Complex parameters are
    refused (PyTorch views them as real pairs). ``lr`` is a number, not a
    schedule: wrap with :func:`~jaxopt_zoo.inject_hyperparams` for one, with
    ``static_args=("history_size",)`` (the history's shape). Inside
    ``shard_map`` every array must be whole (the inner products span all params).
    Its iterations are a ``while_loop``, which JAX differentiates forward (``jax.jvp``) but not in reverse:
    ``jax.grad`` through its steps raises (PyTorch's is not differentiable either).

    Versus :func:`optax.lbfgs`: Optax's ``update`` is one iteration, not
    ``max_iter`` of them; its zoom line search (Nocedal & Wright's algorithms 3.5
    and 3.6, with other interpolation and safeguards, first trial step 1, at most
    20 evaluations) is not PyTorch's, and it is a separate member of the chain; its
    first step scales by :math:`\\min(1, 1/\\lVert g \\rVert_2)` (Euclidean, PyTorch
    uses the 1-norm), it stores every pair (a zero :math:`y^\\top s` gets weight 0,
    PyTorch skips pairs with :math:`y^\\top s \\le 10^{-10}`), keeps 10 pairs by default
    (PyTorch 100) per leaf instead of over a flattened vector, and has no
    ``tolerance_*`` stopping tests. Trajectories therefore differ.

    Args:
        lr: scales every step (PyTorch's ``lr``), ``>= 0``.
        max_iter: iterations per ``update``, ``>= 0``.
        max_eval: evaluations per ``update`` (the first included), ``>= 1``; default ``max_iter * 5 // 4``.
        tolerance_grad: stop when the largest gradient entry is at most this.
        tolerance_change: stop when the step or the change of the loss is below this.
        history_size: curvature pairs kept, ``>= 1`` (a Python int: it sets the state's shape).
        line_search_fn: ``None`` (fixed steps of length ``lr``) or ``"strong_wolfe"``.

    Example:
        >>> import jax, jax.numpy as jnp, jaxopt_zoo as jz
        >>> f = lambda p: jnp.sum((p["w"] - 3.0) ** 2)  # the closure: deterministic, params -> scalar
        >>> params = {"w": jnp.zeros(2)}
        >>> tx = jz.torch.lbfgs(max_iter=5)  # or line_search_fn="strong_wolfe"
        >>> state = tx.init(params)
        >>> step = jax.jit(lambda grads, state, params: tx.update(grads, state, params, value_fn=f))
        >>> updates, state = step(jax.grad(f)(params), state, params)  # value=f(params) is computed if not given
        >>> jz.apply_updates(params, updates)["w"]
        Array([3., 3.], dtype=float32)
    """
    if callable(lr):
        raise ValueError(
            f"{_OWNER}: lr must be a number, got the callable {lr!r}; for a schedule, wrap the optimizer: "
            "jz.inject_hyperparams(jz.torch.lbfgs, static_args=('history_size',))(lr=schedule)."
        )
    validation.non_negative(_OWNER, "lr", lr)
    max_iter = _count("max_iter", max_iter, 0)
    max_eval = max_iter * 5 // 4 if max_eval is None else _count("max_eval", max_eval, 1)
    validation.real_scalar(_OWNER, "tolerance_grad", tolerance_grad)
    validation.real_scalar(_OWNER, "tolerance_change", tolerance_change)
    if isinstance(history_size, jax.core.Tracer):
        raise ValueError(
            f"{_OWNER}: history_size sets the shape of the history buffers, so it must be a Python int, got a traced "
            "value; with inject_hyperparams pass static_args=('history_size',)."
        )
    history_size = validation.whole_number(_OWNER, "history_size", history_size, 1, validation.INT32_MAX)
    if not (line_search_fn is None or (isinstance(line_search_fn, str) and line_search_fn == "strong_wolfe")):
        raise ValueError(f"{_OWNER}: line_search_fn must be None or 'strong_wolfe', got {line_search_fn!r}.")
    strong_wolfe = line_search_fn is not None
    m = history_size

    def init(params):
        flat = _Flat(params)
        x = flat.ravel(flat.leaves)
        # Every field its own buffer (one buffer in two leaves could not be donated).
        scalar = lambda v: jnp.full((), v, flat.scalar_dtype)
        history = lambda: jnp.zeros((m, x.size), flat.dtype)
        return TorchLbfgsState(history(), history(), jnp.zeros((m,), flat.scalar_dtype), zero_count(), zero_count(),
                               scalar(1), jnp.zeros_like(x), scalar(0), jnp.zeros_like(x), scalar(0), zero_count(),
                               zero_count())

    def update(updates, state, params=None, *, value_fn: Callable[[Any], Any] | None = None, value=None,
               **extra_args):
        del extra_args
        check_state(_OWNER, state, TorchLbfgsState)
        validation.require_params(_OWNER, params)
        if not callable(value_fn):
            raise ValueError(
                f"{_OWNER} needs the objective: call update(grads, state, params, value_fn=f, value=f(params)) with "
                f"f(params) -> scalar (PyTorch's closure), got value_fn={value_fn!r}."
            )
        tree.check_same_structure(_OWNER, updates, params, "the params")
        require_whole_arrays(_OWNER, (updates, params))
        flat = _Flat(params)
        grad_leaves = flat.treedef.flatten_up_to(updates)
        sdt, vdt = flat.scalar_dtype, flat.dtype
        x0 = flat.ravel(flat.leaves)
        if state.d.shape != x0.shape:
            raise ValueError(f"{_OWNER}: the state holds {state.d.size} parameters, the params {x0.size}.")
        frozen = any(g is None for g in grad_leaves)
        mask = flat.ravel([jnp.full(jnp.shape(p), g is not None) for p, g in zip(flat.leaves, grad_leaves)])
        freeze = (lambda v: jnp.where(mask, v, 0).astype(vdt)) if frozen else (lambda v: v.astype(vdt))

        def dot(a, b):
            return jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST, preferred_element_type=sdt).astype(sdt)

        def scalar(f):
            f = jnp.asarray(f)
            if f.shape != ():
                raise ValueError(f"{_OWNER}: value_fn must return a scalar, got shape {f.shape}.")
            return f.astype(sdt)

        def evaluate(x):
            f, g = jax.value_and_grad(lambda v: value_fn(flat.unravel(v)))(x)
            return scalar(f), freeze(g)

        lr_ = jnp.asarray(lr, sdt)
        f0 = scalar(value_fn(params) if value is None else value)
        g0 = freeze(flat.ravel([jnp.zeros(jnp.shape(p)) if g is None else g for p, g in zip(flat.leaves, grad_leaves)]))

        def iteration(c):
            s, x, f, g, evals, k, _ = c
            k = k + 1
            n_iter = safe_increment(s.n_iter)
            first = n_iter == 1
            # The curvature pair of the last move (torch skips it on the very first iteration).
            y, step = g - s.prev_flat_grad, (s.d * s.t).astype(vdt)
            ys = dot(y, step)
            push = ~first & (ys > _CURVATURE_MIN)
            pos = (s.start + s.num_old) % m  # the next free row, or the oldest when full
            full = s.num_old == m

            def write(buffer, row):
                return jax.lax.dynamic_update_index_in_dim(buffer, jnp.where(push, row, buffer[pos]), pos, 0)

            dirs, stps, ro = write(s.old_dirs, y), write(s.old_stps, step), write(s.ro, 1.0 / ys)
            start = jnp.where(push & full, (s.start + 1) % m, s.start)
            num_old = jnp.where(push & ~full, s.num_old + 1, s.num_old)
            h_diag = jnp.where(first, 1, jnp.where(push, ys / dot(y, y), s.h_diag)).astype(sdt)
            # Two-loop recursion, newest pair first, then oldest first: d = -H g.
            def backward(j, carry):
                q, al = carry
                i = num_old - 1 - j
                row = (start + i) % m
                a = dot(stps[row], q) * ro[row]
                return (q - a * dirs[row]).astype(vdt), al.at[i].set(a)

            q, al = jax.lax.fori_loop(0, num_old, backward, (-g, jnp.zeros((m,), sdt)))

            def forward(i, r):
                row = (start + i) % m
                be = dot(dirs[row], r) * ro[row]
                return (r + (al[i] - be) * stps[row]).astype(vdt)

            d = freeze(jax.lax.fori_loop(0, num_old, forward, (q * h_diag).astype(vdt)))
            t = jnp.where(first, _py_min(jnp.asarray(1.0, sdt), 1.0 / jnp.sum(jnp.abs(g), dtype=sdt)) * lr_, lr_)
            gtd = dot(g, d)
            s = s._replace(old_dirs=dirs, old_stps=stps, ro=ro, start=start, num_old=num_old, h_diag=h_diag, d=d,
                           prev_flat_grad=g, prev_loss=f, n_iter=n_iter)

            descend = ~(gtd > -tolerance_change)  # else torch stops before moving
            if strong_wolfe:
                f_new, g_new, t_new, spent = _strong_wolfe(lambda u: evaluate(x + u * d), dot, t, d, f, g, gtd,
                                                           max_eval - evals, descend)
                t_new = jnp.where(descend, t_new, t)
            else:
                t_new = t
                # torch does not evaluate after the last iteration.
                probe = lambda: (*evaluate(x + t * d), jnp.int32(1))
                f_new, g_new, spent = jax.lax.cond(descend & (k != max_iter), probe, lambda: (f, g, jnp.int32(0)))
            x = jnp.where(descend, x + t_new * d, x).astype(vdt)
            optimal = jnp.max(jnp.abs(g_new), initial=-jnp.inf) <= tolerance_grad
            evals = evals + spent
            stop = ((k == max_iter) | (evals >= max_eval) | optimal
                    | (jnp.max(jnp.abs(d * t_new), initial=-jnp.inf) <= tolerance_change)
                    | (jnp.abs(f_new - f) < tolerance_change))
            saturated = s.func_evals > validation.INT32_MAX - spent  # counts saturate
            func_evals = jnp.where(saturated, validation.INT32_MAX, s.func_evals + spent).astype(jnp.int32)
            s = s._replace(t=t_new.astype(sdt), func_evals=func_evals)
            return s, x, f_new, g_new, evals, k, descend & ~stop

        state = state._replace(func_evals=safe_increment(state.func_evals))
        running = ~(jnp.max(jnp.abs(g0), initial=-jnp.inf) <= tolerance_grad) & (max_iter > 0)
        carry = (state, x0, f0, g0, jnp.int32(1), jnp.int32(0), running)
        state, x, *_ = jax.lax.while_loop(lambda c: c[-1], iteration, carry)
        return flat.unravel(x - x0, like=grad_leaves), state

    return GradientTransformation(init, update)
