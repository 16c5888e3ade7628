"""Layer sharding: every matrix of a sharded tree assembled whole on one device (its home) for a rule that needs
whole matrices (Muon's Newton–Schulz), run there, and sent back in its layout.

Used by :func:`jaxopt_zoo.scale_by_muon` (``layer_sharding=True``). Inside ``shard_map`` the leaves are local
blocks laid out as ``partition_specs`` say; under ``jit`` on Explicit mesh axes the layouts come from the arrays'
types, on Auto axes from ``partition_specs`` or, without them, from the partitioner. Each matrix is described by
its (batch, reduction, output) axes, as :class:`jaxopt_zoo.MuonDimensionNumbers` resolves them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxopt_zoo.sharding import Placement, local_placements, placement_of

__all__: list[str] = []

MatrixAxes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # a leaf's (batch, reduction, output) axes



class _StackView(NamedTuple):
    """How a leaf's local block became a (matrices, fan-in, fan-out) stack, to undo it."""

    order: tuple[int, ...]  # the leaf's axes as (batch, reduction, output)
    shape: tuple[int, ...]  # the transposed block's shape, gathered dimensions whole
    gathered: tuple[tuple[int, tuple[str, ...], int], ...]  # (dimension, mesh axes, local size)
    axes: tuple[tuple[str, ...], ...]  # mesh axes the stack, its rows and its columns are split over
    tall: bool  # the matrices were transposed to their wide orientation


def _to_stack(x: jax.Array, axes: MatrixAxes, placement: Placement, sizes: dict[str, int]):
    """A leaf's local block as a stack of (blocks of) wide matrices. Merging axes keeps only the leading one's
    blocks contiguous, so a split axis behind it in its group (batch, reduction or output) is gathered first. Tall
    matrices are transposed here rather than in the iteration: batched, XLA's CPU products round a transposed
    operand differently with the batch size, wide ones alike."""
    batch, reduction, output = axes
    order = batch + reduction + output
    y, gathered, axes, start = x.transpose(order), [], [], 0
    for group in (batch, reduction, output):
        for d in range(start + 1, start + len(group)):
            if placement[order[d]]:
                gathered.append((d, placement[order[d]], y.shape[d]))
                y = jax.lax.all_gather(y, placement[order[d]], axis=d, tiled=True)
        axes.append(placement[order[start]] if group else ())
        start += len(group)
    nb, nr = len(batch), len(reduction)
    stack = y.reshape(math.prod(y.shape[:nb]), math.prod(y.shape[nb:nb + nr]), math.prod(y.shape[nb + nr:]))
    ways = lambda mesh_axes: math.prod(sizes[a] for a in mesh_axes)
    tall = stack.shape[1] * ways(axes[1]) > stack.shape[2] * ways(axes[2])
    if tall:
        stack, axes = stack.transpose(0, 2, 1), [axes[0], axes[2], axes[1]]
    return stack, _StackView(order, y.shape, tuple(gathered), tuple(axes), tall)


def _from_stack(stack: jax.Array, view: _StackView) -> jax.Array:
    y = (stack.transpose(0, 2, 1) if view.tall else stack).reshape(view.shape)
    for d, axes, size in reversed(view.gathered):
        y = jax.lax.dynamic_slice_in_dim(y, jax.lax.axis_index(axes) * size, size, axis=d)
    return y.transpose(tuple(int(i) for i in np.argsort(view.order)))


def _at_home(rule: Callable, operands: Any, stacks: list, views: list, axis_names: tuple[str, ...],
             sizes: dict[str, int], spread: NamedSharding | None = None) -> list:
    """``rule(matrix, operands)`` on every matrix of the local stacks, each matrix whole on one device (its home).

    Stacks of one matrix shape, dtype and layout are joined and padded with zero matrices (whose image is 0)
    to a multiple of the devices that share them. Then one all-to-all per split matrix axis sends each matrix's
    blocks to its home device (devices holding replicas each take a slice), the rule runs there, batched, and
    the same exchange in reverse sends the results back. ``spread`` (jit on Auto mesh axes): instead, the joined
    stack is laid out over every mesh axis and the partitioner chooses the exchange.
    """
    size = lambda axes: math.prod(sizes[a] for a in axes)
    # The barriers keep XLA from fusing the iteration with what feeds it or reads it, so that each matrix's
    # numbers depend as little as XLA allows on where it is computed (one device or many, any batch).
    fenced = lambda f: lambda z: jax.lax.optimization_barrier(f(jax.lax.optimization_barrier(z)))
    batched = fenced(lambda z: jax.vmap(rule, in_axes=(0, None))(z, operands))
    groups: dict[Any, list[int]] = {}
    for i, (stack, view) in enumerate(zip(stacks, views)):
        groups.setdefault((stack.shape[1:], stack.dtype, view.axes), []).append(i)
    results: list[Any] = [None] * len(stacks)
    for (_, _, (along_stack, rows, cols)), members in groups.items():
        replicas = tuple(a for a in axis_names if a not in along_stack + rows + cols)
        count = sum(stacks[i].shape[0] for i in members)
        z = jnp.concatenate([stacks[i] for i in members]) if len(members) > 1 else stacks[members[0]]
        ways = spread.mesh.size if spread is not None else size(rows) * size(cols) * size(replicas)
        z = jnp.pad(z, ((0, -count % ways), (0, 0), (0, 0)))
        if spread is not None:
            z = batched(jax.lax.with_sharding_constraint(z, spread))
        else:
            for axes, d in ((rows, 1), (cols, 2)):
                z = jax.lax.all_to_all(z, axes, 0, d, tiled=True) if axes else z
            share = z.shape[0] // size(replicas)
            z = jax.lax.dynamic_slice_in_dim(z, jax.lax.axis_index(replicas) * share, share) if replicas else z
            z = batched(z)  # no collective in here: whole matrices
            z = jax.lax.all_gather(z, replicas, axis=0, tiled=True, to="invarying") if replicas else z
            for axes, d in ((cols, 2), (rows, 1)):
                z = jax.lax.all_to_all(z, axes, d, 0, tiled=True) if axes else z
        offsets = np.cumsum([0] + [stacks[i].shape[0] for i in members])
        for i, start, stop in zip(members, offsets[:-1], offsets[1:]):
            results[i] = z[start:stop]
    return results


def _at_home_leaves(rule: Callable, operands: Any, leaves: Sequence[jax.Array], dims: list[MatrixAxes],
                    placements: list, axis_names: tuple[str, ...], sizes: dict[str, int],
                    spread: NamedSharding | None = None) -> list:
    """:func:`_at_home` on the matrices of ``leaves`` (local blocks laid out by ``placements``), in their layout."""
    stacks, views = zip(*(_to_stack(x, d, p, sizes) for x, d, p in zip(leaves, dims, placements)))
    outputs = _at_home(rule, operands, list(stacks), list(views), axis_names, sizes, spread)
    return [_from_stack(o, v) for o, v in zip(outputs, views)]


def _mesh_of_leaves(leaves: list) -> Any:
    """The mesh the leaves' types name (under jit too), or the one set by ``jax.set_mesh``; None for one device."""
    for x in leaves:
        mesh = getattr(getattr(jax.typeof(x), "sharding", None), "mesh", None)
        if mesh is not None and not mesh.empty:
            return mesh
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty else mesh


def layer_sharded(owner: str, rule: Callable, operands: Any, leaves: list, dims: list[MatrixAxes],
                  specs: list | None, axis_name: tuple[str, ...] | None) -> tuple[list, list]:
    """``rule(matrix, operands)`` (``operands``: replicated arrays) on every matrix of ``leaves``, each whole on one
    device; returns the results and the leaves' global shapes (inside shard_map the leaves are local blocks, laid
    out as ``specs`` say; under jit the layouts come from ``specs``, the arrays' Explicit types, or the partitioner)."""
    placements = local_placements(owner, leaves, specs, axis_name, "Newton-Schulz needs whole matrices")
    if placements is not None:
        sizes = dict(jax.sharding.get_abstract_mesh().shape)
        shapes = [tuple(n * math.prod(sizes[a] for a in axes) for n, axes in zip(x.shape, p))
                  for x, p in zip(leaves, placements)]
        return _at_home_leaves(rule, operands, leaves, dims, placements, axis_name or (), sizes), shapes
    shapes, mesh = [x.shape for x in leaves], _mesh_of_leaves(leaves)
    whole = [((),) * x.ndim for x in leaves]
    if mesh is None or mesh.size == 1:
        return _at_home_leaves(rule, operands, leaves, dims, whole, (), {}), shapes
    if all(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
        specs = [jax.typeof(x).sharding.spec for x in leaves]
    if specs is None:  # Auto axes, layouts unknown while tracing: the partitioner moves the stacks
        spread = NamedSharding(mesh, PartitionSpec(mesh.axis_names))
        return _at_home_leaves(rule, operands, leaves, dims, whole, (), {}, spread), shapes
    specs = [PartitionSpec() if s is None else s for s in specs]
    placements = [placement_of(owner, s, x.ndim) for x, s in zip(leaves, specs)]
    local = lambda o, *xs: tuple(_at_home_leaves(rule, o, xs, dims, placements, mesh.axis_names,
                                                 dict(mesh.shape)))
    in_specs = (jax.tree.map(lambda _: PartitionSpec(), operands), *specs)
    return list(jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=tuple(specs))(operands, *leaves)), shapes
