"""Adam's relatives: Yogi's additive second moment, AdaBelief's belief in the gradient, Adan's Nesterov moments.

Yogi and AdaBelief keep a step count, a first moment ``mu`` (signed) and a
second moment ``nu`` (non-negative), which take the storage options
``mu_dtype`` and ``nu_dtype``; Adan keeps three moments and the previous
gradient, each with its own storage option. ``None`` update leaves pass
through and keep their state. (Adamax and RAdam live in
:mod:`jaxopt_zoo.transforms.adam_variants`.)
ACProp (:func:`scale_by_acprop`) keeps AdaBelief's state and divides by its
second moment one step late.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.chain(jz.scale_by_yogi(), jz.scale_by_learning_rate(1e-2))
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, Updates, expects_state, init_only, safe_increment, zero_count
from jaxopt_zoo.storage import StateDtype, resolve, with_storage
from jaxopt_zoo.transforms.adaptive import ScaleByAdamState

__all__ = [
    "ScaleByAdanState",
    "ScaleByBeliefState",
    "scale_by_acprop",
    "scale_by_adan",
    "scale_by_belief",
    "scale_by_yogi",
]


@init_only("initial_accumulator_value")
def scale_by_yogi(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-3,
    eps_root: jax.typing.ArrayLike = 0.0,
    initial_accumulator_value: jax.typing.ArrayLike = 1e-6,
    *,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """Yogi (Zaheer et al. 2018): Adam whose second moment moves additively, by at most :math:`(1-\\beta_2) g_t^2`.

    .. math::

        m_t &= \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\qquad
        v_t = v_{t-1} - (1 - \\beta_2)\\, \\operatorname{sign}(v_{t-1} - g_t^2)\\, g_t^2, \\\\
        u_t &= \\frac{m_t / (1 - \\beta_1^t)}{\\sqrt{v_t / (1 - \\beta_2^t) + \\bar\\varepsilon} + \\varepsilon},
        \\qquad m_0 = v_0 = v_{\\text{init}}.

    Adam's :math:`v_t - v_{t-1} = -(1-\\beta_2)(v_{t-1} - g_t^2)` shrinks :math:`v` by a fraction of
    itself when gradients fall; Yogi's step has the size of :math:`g_t^2` alone, so the effective
    learning rate grows slowly. :math:`v_t` stays positive: it is at least :math:`\\beta_2 v_{t-1}`.
    For complex gradients :math:`g_t^2` is :math:`|g_t|^2`. Both moments start at
    ``initial_accumulator_value`` and are bias-corrected as in Adam, as Optax does (the paper's
    Algorithm 2 states the rule without bias correction).

    Numerically identical to ``optax.scale_by_yogi``, whose state is also a ``ScaleByAdamState``.
    Deviations from Optax: a negative ``initial_accumulator_value`` raises (Optax documents that
    only positive values are allowed but does not check; 0 is accepted here); with
    ``eps = eps_root = 0`` the update is 0 where the denominator is 0, not 0/0; a ``None`` update
    keeps its moments; ``mu_dtype`` and ``nu_dtype`` are additions.

    Args:
        b1: decay :math:`\\beta_1 \\in [0, 1)` of the first moment.
        b2: :math:`\\beta_2 \\in [0, 1)`: the second moment moves by :math:`(1-\\beta_2) g_t^2` per step.
        eps: :math:`\\varepsilon \\ge 0`, added outside the square root (Optax's default 1e-3).
        eps_root: :math:`\\bar\\varepsilon \\ge 0`, added inside the square root.
        initial_accumulator_value: :math:`v_{\\text{init}} \\ge 0`, the starting value of both moments.
        mu_dtype: storage of the first moment: a storage (see :mod:`jaxopt_zoo.storage`).
        nu_dtype: storage of the second moment, as for ``mu_dtype``.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_yogi(initial_accumulator_value=0.0, eps=0.0)
        >>> updates, state = tx.update(jnp.array([0.5, -2.0]), tx.init(jnp.zeros(2)))
        >>> updates  # from zero moments the first step is g / |g|, as in Adam, up to rounding
        Array([ 0.99999..., -0.99999...], dtype=float32)

    References:
        Zaheer, Reddi, Sachan, Kale & Kumar, "Adaptive Methods for Nonconvex Optimization", NeurIPS 2018.
    """
    owner = "scale_by_yogi"
    validation.decay_rate(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    validation.epsilon(owner, "eps", eps)
    validation.epsilon(owner, "eps_root", eps_root)
    validation.non_negative(owner, "initial_accumulator_value", initial_accumulator_value)
    guard = validation.may_all_be_zero(eps, eps_root)
    mu_dtype = resolve(owner, "mu_dtype", mu_dtype)
    nu_dtype = resolve(owner, "nu_dtype", nu_dtype)

    def init(params):
        start = initial_accumulator_value
        return ScaleByAdamState(zero_count(), tree.moments_like(params, start), tree.moments_like(params, start))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.mu, "the first moment (state.mu)")
        count = safe_increment(state.count)
        mu = tree.update_moment(updates, state.mu, b1, 1)
        # Optax's order of operations, so that float32 agrees bit for bit.
        yogi_step = lambda g, v: v - (1 - b2) * jnp.sign(v - tree.abs_sq(g)) * tree.abs_sq(g)
        nu = tree.map_state(yogi_step, updates, state.nu)
        mu_hat = tree.bias_correction(mu, b1, count)
        nu_hat = tree.bias_correction(nu, b2, count)
        return tree.moment_ratio(updates, mu_hat, nu_hat, eps, eps_root, guard), ScaleByAdamState(count, mu, nu)

    tx = with_storage(GradientTransformation(init, update), signed={"mu": mu_dtype}, non_negative={"nu": nu_dtype})
    return expects_state(owner, tx, ScaleByAdamState)


class ScaleByBeliefState(NamedTuple):
    """Step count, first moment ``mu`` and second moment ``nu`` of the prediction error ``g - mu``."""

    count: jax.Array
    mu: Updates
    nu: Updates


def scale_by_belief(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-16,
    eps_root: jax.typing.ArrayLike = 1e-16,
    *,
    nesterov: bool = False,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """AdaBelief (Zhuang et al. 2020): Adam with the variance of the gradient around its mean,
    :math:`(g_t - m_t)^2`, in place of :math:`g_t^2`.

    .. math::

        m_t &= \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\qquad
        s_t = \\beta_2 s_{t-1} + (1 - \\beta_2) (g_t - m_t)^2 + \\bar\\varepsilon, \\\\
        u_t &= \\frac{m_t / (1 - \\beta_1^t)}{\\sqrt{s_t / (1 - \\beta_2^t)} + \\varepsilon}.

    The step is large where the gradient agrees with its running mean (the "belief") and small
    where it does not. :math:`\\bar\\varepsilon` is added to the stored :math:`s_t` every step, as in
    the paper's Algorithm 2. With ``nesterov=True`` :math:`m_t / (1 - \\beta_1^t)` becomes
    :math:`\\beta_1 m_t / (1 - \\beta_1^{t+1}) + (1 - \\beta_1) g_t / (1 - \\beta_1^t)`, as in
    :func:`~jaxopt_zoo.transforms.adaptive.scale_by_adam`. For complex gradients the square is
    :math:`|g_t - m_t|^2`.

    Numerically identical to ``optax.scale_by_belief`` (defaults ``eps = eps_root = 1e-16`` are
    Optax's; the paper's are ``eps=1e-8``, ``eps_root=0``). Deviations from Optax: with
    ``eps = eps_root = 0`` the update is 0 where the denominator is 0, not 0/0; ``b1 = 0`` raises
    (the prediction error is then 0 and Optax's steps are :math:`g_t / (\\sqrt{\\bar\\varepsilon} + \\varepsilon)`,
    :math:`10^8 g_t` at the defaults); a ``None`` update keeps its moments; ``mu_dtype`` and
    ``nu_dtype`` are additions.

    Args:
        b1: decay :math:`\\beta_1 \\in (0, 1)` of the first moment (0 raises: the prediction error would be 0).
        b2: decay :math:`\\beta_2 \\in [0, 1)` of the second moment of the prediction error.
        eps: :math:`\\varepsilon \\ge 0`, added outside the square root.
        eps_root: :math:`\\bar\\varepsilon \\ge 0`, added to :math:`s_t` (inside the square root) every step.
        nesterov: use Nesterov momentum.
        mu_dtype: storage of the first moment: a storage (see :mod:`jaxopt_zoo.storage`).
        nu_dtype: storage of the second moment, as for ``mu_dtype``.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_belief()
        >>> g = jnp.array([0.5, -2.0])
        >>> updates, state = tx.update(g, tx.init(g))
        >>> updates  # g - m_1 = b1 g, so the first step is g / (b1 |g|)
        Array([ 1.1111..., -1.1111...], dtype=float32)

    References:
        Zhuang, Tang, Ding, Tatikonda, Dvornek, Papademetris & Duncan, "AdaBelief Optimizer: Adapting
        Stepsizes by the Belief in Observed Gradients", NeurIPS 2020.
    """
    owner = "scale_by_belief"
    validation.adam_options(owner, b1, b2, eps, eps_root, nesterov)
    validation.belief_b1(owner, b1)
    guard = validation.may_all_be_zero(eps, eps_root)
    mu_dtype = resolve(owner, "mu_dtype", mu_dtype)
    nu_dtype = resolve(owner, "nu_dtype", nu_dtype)

    def init(params):
        return ScaleByBeliefState(zero_count(), tree.moments_like(params), tree.moments_like(params))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.mu, "the first moment (state.mu)")
        count = safe_increment(state.count)
        mu = tree.update_moment(updates, state.mu, b1, 1)
        nu = _prediction_error_moment(updates, mu, state.nu, b2, eps_root)
        if nesterov:
            mu_hat = tree.map_updates(
                lambda g, m, g_hat: b1 * m + (1 - b1) * g_hat,
                updates,
                tree.bias_correction(mu, b1, safe_increment(count)),
                tree.bias_correction(updates, b1, count),
            )
        else:
            mu_hat = tree.bias_correction(mu, b1, count)
        nu_hat = tree.bias_correction(nu, b2, count)
        return tree.moment_ratio(updates, mu_hat, nu_hat, eps, 0.0, guard), ScaleByBeliefState(count, mu, nu)

    tx = with_storage(GradientTransformation(init, update), signed={"mu": mu_dtype}, non_negative={"nu": nu_dtype})
    return expects_state(owner, tx, ScaleByBeliefState)


def _prediction_error_moment(updates, mu, nu, b2, eps_root):
    """:math:`s_t = \\beta_2 s_{t-1} + (1 - \\beta_2) |g_t - m_t|^2 + \\bar\\varepsilon`, AdaBelief's and ACProp's
    second moment of the gradient around its running mean ``mu`` (already updated with :math:`g_t`)."""
    error = tree.map_updates(lambda g, m: tree.widen(g) - m, updates, mu)
    nu = tree.update_moment_per_elem_norm(error, nu, b2, 2)
    return tree.map_state(lambda g, v: v + eps_root, updates, nu)


def scale_by_acprop(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-16,
    eps_root: jax.typing.ArrayLike = 1e-16,
    *,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """ACProp (Zhuang et al. 2021): AdaBelief's centred second moment, used one step late (asynchronously).

    .. math::

        m_t &= \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\qquad
        s_t = \\beta_2 s_{t-1} + (1 - \\beta_2) (g_t - m_t)^2 + \\bar\\varepsilon, \\\\
        u_t &= \\frac{g_t}{\\sqrt{s_{t-1} / (1 - \\beta_2^{t-1})} + \\varepsilon} \\quad (t > 1), \\qquad
        u_1 = \\frac{g_1}{1 + \\varepsilon},

    from zero moments. The denominator holds information up to step :math:`t-1` only, so it is
    independent of the numerator's :math:`g_t` (the asynchronous update that gives the method its
    convergence guarantee); the moments are AdaBelief's (:func:`scale_by_belief`), the first moment
    serving only to centre the second. For complex gradients the square is :math:`|g_t - m_t|^2`.

    A coordinate whose gradients so far were (nearly) zero has :math:`s_{t-1}` near
    :math:`\\bar\\varepsilon`, so a gradient that then changes there is divided by about
    :math:`\\sqrt{\\bar\\varepsilon}`: a step of many times the learning rate (on Rosenbrock from a
    point where one gradient entry is 0, a loss of ~1 rose to ~10^4 at step 3, in Optax too, Optax
    issue 1132). It is the rule's, not rounding; a larger ``eps`` bounds it. In 8-bit codes such an entry
    of :math:`s`, far below its block's largest, keeps few significant bits, so these steps can differ from
    float32's by a factor of about 3 (on a small transformer's gradients, the largest second step was
    :math:`1.3 \\cdot 10^5` learning rates in float32 and :math:`4.9 \\cdot 10^4` with ``nu_dtype`` 8-bit).

    Differences from ``optax.contrib.scale_by_acprop`` (whose state is also a ``ScaleByBeliefState``):
    Optax centres the gradient on the *previous* mean, :math:`(g_t - m_{t-1})^2`, against its own
    docstring's formula, the paper and the authors' code (``grad - exp_avg`` after ``exp_avg`` took
    :math:`g_t`); here it is :math:`(g_t - m_t)^2`, so from the second step on the two differ (the
    first step is the same). With ``eps = eps_root = 0`` the update is 0 where the denominator is 0, not
    0/0; a ``None`` update keeps its moments; ``mu_dtype`` and ``nu_dtype`` are additions.

    Args:
        b1: decay :math:`\\beta_1 \\in (0, 1)` of the running mean (0 raises, as for :func:`scale_by_belief`).
        b2: decay :math:`\\beta_2 \\in [0, 1)` of the centred second moment.
        eps: :math:`\\varepsilon \\ge 0`, added outside the square root.
        eps_root: :math:`\\bar\\varepsilon \\ge 0`, added to :math:`s_t` every step.
        mu_dtype: storage of the running mean: a storage (see :mod:`jaxopt_zoo.storage`).
        nu_dtype: storage of the centred second moment, as for ``mu_dtype``.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_acprop()
        >>> state = tx.init(jnp.zeros(2))
        >>> updates, state = tx.update(jnp.array([0.5, -2.0]), state)
        >>> updates  # no second moment yet: the first step is the gradient
        Array([ 0.5, -2. ], dtype=float32)
        >>> updates, state = tx.update(jnp.array([0.5, -2.0]), state)
        >>> updates  # g / sqrt(s_1 / (1 - b2)) = g / (b1 |g|): s_1 = (1 - b2) (b1 g)^2
        Array([ 1.1111..., -1.1111...], dtype=float32)

    References:
        Zhuang, Ding, Tang, Dvornek, Tatikonda & Duncan, "Momentum Centering and Asynchronous Update for
        Adaptive Gradient Methods", NeurIPS 2021 (arXiv:2110.05454).
    """
    owner = "scale_by_acprop"
    validation.belief_b1(owner, b1)
    validation.decay_rate(owner, "b2", b2)
    validation.epsilon(owner, "eps", eps)
    validation.epsilon(owner, "eps_root", eps_root)
    guard = validation.may_all_be_zero(eps, eps_root)
    mu_dtype = resolve(owner, "mu_dtype", mu_dtype)
    nu_dtype = resolve(owner, "nu_dtype", nu_dtype)

    def init(params):
        return ScaleByBeliefState(zero_count(), tree.moments_like(params), tree.moments_like(params))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.mu, "the first moment (state.mu)")
        count = safe_increment(state.count)
        mu = tree.update_moment(updates, state.mu, b1, 1)
        nu = _prediction_error_moment(updates, mu, state.nu, b2, eps_root)
        # The denominator is s_{t-1}, corrected for its t - 1 steps; on the first step (s_0 = 0) it is 1.
        first = state.count == 0
        previous = tree.bias_correction(state.nu, b2, jnp.where(first, count, state.count))
        previous = tree.map_updates(lambda g, v: jnp.where(first, 1, v), updates, previous)
        gradient = tree.map_updates(tree.widen, updates)
        return tree.moment_ratio(updates, gradient, previous, eps, 0.0, guard), ScaleByBeliefState(count, mu, nu)

    tx = with_storage(GradientTransformation(init, update), signed={"mu": mu_dtype}, non_negative={"nu": nu_dtype})
    return expects_state(owner, tx, ScaleByBeliefState)


class ScaleByAdanState(NamedTuple):
    """Moments ``m`` (gradient), ``v`` (gradient difference), ``n`` (squared Nesterov gradient), the previous
    gradient ``g`` and the step count ``t``, as Optax names them; ``count`` is filled by ``with_storage`` only
    when a storage rounds stochastically."""

    m: Updates
    v: Updates
    n: Updates
    g: Updates
    t: jax.Array
    count: jax.Array | None = None


def scale_by_adan(
    b1: jax.typing.ArrayLike = 0.98,
    b2: jax.typing.ArrayLike = 0.92,
    b3: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    *,
    m_dtype: StateDtype = None,
    v_dtype: StateDtype = None,
    n_dtype: StateDtype = None,
    g_dtype: StateDtype = None,
) -> GradientTransformation:
    """Adan (Xie et al. 2022): adaptive Nesterov momentum estimated from gradient differences.

    With :math:`d_t = g_t - g_{t-1}` (:math:`d_1 = 0`):

    .. math::

        m_t &= \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\qquad
        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) d_t, \\\\
        n_t &= \\beta_3 n_{t-1} + (1 - \\beta_3) \\big(g_t + \\beta_2 d_t\\big)^2, \\\\
        u_t &= \\frac{\\hat m_t + \\beta_2 \\hat v_t}{\\sqrt{\\hat n_t + \\bar\\varepsilon} + \\varepsilon},

    where the hats divide by :math:`1 - \\beta_i^t`. The betas are decays, as in Adam (the paper writes
    :math:`1 - \\beta` for them: its :math:`\\beta_1 = 0.02` is ``b1=0.98`` here). The moments start at 0
    and are bias-corrected, as in the authors' code, where the paper's Algorithm 1 starts them at the first
    gradient. For complex gradients the square is the squared modulus.

    The gradient difference enters with weight :math:`\\beta_2` (0.92 at the default), the paper's
    :math:`1 - \\beta_2` in its notation and the authors' ``beta2``. Deliberate difference from Optax 0.2.8,
    whose ``scale_by_adan`` weights it by :math:`1 - \\beta_2` (0.08: its Nesterov term is about 11 times too
    weak from the second step on; Optax's open pull request 1715); the first step, where :math:`d_1 = 0`, is
    Optax's bit for bit. Other deviations from Optax: with ``eps = eps_root = 0``
    the update is 0 where the denominator is 0, not 0/0; a ``None`` update keeps every state leaf; the
    storage options and the ``count`` field (``None`` unless a storage rounds stochastically) are additions.

    Args:
        b1: decay :math:`\\beta_1 \\in [0, 1)` of the gradient moment.
        b2: decay :math:`\\beta_2 \\in [0, 1)` of the gradient-difference moment.
        b3: decay :math:`\\beta_3 \\in [0, 1)` of the squared moment.
        eps: :math:`\\varepsilon \\ge 0`, added outside the square root.
        eps_root: :math:`\\bar\\varepsilon \\ge 0`, added inside the square root.
        m_dtype: storage of ``m``: a storage (see :mod:`jaxopt_zoo.storage`).
        v_dtype: storage of ``v``, as for ``m_dtype``.
        n_dtype: storage of ``n``, as for ``m_dtype``.
        g_dtype: storage of the previous gradient ``g``, as for ``m_dtype``.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_adan()
        >>> g = jnp.array([0.5, -2.0])
        >>> updates, state = tx.update(g, tx.init(g))
        >>> bool(jnp.allclose(updates, jnp.sign(g)))  # d_1 = 0, so the first step is g / |g|, up to rounding
        True

    References:
        Xie, Zhou, Li, Lin & Yan, "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
        Models", IEEE TPAMI 2024 (arXiv:2208.06677, 2022).
    """
    owner = "scale_by_adan"
    validation.decay_rate(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    validation.decay_rate(owner, "b3", b3)
    validation.epsilon(owner, "eps", eps)
    validation.epsilon(owner, "eps_root", eps_root)
    guard = validation.may_all_be_zero(eps, eps_root)
    storages = {name: resolve(owner, f"{name}_dtype", value)
                for name, value in (("m", m_dtype), ("v", v_dtype), ("n", n_dtype), ("g", g_dtype))}

    def init(params):
        moments = [tree.moments_like(params) for _ in range(4)]
        return ScaleByAdanState(*moments, zero_count())

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.m, "the first moment (state.m)")
        first = state.t == 0
        diff = tree.map_updates(lambda g, p: jnp.where(first, jnp.zeros_like(g), tree.widen(g) - p), updates, state.g)
        m = tree.update_moment(updates, state.m, b1, 1)
        v = tree.update_moment(diff, state.v, b2, 1)
        nesterov_gradient = tree.map_updates(lambda g, d: tree.widen(g) + b2 * d, updates, diff)
        n = tree.update_moment_per_elem_norm(nesterov_gradient, state.n, b3, 2)
        t = safe_increment(state.t)
        m_hat = tree.bias_correction(m, b1, t)
        v_hat = tree.bias_correction(v, b2, t)
        n_hat = tree.bias_correction(n, b3, t)
        direction = tree.map_updates(lambda g, a, b: a + b2 * b, updates, m_hat, v_hat)
        previous = tree.map_state(lambda g, p: tree.widen(g).astype(p.dtype), updates, state.g)
        updates = tree.moment_ratio(updates, direction, n_hat, eps, eps_root, guard)
        return updates, ScaleByAdanState(m, v, n, previous, t, state.count)

    tx = with_storage(
        GradientTransformation(init, update),
        signed={"m": storages["m"], "v": storages["v"], "g": storages["g"]},
        non_negative={"n": storages["n"]},
    )
    return expects_state(owner, tx, ScaleByAdanState)
