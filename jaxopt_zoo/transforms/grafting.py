"""Grafting (Agarwal et al. 2020): one transformation's direction with another's step size, leaf by leaf.

Shampoo's and SOAP's preconditioned directions have no natural scale; grafting borrows the norm of a simpler
optimizer's step (Adam, RMSprop, Adagrad, SGD), so that learning-rate schedules tuned for that optimizer carry over.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree
from jaxopt_zoo.base import GradientTransformation, OptState, expects_state
from jaxopt_zoo.combine import as_transformation
from jaxopt_zoo.sharding import AxisName

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
    axis_name: AxisName = None,
) -> GradientTransformation:
    """``direction``'s update of each leaf, rescaled to the norm of ``magnitude``'s update of the same leaf.

    .. math::

        u = d \\, \\frac{\\|m\\|_F}{\\|d\\|_F} \\quad (0 \\text{ where } d = 0),

    with :math:`m` and :math:`d` the two transformations' updates of the same gradients (both see the same
    ``params`` and extra arguments). Norms are per leaf ("layer-wise grafting", as in Agarwal et al. and in
    heavyball); inside ``shard_map``, ``axis_name`` names the mesh axes the leaves may be sharded over, so that each
    norm is that of the whole leaf. ``active``, a function of the direction's new state, says on which steps to
    graft; on the others the magnitude's update passes unchanged (Distributed Shampoo's steps before its
    preconditioner starts).

    Differences from heavyball 3.2.1's grafting: where the direction's norm is 0 the update is 0 (heavyball divides
    by :math:`\\max(\\|d\\|, 10^{-6})`, which scales directions smaller than that by less). Distributed Shampoo
    grafts each of its blocks separately; here the blocks of a leaf share the leaf's norm.

    Args:
        magnitude: the transformation whose update norms are used (e.g. ``jz.scale_by_adam()``).
        direction: the transformation whose update directions are used (e.g. ``jz.scale_by_shampoo()``).
        active: ``None`` (always graft) or a function of the direction's new state returning whether to graft
            this step (a boolean scalar).
        axis_name: inside ``shard_map``, the mesh axes the leaves may be sharded over.

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

    def init(params):
        return GraftState(magnitude.init(params), direction.init(params))

    def update(updates, state, params=None, **extra_args):
        m_updates, m_state = magnitude.update(updates, state.magnitude, params, **extra_args)
        d_updates, d_state = direction.update(updates, state.direction, params, **extra_args)
        grafting = True if active is None else active(d_state)

        def grafted(d: jax.Array, m: jax.Array) -> jax.Array:
            d_norm = jnp.sqrt(tree.sum_of_squares(d, axis_name, owner))
            m_norm = jnp.sqrt(tree.sum_of_squares(m, axis_name, owner))
            scale = jnp.where(d_norm == 0, 0, m_norm / jnp.where(d_norm == 0, 1, d_norm))
            return jnp.where(grafting, d * scale, m).astype(d.dtype)

        return tree.map_updates(grafted, d_updates, m_updates), GraftState(m_state, d_state)

    return expects_state(owner, GradientTransformation(init, update), GraftState)

