"""Clipping: bound updates elementwise, by block RMS, by global norm, or relative to the parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, init_empty_state
from jaxopt_zoo.sharding import AxisName, axis_size, require_whole_arrays, varying_axes


def clip(max_delta: jax.typing.ArrayLike) -> GradientTransformation:
    """Clip each coordinate: :math:`u = \\operatorname{clip}(g, -\\delta, \\delta)`.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> jz.clip(1.0).update(jnp.array([-3.0, 0.5, 2.0]), jz.EmptyState())[0]
        Array([-1. ,  0.5,  1. ], dtype=float32)
    """
    validation.non_negative("clip", "max_delta", max_delta)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        return tree.map_updates(lambda g: jnp.clip(g, -max_delta, max_delta), updates), state

    return GradientTransformation(init_empty_state, update)


def clip_by_block_rms(threshold: jax.typing.ArrayLike, *, axis_name: AxisName = None) -> GradientTransformation:
    """Rescale each leaf whose root mean square exceeds the threshold:
    :math:`u = g / \\max\\big(1, \\operatorname{rms}(g) / c\\big)`.

    ``axis_name`` (an addition to Optax): inside ``shard_map``, the mesh axes
    the leaves may be sharded over, so each RMS is the whole leaf's.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.clip_by_block_rms(1.0)
    """
    owner = "clip_by_block_rms"
    validation.positive(owner, "threshold", threshold)
    axis_name = validation.axis_name(owner, axis_name)

    def rms(g):
        if not (axis_name or varying_axes(g)):
            return jnp.sqrt(jnp.mean(tree.abs_sq(g)))  # Optax's operations
        return jnp.sqrt(tree.sum_of_squares(g, axis_name, owner) / (g.size * axis_size(owner, g, axis_name)))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        return tree.map_updates(lambda g: g / jnp.maximum(1.0, rms(g) / threshold), updates), state

    return GradientTransformation(init_empty_state, update)


def clip_by_global_norm(max_norm: jax.typing.ArrayLike, *, axis_name: AxisName = None) -> GradientTransformation:
    """Rescale all updates together when their global norm exceeds ``max_norm`` (Pascanu et al. 2013):

    .. math::

        u = \\begin{cases} g & \\|g\\| < c \\\\ c \\, g / \\|g\\| & \\text{otherwise,} \\end{cases}
        \\qquad \\|g\\| = \\sqrt{\\textstyle\\sum_i \\|g_i\\|^2}.

    Numerically ``optax.clip_by_global_norm``; ``max_norm`` must be positive
    (Optax accepts 0 and returns NaN for zero gradients).

    Under ``jit`` with sharded arrays the norm is exact as it is. Inside
    ``shard_map`` (an addition to Optax, whose norm there is silently the local
    shard's), pass ``axis_name``, the mesh axes the updates may be sharded
    over: each leaf's sum of squares is summed over those it varies along.
    Without ``axis_name``, updates that vary over a mesh axis raise.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.chain(jz.clip_by_global_norm(1.0), jz.adamw(1e-3))
        >>> sharded = jz.clip_by_global_norm(1.0, axis_name=("data", "model"))  # inside shard_map

    References:
        Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks", ICML 2013.
    """
    validation.positive("clip_by_global_norm", "max_norm", max_norm)
    axis_name = validation.axis_name("clip_by_global_norm", axis_name)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        norm = tree.global_norm(updates, axis_name, "clip_by_global_norm")
        keep = norm < max_norm
        # The cast keeps g's dtype when max_norm is a wider array (e.g. injected as float32).
        scale = lambda g: jax.lax.select(keep, g, ((g / norm.astype(g.dtype)) * max_norm).astype(g.dtype))
        return tree.map_updates(scale, updates), state

    return GradientTransformation(init_empty_state, update)


def unitwise_norm(x: jax.Array, axis: int | tuple[int, ...] | None = None) -> jax.Array:
    """The norm of each output unit of a weight, broadcast to ``x``'s shape (for :func:`adaptive_grad_clip`).

    Without ``axis``: the whole array for scalars and vectors, axis 0 for
    matrices and 3-D (multi-head) weights, all but the last axis for 4-D and 5-D
    convolution kernels (HWIO, DHWIO).
    """
    # Broadcast into x's own sharding: under Explicit mesh axes a plain broadcast
    # would be unsharded, and mixing it with x would be a sharding error.
    sharding = jax.typeof(x).sharding
    out_sharding = sharding if sharding.mesh.explicit_axes else None
    return jnp.broadcast_to(_unit_norms(x, axis), x.shape, out_sharding=out_sharding)


def _unit_norms(x: jax.Array, axis: int | tuple[int, ...] | None) -> jax.Array:
    if axis is None:
        if jnp.squeeze(x).ndim <= 1:
            axis = None
        elif x.ndim in (2, 3):
            axis = 0
        elif x.ndim in (4, 5):
            axis = tuple(range(x.ndim - 1))
        else:
            raise ValueError(
                f"adaptive_grad_clip: cannot tell the units of a parameter of shape {x.shape}; pass axis=..."
            )
    return jnp.sqrt(jnp.sum(tree.abs_sq(x), axis=axis, keepdims=True))


def adaptive_grad_clip(
    clipping: jax.typing.ArrayLike, eps: jax.typing.ArrayLike = 1e-3, axis: int | tuple[int, ...] | None = None
) -> GradientTransformation:
    """Adaptive gradient clipping (Brock et al. 2021), unit by unit:

    .. math::

        u = \\begin{cases} g & \\|g\\| < \\lambda \\max(\\|\\theta\\|, \\varepsilon) \\\\
        \\lambda \\max(\\|\\theta\\|, \\varepsilon) \\, g / \\|g\\| & \\text{otherwise,} \\end{cases}

    with the norms of :func:`unitwise_norm`. Numerically ``optax.adaptive_grad_clip``.

    Inside ``shard_map``, where a shard may hold whole units or parts of them
    and nothing tells which, arrays that vary over a mesh axis raise; use it
    under ``jit`` with sharded arrays, where it is exact.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.chain(jz.adaptive_grad_clip(0.01), jz.sgd(0.1, momentum=0.9))

    References:
        Brock, De, Smith & Simonyan, "High-Performance Large-Scale Image Recognition Without
        Normalization", ICML 2021.
    """
    validation.non_negative("adaptive_grad_clip", "clipping", clipping)
    validation.non_negative("adaptive_grad_clip", "eps", eps)

    def clip_unitwise(g, p):
        g_norm, limit = unitwise_norm(g, axis), clipping * jnp.maximum(unitwise_norm(p, axis), eps)
        # The 1e-6 floor only guards the division; where it could act, g is kept anyway.
        return jnp.where(g_norm < limit, g, g * (limit / jnp.maximum(g_norm, 1e-6)))

    def update(updates, state, params=None, **extra_args):
        del extra_args
        validation.require_params("adaptive_grad_clip", params)
        tree.check_same_structure("adaptive_grad_clip", updates, params, "the params")
        require_whole_arrays("adaptive_grad_clip", (updates, params))
        return tree.map_updates(clip_unitwise, updates, params), state

    return GradientTransformation(init_empty_state, update)
