"""MoMo aliases: momo, momo_adam (Optax contrib's names for :mod:`jaxopt_zoo.transforms.momo`)."""

from __future__ import annotations

import jax

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, ScalarOrSchedule
from jaxopt_zoo.sharding import AxisName
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.transforms.momo import scale_by_momo, scale_by_momo_adam

__all__ = ["momo", "momo_adam"]


def _check_common(owner, learning_rate, lower_bound, weight_decay, adapt_lower_bound, axis_name, **storage):
    validation.learning_rate(owner, learning_rate)
    validation.real_scalar(owner, "lower_bound", lower_bound)
    validation.non_negative(owner, "weight_decay", weight_decay)
    validation.flag(owner, "adapt_lower_bound", adapt_lower_bound)
    validation.state_dtypes(owner, **storage)
    validation.axis_name(owner, axis_name)


def momo(
    learning_rate: ScalarOrSchedule = 1.0,
    beta: jax.typing.ArrayLike = 0.9,
    lower_bound: jax.typing.ArrayLike = 0.0,
    weight_decay: jax.typing.ArrayLike = 0.0,
    adapt_lower_bound: bool = False,
    *,
    mu_dtype: StateDtype = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """MoMo (Schaipp et al. 2023): SGD with momentum whose step is ``min(learning_rate, Polyak-type step)``.

    .. math::

        \\tau_t = \\min\\Big\\{\\alpha_t,\\ \\frac{\\big((1 + \\alpha_t\\lambda)(\\bar f_t - f_\\ast - \\gamma_t)
        + \\langle d_t, x_t\\rangle\\big)_+}{\\|d_t\\|^2}\\Big\\}, \\qquad
        x_{t+1} = \\frac{x_t - \\tau_t d_t}{1 + \\alpha_t \\lambda},

    with :math:`d_t, \\bar f_t, \\gamma_t` the moving averages of the gradients, the losses and
    :math:`\\langle g_t, x_t\\rangle` (see :func:`~jaxopt_zoo.transforms.momo.scale_by_momo`).
    Pass the loss at each step: ``update(grads, state, params, value=loss)``.

    Recipe: the single transformation ``scale_by_momo(learning_rate, beta, lower_bound,
    weight_decay, adapt_lower_bound, mu_dtype=, axis_name=)``, not wrapped in a ``chain``: the
    learning rate and the weight decay act inside the Polyak step, and the state stays Optax's
    :class:`~jaxopt_zoo.transforms.momo.MomoState`.

    Differences from ``optax.contrib.momo``: with ``weight_decay > 0`` Optax does not divide
    the momentum step by :math:`1 + \\alpha\\lambda` (a bug: the paper's proximal step and the
    authors' code do); here the paper's update is taken. With ``weight_decay=0`` the numbers
    and states are Optax's bit for bit. ``mu_dtype`` and ``axis_name`` are additions; see
    :func:`~jaxopt_zoo.transforms.momo.scale_by_momo` for the rest.

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, the largest step, or a schedule of the step count.
        beta: :math:`\\beta \\in [0, 1)`, the decay of the moving averages.
        lower_bound: :math:`f_\\ast`, a lower bound of the loss (0 for most losses).
        weight_decay: :math:`\\lambda \\ge 0`.
        adapt_lower_bound: estimate the lower bound on the fly, starting from ``lower_bound``.
        mu_dtype: storage of the gradients' moving average (see :mod:`jaxopt_zoo.storage`).
        axis_name: inside ``shard_map``, the mesh axes the params may be sharded over.

    Example:
        >>> import jax, jax.numpy as jnp, jaxopt_zoo as jz
        >>> f = lambda x: jnp.sum(x**2)
        >>> tx, params = jz.momo(), jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(params)
        >>> for _ in range(2):
        ...     value, grads = jax.value_and_grad(f)(params)
        ...     updates, state = tx.update(grads, state, params, value=value)
        ...     params = jz.apply_updates(params, updates)
        >>> f(params)  # 14 -> 3.5 (the first step halves the params) -> ...
        Array(3.3182135, dtype=float32)

    References:
        Schaipp, Ohana, Eickenberg, Defazio and Gower, "MoMo: Momentum Models for Adaptive
        Learning Rates", ICML 2024 (arXiv:2305.07583).
    """
    owner = "momo"
    _check_common(owner, learning_rate, lower_bound, weight_decay, adapt_lower_bound, axis_name, mu_dtype=mu_dtype)
    validation.decay_rate(owner, "beta", beta)
    return scale_by_momo(learning_rate, beta, lower_bound, weight_decay, adapt_lower_bound,
                         mu_dtype=mu_dtype, axis_name=axis_name)


def momo_adam(
    learning_rate: ScalarOrSchedule = 1e-2,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    lower_bound: jax.typing.ArrayLike = 0.0,
    weight_decay: jax.typing.ArrayLike = 0.0,
    adapt_lower_bound: bool = False,
    *,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """MoMo-Adam (Schaipp et al. 2023): Adam(W) whose step is ``min(learning_rate, Polyak-type step)``.

    .. math::

        \\tau_t = \\min\\Big\\{\\frac{\\alpha_t}{\\rho_t},\\
        \\frac{\\big((1 + \\alpha_t\\lambda)(\\bar f_t - \\rho_t f_\\ast - \\gamma_t)
        + \\langle d_t, x_t\\rangle\\big)_+}{\\langle d_t, d_t / D_t\\rangle}\\Big\\}, \\qquad
        x_{t+1} = \\frac{x_t - \\tau_t d_t / D_t}{1 + \\alpha_t \\lambda},

    with :math:`\\rho_t = 1 - \\beta_1^t` and :math:`D_t = \\epsilon + \\sqrt{\\hat v_t}` Adam's
    denominator (see :func:`~jaxopt_zoo.transforms.momo.scale_by_momo_adam`). Pass the loss at
    each step: ``update(grads, state, params, value=loss)``.

    Recipe: the single transformation ``scale_by_momo_adam(...)`` (its state is Optax's
    :class:`~jaxopt_zoo.transforms.momo.MomoAdamState`; the learning rate acts inside the step).

    Differences from ``optax.contrib.momo_adam``: with ``weight_decay > 0`` Optax does not
    divide the Adam step by :math:`1 + \\alpha\\lambda` (a bug: the paper's proximal step and the
    authors' code do); the paper's update is taken here. With ``weight_decay=0`` the numbers and
    states are Optax's bit for bit, for real params. For complex gradients the squared-gradient
    average takes :math:`|g|^2`, where Optax's takes the complex square :math:`g^2` (negative for
    an imaginary :math:`g`, which turns the step). ``mu_dtype``, ``nu_dtype`` and ``axis_name``
    are additions.

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, or a schedule of the step count.
        b1: :math:`\\beta_1 \\in [0, 1)`, the decay of the gradient, loss and inner-product averages.
        b2: :math:`\\beta_2 \\in [0, 1)`, the decay of the squared-gradient average.
        eps: :math:`\\epsilon \\ge 0`, added to :math:`\\sqrt{\\hat v}`.
        lower_bound: :math:`f_\\ast`, a lower bound of the loss (0 for most losses).
        weight_decay: :math:`\\lambda \\ge 0`.
        adapt_lower_bound: estimate the lower bound on the fly, starting from ``lower_bound``.
        mu_dtype: storage of the gradients' moving average (see :mod:`jaxopt_zoo.storage`).
        nu_dtype: storage of the squared gradients' moving average.
        axis_name: inside ``shard_map``, the mesh axes the params may be sharded over.

    Example:
        >>> import jax, jax.numpy as jnp, jaxopt_zoo as jz
        >>> f = lambda x: jnp.sum(x**2)
        >>> tx, params = jz.momo_adam(), jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(params)
        >>> value, grads = jax.value_and_grad(f)(params)
        >>> updates, state = tx.update(grads, state, params, value=value)
        >>> f(jz.apply_updates(params, updates))  # tau = alpha / (1 - b1) = 0.1 times d / D = 0.1
        Array(13.8803, dtype=float32)

    References:
        Schaipp, Ohana, Eickenberg, Defazio and Gower, "MoMo: Momentum Models for Adaptive
        Learning Rates", ICML 2024 (arXiv:2305.07583).
    """
    owner = "momo_adam"
    _check_common(owner, learning_rate, lower_bound, weight_decay, adapt_lower_bound, axis_name,
                  mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    validation.decay_rate(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    validation.epsilon(owner, "eps", eps)
    return scale_by_momo_adam(learning_rate, b1, b2, eps, lower_bound, weight_decay, adapt_lower_bound,
                              mu_dtype=mu_dtype, nu_dtype=nu_dtype, axis_name=axis_name)
