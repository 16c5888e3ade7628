"""Scaling by a constant, a learning rate, or a schedule of the step count."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import validation
from jaxopt_zoo.base import (
    GradientTransformation,
    ScalarOrSchedule,
    Schedule,
    check_state,
    init_empty_state,
    safe_increment,
    zero_count,
)
from jaxopt_zoo.sharding import (
    AxisName,
    check_partition_specs,
    leaf_specs,
    manual_context,
    placement_of,
    require_whole_arrays,
    varying_axes,
)
from jaxopt_zoo.tree import global_norm, is_none, map_updates


def scale(step_size: jax.typing.ArrayLike) -> GradientTransformation:
    """Multiply updates by a constant: :math:`u_t = s \\, g_t`.

    Args:
        step_size: the scalar :math:`s` (any sign).

    ``scale(-1.0)`` first in a chain turns any optimizer into a maximizer
    (PyTorch's ``maximize=True``: the gradient is negated before anything else).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.scale(-0.01)   # plain gradient descent with rate 0.01
        >>> ascent = jz.chain(jz.scale(-1.0), jz.adam(1e-3))   # maximizes the objective
    """
    validation.real_scalar("scale", "step_size", step_size)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        return map_updates(lambda g: step_size * g, updates), state

    return GradientTransformation(init_empty_state, update)


class ScaleByScheduleState(NamedTuple):
    """The number of updates applied so far (int32, saturating)."""

    count: jax.Array


def scale_by_schedule(step_size_fn: Schedule) -> GradientTransformation:
    """Multiply updates by a schedule of the step count: :math:`u_t = s(t) \\, g_t`, :math:`t = 0, 1, ...`.

    Args:
        step_size_fn: a pure, jit-safe function of the int32 step count
            (0 on the first update) returning a scalar.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.scale_by_schedule(lambda t: -0.1 * 0.99**t)
    """
    if not callable(step_size_fn):
        raise ValueError(
            f"scale_by_schedule: step_size_fn must be a callable of the step count, got {step_size_fn!r}."
        )

    def init(params):
        del params
        return ScaleByScheduleState(count=zero_count())

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_state("scale_by_schedule", state, ScaleByScheduleState)
        step_size = step_size_fn(state.count)
        updates = map_updates(lambda g: jnp.asarray(step_size, dtype=g.dtype) * g, updates)
        return updates, ScaleByScheduleState(count=safe_increment(state.count))

    return GradientTransformation(init, update)


def scale_by_learning_rate(
    learning_rate: ScalarOrSchedule | None = None, *, flip_sign: bool = True
) -> GradientTransformation:
    """Multiply updates by the negative learning rate: :math:`u_t = -\\alpha_t \\, g_t`.

    Args:
        learning_rate: a constant :math:`\\alpha \\ge 0`, or a schedule
            :math:`\\alpha_t` (a callable of the step count, see
            :func:`~jaxopt_zoo.scale_by_schedule`). ``None`` means a rate of 1, so every
            optimizer given ``learning_rate=None`` still descends. Deviation from
            Optax, whose aliases then skip this step and so climb the gradient.
        flip_sign: when ``False``, scale by :math:`+\\alpha_t` (gradient ascent).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.chain(jz.scale_by_adam(), jz.scale_by_learning_rate(1e-3))
    """
    validation.flag("scale_by_learning_rate", "flip_sign", flip_sign)
    if learning_rate is None:
        learning_rate = 1.0
    validation.scalar_or_schedule("scale_by_learning_rate", "learning_rate", learning_rate)
    sign = -1 if flip_sign else 1
    if callable(learning_rate):
        return scale_by_schedule(lambda count: sign * learning_rate(count))
    if jnp.issubdtype(jnp.result_type(learning_rate), jnp.unsignedinteger):  # -1 times it would overflow or wrap
        learning_rate = (learning_rate.astype(jnp.result_type(float)) if isinstance(learning_rate, jax.core.Tracer)
                         else float(learning_rate))
    return scale(sign * learning_rate)


# --- Element-wise and whole-tree rescalings (Optax's scale_gradient, normalize_by_update_norm, centralize) ---


@jax.custom_vjp
def _scaled_backward(inputs, scale):
    del scale  # only the backward pass reads it
    return inputs


def _scaled_backward_forward(inputs, scale):
    return inputs, scale


def _scaled_backward_backward(scale, cotangents):
    # The cast keeps each cotangent's dtype (a float32 scale would widen a bfloat16 one, which JAX refuses).
    scaled = jax.tree.map(lambda c: (c * scale).astype(jnp.result_type(c)), cotangents)
    return scaled, None


_scaled_backward.defvjp(_scaled_backward_forward, _scaled_backward_backward)


def scale_gradient(inputs, scale: jax.typing.ArrayLike):
    """The identity on the forward pass; on the backward pass, gradients are multiplied by ``scale``.

    A function on arrays (a tree of them), not a transformation: for :math:`y = \\operatorname{scale\\_gradient}(x, s)`,
    :math:`y = x` and :math:`\\partial L / \\partial x = s \\, \\partial L / \\partial y`. A literal ``scale`` of 1
    returns ``inputs`` as they are and one of 0 is ``jax.lax.stop_gradient``, as in Optax.

    Numerically identical to ``optax.scale_gradient``. Deviations: a traced ``scale`` (under ``jit``, ``grad``
    of it, ...) is accepted (Optax tests it with ``==`` and raises); the scaled gradient keeps its dtype;
    a ``scale`` that is not a finite real number raises ``ValueError``.

    Args:
        inputs: an array or a tree of arrays.
        scale: the factor :math:`s` applied to the gradient flowing back through ``inputs`` (any sign).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxopt_zoo.transforms.scaling import scale_gradient
        >>> f = lambda x: jnp.sum(scale_gradient(x, 0.5) ** 2)
        >>> f(jnp.array([1.0, 2.0])), jax.grad(f)(jnp.array([1.0, 2.0]))  # 0.5 * 2x
        (Array(5., dtype=float32), Array([1., 2.], dtype=float32))
    """
    value = validation.real_scalar("scale_gradient", "scale", scale)
    if value == 1.0:
        return inputs
    if value == 0.0:
        return jax.lax.stop_gradient(inputs)
    return _scaled_backward(inputs, scale)


def normalize_by_update_norm(
    scale_factor: jax.typing.ArrayLike = 1.0, eps: jax.typing.ArrayLike = 1e-6, *, axis_name: AxisName = None
) -> GradientTransformation:
    """Divide the updates by their global norm: :math:`u = s \\, g / (\\|g\\| + \\epsilon)`,
    :math:`\\|g\\| = \\sqrt{\\textstyle\\sum_i \\|g_i\\|^2}` over all leaves.

    Every step then has length :math:`s` (just under it), whatever the gradient's scale: normalized
    gradient descent with ``scale_factor=-lr``. Stateless.

    Numerically identical to ``optax.normalize_by_update_norm`` (which forms :math:`(\\|g\\| + \\epsilon) / s`
    and divides by it; so does this). Deviations: each update keeps its dtype (in a tree mixing float32 and
    bfloat16 leaves Optax widens the bfloat16 ones); ``eps`` must be a non-negative, non-denormal number.
    Inside ``shard_map`` (an addition) pass ``axis_name``, the mesh axes the updates may be sharded over:
    each leaf's sum of squares is summed over those it varies along; without it, a sharded leaf raises.

    Args:
        scale_factor: :math:`s`, the length of the update (any sign; negative to descend).
        eps: :math:`\\epsilon \\ge 0`, added to the norm so a zero gradient gives a zero update.
        axis_name: inside ``shard_map``, the mesh axes to sum the norm over (see :mod:`jaxopt_zoo.sharding`).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxopt_zoo.transforms.scaling import normalize_by_update_norm
        >>> tx = normalize_by_update_norm(scale_factor=-1.0, eps=0.0)
        >>> updates, _ = tx.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, tx.init(None))
        >>> updates
        {'a': Array([-0.6], dtype=float32), 'b': Array([-0.8], dtype=float32)}

    References:
        Hazan, Levy & Shalev-Shwartz, "Beyond Convexity: Stochastic Quasi-Convex Optimization", NeurIPS 2015.
    """
    owner = "normalize_by_update_norm"
    validation.real_scalar(owner, "scale_factor", scale_factor)
    validation.epsilon(owner, "eps", eps)
    axis_name = validation.axis_name(owner, axis_name)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        divisor = (global_norm(updates, axis_name, owner) + eps) / scale_factor
        return map_updates(lambda g: (g / divisor.astype(g.dtype)).astype(g.dtype), updates), state

    return GradientTransformation(init_empty_state, update)


def _row_mean(owner: str, g: jax.Array, axis_name: AxisName, trailing: tuple[str, ...] | None) -> jax.Array:
    """The mean of each row of ``g`` (over every axis but the first), kept as a broadcastable array; inside
    ``shard_map`` averaged over the shards along the mesh axes ``trailing`` that split its trailing axes and
    that ``g`` varies along (``None``, unknown: ``g`` must vary over none of ``axis_name``)."""
    local = jnp.mean(g, tuple(range(1, g.ndim)), keepdims=True)
    if axis_name is None:
        require_whole_arrays(owner, g, remedy=(  # inside shard_map, a sharded leaf cannot tell which axis is split
            "Pass axis_name= (the shard_map axes) and partition_specs= (the updates' specs, shard_map's in_specs "
            "for the params), or hand it whole arrays."))
        return local
    context = manual_context()
    if context.manual and not context.tracked:
        raise ValueError(
            f"{owner}: inside shard_map(..., check_vma=False) nothing tells sharded arrays from replicated ones, so "
            "the row means cannot be made exact; use check_vma=True (the default)."
        )
    unknown = [name for name in axis_name if context.manual and name not in context.mesh_axes]
    if unknown:
        raise ValueError(f"{owner}: axis_name={axis_name!r} names {unknown}, not axes of the mesh {context.mesh_axes}.")
    unnamed = [name for name in trailing or () if context.manual and name not in axis_name]
    if unnamed:
        raise ValueError(f"{owner}: partition_specs splits a leaf's trailing axes over {unnamed}, which "
                         f"axis_name={axis_name!r} does not name; name every shard_map axis.")
    if trailing is None:  # no partition_specs: whether a named axis splits the rows or their entries is unknown
        ambiguous = sorted(name for name in axis_name if name in varying_axes(g))
        if ambiguous:
            raise ValueError(
                f"{owner}: inside shard_map, a leaf of local shape {jnp.shape(g)} varies over mesh axes {ambiguous}, "
                f"named in axis_name={axis_name!r}: whether they split its rows (whose means stay per shard) or the "
                "rows' entries (whose means are averaged over the shards) cannot be told from a shard. Pass "
                "partition_specs= (the updates' specs, shard_map's in_specs for the params).")
        return local
    split = tuple(name for name in trailing if name in varying_axes(g))
    # Every shard holds as many entries of a row, so the mean of the shards' row means is the row mean.
    return jax.lax.psum(local, split) / jax.lax.psum(1, split) if split else local


def centralize(*, axis_name: AxisName = None, partition_specs: Any = None) -> GradientTransformation:
    """Gradient centralization (Yong et al. 2020): subtract from each row of a leaf its mean,
    :math:`u_{i\\ldots} = g_{i\\ldots} - \\operatorname{mean}_{\\ldots}(g_{i\\ldots})`,
    the mean taken over every axis but the first. Scalars and vectors pass unchanged. Stateless.

    Numerically identical to ``optax.centralize`` (an integer gradient becomes floating, as there).

    Inside ``shard_map`` (an addition to Optax, whose means there are silently the shard's) pass ``axis_name``,
    the ``shard_map`` axes, and ``partition_specs``, the updates' specs (``shard_map``'s ``in_specs`` for the
    params): each row's mean is averaged over the shards of the axes that split the leaf's *trailing* axes
    (its rows' entries), and only those, since a shard of the first axis holds whole rows. Without
    ``partition_specs``, which of a shard's axes is split cannot be told: a leaf of two or more dimensions that
    varies over an axis named in ``axis_name`` raises (averaging over an axis that splits the rows would mix
    the means of different rows), and ``axis_name=()`` keeps every mean per shard (exact when only rows are
    split). Without ``axis_name``, such a leaf that varies over any mesh axis raises.

    Args:
        axis_name: inside ``shard_map``, the mesh axes (see above).
        partition_specs: inside ``shard_map``, the ``PartitionSpec`` of each update leaf (a tree or a prefix of
            one), as its ``in_specs`` for the params; ignored outside.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxopt_zoo.transforms.scaling import centralize
        >>> tx = centralize()
        >>> updates, _ = tx.update(jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0]]), tx.init(None))
        >>> updates
        Array([[-1.,  0.,  1.],
               [-2., -1.,  3.]], dtype=float32)

    References:
        Yong et al., "Gradient Centralization: A New Optimization Technique for Deep Neural Networks", ECCV 2020.
    """
    owner = "centralize"
    axis_name = validation.axis_name(owner, axis_name)
    check_partition_specs(owner, partition_specs)

    def center(g, spec=None):
        if g is None or g.ndim <= 1:
            return g
        trailing = None if spec is None else tuple(a for axes in placement_of(owner, spec, g.ndim)[1:] for a in axes)
        return g - _row_mean(owner, g, axis_name, trailing)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        specs = leaf_specs(owner, partition_specs, updates)
        if specs is None:
            return map_updates(center, updates), state
        leaves, treedef = jax.tree.flatten(updates, is_leaf=is_none)
        return treedef.unflatten([center(g, spec) for g, spec in zip(leaves, specs)]), state

    return GradientTransformation(init_empty_state, update)
