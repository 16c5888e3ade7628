"""Clipping: bound updates elementwise, by block RMS, by global norm, or relative to the parameters."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, init_empty_state
from jaxopt_zoo.docstrings import document_args
from jaxopt_zoo.sharding import AxisName, manual_context, axis_size, require_whole_arrays, sum_over_shards, varying_axes


def clip(max_delta: jax.typing.ArrayLike) -> GradientTransformation:
    """Clip each coordinate: :math:`u = \\operatorname{clip}(g, -\\delta, \\delta)`.

    Complex params (at ``init``) and complex updates raise a ``ValueError`` naming ``clip``,
    where ``optax.clip`` fails inside ``jnp.clip`` at the first update: :math:`[-\\delta, \\delta]`
    orders numbers, and complex ones have no order. Wrapped in
    :func:`~jaxopt_zoo.split_real_and_imaginary` it clips the real and imaginary parts apart;
    :func:`clip_by_global_norm` and :func:`clip_by_block_rms` bound the modulus instead.

    Args:
        max_delta: :math:`\\delta \\ge 0`, the largest magnitude a coordinate keeps (a number or scalar array;
            a negative one raises ``ValueError``).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> jz.clip(1.0).update(jnp.array([-3.0, 0.5, 2.0]), jz.EmptyState())[0]
        Array([-1. ,  0.5,  1. ], dtype=float32)
    """
    owner = "clip"
    validation.non_negative(owner, "max_delta", max_delta)
    why = ("clipping each coordinate to [-max_delta, max_delta] needs an order, which complex numbers do not have; "
           "clip_by_global_norm and clip_by_block_rms bound the modulus instead")

    def init(params):
        validation.refuse_complex(owner, params, why)
        return init_empty_state(params)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        validation.refuse_complex(owner, updates, why)  # a stateless transform is often updated without init
        return tree.map_updates(lambda g: jnp.clip(g, -max_delta, max_delta), updates), state

    return GradientTransformation(init, update)


def clip_by_block_rms(threshold: jax.typing.ArrayLike, *, axis_name: AxisName = None) -> GradientTransformation:
    """Rescale each leaf whose root mean square exceeds the threshold:
    :math:`u = g / \\max\\big(1, \\operatorname{rms}(g) / c\\big)`.

    Args:
        threshold: :math:`c > 0`, the largest root mean square a leaf keeps (else ``ValueError``).
        axis_name: (an addition to Optax) inside ``shard_map``, the mesh axes the leaves may be sharded over
            (a name or a tuple of names), so each RMS is the whole leaf's; without it a leaf that varies over a
            mesh axis raises, and ``()`` asks for each shard's own RMS.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.clip_by_block_rms(1.0)
    """
    owner = "clip_by_block_rms"
    validation.positive(owner, "threshold", threshold)
    axis_name = validation.axis_name(owner, axis_name)

    def rms(g):
        if not (axis_name or varying_axes(g)):
            return tree.root(jnp.mean(tree.abs_sq(g)))  # Optax's operations
        return tree.root(tree.sum_of_squares(g, axis_name, owner) / (g.size * axis_size(owner, g, axis_name)))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        return tree.map_updates(lambda g: g / jnp.maximum(1.0, rms(g) / threshold), updates), state

    return GradientTransformation(init_empty_state, update)


def clip_by_global_norm(max_norm: jax.typing.ArrayLike, *, axis_name: AxisName = None) -> GradientTransformation:
    """Rescale all updates together when their global norm exceeds ``max_norm`` (Pascanu et al. 2013):

    .. math::

        u = \\begin{cases} g & \\|g\\| \\le c \\\\ c \\, g / \\|g\\| & \\text{otherwise,} \\end{cases}
        \\qquad \\|g\\| = \\sqrt{\\textstyle\\sum_i \\|g_i\\|^2}.

    Numerically ``optax.clip_by_global_norm``, except that a gradient whose
    norm equals ``max_norm`` is kept as it is (Optax forms :math:`c\\, g / \\|g\\|`):
    at ``max_norm = 0`` (given, injected or reached by a schedule) every update
    is 0, where Optax's is NaN for zero gradients. Integer gradients give float32 updates (Optax raises).

    Under ``jit`` with sharded arrays the norm is exact as it is; inside ``shard_map`` pass ``axis_name``.

    Args:
        max_norm: :math:`c \\ge 0`, the largest global norm the updates keep (a number or scalar array; a
            negative one raises ``ValueError``).
        axis_name: inside ``shard_map`` (an addition to Optax, whose norm there is silently the local shard's),
            the mesh axes the updates may be sharded over (a name or a tuple of names): each leaf's sum of squares
            is summed over those it varies along. Without ``axis_name``, updates that vary over a mesh axis
            raise; ``()`` asks for each shard's own norm.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.chain(jz.clip_by_global_norm(1.0), jz.adamw(1e-3))
        >>> sharded = jz.clip_by_global_norm(1.0, axis_name=("data", "model"))  # inside shard_map

    References:
        Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks", ICML 2013.
    """
    validation.non_negative("clip_by_global_norm", "max_norm", max_norm)
    axis_name = validation.axis_name("clip_by_global_norm", axis_name)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        updates = tree.map_updates(tree.as_inexact, updates)  # integer squares would wrap, their results truncate
        norm = tree.global_norm(updates, axis_name, "clip_by_global_norm")
        keep = norm <= max_norm  # (a max_norm injected as 0 keeps a zero gradient: 0 / 0 else)
        # The cast keeps g's dtype when max_norm is a wider array (e.g. injected as float32); the untaken branch
        # of a zero gradient divides by 0 (its slope kept finite).
        scale = lambda g: jax.lax.select(
            keep, g, (tree.divide_with_finite_slope(g, norm.astype(g.dtype)) * max_norm).astype(g.dtype))
        return tree.map_updates(scale, updates), state

    return GradientTransformation(init_empty_state, update)


def unitwise_norm(x: jax.Array, axis: int | tuple[int, ...] | None = None) -> jax.Array:
    """The norm of each output unit of a weight, broadcast to ``x``'s shape (for :func:`adaptive_grad_clip`).

    Args:
        x: a weight or its gradient (complex entries count by their modulus).
        axis: the axes each unit's norm is taken over (each index along the remaining axes is a unit).
            Without ``axis``: the whole array for scalars and vectors (size-1 dimensions aside), axis 0 for
            matrices and 3-D (multi-head) weights, all but the last axis for 4-D and 5-D convolution kernels
            (HWIO, DHWIO); other ranks raise ``ValueError``.
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
    return tree.root(jnp.sum(tree.abs_sq(x), axis=axis, keepdims=True))


def unitwise_clip(
    g_norm: jax.typing.ArrayLike,
    max_norm: jax.typing.ArrayLike,
    grad: jax.typing.ArrayLike,
    div_eps: jax.typing.ArrayLike = 1e-6,
) -> jax.Array:
    """Rescale each unit of ``grad`` whose norm reaches ``max_norm`` to that norm: :math:`g \\min(1, m/\\|g\\|)`.

    Optax's function of the same name; shapes that differ raise ``ValueError``.

    Args:
        g_norm: the norm of ``grad``'s unit at each element, broadcast to ``grad``'s shape (see
            :func:`unitwise_norm`).
        max_norm: the largest norm of each unit, shaped like ``grad`` too.
        grad: the gradient array to clip.
        div_eps: the least divisor: where a unit is clipped its scale is ``max_norm / max(g_norm, div_eps)``. It
            only guards the division, and acts only where ``max_norm <= g_norm < div_eps`` (the unit then ends
            below ``max_norm``); elsewhere the gradient is kept or scaled to ``max_norm``.

    Example:
        >>> import jax.numpy as jnp
        >>> import jaxopt_zoo as jz
        >>> g = jnp.asarray([3.0, 4.0])
        >>> jz.unitwise_clip(jnp.full(2, 5.0), jnp.full(2, 1.0), g)
        Array([0.6, 0.8], dtype=float32)
    """
    if not jnp.shape(g_norm) == jnp.shape(max_norm) == jnp.shape(grad):
        raise ValueError(
            f"unitwise_clip: g_norm, max_norm and grad must have one shape, got {jnp.shape(g_norm)}, "
            f"{jnp.shape(max_norm)} and {jnp.shape(grad)} (broadcast the norms with unitwise_norm)."
        )
    return jnp.where(g_norm < max_norm, grad, grad * (max_norm / jnp.maximum(g_norm, div_eps)))


@document_args(unitwise_norm)
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
    under ``jit`` with sharded arrays, where it is exact. ``update`` needs the
    params (it raises without them).

    Args:
        clipping: :math:`\\lambda \\ge 0`, the largest ratio of a unit's gradient norm to its parameter norm.
        eps: :math:`\\varepsilon \\ge 0`, the least parameter norm a unit is given (so that units at zero, such
            as freshly zeroed biases, still move).

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
        return unitwise_clip(g_norm, limit, g)

    def update(updates, state, params=None, **extra_args):
        del extra_args
        validation.require_params("adaptive_grad_clip", params)
        tree.check_same_structure("adaptive_grad_clip", updates, params, "the params")
        require_whole_arrays("adaptive_grad_clip", (updates, params))
        return tree.map_updates(clip_unitwise, updates, params), state

    return GradientTransformation(init_empty_state, update)


def _clip_norm(owner: str, name: str, value: jax.typing.ArrayLike, *, finite: bool = False) -> None:
    # A clip norm may be +inf (no clipping), unlike the finite hyperparameters validation.non_negative takes,
    # unless it also scales something else (``finite``: the noise of differential privacy).
    if isinstance(value, jax.core.Tracer):
        return
    try:
        array = None if isinstance(value, (bool, np.bool_)) else np.asarray(value)
    except (TypeError, ValueError):
        array = None
    number = float(array) if array is not None and array.ndim == 0 and array.dtype.kind in "iuf" else None
    if number is None or not number >= 0 or (finite and number == np.inf):
        kind = "a finite real number >= 0" if finite else "a real number >= 0 (inf for no clipping)"
        raise ValueError(f"{owner}: {name} must be {kind}, got {value!r}.")


def _per_example_leaves(owner: str, grads: Any) -> list[jax.Array]:
    leaves = [g for g in jax.tree.leaves(grads) if g is not None]
    batch = {jnp.shape(g)[0] if jnp.ndim(g) else None for g in leaves}
    if len(batch) != 1 or None in batch:
        raise ValueError(
            f"{owner}: every leaf of grads must have the same batch dimension on axis 0 (one gradient per "
            f"example), got shapes {jax.tree.map(jnp.shape, grads)}."
        )
    return leaves


def _per_example_sq_norms(owner: str, leaves: list[jax.Array], axis_name: AxisName) -> jax.Array:
    # |g_b|^2 per example b; each leaf's squares formed as Optax forms them (re^2 + im^2).
    partials = [(jnp.sum(jnp.square(g.real) + jnp.square(g.imag), axis=tuple(range(1, g.ndim))), g) for g in leaves]
    if not axis_name:  # None: exact outside shard_map, raises on sharded leaves inside; (): per shard
        return sum_over_shards(owner, partials, axis_name)
    # Only the named (feature) axes are summed over; a leaf may also vary over axes that split the batch,
    # whose shards hold whole examples.
    context = manual_context()
    if context.manual and not context.tracked:
        raise ValueError(
            f"{owner}: inside shard_map(..., check_vma=False) nothing tells which leaves are split over "
            f"axis_name={axis_name!r}; use check_vma=True (the default)."
        )
    summed = [jax.lax.psum(s, axes) if (axes := tuple(a for a in axis_name if a in varying_axes(g))) else s
              for s, g in partials]
    return sum(summed[1:], summed[0])


def _clipped_sum(owner: str, leaves: list[jax.Array], clip_norm: jax.typing.ArrayLike, axis_name: AxisName):
    norms = tree.root(_per_example_sq_norms(owner, leaves, axis_name))
    # 0/0 (a zero gradient with a zero clip norm) and inf/inf keep the example as it is.
    multipliers = jnp.nan_to_num(jnp.minimum(clip_norm / norms, 1.0), nan=1.0)
    return multipliers, jnp.sum(multipliers < 1.0)


def per_example_global_norm_clip(
    grads: Any, l2_norm_clip: jax.typing.ArrayLike, *, axis_name: AxisName = None
) -> tuple[Any, jax.Array]:
    """Clip each example's gradient to a global norm, then sum over the batch (DP-SGD, Abadi et al. 2016):

    .. math::

        u = \\sum_b g_b \\min\\!\\Big(1, \\frac{C}{\\|g_b\\|}\\Big), \\qquad
        \\|g_b\\| = \\sqrt{\\textstyle\\sum_i \\|g_{b,i}\\|^2},

    where axis 0 of every leaf indexes the examples. Returns the clipped sum
    (leaves without the batch axis) and how many examples were clipped. A
    function, not a transformation; numerically ``optax.per_example_global_norm_clip``.
    ``None`` leaves stay ``None``.

    Args:
        grads: a tree of per-example gradients: axis 0 of every leaf that is not ``None`` indexes the examples,
            the same number in every leaf (else ``ValueError``).
        l2_norm_clip: :math:`C \\ge 0`, the largest global norm an example keeps (``inf``: no clipping; a
            negative or NaN one raises ``ValueError``).
        axis_name: (an addition to Optax) inside ``shard_map``, the mesh axes the per-example gradients'
            *feature* axes (1 and up) may be split over; each example's squared norm is summed over those a leaf
            varies along, so it is the whole example's. Other axes a leaf varies along are taken to split the
            batch (each device then holds whole examples), and the returned sums and counts are that device's:
            ``psum`` them over those axes yourself. Without ``axis_name`` a leaf split over any mesh axis raises;
            with only the batch split, ``axis_name=()`` says so. Needs ``check_vma=True``.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxopt_zoo.transforms.clipping import per_example_global_norm_clip
        >>> grads = [jnp.array([[0.0, 3.0, 4.0], [4.0, 0.0, 3.0]])]
        >>> per_example_global_norm_clip(grads, 2.5)
        ([Array([2. , 1.5, 3.5], dtype=float32)], Array(2, dtype=int32))

    References:
        Abadi et al., "Deep Learning with Differential Privacy", CCS 2016.
    """
    owner = "per_example_global_norm_clip"
    _clip_norm(owner, "l2_norm_clip", l2_norm_clip)
    axis_name = validation.axis_name(owner, axis_name)
    multipliers, clipped = _clipped_sum(owner, _per_example_leaves(owner, grads), l2_norm_clip, axis_name)
    summed = jax.tree.map(lambda g: None if g is None else jnp.tensordot(multipliers, g, axes=1), grads,
                          is_leaf=tree.is_none)
    return summed, clipped


@document_args(per_example_global_norm_clip)
def per_example_layer_norm_clip(
    grads: Any, global_l2_norm_clip: jax.typing.ArrayLike, uniform: bool = True, *, axis_name: AxisName = None
) -> tuple[Any, Any]:
    """Clip each example's gradient leaf by leaf, then sum over the batch (McMahan et al. 2017).

    Leaf :math:`i` of :math:`K` (of :math:`D_i` per-example elements, :math:`D`
    in all) is clipped as by :func:`per_example_global_norm_clip` to

    .. math::

        C_i = C / \\sqrt{K} \\ (\\text{uniform}), \\qquad C_i = C \\sqrt{D_i / D} \\ (\\text{otherwise}),

    so that the clipped example's global norm is at most :math:`C`. Returns the
    tree of clipped sums and the tree of per-leaf clipped-example counts.
    Numerically ``optax.per_example_layer_norm_clip``; ``None`` leaves stay
    ``None`` in both trees (and are not counted in :math:`K` or :math:`D`).

    Args:
        global_l2_norm_clip: :math:`C \\ge 0`, the bound on each clipped example's global norm (``inf``: no
            clipping; a negative or NaN one raises ``ValueError``).
        uniform: split :math:`C` evenly over the leaves (``True``) or in proportion to the square root of their
            sizes (``False``), as above.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxopt_zoo.transforms.clipping import per_example_layer_norm_clip
        >>> grads = {"w": jnp.array([[3.0, 4.0], [0.0, 1.0]]), "b": jnp.array([[2.0], [0.0]])}
        >>> sums, clipped = per_example_layer_norm_clip(grads, 2.0)
        >>> clipped
        {'b': Array(1, dtype=int32), 'w': Array(1, dtype=int32)}

    References:
        McMahan, Ramage, Talwar & Zhang, "Learning Differentially Private Recurrent Language Models", ICLR 2018.
    """
    owner = "per_example_layer_norm_clip"
    _clip_norm(owner, "global_l2_norm_clip", global_l2_norm_clip)
    validation.flag(owner, "uniform", uniform)
    axis_name = validation.axis_name(owner, axis_name)
    leaves = _per_example_leaves(owner, grads)

    def example_size(g):  # D_i: elements per example of the whole leaf, also inside shard_map
        split = [jax.lax.axis_size(a) for a in (axis_name or ()) if a in varying_axes(g)]
        return g[0].size * math.prod(split)

    total = sum(example_size(g) for g in leaves)

    def clip_leaf(g):
        share = (1.0 / len(leaves)) ** 0.5 if uniform else (example_size(g) / total) ** 0.5
        multipliers, clipped = _clipped_sum(owner, [g], global_l2_norm_clip * share, axis_name)
        return jnp.tensordot(multipliers, g, axes=1), clipped

    flat, treedef = jax.tree.flatten(grads, is_leaf=tree.is_none)
    results = [(None, None) if g is None else clip_leaf(g) for g in flat]
    return tuple(jax.tree.unflatten(treedef, part) for part in zip(*results)) if flat else (grads, grads)
