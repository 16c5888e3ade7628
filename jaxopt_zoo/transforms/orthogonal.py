"""Orthogonalised updates: the Newton–Schulz iteration and Muon (momentum orthogonalised by Newton–Schulz).

A matrix update :math:`G = U S V^\\top` is replaced by (an approximation of)
its orthogonal polar factor :math:`U V^\\top`, computed with matrix products
only. :func:`scale_by_muon` is ``optax.contrib.scale_by_muon``; its keyword-only
options at the end give ``torch.optim.Muon``'s variant of the same rule
(:func:`jaxopt_zoo.torch.muon`). Higher-rank leaves are orthogonalised as
batches of matrices described by :class:`MuonDimensionNumbers`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, Updates, expects_state, safe_increment, zero_count
from jaxopt_zoo.sharding import (
    AxisName,
    check_partition_specs,
    gathered,
    leaf_specs,
    require_whole_arrays,
    sum_over_shards,
)
from jaxopt_zoo.transforms.layer_sharding import layer_sharded
from jaxopt_zoo.storage import StateDtype, resolve, with_storage

__all__ = [
    "MuonDimensionNumbers",
    "MuonState",
    "NS_COEFFICIENTS",
    "ScaleByMuonState",
    "newton_schulz",
    "require_matrices",
    "scale_by_muon",
]

NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)
"""Keller Jordan's quintic coefficients :math:`(a, b, c)`, PyTorch's and Optax's default."""

NS_COEFFICIENT_PRESETS = {
    "standard": NS_COEFFICIENTS,
    "muon": NS_COEFFICIENTS,  # the name Optax's docstring gives the standard preset (its code knows only "standard")
    # Ahn et al. (Dion), one row per step, the most aggressive first.
    "dion": (
        (4.0848, -6.8946, 2.9270),
        (3.9505, -6.3029, 2.6377),
        (3.7418, -5.5913, 2.3037),
        (2.8769, -3.1427, 1.2046),
        (2.8366, -3.0525, 1.2012),
    ),
}
PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")
MAX_NS_STEPS = 99  # PyTorch refuses 100 or more


class MuonDimensionNumbers(NamedTuple):
    """Which axes of a weight form the matrix Muon orthogonalises: ``x @ W = y`` contracts ``reduction_axis``.

    The reduction axes (fan-in) become the matrix's rows and the output axes
    (fan-out) its columns; every other axis is a batch axis, whose matrices are
    orthogonalised independently. Axes may be negative. The default, ``(0, 1)``,
    is a Flax ``(in, out)`` kernel; PyTorch's ``(out, in)`` weights are ``(1, 0)``.

    Example:
        >>> import jaxopt_zoo as jz
        >>> heads = jz.MuonDimensionNumbers(reduction_axis=0, output_axis=(2,))  # (in, heads, out): one per head
    """

    reduction_axis: Sequence[int] | int = 0
    output_axis: Sequence[int] | int = 1


WeightDimensionNumbers = MuonDimensionNumbers | Any | Callable[[Any], Any] | None
TORCH_LAYOUT = MuonDimensionNumbers(reduction_axis=1, output_axis=0)
"""PyTorch's ``(out, in)`` weight layout."""


def _is_spec(x: Any) -> bool:
    return x is None or isinstance(x, MuonDimensionNumbers)


def _axes(owner: str, shape: tuple[int, ...], spec: MuonDimensionNumbers) -> tuple[tuple[int, ...], ...]:
    """(batch, reduction, output) axes of a leaf of ``shape``, checked; raises naming ``owner``."""
    as_tuple = lambda a: (a,) if isinstance(a, (int, np.integer)) else tuple(a)
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(f"{owner}: a leaf orthogonalised as matrices must have rank >= 2, got shape {shape}.")
    named = as_tuple(spec.reduction_axis) + as_tuple(spec.output_axis)
    if not named or any(not -ndim <= a < ndim for a in named):
        raise ValueError(f"{owner}: {spec} names axes outside a leaf of shape {shape}.")
    reduction = tuple(a % ndim for a in as_tuple(spec.reduction_axis))
    output = tuple(a % ndim for a in as_tuple(spec.output_axis))
    if not reduction or not output or len(set(reduction + output)) != len(reduction + output):
        raise ValueError(f"{owner}: {spec} must name disjoint, non-empty reduction and output axes (shape {shape}).")
    batch = tuple(a for a in range(ndim) if a not in reduction + output)
    return batch, reduction, output


def _fans(owner: str, shape: tuple[int, ...], spec: MuonDimensionNumbers) -> tuple[int, int]:
    _, reduction, output = _axes(owner, shape, spec)
    return math.prod(shape[a] for a in reduction), math.prod(shape[a] for a in output)


def _as_matrices(
    owner: str, x: jax.Array, spec: MuonDimensionNumbers, fn: Callable[[jax.Array], jax.Array]
) -> jax.Array:
    """``fn`` vmapped over ``x`` seen as a (batch, fan-in, fan-out) stack of matrices, and ``x``'s layout restored."""
    batch, reduction, output = _axes(owner, x.shape, spec)
    order = batch + reduction + output
    sizes = lambda axes: tuple(x.shape[a] for a in axes)
    stacked = x.transpose(order).reshape(math.prod(sizes(batch)), math.prod(sizes(reduction)), math.prod(sizes(output)))
    result = jax.vmap(fn)(stacked).reshape(sizes(order))
    return result.transpose(tuple(sorted(range(x.ndim), key=lambda i: order[i])))


# --- the iteration -----------------------------------------------------------------------------------


def _step(x: jax.Array, c: jax.Array, eps: Any) -> jax.Array:
    # X <- a X + (b A + c A A) X with A = X X^T, the products grouped as Optax groups them ((c A) A).
    del eps
    if jnp.finfo(x.dtype).bits < 32:
        return _narrow_step(x, c)
    gram = x @ x.T.conj()
    return c[0] * x + (c[1] * gram + c[2] * gram @ gram) @ x


def _narrow_step(x: jax.Array, c: jax.Array) -> jax.Array:
    # In bfloat16 (float16), as PyTorch's Muon: each product summed in float32 and each fused a P + b Q R (its
    # addmm) rounded once, A = X X^T, B = b A + c A A, X <- a X + B X. Rounding every operation apart (gram,
    # c A, (c A) A, the sum, B X, ...) had about 3 times PyTorch's error (4-6% of the update against 1.2-1.8%).
    # The roundings are reduce_precision in float32: under jit XLA may drop a float32 -> bfloat16 -> float32
    # round trip (its excess precision), not these.
    info = jnp.finfo(x.dtype)
    rounded = lambda v: jax.lax.reduce_precision(v, info.nexp, info.nmant)  # noqa: E731
    xf = rounded(x.astype(jnp.float32))  # (x itself may hold excess precision)
    gram = rounded(xf @ xf.T.conj())
    b = rounded(c[1] * gram + c[2] * (gram @ gram))
    return rounded(c[0] * xf + b @ xf).astype(x.dtype)


def _coefficient_dtype(work_dtype: Any) -> jnp.dtype:
    """The dtype the iteration's coefficients are kept in: float32 at least. In bfloat16, (3.4445, -4.775, 2.0315)
    round to (3.4375, -4.78125, 2.03125), another polynomial (PyTorch's are Python floats)."""
    return jnp.promote_types(work_dtype, jnp.float32)


def _aol_step(x: jax.Array, c: jax.Array, eps: Any) -> jax.Array:
    # Boissin et al.: rescale row i of X by 1 / sqrt(sum_j |A_ij|) (Gershgorin: then ||X||_2 <= 1), then step.
    c = c.astype(x.dtype)
    gram = x @ x.T.conj()
    rescaling = jnp.clip(jnp.abs(gram).sum(axis=-1), min=eps)
    s = jnp.expand_dims(jax.lax.rsqrt(jnp.where(rescaling == 0, 1, rescaling)), -1)  # 0 only for eps = 0: keep 0
    x, gram = x * s, gram * s * s.T
    return c[0] * x + (c[1] * gram + c[2] * gram @ gram) @ x


def _schatten_step(x: jax.Array, c: jax.Array, eps: Any) -> jax.Array:
    # Grishina et al.: divide X by ||X X^T||_F^(1/2), its Schatten-4 norm (>= its spectral norm), then step.
    c = c.astype(x.dtype)
    gram = x @ x.T
    rescaling = jnp.clip(tree.root(jnp.sum(tree.abs_sq(gram))), min=eps)
    s = jax.lax.rsqrt(jnp.where(rescaling == 0, 1, rescaling))
    x, gram = x * s, gram * s**2
    return c[0] * x + (c[1] * gram + c[2] * gram @ gram) @ x


FIRST_STEPS = {"frobenius": _step, "spectral": _step, "aol": _aol_step, "schatten": _schatten_step}


def _normalized(x: jax.Array, eps: Any, eps_floor: bool, order: Any = "fro") -> jax.Array:
    """``x`` divided by its norm plus (or floored at) ``eps``; 0 stays 0. A float16 norm is taken in float32: the
    sum of squares of a float16 matrix whose norm passes 256 overflows, and ``x / inf`` would be a silent 0. A
    bfloat16 norm is summed in float32 and rounded to bfloat16, as PyTorch's (under jit XLA could otherwise keep
    any precision in between)."""
    narrow = jnp.finfo(x.dtype).bits < 32
    wide = x.astype(jnp.float32) if narrow else x
    # The Frobenius norm's root has slope 0 at 0 (tree.root): a gradient through a step of an all-zero matrix is finite.
    norm = tree.root(jnp.sum(tree.abs_sq(wide))) if order == "fro" else jnp.linalg.norm(wide, ord=order)
    if x.dtype == jnp.bfloat16:
        norm = jax.lax.reduce_precision(norm, 8, 7)
    divisor = jnp.maximum(norm, eps) if eps_floor else norm + eps
    return (wide / jnp.where(divisor == 0, 1, divisor)).astype(x.dtype)  # 0 / 0 only for eps = 0: keep 0


def checked_ns_steps(owner: str, ns_steps: Any) -> Any:
    """``ns_steps`` as an int in [0, 99] (a Python integer unrolls the loop: 10**6 steps never finished tracing),
    or a traced integer array as it is (``inject_hyperparams``: the iteration is then a ``fori_loop``)."""
    if not isinstance(ns_steps, jax.core.Tracer):
        return validation.whole_number(owner, "ns_steps", ns_steps, maximum=MAX_NS_STEPS)
    if not jnp.issubdtype(ns_steps.dtype, jnp.integer):
        raise ValueError(f"{owner}: ns_steps must be an integer array, got a {ns_steps.dtype} one; with "
                         f"jz.inject_hyperparams edit it as jnp.asarray(5, jnp.int32).")
    return ns_steps


def _check_iteration_args(owner: str, x: Any, ns_coefficients: Any, ns_steps: Any, eps: Any, dtype: Any) -> Any:
    """The checks of :func:`newton_schulz` and its Gram form; returns ``dtype`` as a floating dtype or ``None``."""
    if jnp.ndim(x) != 2:
        raise ValueError(f"{owner}: x must be a 2-D array, got shape {jnp.shape(x)}.")
    if jnp.iscomplexobj(x):
        raise ValueError(f"{owner}: x must be real, got {jnp.result_type(x)}.")
    ns_steps = checked_ns_steps(owner, ns_steps)
    validation.epsilon(owner, "eps", eps)
    shape = jnp.shape(jnp.asarray(ns_coefficients))  # (the coefficients may be traced)
    if len(shape) not in (1, 2) or shape[-1] != 3:
        raise ValueError(f"{owner}: ns_coefficients must be (a, b, c) or rows of them, shape (3,) or (steps, 3); "
                         f"got shape {shape}.")
    check_bounded_iteration(owner, "ns_coefficients", ns_coefficients, ns_steps)
    return validation.optional_dtype(owner, "dtype", dtype)


def _orthogonalize(x, coefficients, ns_steps, preconditioning, eps, eps_floor):
    """Newton–Schulz on one matrix in its own dtype; ``coefficients`` has shape (3,) or (steps, 3)."""
    tall = x.shape[0] > x.shape[1]  # iterate on the wide orientation, where X X^T is the smaller Gram matrix
    if tall:
        x = x.T
    if preconditioning in ("frobenius", "spectral"):
        x = _normalized(x, eps, eps_floor, "fro" if preconditioning == "frobenius" else 2)
    first = FIRST_STEPS[preconditioning]
    if coefficients.ndim == 2:
        for k in range(coefficients.shape[0]):
            x = (first if k == 0 else _step)(x, coefficients[k], eps)
    elif isinstance(ns_steps, int):  # traced once, unrolled when lowered (as Optax's: tracing 5 steps cost 5x)
        if ns_steps and first is not _step:
            x = first(x, coefficients, eps)
        start = 0 if first is _step else 1
        x = jax.lax.fori_loop(start, max(ns_steps, start), lambda _, z: _step(z, coefficients, eps), x, unroll=True)
    else:  # a traced step count (inject_hyperparams)
        body = lambda i, z: jax.lax.cond(i == 0, first, _step, z, coefficients, eps)
        x = jax.lax.fori_loop(0, ns_steps, body, x)
    return x.T if tall else x


def newton_schulz(
    x: jax.Array,
    ns_coefficients: tuple[Any, Any, Any] = NS_COEFFICIENTS,
    ns_steps: int | jax.Array = 5,
    eps: jax.typing.ArrayLike = 1e-7,
    *,
    dtype: jax.typing.DTypeLike | None = None,
) -> jax.Array:
    """Orthogonalise one matrix with ``ns_steps`` quintic Newton–Schulz steps (as PyTorch's Muon does).

    .. math::

        X_0 = G / \\max(\\|G\\|_F, \\varepsilon), \\qquad
        A_k = X_k X_k^\\top, \\qquad X_{k+1} = a X_k + (b A_k + c A_k^2) X_k,

    on :math:`G^\\top` when :math:`G` has more rows than columns (so :math:`A` is
    the smaller Gram matrix), transposed back at the end. The Frobenius norm
    bounds the spectral norm, so the singular values start in [0, 1], where the
    odd polynomial :math:`a s + b s^3 + c s^5` pushes them towards 1. With the
    default coefficients and 5 steps, those that start above 0.003 end in
    [0.68, 1.21] rather than at 1 (more slope at 0 for fewer steps; smaller ones
    grow by up to :math:`a^5 \\approx 490`); ``(15/8, -10/8, 3/8)`` converges to the
    polar factor :math:`U V^\\top`. :func:`scale_by_muon` runs the same iteration
    (with Optax's :math:`\\|G\\|_F + \\varepsilon` unless ``eps_floor=True``).

    Precision: the iteration runs in ``dtype`` (``None``: ``x``'s dtype, float16
    widened to float32) and the result is cast back to ``x``'s dtype. PyTorch
    always runs it in bfloat16; ``dtype=jnp.bfloat16`` does the same, rounded where
    PyTorch rounds (the norm and each ``addmm`` summed in float32 and rounded once,
    the coefficients in float32), also under ``jit``. Where
    :math:`G = 0` and :math:`\\varepsilon = 0` the result is 0, not PyTorch's 0/0 = NaN.

    Args:
        x: a 2-D array.
        ns_coefficients: :math:`(a, b, c)`; coefficients whose iteration diverges on [0, 1] raise
            (PyTorch's and Optax's updates are then inf or NaN).
        ns_steps: the number of steps, a Python integer up to 99 (the loop is unrolled) or
            an integer array (a ``fori_loop``, as under ``inject_hyperparams``).
        eps: :math:`\\varepsilon \\ge 0`, the smallest norm divided by.
        dtype: the floating dtype the iteration runs in.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> g = jnp.array([[3.0, 0.0], [0.0, 0.1]])
        >>> o = jz.newton_schulz(g, (15 / 8, -10 / 8, 3 / 8), 20)  # the convergent quintic
        >>> jnp.round(o, 4)
        Array([[1., 0.],
               [0., 1.]], dtype=float32)

    References:
        Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024,
        https://kellerjordan.github.io/posts/muon/.
        Bernstein & Newhouse, "Old Optimizer, New Norm: An Anthology", 2024, arXiv:2409.20325.
    """
    dtype = _check_iteration_args("newton_schulz", x, ns_coefficients, ns_steps, eps, dtype)
    work, layout = gathered(tree.widen(x) if dtype is None else x.astype(dtype))
    coefficients = jnp.asarray(ns_coefficients).astype(_coefficient_dtype(work.dtype))
    result = _orthogonalize(work, coefficients, ns_steps, "frobenius", eps, eps_floor=True).astype(x.dtype)
    return result if layout is None else jax.sharding.reshard(result, layout)


# --- checks ------------------------------------------------------------------------------------------


def require_matrices(owner: str, params: Any) -> None:
    """Raise, naming the leaf's path and shape, unless every leaf of ``params`` is a real 2-D array (for
    ``torch.muon``, which has no ``weight_dimension_numbers``)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        where = jax.tree_util.keystr(path) or "<root>"
        _require_matrix(owner, where, leaf, "2-D parameters only (as torch.optim.Muon)",
                        "{'muon': jz.torch.muon(), 'adamw': jz.torch.adamw()}")
        _require_real(owner, where, leaf)


def _require_matrix(owner: str, where: str, leaf: Any, takes: str, transforms: str) -> None:
    if jnp.ndim(leaf) != 2:
        raise ValueError(
            f"{owner}: Muon orthogonalises matrices and takes {takes}, but the leaf at {where} has shape "
            f"{jnp.shape(leaf)}. Give the other parameters another optimizer with jz.partition, e.g. "
            f"jz.partition({transforms}, "
            "lambda params: jax.tree.map(lambda p: 'muon' if p.ndim == 2 else 'adamw', params)), or use jz.muon "
            "(Adam for the other leaves)."
        )


def _require_real(owner: str, where: str, leaf: Any) -> None:
    if jnp.iscomplexobj(leaf):
        raise ValueError(
            f"{owner}: Muon does not support complex parameters (as torch.optim.Muon); the leaf at {where} is "
            f"{jnp.result_type(leaf)}. Give complex matrices another optimizer with jz.partition, or wrap Muon in "
            "jz.split_real_and_imaginary to orthogonalise the real and imaginary parts apart."
        )


def check_options(owner, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn, ns_dtype) -> int | jax.Array:
    """Check torch.optim.Muon's options under ``owner``'s name; return ``ns_steps`` as an int (or as it is when
    traced)."""
    validation.non_negative(owner, "momentum", momentum)
    validation.flag(owner, "nesterov", nesterov)
    if not (isinstance(ns_coefficients, (tuple, list)) and len(ns_coefficients) == 3):
        raise ValueError(f"{owner}: ns_coefficients must be three numbers (a, b, c), got {ns_coefficients!r}.")
    for index, coefficient in enumerate(ns_coefficients):
        validation.real_scalar(owner, f"ns_coefficients[{index}]", coefficient)
    validation.epsilon(owner, "eps", eps)
    if adjust_lr_fn not in ADJUST_LR_FNS:
        raise ValueError(
            f"{owner}: adjust_lr_fn must be None, 'original' or 'match_rms_adamw', got {adjust_lr_fn!r}."
        )
    validation.optional_dtype(owner, "ns_dtype", ns_dtype)
    ns_steps = checked_ns_steps(owner, ns_steps)
    check_bounded_iteration(owner, "ns_coefficients", tuple(ns_coefficients), ns_steps)
    return ns_steps


def check_bounded_iteration(owner: str, name: str, rows: Any, ns_steps: Any) -> None:
    """Refuse coefficients whose iteration diverges. Every preconditioning starts the singular values in [0, 1]
    (a Frobenius, spectral or Schatten-4 norm, or AOL's Gershgorin rescaling, bounds the spectral norm), and each
    step maps a singular value s to |a s + b s^3 + c s^5|: where that passes 1e3 within the steps run, the float
    iteration overflows to inf and the update is NaN (Optax's and PyTorch's too). ``rows``: (a, b, c) repeated
    ``ns_steps`` times, or one row per step (shape (n, 3)). Traced values are not checked."""
    if isinstance(ns_steps, jax.core.Tracer) or any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(rows)):
        return
    table = np.asarray(rows, np.float64)
    steps = list(table) if table.ndim == 2 else [table] * int(ns_steps)
    start = np.geomspace(1e-6, 1.0, 2001)
    s = start
    for k, (a, b, c) in enumerate(steps, 1):
        s = np.abs(a * s + b * s**3 + c * s**5)
        if s.max() > 1e3:
            escaped = start[s > 1e3].min()
            raise ValueError(
                f"{owner}: {name}={rows!r} make the Newton-Schulz iteration diverge: a singular value of "
                f"{escaped:.3g} or more (a rank-one gradient's is 1) reaches {s.max():.3g} after {k} step(s) of "
                f"s <- |a s + b s^3 + c s^5|, and the update is inf or NaN. Use coefficients that keep [0, 1] "
                f"bounded, e.g. the default {NS_COEFFICIENTS}.")


def resolve_ns_coeffs(owner: str, ns_coeffs: Any, ns_steps: Any) -> Any:
    """``ns_coeffs`` checked: three numbers, rows of three (one per step: the last ``ns_steps`` are run), or a
    preset name (``"standard"``, ``"dion"``)."""
    if isinstance(ns_coeffs, str):
        if ns_coeffs not in NS_COEFFICIENT_PRESETS:
            raise ValueError(
                f"{owner}: ns_coeffs must be one of {sorted(NS_COEFFICIENT_PRESETS)} or numbers, got {ns_coeffs!r}."
            )
        ns_coeffs = NS_COEFFICIENT_PRESETS[ns_coeffs]
    try:
        shape = jnp.shape(jnp.asarray(ns_coeffs))
    except (TypeError, ValueError):
        shape = None
    if shape is None or len(shape) not in (1, 2) or shape[-1] != 3 or (len(shape) == 2 and shape[0] == 0):
        raise ValueError(
            f"{owner}: ns_coeffs must be three numbers (a, b, c) or rows of them (n, 3), got {ns_coeffs!r}."
        )
    rows = [ns_coeffs] if len(shape) == 1 else list(ns_coeffs)
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            validation.real_scalar(owner, f"ns_coeffs[{i}][{j}]" if len(shape) == 2 else f"ns_coeffs[{j}]", value)
    if len(shape) == 2:
        if isinstance(ns_steps, jax.core.Tracer):
            raise ValueError(f"{owner}: with a row of ns_coeffs per step, ns_steps must be a Python integer.")
        run = tuple(rows[len(rows) - min(ns_steps, len(rows)):])
        check_bounded_iteration(owner, "ns_coeffs", run, ns_steps)
        return run
    check_bounded_iteration(owner, "ns_coeffs", ns_coeffs, ns_steps)
    return ns_coeffs


# --- Muon --------------------------------------------------------------------------------------------


class MuonState(NamedTuple):
    """Muon's step count, momentum and Newton–Schulz coefficients (shape (3,) or (steps, 3)), as Optax's.

    Without bias correction (PyTorch's rule) ``count`` and ``ns_coeffs`` are ``None``, so that the state
    holds only PyTorch's buffer (a ``count`` appears where a stochastic storage draws from it).
    """

    count: jax.Array | None
    mu: Updates
    ns_coeffs: jax.Array | None

    @property
    def momentum_buffer(self) -> Updates:
        """``mu`` under ``torch.optim.Muon``'s name."""
        return self.mu


ScaleByMuonState = MuonState
"""The name this library gave Muon's state before it took Optax's (``MuonState``)."""


def _shape_factor(owner: str, shape: tuple[int, ...], spec: MuonDimensionNumbers, shape_scale: Any) -> jax.Array:
    # Optax's scale_by_shape: sqrt(max(1, fan_out / fan_in)) (width), or consistent_rms * sqrt(max(fan_in, fan_out)).
    fan_in, fan_out = _fans(owner, shape, spec)
    if isinstance(shape_scale, str):
        return jnp.sqrt(jnp.maximum(1, fan_out / max(fan_in, 1)))  # fan_in 0: a zero-size matrix, no update
    return jnp.sqrt(jnp.maximum(fan_in, fan_out)) * shape_scale


def _specs_for(owner: str, weight_dimension_numbers: WeightDimensionNumbers, tree_: Any) -> Any:
    """One :class:`MuonDimensionNumbers` (or ``None``: a plain matrix) per leaf of ``tree_``, from a spec, a tree
    of them (or a prefix of one), or a callable of ``tree_`` returning one."""
    specs = (weight_dimension_numbers(tree_) if tree.is_function_of_params(weight_dimension_numbers)
             else weight_dimension_numbers)
    try:
        return jax.tree.map(lambda s, sub: jax.tree.map(lambda _: s, sub), specs, tree_, is_leaf=_is_spec)
    except ValueError as error:
        raise ValueError(
            f"{owner}: weight_dimension_numbers must have the params' structure (or a prefix of it): {error}"
        ) from None


def _check_leaves(owner: str, params: Any, specs: Any) -> None:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for (path, leaf), spec in zip(leaves, jax.tree.leaves(specs, is_leaf=_is_spec)):
        where = jax.tree_util.keystr(path) or "<root>"
        if spec is None:
            _require_matrix(owner, where, leaf, "2-D parameters unless weight_dimension_numbers describes a "
                            "leaf's matrices (jz.MuonDimensionNumbers)",
                            f"{{'muon': <this {owner}>, 'adamw': jz.adamw(1e-3)}}")
        else:
            try:
                _axes(owner, jnp.shape(leaf), spec)
            except ValueError as error:
                raise ValueError(f"{owner}: the leaf at {where}: {str(error).removeprefix(owner + ': ')}") from None
        _require_real(owner, where, leaf)


NS_METHODS = ("plain", "gram")


def _orthogonalizer(owner: str, ns_method: str, preconditioning: str, eps_floor: bool) -> Callable[..., jax.Array]:
    """``(x, coefficients, ns_steps, eps) -> orthogonalised x`` for ``ns_method``, checked."""
    if ns_method not in NS_METHODS:
        raise ValueError(f"{owner}: ns_method must be one of {', '.join(map(repr, NS_METHODS))}, got {ns_method!r}.")
    if ns_method == "plain":
        return lambda x, rows, steps, eps: _orthogonalize(x, rows, steps, preconditioning, eps, eps_floor)
    if preconditioning != "frobenius":
        raise ValueError(f"{owner}: ns_method='gram' runs the Frobenius-normalised iteration; it cannot be combined "
                         f"with preconditioning={preconditioning!r}.")
    from jaxopt_zoo.transforms.gram_newton_schulz import _gram_orthogonalize  # that module builds on this one

    return lambda x, rows, steps, eps: _gram_orthogonalize(x, rows, steps, eps, eps_floor)


def scale_by_muon(
    ns_coeffs: Any = NS_COEFFICIENTS,
    ns_steps: int | jax.Array = 5,
    beta: jax.typing.ArrayLike = 0.95,
    eps: jax.typing.ArrayLike = 1e-8,
    mu_dtype: StateDtype = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: str = "frobenius",
    weight_dimension_numbers: WeightDimensionNumbers = None,
    bias_correction: bool = True,
    eps_floor: bool = False,
    fan_out_first: bool = False,
    shape_scale: str | jax.typing.ArrayLike | None = None,
    ns_dtype: jax.typing.DTypeLike | None = None,
    ns_method: str = "plain",
    layer_sharding: bool = False,
    axis_name: AxisName = None,
    partition_specs: Any = None,
) -> GradientTransformation:
    """Muon's direction (Jordan et al. 2024): momentum orthogonalised by Newton–Schulz, as Optax computes it.

    .. math::

        m_t &= \\beta m_{t-1} + (1 - \\beta) g_t, \\ m_0 = 0,

        \\hat m_t &= \\frac{\\beta m_t}{1 - \\beta^{t+1}} + \\frac{(1 - \\beta) g_t}{1 - \\beta^t}
        \\text{ (nesterov) or } \\frac{m_t}{1 - \\beta^t},

        u_t &= \\mathrm{NS}(\\hat m_t)
        \\; [\\times \\langle \\hat m_t, \\mathrm{NS}(\\hat m_t) \\rangle \\text{ if adaptive}]

    with :math:`\\mathrm{NS}` ``ns_steps`` Newton–Schulz steps
    :math:`X \\leftarrow a X + (b A + c A^2) X`, :math:`A = X X^\\top`, on the
    wide orientation of the matrix, started from (``preconditioning``)
    :math:`X_0 = \\hat m / (\\|\\hat m\\|_F + \\varepsilon)` (``"frobenius"``),
    :math:`\\hat m / (\\|\\hat m\\|_2 + \\varepsilon)` (``"spectral"``), or
    :math:`\\hat m` with a rescaled first step: rows by
    :math:`1/\\sqrt{\\max(\\sum_j |A_{ij}|, \\varepsilon)}` (``"aol"``, Boissin et al.
    2025) or all by :math:`1/\\sqrt{\\max(\\|A\\|_F, \\varepsilon)}` (``"schatten"``,
    Grishina et al. 2025). ``ns_coeffs`` :math:`(a, b, c)` may be rows of them,
    one per step (``"dion"``: Ahn et al. 2025). ``adaptive`` scales by the dual
    norm :math:`\\langle \\hat m, \\mathrm{NS}(\\hat m) \\rangle \\approx \\|\\hat m\\|_*`
    (Bernstein & Newhouse 2024), summed over the whole leaf. A leaf of higher rank
    is a batch of matrices given by ``weight_dimension_numbers``.

    The keyword-only options after ``weight_dimension_numbers`` are additions that
    give ``torch.optim.Muon``'s rule (see :func:`jaxopt_zoo.torch.muon`):
    ``bias_correction=False`` drops the :math:`1 - \\beta^t` divisors (the two
    differ only in the Nesterov blend's first steps; a scale is normalised away)
    and with them the state's ``count`` and ``ns_coeffs`` (PyTorch keeps only the buffer),
    ``eps_floor=True`` divides by :math:`\\max(\\|\\hat m\\|, \\varepsilon)`
    (PyTorch's clamp) instead of adding :math:`\\varepsilon`, ``fan_out_first=True``
    hands each matrix to the iteration as (fan-out, fan-in), PyTorch's (out, in)
    weight, rather than Optax's (fan-in, fan-out) (the iteration runs on the wide
    orientation either way: only square matrices round differently), ``shape_scale``
    multiplies by Optax's ``muon`` shape factor (``"width"``:
    :math:`\\sqrt{\\max(1, \\text{fan-out}/\\text{fan-in})}`; a number :math:`r`:
    :math:`r \\sqrt{\\max(\\text{fan-in}, \\text{fan-out})}`, Moonshot's consistent RMS,
    ``optax.contrib.muon``'s ``consistent_rms``), and ``ns_dtype`` runs the
    iteration in another dtype (``jnp.bfloat16``: PyTorch's precision).
    ``ns_method="gram"`` runs the same polynomial as Gram Newton–Schulz
    (:func:`jaxopt_zoo.gram_newton_schulz`, with its default restarts) on the
    matrices whose long side is at least 1.5 times the short one, where it needs
    fewer flops (2.1 times fewer at 256 x 4096: measured 2.2 times faster on CPU,
    ``benchmarks/gram_ns.py``), and the plain iteration on the others; the
    results differ from the plain iteration's by rounding only (float64: 1e-15;
    float32: a few 1e-7). It needs ``preconditioning="frobenius"``.

    Every leaf must be a real 2-D array unless ``weight_dimension_numbers`` names
    its matrix axes (``init`` raises otherwise, naming the leaf). ``None`` updates
    keep their momentum. The norms and products span whole matrices, so inside
    ``shard_map`` the leaves must be whole (replicated): a sharded leaf raises
    (under ``jax.jit`` with sharded arrays the partitioner computes it exactly,
    and on Explicit mesh axes each sharded leaf is gathered for its iteration and
    its update laid out like it again), unless ``layer_sharding=True``.

    Layer sharding (``layer_sharding=True``, Megatron-LM's layer-wise distributed
    Muon): once ``weight_dimension_numbers`` has turned the leaves into stacks of
    matrices, each matrix gets a home device; matrices of one shape (tall ones
    transposed to wide first) and layout are stacked, the stack padded with zero
    matrices (whose image is 0) to a multiple of the devices, one all-to-all per split
    matrix axis moves every matrix's blocks to its home, the whole iteration runs there
    (batched, no collective inside it), and the reverse exchange brings the results
    back. Each device runs the iteration on ceil(count / N) matrices of each shape
    (1/N of the products when the counts are multiples of N: one program runs on every
    device, so shapes cannot be dealt out unevenly as Megatron does). The rule is the
    plain path's (float64: equal to 1e-12). In float32 the numbers are often bit for bit
    those of ``layer_sharding=True`` on one device (the iteration is fenced with
    ``optimization_barrier``, tall matrices are transposed before batching), but not
    always: XLA may fuse the first norm with the exchange and sum in another order,
    a few ulp that the iteration amplifies (measured up to 2e-6 of the largest entry;
    the plain path differs from itself compiled one matrix per program by as much).
    ``adaptive``'s sum over a split leaf is a ``psum`` of block sums. Where:

    * under ``jax.jit`` on Explicit mesh axes: the layouts are read from the arrays'
      types and the exchange is an internal ``shard_map``;
    * under ``jax.jit`` on Auto mesh axes (the mesh is read from the arrays' types, or
      ``jax.set_mesh``): the layouts are not known while tracing, so give
      ``partition_specs`` (the params' specs) for the all-to-all exchange; without
      them each stack is constrained to be split over every mesh axis and the
      partitioner moves it (with jax 0.10.2 it gathers it whole: several times the bytes,
      still with no collective inside the iteration);
    * inside ``shard_map`` the leaves are local blocks: pass ``axis_name`` (the axes
      to spread the work over, including every axis a leaf is split along) and
      ``partition_specs`` (the ``in_specs`` of the params); a split leaf without
      ``axis_name`` raises. Matrices split along their stack (batch) axes are
      already spread and stay where they are; replicated ones are shared out among
      their replicas and gathered back.
    * without a mesh, the stacks are orthogonalised on the one device.

    A split axis merged behind another into the fan-in, fan-out or batch axis (a
    ``weight_dimension_numbers`` naming several) is gathered first.

    Differences from ``optax.contrib.scale_by_muon`` (the same numbers otherwise, bit
    for bit in float32 under ``jit``): ``weight_dimension_numbers=None`` means
    "every leaf is a matrix", as Optax documents (Optax's code fails on a tree of
    params then), and a single :class:`MuonDimensionNumbers` or a prefix tree applies
    to every leaf below it; ``ns_coeffs`` may be a preset name here too; with rows
    of coefficients the last ``ns_steps`` rows are run (Optax's slice), where Optax
    raises "not enough coeffs" when there are more rows than steps; ``"aol"`` and
    ``"schatten"`` floor their rescaling at the ``eps`` given (Optax always uses
    1e-8, the default); with ``eps=0`` a zero update stays 0 (Optax: NaN); leaves
    that cannot be orthogonalised and complex leaves raise at ``init`` (Optax
    raises at ``update``, and runs complex matrices); ``beta`` must be in [0, 1)
    (with ``bias_correction``) and the other options are checked when built;
    ``mu_dtype`` also takes a storage (:mod:`jaxopt_zoo.storage`); float16
    momentum is kept in float32 (:func:`jaxopt_zoo.tree.moment_dtype`);
    ``ns_steps`` is at most 99, as in PyTorch (Optax has no bound; the loop is
    unrolled, and 1000 steps take over 20 s to trace);
    ``ns_method`` and ``layer_sharding`` are additions (Optax orthogonalises each block
    alone inside ``shard_map``).
    As in Optax, a matrix whose sum of squares overflows (a momentum entry above ~1.8e19 in float32) is divided by
    an infinite norm: its step is 0 while the momentum holds such an entry (a norm that avoids it, scaled, cost
    3% of the step on a CPU).

    Args:
        ns_coeffs: :math:`(a, b, c)`, rows of them (one per step), or ``"standard"``/``"dion"``;
            coefficients whose iteration diverges on [0, 1] raise (Optax's updates are then inf or NaN).
        ns_steps: Newton–Schulz steps, an integer in [0, 99] (with rows: the last ``ns_steps`` rows run).
        beta: :math:`\\beta`, the momentum's decay.
        eps: :math:`\\varepsilon \\ge 0`.
        mu_dtype: storage of the momentum: a storage (see :mod:`jaxopt_zoo.storage`).
        nesterov: blend the gradient into the momentum as above.
        adaptive: scale by the dual norm as above.
        preconditioning: ``"frobenius"``, ``"spectral"``, ``"aol"`` or ``"schatten"``.
        weight_dimension_numbers: a :class:`MuonDimensionNumbers`, a tree of them
            (``None`` leaves: plain matrices) with the params' structure or a prefix
            of it, or a callable of the updates returning one.
        bias_correction: divide by :math:`1 - \\beta^t` (Optax); ``False``: PyTorch.
        eps_floor: divide by :math:`\\max(\\|X\\|, \\varepsilon)` (PyTorch) instead of :math:`\\|X\\| + \\varepsilon`.
        fan_out_first: iterate on each matrix as (fan-out, fan-in) (PyTorch) instead of (fan-in, fan-out).
        shape_scale: ``None`` (no factor), ``"width"``, or a consistent-RMS factor :math:`r \\ge 0`.
        ns_dtype: the floating dtype the iteration runs in (``None``: the momentum's).
        ns_method: ``"plain"`` (Newton–Schulz on the matrix) or ``"gram"`` (on its Gram matrix, where cheaper).
        layer_sharding: orthogonalise each matrix whole on one device, about 1/N of them per device (above).
        axis_name: with ``layer_sharding`` inside ``shard_map``: the mesh axes to spread the matrices over
            (``None``: the leaves must be whole).
        partition_specs: with ``layer_sharding``: the ``PartitionSpec`` of each update leaf (a tree or a prefix
            of one, e.g. the params' ``in_specs``); needed inside ``shard_map``, and under ``jit`` on Auto mesh
            axes for an all-to-all exchange; read from the arrays on Explicit axes.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.chain(jz.scale_by_muon(), jz.scale_by_learning_rate(0.02))
        >>> w = jnp.ones((2, 3))
        >>> updates, state = tx.update(jnp.array([[1.0, 0, 0], [0, 2, 0]]), tx.init(w))
        >>> updates.shape, state[0].mu.shape, int(state[0].count)
        ((2, 3), (2, 3), 1)
        >>> # Each matrix whole on one device; on sharded params, inside shard_map, pass axis_name and the specs:
        >>> layered = jz.scale_by_muon(layer_sharding=True)  # e.g. axis_name="x", partition_specs=P("x")
        >>> same, _ = layered.update(jnp.array([[1.0, 0, 0], [0, 2, 0]]), layered.init(w))
        >>> bool(jnp.allclose(-0.02 * same, updates))
        True

    References:
        Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024,
        https://kellerjordan.github.io/posts/muon/.
        Bernstein & Newhouse, "Old Optimizer, New Norm: An Anthology", 2024, arXiv:2409.20325.
        Liu et al., "Muon is Scalable for LLM Training", 2025, arXiv:2502.16982.
        Boissin et al., "Turbo-Muon: Accelerating Orthogonality-Based Optimization with Pre-Conditioning",
        2025, arXiv:2512.04632.
        Grishina et al., "Accelerating Newton-Schulz Iteration for Orthogonalization via Chebyshev-type
        Polynomials", 2025, arXiv:2506.10935.
        Ahn et al., "Dion: Distributed Orthonormalized Updates", 2025, arXiv:2504.05295.
        Shoeybi et al., "Megatron-LM", https://github.com/NVIDIA/Megatron-LM (its layer-wise distributed
        Muon: each matrix orthogonalised whole on one rank).
    """
    owner = "scale_by_muon"
    for name, value in (("nesterov", nesterov), ("adaptive", adaptive), ("bias_correction", bias_correction),
                        ("eps_floor", eps_floor), ("fan_out_first", fan_out_first)):
        validation.flag(owner, name, value)
    ns_steps = checked_ns_steps(owner, ns_steps)
    ns_coeffs = resolve_ns_coeffs(owner, ns_coeffs, ns_steps)
    if bias_correction:  # 1 - beta^t divides
        validation.decay_rate(owner, "beta", beta)
    else:  # PyTorch accepts any momentum >= 0
        validation.non_negative(owner, "beta", beta)
    validation.epsilon(owner, "eps", eps)
    if preconditioning not in PRECONDITIONINGS:
        raise ValueError(f"{owner}: preconditioning must be one of {', '.join(map(repr, PRECONDITIONINGS))}, "
                         f"got {preconditioning!r}.")
    if shape_scale is not None and not (isinstance(shape_scale, str) and shape_scale == "width"):
        if isinstance(shape_scale, str):
            raise ValueError(f"{owner}: shape_scale must be None, 'width' or a number, got {shape_scale!r}.")
        validation.non_negative(owner, "shape_scale", shape_scale)
    ns_dtype = validation.optional_dtype(owner, "ns_dtype", ns_dtype)
    orthogonalize = _orthogonalizer(owner, ns_method, preconditioning, eps_floor)
    if fan_out_first:  # PyTorch's (out, in) matrices: the same result, rounded as PyTorch's on square ones
        as_given = orthogonalize
        orthogonalize = lambda x, rows, steps, eps: as_given(x.T, rows, steps, eps).T  # noqa: E731
    mu_dtype = resolve(owner, "mu_dtype", mu_dtype)
    validation.flag(owner, "layer_sharding", layer_sharding)
    axis_name = validation.axis_name(owner, axis_name)
    check_partition_specs(owner, partition_specs)
    if not layer_sharding and (axis_name is not None or partition_specs is not None):
        raise ValueError(f"{owner}: axis_name and partition_specs are options of layer_sharding=True.")

    def init(params):
        _check_leaves(owner, params, _specs_for(owner, weight_dimension_numbers, params))
        if not bias_correction:
            return MuonState(None, tree.moments_like(params), None)
        return MuonState(zero_count(), tree.moments_like(params), jnp.asarray(ns_coeffs))

    def direction(m_hat, spec, coefficients):
        spec = MuonDimensionNumbers() if spec is None else spec
        work, layout = gathered(m_hat if ns_dtype is None else m_hat.astype(ns_dtype))
        rows = coefficients.astype(_coefficient_dtype(work.dtype))
        matrix_rule = lambda x: orthogonalize(x, rows, ns_steps, eps)
        u = _as_matrices(owner, work, spec, matrix_rule).astype(m_hat.dtype)
        u = u if layout is None else jax.sharding.reshard(u, layout)
        if adaptive:
            u = jnp.sum(m_hat.conj() * u) * u
        if shape_scale is not None:
            u = _shape_factor(owner, m_hat.shape, spec, shape_scale) * u
        return u

    def layer_sharded_directions(mu_hat, specs, coefficients):
        # Every matrix orthogonalised whole on its home device; then, per leaf, the adaptive and shape factors.
        leaves, structure = jax.tree.flatten(mu_hat, is_leaf=tree.is_none)
        where = [i for i, m in enumerate(leaves) if m is not None]
        if not where:
            return mu_hat
        dims = [MuonDimensionNumbers() if s is None else s for s in structure.flatten_up_to(specs)]
        layouts = leaf_specs(owner, partition_specs, mu_hat)
        work = [leaves[i] if ns_dtype is None else leaves[i].astype(ns_dtype) for i in where]
        operands = {k: v for k, v in (("rows", coefficients), ("steps", ns_steps), ("eps", eps))
                    if isinstance(v, jax.Array)}  # (traced ones: inject_hyperparams)
        rule = lambda x, o: orthogonalize(x, o["rows"].astype(_coefficient_dtype(x.dtype)), o.get("steps", ns_steps),
                                          o.get("eps", eps))
        matrix_axes = [_axes(owner, leaves[i].shape, dims[i]) for i in where]
        us, shapes = layer_sharded(owner, rule, operands, work, matrix_axes,
                                   None if layouts is None else [layouts[i] for i in where], axis_name)
        for i, u, shape in zip(where, us, shapes):
            m_hat, u = leaves[i], u.astype(leaves[i].dtype)
            if adaptive:
                u = sum_over_shards(owner, [(jnp.sum(m_hat.conj() * u), m_hat)], axis_name) * u
            leaves[i] = u if shape_scale is None else _shape_factor(owner, shape, dims[i], shape_scale) * u
        return structure.unflatten(leaves)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.mu, "the momentum (state.mu)")
        if not layer_sharding:
            require_whole_arrays(owner, updates, remedy=(
                "Pass layer_sharding=True with axis_name= (the shard_map axes) and partition_specs= (the updates' "
                "specs), which gathers each matrix on one device; or call it under jax.jit with sharded arrays."),
                operation="its orthogonalization would see one shard only")
        specs = _specs_for(owner, weight_dimension_numbers, updates)
        count = safe_increment(state.count) if bias_correction else state.count
        mu = tree.update_moment(updates, state.mu, beta, 1)
        if bias_correction:
            mu_hat = tree.bias_correction(mu, beta, safe_increment(count) if nesterov else count)
            grads = tree.bias_correction(updates, beta, count)
        else:
            mu_hat, grads = mu, updates
        if nesterov:
            mu_hat = tree.map_updates(lambda g, m: beta * m + (1 - beta) * tree.widen(g), grads, mu_hat)
        coefficients = jnp.asarray(ns_coeffs) if state.ns_coeffs is None else state.ns_coeffs
        if layer_sharding:
            mu_hat = tree.map_updates(lambda g, m: m, updates, mu_hat)
            new_updates = layer_sharded_directions(mu_hat, specs, coefficients)
        else:
            new_updates = tree.map_updates(lambda g, m, s: direction(m, s, coefficients), updates, mu_hat, specs)
        return new_updates, MuonState(count, mu, state.ns_coeffs)

    tx = with_storage(GradientTransformation(init, update), signed={"mu": mu_dtype})
    return expects_state(owner, tx, MuonState)
