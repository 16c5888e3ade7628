"""Layer-wise trust ratios (LARS, LAMB): rescale each leaf's update to the norm of its parameter."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, init_empty_state
from jaxopt_zoo.sharding import AxisName


def scale_by_trust_ratio(
    min_norm: jax.typing.ArrayLike = 0.0,
    trust_coefficient: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 0.0,
    *,
    max_param_norm: jax.typing.ArrayLike | None = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """Scale each leaf's update by its trust ratio (You et al. 2017, 2020).

    For every parameter leaf :math:`\\theta` with update :math:`u`:

    .. math::

        \\phi = \\min\\big(\\max(\\|\\theta\\|, n_{\\min}), n_{\\max}\\big), \\qquad
        r = \\frac{\\eta \\, \\phi}{\\max(\\|u\\|, n_{\\min}) + \\varepsilon}, \\qquad
        u \\leftarrow r \\, u,

    with :math:`r = 1` where either norm is zero (a parameter or an update of
    zero is left alone). ``max_param_norm`` (:math:`n_{\\max}`, an addition to
    Optax) is the clamp of the parameter norm used by widely used LAMB code
    (``clamp(0, 10)``); without it this is numerically ``optax.scale_by_trust_ratio``.
    Unlike Optax's, its gradient with respect to the params and updates stays
    finite where a norm is zero or clamped (for meta-gradients through a step),
    and each norm is one reduction, not two (faster to compile).

    Args:
        min_norm: :math:`n_{\\min} \\ge 0`, a floor for both norms.
        trust_coefficient: :math:`\\eta \\ge 0`.
        eps: :math:`\\varepsilon \\ge 0`, added to the update norm.
        max_param_norm: optional ceiling :math:`n_{\\max} > 0` for the parameter norm.
        axis_name: inside ``shard_map``, the mesh axes the params and updates
            may be sharded over, so that each norm is the whole leaf's (an
            addition to Optax, whose norms there are silently the local
            shard's). Without it, a leaf that varies over a mesh axis raises.
            Under ``jit`` with sharded arrays the norms are exact as they are.

    Example:
        >>> import jaxopt_zoo as jz
        >>> lamb = jz.chain(jz.scale_by_adam(eps=1e-6), jz.scale_by_trust_ratio(max_param_norm=10.0),
        ...                 jz.scale_by_learning_rate(1e-3))

    References:
        You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks", 2017 (LARS).
        You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes", ICLR 2020 (LAMB).
    """
    owner = "scale_by_trust_ratio"
    validation.non_negative(owner, "min_norm", min_norm)
    validation.non_negative(owner, "trust_coefficient", trust_coefficient)
    validation.non_negative(owner, "eps", eps)
    if max_param_norm is not None:
        validation.positive(owner, "max_param_norm", max_param_norm)
    axis_name = validation.axis_name(owner, axis_name)

    def scale(u, p):
        param_norm = tree.norm_at_least(p, min_norm, axis_name, "scale_by_trust_ratio")
        if max_param_norm is not None:
            param_norm = jnp.minimum(param_norm, max_param_norm)
        update_norm = tree.norm_at_least(u, min_norm, axis_name, "scale_by_trust_ratio")
        unchanged = jnp.logical_or(param_norm == 0.0, update_norm == 0.0)
        # Dividing by 1 where the ratio is unused keeps its gradient finite (no 0/0 behind the where).
        ratio = trust_coefficient * param_norm / jnp.where(unchanged, 1.0, update_norm + eps)
        return u * jnp.where(unchanged, jnp.array(1.0, dtype=p.dtype), ratio)

    def update(updates, state, params=None, **extra_args):
        del extra_args
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, params, "the params")
        return tree.map_updates(scale, updates, params), state

    return GradientTransformation(init_empty_state, update)
