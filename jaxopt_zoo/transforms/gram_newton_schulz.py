"""Gram Newton–Schulz: Muon's quintic Newton–Schulz iteration run on the Gram matrix of a rectangular matrix.

Each quintic step multiplies :math:`X` on the left by a polynomial of its own
Gram matrix :math:`X X^\\top`, so for a wide :math:`m \\times n` matrix the
whole iteration can be carried by :math:`m \\times m` matrices and applied to
:math:`X` once at the end (Zhang, Amsel, Chen & Dao 2026). The result is the
polynomial of :func:`jaxopt_zoo.newton_schulz`, with fewer flops when
:math:`n > 1.5\\,m`. :func:`gram_newton_schulz` is the function;
``_gram_orthogonalize`` is the drop-in for Muon's Frobenius-normalised iteration.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree
from jaxopt_zoo.sharding import gathered
from jaxopt_zoo.transforms.orthogonal import (
    NS_COEFFICIENTS, _check_iteration_args, _coefficient_dtype, _normalized, _orthogonalize,
)

__all__ = ["gram_newton_schulz"]

RESTART_PERIOD = 3
"""By default the iteration restarts before steps 3, 6, 9, ... (see :func:`gram_newton_schulz`)."""

MIN_ASPECT_RATIO = 1.5
"""``_gram_orthogonalize`` runs the Gram iteration when the long side is at least this multiple of the short
one: there it needs no more flops than the plain iteration (for any step count and restarts, see
:func:`gram_newton_schulz`)."""


def _symmetric(s: jax.Array) -> jax.Array:
    # A product that is symmetric in exact arithmetic (polynomials of one symmetric matrix commute), made
    # symmetric in floating point too, as the reference's symmetric GEMM kernels make it.
    return 0.5 * (s + s.T)


def _check_restarts(owner: str, restarts: Sequence[int] | None) -> tuple[int, ...] | None:
    if restarts is None:
        return None
    try:
        positions = tuple(restarts)
    except TypeError:
        positions = None
    if positions is None or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in positions):
        raise ValueError(f"{owner}: restarts must be None or step indices >= 1 (Python ints), got {restarts!r}.")
    return positions


def _restarts_before(k: int, restarts: tuple[int, ...] | None) -> bool:
    return k % RESTART_PERIOD == 0 if restarts is None else k in restarts


def _unrolled(x: jax.Array, rows: list[jax.Array], restarts: tuple[int, ...] | None) -> jax.Array:
    # R = X X^T, Q = I; a step: P = a I + b R + c R^2, Q <- Q P, R <- P R P; a restart: X <- Q X, R <- X X^T, Q <- I.
    eye = jnp.eye(x.shape[0], dtype=x.dtype)
    gram, q = x @ x.T, None  # q None: the identity, never multiplied
    for k, c in enumerate(rows):
        if k > 0 and _restarts_before(k, restarts):
            x = q @ x
            gram, q = x @ x.T, None
        p = (c[0] * eye + c[1] * gram + c[2] * gram @ gram).astype(x.dtype)
        q = p if q is None else _symmetric(q @ p)
        if k + 1 < len(rows) and not _restarts_before(k + 1, restarts):  # the last R of a stretch is never read
            gram = _symmetric(p @ (gram @ p))
    return x if q is None else q @ x


def _looped(x: jax.Array, c: jax.Array, ns_steps: jax.Array, restarts: tuple[int, ...] | None) -> jax.Array:
    # The same steps in a fori_loop over a traced step count (inject_hyperparams); Q starts as I.
    eye = jnp.eye(x.shape[0], dtype=x.dtype)

    def restart(x, q, gram):
        x = q @ x
        return x, eye, x @ x.T

    def body(k, carry):
        if restarts is None:
            due = (k > 0) & (k % RESTART_PERIOD == 0)
        else:
            due = jnp.isin(k, jnp.asarray(restarts, dtype=jnp.int32)) if restarts else jnp.asarray(False)
        x, q, gram = jax.lax.cond(due, restart, lambda *carry: carry, *carry)
        p = (c[0] * eye + c[1] * gram + c[2] * gram @ gram).astype(x.dtype)
        return x, _symmetric(q @ p), _symmetric(p @ (gram @ p))

    x, q, _ = jax.lax.fori_loop(0, ns_steps, body, (x, eye, x @ x.T))
    return q @ x


def _gram_orthogonalize(
    x: jax.Array,
    coefficients: jax.Array,
    ns_steps: int | jax.Array,
    eps: Any,
    eps_floor: bool,
    *,
    restarts: Sequence[int] | None = None,
    min_aspect_ratio: float = MIN_ASPECT_RATIO,
) -> jax.Array:
    """``orthogonal._orthogonalize(x, coefficients, ns_steps, "frobenius", eps, eps_floor)`` by the Gram iteration
    where it is cheaper (long side >= ``min_aspect_ratio`` times the short one; 1: always), by that function
    otherwise; ``coefficients`` has shape (3,) or (steps, 3)."""
    restarts = _check_restarts("gram_newton_schulz", restarts)
    if max(x.shape) < min_aspect_ratio * min(x.shape):
        return _orthogonalize(x, coefficients, ns_steps, "frobenius", eps, eps_floor)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = _normalized(x, eps, eps_floor)
    coefficients = coefficients.astype(_coefficient_dtype(x.dtype))  # (each P is cast to x's dtype once)
    if coefficients.ndim == 2:
        x = _unrolled(x, [coefficients[k] for k in range(coefficients.shape[0])], restarts)
    elif isinstance(ns_steps, int):
        x = _unrolled(x, [coefficients] * ns_steps, restarts)
    else:
        x = _looped(x, coefficients, ns_steps, restarts)
    return x.T if tall else x


def gram_newton_schulz(
    x: jax.Array,
    ns_coefficients: Any = NS_COEFFICIENTS,
    ns_steps: int | jax.Array = 5,
    eps: jax.typing.ArrayLike = 1e-7,
    *,
    dtype: jax.typing.DTypeLike | None = None,
    restarts: Sequence[int] | None = None,
) -> jax.Array:
    """:func:`jaxopt_zoo.newton_schulz`'s quintic iteration, run on the Gram matrix (Gram Newton–Schulz).

    For :math:`X_0 = G / \\max(\\|G\\|_F, \\varepsilon)` with :math:`m \\le n`
    (:math:`G^\\top` when :math:`G` is tall, transposed back at the end), the plain
    step :math:`X_{k+1} = P_k X_k`, :math:`P_k = a_k I + b_k A_k + c_k A_k^2`,
    :math:`A_k = X_k X_k^\\top`, only multiplies :math:`X_0` on the left by
    polynomials of :math:`R_0 = X_0 X_0^\\top`. With :math:`X_k = Q_k X_0`:

    .. math::

        Q_0 &= I, \\qquad P_k = a_k I + b_k R_k + c_k R_k^2,

        Q_{k+1} &= Q_k P_k, \\qquad R_{k+1} = P_k R_k P_k \\;(= X_{k+1} X_{k+1}^\\top),

        &\\text{result } Q_K X_0,

    all on :math:`m \\times m` matrices that commute, so :math:`Q_k` and :math:`R_k`
    are symmetric (and are symmetrised after each product). In exact arithmetic the
    result is :func:`jaxopt_zoo.newton_schulz`'s, for the same coefficients (``(3,)``
    or one row per step) and steps.

    Cost: per step the plain iteration does :math:`4 m^2 n + 2 m^3` flops
    (:math:`X X^\\top`, :math:`A^2`, :math:`B X`); this one does :math:`2 m^2 n` for
    :math:`R_0`, :math:`2 m^2 n` for :math:`Q_K X_0`, :math:`4 m^2 n` per restart and
    :math:`8 m^3` per step (less :math:`6 m^3` per stretch between restarts). It is
    cheaper exactly when :math:`n > 1.5\\,m` whatever the number of steps and
    restarts, e.g. with 5 steps and one restart :math:`8 m^2 n + 28 m^3` against
    :math:`20 m^2 n + 10 m^3`: 2.1 times fewer flops for :math:`n = 16 m`, 1.2 times
    more for a square matrix (where :func:`jaxopt_zoo.newton_schulz` is the one to use).

    Accuracy and restarts: :math:`Q_k` grows by up to :math:`|a|` per step on the
    directions of small singular values, and rounding leaves eigenvalues of
    :math:`R` slightly negative, which the polynomial then amplifies (by
    :math:`\\approx a^2` per step) where the plain iteration keeps
    :math:`A = X X^\\top \\succeq 0` by construction. So the iteration *restarts*
    before the steps in ``restarts`` (:math:`X \\leftarrow Q X`,
    :math:`R \\leftarrow X X^\\top`, :math:`Q \\leftarrow I`), by default before
    steps 3, 6, 9, ... (one restart in 5 steps, where the reference's restart search
    puts it for the default coefficients); positions at or past the last step do
    nothing. Measured in float32 (``benchmarks/gram_ns.py``, singular values over
    four decades): 5 default steps are within 1.4e-6 of the same steps in float64
    (the plain iteration: 9e-7), and 30 steps of the convergent coefficients end
    2 to 3.5 times farther from the exact polar factor than the plain iteration
    (6e-4 against 3e-4 in spectral norm for 256 x 4096): the rounding of
    :math:`Q` is amplified on the smallest singular directions. With many steps
    and no restarts it diverges.

    Precision: the iteration runs in ``dtype`` (``None``: ``x``'s dtype, float16
    widened to float32) and the result is cast back to ``x``'s dtype. Where
    :math:`G = 0` and :math:`\\varepsilon = 0` the result is 0.

    Differences from the reference (Dao-AILab's ``gram-newton-schulz``, ``GramNewtonSchulz``):
    it normalises by :math:`\\|G\\|_F + \\varepsilon` in float32 and always iterates
    in float16 (here: ``newton_schulz``'s :math:`\\max(\\|G\\|_F, \\varepsilon)` and
    ``dtype``); its default is one restart before step 2 (0-based, for its Polar
    Express coefficients) or positions found by its restart search for given
    coefficients (here: every 3 steps, what that search finds for the default
    coefficients; pass ``restarts=(2,)`` for its default); square matrices fall back
    to the plain iteration there (here: only in ``_gram_orthogonalize``, from
    :data:`MIN_ASPECT_RATIO`); it forms :math:`Q P` as :math:`Q Z + a Q` and
    :math:`P R P` as :math:`Z (R Z + a R) + a (R Z + a R)` with symmetric GEMM
    kernels (here: the same products with :math:`P = a I + Z` formed, and
    symmetrised).

    Args:
        x: a real 2-D array.
        ns_coefficients: :math:`(a, b, c)`, or rows of them (one per step; ``ns_steps`` is then ignored);
            coefficients whose iteration diverges on [0, 1] raise.
        ns_steps: the number of steps, a Python integer up to 99 (the loop is unrolled) or
            an integer array (a ``fori_loop``, as under ``inject_hyperparams``).
        eps: :math:`\\varepsilon \\ge 0`, the smallest norm divided by.
        dtype: the floating dtype the iteration runs in.
        restarts: the (0-based) steps to restart before (``None``: 3, 6, 9, ...; ``()``: never).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> g = jnp.array([[3.0, 0.0, 0.0, 0.0], [0.0, 0.1, 0.0, 0.0]])
        >>> o = jz.gram_newton_schulz(g, (15 / 8, -10 / 8, 3 / 8), 20)  # the convergent quintic
        >>> jnp.round(o, 4)
        Array([[1., 0., 0., 0.],
               [0., 1., 0., 0.]], dtype=float32)

    References:
        Zhang, Amsel, Chen & Dao, "Gram Newton-Schulz: A Fast, Hardware-Aware Newton-Schulz Algorithm for
        Muon", 2026, https://dao-ailab.github.io/blog/2026/gram-newton-schulz/ and
        https://github.com/Dao-AILab/gram-newton-schulz.
        Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024,
        https://kellerjordan.github.io/posts/muon/.
    """
    owner = "gram_newton_schulz"
    dtype = _check_iteration_args(owner, x, ns_coefficients, ns_steps, eps, dtype)
    restarts = _check_restarts(owner, restarts)
    work, layout = gathered(tree.widen(x) if dtype is None else x.astype(dtype))
    coefficients = jnp.asarray(ns_coefficients).astype(_coefficient_dtype(work.dtype))
    result = _gram_orthogonalize(work, coefficients, ns_steps, eps, True, restarts=restarts, min_aspect_ratio=1)
    result = result.astype(x.dtype)
    return result if layout is None else jax.sharding.reshard(result, layout)
