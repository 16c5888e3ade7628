"""SOAP (Vyas et al. 2024): Adam run in the eigenbasis of Shampoo's Kronecker factors.

Shampoo keeps, for each dimension :math:`i` of a leaf, the factor :math:`L_i`, an exponential average of
:math:`G_{(i)} G_{(i)}^\\top`. SOAP does not take inverse roots of the factors: it rotates the gradient into their
eigenbases :math:`Q_i`, runs Adam there (one second-moment entry per rotated coordinate) and rotates Adam's direction
back. The eigenbases are refreshed every ``precondition_frequency`` steps by one power iteration and a QR
decomposition, so SOAP costs a few matrix products per step and an occasional QR, with no inverse roots to
regularise. Leaves are merged and cut into blocks as :mod:`jaxopt_zoo.transforms.kronecker` describes; Adam's
moments take the storage options, the factors and bases stay in float32 (or the params' wider dtype).

    >>> import jaxopt_zoo as jz
    >>> tx = jz.soap(3e-3, precondition_frequency=10, max_precond_dim=1024, mu_dtype=jz.StochasticBF16())
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jaxopt_zoo import sharding, tree, validation
from jaxopt_zoo.base import GradientTransformation, Updates, expects_state, safe_increment, static_only, zero_count
from jaxopt_zoo.storage import StateDtype, resolve, with_storage
from jaxopt_zoo.transforms.kronecker import (
    PRECISION, BlockLayout, block_layout, check_factor_shapes, factor_specs, from_blocks, local_share, mode_product,
    on_blocks, place_stack, shared_layout, stack_of_eyes, stacked_eigh, stacked_qr, to_blocks,
)

__all__ = ["ScaleBySoapState", "scale_by_soap"]

Factors = tuple[tuple[jax.Array, ...], ...]  # per stack of blocks: one (blocks, d, d) matrix per rotated dimension


class ScaleBySoapState(NamedTuple):
    """The step count (the first step only builds the bases), Adam's moments ``mu`` and ``nu`` in the rotated
    coordinates of each block (shaped like the params), and the factors ``stats`` (:math:`L_i`) and their
    eigenbases ``bases`` (:math:`Q_i`): flat tuples with one entry per param leaf, in
    ``jax.tree.leaves(params, is_leaf=lambda x: x is None)`` order (not trees shaped like the params: Flax NNX
    would turn a container held as a param's value into a mapping), each entry a tuple over the leaf's stacks of
    blocks, each a tuple over its rotated dimensions of ``(blocks, d, d)`` matrices (``()`` for a leaf without
    factors)."""

    count: jax.Array
    mu: Updates
    nu: Updates
    stats: tuple[Factors, ...]
    bases: tuple[Factors, ...]


class _Plan(NamedTuple):
    layout: BlockLayout | None  # None: an empty leaf
    dims: tuple[tuple[int, ...], ...]  # per stack: the block dimensions that are rotated


def _plan(shape: tuple[int, ...], max_dim: int, merge: bool, precondition_1d: bool, blocking: bool) -> _Plan:
    # A leaf's blocks and which of their dimensions get a basis (sizes 1 need none: their 1 x 1 basis is +-1).
    if math.prod(shape) == 0:
        return _Plan(None, ())
    rotate = len(shape) >= 2 or (len(shape) == 1 and precondition_1d)
    layout = block_layout(shape, max_dim, merge)
    if not (rotate and blocking):  # one block of the merged shape; dimensions above max_dim stay unrotated
        layout = layout._replace(pieces=block_layout(layout.merged, max(layout.merged, default=1), False).pieces)
    dims = tuple(tuple(i for i, d in enumerate(s[1:]) if rotate and 1 < d <= max_dim) for s in layout.stack_shapes)
    return _Plan(layout, dims)


def _matrices(block_ndim: int, dims: tuple[int, ...], qs: tuple[jax.Array, ...]) -> list[jax.Array | None]:
    matrices: list[jax.Array | None] = [None] * block_ndim
    for i, q in zip(dims, qs):
        matrices[i] = q
    return matrices


@tree.once_per_shape(static_argnums=(1, 3))  # as the other per-stack pieces below
def _rotate(stack: jax.Array, dims: tuple[int, ...], qs: tuple[jax.Array, ...], into: bool) -> jax.Array:
    """Each block of ``stack`` into its eigenbasis (:math:`x \\times_i Q_i^\\top`) or back (:math:`\\times_i Q_i`)."""
    matrices = _matrices(stack.ndim - 1, dims, qs)
    return jax.vmap(lambda x, ms: mode_product(x, ms, transpose=into))(stack, matrices)


@tree.once_per_shape(static_argnums=1)
def _statistic(stack: jax.Array, i: int) -> jax.Array:
    # G_(i) G_(i)^T of each block: contract every block dimension but i (axis 0 is the stack).
    others = [j for j in range(1, stack.ndim) if j != i + 1]
    return jax.vmap(lambda b: jnp.tensordot(b, b, axes=([j - 1 for j in others],) * 2, precision=PRECISION))(stack)


def _finite(x: jax.Array) -> jax.Array:
    # Whether each block's matrix is finite, shaped to broadcast against the (blocks, d, d) stack.
    return jnp.isfinite(x).all(axis=(-2, -1), keepdims=True)


@tree.once_per_shape
def _eigenbasis(stat: jax.Array, old: jax.Array) -> jax.Array:
    """The eigenvectors of each factor, by decreasing eigenvalue (the first refresh); ``old`` where not finite."""
    q = stacked_eigh(stat)[1][..., ::-1]
    return jnp.where(_finite(q), q, old)


@tree.once_per_shape
def _power_qr(stat: jax.Array, old: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One power iteration and QR from ``old`` with its columns sorted by the estimated eigenvalues
    :math:`\\mathrm{diag}(Q^\\top L Q)`, decreasing; and the order, so that Adam's second moment follows it."""
    power = jnp.matmul(stat, old, precision=PRECISION)  # L Q: one product serves the estimates and the iteration
    order = jnp.argsort(-jnp.sum(old * power, axis=-2), axis=-1)
    q = stacked_qr(jnp.take_along_axis(power, order[:, None, :], axis=-1))
    ok = _finite(q)
    return jnp.where(ok, q, old), jnp.where(ok[..., 0], order, jnp.arange(order.shape[-1]))


def _reorder(order: jax.Array, x: jax.Array, axis: int) -> jax.Array:
    """``x``'s entries along ``axis`` in ``order``, as a product with the permutation matrix: exact for finite ``x``
    (one nonzero term per sum; a NaN entry, which has already spoilt the update, spreads along its fibre), and it
    leaves ``x`` laid out as it was. A gather along a later axis leads XLA to lay the second moment out transposed,
    and every step then pays for copies to and from that layout around the refresh's ``lax.cond`` (a third of SOAP's
    step on an 8192 x 512 leaf). An infinite entry (a squared gradient beyond float32, which makes its own update 0,
    as in Adam) travels as a power of two near the largest float, exact also in the bfloat16 passes of a TPU's
    float32 product: in the sum, inf * 0 would be NaN."""
    permutation = jax.nn.one_hot(order, order.shape[0], axis=0, dtype=x.dtype)  # column j: the unit vector order[j]
    stand_in = 2.0 ** (jnp.finfo(x.dtype).maxexp - 2)
    x = jnp.where(jnp.isinf(x), stand_in, x)  # (the second moment is >= 0)
    x = mode_product(x, [permutation if i == axis else None for i in range(x.ndim)], transpose=True)
    return jnp.where(x == stand_in, jnp.inf, x)


def _refresh(count, stats, bases, mus, nus, dims):
    """New bases of every leaf (eigh at the first step, else power iteration + QR), each first moment rotated from
    the old bases into the new ones, each second moment's entries permuted with the sorted basis vectors. Every
    argument has one entry per leaf (``dims``: its plan's); one ``lax.cond`` for the whole tree."""

    def eigh_step(operands):
        stats, bases, nus = operands
        return jax.tree.map(lambda s, q: on_blocks(_eigenbasis, s, q), stats, bases), nus

    def qr_step(operands):
        stats, bases, nus = operands
        new_bases, new_nus = [], []
        for leaf_stats, leaf_bases, leaf_nus, leaf_dims in zip(stats, bases, nus, dims):
            leaf_new_bases, leaf_new_nus = [], []
            for s_k, q_k, nu, stack_dims in zip(leaf_stats, leaf_bases, leaf_nus, leaf_dims):
                qs = []
                for s, q, i in zip(s_k, q_k, stack_dims):
                    q, order = on_blocks(_power_qr, s, q)
                    nu = on_blocks(jax.vmap(functools.partial(_reorder, axis=i)), order, nu)
                    qs.append(q)
                leaf_new_bases.append(tuple(qs))
                leaf_new_nus.append(nu)
            new_bases.append(tuple(leaf_new_bases))
            new_nus.append(tuple(leaf_new_nus))
        return tuple(new_bases), tuple(new_nus)

    new_bases, nus = jax.lax.cond(count == 0, eigh_step, qr_step, (stats, bases, nus))

    def rotate(*args, dims):  # the first moment of one stack, from the old bases (first half) into the new ones
        *qs, mu = args
        old, new = tuple(qs[:len(qs) // 2]), tuple(qs[len(qs) // 2:])
        return _rotate(_rotate(mu, dims, old, into=False), dims, new, into=True)

    mus = tuple(
        tuple(on_blocks(functools.partial(rotate, dims=d), *old, *new, mu) if d else mu
              for mu, d, old, new in zip(*leaf))
        for leaf in zip(mus, dims, bases, new_bases)
    )
    return new_bases, mus, nus


@static_only("precondition_frequency", "max_precond_dim")
def scale_by_soap(
    b1: jax.typing.ArrayLike = 0.95,
    b2: jax.typing.ArrayLike = 0.95,
    shampoo_b2: jax.typing.ArrayLike | None = None,
    eps: jax.typing.ArrayLike = 1e-8,
    precondition_frequency: int = 10,
    max_precond_dim: int = 10000,
    merge_dims: bool = False,
    precondition_1d: bool = False,
    correct_bias: bool = True,
    normalize_grads: bool = False,
    blocking: bool = True,
    *,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
    axis_name: sharding.AxisName = None,
    partition_specs: Any = None,
) -> GradientTransformation:
    """SOAP (Vyas et al. 2024): Adam in the eigenbasis of Shampoo's per-dimension factors.

    For each block :math:`G` of a leaf (see below) and each of its dimensions :math:`i`, with :math:`G_{(i)}` the
    block unfolded along :math:`i` and :math:`\\tilde G = G \\times_1 Q_1^\\top \\times_2 Q_2^\\top \\cdots` the
    block rotated into the current bases:

    .. math::

        m_k &= \\beta_1 m_{k-1} + (1 - \\beta_1) \\tilde G_k, \\qquad
        v_k = \\beta_2 v_{k-1} + (1 - \\beta_2) \\tilde G_k^2, \\\\
        u_k &= \\frac{\\sqrt{1 - \\beta_2^k}}{1 - \\beta_1^k}
              \\Big(\\frac{m_k}{\\sqrt{v_k} + \\varepsilon}\\Big) \\times_1 Q_1 \\times_2 Q_2 \\cdots, \\\\
        L_i &\\leftarrow \\beta_s L_i + (1 - \\beta_s) G_{(i)} G_{(i)}^\\top \\quad \\text{(after } u_k
              \\text{, so a gradient never rotates itself)},

    :math:`\\beta_s` = ``shampoo_b2`` (default ``b2``). The first step only accumulates :math:`L_i` and sets
    :math:`Q_i` to its eigenvectors (decreasing eigenvalues); its update is 0 and Adam's count :math:`k` starts at
    the second step. After every ``precondition_frequency`` Adam steps the bases are refreshed: the columns of
    :math:`Q_i` are sorted by :math:`\\mathrm{diag}(Q_i^\\top L_i Q_i)`, decreasing (the entries of :math:`v`
    permuted alike), then :math:`Q_i \\leftarrow \\mathrm{QR}(L_i Q_i)`; :math:`m` is rotated from the old bases
    into the new ones (:math:`v` is not rotated, as in the paper). With ``normalize_grads`` the rotated-back
    direction is divided by its root mean square (plus :math:`10^{-30}`) before the bias correction scales it;
    with ``correct_bias=False`` that factor is 1.

    Leaves: with ``merge_dims`` adjacent dimensions are merged while their product stays within
    ``max_precond_dim`` (size-1 dimensions dropped); with ``blocking`` (default) every dimension larger than
    ``max_precond_dim`` is cut into blocks of at most that size, each with its own factors and bases
    (:mod:`jaxopt_zoo.transforms.kronecker`); with ``blocking=False`` such a dimension is left unrotated, as the
    official code does. 1-D leaves are rotated only with ``precondition_1d``; scalars and leaves with a zero
    dimension never (plain Adam; an empty leaf gets an empty update). Size-1 dimensions get no factor (their
    basis would be :math:`\\pm 1`). Complex params raise (their factors :math:`GG^\\top` would not be Hermitian:
    wrap the optimizer in :func:`jaxopt_zoo.combine.split_real_and_imaginary`).

    The eigen and QR work runs in one ``jax.lax.cond`` for the whole tree on the steps that refresh, so the other steps
    do not pay for it under ``jit`` (under ``vmap`` over states the condition is batched and both branches run). The
    factors and bases are float32, or the params' dtype when wider: eigendecompositions in bfloat16 or 8 bits lose the
    small eigenvalues whose directions Adam then rescales most. Adam's moments take the storage options (``mu_dtype``,
    ``nu_dtype``). A non-finite factor contribution (a NaN or infinite gradient) is not accumulated, and a non-finite
    new basis keeps the previous one (as Distributed Shampoo keeps its roots), so the factors recover; Adam's moments
    are Adam's, so guard them with :func:`jaxopt_zoo.apply_if_finite`. Sharding: :func:`jaxopt_zoo.init_sharded` lays
    ``mu`` and ``nu`` out like their params and each stack of factors and bases across the devices by
    :func:`jaxopt_zoo.stack_sharding` (as Shampoo's, see :func:`jaxopt_zoo.scale_by_shampoo`). Whole matrices are
    needed: under ``jit`` with sharded params the update is exact (with Explicit mesh axes each leaf is gathered for its
    blocks, each device rotates, accumulates and refreshes its own blocks, and the results are scattered back to the
    leaf's sharding; a leaf split at block boundaries is not gathered: each device sends its own blocks to their
    factors' devices and back; on Auto axes given ``partition_specs`` under a mesh set by ``jax.set_mesh``, the update
    runs as inside ``shard_map``, in a ``shard_map`` of its own); inside ``shard_map``, with ``axis_name`` and
    ``partition_specs``, it is exact too (:mod:`jaxopt_zoo.transforms.kronecker` says how); a leaf that is a shard
    raises without them. A leaf without bases (a scalar, or a vector unless ``precondition_1d``) is stepped entry by
    entry where it lies, nothing gathered (unless ``normalize_grads``, whose root mean square is the whole leaf's).
    Sharded steps equal one device's up to rounding, which the first steps can magnify: Adam's first step is about the
    sign of each rotated component, so a component near zero can go either way (on a 16 x 32 ``nnx.Linear`` kernel with
    blocks of 4, a 1e-6 relative change of the inputs moved the kernel by 6e-3 in one step, as much as 8 devices against
    one did).

    Differences from the official code (github.com/nikhilvyas/SOAP, ``soap.py``): blocking of dimensions above
    ``max_precond_dim`` (``blocking=True``, the default; the official code leaves them unrotated, which is
    ``blocking=False``); size-1 dimensions get no factor (the same numbers: a 1 x 1 basis is :math:`\\pm 1`);
    the official code keeps ``exp_avg`` in the eigenbasis and rotates it back to the original space and into the
    bases on every step, here only on the steps whose bases change (the same numbers up to rounding); a
    non-finite factor or basis is skipped or kept (the official code propagates NaN); its ``data_format``
    option (channels-last convolutions) is not offered: permute such leaves yourself. The learning rate and the
    weight decay are the alias's (:func:`jaxopt_zoo.soap`). Differences from heavyball 3.2.1's ``SOAP``
    (whose defaults differ: ``b1=0.9``, ``shampoo_beta=0.95``, ``precondition_frequency=2``,
    ``max_precond_dim=2048``, ``merge_dims=True``): its basis refreshes come one step earlier (its cumulative
    :math:`1/f` schedule fires at calls :math:`f, 2f, \\ldots`; the official code refreshes after Adam steps
    :math:`f, 2f, \\ldots`, i.e. at calls :math:`f + 1, 2f + 1, \\ldots`), it lifts the null space of a factor by
    :math:`\\max(\\varepsilon, 64 n\\,\\epsilon_{\\text{mach}})` times its largest eigenvalue before QR, adds
    :math:`\\varepsilon` after the bias correction (its betas are debiased each step), seeds the factors with
    :math:`G G^\\top` (a scale, which leaves the bases alone) and merges dimensions by its own rule; on a
    20-step float64 run (``benchmarks/heavyball_soap_check.py``) ours and heavyball's agree to :math:`4 \\cdot
    10^{-7}` over two steps and differ by up to 6% (in norm) at the end (1-D leaves, plain Adam:
    :math:`3 \\cdot 10^{-9}`); ours matches the
    official algorithm written in torch to :math:`3 \\cdot 10^{-13}`.

    A gradient taken through its steps (``jax.grad`` of a loss after them) has no meaning where a factor repeats
    an eigenvalue, as every factor of fewer gradients than its size does (the first steps): the basis of that
    eigenspace is arbitrary, Adam's per-component scaling depends on it, and the loss jumps under a perturbation.

    Args:
        b1: decay :math:`\\beta_1 \\in [0, 1)` of Adam's first moment (the official default, 0.95).
        b2: decay :math:`\\beta_2 \\in [0, 1)` of Adam's second moment (the official default, 0.95).
        shampoo_b2: decay :math:`\\beta_s \\in [0, 1)` of the factors; ``None`` uses ``b2`` (the official
            ``shampoo_beta=-1``).
        eps: :math:`\\varepsilon \\ge 0`, added to :math:`\\sqrt{v}` (before the bias correction, as the official code).
        precondition_frequency: Adam steps between basis refreshes, :math:`\\ge 1` (official: 10).
        max_precond_dim: the largest factor, :math:`\\ge 1` (official: 10000): larger dimensions are blocked (or
            left unrotated with ``blocking=False``); also the bound of ``merge_dims``.
        merge_dims: merge adjacent small dimensions (official default ``False``).
        precondition_1d: rotate 1-D leaves too (official default ``False``).
        correct_bias: Adam's bias correction (official default ``True``).
        normalize_grads: divide each leaf's direction by its root mean square (official default ``False``).
        blocking: cut dimensions above ``max_precond_dim`` into blocks (``False``: leave them unrotated).
        mu_dtype: storage of the first moment: a storage (see :mod:`jaxopt_zoo.storage`).
        nu_dtype: storage of the second moment, as for ``mu_dtype``.
        axis_name: inside ``shard_map``, the mesh axes the params may be split over.
        partition_specs: the ``PartitionSpec`` of each update leaf (a tree or a prefix of one): inside
            ``shard_map`` the params' ``in_specs``; under ``jit`` on Auto mesh axes the params' layout.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_soap(precondition_frequency=2)
        >>> g = {"w": jnp.array([[1.0, 2.0], [3.0, -1.0]])}
        >>> state = tx.init(g)
        >>> updates, state = tx.update(g, state)  # the first step only builds the eigenbases
        >>> updates["w"]
        Array([[0., 0.],
               [0., 0.]], dtype=float32)
        >>> updates, state = tx.update(g, state)  # then Adam's first step in those bases
        >>> bool(jnp.all(jnp.isfinite(updates["w"]))), int(state.count)
        (True, 2)

    References:
        Vyas, Morwani, Zhao, Shapira, Brandfonbrener, Janson & Kakade, "SOAP: Improving and Stabilizing Shampoo
        using Adam", ICLR 2025 (arXiv:2409.11321).
    """
    owner = "scale_by_soap"
    validation.decay_rate(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    if shampoo_b2 is not None:
        validation.decay_rate(owner, "shampoo_b2", shampoo_b2)
    validation.epsilon(owner, "eps", eps)
    frequency = validation.whole_number(owner, "precondition_frequency", precondition_frequency, 1,
                                        validation.INT32_MAX)
    max_dim = validation.whole_number(owner, "max_precond_dim", max_precond_dim, 1, validation.INT32_MAX)
    for name, value in (("merge_dims", merge_dims), ("precondition_1d", precondition_1d),
                        ("correct_bias", correct_bias), ("normalize_grads", normalize_grads), ("blocking", blocking)):
        validation.flag(owner, name, value)
    guard = validation.may_all_be_zero(eps)
    mu_store, nu_store = resolve(owner, "mu_dtype", mu_dtype), resolve(owner, "nu_dtype", nu_dtype)
    axis_name = validation.axis_name(owner, axis_name)
    sharding.check_partition_specs(owner, partition_specs)
    beta_s = b2 if shampoo_b2 is None else shampoo_b2
    plan_of = lambda shape: _plan(tuple(shape), max_dim, merge_dims, precondition_1d, blocking)

    def factors(p, fill) -> Factors:
        if p is None:  # a None param has no factors; its entry pairs with the updates' None leaf
            return ()
        plan, dtype = plan_of(jnp.shape(p)), jnp.promote_types(jnp.result_type(p), jnp.float32)
        stacks = plan.layout.stack_shapes if plan.layout else ()
        return tuple(tuple(place_stack(fill(s[0], s[1 + i], dtype), p) for i in dims) for s, dims in zip(stacks, plan.dims))

    def init(params):
        zeros = lambda n, d, dtype: jnp.zeros((n, d, d), dtype)
        if tree.is_params_placeholder(params):  # tree.map_params: the factors are per-parameter parts too
            stats = bases = params
        else:  # flat, outside the params' tree (see ScaleBySoapState)
            validation.refuse_complex(owner, params)
            leaves = jax.tree.leaves(params, is_leaf=tree.is_none)
            stats, bases = (tuple(factors(p, fill) for p in leaves) for fill in (zeros, stack_of_eyes))
        return ScaleBySoapState(zero_count(), tree.moments_like(params), tree.moments_like(params), stats, bases)

    def adam_in_bases(g, m, v, dims, qs, live):
        # One stack of blocks: Adam's moments of the rotated gradient (kept at 0 on the first step, live False),
        # and Adam's direction rotated back; each device its own blocks where the bases are laid out across devices.
        step = functools.partial(adam_on_blocks, dims=dims, n=len(qs))
        return on_blocks(step, *qs, g, m, v, shared=(b1, b2, eps, live)) if qs else step(g, m, v, b1, b2, eps, live)

    def adam_on_blocks(*args, dims, n):
        *qs, g, m_old, v_old, b1, b2, eps, live = args
        qs = tuple(qs[:n])
        rotated = _rotate(g, dims, qs, into=True)
        m, v = b1 * m_old + (1 - b1) * rotated, b2 * v_old + (1 - b2) * rotated * rotated
        ratio = tree.over_root(m, v, eps, guard)  # guarded when eps may be 0
        return jnp.where(live, m, m_old), jnp.where(live, v, v_old), _rotate(ratio, dims, qs, into=False)

    def finish(direction, g, count):
        # Adam's direction of a whole leaf: normalised, bias-corrected, 0 on the first step.
        live, k = count > 0, jnp.maximum(count, 1).astype(direction.dtype)
        if normalize_grads:
            direction = direction / (1e-30 + tree.root(jnp.mean(direction * direction)))
        if correct_bias:
            direction = direction * jnp.sqrt(1 - b2**k) / (1 - b1**k)
        return jnp.where(live, direction, 0).astype(tree.moment_dtype(g.dtype))

    def unrotated(g, mu, nu, count):
        # A leaf without bases: Adam entry by entry on the leaf as this device holds it (nothing gathered).
        step = functools.partial(adam_on_blocks, dims=(), n=0)
        m, v, ratio = step(g.astype(jnp.promote_types(g.dtype, jnp.float32))[None], mu[None], nu[None], b1, b2, eps,
                           count > 0)
        return finish(ratio[0], g, count), m[0], v[0]

    def before_refresh(g, mu, nu, stats, bases, plan, count):
        # One leaf (whole arrays): its update, and Adam's moments and the new factors as stacks of blocks.
        dtype = jnp.promote_types(g.dtype, jnp.float32)
        gs = to_blocks(g.astype(dtype), plan.layout)
        old_mus, old_nus = to_blocks(mu, plan.layout), to_blocks(nu, plan.layout)
        mus, nus, directions = zip(*(adam_in_bases(*args, count > 0)
                                     for args in zip(gs, old_mus, old_nus, plan.dims, bases)))
        direction = from_blocks(directions, plan.layout, like=g)

        def accumulate(s, g, beta_s, i):  # a non-finite G is skipped
            c = _statistic(g, i)
            return jnp.where(_finite(c), beta_s * s + (1 - beta_s) * c, s)

        new_stats = tuple(tuple(on_blocks(functools.partial(accumulate, i=i), s, g_k, shared=(beta_s,))
                                for s, i in zip(s_k, dims)) for s_k, g_k, dims in zip(stats, gs, plan.dims))
        return finish(direction, g, count), mus, nus, new_stats

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.mu, "the first moment (state.mu)")
        treedef = jax.tree.structure(updates, is_leaf=tree.is_none)
        if not len(state.stats) == len(state.bases) == treedef.num_leaves:
            raise ValueError(f"{owner}: the state holds factors for {len(state.stats)} leaves, the updates have "
                             f"{treedef.num_leaves}: build the state with init on params shaped like the updates.")

        def state_specs(specs: list, sizes: dict[str, int]) -> ScaleBySoapState:
            factors = tuple(factor_specs(s, f, sizes) for s, f in zip(specs, state.stats, strict=True))
            return ScaleBySoapState(PartitionSpec(), partition_specs, partition_specs, factors, factors)

        auto = sharding.on_auto_axes(step, updates, state, partition_specs, state_specs)
        return step(updates, state, axis_name) if auto is None else auto

    def step(updates, state, axis_name):
        treedef = jax.tree.structure(updates, is_leaf=tree.is_none)
        columns = [*(treedef.flatten_up_to(x) for x in (updates, state.mu, state.nu)), state.stats, state.bases]
        placements = sharding.local_placements(owner, columns[0], sharding.leaf_specs(owner, partition_specs, updates),
                                               axis_name, "the Kronecker factors need whole arrays")
        rows = []  # per leaf: [update, mu, nu, stats, bases] (mu and nu as blocks where the leaf is blocked)
        blocked = []  # per blocked leaf: (its row, plan, Explicit layouts of g, mu, nu, shard_map placement)
        for g, mu, nu, stats, bases, at in zip(*columns, placements or itertools.repeat(None)):
            plan = None if g is None else plan_of(sharding.whole_shape(g, at))
            if g is not None and at is None:  # (inside shard_map, shared_layout checks them below)
                check_factor_shapes(owner, plan and plan.layout, stats, "state.stats", plan and plan.dims)
            if plan is None or plan.layout is None:  # a None leaf keeps its entries; an empty one gets zeros
                rows.append([g if g is None else jnp.zeros_like(g), mu, nu, stats, bases])
                continue
            if not any(plan.dims) and not normalize_grads:
                rows.append([*unrotated(g, mu, nu, state.count), stats, bases])
                continue
            # Whole matrices are needed: on Explicit mesh axes (to_blocks) or inside shard_map (here) the leaf is
            # gathered (unless a device's part is whole blocks, moved to their factors); the results go back below.
            layout = shared_layout(owner, plan.layout, stats, at, "state.stats", plan.dims)
            if not normalize_grads:  # (whose root mean square is the whole leaf's)
                layout, at = local_share(layout, at)  # a device's part is whole blocks: nothing gathered
            plan = plan._replace(layout=layout)
            likes = (g, mu, nu)  # the results go back to these layouts
            g, mu, nu = (sharding.whole_leaf(x, at) for x in likes)
            rows.append([*before_refresh(g, mu, nu, stats, bases, plan, state.count), bases])
            blocked.append((rows[-1], plan, likes, at))
        rotated = [(row, plan) for row, plan, _, _ in blocked if any(plan.dims)]
        if rotated:  # one cond for the whole tree: the other steps skip every leaf's eigh/QR work
            operands = tuple(tuple(row[j] for row, _ in rotated) for j in (3, 4, 1, 2))  # stats, bases, mus, nus
            dims = [plan.dims for _, plan in rotated]
            new_bases, mus, nus = jax.lax.cond(state.count % frequency == 0,
                                               lambda ops: _refresh(state.count, *ops, dims), lambda ops: ops[1:],
                                               operands)
            for (row, _), b, m, n in zip(rotated, new_bases, mus, nus):
                row[1:3], row[4] = [m, n], b
        for row, plan, likes, at in blocked:
            row[1:3] = [from_blocks(x, plan.layout, like=like) for x, like in zip(row[1:3], likes[1:])]
            row[:3] = [sharding.local_block(x, at) for x in row[:3]]
        new_updates, mu, nu = (treedef.unflatten([row[j] for row in rows]) for j in range(3))
        stats, bases = (tuple(row[j] for row in rows) for j in (3, 4))
        return new_updates, ScaleBySoapState(safe_increment(state.count), mu, nu, stats, bases)

    tx = with_storage(GradientTransformation(init, update), signed={"mu": mu_store}, non_negative={"nu": nu_store})
    return expects_state(owner, tx, ScaleBySoapState)
