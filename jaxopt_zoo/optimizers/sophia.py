"""Sophia alias: sophia (Optax contrib's recipe of :func:`jaxopt_zoo.transforms.sophia.scale_by_sophia`)."""

from __future__ import annotations

from typing import Any, Callable

import jax

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, Params, ScalarOrSchedule
from jaxopt_zoo.combine import chain
from jaxopt_zoo.sharding import AxisName
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.transforms import add_decayed_weights, scale_by_learning_rate
from jaxopt_zoo.transforms.sophia import COMPLEX_WHY, check_clip, hutchinson_estimator_diag_hessian, scale_by_sophia

__all__ = ["sophia"]


def sophia(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.965,
    b2: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: ScalarOrSchedule = 1e-4,
    weight_decay_mask: Any | Callable[[Params], Any] | None = None,
    gamma: jax.typing.ArrayLike = 0.01,
    clip_threshold: jax.typing.ArrayLike | None = 1.0,
    update_interval: int = 10,
    hessian_diagonal_fn: Any = hutchinson_estimator_diag_hessian(),
    mu_dtype: StateDtype = None,
    verbose: bool = False,
    print_win_rate_every_n_steps: int = 0,
    *,
    nu_dtype: StateDtype = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """Sophia (Liu et al. 2023): momentum over a clipped diagonal-Hessian preconditioner, with decoupled decay.

    .. math::

        m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\qquad
        \\theta_{t+1} = \\theta_t - \\alpha_t \\Big(\\operatorname{clip}\\Big(\\frac{m_t / (1 - \\beta_1^t)}
        {\\max(\\gamma h_{t-1}, \\epsilon)}, \\rho\\Big) + \\lambda \\theta_t\\Big),

    with :math:`h` the moving average of the Hessian-diagonal estimates, refreshed every
    ``update_interval`` steps (see :func:`~jaxopt_zoo.transforms.sophia.scale_by_sophia`).
    The default estimator, Hutchinson's, needs the objective at each step:
    ``update(grads, state, params, obj_fn=lambda p: loss_fn(p, batch))``; any extra argument of
    ``update`` reaches ``hessian_diagonal_fn``.

    Recipe: ``chain(scale_by_sophia(b1, b2, eps, gamma, clip_threshold, update_interval,
    hessian_diagonal_fn, mu_dtype, verbose, print_win_rate_every_n_steps, nu_dtype=,
    axis_name=), add_decayed_weights(weight_decay, weight_decay_mask),
    scale_by_learning_rate(learning_rate))``, Optax's. Numerically identical to
    ``optax.contrib.sophia`` (states included). Differences from ``optax.contrib.sophia``:
    ``nu_dtype`` and ``axis_name`` are additions, ``mu_dtype`` also takes the storage objects,
    and the rest as listed in :func:`~jaxopt_zoo.transforms.sophia.scale_by_sophia`; complex
    params raise at ``init`` naming ``sophia`` (Optax's fails at the first update inside
    ``jnp.clip``): wrap it in :func:`~jaxopt_zoo.split_real_and_imaginary`. Like
    Optax's, it differs from the paper's Algorithm 3 by bias-correcting the momentum and by
    stepping with the Hessian average from before the step's refresh.

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, or a schedule of the step count.
        b1: :math:`\\beta_1 \\in [0, 1)`, the decay of the momentum.
        b2: :math:`\\beta_2 \\in [0, 1)`, the decay of the Hessian average per refresh.
        eps: :math:`\\epsilon \\ge 0`, the smallest denominator.
        weight_decay: :math:`\\lambda \\ge 0`, or a schedule of the step count.
        weight_decay_mask: a tree of booleans shaped like (a prefix of) the params, or a function
            of the params returning one: ``True`` where the weight decay applies.
        gamma: :math:`\\gamma \\ge 0`, the scale of the Hessian in the denominator.
        clip_threshold: :math:`\\rho > 0`, the largest update entry before the learning rate, or ``None``.
        update_interval: :math:`k \\ge 1`, steps between Hessian refreshes.
        hessian_diagonal_fn: the estimator of the Hessian's diagonal (default Hutchinson's).
        mu_dtype: storage of the momentum (see :mod:`jaxopt_zoo.storage`).
        verbose: print the fraction of coordinates not clipped.
        print_win_rate_every_n_steps: how often to print it (0: never).
        nu_dtype: storage of the Hessian average.
        axis_name: inside ``shard_map``, the mesh axes the params may be sharded over (for the win rate).

    Example:
        >>> import jax, jax.numpy as jnp, jaxopt_zoo as jz
        >>> f = lambda x: jnp.sum(x**2)
        >>> tx, params = jz.sophia(0.1), jnp.array([1.0, -2.0])
        >>> state = tx.init(params)
        >>> grads = jax.grad(f)(params)
        >>> updates, state = tx.update(grads, state, params, obj_fn=f)
        >>> jz.apply_updates(params, updates)
        Array([ 0.89999, -1.89998], dtype=float32)

    References:
        Liu, Li, Hall, Liang and Ma, "Sophia: A Scalable Stochastic Second-order Optimizer for
        Language Model Pre-training", ICLR 2024 (arXiv:2305.14342).
    """
    owner = "sophia"
    validation.learning_rate(owner, learning_rate)
    validation.decay_rate(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    validation.epsilon(owner, "eps", eps)
    validation.scalar_or_schedule(owner, "weight_decay", weight_decay)
    validation.non_negative(owner, "gamma", gamma)
    check_clip(owner, eps, clip_threshold)
    if not isinstance(update_interval, jax.core.Tracer):
        validation.whole_number(owner, "update_interval", update_interval, 1, validation.INT32_MAX)
    validation.state_dtypes(owner, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    validation.flag(owner, "verbose", verbose)
    if not isinstance(print_win_rate_every_n_steps, jax.core.Tracer):
        validation.whole_number(owner, "print_win_rate_every_n_steps", print_win_rate_every_n_steps)
    validation.axis_name(owner, axis_name)
    return validation.refusing_complex(owner, chain(
        scale_by_sophia(b1, b2, eps, gamma, clip_threshold, update_interval, hessian_diagonal_fn, mu_dtype, verbose,
                        print_win_rate_every_n_steps, nu_dtype=nu_dtype, axis_name=axis_name),
        add_decayed_weights(weight_decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    ), COMPLEX_WHY)
