"""MARS (Yuan et al. 2024): variance reduction of the gradient fed to any optimizer.

:func:`mars_correction` turns each gradient into MARS's scaled recursive-momentum estimate, from the previous
step's gradient kept in its state (the paper's MARS-approx), clipped to unit norm per leaf. Chained before Adam it
is MARS-AdamW (:func:`jaxopt_zoo.mars_adamw`), before a sign momentum MARS-Lion (:func:`jaxopt_zoo.mars_lion`).

    >>> import jaxopt_zoo as jz
    >>> tx = jz.chain(jz.mars_correction(), jz.scale_by_adam(0.95, 0.99), jz.scale_by_learning_rate(3e-3))
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, ScalarOrSchedule, Updates, expects_state, safe_increment, zero_count
from jaxopt_zoo.sharding import AxisName
from jaxopt_zoo.storage import StateDtype, resolve, with_storage

__all__ = ["MarsCorrectionState", "mars_correction"]


class MarsCorrectionState(NamedTuple):
    """The step count (0 before the first step, which has no previous gradient) and the previous gradient."""

    count: jax.Array
    prev_grad: Updates


def mars_correction(
    gamma: ScalarOrSchedule = 0.025,
    b1: jax.typing.ArrayLike = 0.95,
    max_norm: jax.typing.ArrayLike | None = 1.0,
    *,
    prev_dtype: StateDtype = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """MARS's variance-reduced gradient (Yuan et al. 2024, MARS-approx), clipped per leaf.

    .. math::

        c_t = g_t + \\gamma_t \\frac{\\beta_1}{1 - \\beta_1} (g_t - g_{t-1}), \\qquad
        \\tilde c_t = \\begin{cases} c_t \\, \\tau / \\|c_t\\|_2 & \\|c_t\\|_2 > \\tau \\\\ c_t & \\text{otherwise,}
        \\end{cases}

    per leaf, with :math:`\\tau` = ``max_norm`` (1 in the paper) and :math:`c_1 = g_1`: the paper starts from
    :math:`x_1 = x_0`, so the first correction vanishes. The paper's exact MARS differences two gradients of the
    *same* batch, at :math:`x_t` and :math:`x_{t-1}`; MARS-approx, which the authors train with, takes the previous
    step's gradient :math:`g_{t-1}` instead, kept here in the state (``prev_dtype`` sets its storage).
    :math:`\\beta_1` must be the momentum decay of the optimizer that follows (MARS-AdamW's Adam ``b1``), and the
    weight :math:`\\gamma_t\\beta_1/(1-\\beta_1)` is 0.475 at the defaults. ``gamma`` may be a schedule of the
    0-based step count. With ``gamma=0`` and ``max_norm=None`` this is the identity.

    Differences from the paper and its reference implementations: the paper writes the clip for the whole
    parameter vector; like the authors' code (``MARS/optimizers/mars.py``) it is per leaf here. The authors' code
    and heavyball 3.2.1 start from a zero previous gradient, so their first step is
    :math:`c_1 = (1 + \\gamma\\beta_1/(1-\\beta_1))\\, g_1` before the clip; here it is :math:`g_1`, as in the
    paper's algorithm. heavyball's ``mars`` does not clip (its own gradient clipping is separate), defaults to
    :math:`\\gamma = 0.0025`, hands ``mars_gamma`` and :math:`\\beta_1` to ``utils.mars_correction(g, old_g,
    beta1, gamma)`` in swapped order (its weight is :math:`\\gamma\\beta_1/(1-\\gamma)`, about 10 times
    smaller than the paper's at :math:`\\beta_1 = 0.9`), and keeps the corrected :math:`c_t`, not :math:`g_t`,
    as the previous gradient (measured on CPU); the paper and the authors' code keep :math:`g_t`, as here.
    ``max_norm`` (``None``: no clip) is an addition.

    Sharding: the norm is the whole leaf's. Under ``jit`` on sharded arrays this is exact; inside ``shard_map``
    pass ``axis_name``, without which a sharded leaf raises (unless ``max_norm=None``: then nothing is reduced).

    Args:
        gamma: :math:`\\gamma \\ge 0`, the strength of the correction, or a schedule of the step count.
        b1: :math:`\\beta_1 \\in [0, 1)`, the momentum decay of the optimizer the corrected gradient feeds.
        max_norm: :math:`\\tau > 0`, the norm each leaf's :math:`c_t` is clipped to; ``None`` for no clip.
        prev_dtype: storage of the previous gradient: a storage (see :mod:`jaxopt_zoo.storage`).
        axis_name: inside ``shard_map``, the mesh axes the leaves may be sharded over.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.mars_correction(gamma=0.1, b1=0.5, max_norm=None)  # weight gamma b1 / (1 - b1) = 0.1
        >>> state = tx.init(jnp.zeros(2))
        >>> c, state = tx.update(jnp.array([1.0, 2.0]), state)  # the first step passes the gradient through
        >>> c, state = tx.update(jnp.array([3.0, 2.0]), state)
        >>> c  # g + 0.1 (g - g_prev)
        Array([3.2, 2. ], dtype=float32)
        >>> jz.mars_correction().update(jnp.array([3.0, 4.0]), jz.mars_correction().init(jnp.zeros(2)))[0]
        Array([0.6, 0.8], dtype=float32)

    References:
        Yuan, Liu, Wu, Zhou & Gu, "MARS: Unleashing the Power of Variance Reduction for Training Large Models",
        ICML 2025 (arXiv:2411.10438).
    """
    owner = "mars_correction"
    validation.scalar_or_schedule(owner, "gamma", gamma)
    validation.decay_rate(owner, "b1", b1)
    if max_norm is not None:
        validation.positive(owner, "max_norm", max_norm)
    axis_name = validation.axis_name(owner, axis_name)
    store = resolve(owner, "prev_dtype", prev_dtype)

    def init(params):
        return MarsCorrectionState(zero_count(), tree.moments_like(params))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.prev_grad, "the previous gradient (state.prev_grad)")
        weight = (gamma(state.count) if callable(gamma) else gamma) * b1 / (1 - b1)

        def corrected(g: jax.Array, prev: jax.Array) -> jax.Array:
            wide = g.astype(tree.moment_dtype(g.dtype))
            out = tree.as_inexact(g).dtype  # an integer or bool gradient's correction truncated to 0
            c = jnp.where(state.count == 0, wide, wide + weight * (wide - prev))
            if max_norm is None:
                return c.astype(out)
            norm = tree.root(tree.sum_of_squares(c, axis_name, owner))
            clipped = norm > max_norm
            return jnp.where(clipped, c * (max_norm / jnp.where(clipped, norm, 1)), c).astype(out)

        prev_grad = tree.map_state(lambda g, prev: g, updates, state.prev_grad)
        new_state = MarsCorrectionState(safe_increment(state.count), prev_grad)
        return tree.map_updates(corrected, updates, state.prev_grad), new_state

    tx = with_storage(GradientTransformation(init, update), signed={"prev_grad": store})
    return expects_state(owner, tx, MarsCorrectionState)
