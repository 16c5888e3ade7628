"""Cautious optimizers (Liang et al. 2024): any optimizer's step, kept only where it agrees in sign with the gradient.

:func:`cautious` wraps a transformation that turns gradients into a descent direction (``scale_by_adam``,
``scale_by_lion``, ``trace``, ...): each entry of the direction whose sign disagrees with the current gradient is
zeroed, and the entries kept are scaled up so that the step keeps its size on average. It has no hyperparameter and
keeps no state of its own; the paper's C-AdamW and C-Lion are :func:`jaxopt_zoo.cautious_adamw` and
:func:`jaxopt_zoo.cautious_lion`.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.chain(jz.cautious(jz.scale_by_adam()), jz.add_decayed_weights(0.1), jz.scale_by_learning_rate(1e-3))
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, OptState, expects_state
from jaxopt_zoo.combine import as_transformation
from jaxopt_zoo.sharding import AxisName, axis_size, sum_over_shards
from jaxopt_zoo.tree import as_inexact, map_updates

__all__ = ["CautiousState", "cautious"]


class CautiousState(NamedTuple):
    """The state of the wrapped transformation (``cautious`` keeps none of its own)."""

    inner: OptState


def _agrees(g: jax.Array, u: jax.Array) -> jax.Array:
    # u * g > 0 entry by entry, from the signs (a product of two tiny numbers could underflow to 0).
    if jnp.iscomplexobj(g) or jnp.iscomplexobj(u):
        return jnp.real(jnp.conj(g) * u) > 0
    return (jnp.sign(as_inexact(g)) == jnp.sign(u)) & (u != 0)  # (jnp.sign refuses bools)


def cautious(inner: GradientTransformation, *, axis_name: AxisName = None) -> GradientTransformation:
    """``inner``'s direction, zeroed where its sign disagrees with the gradient's and rescaled (Liang et al. 2024).

    .. math::

        u_t = \\mathrm{inner}(g_t), \\qquad \\phi_t = \\mathbb{1}[u_t \\odot g_t > 0], \\qquad
        \\tilde u_t = \\frac{d}{\\operatorname{nnz}(\\phi_t) + 1}\\; \\phi_t \\odot u_t,

    per leaf, :math:`d` being the leaf's size (the paper's :math:`\\bar\\epsilon_t = \\epsilon_t\\, d /
    (\\operatorname{nnz}(\\phi_t) + 1)`). The incoming updates are the gradient :math:`g_t` and must still have its
    sign: put ``cautious`` first in a chain, or after transformations that keep signs (gradient clipping). ``inner``
    must return a *descent direction before the learning rate*, with the gradient's sign where it agrees
    (``scale_by_adam``, ``scale_by_lion``, ``trace``, ``scale_by_sign``, ...): so ``cautious`` goes before
    ``scale_by_learning_rate`` (whose negative factor would invert every sign) and before
    ``add_decayed_weights`` (whose decay the mask must not touch: C-AdamW's decay is unmasked, applied to all
    entries as in AdamW). ``inner`` gets the same ``params`` and extra arguments.

    Differences from the paper and its reference implementations: none from the paper's Algorithm 1
    (:math:`u \\odot g > 0`, scale :math:`d / (\\operatorname{nnz} + 1)`, so a kept step is shrunk by
    :math:`d / (d + 1)` when no entry is masked: by half for a scalar leaf). The authors' current code
    (C-Optim) scales by :math:`1 / \\max(\\operatorname{mean}(\\phi), 10^{-3})` instead (its "original
    implementation", kept as a comment there, is the paper's). heavyball 3.2.1's ``caution`` keeps the entries
    whose *sign bits* agree, so it also keeps a :math:`+0` gradient against a positive direction (here masked, as
    :math:`u g = 0`), and scales by :math:`d / \\max(\\operatorname{nnz}, 1)`. For complex leaves the agreement is
    :math:`\\operatorname{Re}(\\bar g\\, u) > 0` (an addition). A non-finite direction stays non-finite (it is
    multiplied by the mask, not selected), so ``apply_if_finite`` still sees it.

    Sharding: the count :math:`\\operatorname{nnz}` and the size :math:`d` are those of the whole leaf. Under
    ``jit`` on sharded arrays this is exact as it is; inside ``shard_map`` pass ``axis_name`` (the mesh axes the
    leaves may be split over): without it a sharded leaf raises rather than count one shard.

    Args:
        inner: the transformation whose direction is masked (any transformation, Optax's included).
        axis_name: inside ``shard_map``, the mesh axes the leaves may be sharded over.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.cautious(jz.scale(2.0))  # any inner transformation: here u = 2 g agrees everywhere
        >>> g = jnp.array([1.0, -2.0, 0.0, 3.0])
        >>> updates, _ = tx.update(g, tx.init(g))
        >>> updates  # 2 g, the zero masked, the rest scaled by d / (nnz + 1) = 4 / 4
        Array([ 2., -4.,  0.,  6.], dtype=float32)
        >>> tx = jz.cautious(jz.trace(decay=0.9))  # heavy-ball momentum b = g + 0.9 b
        >>> _, state = tx.update(jnp.array([1.0, 1.0]), tx.init(jnp.zeros(2)))
        >>> updates, state = tx.update(jnp.array([-0.5, 2.0]), state)  # b = [0.4, 2.9]: the first disagrees
        >>> updates  # scaled by d / (nnz + 1) = 2 / 2
        Array([0. , 2.9], dtype=float32)

    References:
        Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One Line of Code", 2024,
        arXiv:2411.16085.
    """
    owner = "cautious"
    inner = as_transformation(owner, inner)
    axis_name = validation.axis_name(owner, axis_name)

    def masked(g: jax.Array, u: jax.Array) -> jax.Array:
        agree = _agrees(g, u)
        kept = sum_over_shards(owner, [(jnp.sum(agree, dtype=jnp.int32), u)], axis_name)
        size = jnp.size(u) * axis_size(owner, u, axis_name)
        real = jnp.finfo(u.dtype).dtype if jnp.issubdtype(u.dtype, jnp.inexact) else jnp.float32
        dtype = jnp.promote_types(real, jnp.float32)
        scale = jnp.asarray(size, dtype) / (kept.astype(dtype) + 1)
        return (u * (agree.astype(dtype) * scale)).astype(u.dtype)

    def init(params):
        return CautiousState(inner.init(params))

    def update(updates, state, params=None, **extra_args):
        directions, inner_state = inner.update(updates, state.inner, params, **extra_args)
        return map_updates(masked, updates, directions), CautiousState(inner_state)

    return expects_state(owner, GradientTransformation(init, update), CautiousState)
