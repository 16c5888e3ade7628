"""Orthogonalised updates: the Newton–Schulz iteration and Muon (momentum orthogonalised by Newton–Schulz).

A matrix update :math:`G = U S V^\\top` is replaced by (an approximation of)
its orthogonal polar factor :math:`U V^\\top`, computed with matrix products
only. Every function here acts on 2-D leaves; give other parameters another
optimizer with :func:`~jaxopt_zoo.combine.partition`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, Updates, expects_state
from jaxopt_zoo.sharding import require_whole_arrays
from jaxopt_zoo.storage import StateDtype, resolve, with_storage

__all__ = ["NS_COEFFICIENTS", "ScaleByMuonState", "newton_schulz", "require_matrices", "scale_by_muon"]

NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)
"""Keller Jordan's quintic coefficients :math:`(a, b, c)`, PyTorch's and Optax's default."""

ADJUST_LR_FNS = (None, "original", "match_rms_adamw")
MAX_NS_STEPS = 99  # PyTorch refuses 100 or more


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
    polar factor :math:`U V^\\top`.

    Precision: the iteration runs in ``dtype`` (``None``: ``x``'s dtype, float16
    widened to float32) and the result is cast back to ``x``'s dtype. PyTorch
    always runs it in bfloat16 (``dtype=jnp.bfloat16`` does the same). The norm
    is accumulated in float32 or wider. Where :math:`G = 0` and
    :math:`\\varepsilon = 0` the result is 0, not PyTorch's 0/0 = NaN.

    Args:
        x: a 2-D array.
        ns_coefficients: :math:`(a, b, c)`.
        ns_steps: the number of steps, a Python integer (the loop is unrolled) or
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
    if jnp.ndim(x) != 2:
        raise ValueError(f"newton_schulz: x must be a 2-D array, got shape {jnp.shape(x)}.")
    if jnp.iscomplexobj(x):
        raise ValueError(f"newton_schulz: x must be real, got {jnp.result_type(x)}.")
    a, b, c = ns_coefficients
    work, layout = _gathered(tree.widen(x) if dtype is None else x.astype(dtype))
    tall = x.shape[0] > x.shape[1]
    if tall:
        work = work.T
    wide = jnp.promote_types(work.dtype, jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(work.astype(wide))))
    divisor = jnp.maximum(norm, eps)
    work = (work / jnp.where(divisor == 0, 1, divisor)).astype(work.dtype)  # 0 / 0 only for eps = 0: keep 0

    def step(_, z):
        gram = z @ z.T
        return a * z + (b * gram + c * (gram @ gram)) @ z

    if isinstance(ns_steps, int):
        for _ in range(ns_steps):
            work = step(None, work)
    else:
        work = jax.lax.fori_loop(0, ns_steps, step, work)
    work = (work.T if tall else work).astype(x.dtype)
    return work if layout is None else jax.sharding.reshard(work, layout)


def _gathered(x: jax.Array) -> tuple[jax.Array, Any]:
    # On Explicit mesh axes a sharded matrix is gathered first (JAX refuses to choose a layout for products
    # that contract over a sharded axis), and the result is laid out like it again. On Auto axes the
    # partitioner chooses the collectives itself.
    sharding = getattr(jax.typeof(x), "sharding", None)
    if sharding is None or all(axis is None for axis in getattr(sharding, "spec", ())):
        return x, None
    return jax.sharding.reshard(x, NamedSharding(sharding.mesh, PartitionSpec())), sharding


def _shape_factor(shape: tuple[int, ...], adjust_lr_fn: str | None) -> float:
    # PyTorch's _adjust_lr without the lr: the factor the step of a (rows, cols) matrix is scaled by.
    rows, cols = shape
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1, rows / cols)) if cols else 1.0


def require_matrices(owner: str, params: Any) -> None:
    """Raise, naming the leaf's path and shape, unless every leaf of ``params`` is a real 2-D array."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        where = jax.tree_util.keystr(path) or "<root>"
        if jnp.ndim(leaf) != 2:
            raise ValueError(
                f"{owner}: Muon orthogonalises matrices and takes 2-D parameters only (as torch.optim.Muon), but "
                f"the leaf at {where} has shape {jnp.shape(leaf)}. Give the other parameters another optimizer with "
                "jz.partition, e.g. jz.partition({'muon': jz.torch.muon(), 'adamw': jz.torch.adamw()}, "
                "lambda params: jax.tree.map(lambda p: 'muon' if p.ndim == 2 else 'adamw', params))."
            )
        if jnp.iscomplexobj(leaf):
            raise ValueError(
                f"{owner}: Muon does not support complex parameters (as torch.optim.Muon); the leaf at {where} is "
                f"{jnp.result_type(leaf)}."
            )


def check_options(owner, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn, ns_dtype) -> int | jax.Array:
    """Check Muon's options under ``owner``'s name (``scale_by_muon``, ``torch.muon``); return ``ns_steps`` as an int
    (or as it is when traced)."""
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
    if isinstance(ns_steps, jax.core.Tracer):  # under inject_hyperparams: newton_schulz runs a fori_loop then
        return ns_steps
    return validation.whole_number(owner, "ns_steps", ns_steps, maximum=MAX_NS_STEPS)


class ScaleByMuonState(NamedTuple):
    """Muon's momentum buffer; ``count``: see :func:`~jaxopt_zoo.storage.with_storage`."""

    momentum_buffer: Updates
    count: jax.Array | None = None


def scale_by_muon(
    momentum: jax.typing.ArrayLike = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[Any, Any, Any] = NS_COEFFICIENTS,
    eps: jax.typing.ArrayLike = 1e-7,
    ns_steps: int = 5,
    adjust_lr_fn: str | None = None,
    *,
    ns_dtype: jax.typing.DTypeLike | None = None,
    mu_dtype: StateDtype = None,
) -> GradientTransformation:
    """Muon's direction for 2-D parameters, as ``torch.optim.Muon`` computes it (Jordan et al. 2024).

    .. math::

        B_t = \\mu B_{t-1} + (1 - \\mu) G_t, \\ B_0 = 0, \\qquad
        \\tilde B_t = (1 - \\mu) G_t + \\mu B_t \\text{ if nesterov else } B_t, \\qquad
        U_t = s(m, n) \\, \\mathrm{NS}(\\tilde B_t)

    with :math:`\\mathrm{NS}` the Newton–Schulz orthogonalisation
    (:func:`newton_schulz`) of an :math:`m \\times n` matrix and the shape factor
    :math:`s = \\sqrt{\\max(1, m/n)}` (``adjust_lr_fn`` None or ``"original"``,
    Keller Jordan's) or :math:`0.2 \\sqrt{\\max(m, n)}` (``"match_rms_adamw"``,
    Moonshot's). PyTorch multiplies the learning rate by :math:`s`; here it
    multiplies the update, so ``chain(scale_by_muon(), add_decayed_weights(wd),
    scale_by_learning_rate(lr))`` is PyTorch's step
    :math:`\\theta \\leftarrow (1 - \\gamma\\lambda)\\theta - \\gamma s\\,\\mathrm{NS}(\\tilde B_t)`
    (that is :func:`jaxopt_zoo.torch.muon`). PyTorch's documented pseudocode writes
    :math:`B_t = \\mu B_{t-1} + G_t`; its code (followed here) keeps the moving
    average above, which differs by the factor :math:`1 - \\mu` that the
    normalisation removes (except where :math:`\\|\\tilde B_t\\|_F < \\varepsilon`).

    Every leaf must be a real 2-D array (``init`` raises otherwise, naming it).
    ``None`` updates keep their buffer. The Frobenius norm and the products
    span whole matrices, so inside ``shard_map`` the leaves must be whole
    (replicated): a sharded leaf raises (under ``jax.jit`` with sharded arrays
    the partitioner computes it exactly, and on Explicit mesh axes each sharded matrix is gathered for its
    iteration and its update laid out like it again).

    Differences from ``optax.contrib.scale_by_muon`` (different argument names;
    ``beta``, ``ns_coeffs``): Optax's Nesterov form
    :math:`\\beta B_t / (1 - \\beta^{t+1}) + (1 - \\beta) G_t / (1 - \\beta^t)` is
    bias-corrected and so points elsewhere in the first steps (without
    ``nesterov`` the two agree, bias correction being a scale); Optax divides by
    :math:`\\|X\\|_F + \\varepsilon` with ``eps=1e-8``; Optax scales by shape in a
    separate ``scale_by_shape`` with :math:`\\sqrt{\\max(1, n/m)}` (fan-out over
    fan-in for Flax's (in, out) kernels; PyTorch's weights are (out, in)), and it
    reshapes higher-rank leaves where this raises.

    Args:
        momentum: :math:`\\mu \\ge 0`.
        nesterov: blend the gradient into the buffer as above.
        ns_coefficients: :math:`(a, b, c)` of the Newton–Schulz polynomial.
        eps: :math:`\\varepsilon \\ge 0`, the smallest norm divided by.
        ns_steps: Newton–Schulz steps, an integer in [0, 99].
        adjust_lr_fn: the shape factor: None or ``"original"``, or ``"match_rms_adamw"``.
        ns_dtype: the dtype the iteration runs in (``None``: the update's;
            ``jnp.bfloat16`` is PyTorch's precision). An addition to PyTorch.
        mu_dtype: storage of the momentum buffer: a storage (see :mod:`jaxopt_zoo.storage`).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.chain(jz.scale_by_muon(), jz.scale_by_learning_rate(0.02))
        >>> w = jnp.ones((2, 3))
        >>> updates, state = tx.update(jnp.array([[1.0, 0, 0], [0, 2, 0]]), tx.init(w))
        >>> updates.shape, state[0].momentum_buffer.shape
        ((2, 3), (2, 3))

    References:
        Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024,
        https://kellerjordan.github.io/posts/muon/.
        Liu et al., "Muon is Scalable for LLM Training", 2025, arXiv:2502.16982.
    """
    owner = "scale_by_muon"
    ns_steps = check_options(owner, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn, ns_dtype)
    mu_dtype = resolve(owner, "mu_dtype", mu_dtype)

    def init(params):
        require_matrices(owner, params)
        return ScaleByMuonState(tree.moments_like(params))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.momentum_buffer, "the momentum buffer (state.momentum_buffer)")
        require_whole_arrays(owner, updates)
        buffer = tree.update_moment(updates, state.momentum_buffer, momentum, 1)

        def direction(g, b):
            blended = (1 - momentum) * tree.widen(g) + momentum * b if nesterov else b
            orthogonal = newton_schulz(blended, ns_coefficients, ns_steps, eps, dtype=ns_dtype)
            return (_shape_factor(g.shape, adjust_lr_fn) * orthogonal).astype(g.dtype)

        return tree.map_updates(direction, updates, buffer), ScaleByMuonState(buffer)

    tx = with_storage(GradientTransformation(init, update), signed={"momentum_buffer": mu_dtype})
    return expects_state(owner, tx, ScaleByMuonState)
