"""Small linear-algebra routines optimizers are built from: power iteration, inverse p-th roots, NNLS.

Each is Optax's function of the same name (``optax.power_iteration``, ...),
with the deviations named in its docstring.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxopt_zoo.sharding import varying_like
from jaxopt_zoo.tree import abs_sq, tree_vdot

__all__ = ["matrix_inverse_pth_root", "nnls", "power_iteration"]


def _norm(tree: Any) -> jax.Array:
    return jnp.sqrt(jax.tree.reduce(operator.add, jax.tree.map(lambda x: jnp.sum(abs_sq(x)), tree), 0))


def _normalized(tree: Any) -> Any:
    scale = 1.0 / _norm(tree)
    return jax.tree.map(lambda x: scale * x, tree)


def power_iteration(
    matrix: jax.typing.ArrayLike | Callable[[Any], Any],
    *,
    v0: Any = None,
    num_iters: jax.typing.ArrayLike = 100,
    error_tolerance: jax.typing.ArrayLike = 1e-6,
    precision: lax.Precision = lax.Precision.HIGHEST,
    key: jax.Array | None = None,
) -> tuple[jax.Array, Any]:
    """The dominant eigenvalue :math:`\\lambda` of a diagonalisable matrix and its unit eigenvector.

    Iterates :math:`v \\leftarrow Av/\\|Av\\|`, :math:`\\lambda = v^* A v`, until
    :math:`\\|Av - \\lambda v\\| / |\\lambda| <` ``error_tolerance`` or ``num_iters``
    products.

    Returns ``(eigenvalue, eigenvector)``.

    Args:
        matrix: :math:`A`, an ``(n, n)`` array or a function computing
            :math:`Av` for ``v`` a tree shaped like ``v0`` (then ``v0`` is required).
        v0: the start vector (normalised first): an ``(n,)`` array, or a tree for a function ``matrix``.
            Without ``v0``, the start is uniform in :math:`[-1, 1]^n` drawn from ``key``, as in Optax.
        num_iters: the most products with :math:`A` after the first; may be traced.
        error_tolerance: the relative residual at which the iteration stops; may be traced.
        precision: the precision of the products with an array ``matrix`` (a function computes its own).
        key: the PRNG key of the random start, used only without ``v0`` (``jax.random.PRNGKey(0)`` by default).

    Example:
        >>> import jax.numpy as jnp
        >>> import jaxopt_zoo as jz
        >>> value, vector = jz.power_iteration(jnp.asarray([[2.0, 0.0], [0.0, 5.0]]))
        >>> round(float(value), 4), [round(abs(float(x)), 4) for x in vector]
        (5.0, [0.0, 1.0])
    """
    # A matrix is whole wherever it is (inside shard_map: one device's own matrix), so its products are reduced
    # locally; a function's vectors may be shards, whose reductions the shard_map checks guard.
    local = () if not callable(matrix) else None
    if callable(matrix):
        if v0 is None:
            raise ValueError(
                "power_iteration: when matrix is a function, pass v0=, a start vector shaped like its input.")
        product = matrix
    else:
        matrix = jnp.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"power_iteration: matrix must be square (n, n), got shape {matrix.shape}.")
        product = lambda v: jnp.matmul(matrix, v, precision=precision)  # noqa: E731
        if v0 is None:
            key = jax.random.PRNGKey(0) if key is None else key
            v0 = jax.random.uniform(key, matrix.shape[-1:], matrix.dtype, minval=-1.0, maxval=1.0)

    def unconverged(carry):
        vector, image, value, i = carry
        residual = _norm(jax.tree.map(lambda av, v: av - value * v, image, vector))
        return (jnp.abs(residual / value) >= error_tolerance) & (i < num_iters)

    def iterate(carry):
        _, image, _, i = carry
        vector = _normalized(image)
        image = product(vector)
        return vector, image, tree_vdot(vector, image, axis_name=local), i + 1

    v0 = _normalized(v0)
    image = product(v0)
    start = (*varying_like((v0, image, jnp.asarray(0.0)), image), jnp.asarray(0))  # (shard_map: see varying_like)
    _, image, value, _ = lax.while_loop(unconverged, iterate, start)
    return value, _normalized(image)


def _integer_power(m: jax.Array, p: int, precision: lax.Precision) -> jax.Array:
    # Square-and-multiply: M^p in about 2 log2(p) products.
    result = None
    while p:
        if p & 1:
            result = m if result is None else jnp.matmul(result, m, precision=precision)
        p >>= 1
        if p:
            m = jnp.matmul(m, m, precision=precision)
    return result


def matrix_inverse_pth_root(
    matrix: jax.typing.ArrayLike,
    p: int,
    num_iters: jax.typing.ArrayLike = 100,
    ridge_epsilon: jax.typing.ArrayLike = 1e-6,
    error_tolerance: jax.typing.ArrayLike = 1e-6,
    precision: lax.Precision = lax.Precision.HIGHEST,
) -> tuple[jax.Array, jax.Array]:
    """:math:`(A + \\epsilon\\lambda_{max} I)^{-1/p}` of a symmetric positive semi-definite matrix by coupled Newton.

    With :math:`\\alpha = -1/p`, :math:`z = (1+p)/(2\\|A_\\epsilon\\|_F)`, :math:`M_0 = zA_\\epsilon`,
    :math:`H_0 = z^{1/p} I`, it iterates (Higham, *Functions of Matrices*, 2008, eq. 7.18)

    .. math::
        N_k = (1-\\alpha) I + \\alpha M_k, \\quad M_{k+1} = N_k^p M_k, \\quad H_{k+1} = H_k N_k

    while :math:`\\max|M_k - I| >` ``error_tolerance``, at most ``num_iters``
    times, and stops (keeping the previous :math:`H`) once the error grows by
    more than 1.2x. :math:`\\lambda_{max}` comes from :func:`power_iteration`
    (not run when ``ridge_epsilon`` is a Python 0, as for :func:`jaxopt_zoo.shampoo`'s roots).
    Returns ``(root, error)``, the error being :math:`\\max|M - I|` at the end.

    Deliberate difference: ``p`` must be a concrete positive integer, and every
    such ``p`` is computed exactly. Optax raises :math:`N_k` to the power of
    two nearest ``p`` (``p=3`` uses :math:`N_k^4`, ``p=16`` :math:`N_k^8`), so it
    is right only for ``p`` in 1, 2, 4, 8; there the two agree.

    Args:
        matrix: :math:`A`, a symmetric positive semi-definite ``(n, n)`` array (another shape raises ``ValueError``).
        p: the root's order, a positive Python integer (else ``ValueError``).
        num_iters: the most Newton iterations; may be traced.
        ridge_epsilon: :math:`\\epsilon`, the ridge relative to :math:`\\lambda_{max}` (taken as at least 1e-16).
        error_tolerance: the error :math:`\\max|M_k - I|` at which the iteration stops; may be traced.
        precision: the precision of the matrix products (and of :func:`power_iteration`'s).

    Example:
        >>> import jax.numpy as jnp
        >>> import jaxopt_zoo as jz
        >>> root, error = jz.matrix_inverse_pth_root(jnp.asarray([[4.0, 0.0], [0.0, 16.0]]), 2, ridge_epsilon=0.0)
        >>> [round(float(x), 4) for x in jnp.diag(root)]
        [0.5, 0.25]
    """
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
        raise ValueError(f"matrix_inverse_pth_root: p must be a positive Python integer, got {p!r}.")
    matrix = jnp.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix_inverse_pth_root: matrix must be square (n, n), got shape {matrix.shape}.")
    alpha = -1.0 / p
    if isinstance(ridge_epsilon, (int, float)) and ridge_epsilon == 0:
        ridge = 0.0  # lambda_max (a loop of up to 100 products per root) would only be multiplied by 0
    else:
        max_eigenvalue, _ = power_iteration(matrix, num_iters=100, error_tolerance=1e-6, precision=precision)
        ridge = ridge_epsilon * jnp.maximum(max_eigenvalue, 1e-16)
    if matrix.shape[0] == 1:
        return (matrix + ridge) ** alpha, jnp.asarray(0.0)
    identity = jnp.eye(matrix.shape[0], dtype=jnp.promote_types(matrix.dtype, jnp.float32))
    damped = matrix + ridge * identity
    z = (1 + p) / (2 * jnp.linalg.norm(damped))

    def running(carry):
        i, _, _, _, error, improving = carry
        return (i < num_iters) & (error > error_tolerance) & improving

    def newton_step(carry):
        i, m, h, _, error, _ = carry
        n = (1 - alpha) * identity + alpha * m
        new_m = jnp.matmul(_integer_power(n, p, precision), m, precision=precision)
        new_error = jnp.max(jnp.abs(new_m - identity))
        # The error may rise for an iteration before it falls; more than 1.2x means divergence.
        return i + 1, new_m, jnp.matmul(h, n, precision=precision), h, new_error, new_error < 1.2 * error

    m0 = z * damped
    h0 = identity * z ** (1.0 / p)
    start = (0, *varying_like((m0, h0, h0, jnp.max(jnp.abs(m0 - identity)), jnp.asarray(True)), m0))
    _, m, h, previous_h, _, improving = lax.while_loop(running, newton_step, start)
    return jnp.where(improving, h, previous_h).astype(matrix.dtype), jnp.max(jnp.abs(m - identity))


def nnls(
    A: jax.Array,  # noqa: N803  (Optax's and the literature's name)
    b: jax.Array,
    iters: int,
    unroll: int | bool = 1,
    L: jax.typing.ArrayLike | None = None,  # noqa: N803
) -> jax.Array:
    """Non-negative least squares: :math:`\\min_{x \\ge 0} \\|Ax - b\\|_2`, by fast projected gradient.

    With :math:`Q = A^\\top A`, :math:`q = A^\\top b` and a Lipschitz bound
    :math:`L` of :math:`Q` (by default :math:`\\min(\\|Q\\|_F, \\|Q\\|_1)`), ``iters``
    accelerated steps (Polyak, *Projected gradient method for non-negative least
    square*, 2015) from :math:`x = y = 0`, :math:`c = 0`:

    .. math::
        c' = \\tfrac{1}{2}(1 + \\sqrt{1 + 4c^2}), \\quad
        x' = \\max(y - (Qy - q)/L, 0), \\quad
        y' = x' + \\tfrac{c - 1}{c'}(x' - x)

    Args:
        A: the ``(m, n)`` matrix.
        b: an ``(m,)`` vector, or an ``(m, k)`` matrix (one problem per column); other shapes raise ``ValueError``.
        iters: the number of steps (a Python integer, the length of a ``lax.scan``).
        unroll: ``lax.scan``'s ``unroll``: the steps per loop iteration, ``True`` for all of them.
        L: :math:`L`; ``None``: the default above. A zero :math:`L` counts as 1.

    Example:
        >>> import jax.numpy as jnp
        >>> import jaxopt_zoo as jz
        >>> x = jz.nnls(jnp.eye(2), jnp.asarray([1.0, -2.0]), iters=50)
        >>> [round(float(v), 4) for v in x]
        [1.0, 0.0]
    """
    A, b = jnp.asarray(A), jnp.asarray(b)
    if A.ndim != 2 or b.ndim not in (1, 2) or b.shape[0] != A.shape[0]:
        raise ValueError(
            f"nnls: A must be a matrix (m, n) and b a vector (m,) or matrix (m, k) with the same m, "
            f"got A {A.shape} and b {b.shape}."
        )
    q_matrix, q = A.mT @ A, A.mT @ b
    if L is None:
        L = jnp.minimum(jnp.linalg.matrix_norm(q_matrix, ord="fro"), jnp.linalg.matrix_norm(q_matrix, ord=1))
    L = jnp.where(L == 0, 1, L)

    def fast_projected_gradient_step(carry, _):
        x, y, c = carry
        c_next = (1 + jnp.sqrt(1 + 4 * c**2)) / 2
        x_next = jnp.clip(y - (q_matrix @ y - q) / L, 0)
        return (x_next, x_next + (c - 1) / c_next * (x_next - x), c_next), None

    x0 = jnp.zeros_like(b, shape=A.shape[-1:] + b.shape[1:])
    (x, _, _), _ = lax.scan(fast_projected_gradient_step, (x0, x0, 0.0), length=iters, unroll=unroll)
    return x
