"""Differential privacy: per-example clipping and Gaussian noise (Abadi et al. 2016).

The updates handed to :func:`differentially_private_aggregate` are per-example
gradients, with the examples on axis 0 of every leaf (``jax.vmap(jax.grad(...))``);
it returns one aggregated, privatised gradient shaped like the params, so it
goes first in a chain.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.chain(jz.differentially_private_aggregate(1.0, 1.1, key=0), jz.sgd(0.1))
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, expects_state, init_only
from jaxopt_zoo.sharding import require_whole_arrays
from jaxopt_zoo.transforms.clipping import _clip_norm, per_example_global_norm_clip
from jaxopt_zoo.transforms.noise import resolve_key

__all__ = ["DifferentiallyPrivateAggregateState", "differentially_private_aggregate"]


class DifferentiallyPrivateAggregateState(NamedTuple):
    """The PRNG key the next step splits."""

    rng_key: jax.Array


@init_only("key", "seed")
def differentially_private_aggregate(
    l2_norm_clip: jax.typing.ArrayLike,
    noise_multiplier: jax.typing.ArrayLike,
    key: jax.Array | int | None = None,
    *,
    seed: int | None = None,
) -> GradientTransformation:
    """DP-SGD's aggregation (Abadi et al. 2016): clip each example's gradient, sum, add Gaussian noise, average.

    .. math::

        u = \\frac{1}{B} \\Big( \\sum_{b=1}^{B} g_b \\min\\!\\Big(1, \\frac{C}{\\|g_b\\|}\\Big)
        + \\sigma C\\, \\xi \\Big), \\qquad \\xi \\sim \\mathcal{N}(0, I),

    where :math:`g_b` is example :math:`b`'s gradient (axis 0 of every leaf),
    :math:`\\|g_b\\|` its global norm over all leaves, :math:`C` the
    ``l2_norm_clip`` and :math:`\\sigma` the ``noise_multiplier``. Each step
    splits the state's key into the next key and one key per leaf (in tree
    order), and each leaf draws standard normal noise in its dtype.

    Numerically ``optax.contrib.differentially_private_aggregate``, draws
    included, for the same ``key`` (an integer seed or a ``jax.random.key``);
    ``seed`` is Optax's deprecated spelling of an integer ``key``, and no key
    means seed 0 with a warning, as in Optax. Differences: bad arguments raise
    when the transformation is built; ``None`` leaves stay ``None`` and draw no
    key; inside ``shard_map`` a leaf sharded over a mesh axis raises (each shard
    would draw its own copy of the noise, and see only its part of each
    example's norm): call it under ``jax.jit`` with sharded arrays, where it is
    exact and the draws are the unsharded ones; each ``init`` gets its own key
    (Optax's hands every ``init`` the one key made from the seed, or the
    caller's key, which a donated step deletes: the next ``init`` then fails).

    Not for :class:`~jaxopt_zoo.MultiSteps` or :func:`~jaxopt_zoo.apply_every`:
    the noise and the clipping belong to one batch.

    Args:
        l2_norm_clip: :math:`C \\ge 0`, finite, the largest norm of an example's gradient.
        noise_multiplier: :math:`\\sigma \\ge 0`, the noise's standard deviation relative to :math:`C`.
        key: an integer seed or a ``jax.random.key``.
        seed: deprecated: an integer seed; give ``key`` instead.

    Example:
        >>> import jax, jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.differentially_private_aggregate(l2_norm_clip=1.0, noise_multiplier=0.0, key=0)
        >>> per_example = {"w": jnp.array([[3.0, 4.0], [0.0, 0.5]])}  # norms 5 (clipped to 1) and 0.5
        >>> tx.update(per_example, tx.init(None))[0]  # ([0.6, 0.8] + [0.0, 0.5]) / 2
        {'w': Array([0.3 , 0.65], dtype=float32)}

    References:
        Abadi et al., "Deep Learning with Differential Privacy", CCS 2016 (Algorithm 1).
    """
    owner = "differentially_private_aggregate"
    _clip_norm(owner, "l2_norm_clip", l2_norm_clip, finite=True)  # the noise is C * sigma
    validation.non_negative(owner, "noise_multiplier", noise_multiplier)
    initial_key = resolve_key(owner, key, seed)
    noise_std = l2_norm_clip * noise_multiplier

    def init(params):
        del params
        return DifferentiallyPrivateAggregateState(initial_key())

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        require_whole_arrays(owner, updates, operation=(
            "each shard would draw its own copy of the noise and see only its part of each example's norm"))
        leaves, treedef = jax.tree.flatten(updates)  # None is an empty subtree: no key, stays None
        if not leaves or any(g.ndim == 0 for g in leaves):
            raise ValueError(
                f"{owner}: updates must be per-example gradients, each leaf with the batch on axis 0 "
                f"(e.g. from jax.vmap(jax.grad(loss), in_axes=(None, 0))), got shapes {[g.shape for g in leaves]}."
            )
        batch_size = leaves[0].shape[0]
        clipped, _ = per_example_global_norm_clip(leaves, l2_norm_clip)
        next_key, *keys = jax.random.split(state.rng_key, len(leaves) + 1)
        noised = [(g + noise_std * jax.random.normal(k, g.shape, g.dtype)) / batch_size for g, k in zip(clipped, keys)]
        return jax.tree.unflatten(treedef, noised), DifferentiallyPrivateAggregateState(next_key)

    return expects_state(owner, GradientTransformation(init, update), DifferentiallyPrivateAggregateState)
