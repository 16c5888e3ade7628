"""MADGRAD (Defazio and Jelassi 2021): momentumised, adaptive, dual-averaged gradients.

A dual-averaging method steps from the initial point ``x0`` by the weighted
sum ``s`` of all gradients, not from the current iterate; MADGRAD divides that
sum by a cube root of the weighted sum of squared gradients and averages the
result into the iterate (its momentum). The three per-parameter trees (``s``,
``grad_sum_sq`` and ``x0``) take storage options. ``None`` update leaves pass
through and keep their state.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.scale_by_madgrad(1e-2)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import (
    GradientTransformation,
    Params,
    ScalarOrSchedule,
    Updates,
    expects_state,
    safe_increment,
    zero_count,
)
from jaxopt_zoo.storage import StateDtype, resolve, resolve_floating, with_storage

__all__ = ["MadgradState", "scale_by_madgrad"]


class MadgradState(NamedTuple):
    """Step count, the weighted sums of squared gradients ``grad_sum_sq`` and of gradients ``s``, and the
    initial params ``x0`` (Optax's fields)."""

    count: jax.Array
    grad_sum_sq: Updates
    s: Updates
    x0: Params


def x0_storage(owner: str, x0_dtype: StateDtype):
    """The storage of MADGRAD's :math:`x_0`: not 8-bit, whose rounding would move the params (see ``x0_dtype``)."""
    return resolve_floating(
        owner, "x0_dtype", x0_dtype,
        "keeps the initial params x_0 as 8-bit codes, whose rounding (3 mantissa bits: up to 1/8 of each entry) the "
        "params take in full from the first step, whatever the learning rate (z = x_0 - s / nu^(1/3)); use None (the "
        "params' dtype) or a floating dtype (a bfloat16 copy, jz.StochasticBF16()'s too, rounds by up to 2^-8 of each "
        "entry, which the params take likewise).")


def scale_by_madgrad(
    learning_rate: ScalarOrSchedule,
    momentum: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-6,
    *,
    grad_sum_sq_dtype: StateDtype = None,
    s_dtype: StateDtype = None,
    x0_dtype: StateDtype = None,
) -> GradientTransformation:
    """MADGRAD (Defazio & Jelassi 2021, Algorithm 1): the step, learning rate included, as an update.

    With :math:`\\gamma_k` the learning rate at the 0-based step :math:`k` and :math:`c = 1 -` ``momentum``:

    .. math::

        \\lambda_k &= (\\gamma_k + \\varepsilon) \\sqrt{k + 1}, \\qquad
        s_{k+1} = s_k + \\lambda_k g_k, \\qquad
        \\nu_{k+1} = \\nu_k + \\lambda_k g_k^2, \\\\
        z_{k+1} &= x_0 - \\frac{s_{k+1}}{\\nu_{k+1}^{1/3} + \\varepsilon}, \\qquad
        x_{k+1} = (1 - c)\\, x_k + c\\, z_{k+1}, \\qquad u_k = x_{k+1} - x_k,

    from :math:`s_0 = \\nu_0 = 0`. :math:`\\varepsilon` is added to the learning rate, as in the authors'
    code and Optax (the paper's :math:`\\lambda_k = \\gamma_k \\sqrt{k+1}`). The update reads the params
    (:math:`x_k`): call ``update(updates, state, params)``. The learning rate acts inside the rule, so
    this transformation is the whole optimizer (put no ``scale_by_learning_rate`` after it). Complex params
    raise (wrap in :func:`jaxopt_zoo.combine.split_real_and_imaginary`; Optax's cube root of a complex sum fails).

    Numerically identical to ``optax.contrib.scale_by_madgrad`` in float32, with the same state.
    Differences from ``optax.contrib.scale_by_madgrad``: :math:`\\sqrt{k+1}` is formed in the default
    float type (float64 when 64-bit types are on; Optax takes it of an int32, which JAX does in float32,
    so its float64 runs carry float32 rounding of :math:`\\lambda_k`); ``x0`` is a copy of the params,
    not the same buffers, so that params and state can both be donated; with ``eps=0`` the update
    keeps :math:`z = x_0` where :math:`\\nu = 0`, not 0/0; a ``None`` update keeps its sums; bad
    hyperparameters raise when the transformation is built; ``grad_sum_sq_dtype``, ``s_dtype`` and
    ``x0_dtype`` are additions (a lossy ``x0`` storage moves the point the iterates are anchored to).

    Args:
        learning_rate: :math:`\\gamma \\ge 0`, or a schedule of the step count.
        momentum: ``momentum`` :math:`\\in [0, 1)`: the weight of :math:`x_k` in the averaged iterate.
        eps: :math:`\\varepsilon \\ge 0`, added to the cube root and to the learning rate.
        grad_sum_sq_dtype: storage of :math:`\\nu` (``grad_sum_sq``): a storage (see :mod:`jaxopt_zoo.storage`).
        s_dtype: storage of :math:`s`, as for ``grad_sum_sq_dtype``.
        x0_dtype: storage of the initial params :math:`x_0`, as for ``grad_sum_sq_dtype`` but not 8-bit:
            :math:`z` is formed from :math:`x_0`, so the params take its rounding from the first step,
            whatever the learning rate (up to 1/8 of each entry in 8-bit codes, which raise; up to
            :math:`2^{-8}` in bfloat16).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_madgrad(0.1, momentum=0.0, eps=0.0)
        >>> params = jnp.array([1.0, 1.0])
        >>> updates, state = tx.update(jnp.array([8.0, -1.0]), tx.init(params), params)
        >>> updates  # -s / nu^(1/3) = -lr g / (lr g^2)^(1/3)
        Array([-0.43088...,  0.21544...], dtype=float32)

    References:
        Defazio & Jelassi, "Adaptivity without Compromise: A Momentumized, Adaptive, Dual Averaged
        Gradient Method for Stochastic Optimization", JMLR 2022 (arXiv:2101.11075, 2021).
    """
    owner = "scale_by_madgrad"
    validation.scalar_or_schedule(owner, "learning_rate", learning_rate)
    validation.decay_rate(owner, "momentum", momentum)
    validation.epsilon(owner, "eps", eps)
    guard = validation.may_all_be_zero(eps)
    stores = {name: resolve(owner, f"{name}_dtype", value)
              for name, value in (("grad_sum_sq", grad_sum_sq_dtype), ("s", s_dtype))}
    stores["x0"] = x0_storage(owner, x0_dtype)

    def init(params):
        validation.refuse_complex(owner, params)
        # A copy of the params, in their own dtype: the state must not alias buffers the caller may donate.
        x0 = jax.tree.map(lambda p: jnp.array(p, copy=True), params)
        return MadgradState(zero_count(), tree.moments_like(params), tree.moments_like(params), x0)

    def update(updates, state, params=None, **extra_args):
        del extra_args
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, state.s, "the gradient sum (state.s)")
        tree.check_same_structure(owner, updates, params, "the params")
        rate = learning_rate(state.count) if callable(learning_rate) else learning_rate
        weight = (rate + eps) * jnp.sqrt(state.count.astype(jnp.result_type(float)) + 1)
        # The weighted term is cast to the sum's dtype before adding, as Optax does (float32 agrees bit for bit).
        added = lambda term, total: total + (weight * term).astype(total.dtype)
        grad_sum_sq = tree.map_state(lambda g, v: added(tree.abs_sq(g), v), updates, state.grad_sum_sq)
        s = tree.map_state(lambda g, s: added(tree.widen(g), s), updates, state.s)

        def step(g, s, v, x0, x):
            root = tree.cube_root(v) + eps
            if guard:  # z = x0 where nothing has been summed yet (0/0 otherwise)
                root = jnp.where(root == 0, 1, root)
            z = x0 - s / root
            return (1 - momentum) * z + momentum * x - x

        new_updates = tree.map_updates(step, updates, s, grad_sum_sq, state.x0, params)
        return new_updates, MadgradState(safe_increment(state.count), grad_sum_sq, s, state.x0)

    tx = with_storage(
        GradientTransformation(init, update),
        signed={"s": stores["s"], "x0": stores["x0"]},
        non_negative={"grad_sum_sq": stores["grad_sum_sq"]},
    )
    return expects_state(owner, tx, MadgradState)
