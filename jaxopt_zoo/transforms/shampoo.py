"""Shampoo (Gupta, Koren & Singer 2018): one Kronecker factor per dimension, preconditioning by inverse roots.

For a gradient :math:`G` of order :math:`k` (a matrix: :math:`k = 2`), Shampoo keeps per dimension :math:`i` the
statistics :math:`L_i = \\sum_t G_{t(i)} G_{t(i)}^\\top` (or their moving average) and steps along
:math:`G \\times_1 L_1^{-1/2k} \\times_2 \\cdots \\times_k L_k^{-1/2k}`; for a matrix :math:`L^{-1/4} G R^{-1/4}`.
This module follows Meta's Distributed Shampoo (the AlgoPerf winner, Shi et al. 2023): small dimensions merged and
large ones cut into blocks (:mod:`jaxopt_zoo.transforms.kronecker`), inverse roots recomputed every
``precondition_frequency`` steps, the previous root kept when a new one is not finite, and the step's size taken from
a simpler optimizer by grafting (:func:`jaxopt_zoo.graft`; the :func:`jaxopt_zoo.shampoo` alias does it).

    >>> import jaxopt_zoo as jz
    >>> tx = jz.chain(jz.graft(jz.scale_by_adam(), jz.scale_by_shampoo(precondition_frequency=10)),
    ...               jz.scale_by_learning_rate(1e-3))
"""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, Updates, expects_state, safe_increment, static_only, zero_count
from jaxopt_zoo.linalg import matrix_inverse_pth_root
from jaxopt_zoo.sharding import (
    AxisName,
    check_partition_specs,
    leaf_specs,
    local_block,
    local_placements,
    on_auto_axes,
    whole_leaf,
    whole_shape,
)
from jaxopt_zoo.storage import StateDtype, resolve, with_storage
from jaxopt_zoo.transforms.kronecker import (
    PRECISION,
    BlockLayout,
    block_layout,
    dim_statistics,
    factor_specs,
    from_blocks,
    local_share,
    mode_product,
    on_blocks,
    place_stack,
    shared_layout,
    stack_of_eyes,
    stacked_eigh,
    to_blocks,
)

__all__ = ["DiagonalGraftingState", "ScaleByShampooState", "scale_by_diagonal_grafting", "scale_by_shampoo"]

Factors = tuple[tuple[jax.Array, ...], ...]  # per stack of equal blocks, per dimension: (blocks, d, d)


class ScaleByShampooState(NamedTuple):
    """The step count, the filtered gradient ``mu`` (``None`` when ``b1 = 0``), and the factor statistics
    ``factors`` and their inverse roots ``roots``: flat tuples with one entry per param leaf, in
    ``jax.tree.leaves(params)`` order (``None`` params included), each entry per stack of equal blocks one
    ``(blocks, d, d)`` array per dimension (``()`` for a leaf that is not preconditioned). Kept outside the params'
    tree so that Flax NNX, which wraps each param leaf in a Variable, keeps their tuples (and the state's structure)."""

    count: jax.Array
    mu: Updates | None
    factors: tuple[Factors, ...]
    roots: tuple[Factors, ...]


def _whole_number(owner: str, name: str, value: Any) -> int:
    # An integer option >= 1 that shapes the program (blocks, schedule, roots), so it cannot be traced.
    if isinstance(value, jax.core.Tracer):
        raise ValueError(f"{owner}: {name} shapes the update's program and cannot be traced; with "
                         f"jz.inject_hyperparams, name it in static_args (got {value!r}).")
    return validation.whole_number(owner, name, value, 1, validation.INT32_MAX)


def _layout(shape: tuple[int, ...], max_precond_dim: int, merge: bool, precondition_1d: bool) -> BlockLayout | None:
    # None: the leaf passes through (a scalar, an empty array, a vector unless precondition_1d).
    if len(shape) == 0 or 0 in shape or (len(shape) == 1 and not precondition_1d):
        return None
    return block_layout(shape, max_precond_dim, merge)


def _factor_dtype(x: Any) -> jnp.dtype:
    # float32, or the params' wider float64: bf16 or 8-bit factors lose the small eigenvalues the roots invert.
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


def _eigh_root(matrices: jax.Array, p: float, eps: jax.typing.ArrayLike) -> jax.Array:
    # (A + eps I)^(-1/p) of a stack of symmetric matrices, as Distributed Shampoo's default: eigenvalues of A + eps I,
    # shifted up to eps when rounding made the smallest one fall below it.
    eye = jnp.eye(matrices.shape[-1], dtype=matrices.dtype)
    return _floored_power(matrices + eps * eye, -1.0 / p, eps)


def _floored_eigh(b: jax.Array, floor: Any) -> tuple[jax.Array, jax.Array]:
    values, vectors = stacked_eigh(b)
    smallest = jnp.min(values, axis=-1, keepdims=True)
    return jnp.where(smallest < floor, values - smallest + floor, values), vectors


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _floored_power(b: jax.Array, power: float, floor: Any) -> jax.Array:
    """:math:`B^q` of a stack of symmetric positive definite matrices from their eigenvalues, floored as above."""
    values, vectors = _floored_eigh(b, floor)
    return jnp.matmul(vectors * values[..., None, :] ** power, jnp.swapaxes(vectors, -1, -2), precision=PRECISION)


@_floored_power.defjvp
def _floored_power_jvp(power, primals, tangents):
    # Daleckii-Krein: the derivative of B^q along dB is V (D o V^T dB V) V^T, D_ij the divided difference of
    # l^q at the eigenvalues l_i, l_j (q l_i^(q-1) where they are equal). Differentiating eigh instead divides by
    # l_i - l_j, and a statistic of rank below d - 1 (a zero or low-rank gradient) repeats an eigenvalue: NaN, or
    # rounding noise over 1e-16. The floor's shift only undoes rounding: it is held constant.
    (b, floor), (db, _) = primals, tangents
    values, vectors = _floored_eigh(b, floor)
    vt = jnp.swapaxes(vectors, -1, -2)
    out = jnp.matmul(vectors * values[..., None, :] ** power, vt, precision=PRECISION)
    li, lj = values[..., :, None], values[..., None, :]
    # (l_j^q - l_i^q) / (l_j - l_i): for close eigenvalues (r = l_j / l_i - 1 small) as l_i^(q-1) expm1(q log1p(r))
    # / r, without cancellation; for distant ones as it is (r rounds to -1 when l_j << l_i, a floored eigenvalue
    # beside a large one: log1p(-1) = -inf there). The untaken branch of each where divides by 1.
    r = lj / li - 1
    close = jnp.abs(r) < 0.5
    r_close = jnp.where(close, r, 0.0)
    ratio = jnp.where(r_close == 0, power, jnp.expm1(power * jnp.log1p(r_close)) / jnp.where(r_close == 0, 1, r_close))
    quotient = (lj**power - li**power) / jnp.where(close, 1.0, lj - li)
    divided = jnp.where(close, li ** (power - 1) * ratio, quotient)
    divided = (divided + jnp.swapaxes(divided, -1, -2)) / 2
    rotated = jnp.matmul(jnp.matmul(vt, db, precision=PRECISION), vectors, precision=PRECISION)
    return out, jnp.matmul(jnp.matmul(vectors, divided * rotated, precision=PRECISION), vt, precision=PRECISION)


def _newton_root(matrices: jax.Array, p: int, eps: jax.typing.ArrayLike) -> jax.Array:
    # The coupled Newton iteration of jaxopt_zoo.linalg on A + eps I (an absolute ridge, as Distributed Shampoo's).
    eye = jnp.eye(matrices.shape[-1], dtype=matrices.dtype)
    root = lambda a: matrix_inverse_pth_root(a + eps * eye, p, ridge_epsilon=0.0)[0]  # noqa: E731
    return jax.vmap(root)(matrices)


def _new_factors(x: Any, layout: BlockLayout | None, dtype: jnp.dtype, identity: bool) -> Factors:
    # Zeros (statistics) or identities (roots), one (blocks, d, d) array per stack and dimension, laid out across
    # devices by stack_sharding.
    stacks = () if layout is None else layout.stack_shapes
    return tuple(tuple(place_stack(stack_of_eyes(n, d, dtype) if identity else jnp.zeros((n, d, d), dtype), x)
                       for d in dims) for n, *dims in stacks)


def _accumulate(g: jax.Array, factors: Factors, layout: BlockLayout, b2: Any, weight: jax.Array) -> Factors:
    # b2 L + w G_(i) G_(i)^T for each block and dimension.
    blocks = to_blocks(g.astype(_factor_dtype(g)), layout)

    def step(*args):
        *fs, x, b2, weight = args
        return tuple(b2 * f + weight * s for f, s in zip(fs, jax.vmap(dim_statistics)(x), strict=True))

    return tuple(on_blocks(step, *fs, x, shared=(b2, weight)) for fs, x in zip(factors, blocks, strict=True))


@tree.once_per_shape(static_argnums=(2, 3))  # a transformer's 92 stacks of roots: a handful of shapes
def _fresh_roots(f: jax.Array, q: jax.Array, root_fn: Any, p: float, scale: jax.Array, eps: jax.Array) -> jax.Array:
    # New roots of one stack of bias-corrected factors. No entry of (A + eps I)^(-1/p) exceeds its largest eigenvalue,
    # at most eps^(-1/p): Newton's iterate past that bound has diverged, however finite (a factor of rank 1 and a
    # tiny eps: entries of 1e9 where the root's are below 1), and such a block takes eigh's root instead. A block
    # whose root is still not finite or out of bounds keeps its previous one.
    a = f / scale.astype(f.dtype)
    r = root_fn(a, p, eps).astype(q.dtype)
    bound = 1.5 * jnp.asarray(eps, jnp.float32) ** (-1.0 / p)

    def unsound(r):
        return ~jnp.all(jnp.isfinite(r) & (jnp.abs(r) <= bound), axis=(-2, -1), keepdims=True)

    if root_fn is _newton_root:
        r = jax.lax.cond(jnp.any(unsound(r)), lambda: jnp.where(unsound(r), _eigh_root(a, p, eps).astype(q.dtype), r),
                         lambda: r)
    return jnp.where(unsound(r), q, r)


def _refresh(factors: Factors, roots: Factors, root_fn: Any, p: float, scale: jax.Array, eps: Any) -> Factors:
    fresh = lambda f, q, scale, eps: _fresh_roots(f, q, root_fn, p, scale, eps)  # noqa: E731
    return jax.tree.map(lambda f, q: on_blocks(fresh, f, q, shared=(scale, eps)), factors, roots)


def _precondition(g: jax.Array, m: jax.Array, layout: BlockLayout, roots: Factors) -> jax.Array:
    # m multiplied along each dimension of each block by its root.
    blocks = to_blocks(m.astype(_factor_dtype(m)), layout)
    product = lambda *qs_x: jax.vmap(lambda x, *q: mode_product(x, q))(qs_x[-1], *qs_x[:-1])  # noqa: E731
    out = [on_blocks(product, *qs, x) for x, qs in zip(blocks, roots, strict=True)]
    return from_blocks(out, layout, like=g).astype(tree.moment_dtype(g.dtype))


@static_only("precondition_frequency", "max_precond_dim")
def scale_by_shampoo(
    b1: jax.typing.ArrayLike = 0.0,
    b2: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 1e-12,
    precondition_frequency: int = 1,
    start_preconditioning_step: int | None = None,
    max_precond_dim: int = 1024,
    merge_dims: bool = True,
    inverse_root: Literal["eigh", "newton"] = "newton",
    exponent_override: int | None = None,
    precondition_1d: bool = False,
    *,
    mu_dtype: StateDtype = None,
    axis_name: AxisName = None,
    partition_specs: Any = None,
) -> GradientTransformation:
    """Shampoo's preconditioner (Gupta et al. 2018) with Distributed Shampoo's blocking, merging and schedule.

    Each leaf is merged and cut into blocks (:func:`jaxopt_zoo.block_layout`); for a block :math:`G` of order
    :math:`k` (after merging) and each of its dimensions :math:`i`, from :math:`L_i = 0`, :math:`Q_i = I`:

    .. math::

        L_i &\\leftarrow \\beta_2 L_i + w\\, G_{(i)} G_{(i)}^\\top, \\qquad w = 1 \\text{ if } \\beta_2 = 1
              \\text{ (sums, as the 2018 paper) else } 1 - \\beta_2, \\\\
        Q_i &\\leftarrow \\big(L_i / (1 - \\beta_2^t) + \\varepsilon I\\big)^{-1/p}, \\quad p = 2k
              \\text{ (or } \\texttt{exponent\\_override}), \\quad \\text{at steps }
              t = s \\text{ and } t > s,\\ t \\equiv 0 \\ (\\mathrm{mod}\\ f), \\\\
        u &= M \\times_1 Q_1 \\times_2 Q_2 \\cdots \\times_k Q_k, \\qquad
              M = m_t / (1 - \\beta_1^t),\\ m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t \\ (M = G \\text{ when }
              \\beta_1 = 0),

    with :math:`t` the 1-based step, :math:`f` = ``precondition_frequency``, :math:`s` =
    ``start_preconditioning_step`` (default :math:`f`), the bias correction :math:`1 - \\beta_2^t` only when
    :math:`\\beta_2 < 1`. The statistics accumulate the raw gradients every step and the filtered gradient
    :math:`M` is preconditioned, as in Distributed Shampoo. Before step :math:`s` the roots are the identity, so the
    update is :math:`M` unchanged; so is it, always, for scalars, empty leaves and vectors (unless
    ``precondition_1d``, which gives a vector one full-matrix factor, exponent 1/2). Grafted
    (``jz.graft(jz.scale_by_adam(), jz.scale_by_shampoo())``), these leaves take the grafting optimizer's norm.

    Roots are computed only on refresh steps (one ``jax.lax.cond`` for the whole tree), by ``"newton"`` (the
    default), the coupled Newton iteration of :func:`jaxopt_zoo.matrix_inverse_pth_root` on :math:`A + \\varepsilon I`
    (integer :math:`p`, stops at :math:`\\max|M - I| \\le 10^{-6}`), or ``"eigh"`` (Distributed Shampoo's default:
    eigenvalues of :math:`A + \\varepsilon I`, shifted up to :math:`\\varepsilon` where rounding put them below).
    Measured in float32 against float64 on factors of 64 to 1024 rows with condition numbers near :math:`10^6`,
    Newton's roots are within :math:`10^{-6}` where ``eigh``'s are within :math:`10^{-2}` (the small eigenvalues
    ``eigh`` gets wrong are the ones the root magnifies), at a cost from 3x ``eigh``'s (64 rows) to the same
    (1024 rows) on a CPU; on singular early factors (:math:`\\varepsilon = 10^{-12}`) both are within
    :math:`10^{-4}` on the gradients' span, but Newton then runs up to its 100 iterations: on the 23M-parameter
    transformer of ``benchmarks/run.py`` after 10 steps its refresh took 8.4x ``eigh``'s on a CPU
    (``benchmarks/RESULTS.md``). It is matrix products only, which accelerators run fastest. On CPUs,
    ``eigh`` runs one block at a time (:func:`jaxopt_zoo.stacked_eigh`).
    Newton's iterate can diverge while staying finite (on a factor of rank 1 with :math:`\\varepsilon = 10^{-12}`:
    entries of :math:`10^9` where the root's are below 1, and updates pointing uphill): a block whose root has an
    entry above :math:`1.5\\,\\varepsilon^{-1/p}` (the true root's are at most :math:`\\varepsilon^{-1/p}`) takes
    ``eigh``'s root instead (computed only when some block of its stack needs it; under ``jax.vmap`` over the
    optimizer, at every refresh); a root that misses by less is not detected. A block whose new root is still not
    finite or out of that bound (non-finite statistics) keeps its previous root, as Distributed Shampoo keeps its
    previous preconditioner when a computation fails. Statistics and roots are kept in
    float32 (float64 for float64 params) whatever the storage options: an eigendecomposition in bfloat16 or 8 bits
    loses the small eigenvalues the roots invert. Only ``mu`` takes a storage (``mu_dtype``), and a low-precision
    one only where the factors have full rank: a leaf merged into one dimension (a matrix of at most
    ``max_precond_dim`` entries, with ``merge_dims``; a vector, with ``precondition_1d``) has one full-matrix factor
    of rank at most :math:`t` after :math:`t` steps, whose inverse root multiplies the storage's rounding in the
    directions it has not seen by up to :math:`\\varepsilon^{-1/2}`: with bfloat16 the update of a 16 x 8 leaf is noise (cosine 0.14 to the float32
    run's after 6 steps; 1.00 with ``merge_dims=False``). Even in float32 such a root is set by rounding in those
    directions, so programs that round apart (jit and eager, the same leaf in another tree) part there: with
    ``"eigh"`` roots by as much as the leaf moves in its first steps (a (3, 4, 5) leaf: 0.048 apart after 6 steps
    of 0.044), with the default Newton roots far less (0.001 of 0.057). Complex params raise
    (their factors :math:`GG^\\top` would not be Hermitian: wrap the optimizer in
    :func:`jaxopt_zoo.combine.split_real_and_imaginary`).

    Sharding: :func:`jaxopt_zoo.init_sharded` shards ``mu`` like its param and lays each stack of factors and roots
    out by :func:`jaxopt_zoo.stack_sharding`: the block axis split over every mesh axis the param is split over,
    when their devices divide the number of blocks (else replicated), so each device keeps the factors of its
    own blocks. Under ``jax.jit`` on sharded params the update is exact; with Explicit mesh axes each device
    accumulates, refreshes and applies its own blocks' factors (:func:`jaxopt_zoo.on_blocks`; the leaf is gathered
    for its blocks and the preconditioned blocks gathered back, unless it is split at block boundaries, when each
    device sends its own blocks to their factors' devices and back), with Auto axes XLA's partitioner places the work
    and the outputs (pin them with ``out_shardings=jz.state_shardings(tx, params)``), unless given
    ``partition_specs`` under a mesh set by ``jax.set_mesh``: the update then runs as inside ``shard_map``
    (a ``shard_map`` of its own; left to itself, the partitioner gathers the factors for the eighs). Inside
    ``shard_map``, with ``axis_name`` and ``partition_specs``, the update is exact too
    (:mod:`jaxopt_zoo.transforms.kronecker` says how); a leaf that is a shard raises without them.

    Differences from Distributed Shampoo (``DistributedShampoo`` with its ``RootInvShampooPreconditionerConfig``):
    the default inverse root is coupled Newton (Distributed Shampoo's is ``eigh``, an option here); scalars, empty
    leaves and (by default) vectors are not preconditioned (Distributed Shampoo gives them full-matrix factors:
    ``precondition_1d=True`` does that for vectors); ``exponent_override`` is one integer root
    for every factor (Distributed Shampoo's ``inverse_exponent_override`` maps orders and dimensions to exponents);
    :func:`jaxopt_zoo.merge_dims` merges from the first dimension (Distributed Shampoo now merges from the last:
    e.g. ``(4, 4, 4)`` at 16 is ``(16, 4)`` here and ``(4, 16)`` there); a non-finite factor keeps the previous
    root instead of raising; the failure counter and the symmetric packing of factors are left out; ``b1`` is
    Distributed Shampoo's ``betas[0]`` with ``beta3 = beta1`` and its bias correction. Differences from the 2018
    paper: the root's regulariser :math:`\\varepsilon I` is added at each refresh rather than to :math:`L_0`, and
    the roots are refreshed every :math:`f` steps rather than every step.

    Args:
        b1: decay :math:`\\beta_1 \\in [0, 1)` of the filtered gradient (0: the gradient itself, no ``mu`` kept).
        b2: decay :math:`\\beta_2 \\in [0, 1]` of the statistics; 1 sums them (the paper's, and Distributed
            Shampoo's default).
        eps: :math:`\\varepsilon > 0` added to each factor's diagonal before its root (the first steps' factors are
            singular). Small values magnify the near-null directions of such factors, and float32 rounding with
            them: on ``examples/train_sharded.py``'s MLP, sharded and one-device runs agree to ~1e-2 after 20 steps
            at the default and to ~1e-6 at :math:`10^{-6}`.
        precondition_frequency: :math:`f \\ge 1`, steps between root refreshes.
        start_preconditioning_step: :math:`s \\ge 1`, the first refresh; ``None`` is :math:`f`.
        max_precond_dim: the largest factor; larger dimensions are cut into blocks of this size.
        merge_dims: merge adjacent small dimensions (see :func:`jaxopt_zoo.block_layout`).
        inverse_root: ``"eigh"`` or ``"newton"``. Newton's iterations (and the power iteration that scales
            them) run in a ``while_loop``, which JAX differentiates forward (``jax.jvp``) but not in reverse:
            ``jax.grad`` through the steps (of a loss after them) needs ``"eigh"``, whose derivative is the
            matrix function's (Daleckii-Krein), exact where a factor repeats an eigenvalue (a statistic of fewer
            gradients than its size, or none): differentiating ``eigh`` itself is NaN or wrong there.
        exponent_override: an integer :math:`p \\ge 1` for every factor instead of :math:`2k`.
        precondition_1d: give vectors a factor too.
        mu_dtype: storage of the filtered gradient: a storage (see :mod:`jaxopt_zoo.storage`; not a low-precision
            one for merged leaves, see above).
        axis_name: inside ``shard_map``, the mesh axes the params may be split over.
        partition_specs: the ``PartitionSpec`` of each update leaf (a tree or a prefix of one): inside
            ``shard_map`` the params' ``in_specs``; under ``jit`` on Auto mesh axes the params' layout.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_shampoo(eps=1e-6, merge_dims=False)  # merged, this 2 x 2 would be one vector of 4
        >>> g = {"w": jnp.array([[1.0, 0.0], [0.0, 4.0]])}
        >>> updates, state = tx.update(g, tx.init(g))
        >>> updates["w"].round(4)  # L = R = diag(1, 16): diag(1, 16)^(-1/4) diag(1, 4) diag(1, 16)^(-1/4) = I
        Array([[1., 0.],
               [0., 1.]], dtype=float32)

    References:
        Gupta, Koren & Singer, "Shampoo: Preconditioned Stochastic Tensor Optimization", ICML 2018
        (arXiv:1802.09568); Anil, Gupta, Koren, Regan & Singer, "Scalable Second Order Optimization for Deep
        Learning", arXiv:2002.09018; Shi et al., "A Distributed Data-Parallel PyTorch Implementation of the
        Distributed Shampoo Optimizer for Training Neural Networks At-Scale", arXiv:2309.06497.
    """
    owner = "scale_by_shampoo"
    validation.decay_rate(owner, "b1", b1)
    validation.fraction(owner, "b2", b2)
    validation.epsilon(owner, "eps", eps, allow_zero=False, why_positive=" (the first steps' factors are singular)")
    frequency = _whole_number(owner, "precondition_frequency", precondition_frequency)
    start = frequency if start_preconditioning_step is None else _whole_number(
        owner, "start_preconditioning_step", start_preconditioning_step)
    max_dim = _whole_number(owner, "max_precond_dim", max_precond_dim)
    validation.flag(owner, "merge_dims", merge_dims)
    validation.flag(owner, "precondition_1d", precondition_1d)
    if inverse_root not in ("eigh", "newton"):
        raise ValueError(f"{owner}: inverse_root must be 'eigh' or 'newton', got {inverse_root!r}.")
    root = None if exponent_override is None else _whole_number(owner, "exponent_override", exponent_override)
    momentum = not validation.is_literal_zero(b1)
    mu_store = resolve(owner, "mu_dtype", mu_dtype)
    axis_name = validation.axis_name(owner, axis_name)
    check_partition_specs(owner, partition_specs)
    root_fn = _eigh_root if inverse_root == "eigh" else _newton_root

    def layout(shape: tuple[int, ...]) -> BlockLayout | None:
        return _layout(shape, max_dim, merge_dims, precondition_1d)

    def init(params):
        mu = tree.moments_like(params) if momentum else None
        if tree.is_params_placeholder(params):  # tree.map_params: the factors are per-parameter parts too
            return ScaleByShampooState(zero_count(), mu, params, params)
        validation.refuse_complex(owner, params)
        leaves = jax.tree.leaves(params, is_leaf=tree.is_none)  # flat, outside the params' tree (see the state)
        stats, roots = (tuple(() if x is None else _new_factors(x, layout(jnp.shape(x)), _factor_dtype(x), eye)
                              for x in leaves) for eye in (False, True))
        return ScaleByShampooState(zero_count(), mu, stats, roots)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        if momentum:
            tree.check_same_structure(owner, updates, state.mu, "the filtered gradient (state.mu)")
        leaves = len(jax.tree.leaves(updates, is_leaf=tree.is_none))
        if leaves != len(state.factors):
            raise ValueError(f"{owner}: the updates have {leaves} leaves but the state has factors for "
                             f"{len(state.factors)}; pass updates shaped like the params given to init.")

        def state_specs(specs: list, sizes: dict[str, int]) -> ScaleByShampooState:
            factors = tuple(factor_specs(s, f, sizes) for s, f in zip(specs, state.factors, strict=True))
            return ScaleByShampooState(PartitionSpec(), partition_specs if momentum else None, factors, factors)

        auto = on_auto_axes(step, updates, state, partition_specs, state_specs)
        return step(updates, state, axis_name) if auto is None else auto

    def step(updates, state, axis_name):
        grads, treedef = jax.tree.flatten(updates, is_leaf=tree.is_none)  # a None update keeps its entry
        # Inside shard_map the preconditioned leaves are gathered whole, their blocks shared as the state's are.
        placements = local_placements(owner, grads, leaf_specs(owner, partition_specs, updates), axis_name,
                                      "the Kronecker factors need whole arrays") or [None] * len(grads)
        layouts = [None if g is None else shared_layout(owner, layout(whole_shape(g, at)), f, at, "state.factors")
                   for g, f, at in zip(grads, state.factors, placements)]  # None: the entry is kept as it is
        layouts, placements = zip(*map(local_share, layouts, placements))  # a part of whole blocks is not gathered
        whole = lambda xs: [x if lay is None else whole_leaf(x, at) for x, lay, at in zip(xs, layouts, placements)]
        count = safe_increment(state.count)
        mu = tree.update_moment(updates, state.mu, b1, 1) if momentum else None
        direction = tree.bias_correction(mu, b1, count) if momentum else updates
        weight = jnp.where(jnp.asarray(b2) == 1, 1.0, 1 - jnp.asarray(b2))
        grads = whole(grads)
        factors = tuple(f if lay is None else _accumulate(g, f, lay, b2, weight)
                        for g, f, lay in zip(grads, state.factors, layouts, strict=True))
        scale = jnp.where(jnp.asarray(b2) < 1, 1 - jnp.asarray(b2) ** count, 1.0)  # in float64 under x64

        def refreshed(roots: tuple[Factors, ...]) -> tuple[Factors, ...]:
            return tuple(q if lay is None else _refresh(f, q, root_fn, root or 2 * len(lay.merged), scale, eps)
                         for q, f, lay in zip(roots, factors, layouts, strict=True))

        refresh = ((count % frequency == 0) & (count > start)) | (count == start)
        roots = lax.cond(refresh, refreshed, lambda roots: roots, state.roots)  # the other steps skip the roots
        new_updates = [None if g is None else m.astype(tree.moment_dtype(g.dtype)) if lay is None
                       else local_block(_precondition(g, m, lay, q), at)
                       for g, m, lay, q, at in zip(grads, whole(treedef.flatten_up_to(direction)), layouts, roots,
                                                   placements, strict=True)]
        return treedef.unflatten(new_updates), ScaleByShampooState(count, mu, factors, roots)

    tx = GradientTransformation(init, update)
    if momentum:
        tx = with_storage(tx, signed={"mu": mu_store})
    return expects_state(owner, tx, ScaleByShampooState)


class DiagonalGraftingState(NamedTuple):
    """The step count, the filtered gradient ``mu`` and the diagonal statistics ``nu`` of a grafting optimizer."""

    count: jax.Array
    mu: Updates
    nu: Updates


def scale_by_diagonal_grafting(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    bias_correction: bool = False,
    *,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """Distributed Shampoo's diagonal grafting optimizers (RMSprop, Adagrad) applied to the filtered gradient.

    .. math::

        m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\quad
        \\nu_t = \\beta_2 \\nu_{t-1} + w\\, g_t^2 \\ (w = 1 \\text{ if } \\beta_2 = 1
        \\text{ else } 1 - \\beta_2), \\quad
        u_t = \\frac{m_t / (1 - \\beta_1^t)}{\\sqrt{\\nu_t / c_t} + \\varepsilon},

    with :math:`c_t = 1 - \\beta_2^t` when ``bias_correction`` (Adam: :func:`jaxopt_zoo.scale_by_adam` is the same)
    and 1 otherwise. RMSprop is :math:`\\beta_2 < 1` without bias correction, Adagrad :math:`\\beta_2 = 1`. As in
    Distributed Shampoo's ``AdagradPreconditionerList``, the statistics see the raw gradients and the filtered
    gradient is what they scale, so that :func:`jaxopt_zoo.shampoo`'s grafting norms are Distributed Shampoo's.

    Args:
        b1: decay :math:`\\beta_1 \\in [0, 1)` of the filtered gradient.
        b2: decay :math:`\\beta_2 \\in [0, 1]`; 1 sums the squares (Adagrad).
        eps: :math:`\\varepsilon \\ge 0`, added outside the square root.
        bias_correction: divide :math:`\\nu_t` by :math:`1 - \\beta_2^t` (when :math:`\\beta_2 < 1`).
        mu_dtype: storage of ``mu``: a storage (see :mod:`jaxopt_zoo.storage`).
        nu_dtype: storage of ``nu``.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_diagonal_grafting(b1=0.0, b2=1.0, eps=0.0)  # Adagrad: g / sqrt(g^2) on step 1
        >>> tx.update(jnp.array([-3.0, 2.0]), tx.init(jnp.zeros(2)))[0]
        Array([-1.,  1.], dtype=float32)

    References:
        Shi et al., "A Distributed Data-Parallel PyTorch Implementation of the Distributed Shampoo Optimizer for
        Training Neural Networks At-Scale", arXiv:2309.06497.
    """
    owner = "scale_by_diagonal_grafting"
    validation.decay_rate(owner, "b1", b1)
    validation.fraction(owner, "b2", b2)
    validation.epsilon(owner, "eps", eps)
    validation.flag(owner, "bias_correction", bias_correction)
    guard = validation.may_all_be_zero(eps)
    mu_store, nu_store = resolve(owner, "mu_dtype", mu_dtype), resolve(owner, "nu_dtype", nu_dtype)

    def init(params):
        return DiagonalGraftingState(zero_count(), tree.moments_like(params), tree.moments_like(params))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.mu, "the filtered gradient (state.mu)")
        count = safe_increment(state.count)
        mu = tree.update_moment(updates, state.mu, b1, 1)
        weight = jnp.where(jnp.asarray(b2) == 1, 1.0, 1 - jnp.asarray(b2))
        nu = tree.map_state(lambda g, v: b2 * v + weight * tree.abs_sq(g), updates, state.nu)
        nu_hat = tree.bias_correction(nu, jnp.where(jnp.asarray(b2) < 1, b2, 0.0), count) if bias_correction else nu
        new_updates = tree.moment_ratio(updates, tree.bias_correction(mu, b1, count), nu_hat, eps, 0.0, guard)
        return new_updates, DiagonalGraftingState(count, mu, nu)

    tx = with_storage(GradientTransformation(init, update), signed={"mu": mu_store}, non_negative={"nu": nu_store})
    return expects_state(owner, tx, DiagonalGraftingState)

