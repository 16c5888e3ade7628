"""MoMo (Schaipp et al. 2023): model-based momentum with a Polyak-like adaptive step.

MoMo keeps exponential moving averages of the gradients :math:`d_t`, of the
loss values :math:`\\bar f_t` and of the inner products
:math:`\\gamma_t = \\text{EMA}\\langle g_t, x_t\\rangle`. Together they give a model of the
loss, truncated below at a lower bound :math:`f_\\ast`; one proximal step on that
model is SGD with momentum (or Adam) whose step size is the smaller of the
learning rate and a Polyak-type step. It needs the loss value at each step:
``update(updates, state, params, value=loss)``.

Every inner product and norm is over the whole tree and takes ``axis_name``,
so it stays exact inside ``shard_map``. ``None`` updates stay ``None``, keep
their moments and count for nothing in the sums.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.scale_by_momo(learning_rate=1.0)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, ScalarOrSchedule, Updates, expects_state, safe_increment, zero_count
from jaxopt_zoo.sharding import AxisName, sum_over_shards
from jaxopt_zoo.storage import StateDtype, resolve, with_storage

__all__ = ["MomoAdamState", "MomoState", "scale_by_momo", "scale_by_momo_adam"]

# Optax skips the step when the squared norm is at most float64's machine epsilon, whatever the dtype.
_TINY_NORM = float(jnp.finfo(float).eps)


# --- whole-tree sums over the leaves that have an update ---------------------------------------


def _present(updates, *trees):
    """The leaves of ``updates`` that are not ``None``, and the matching leaves of ``trees``."""
    leaves = jax.tree.leaves(updates, is_leaf=tree.is_none)
    others = [jax.tree.leaves(t, is_leaf=tree.is_none) for t in trees]
    keep = [i for i, u in enumerate(leaves) if u is not None]
    return tuple([xs[i] for i in keep] for xs in (leaves, *others))


def _inner(owner, xs, ys, axis_name):
    """:math:`\\sum_i \\operatorname{Re}\\langle x_i, y_i\\rangle` over leaf lists."""
    return jnp.real(tree.tree_vdot(xs, ys, axis_name, owner))


def _lowest_dtype(params):
    # float32 at least (tree.scalar_dtype); Optax keeps MoMo's scalars in the params' lowest dtype (bfloat16 too).
    return tree.scalar_dtype(params)


def _weighted_square(weight, g):
    """``weight * |g|^2``."""
    if jnp.iscomplexobj(g):  # |g|^2: Optax's g * g makes the second moment complex, negative where g is imaginary
        return weight * tree.abs_sq(g)
    return weight * tree.widen(g) * tree.widen(g)  # left to right, as Optax rounds it


def _check_value(owner, value):
    if value is None:
        raise ValueError(
            f"{owner} needs the loss value at the current params: call "
            "update(updates, state, params, value=loss) (jax.value_and_grad gives both)."
        )
    validation.scalar_loss(owner, "value", value)


def _polyak_step(barf, gamma, iprod, norm_sq, lb, alpha, weight_decay, lower_bound, adapt, rho=None):
    """MoMo's step size :math:`\\tau`, and the lower bound for the next step.

    ``rho`` is MoMo-Adam's bias correction :math:`1 - \\beta_1^t` (``None``: 1, MoMo's).
    The operations are Optax's, in its order, so that the numbers are its bits.
    """
    shrink = 1 + alpha * weight_decay
    times_rho = (lambda x: x) if rho is None else (lambda x: rho * x)
    if adapt:  # restart the estimate from the model's value when it is above what the model allows
        cap = shrink * (barf - gamma) + iprod
        threshold = shrink * lb if rho is None else shrink * rho * lb
        restart = cap / (2 * shrink) if rho is None else cap / (2 * rho * shrink)
        lb = jnp.where(cap < threshold, jnp.maximum(restart, lower_bound), lb)
    gap = jnp.maximum(shrink * (barf - times_rho(lb) - gamma) + iprod, 0.0)
    polyak = tree.divide_unless_small(gap, norm_sq, _TINY_NORM)  # no direction: no step
    tau = jnp.minimum(alpha if rho is None else alpha / rho, polyak)
    return tau, shrink


def _lower_bound_now(state, lower_bound, adapt):
    # Without adaptation the bound is the argument's current value (an edit through inject_hyperparams takes
    # effect; Optax reads the copy init made), in the state's dtype as Optax's.
    return state.lb if adapt else jnp.asarray(lower_bound, state.lb.dtype)


def _next_lower_bound(state, barf, gamma, iprod, norm_sq, tau, lb, lower_bound, adapt, rho=None):
    if not adapt:  # kept as it is (as Optax's): an unread state leaf would not take its donated buffer
        return state.lb
    estimate = (barf + iprod - gamma) - (1 / 2) * tau * norm_sq
    return jnp.maximum(estimate if rho is None else estimate / rho, lower_bound)


def _as_before(state, barf, gamma, lb):
    """The scalars in the dtypes ``init`` gave them (with params of mixed dtypes the sums come out wider), so that
    the state keeps one structure and dtype from step to step (for ``jit`` caches, ``lax.scan`` and checkpoints)."""
    return barf.astype(state.barf.dtype), gamma.astype(state.gamma.dtype), jnp.asarray(lb).astype(state.lb.dtype)


def _hyperparameters(owner, learning_rate, lower_bound, weight_decay, adapt_lower_bound, axis_name):
    """``(learning_rate, axis_name)``, validated; a ``None`` rate is 1, as for every optimizer here."""
    validation.learning_rate(owner, learning_rate)
    validation.real_scalar(owner, "lower_bound", lower_bound)
    validation.non_negative(owner, "weight_decay", weight_decay)
    validation.flag(owner, "adapt_lower_bound", adapt_lower_bound)
    return 1.0 if learning_rate is None else learning_rate, validation.axis_name(owner, axis_name)


def _in_update_dtype(step: jax.Array, g: jax.Array) -> jax.Array:
    # The float32 step scalars must not widen a bfloat16 update (Optax's keep the gradient's dtype); float16
    # gradients' updates are float32, as everywhere here.
    return step.astype(tree.moment_dtype(jnp.result_type(g)))


class MomoState(NamedTuple):
    """The gradients' moving average ``exp_avg`` (per parameter), the moving averages of the loss
    ``barf`` and of :math:`\\langle g, x\\rangle` ``gamma``, the loss lower bound ``lb`` (the running estimate with
    ``adapt_lower_bound``; without it the ``lower_bound`` given to ``init``, as Optax's, while the step reads the
    argument's current value) and the step ``count`` (Optax's fields, in its order)."""

    exp_avg: Updates
    barf: jax.Array
    gamma: jax.Array
    lb: jax.Array
    count: jax.Array


def scale_by_momo(
    learning_rate: ScalarOrSchedule = 1.0,
    beta: jax.typing.ArrayLike = 0.9,
    lower_bound: jax.typing.ArrayLike = 0.0,
    weight_decay: jax.typing.ArrayLike = 0.0,
    adapt_lower_bound: bool = False,
    *,
    mu_dtype: StateDtype = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """MoMo (Schaipp et al. 2023): SGD with momentum and an adaptive, Polyak-type step; gives the whole step.

    With :math:`\\beta_1 = 0` at the first step and :math:`\\beta` after it (the averages start at
    the first values), the loss :math:`f_t` passed as ``value``, :math:`\\alpha_t` the learning
    rate and :math:`\\lambda` the weight decay:

    .. math::

        d_t = \\beta_t d_{t-1} + (1 - \\beta_t) g_t, \\quad
        \\bar f_t = \\beta_t \\bar f_{t-1} + (1 - \\beta_t) f_t, \\quad
        \\gamma_t = \\beta_t \\gamma_{t-1} + (1 - \\beta_t) \\langle g_t, x_t \\rangle, \\\\
        \\tau_t = \\min\\Big\\{\\alpha_t,\\ \\frac{\\big((1 + \\alpha_t\\lambda)(\\bar f_t - f_\\ast - \\gamma_t)
        + \\langle d_t, x_t\\rangle\\big)_+}{\\|d_t\\|^2}\\Big\\}, \\qquad
        x_{t+1} = \\frac{x_t - \\tau_t d_t}{1 + \\alpha_t \\lambda},

    with :math:`\\tau_t = 0` where :math:`\\|d_t\\|^2` is at most float64's machine epsilon. The
    output is the whole step :math:`x_{t+1} - x_t` (the learning rate acts inside the rule, so
    nothing is chained after it). With ``adapt_lower_bound`` the bound :math:`f_\\ast` is
    estimated on the fly from ``lower_bound`` (the paper's MoMo*): restarted at
    :math:`\\max(c / (2(1 + \\alpha\\lambda)), f_\\ast^{0})` when the model value
    :math:`c = (1 + \\alpha\\lambda)(\\bar f_t - \\gamma_t) + \\langle d_t, x_t\\rangle` falls below
    :math:`(1 + \\alpha\\lambda) f_\\ast`, then moved to
    :math:`\\max(\\bar f_t + \\langle d_t, x_t\\rangle - \\gamma_t - \\tfrac12 \\tau_t \\|d_t\\|^2, f_\\ast^{0})`.

    Numerically identical to ``optax.contrib.momo`` (states included) when ``weight_decay``
    is 0. Differences from ``optax.contrib.momo``: with weight decay Optax steps
    :math:`x_t / (1 + \\alpha\\lambda) - \\tau_t d_t`, not dividing the momentum step by
    :math:`1 + \\alpha\\lambda`; that contradicts the paper's proximal step (whose
    :math:`\\tau_t` it computes) and the authors' code, so here the paper's update is taken.
    ``value`` missing, or not a scalar (an unreduced loss would give per-element step sizes
    and a state of its shape), raises a ``ValueError`` saying how to pass it; updates whose
    tree or shapes differ from the state's raise naming the paths; ``mu_dtype`` (storage of
    ``exp_avg``: a dtype, :class:`~jaxopt_zoo.storage.StochasticBF16`,
    :class:`~jaxopt_zoo.quantization.Blockwise8Bit`) and ``axis_name`` are additions; a float16
    param's moments are float32; the scalars are float32 at least (:func:`jaxopt_zoo.tree.scalar_dtype`:
    Optax keeps them in the params' lowest dtype, bfloat16 too) and keep the dtype ``init`` gives them
    (Optax's widen after the first step when the params' dtypes are mixed); a
    ``None`` update keeps its state and leaves the sums; bad hyperparameters raise when built;
    without ``adapt_lower_bound`` each step reads ``lower_bound`` itself (Optax reads the copy
    ``init`` stored, so an edit through ``inject_hyperparams`` does nothing there).

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, the largest step, or a schedule of the step count
            (1 is the authors' recommendation; ``None`` is 1).
        beta: :math:`\\beta \\in [0, 1)`, the decay of the moving averages.
        lower_bound: :math:`f_\\ast`, a lower bound of the loss (0 for most losses).
        weight_decay: :math:`\\lambda \\ge 0`.
        adapt_lower_bound: estimate the lower bound on the fly, starting from ``lower_bound``.
        mu_dtype: storage of ``exp_avg`` (see :mod:`jaxopt_zoo.storage`).
        axis_name: inside ``shard_map``, the mesh axes the params may be sharded over, so that
            the inner products and the norm are the whole tree's.

    Example:
        >>> import jax, jax.numpy as jnp, jaxopt_zoo as jz
        >>> f = lambda x: jnp.sum(x**2)
        >>> tx, params = jz.scale_by_momo(), jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(params)
        >>> value, grads = jax.value_and_grad(f)(params)
        >>> updates, state = tx.update(grads, state, params, value=value)
        >>> f(jz.apply_updates(params, updates))  # tau = min(1, (14 - 0 - 28 + 28) / 56): halves the params
        Array(3.5, dtype=float32)

    References:
        Schaipp, Ohana, Eickenberg, Defazio and Gower, "MoMo: Momentum Models for Adaptive
        Learning Rates", ICML 2024 (arXiv:2305.07583), Algorithms 1 and 3.
    """
    owner = "scale_by_momo"
    learning_rate, axis_name = _hyperparameters(
        owner, learning_rate, lower_bound, weight_decay, adapt_lower_bound, axis_name)
    validation.decay_rate(owner, "beta", beta)
    mu_dtype = resolve(owner, "mu_dtype", mu_dtype)

    def init(params):
        dtype = _lowest_dtype(params)
        # Distinct arrays for distinct fields, so that a donated state holds no buffer twice.
        barf, gamma = jnp.zeros([], dtype), jnp.zeros([], dtype)
        return MomoState(tree.moments_like(params), barf, gamma, jnp.array(lower_bound, dtype), zero_count())

    def update(updates, state, params=None, *, value=None, **extra_args):
        del extra_args
        validation.require_params(owner, params)
        _check_value(owner, value)
        tree.check_same_structure(owner, updates, params, "the params")
        tree.check_same_structure(owner, updates, state.exp_avg, "the momentum (state.exp_avg)")
        count = state.count
        bt = jnp.where(count == 0, 0.0, beta)  # the averages start at the first values
        barf = bt * state.barf + (1 - bt) * jnp.asarray(value, dtype=state.barf.dtype)
        exp_avg = tree.map_state(lambda g, d: bt * d + (1 - bt) * tree.widen(g), updates, state.exp_avg)
        grads, ds, xs = _present(updates, exp_avg, params)
        gamma = bt * state.gamma + (1 - bt) * _inner(owner, grads, xs, axis_name)
        norm_sq = sum_over_shards(owner, ((jnp.sum(tree.abs_sq(d)), d) for d in ds), axis_name)
        iprod = _inner(owner, ds, xs, axis_name)
        alpha = learning_rate(count) if callable(learning_rate) else learning_rate
        lb = _lower_bound_now(state, lower_bound, adapt_lower_bound)
        tau, shrink = _polyak_step(barf, gamma, iprod, norm_sq, lb, alpha, weight_decay, lower_bound, adapt_lower_bound)
        decay, momentum_step = alpha * weight_decay / shrink, tau / shrink
        step = tree.map_updates(lambda g, d, x: _in_update_dtype(-decay * x - momentum_step * d, g), updates, exp_avg,
                                params)
        lb = _next_lower_bound(state, barf, gamma, iprod, norm_sq, tau, lb, lower_bound, adapt_lower_bound)
        return step, MomoState(exp_avg, *_as_before(state, barf, gamma, lb), safe_increment(count))

    tx = with_storage(GradientTransformation(init, update), signed={"exp_avg": mu_dtype})
    return expects_state(owner, tx, MomoState)


class MomoAdamState(NamedTuple):
    """:class:`MomoState` with Adam's second moment ``exp_avg_sq`` (Optax's fields, in its order)."""

    exp_avg: Updates
    exp_avg_sq: Updates
    barf: jax.Array
    gamma: jax.Array
    lb: jax.Array
    count: jax.Array


def scale_by_momo_adam(
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
    """MoMo-Adam (Schaipp et al. 2023): Adam(W) with an adaptive, Polyak-type step; gives the whole step.

    With :math:`\\rho_t = 1 - \\beta_1^t`, the loss :math:`f_t` passed as ``value`` and the
    averages started at 0:

    .. math::

        d_t = \\beta_1 d_{t-1} + (1 - \\beta_1) g_t, \\quad
        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2, \\quad
        D_t = \\epsilon + \\sqrt{v_t / (1 - \\beta_2^t)}, \\\\
        \\bar f_t = \\beta_1 \\bar f_{t-1} + (1 - \\beta_1) f_t, \\quad
        \\gamma_t = \\beta_1 \\gamma_{t-1} + (1 - \\beta_1) \\langle g_t, x_t \\rangle, \\\\
        \\tau_t = \\min\\Big\\{\\frac{\\alpha_t}{\\rho_t},\\
        \\frac{\\big((1 + \\alpha_t\\lambda)(\\bar f_t - \\rho_t f_\\ast - \\gamma_t)
        + \\langle d_t, x_t\\rangle\\big)_+}{\\langle d_t, d_t / D_t\\rangle}\\Big\\}, \\qquad
        x_{t+1} = \\frac{x_t - \\tau_t d_t / D_t}{1 + \\alpha_t \\lambda},

    with :math:`\\tau_t = 0` where :math:`\\langle d_t, d_t / D_t\\rangle` is at most float64's
    machine epsilon; ``adapt_lower_bound`` estimates :math:`f_\\ast` as in :func:`scale_by_momo`,
    with :math:`\\rho_t` (restart at :math:`c / (2 \\rho_t (1 + \\alpha\\lambda))` when
    :math:`c < (1 + \\alpha\\lambda)\\rho_t f_\\ast`; next bound
    :math:`(\\bar f_t + \\langle d_t, x_t\\rangle - \\gamma_t
    - \\tfrac12 \\tau_t \\langle d_t, d_t/D_t\\rangle) / \\rho_t`).
    The output is the whole step :math:`x_{t+1} - x_t`.

    Numerically identical to ``optax.contrib.momo_adam`` (states included) when
    ``weight_decay`` is 0 and the params are real. Differences from ``optax.contrib.momo_adam``:
    with weight decay Optax steps :math:`x_t / (1 + \\alpha\\lambda) - \\tau_t d_t / D_t`, not dividing the Adam step
    by :math:`1 + \\alpha\\lambda` as the paper's proximal step and the authors' code do; the
    paper's update is taken here. ``mu_dtype``/``nu_dtype`` (storage of ``exp_avg`` and
    ``exp_avg_sq``) and ``axis_name`` are additions; a missing or non-scalar ``value`` raises a
    ``ValueError``, as do updates shaped otherwise than the state; with :math:`\\epsilon = 0`,
    :math:`d_t / D_t` is 0 where :math:`v_t = 0` (no gradient yet: Optax's 0/0 is NaN, and
    through :math:`\\langle d_t, d_t / D_t\\rangle` so is the whole step); a float16 param's
    moments and the scalars are float32; the scalars keep their ``init`` dtype with mixed-dtype
    params (Optax's widen); a ``None`` update keeps its state and leaves the sums; bad
    hyperparameters raise when built; ``lower_bound`` is read each step as in
    :func:`scale_by_momo`; for complex gradients :math:`g_t^2` is :math:`|g_t|^2`
    (Optax squares the complex number, so its :math:`v_t` is complex and goes negative where
    :math:`g_t` is imaginary, which turns its step away from :math:`-d_t`).

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, or a schedule of the step count (1e-2 is the authors'
            recommendation; ``None`` is 1).
        b1: :math:`\\beta_1 \\in [0, 1)`, the decay of the gradient, loss and inner-product averages.
        b2: :math:`\\beta_2 \\in [0, 1)`, the decay of the squared-gradient average.
        eps: :math:`\\epsilon \\ge 0`, added to :math:`\\sqrt{\\hat v}`.
        lower_bound: :math:`f_\\ast`, a lower bound of the loss (0 for most losses).
        weight_decay: :math:`\\lambda \\ge 0`.
        adapt_lower_bound: estimate the lower bound on the fly, starting from ``lower_bound``.
        mu_dtype: storage of ``exp_avg`` (see :mod:`jaxopt_zoo.storage`).
        nu_dtype: storage of ``exp_avg_sq``.
        axis_name: inside ``shard_map``, the mesh axes the params may be sharded over.

    Example:
        >>> import jax, jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_momo_adam(learning_rate=0.1)
        >>> params = jnp.array([1.0, -2.0])
        >>> updates, state = tx.update(jnp.array([1.0, -1.0]), tx.init(params), params, value=10.0)
        >>> updates  # tau at its cap alpha / (1 - b1) = 1, times d / D = 0.1 g / |g|
        Array([-0.09999934,  0.09999934], dtype=float32)

    References:
        Schaipp, Ohana, Eickenberg, Defazio and Gower, "MoMo: Momentum Models for Adaptive
        Learning Rates", ICML 2024 (arXiv:2305.07583), Algorithm 2 (MoMo-Adam).
    """
    owner = "scale_by_momo_adam"
    learning_rate, axis_name = _hyperparameters(
        owner, learning_rate, lower_bound, weight_decay, adapt_lower_bound, axis_name)
    validation.decay_rate(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    validation.epsilon(owner, "eps", eps)
    guard = validation.may_all_be_zero(eps)
    mu_dtype = resolve(owner, "mu_dtype", mu_dtype)
    nu_dtype = resolve(owner, "nu_dtype", nu_dtype)

    def init(params):
        dtype = _lowest_dtype(params)
        barf, gamma = jnp.zeros([], dtype), jnp.zeros([], dtype)  # distinct buffers (donation)
        return MomoAdamState(tree.moments_like(params), tree.moments_like(params), barf, gamma,
                             jnp.array(lower_bound, dtype), zero_count())

    def update(updates, state, params=None, *, value=None, **extra_args):
        del extra_args
        validation.require_params(owner, params)
        _check_value(owner, value)
        tree.check_same_structure(owner, updates, params, "the params")
        tree.check_same_structure(owner, updates, state.exp_avg, "the momentum (state.exp_avg)")
        count = safe_increment(state.count)
        barf = b1 * state.barf + (1 - b1) * jnp.asarray(value, dtype=state.barf.dtype)
        exp_avg = tree.map_state(lambda g, d: b1 * d + (1 - b1) * tree.widen(g), updates, state.exp_avg)
        exp_avg_sq = tree.map_state(lambda g, v: b2 * v + _weighted_square(1 - b2, g), updates, state.exp_avg_sq)
        bc2 = jnp.asarray(1 - b2**count, dtype=barf.dtype)
        # a / D_t, D_t = sqrt(v_t / (1 - b2^t)) + eps; with eps = 0, 0 where D_t = 0 (as jz.adam(eps=0)).
        over = lambda a, v: tree.over_root(a, v / bc2, eps, guard)  # noqa: E731
        grads, ds, xs, vs = _present(updates, exp_avg, params, exp_avg_sq)
        norm_sq = _inner(owner, ds, [over(d, v) for d, v in zip(ds, vs)], axis_name)
        gamma = b1 * state.gamma + (1 - b1) * _inner(owner, grads, xs, axis_name)
        iprod = _inner(owner, ds, xs, axis_name)
        alpha = learning_rate(state.count) if callable(learning_rate) else learning_rate
        bc1 = jnp.asarray(1 - b1**count, dtype=barf.dtype)
        lb = _lower_bound_now(state, lower_bound, adapt_lower_bound)
        tau, shrink = _polyak_step(barf, gamma, iprod, norm_sq, lb, alpha, weight_decay, lower_bound,
                                   adapt_lower_bound, rho=bc1)
        decay, adam_step = alpha * weight_decay / shrink, tau / shrink
        step = tree.map_updates(lambda g, d, v, x: _in_update_dtype(-decay * x - over(adam_step * d, v), g),
                                updates, exp_avg, exp_avg_sq, params)
        lb = _next_lower_bound(state, barf, gamma, iprod, norm_sq, tau, lb, lower_bound, adapt_lower_bound, rho=bc1)
        return step, MomoAdamState(exp_avg, exp_avg_sq, *_as_before(state, barf, gamma, lb), count)

    tx = with_storage(GradientTransformation(init, update), signed={"exp_avg": mu_dtype},
                      non_negative={"exp_avg_sq": nu_dtype})
    return expects_state(owner, tx, MomoAdamState)
