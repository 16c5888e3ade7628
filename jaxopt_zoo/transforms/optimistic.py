"""Optimistic gradient methods for min-max games: scale_by_optimistic_gradient.

An optimistic step extrapolates with the last gradient, :math:`(\\alpha + \\beta) g_t
- \\beta g_{t-1}`, a cheap stand-in for the extra gradient call of extra-gradient
methods; it converges in the last iterate on games where plain gradient descent
cycles. The state keeps the previous gradient, which takes a storage option.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.chain(jz.scale_by_optimistic_gradient(), jz.scale_by_learning_rate(1e-2))
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, Updates, expects_state
from jaxopt_zoo.storage import StateDtype, resolve, with_storage

__all__ = ["ScaleByOptimisticGradientState", "scale_by_optimistic_gradient"]


class ScaleByOptimisticGradientState(NamedTuple):
    """Whether no step was taken yet, the previous gradient; ``count``: see :func:`~jaxopt_zoo.storage.with_storage`."""

    is_initial_step: jax.Array
    previous_gradient: Updates
    count: jax.Array | None = None


def scale_by_optimistic_gradient(
    alpha: jax.typing.ArrayLike = 1.0,
    beta: jax.typing.ArrayLike = 1.0,
    *,
    previous_gradient_dtype: StateDtype = None,
) -> GradientTransformation:
    """The generalized optimistic gradient (Mokhtari et al. 2019; Daskalakis et al. 2018).

    .. math::

        u_t = (\\alpha + \\beta)\\, g_t - \\beta\\, g_{t-1}, \\qquad g_0 := g_1,

    so the first update is :math:`\\alpha g_1`. :math:`\\alpha = \\beta = 1` is
    optimistic gradient descent, :math:`2 g_t - g_{t-1}`; :math:`\\beta` acts as
    a negative momentum.

    Numerically identical to ``optax.scale_by_optimistic_gradient``, with the
    same state leaves. Deviations from Optax: ``alpha`` and ``beta`` must be
    finite real numbers (checked when built); ``previous_gradient_dtype`` is an
    addition (a storage, see :mod:`jaxopt_zoo.storage`: ``None`` keeps the
    gradient in its param's dtype, Optax keeps it in the gradient's), and a
    float16 param's previous gradient is float32; a ``None`` update stays
    ``None`` and keeps its previous gradient.

    Args:
        alpha: :math:`\\alpha`, the weight of the current gradient.
        beta: :math:`\\beta`, the weight of the optimistic correction :math:`g_t - g_{t-1}`.
        previous_gradient_dtype: storage of :math:`g_{t-1}`: a storage (see :mod:`jaxopt_zoo.storage`).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_optimistic_gradient()
        >>> state = tx.init(jnp.zeros(2))
        >>> updates, state = tx.update(jnp.array([1.0, 2.0]), state)
        >>> updates  # the first step is alpha g
        Array([1., 2.], dtype=float32)
        >>> updates, state = tx.update(jnp.array([2.0, 2.0]), state)
        >>> updates  # 2 g_2 - g_1
        Array([3., 2.], dtype=float32)

    References:
        Mokhtari et al., "A Unified Analysis of Extra-gradient and Optimistic Gradient Methods
        for Saddle Point Problems: Proximal Point Approach", AISTATS 2020 (arXiv:1901.08511).
        Daskalakis et al., "Training GANs with Optimism", ICLR 2018.
    """
    owner = "scale_by_optimistic_gradient"
    validation.real_scalar(owner, "alpha", alpha)
    validation.real_scalar(owner, "beta", beta)
    storage = resolve(owner, "previous_gradient_dtype", previous_gradient_dtype)

    def init(params):
        return ScaleByOptimisticGradientState(jnp.array(True), tree.moments_like(params))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.previous_gradient, "the previous gradient")

        def optimistic(g, previous):
            previous = jnp.where(state.is_initial_step, g, previous)  # no g_0: the first step uses g_1
            return (alpha + beta) * g - beta * previous

        new_updates = tree.map_updates(optimistic, updates, state.previous_gradient)
        previous = tree.map_state(lambda g, _: g, updates, state.previous_gradient)
        return new_updates, state._replace(is_initial_step=jnp.array(False), previous_gradient=previous)

    tx = with_storage(GradientTransformation(init, update), signed={"previous_gradient": storage})
    return expects_state(owner, tx, ScaleByOptimisticGradientState)
