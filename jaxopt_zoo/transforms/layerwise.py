"""Layer-wise rules: one number per parameter array (a "layer" or block), from a whole-array norm.

NovoGrad keeps a single second moment per array, the running mean of the
squared norm of its gradient, instead of one per element; the parameter-block
scalings multiply each array's update by the norm or RMS of its parameter (the
relative steps of Fromage, LARS and Adafactor). Every whole-array reduction
takes ``axis_name``, so that inside ``shard_map`` each norm is the whole
array's, not the local shard's.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.chain(jz.scale_by_novograd(), jz.scale_by_learning_rate(1e-2))
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import (
    GradientTransformation,
    ScalarOrSchedule,
    Updates,
    expects_state,
    init_empty_state,
    safe_increment,
    zero_count,
)
from jaxopt_zoo.sharding import AxisName
from jaxopt_zoo.storage import StateDtype, resolve, with_storage

__all__ = [
    "ScaleByNovogradState",
    "scale_by_novograd",
    "scale_by_param_block_norm",
]


class ScaleByNovogradState(NamedTuple):
    """Step count, first moment ``mu`` (per element) and second moment ``nu`` (one scalar per array)."""

    count: jax.Array
    mu: Updates
    nu: Updates


def scale_by_novograd(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.25,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    mu_dtype: StateDtype = None,
    *,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """NovoGrad (Ginsburg et al. 2019): a layer-wise second moment and a momentum of normalised gradients.

    For each parameter array :math:`\\theta` with gradient :math:`g_t` and weight decay :math:`\\lambda`:

    .. math::

        v_1 = \\|g_1\\|^2, \\qquad v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) \\|g_t\\|^2, \\\\
        d_t = \\frac{g_t}{\\sqrt{v_t + \\varepsilon_r} + \\varepsilon} + \\lambda \\theta_t, \\qquad
        m_1 = d_1, \\quad m_t = \\beta_1 m_{t-1} + d_t, \\qquad
        \\text{update} = m_t.

    :math:`v_t` is one scalar per array (the norm is the Frobenius norm of the
    whole array); there is no bias correction and no :math:`1 - \\beta_1`
    factor, as in the paper's Algorithm 1. Numerically identical to
    ``optax.scale_by_novograd`` (its defaults, including :math:`\\beta_2 = 0.25`),
    also inside a larger jitted step: the first step and the others are the
    two branches of a ``cond``, as in Optax. Deviations from Optax:
    ``weight_decay`` may also be a schedule of the step count (Optax's alias
    accepts one and then fails); a literal zero ``weight_decay`` reads no
    params (Optax always requires them); with ``eps = eps_root = 0`` an array
    whose gradients have all been zero gets a 0 update instead of 0/0 = NaN;
    a ``mu_dtype`` wider than the params works (Optax's ``cond`` fails on
    the branches' differing dtypes); with a ``mu_dtype`` the update is the
    first moment before it is rounded for storage (Optax returns the rounded
    one, in ``mu_dtype``); float16 params get float32 moments and updates,
    as everywhere in this library; a ``None`` update keeps its moments;
    ``mu_dtype`` also takes the other storages and ``axis_name`` is an addition.

    Args:
        b1: decay :math:`\\beta_1 \\in [0, 1)` of the first moment.
        b2: decay :math:`\\beta_2 \\in [0, 1)` of the layer-wise second moment.
        eps: :math:`\\varepsilon \\ge 0`, added to the denominator.
        eps_root: :math:`\\varepsilon_r \\ge 0`, added inside the square root.
        weight_decay: :math:`\\lambda \\ge 0`, or a schedule of the step count.
        mu_dtype: storage of the first moment: a storage (see :mod:`jaxopt_zoo.storage`).
        axis_name: inside ``shard_map``, the mesh axes the gradients may be
            sharded over, so that each :math:`\\|g_t\\|` is the whole array's.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_novograd()
        >>> updates, state = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
        >>> updates  # the first step is g / ||g||
        Array([0.6, 0.8], dtype=float32)
        >>> state.nu
        Array(25., dtype=float32)

    References:
        Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive
        Moments for Training of Deep Networks", 2019 (arXiv:1905.11286).
    """
    owner = "scale_by_novograd"
    validation.decay_rate(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    validation.epsilon(owner, "eps", eps)
    validation.epsilon(owner, "eps_root", eps_root)
    validation.scalar_or_schedule(owner, "weight_decay", weight_decay)
    mu_dtype = resolve(owner, "mu_dtype", mu_dtype)
    axis_name = validation.axis_name(owner, axis_name)
    guard = validation.may_all_be_zero(eps, eps_root)
    decays = not validation.is_literal_zero(weight_decay)

    def init(params):
        nu = tree.map_reshaped(lambda p: jnp.zeros((), tree.moment_dtype(p.dtype)), params)
        return ScaleByNovogradState(zero_count(), tree.moments_like(params), nu)

    def second_moment(first, g, v):
        # ||g||**2 formed as Optax forms it (a norm, then its square), for the same bits.
        norm_sq = tree.root(tree.sum_of_squares(g, axis_name, owner)) ** 2
        return (norm_sq if first else (1 - b2) * norm_sq + b2 * v).astype(v.dtype)  # v keeps its dtype

    def first_moment(first, rate, g, m, v, *p):
        d = tree.over_root(g, v + eps_root, eps, guard)  # guarded: 0 where every gradient so far was 0
        if p:
            d = d + rate * p[0]
        return d.astype(jnp.result_type(d, m)) if first else b1 * m + d

    # The first step and the others are two branches of a cond, as in Optax: the same program, so the same
    # bits even where XLA fuses the step with the model's backward pass. Built once, so that eager steps
    # reuse their compiled branches.
    nu_branches = [lambda updates, nu, first=first: tree.map_updates(partial(second_moment, first), updates, nu)
                   for first in (False, True)]
    mu_branches = [lambda rate, updates, *trees, first=first: tree.map_updates(partial(first_moment, first, rate), updates, *trees)
                   for first in (False, True)]

    def update(updates, state, params=None, **extra_args):
        del extra_args
        tree.check_same_structure(owner, updates, state.mu, "the first moment (state.mu)")
        if decays:
            validation.require_params(owner, params)
            tree.check_same_structure(owner, updates, params, "the params")
        count = safe_increment(state.count)
        first = (count == 1).astype(jnp.int32)
        rate = weight_decay(state.count) if callable(weight_decay) else weight_decay
        nu = jax.lax.switch(first, nu_branches, updates, state.nu)
        nu = tree.map_state(lambda g, old, new: new, updates, state.nu, nu)  # the very leaf at a None update
        mu = jax.lax.switch(first, mu_branches, rate, updates, state.mu, nu, *([params] if decays else []))
        mu = tree.map_state(lambda g, old, new: new, updates, state.mu, mu)
        return tree.map_updates(lambda g, m: m, updates, mu), ScaleByNovogradState(count, mu, nu)

    tx = with_storage(GradientTransformation(init, tree.through_variables(update)), signed={"mu": mu_dtype})
    return expects_state(owner, tx, ScaleByNovogradState)


def scale_by_param_block_norm(min_scale: jax.typing.ArrayLike = 1e-3, *, axis_name: AxisName = None) -> GradientTransformation:
    """Multiply each leaf's update by its parameter's norm, at least ``min_scale``:
    :math:`u \\leftarrow \\max\\big(s, \\|\\theta\\|\\big) \\, u`.

    The parameter-relative step of Fromage and LARS (Bernstein et al. 2020): a
    block is a whole parameter array (a weight matrix, a bias vector) and
    :math:`\\|\\theta\\|` its Frobenius norm. Numerically identical to
    ``optax.scale_by_param_block_norm``. Additions: ``axis_name``, and a gradient
    with respect to the params that stays finite where the norm is clamped; a
    ``None`` update stays ``None``.

    Args:
        min_scale: :math:`s \\ge 0`, the floor of the scale.
        axis_name: inside ``shard_map``, the mesh axes the params may be sharded over, so that each
            norm is the whole array's.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> p = jnp.array([3.0, 4.0])  # norm 5
        >>> jz.scale_by_param_block_norm().update(jnp.ones(2), jz.EmptyState(), p)[0]
        Array([5., 5.], dtype=float32)

    References:
        Bernstein et al., "On the distance between two neural networks and the
        stability of learning", NeurIPS 2020.
    """
    owner = "scale_by_param_block_norm"
    validation.non_negative(owner, "min_scale", min_scale)
    axis_name = validation.axis_name(owner, axis_name)

    def update(updates, state, params=None, **extra_args):
        del extra_args
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, params, "the params")
        return tree.map_updates(lambda u, p: u * tree.norm_at_least(p, min_scale, axis_name, owner), updates, params), state

    return GradientTransformation(init_empty_state, update)
