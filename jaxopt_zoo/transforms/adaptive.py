"""Adaptive scaling by running moments of the gradient (Adam and its family)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, Updates, safe_increment, zero_count


class ScaleByAdamState(NamedTuple):
    """Step count (int32, saturating), first moment ``mu`` and second moment ``nu``."""

    count: jax.Array
    mu: Updates
    nu: Updates


def scale_by_adam(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    *,
    nesterov: bool = False,
    nu_dtype: jax.typing.DTypeLike | None = None,
) -> GradientTransformation:
    """Scale updates by Adam's bias-corrected moment ratio (Kingma & Ba 2015).

    .. math::

        m_t &= \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\qquad
        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2, \\\\
        \\hat m_t &= m_t / (1 - \\beta_1^t), \\qquad \\hat v_t = v_t / (1 - \\beta_2^t), \\\\
        u_t &= \\hat m_t / \\big(\\sqrt{\\hat v_t + \\bar\\varepsilon} + \\varepsilon\\big).

    With ``nesterov=True`` (NAdam, Dozat 2016, in Optax's form) :math:`\\hat m_t`
    becomes :math:`\\beta_1 m_t / (1 - \\beta_1^{t+1}) + (1 - \\beta_1) g_t / (1 - \\beta_1^t)`.
    For complex gradients :math:`g_t^2` is :math:`|g_t|^2`.

    Numerically identical to ``optax.scale_by_adam``. Deviations from Optax:
    the moments are stored in the state's dtypes (``mu_dtype``/``nu_dtype``,
    else the params') even when gradients arrive in another dtype; a ``None``
    update leaves its moments unchanged; ``nu_dtype`` is an addition.

    Args:
        b1: decay :math:`\\beta_1 \\in [0, 1)` of the first moment.
        b2: decay :math:`\\beta_2 \\in [0, 1)` of the second moment.
        eps: :math:`\\varepsilon \\ge 0`, added outside the square root (as in the paper).
        eps_root: :math:`\\bar\\varepsilon \\ge 0`, added inside the square root
            (keeps the gradient of the update finite when differentiating through it).
        mu_dtype: storage dtype of the first moment; ``None`` uses the params'.
        nesterov: use Nesterov momentum (NAdam).
        nu_dtype: storage dtype of the second moment; ``None`` uses the params'.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_adam()
        >>> g = jnp.array([0.5, -2.0])
        >>> updates, state = tx.update(g, tx.init(g))
        >>> updates  # the first step is g / |g|, up to rounding and eps
        Array([ 0.99999..., -0.99999...], dtype=float32)
        >>> adam = jz.chain(jz.scale_by_adam(b2=0.99), jz.scale_by_learning_rate(1e-3))

    References:
        Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
        Dozat, "Incorporating Nesterov Momentum into Adam", ICLR workshop 2016.
    """
    validation.decay_rate("scale_by_adam", "b1", b1)
    validation.decay_rate("scale_by_adam", "b2", b2)
    validation.non_negative("scale_by_adam", "eps", eps)
    validation.non_negative("scale_by_adam", "eps_root", eps_root)
    validation.flag("scale_by_adam", "nesterov", nesterov)
    mu_dtype = validation.optional_dtype("scale_by_adam", "mu_dtype", mu_dtype)
    nu_dtype = validation.optional_dtype("scale_by_adam", "nu_dtype", nu_dtype)

    def init(params):
        return ScaleByAdamState(zero_count(), tree.zeros_like(params, mu_dtype), tree.zeros_like(params, nu_dtype))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure("scale_by_adam", updates, state.mu, "the first moment (state.mu)")
        count = safe_increment(state.count)
        mu = tree.update_moment(updates, state.mu, b1, 1)
        nu = tree.update_moment(updates, state.nu, b2, 2)
        if nesterov:
            mu_hat = jax.tree.map(
                lambda g, m, g_hat: None if g is None else b1 * m + (1 - b1) * g_hat,
                updates,
                tree.bias_correction(mu, b1, safe_increment(count)),
                tree.bias_correction(updates, b1, count),
                is_leaf=tree.is_none,
            )
        else:
            mu_hat = tree.bias_correction(mu, b1, count)
        nu_hat = tree.bias_correction(nu, b2, count)
        updates = jax.tree.map(
            lambda g, m, v: None if g is None else m / (jnp.sqrt(v + eps_root) + eps),
            updates,
            mu_hat,
            nu_hat,
            is_leaf=tree.is_none,
        )
        return updates, ScaleByAdamState(count, tree.cast_like(mu, state.mu), tree.cast_like(nu, state.nu))

    return GradientTransformation(init, update)
