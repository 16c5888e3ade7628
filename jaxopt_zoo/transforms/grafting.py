"""Grafting (Agarwal et al. 2020): one transformation's direction with another's step size, leaf by leaf (or block
by block, as Distributed Shampoo grafts).

Shampoo's and SOAP's preconditioned directions have no natural scale; grafting borrows the norm of a simpler
optimizer's step (Adam, RMSprop, Adagrad, SGD), so that learning-rate schedules tuned for that optimizer carry over.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, OptState, expects_state
from jaxopt_zoo.combine import as_transformation
from jaxopt_zoo.sharding import (
    AxisName, Placement, check_partition_specs, leaf_specs, local_block, local_placements, whole_leaf, whole_shape,
)
from jaxopt_zoo.transforms.kronecker import block_layout, from_blocks, to_blocks

__all__ = ["GraftState", "graft"]


class GraftState(NamedTuple):
    """The states of the transformation lending its norms (``magnitude``) and of the one lending its directions."""

    magnitude: OptState
    direction: OptState


def graft(
    magnitude: GradientTransformation,
    direction: GradientTransformation,
    *,
    active: Callable[[OptState], jax.Array] | None = None,
    max_block_dim: int | None = None,
    merge_dims: bool = True,
    axis_name: AxisName = None,
    partition_specs: Any = None,
) -> GradientTransformation:
    """``direction``'s update of each leaf (or block), rescaled to the norm of ``magnitude``'s update of the same one.

    .. math::

        u = d \\, \\frac{\\|m\\|_F}{\\|d\\|_F} \\quad (0 \\text{ where } d = 0),

    with :math:`m` and :math:`d` the two transformations' updates of the same gradients (both see the same
    ``params`` and extra arguments). Norms are per leaf ("layer-wise grafting", as in Agarwal et al. and in
    heavyball), or, with ``max_block_dim``, per block of :func:`jaxopt_zoo.block_layout` ``(shape, max_block_dim,
    merge_dims)``, as Distributed Shampoo grafts each of its blocks (pass Shampoo's ``max_precond_dim`` and
    ``merge_dims``: the blocks are then its). ``active``, a function of the direction's new state, says on which
    steps to graft; on the others the magnitude's update passes unchanged (Distributed Shampoo's steps before its
    preconditioner starts).

    Sharding: under ``jit`` the norms are exact whatever the layout (a leaf of several blocks split over Explicit
    mesh axes is gathered for them). Inside ``shard_map``, ``axis_name`` names the mesh axes the leaves may be split
    over, so that each norm is that of the whole leaf; a leaf of several blocks is gathered whole, which needs
    ``partition_specs`` too (the params' ``in_specs``).

    Differences from heavyball 3.2.1's grafting: where the direction's norm is 0 the update is 0 (heavyball divides
    by :math:`\\max(\\|d\\|, 10^{-6})`, which scales directions smaller than that by less); so does Distributed
    Shampoo's (which divides by the norm unguarded).

    Args:
        magnitude: the transformation whose update norms are used (e.g. ``jz.scale_by_adam()``).
        direction: the transformation whose update directions are used (e.g. ``jz.scale_by_shampoo()``).
        active: ``None`` (always graft) or a function of the direction's new state returning whether to graft
            this step (a boolean scalar).
        max_block_dim: ``None`` (a norm per leaf) or the largest block dimension, :math:`\\ge 1` (a norm per block).
        merge_dims: with ``max_block_dim``, merge adjacent small dimensions before blocking.
        axis_name: inside ``shard_map``, the mesh axes the leaves may be sharded over.
        partition_specs: inside ``shard_map`` with ``max_block_dim``, the ``PartitionSpec`` of each update leaf
            (the params' ``in_specs``; a tree or a prefix of one).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.graft(jz.scale(3.0), jz.scale_by_sign())  # sign(g) with the norm of 3 g
        >>> g = {"w": jnp.array([3.0, -4.0])}
        >>> updates, _ = tx.update(g, tx.init(g))
        >>> updates["w"]  # 15 / sqrt(2) in each entry
        Array([ 10.606602, -10.606602], dtype=float32)

    References:
        Agarwal, Anil, Hazan, Koren & Zhang, "Disentangling Adaptive Gradient Methods from Learning Rates", 2020,
        arXiv:2002.11803.
    """
    owner = "graft"
    magnitude = as_transformation(owner, magnitude)
    direction = as_transformation(owner, direction)
    if max_block_dim is not None:
        max_block_dim = validation.whole_number(owner, "max_block_dim", max_block_dim, 1)
    validation.flag(owner, "merge_dims", merge_dims)
    axis_name = validation.axis_name(owner, axis_name)
    check_partition_specs(owner, partition_specs)

    def init(params):
        return GraftState(magnitude.init(params), direction.init(params))

    def update(updates, state, params=None, **extra_args):
        m_updates, m_state = magnitude.update(updates, state.magnitude, params, **extra_args)
        d_updates, d_state = direction.update(updates, state.direction, params, **extra_args)
        grafting = True if active is None else active(d_state)
        d_leaves, treedef = jax.tree.flatten(d_updates, is_leaf=tree.is_none)
        placements = None
        if max_block_dim is not None:
            placements = local_placements(owner, d_leaves, leaf_specs(owner, partition_specs, d_updates), axis_name,
                                          "grafting per block needs whole arrays")

        def grafted(d: jax.Array, m: jax.Array, at: Placement | None) -> jax.Array:
            blocked = max_block_dim is not None and d.ndim > 0 and d.size > 0
            layout = block_layout(whole_shape(d, at), max_block_dim, merge_dims) if blocked else None
            if layout is None or sum(n for n, *_ in layout.stack_shapes) == 1:
                d_norm = jnp.sqrt(tree.sum_of_squares(d, axis_name, owner))
                m_norm = jnp.sqrt(tree.sum_of_squares(m, axis_name, owner))
                return jnp.where(grafting, d * _ratio(m_norm, d_norm), m).astype(d.dtype)
            stacks = zip(*(to_blocks(whole_leaf(x, at), layout) for x in (d, m)))
            scaled = [ds * _ratio(_block_norms(ms), _block_norms(ds)) for ds, ms in stacks]
            return jnp.where(grafting, local_block(from_blocks(scaled, layout, like=d), at), m).astype(d.dtype)

        m_leaves = treedef.flatten_up_to(m_updates)
        new_updates = [None if d is None else grafted(d, m, at)
                       for d, m, at in zip(d_leaves, m_leaves, placements or [None] * len(d_leaves))]
        return treedef.unflatten(new_updates), GraftState(m_state, d_state)

    return expects_state(owner, GradientTransformation(init, update), GraftState)


def _block_norms(stack: jax.Array) -> jax.Array:
    # The Frobenius norm of each block of a stack (blocks on axis 0), shaped to broadcast against it.
    return jnp.sqrt(jnp.sum(tree.abs_sq(stack), axis=tuple(range(1, stack.ndim)), keepdims=True))


def _ratio(m_norm: jax.Array, d_norm: jax.Array) -> jax.Array:
    # ||m|| / ||d||, 0 where ||d|| = 0 (the update is then 0, not NaN).
    return jnp.where(d_norm == 0, 0, m_norm / jnp.where(d_norm == 0, 1, d_norm))
