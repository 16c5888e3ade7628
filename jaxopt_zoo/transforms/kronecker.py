"""What Kronecker-factored preconditioners share: merged and blocked shapes, per-dimension statistics, mode products.

Shampoo, SOAP and PSGD-Kron precondition a leaf with one matrix per dimension. Before that, Distributed Shampoo
reshapes the leaf: adjacent dimensions whose product stays within ``max_precond_dim`` are *merged* into one (a
``(3, 3, 64, 128)`` convolution kernel becomes ``(576, 128)`` at 1024) and size-1 dimensions are dropped; then every
dimension larger than ``max_precond_dim`` is *blocked*, cut into pieces of ``max_precond_dim`` and a remainder, and
each block is preconditioned alone, so that no factor is larger than ``max_precond_dim`` squared. Blocks of the same
shape are stacked: a leaf becomes at most :math:`2^k` stacks of shape ``(blocks, *block_shape)`` (full pieces and
remainders along each of its :math:`k` dimensions), each processed by one vmapped program.

    >>> import jax.numpy as jnp, jaxopt_zoo as jz
    >>> layout = jz.block_layout((3, 3, 64, 1000), max_precond_dim=600)
    >>> layout.merged, layout.stack_shapes  # 3 * 3 * 64 = 576 <= 600; 1000 = 600 + 400
    ((576, 1000), ((1, 576, 600), (1, 576, 400)))
    >>> x = jnp.arange(3 * 3 * 64 * 1000.0).reshape(3, 3, 64, 1000)
    >>> bool((jz.from_blocks(jz.to_blocks(x, layout), layout) == x).all())
    True

Inside ``shard_map`` each leaf arrives as its device's block, and the factors need whole arrays. Given ``axis_name``
(the mesh axes the params may be split over) and ``partition_specs`` (the params' ``in_specs``), Shampoo, SOAP and
PSGD-Kron gather each preconditioned leaf whole (one all-gather per split dimension), cut it into blocks as one
device would, and keep their block of the result. A stack of factors that the state holds whole (``in_specs``
``P()``) is worked in full by every device; one held in shares, as :func:`jaxopt_zoo.state_shardings` lays it out
(:func:`stack_sharding`), is worked by each device for its own blocks, whose results are then gathered. PSGD-Kron's
factors are whole: every device forms the whole update. The numbers are one device's, up to the rounding of products
batched over fewer blocks; the price is the gathers (and, with whole stacks, every device repeating the work).
Nothing is gathered for a leaf split at block boundaries (each device's part of it whole blocks) whose stacks are
held in shares: each device cuts its own blocks and sends each to the device whose share of the stack holds it
(``ppermute``, one round per destination device), and the results come back the same way: each device moves its part
of the leaf, not the leaf. A leaf split along its first dimension only (a fully sharded data-parallel layout) needs
no moves: a device's rows of blocks are its share. The same holds under ``jit`` on Explicit axes (:func:`to_blocks`
and :func:`from_blocks` work each device's part there), and on Auto axes when Shampoo and SOAP are given
``partition_specs`` (the update then runs in a ``shard_map`` of its own). A ``shard_map`` over some of the mesh's
axes works alike (``axis_name`` and the specs name those axes). Without ``axis_name`` a leaf that is a block raises.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from jaxopt_zoo import validation
from jaxopt_zoo.base import StateMismatchError
from jaxopt_zoo.sharding import Placement, explicit_layout, gathered, placement_of, split_over

__all__ = [
    "BlockLayout", "block_layout", "dim_statistics", "from_blocks", "merge_dims", "mode_product", "on_blocks",
    "stack_sharding", "stacked_eigh", "stacked_qr", "to_blocks",
]

PRECISION = jax.lax.Precision.HIGHEST  # factor statistics and rotations lose too much at TPU/GPU default precision


class _Piece(NamedTuple):
    start: int
    count: int  # blocks along the dimension in this piece
    size: int  # each block's size along the dimension


class _Round(NamedTuple):
    pairs: tuple[tuple[int, int], ...]  # (source, destination) devices, numbered over the axes; not all (i, i)
    send: tuple[tuple[int, ...], ...]  # per device: the blocks of its stack it sends
    receive: tuple[tuple[int, ...], ...]  # per device: where in its stack the blocks it receives go


class _Moves(NamedTuple):
    """How one device's blocks reach the devices that hold their factors: per stack, rounds of ``ppermute``."""

    axes: tuple[str, ...]
    rounds: tuple[tuple[_Round, ...], ...]


class BlockLayout(NamedTuple):
    """How a leaf of ``shape`` is merged (``merged``) and cut into stacks of equal blocks (``stack_shapes``);
    inside ``shard_map``, ``shares`` names per stack the mesh axes whose devices each hold a share of its blocks
    (see :func:`shared_layout`; ``()`` or empty: every device holds all of them)."""

    shape: tuple[int, ...]
    merged: tuple[int, ...]
    pieces: tuple[tuple[_Piece, ...], ...]  # per merged dimension: full blocks, then the remainder
    shares: tuple[tuple[str, ...], ...] = ()
    moves: _Moves | None = None  # one device's blocks (see _local_layout): where they go after to_blocks

    @property
    def stack_shapes(self) -> tuple[tuple[int, ...], ...]:
        """``(blocks, *block_shape)`` of each stack, in the order :func:`to_blocks` returns them."""
        return tuple((math.prod(p.count for p in combo), *(p.size for p in combo)) for combo in self._combos())

    def _combos(self) -> list[tuple[_Piece, ...]]:
        return list(itertools.product(*self.pieces))


def merge_dims(shape: Sequence[int], max_dim: int) -> tuple[int, ...]:
    """``shape`` without its size-1 dimensions and with adjacent ones merged while their product is ``<= max_dim``.

    Distributed Shampoo's rule (``merge_small_dims``): scanning from the first dimension, each one joins the
    previous group when the group's product times it stays within ``max_dim``. A shape of size-1 dimensions only
    becomes ``(1,)``; a scalar's ``()`` stays ``()``.

    Args:
        shape: a leaf's shape.
        max_dim: the largest product of merged dimensions, a whole number >= 1 (else ``ValueError``); a
            dimension larger than it stays alone.
    """
    max_dim = validation.whole_number("merge_dims", "max_dim", max_dim, 1)
    if not shape:
        return ()
    merged: list[int] = []
    for d in (d for d in shape if d != 1):
        if merged and merged[-1] * d <= max_dim:
            merged[-1] *= d
        else:
            merged.append(d)
    return tuple(merged) or (1,)


def block_layout(shape: Sequence[int], max_precond_dim: int, merge: bool = True) -> BlockLayout:
    """The layout of a leaf: merged (unless ``merge=False``), then each dimension cut into blocks of at most
    ``max_precond_dim``.

    Args:
        shape: the leaf's shape.
        max_precond_dim: the largest block size along any dimension and the largest product of merged
            dimensions, a whole number >= 1 (else ``ValueError``).
        merge: merge dimensions first (:func:`merge_dims`); ``False`` cuts ``shape`` as it is, size-1
            dimensions included.
    """
    max_precond_dim = validation.whole_number("block_layout", "max_precond_dim", max_precond_dim, 1)
    shape = tuple(int(d) for d in shape)
    merged = merge_dims(shape, max_precond_dim) if merge else shape

    def pieces(d: int) -> tuple[_Piece, ...]:
        full, rest = divmod(d, max_precond_dim)
        return tuple(p for p in (_Piece(0, full, max_precond_dim), _Piece(full * max_precond_dim, 1, rest))
                     if p.count and p.size)

    return BlockLayout(shape, merged, tuple(pieces(d) for d in merged))


def _whole(x: jax.Array) -> jax.Array:
    # x gathered onto every device when it is split over Explicit mesh axes (which refuse reshapes of split axes).
    return gathered(x)[0]


def _groups(shape: tuple[int, ...], merged: tuple[int, ...]) -> list[int | None]:
    # The merged dimension each dimension of shape went into (None: a dropped size-1 dimension).
    if shape == merged:
        return list(range(len(shape)))
    groups, j, product = [], 0, 1
    for n in shape:
        groups.append(None if n == 1 else j)
        product *= n
        if n != 1 and product == merged[j]:
            j, product = j + 1, 1
    return groups


def _matchings(edges: list[tuple[int, int]], devices: int) -> list[list[int]]:
    """``edges`` (source, destination), each device the source and the destination of ``k`` of them, cut into ``k``
    rounds (indices into ``edges``) in which every device sends once and receives once (a ``k``-regular bipartite
    multigraph is ``k`` perfect matchings: König). Edges from a device to itself are matched first, so that a round
    of them alone needs no collective."""
    left, rounds = list(range(len(edges))), []
    while left:
        out: dict[int, list[int]] = {}
        for e in left:
            out.setdefault(edges[e][0], []).append(e)
        taken: dict[int, int] = {}  # destination -> edge

        def augment(src: int, seen: set[int]) -> bool:
            for e in sorted(out[src], key=lambda e: edges[e][1] != src):  # its own device first
                dst = edges[e][1]
                if dst not in seen:
                    seen.add(dst)
                    if dst not in taken or augment(edges[taken[dst]][0], seen):
                        taken[dst] = e
                        return True
            return False

        for src in range(devices):
            augment(src, set())
        chosen = set(taken.values())
        rounds.append(sorted(chosen, key=lambda e: edges[e][0]))
        left = [e for e in left if e not in chosen]
    return rounds


def _local_layout(layout: BlockLayout, placement: Placement, sizes: dict[str, int]) -> BlockLayout | None:
    # Planned once per layout, split and mesh (leaves of the same shape and split share it; tracing asks per move).
    return _planned_local_layout(layout, placement, tuple(sizes.items()))


@functools.lru_cache(maxsize=4096)
def _planned_local_layout(layout: BlockLayout, placement: Placement,
                          sizes_items: tuple[tuple[str, int], ...]) -> BlockLayout | None:
    """The layout of one device's block of a leaf split by ``placement`` (mesh axis sizes ``sizes``) when that block
    is a whole number of blocks along every split dimension, with the moves that send them to the devices whose
    shares of the stacks hold them (:func:`_block_moves`); else ``None``. A dimension merged with others is at most
    one block, so only dimensions that merging left alone can be split into whole blocks."""
    sizes = dict(sizes_items)
    groups, ways = _groups(layout.shape, layout.merged), [math.prod(sizes[a] for a in p) for p in placement]
    split = [1] * len(layout.merged)  # per merged dimension: the devices it is split over
    for d, (w, j) in enumerate(zip(ways, groups)):
        if w > 1 and (j is None or layout.merged[j] != layout.shape[d]):
            return None
        if w > 1:
            split[j] = w
    if any(w > 1 and (len(p) != 1 or p[0].count % w) for p, w in zip(layout.pieces, split)):
        return None
    local = layout._replace(
        shape=tuple(n // w for n, w in zip(layout.shape, ways)),
        merged=tuple(n // w for n, w in zip(layout.merged, split)),
        pieces=tuple(p if w == 1 else (p[0]._replace(count=p[0].count // w),) for p, w in zip(layout.pieces, split)),
        shares=())
    # Each device's position along each merged dimension, from its mesh coordinates (devices numbered row-major over
    # the axes of placement, as stack_sharding splits the stacks and axis_index counts them).
    axes = split_over(placement)
    where = []
    for coords in itertools.product(*(range(sizes[a]) for a in axes)):
        at, coords = [0] * len(split), dict(zip(axes, coords))
        for d, j in enumerate(groups):
            for a in placement[d] if j is not None else ():
                at[j] = at[j] * sizes[a] + coords[a]
        where.append(at)
    moves = tuple(_block_moves(combo, local_combo, where) for combo, local_combo in zip(layout._combos(),
                                                                                        local._combos()))
    return local._replace(moves=_Moves(axes, moves) if any(moves) else None)


def _block_moves(combo: Sequence[_Piece], local_combo: Sequence[_Piece], where: list[list[int]]) -> tuple[_Round, ...]:
    """For one stack: the rounds that take each device's blocks (``local_combo``'s, at its position ``where``) to the
    device whose share of the stack holds them (blocks numbered row-major over ``combo``'s, shares consecutive).
    When every device sends the same number of blocks to each device it sends to, those go together: a round per
    destination (each device's 8 x 8 blocks bound for 8 devices: 8 rounds of 8 blocks, not 64 of one), less the
    rounds in which every block stays where it is."""
    counts, local_counts = [p.count for p in combo], [p.count for p in local_combo]
    k = math.prod(local_counts)  # blocks per device
    bundles: dict[tuple[int, int], list[tuple[int, int]]] = {}  # (source, destination) -> [(its slot, their slot)]
    for device, at in enumerate(where):
        for slot, index in enumerate(itertools.product(*map(range, local_counts))):
            block = 0
            for count, local_count, a, i in zip(counts, local_counts, at, index):
                block = block * count + a * local_count + i
            bundles.setdefault((device, block // k), []).append((slot, block % k))
    if len({len(b) for b in bundles.values()}) != 1:  # uneven: one block per round
        bundles = {(s, d, n): [slots] for (s, d), b in bundles.items() for n, slots in enumerate(b)}
    edges, slots = [key[:2] for key in bundles], list(bundles.values())
    rounds = []
    for r in _matchings(edges, len(where)):
        pairs = tuple(edges[e] for e in r)
        if all(s == d for s, d in pairs) and all(i == j for e in r for i, j in slots[e]):
            continue  # every block stays where it is
        send = tuple(tuple(i for i, _ in slots[e]) for e in r)
        receive = tuple(tuple(j for _, j in slots[e]) for e in sorted(r, key=lambda e: edges[e][1]))
        rounds.append(_Round(pairs, send, receive))
    return tuple(rounds)


def _moved(stack: jax.Array, rounds: Sequence[_Round], axes: tuple[str, ...], back: bool = False) -> jax.Array:
    # A device's stack of blocks sent round by round to where the moves take it (back: to where they came from).
    # Devices are numbered over axes in their order (as axis_index and the stacks' shares count them); ppermute
    # (jax 0.10) numbers them in the mesh's order of those axes whatever order it is given, so pairs are renumbered.
    order = tuple(a for a in jax.sharding.get_abstract_mesh().axis_names if a in axes)
    sizes = {a: jax.lax.axis_size(a) for a in axes}
    renumber = [sum(c[axes.index(a)] * math.prod(sizes[b] for b in order[i + 1:]) for i, a in enumerate(order))
                for c in itertools.product(*(range(sizes[a]) for a in axes))]
    device, out = jax.lax.axis_index(axes), stack
    for r in rounds:
        pairs, send, receive = (tuple((d, s) for s, d in r.pairs), r.receive, r.send) if back else r
        blocks = stack[jnp.asarray(send)[device]]
        if any(s != d for s, d in pairs):
            blocks = jax.lax.ppermute(blocks, order, [(renumber[s], renumber[d]) for s, d in pairs])
        out = out.at[jnp.asarray(receive)[device]].set(blocks)
    return out


def _explicit_local(x: jax.Array, layout: BlockLayout) -> tuple[BlockLayout, NamedSharding, tuple[str, ...]] | None:
    """For ``x`` split over Explicit mesh axes into whole blocks (see :func:`_local_layout`): one device's layout,
    ``x``'s sharding and the axes the stacks' block axis is split over; else ``None``."""
    split = explicit_layout(x)
    if split is None:
        return None
    placement = placement_of("to_blocks", split.spec, x.ndim)
    local = _local_layout(layout, placement, dict(split.mesh.shape))
    return None if local is None else (local, split, split_over(placement))


def _block_axes(x: jax.Array) -> tuple[str, ...]:
    # The Explicit mesh axes x is split over when that is along its first dimension only; else ().
    split = explicit_layout(x)
    entries = () if split is None else tuple(split.spec)
    if not entries or entries[0] is None or any(e is not None for e in entries[1:]):
        return ()
    return (entries[0],) if isinstance(entries[0], str) else tuple(entries[0])


def to_blocks(x: jax.Array, layout: BlockLayout) -> tuple[jax.Array, ...]:
    """``x`` as the stacks of blocks of ``layout`` (each ``(blocks, *block_shape)``, block index row-major; inside
    ``shard_map`` this device's share of a stack that ``layout.shares`` splits).

    An ``x`` split over Explicit mesh axes is gathered first (blocks are whole; see
    :func:`jaxopt_zoo.sharding.explicit_layout`), unless it is split at block boundaries: each device then cuts its
    own blocks and sends them where :func:`stack_sharding` lays their factors out, so the stacks come out split over
    the leaf's axes; under ``jit`` on Auto axes the partitioner lays the blocks out.

    Args:
        x: an array of shape ``layout.shape``: the leaf, or a gradient or moment shaped like it.
        layout: ``x``'s :func:`block_layout`; inside ``shard_map`` this device cuts only its share of each
            stack that ``layout.shares`` splits.
    """
    mine = _explicit_local(x, layout)
    if mine is not None:
        local, split, axes = mine
        cut = lambda y: to_blocks(y, local)  # noqa: E731
        out_specs = (PartitionSpec(axes),) * len(local.stack_shapes)
        return jax.shard_map(cut, mesh=split.mesh, in_specs=split.spec, out_specs=out_specs)(x)
    x = _whole(x).reshape(layout.merged)
    stacks = []
    for combo, axes in zip(layout._combos(), layout.shares or itertools.repeat(())):
        piece = x[tuple(slice(p.start, p.start + p.count * p.size) for p in combo)]
        k = len(combo)
        piece = piece.reshape([n for p in combo for n in (p.count, p.size)])
        piece = piece.transpose([*range(0, 2 * k, 2), *range(1, 2 * k, 2)])
        stack = piece.reshape(-1, *(p.size for p in combo))
        if axes:
            share = stack.shape[0] // jax.lax.axis_size(axes)
            stack = jax.lax.dynamic_slice_in_dim(stack, jax.lax.axis_index(axes) * share, share)
        stacks.append(stack)
    if layout.moves:
        stacks = [_moved(s, rounds, layout.moves.axes) for s, rounds in zip(stacks, layout.moves.rounds)]
    return tuple(stacks)


def from_blocks(stacks: Sequence[jax.Array], layout: BlockLayout, like: jax.Array | None = None) -> jax.Array:
    """The inverse of :func:`to_blocks`: the leaf, in its original shape (laid out like ``like`` where that is split
    over Explicit mesh axes; stacks split over devices, as :func:`on_blocks` returns them, are gathered first, and
    inside ``shard_map`` the shares of ``layout.shares``). When ``like`` is split at block boundaries and every stack
    is split as :func:`to_blocks` splits them then, the blocks go back to the devices whose part of the leaf they are,
    and each device assembles its part.

    Args:
        stacks: one array per stack of ``layout``, in the order of its ``stack_shapes``, each
            ``(blocks, *block_shape)`` (inside ``shard_map``, this device's share where ``layout.shares`` says so),
            as :func:`to_blocks` returns them.
        layout: the layout the blocks were cut by.
        like: the leaf, or an array laid out like it, whose Explicit-axes sharding the result takes; ``None``
            (or an array not split over Explicit axes): the result is laid out as the computation leaves it.
    """
    mine = None if like is None else _explicit_local(like, layout)
    if mine is not None and all(_block_axes(s) == mine[2] for s in stacks):
        local, split, axes = mine
        join = lambda *s: from_blocks(s, local)  # noqa: E731
        in_specs = (PartitionSpec(axes),) * len(stacks)
        return jax.shard_map(join, mesh=split.mesh, in_specs=in_specs, out_specs=split.spec)(*stacks)
    if layout.moves:
        stacks = [_moved(s, rounds, layout.moves.axes, back=True) for s, rounds in zip(stacks, layout.moves.rounds)]
    stacks = [jax.lax.all_gather(s, axes, tiled=True, to="invarying") if axes else _whole(s)
              for s, axes in zip(stacks, layout.shares or itertools.repeat(()))]
    pieces = {}
    indices = itertools.product(*(range(len(p)) for p in layout.pieces))  # the same order as layout._combos()
    for index, combo, stack in zip(indices, layout._combos(), stacks, strict=True):
        k = len(combo)
        piece = stack.reshape(*(p.count for p in combo), *(p.size for p in combo))
        piece = piece.transpose([i for j in range(k) for i in (j, k + j)])
        pieces[index] = piece.reshape([p.count * p.size for p in combo])

    def assemble(prefix: tuple[int, ...]) -> jax.Array:
        axis = len(prefix)
        if axis == len(layout.pieces):
            return pieces[prefix]
        parts = [assemble(prefix + (j,)) for j in range(len(layout.pieces[axis]))]
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=axis)

    leaf = assemble(()).reshape(layout.shape)
    target = None if like is None else explicit_layout(like)
    return leaf if target is None else jax.sharding.reshard(leaf, target)


def stack_sharding(x: Any, blocks: int) -> NamedSharding | None:
    """Where the factors of a stack of ``blocks`` blocks of the leaf ``x`` go: their block axis split over every mesh
    axis ``x`` is split over, when those are Explicit axes (as :func:`jaxopt_zoo.init_sharded` sees them) whose
    devices divide ``blocks``; else ``None`` (replicated). Each device then keeps, refreshes and applies the factors
    of its own blocks, as Distributed Shampoo distributes its blocks.

    Args:
        x: the leaf the blocks are cut from (an array or a traced value: its type's sharding decides).
        blocks: how many blocks the stack holds (its leading size).
    """
    split = explicit_layout(x)
    spec = None if split is None else stack_spec(split.spec, blocks, dict(split.mesh.shape))
    return None if spec is None or spec == PartitionSpec() else NamedSharding(split.mesh, spec)


def stack_spec(spec: PartitionSpec | None, blocks: int, sizes: dict[str, int]) -> PartitionSpec:
    """:func:`stack_sharding`'s rule as a spec: for a stack of ``blocks`` blocks of a leaf laid out by ``spec`` (mesh
    axis sizes ``sizes``), its block axis split over every axis ``spec`` names, when their devices divide ``blocks``;
    else ``P()``."""
    axes = tuple(a for e in spec or () if e is not None for a in ((e,) if isinstance(e, str) else e))
    return PartitionSpec(axes) if axes and not blocks % math.prod(sizes[a] for a in axes) else PartitionSpec()


def factor_specs(spec: PartitionSpec | None, factors: Sequence[Sequence[jax.Array]],
                 sizes: dict[str, int]) -> tuple[tuple[PartitionSpec, ...], ...]:
    """The specs of a leaf's stacks of factors (per stack, per dimension, ``(blocks, d, d)``) as
    :func:`jaxopt_zoo.init_sharded` lays them out (:func:`stack_spec`), for ``shard_map``'s specs."""
    return tuple(tuple(stack_spec(spec, f.shape[0], sizes) for f in stack) for stack in factors)


def check_factor_shapes(owner: str, layout: BlockLayout | None, state: Sequence[Sequence[jax.Array]], name: str,
                        dims: Sequence[Sequence[int]] | None = None) -> None:
    """Outside ``shard_map``: raise unless ``state`` (per stack of ``layout``, its factors) holds one
    ``(blocks, d, d)`` factor for each dimension of each stack (``dims`` as for :func:`shared_layout`), and nothing
    for a leaf without a layout. A state built by an init with other options (a crash inside JAX, or a
    preconditioner of another layout taken silently) or for other params."""
    stacks = () if layout is None else layout.stack_shapes
    want = [[(count, block[i], block[i]) for i in (range(len(block)) if dims is None else dims[k])]
            for k, (count, *block) in enumerate(stacks)]
    held = [[jnp.shape(f) for f in factors] for factors in state]
    if held != want and not (layout is None and not any(held)):
        leaf = ("a leaf it does not precondition (a scalar, an empty leaf or a vector without precondition_1d)"
                if layout is None else f"a leaf of shape {layout.shape}, which takes {want}")
        raise StateMismatchError(
            f"{owner}: {name} holds factors of shapes {held} for {leaf}: the state was built by an init with other "
            "options (max_precond_dim, merge_dims, blocking, precondition_1d) or for other params. Build it with "
            "this transformation's init.")


def shared_layout(owner: str, layout: BlockLayout | None, state: Sequence[Sequence[jax.Array]],
                  placement: Placement | None, name: str,
                  dims: Sequence[Sequence[int]] | None = None) -> BlockLayout | None:
    """Inside ``shard_map``: ``layout`` with the ``shares`` held by the state's stacks (``state``: per stack of
    ``layout``, its factors, each ``(blocks, d, d)``). A stack of all the blocks is whole on every device; one of a
    share holds this device's part of the block axis split over every mesh axis the leaf is split over, as
    :func:`stack_sharding` lays it out. A stack without factors is whole. ``dims``: per stack, the dimensions of its
    blocks that have factors, in order (``None``: every one). Outside ``shard_map`` (``placement`` ``None``),
    ``layout``."""
    if placement is None or layout is None:
        check_factor_shapes(owner, layout, state, name, dims)
        return layout
    axes, shares = split_over(placement), []
    ways = jax.lax.axis_size(axes) if axes else 1
    for k, ((count, *block), factors) in enumerate(zip(layout.stack_shapes, state, strict=True)):
        sizes = [block[i] for i in (range(len(block)) if dims is None else dims[k])]
        if [jnp.shape(f)[1:] for f in factors] != [(d, d) for d in sizes]:
            raise ValueError(
                f"{owner}: {name} holds factors of shapes {[jnp.shape(f) for f in factors]} for blocks of shape "
                f"{tuple(block)} of a leaf of shape {layout.shape}, which take (blocks, d, d) for d in {sizes}: the "
                "state was built for another shape (tx.init inside shard_map sees local shards). "
                "Build it from the whole params (jz.init_sharded(tx, params)) and give shard_map its layout, "
                "jz.state_shardings(tx, params).")
        held = factors[0].shape[0] if factors else count
        if held != count and held * ways != count:
            raise ValueError(
                f"{owner}: {name} holds a stack of {held} blocks for a leaf of shape {layout.shape} whose stack has "
                f"{count} (a share over {axes or 'no axes'} would hold {count // ways}); lay the state out with "
                "jz.state_shardings(tx, params) for shard_map's in_specs, or replicate it.")
        shares.append(() if held == count else axes)
    return layout._replace(shares=tuple(shares))


def local_share(layout: BlockLayout | None,
                placement: Placement | None) -> tuple[BlockLayout | None, Placement | None]:
    """Inside ``shard_map``: when this device's block of the leaf is whole blocks of every stack and every stack is
    held in shares, the layout of that local block (with the moves that take its blocks to the devices holding their
    factors, see :func:`_local_layout`) and no placement, so that the leaf is neither gathered nor sliced; otherwise
    ``(layout, placement)`` unchanged."""
    if layout is None or placement is None or not layout.shares:
        return layout, placement
    axes = split_over(placement)
    if not axes or any(s != axes for s in layout.shares):
        return layout, placement
    local = _local_layout(layout, placement, {a: jax.lax.axis_size(a) for a in axes})
    return (layout, placement) if local is None else (local, None)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def stack_of_eyes(n: int, d: int, dtype: Any) -> jax.Array:
    # n identities of size d as one program: eagerly (nnx.Optimizer's init) jnp.eye compiled 5 operations per size.
    return jnp.broadcast_to(jnp.eye(d, dtype=dtype), (n, d, d))


def place_stack(stack: jax.Array, x: Any) -> jax.Array:
    # A new stack of factors of the leaf x, laid out by stack_sharding.
    where = stack_sharding(x, stack.shape[0])
    return stack if where is None else jax.sharding.reshard(stack, where)


def on_blocks(fn: Callable[..., Any], *stacks: jax.Array, shared: Sequence[Any] = ()) -> Any:
    """``fn(*stacks, *shared)`` for stacks of blocks (axis 0) and scalars ``shared``, run by each device on its own
    blocks when the first stack's block axis is split over Explicit mesh axes (:func:`stack_sharding`); the other
    stacks are split like it first (whole ones are sliced: no communication). When the first stack is whole on
    every device (factors replicated), the others are gathered whole, so that the results are laid out like it.
    Otherwise, and under Auto axes, a plain call.

    Args:
        fn: the work on blocks; it returns an array, or a tuple or tree of them, whose axis 0 indexes the same
            blocks as the stacks', and nothing in it may combine different blocks.
        shared: values the same for every block (hyperparameters), passed to ``fn`` after the stacks; each is
            made an array and handed whole to every device.
    """
    split = explicit_layout(stacks[0])
    if split is None:
        return fn(stacks[0], *map(_whole, stacks[1:]), *shared)
    spec = PartitionSpec(split.spec[0])
    stacks = tuple(jax.sharding.reshard(s, NamedSharding(split.mesh, spec)) for s in stacks)
    shared = tuple(jnp.asarray(x) for x in shared)  # passed in: shard_map cannot close over Explicit-axes arrays
    specs = (spec,) * len(stacks) + (PartitionSpec(),) * len(shared)
    # check_vma=False: nothing in fn reduces across blocks, and its loops (Newton, power iteration) start from values
    # that do not vary over devices, which the check would reject.
    return jax.shard_map(fn, mesh=split.mesh, in_specs=specs, out_specs=spec, check_vma=False)(*stacks, *shared)


def dim_statistics(block: jax.Array) -> tuple[jax.Array, ...]:
    """:math:`G_{(i)} G_{(i)}^\\top` for each dimension :math:`i` of one block: the block contracted with itself over
    every other dimension (for a matrix, :math:`G G^\\top` and :math:`G^\\top G`).

    Args:
        block: one block :math:`G` of any rank, without the stack axis (``vmap`` it over a stack); the result
            has one ``(d_i, d_i)`` matrix per dimension of size :math:`d_i`.
    """
    axes = range(block.ndim)
    return tuple(
        jnp.tensordot(block, block, axes=([j for j in axes if j != i],) * 2, precision=PRECISION) for i in axes
    )


def mode_product(x: jax.Array, matrices: Sequence[jax.Array | None], transpose: bool = False) -> jax.Array:
    """``x`` multiplied along each dimension :math:`i` by ``matrices[i]`` (its transpose with ``transpose=True``):
    :math:`x \\times_1 M_1 \\times_2 M_2 \\cdots`; a ``None`` matrix leaves its dimension alone. For a matrix,
    :math:`M_1 X M_2^\\top` (:math:`M_1^\\top X M_2` transposed).

    Args:
        x: an array of any rank.
        matrices: for the dimensions of ``x`` from the first (the dimensions past the last are left alone),
            ``None`` or a matrix of shape ``(n_i, x.shape[i])`` (``(x.shape[i], n_i)`` with ``transpose``):
            dimension :math:`i` becomes :math:`n_i` long.
        transpose: multiply by each matrix's transpose (not its conjugate).
    """
    contract = 0 if transpose else 1
    for i, m in enumerate(matrices):
        if m is None:
            continue
        # The new dimension comes out where it belongs when i is last or first. Only a middle one is moved, with
        # its trailing dimensions as whole rows; any other move is a transposed copy (or layout) that every reader of
        # the result pays for again: SOAP's step on an 8192 x 512 leaf spent 3x its products' time in them.
        if i == x.ndim - 1:
            x = jnp.tensordot(x, m, axes=(i, contract), precision=PRECISION)
        else:
            x = jnp.moveaxis(jnp.tensordot(m, x, axes=(contract, i), precision=PRECISION), 0, i)
    return x


def stacked_eigh(matrices: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``jnp.linalg.eigh`` of each matrix of a stack: ``(eigenvalues, eigenvectors)``, eigenvalues ascending.

    On CPUs the matrices are decomposed one after the other (``lax.map``; a stack of one, its matrix without the
    loop), not as one batched LAPACK call: jaxlib 0.10's batched CPU decompositions split the batch over XLA's
    intra-op thread pool and wait for the pieces, so two of them running at once (two leaves' refreshes) can each
    hold a pool thread while waiting for the other's pieces, forever (seen with eigh under simulated devices, and with
    QR in SOAP's refresh of a transformer on 2 cores). Other backends take the whole batch.

    Args:
        matrices: a stack ``(blocks, d, d)`` of symmetric matrices; the results are ``(blocks, d)`` eigenvalues
            and ``(blocks, d, d)`` eigenvectors (as columns).
    """
    return jax.lax.platform_dependent(matrices, cpu=functools.partial(_one_by_one, jnp.linalg.eigh),
                                      default=jnp.linalg.eigh)


def stacked_qr(matrices: jax.Array) -> jax.Array:
    """The orthogonal factor :math:`Q` of ``jnp.linalg.qr`` of each matrix of a stack; on CPUs one matrix after the
    other, for the reason :func:`stacked_eigh` gives.

    Args:
        matrices: a stack ``(blocks, m, n)``; :math:`Q` is ``(blocks, m, min(m, n))``.
    """
    q = lambda m: jnp.linalg.qr(m)[0]  # noqa: E731
    return jax.lax.platform_dependent(matrices, cpu=functools.partial(_one_by_one, q), default=q)


def _one_by_one(fn: Callable[[jax.Array], Any], matrices: jax.Array) -> Any:
    # fn of each matrix of the stack, in a loop; a stack of one matrix (most leaves' stacks) without the loop, whose
    # machinery took 5 of every 6 ms of tracing, lowering and compiling a 128 x 128 QR alone.
    if matrices.shape[0] == 1:
        return jax.tree.map(lambda x: x[None], fn(matrices[0]))
    return jax.lax.map(fn, matrices)
