"""MADGRAD alias: madgrad, Optax's recipe of :func:`jaxopt_zoo.transforms.dual_averaging.scale_by_madgrad`."""

from __future__ import annotations

import jax

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, ScalarOrSchedule
from jaxopt_zoo.combine import chain
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.transforms import add_decayed_weights
from jaxopt_zoo.transforms.dual_averaging import scale_by_madgrad, x0_storage

__all__ = ["madgrad"]


def madgrad(
    learning_rate: ScalarOrSchedule,
    momentum: jax.typing.ArrayLike = 0.9,
    weight_decay: ScalarOrSchedule = 0.0,
    eps: jax.typing.ArrayLike = 1e-6,
    *,
    grad_sum_sq_dtype: StateDtype = None,
    s_dtype: StateDtype = None,
    x0_dtype: StateDtype = None,
) -> GradientTransformation:
    """MADGRAD (Defazio & Jelassi 2021) with L2 weight decay added to the gradient.

    .. math::

        g_k \\leftarrow g_k + \\kappa x_k, \\qquad
        z_{k+1} = x_0 - \\frac{\\sum_{i \\le k} \\lambda_i g_i}
        {(\\sum_{i \\le k} \\lambda_i g_i^2)^{1/3} + \\varepsilon},
        \\qquad x_{k+1} = \\text{momentum}\\; x_k + (1 - \\text{momentum})\\, z_{k+1},

    with :math:`\\lambda_i = (\\gamma_i + \\varepsilon)\\sqrt{i + 1}` (see :func:`jaxopt_zoo.scale_by_madgrad`).
    Recipe: ``chain(add_decayed_weights(weight_decay), scale_by_madgrad(learning_rate, momentum, eps,
    ...storage...))``, as ``optax.contrib.madgrad``: the decay is an L2 term in the gradient (the
    authors' default, not their ``decouple_decay``). It needs the params:
    ``update(grads, state, params)``. The authors suggest a learning rate near 1e-2 for vision models and
    1e-3 to 1e-4 for language models, and no momentum term outside (it has its own).

    Differences from ``optax.contrib.madgrad``: those of :func:`jaxopt_zoo.scale_by_madgrad` (float64 step
    weights under 64-bit types, ``x0`` a copy, ``eps=0`` safe, complex params raise at ``init`` where Optax's
    cube root fails); the storage options are additions.

    Args:
        learning_rate: :math:`\\gamma \\ge 0`, or a schedule of the step count.
        momentum: ``momentum`` :math:`\\in [0, 1)`.
        weight_decay: :math:`\\kappa \\ge 0` (L2), or a schedule of the step count.
        eps: :math:`\\varepsilon \\ge 0`, added to the cube root and to the learning rate.
        grad_sum_sq_dtype: storage of the weighted sum of squared gradients (see :mod:`jaxopt_zoo.storage`).
        s_dtype: storage of the weighted sum of gradients, as for ``grad_sum_sq_dtype``.
        x0_dtype: storage of the initial params, as for ``grad_sum_sq_dtype`` but not 8-bit (see
            :func:`jaxopt_zoo.scale_by_madgrad`).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.madgrad(1e-2, weight_decay=1e-4, s_dtype=jz.StochasticBF16())
        >>> params = {"w": jnp.ones(3)}
        >>> updates, state = tx.update({"w": jnp.array([0.1, -0.2, 0.0])}, tx.init(params), params)

    References:
        Defazio & Jelassi, "Adaptivity without Compromise: A Momentumized, Adaptive, Dual Averaged
        Gradient Method for Stochastic Optimization", JMLR 2022 (arXiv:2101.11075, 2021).
    """
    owner = "madgrad"
    validation.scalar_or_schedule(owner, "learning_rate", learning_rate)  # no None: the rate acts inside the rule
    validation.decay_rate(owner, "momentum", momentum)
    validation.scalar_or_schedule(owner, "weight_decay", weight_decay)
    validation.epsilon(owner, "eps", eps)
    validation.state_dtypes(owner, grad_sum_sq_dtype=grad_sum_sq_dtype, s_dtype=s_dtype)
    x0_storage(owner, x0_dtype)
    return validation.refusing_complex(owner, chain(
        add_decayed_weights(weight_decay),
        scale_by_madgrad(learning_rate, momentum, eps, grad_sum_sq_dtype=grad_sum_sq_dtype, s_dtype=s_dtype,
                         x0_dtype=x0_dtype),
    ))
