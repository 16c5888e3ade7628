"""Grafting (Agarwal et al. 2020): one transformation's direction with another's step size, leaf by leaf (or block
by block, as Distributed Shampoo grafts).

Shampoo's and SOAP's preconditioned directions have no natural scale; grafting borrows the norm of a simpler
optimizer's step (Adam, RMSprop, Adagrad, SGD), so that learning-rate schedules tuned for that optimizer carry over.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, OptState, expects_state
from jaxopt_zoo.combine import as_transformation
from jaxopt_zoo.sharding import (
    AxisName, Placement, check_partition_specs, explicit_layout, leaf_specs, local_placements, placement_of, split_over,
    whole_shape,
)
from jaxopt_zoo.transforms.kronecker import mode_product

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
    axis_name: AxisName = None,
    partition_specs: Any = None,
) -> GradientTransformation:
    """``direction``'s update of each leaf (or block), rescaled to the norm of ``magnitude``'s update of the same one.

    .. math::

        u = d \\, \\frac{\\|m\\|_F}{\\|d\\|_F} \\quad (0 \\text{ where } d = 0),

    with :math:`m` and :math:`d` the two transformations' updates of the same gradients (both see the same
    ``params`` and extra arguments). Norms are per leaf ("layer-wise grafting", as in Agarwal et al. and in
    heavyball), or, with ``max_block_dim``, per block of :func:`jaxopt_zoo.block_layout` ``(shape, max_block_dim)``,
    as Distributed Shampoo grafts each of its blocks (pass Shampoo's ``max_precond_dim``: the blocks are then its,
    with or without ``merge_dims``, since merged dimensions never exceed it: every dimension is cut at the multiples
    of ``max_block_dim``). ``active``, a function of the direction's new state, says on which
    steps to graft; on the others the magnitude's update passes unchanged (Distributed Shampoo's steps before its
    preconditioner starts).

    Sharding: the norms are those of whole leaves (or blocks) under ``jit`` and, with ``axis_name``, inside
    ``shard_map``. Nothing is gathered: each device sums the squares of its own entries per block and one
    all-reduce of that small table (blocks x 2 numbers per leaf) completes the sums; inside ``shard_map`` that
    needs ``partition_specs`` too (the params' ``in_specs``), to place each device's entries in their blocks.

    Differences from heavyball 3.2.1's grafting: where the direction's norm is 0 the update is 0 (heavyball divides
    by :math:`\\max(\\|d\\|, 10^{-6})`, which scales directions smaller than that by less).

    Args:
        magnitude: the transformation whose update norms are used (e.g. ``jz.scale_by_adam()``).
        direction: the transformation whose update directions are used (e.g. ``jz.scale_by_shampoo()``).
        active: ``None`` (always graft) or a function of the direction's new state returning whether to graft
            this step (a boolean scalar; anything else raises ``ValueError``).
        max_block_dim: ``None`` (a norm per leaf) or the largest block dimension, :math:`\\ge 1` (a norm per block).
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
    axis_name = validation.axis_name(owner, axis_name)
    check_partition_specs(owner, partition_specs)
    if active is not None and not callable(active):
        raise ValueError(f"{owner}: active must be None (always graft) or a function of the direction's state "
                         f"returning a boolean scalar, got {active!r}.")

    def init(params):
        return GraftState(magnitude.init(params), direction.init(params))

    def update(updates, state, params=None, **extra_args):
        m_updates, m_state = magnitude.update(updates, state.magnitude, params, **extra_args)
        d_updates, d_state = direction.update(updates, state.direction, params, **extra_args)
        grafting = True if active is None else jnp.asarray(active(d_state))
        if active is not None and (grafting.shape != () or grafting.dtype != jnp.bool_):
            raise ValueError(f"{owner}: active must return a boolean scalar, got {grafting.dtype} of shape "
                             f"{grafting.shape}.")
        d_leaves, treedef = jax.tree.flatten(d_updates, is_leaf=tree.is_none)
        placements = None
        if max_block_dim is not None:
            placements = local_placements(owner, d_leaves, leaf_specs(owner, partition_specs, d_updates), axis_name,
                                          "grafting per block needs to know where each shard lies in its leaf")

        def grafted(d: jax.Array, m: jax.Array, at: Placement | None) -> jax.Array:
            d = tree.as_inexact(d)  # an integer direction (scale_by_sign of integer gradients) truncated to 0
            if max_block_dim is not None and any(n > max_block_dim for n in whole_shape(d, at)):
                return _grafted_per_block(d, m, at, max_block_dim, grafting).astype(d.dtype)
            d_norm = tree.root(tree.sum_of_squares(d, axis_name, owner))
            m_norm = tree.root(tree.sum_of_squares(m, axis_name, owner))
            return jnp.where(grafting, d * _ratio(m_norm, d_norm), m).astype(d.dtype)

        m_leaves = treedef.flatten_up_to(m_updates)
        new_updates = [None if d is None else grafted(d, m, at)
                       for d, m, at in zip(d_leaves, m_leaves, placements or [None] * len(d_leaves))]
        return treedef.unflatten(new_updates), GraftState(m_state, d_state)

    return expects_state(owner, GradientTransformation(init, update), GraftState)


def _grafted_per_block(d: jax.Array, m: jax.Array, at: Placement | None, max_dim: int, grafting: Any) -> jax.Array:
    """``d`` rescaled block by block to ``m``'s norms, blocks cutting every dimension at the multiples of
    ``max_dim``. Each device sums its own entries' squares per block (a product with each dimension's one-hot
    block indices) and a ``psum`` over the leaf's mesh axes (inside ``shard_map``, placed by ``at``) completes the
    sums; on Explicit mesh axes the same runs in a ``shard_map`` over the leaf's layout; elsewhere the partitioner
    places it."""
    split = explicit_layout(d) if at is None else None
    if split is not None:
        placement = placement_of("graft", split.spec, d.ndim)
        local = lambda d, m, on: _grafted_per_block(d, m, placement, max_dim, on)  # noqa: E731
        specs = (split.spec, split.spec, PartitionSpec())
        local = jax.shard_map(local, mesh=split.mesh, in_specs=specs, out_specs=split.spec, check_vma=False)
        return local(d, jax.sharding.reshard(m, split), jnp.asarray(grafting))
    placement = at or ((),) * d.ndim
    first = [jax.lax.axis_index(axes) * n if axes else 0 for n, axes in zip(d.shape, placement)]
    blocks = [(start + jnp.arange(n)) // max_dim for start, n in zip(first, d.shape)]  # each entry's block, per dim
    counts = [-(-n // max_dim) for n in whole_shape(d, at)]
    real = jnp.promote_types(jnp.finfo(d.dtype).dtype, jnp.float32)  # sums of squares in float32 at least
    one_hots = [jax.nn.one_hot(b, c, dtype=real) for b, c in zip(blocks, counts)]
    # Squares are held below the largest finite number over a block's size, so that no partial block sum overflows:
    # as inf, its products with the other blocks' zeros in the one-hot sums were NaN there (every block's step NaN).
    # A block holding such a square gets a norm of ~1.8e19 / sqrt(block size) or more.
    cap = jnp.finfo(real).max / math.prod(min(n, max_dim) for n in whole_shape(d, at))
    squares = lambda x: jnp.minimum(tree.abs_sq(x).astype(real), cap)  # noqa: E731
    sums = jnp.stack([mode_product(squares(x), one_hots, transpose=True) for x in (d, m)])
    if split_over(placement):
        sums = jax.lax.psum(sums, split_over(placement))
    ratio = _ratio(tree.root(sums[1]), tree.root(sums[0]))  # per block
    return jnp.where(grafting, d * ratio[jnp.ix_(*blocks)], m)


def _ratio(m_norm: jax.Array, d_norm: jax.Array) -> jax.Array:
    # ||m|| / ||d||, 0 where ||d|| = 0 (the update is then 0, not NaN).
    return jnp.where(d_norm == 0, 0, m_norm / jnp.where(d_norm == 0, 1, d_norm))
