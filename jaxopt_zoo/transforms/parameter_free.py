"""Parameter-free step sizes: scale_by_distance_over_gradients (DoG).

DoG needs no learning rate: each step size is the largest distance travelled
from the initial point divided by the root of the summed squared gradient
norms. Optax's version, kept here, is the paper's layer-wise variant (LDoG):
one distance and one gradient sum per parameter array. Every whole-array norm
takes ``axis_name``, so that inside ``shard_map`` it is the whole array's.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.scale_by_distance_over_gradients()
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, OptState, expects_state
from jaxopt_zoo.sharding import AxisName
from jaxopt_zoo.storage import StateDtype, resolve, with_storage

__all__ = ["ScaleByDistanceOverGradientsState", "scale_by_distance_over_gradients"]


class ScaleByDistanceOverGradientsState(NamedTuple):
    """Per array: the largest distance from the start ``max_dist`` (a scalar), the summed squared
    gradient norms ``grad_sum_of_squares`` (shape ``(1,)``, as in Optax), and the initial params
    ``init_params``; ``count``: see :func:`~jaxopt_zoo.storage.with_storage`."""

    max_dist: OptState
    grad_sum_of_squares: OptState
    init_params: OptState
    count: jax.Array | None = None


def scale_by_distance_over_gradients(
    reps_rel: jax.typing.ArrayLike = 1e-6,
    eps: jax.typing.ArrayLike = 1e-8,
    param_dtype: StateDtype = jnp.float32,
    global_scale: jax.typing.ArrayLike = 1.0,
    *,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """Distance over gradients, layer-wise (Ivgi et al. 2023, LDoG).

    For each parameter array, with :math:`x_0` its initial value:

    .. math::

        r_0 = r_\\epsilon (1 + \\|x_0\\|), \\qquad
        r_t = \\max(r_{t-1}, \\|x_t - x_0\\|), \\qquad
        G_t = G_{t-1} + \\|g_t\\|^2, \\quad G_0 = 0, \\\\
        u_t = s \\, \\frac{r_t}{\\sqrt{G_t + \\epsilon}} \\, g_t,

    where :math:`r_\\epsilon` is ``reps_rel`` and :math:`s` is ``global_scale``.
    The update has the gradient's sign: chain a negative scale (``global_scale=-1``
    or ``scale(-1)``) to descend. The authors recommend averaging the iterates.

    Numerically identical to ``optax.scale_by_distance_over_gradients`` (states
    included). Deviations from Optax: a scalar param's update keeps shape ``()``
    (Optax's is ``(1,)``, which turns the scalar param into a vector);
    ``max_dist`` keeps the dtype it is created in, the wider of the param's and
    the initial copy's (Optax's changes dtype at the first step where they
    differ, e.g. bfloat16 params); ``param_dtype`` also takes the other
    storages (``jz.StochasticBF16()``, ``jz.Blockwise8Bit()``: an 8-bit copy's
    rounding, about 1% of :math:`\\|x_0\\|`, adds to :math:`\\|x_t - x_0\\|`, so it
    suits a ``reps_rel`` whose :math:`r_0` exceeds it); squares of float16
    values are summed in float32 and complex ones as :math:`|x|^2` (Optax sums
    float16 squares, and squares complex values); bad numbers raise when
    built; a ``None`` update keeps its state; ``axis_name`` is an addition.

    Args:
        reps_rel: :math:`r_\\epsilon > 0`, the first distance relative to :math:`1 + \\|x_0\\|`
            (1e-4 for models with batch norm, 1e-6 otherwise).
        eps: :math:`\\epsilon \\ge 0`, added under the square root.
        param_dtype: storage of the initial params (see :mod:`jaxopt_zoo.storage`).
        global_scale: :math:`s`, a factor on every update (typically 1 or -1).
        axis_name: inside ``shard_map``, the mesh axes the params may be sharded
            over, so that each norm is the whole array's.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_distance_over_gradients(reps_rel=0.5, eps=0.0)
        >>> params = jnp.array([3.0, 4.0])
        >>> updates, state = tx.update(jnp.array([0.0, 2.0]), tx.init(params), params)
        >>> updates  # r_0 = 0.5 (1 + 5) = 3, G_1 = 4: 3 / 2 * g
        Array([0., 3.], dtype=float32)

    References:
        Ivgi, Hinder and Carmon, "DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
        Schedule", ICML 2023 (arXiv:2302.12022).
    """
    owner = "scale_by_distance_over_gradients"
    validation.positive(owner, "reps_rel", reps_rel)
    validation.epsilon(owner, "eps", eps)
    storage = resolve(owner, "param_dtype", param_dtype)
    validation.real_scalar(owner, "global_scale", global_scale)
    axis_name = validation.axis_name(owner, axis_name)

    def norm(x):
        return jnp.sqrt(tree.sum_of_squares(x, axis_name, owner))

    def init(params):
        def first_distance(p):
            # In the dtype the update computes distances in: the param's or the read initial copy's, the wider.
            read_dtype = jax.eval_shape(lambda: storage.read(storage.create(p, True))).dtype
            return (reps_rel * (1 + norm(p))).astype(jnp.promote_types(tree.moment_dtype(p.dtype), read_dtype))

        return ScaleByDistanceOverGradientsState(
            jax.tree.map(first_distance, params),
            jax.tree.map(lambda p: jnp.zeros(1), params),  # Optax's shape and default dtype
            params,  # with_storage keeps the copy in param_dtype
        )

    def update(updates, state, params=None, **extra_args):
        del extra_args
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, params, "the params")
        farthest = lambda _, d, x, x0: jnp.maximum(d, norm(x - x0)).astype(d.dtype)  # noqa: E731
        max_dist = tree.map_state(farthest, updates, state.max_dist, params, state.init_params)
        accumulate = lambda g, s: s + tree.sum_of_squares(g, axis_name, owner)  # noqa: E731
        g_sos = tree.map_state(accumulate, updates, state.grad_sum_of_squares)

        def step(g, d, s):
            eta = global_scale * (d / jnp.sqrt(s + eps))
            return eta.reshape(()) * g  # eta has shape (1,): keep g's shape, even for a scalar param

        new_updates = tree.map_updates(step, updates, max_dist, g_sos)
        return new_updates, state._replace(max_dist=max_dist, grad_sum_of_squares=g_sos)

    tx = with_storage(GradientTransformation(init, update), signed={"init_params": storage})
    return expects_state(owner, tx, ScaleByDistanceOverGradientsState)
