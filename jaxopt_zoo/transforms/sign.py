"""Sign methods: signSGD's elementwise sign and Lion's sign of an interpolated momentum.

Every coordinate moves by the same magnitude (the learning rate) in the
direction of a sign, so these updates ignore the gradient's scale. Lion keeps
one per-parameter momentum ``mu`` (signed), which takes the storage option
``mu_dtype``. ``None`` update leaves pass through and keep their state.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.chain(jz.scale_by_lion(), jz.scale_by_learning_rate(1e-4))
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, Updates, expects_state, init_empty_state, safe_increment, zero_count
from jaxopt_zoo.storage import StateDtype, resolve, with_storage

__all__ = [
    "ScaleByLionState",
    "scale_by_lion",
    "scale_by_sign",
]


def scale_by_sign() -> GradientTransformation:
    """The elementwise sign of the updates: :math:`u_t = \\operatorname{sign}(g_t)` (Bernstein et al. 2018).

    :math:`\\operatorname{sign}(0) = 0`, and a complex entry becomes :math:`g / |g|`
    (``jnp.sign``). Stateless. Numerically identical to ``optax.scale_by_sign``;
    a ``None`` update stays ``None``.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_sign()
        >>> updates, _ = tx.update(jnp.array([0.3, -2.0, 0.0]), tx.init(jnp.zeros(3)))
        >>> updates
        Array([ 1., -1.,  0.], dtype=float32)

    References:
        Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex Problems", ICML 2018.
    """

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        return tree.map_updates(jnp.sign, updates), state

    return GradientTransformation(init_empty_state, update)


class ScaleByLionState(NamedTuple):
    """Step count and the momentum ``mu`` (an exponential moving average of the gradients)."""

    count: jax.Array
    mu: Updates


LION_MODES = ("hard", "smooth", "refined")


def scale_by_lion(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    mu_dtype: StateDtype = None,
    *,
    mode: str = "hard",
    smooth_beta: jax.typing.ArrayLike = 1.0,
) -> GradientTransformation:
    """Lion (Chen et al. 2023): the sign of an interpolation of momentum and gradient.

    .. math::

        c_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\qquad
        u_t = \\sigma(c_t), \\qquad
        m_t = \\beta_2 m_{t-1} + (1 - \\beta_2) g_t,

    from :math:`m_0 = 0`, where :math:`\\sigma` is :math:`\\operatorname{sign}`
    (``mode="hard"``, the paper's rule), :math:`\\tanh(\\beta_s c)` (``"smooth"``,
    :math:`\\beta_s` the ``smooth_beta``) or :math:`c` where :math:`|c| < 1` and
    :math:`\\operatorname{sign}(c)` elsewhere (``"refined"``). The update uses the
    momentum *before* this step's gradient is folded in, with the faster
    interpolation :math:`\\beta_1`; the stored momentum decays with the slower
    :math:`\\beta_2`.

    Numerically identical to ``optax.scale_by_lion``. Deviations from Optax: an
    unknown ``mode`` raises when the transformation is built (Optax raises at the
    first update), and ``smooth_beta`` must be > 0; a ``None`` update keeps its
    momentum; ``mu_dtype`` also takes :class:`~jaxopt_zoo.storage.StochasticBF16`
    and :class:`~jaxopt_zoo.quantization.Blockwise8Bit`; a float16 param's
    momentum is float32 (see :func:`jaxopt_zoo.tree.moments_like`).

    Args:
        b1: :math:`\\beta_1 \\in [0, 1]`, the weight of the momentum in the update's interpolation.
        b2: :math:`\\beta_2 \\in [0, 1)`, the decay of the momentum.
        mu_dtype: storage of the momentum: a storage (see :mod:`jaxopt_zoo.storage`).
        mode: ``"hard"``, ``"smooth"`` or ``"refined"``, the function :math:`\\sigma` above.
        smooth_beta: :math:`\\beta_s > 0`, the slope of ``tanh`` in ``"smooth"`` mode.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_lion()
        >>> state = tx.init(jnp.zeros(2))
        >>> updates, state = tx.update(jnp.array([0.5, -2.0]), state)
        >>> updates  # sign(0.1 g) on the first step
        Array([ 1., -1.], dtype=float32)
        >>> state.mu  # 0.01 g
        Array([ 0.005, -0.02 ], dtype=float32)

    References:
        Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023 (Algorithm 2).
    """
    owner = "scale_by_lion"
    validation.fraction(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    if not isinstance(mode, str) or mode not in LION_MODES:
        raise ValueError(f"{owner}: mode must be one of {', '.join(map(repr, LION_MODES))}, got {mode!r}.")
    validation.positive(owner, "smooth_beta", smooth_beta)
    mu_dtype = resolve(owner, "mu_dtype", mu_dtype)

    if mode == "hard":
        direction = jnp.sign
    elif mode == "smooth":
        direction = lambda c: jnp.tanh(smooth_beta * c)
    else:  # refined: linear near 0, the sign beyond 1
        direction = lambda c: jnp.where(jnp.abs(c) < 1.0, c, jnp.sign(c))

    def init(params):
        return ScaleByLionState(zero_count(), tree.moments_like(params))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.mu, "the momentum (state.mu)")
        new_updates = tree.map_updates(lambda g, m: direction((1.0 - b1) * tree.widen(g) + b1 * m), updates, state.mu)
        mu = tree.update_moment(updates, state.mu, b2, 1)
        return new_updates, ScaleByLionState(safe_increment(state.count), mu)

    tx = with_storage(GradientTransformation(init, update), signed={"mu": mu_dtype})
    return expects_state(owner, tx, ScaleByLionState)

