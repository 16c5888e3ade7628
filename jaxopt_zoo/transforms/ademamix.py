"""AdEMAMix (Pagliardini et al. 2024): a mixture of a fast and a slow momentum; and its simplified form.

AdEMAMix adds to Adam's fast momentum ``m1`` a slow one ``m2`` (decay
:math:`\\beta_3`, close to 1) that remembers gradients for thousands of steps;
the simplified AdEMAMix of Morwani et al. (2025) keeps a single undamped
momentum instead. Every moment is per-parameter and takes a storage option
(``mu_dtype``, ``m2_dtype``, ``nu_dtype``). ``None`` update leaves pass through
and keep their state.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.chain(jz.scale_by_ademamix(b3=0.999, alpha=5.0), jz.scale_by_learning_rate(1e-3))
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, ScalarOrSchedule, Updates, expects_state, safe_increment, zero_count
from jaxopt_zoo.storage import StateDtype, resolve, with_storage

__all__ = [
    "ScaleByAdemamixState",
    "ScaleBySimplifiedAdEMAMixState",
    "scale_by_ademamix",
    "scale_by_simplified_ademamix",
]


def _at(value: ScalarOrSchedule, count: jax.Array) -> jax.typing.ArrayLike:
    # A hyperparameter that may be a schedule of the 0-based step count.
    return value(count) if callable(value) else value


def _decay_or_schedule(owner: str, name: str, value: ScalarOrSchedule) -> None:
    if not callable(value):
        validation.decay_rate(owner, name, value)


class ScaleByAdemamixState(NamedTuple):
    """Step counts (``count`` for the fast moment and ``nu``, ``count_m2`` for the slow moment's schedules,
    as Optax keeps them), the fast EMA ``m1``, the slow EMA ``m2`` and the second moment ``nu``."""

    count: jax.Array
    count_m2: jax.Array
    m1: Updates
    m2: Updates
    nu: Updates


def scale_by_ademamix(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    b3: ScalarOrSchedule = 0.9999,
    alpha: ScalarOrSchedule = 6.0,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: StateDtype = None,
    *,
    m2_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """AdEMAMix (Pagliardini et al. 2024): Adam's step with a slow momentum mixed into the numerator.

    .. math::

        m^{(1)}_t &= \\beta_1 m^{(1)}_{t-1} + (1 - \\beta_1) g_t, \\qquad
        m^{(2)}_t = \\beta_3(t) m^{(2)}_{t-1} + (1 - \\beta_3(t)) g_t, \\qquad
        \\nu_t = \\beta_2 \\nu_{t-1} + (1 - \\beta_2) g_t^2, \\\\
        u_t &= \\frac{m^{(1)}_t / (1 - \\beta_1^t) + \\alpha(t)\\, m^{(2)}_t}
                    {\\sqrt{\\nu_t / (1 - \\beta_2^t) + \\bar\\varepsilon} + \\varepsilon},

    from zero moments. The slow momentum is not bias-corrected, so that it fills slowly (the paper's
    Algorithm 1). :math:`\\beta_3` and :math:`\\alpha` may be schedules of the 0-based step count: the
    paper warms :math:`\\alpha` up linearly and :math:`\\beta_3` along
    :math:`\\exp\\big(\\ln\\beta_s \\ln\\beta_3 / ((1 - \\tau)\\ln\\beta_3 + \\tau\\ln\\beta_s)\\big)`,
    :math:`\\tau = t / T_{\\beta_3}`, for long horizons. For complex gradients :math:`g_t^2` is :math:`|g_t|^2`.

    Numerically identical to ``optax.contrib.scale_by_ademamix``, with the same state. Differences from
    ``optax.contrib.scale_by_ademamix``: Optax's ``mu_dtype`` only sets the dtype of the initial zeros
    of all three moments, and its update does not cast them back, so from the second step on they are
    in the gradients' dtype (a bfloat16 ``mu_dtype`` becomes float32 and a jitted update retraces);
    here each moment stays in its storage. ``mu_dtype`` keeps ``m1``; ``m2_dtype`` and ``nu_dtype``
    (additions) keep ``m2`` and ``nu`` and default to ``mu_dtype``, as in Optax; each also takes
    :class:`~jaxopt_zoo.storage.StochasticBF16` and :class:`~jaxopt_zoo.quantization.Blockwise8Bit`.
    With ``eps = eps_root = 0`` the update is 0 where the denominator is 0, not 0/0; a ``None`` update
    keeps its moments; bad hyperparameters raise when the transformation is built.

    Args:
        b1: decay :math:`\\beta_1 \\in [0, 1)` of the fast EMA.
        b2: decay :math:`\\beta_2 \\in [0, 1)` of the second moment.
        b3: decay :math:`\\beta_3 \\in [0, 1)` of the slow EMA, or a schedule of the step count.
        alpha: weight :math:`\\alpha \\ge 0` of the slow EMA, or a schedule of the step count.
        eps: :math:`\\varepsilon \\ge 0`, added outside the square root.
        eps_root: :math:`\\bar\\varepsilon \\ge 0`, added inside the square root.
        mu_dtype: storage of the fast EMA ``m1``: a storage (see :mod:`jaxopt_zoo.storage`).
        m2_dtype: storage of the slow EMA ``m2``; ``None`` follows ``mu_dtype``.
        nu_dtype: storage of the second moment ``nu``; ``None`` follows ``mu_dtype``.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_ademamix(alpha=0.0)
        >>> g = jnp.array([0.5, -2.0])
        >>> updates, state = tx.update(g, tx.init(g))
        >>> updates  # alpha = 0 is Adam: the first step is g / |g|, up to eps
        Array([ 0.99999..., -0.99999...], dtype=float32)
        >>> state.m2  # (1 - b3) g
        Array([ 5.e-05, -2.e-04], dtype=float32)

    References:
        Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older", ICLR 2025
        (arXiv:2409.03137).
    """
    owner = "scale_by_ademamix"
    validation.decay_rate(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    _decay_or_schedule(owner, "b3", b3)
    validation.scalar_or_schedule(owner, "alpha", alpha)
    validation.epsilon(owner, "eps", eps)
    validation.epsilon(owner, "eps_root", eps_root)
    guard = validation.may_all_be_zero(eps, eps_root)
    m1_store = resolve(owner, "mu_dtype", mu_dtype)
    m2_store = m1_store if m2_dtype is None else resolve(owner, "m2_dtype", m2_dtype)
    nu_store = m1_store if nu_dtype is None else resolve(owner, "nu_dtype", nu_dtype)

    def init(params):
        moments = [tree.moments_like(params) for _ in range(3)]
        return ScaleByAdemamixState(zero_count(), zero_count(), *moments)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.m1, "the fast EMA (state.m1)")
        b3_t, alpha_t = _at(b3, state.count_m2), _at(alpha, state.count_m2)
        m1 = tree.update_moment(updates, state.m1, b1, 1)
        m2 = tree.update_moment(updates, state.m2, b3_t, 1)
        nu = tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count, count_m2 = safe_increment(state.count), safe_increment(state.count_m2)
        m1_hat = tree.bias_correction(m1, b1, count)
        mixture = tree.map_updates(lambda g, fast, slow: fast + alpha_t * slow, updates, m1_hat, m2)
        nu_hat = tree.bias_correction(nu, b2, count)
        new_updates = tree.moment_ratio(updates, mixture, nu_hat, eps, eps_root, guard)
        return new_updates, ScaleByAdemamixState(count, count_m2, m1, m2, nu)

    tx = with_storage(
        GradientTransformation(init, update),
        signed={"m1": m1_store, "m2": m2_store},
        non_negative={"nu": nu_store},
    )
    return expects_state(owner, tx, ScaleByAdemamixState)


class ScaleBySimplifiedAdEMAMixState(NamedTuple):
    """Step count ``t``, the undamped momentum ``m`` and the second moment ``n`` (Optax's names); ``count`` is
    filled by ``with_storage`` only when a storage rounds stochastically."""

    t: jax.Array
    m: Updates
    n: Updates
    count: jax.Array | None = None


def scale_by_simplified_ademamix(
    b1: jax.typing.ArrayLike = 0.99,
    b2: jax.typing.ArrayLike = 0.95,
    alpha: ScalarOrSchedule = 0.0,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    *,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """Simplified AdEMAMix (Morwani et al. 2025): one undamped momentum plus :math:`\\alpha` times the gradient.

    .. math::

        m_t = \\beta_1 m_{t-1} + g_t, \\qquad
        n_t = \\beta_2 n_{t-1} + (1 - \\beta_2) g_t^2, \\qquad
        u_t = \\frac{m_t + \\alpha(t)\\, g_t}{\\sqrt{n_t / (1 - \\beta_2^t) + \\bar\\varepsilon} + \\varepsilon},

    from zero moments. The momentum sums gradients without the :math:`1 - \\beta_1` factor, so it is
    :math:`1 / (1 - \\beta_1)` times an EMA: with ``alpha=0`` this is Adam without first-moment bias
    correction, at a learning rate :math:`1 / (1 - \\beta_1)` times larger. :math:`\\alpha` may be a
    schedule of the 0-based step count. :math:`n_t` is formed as :math:`g_t^2 + \\beta_2 (n_{t-1} - g_t^2)`,
    as Optax forms it, so that float32 agrees bit for bit.

    Numerically identical to ``optax.contrib.scale_by_simplified_ademamix`` for real gradients, with the
    same state fields. Differences from ``optax.contrib.scale_by_simplified_ademamix``: for complex
    gradients :math:`g_t^2` is :math:`|g_t|^2` (Optax squares the complex number, so its second moment is
    complex); with ``eps = eps_root = 0`` the update is 0 where the denominator is 0, not 0/0; a ``None``
    update keeps its moments; ``mu_dtype`` and ``nu_dtype`` (storages of ``m`` and ``n``) and the
    ``count`` field (``None`` unless a storage rounds stochastically) are additions.

    Args:
        b1: decay :math:`\\beta_1 \\in [0, 1)` of the momentum.
        b2: decay :math:`\\beta_2 \\in [0, 1)` of the second moment.
        alpha: weight :math:`\\alpha \\ge 0` of the current gradient, or a schedule of the step count.
        eps: :math:`\\varepsilon \\ge 0`, added outside the square root.
        eps_root: :math:`\\bar\\varepsilon \\ge 0`, added inside the square root.
        mu_dtype: storage of the momentum ``m``: a storage (see :mod:`jaxopt_zoo.storage`).
        nu_dtype: storage of the second moment ``n``, as for ``mu_dtype``.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_simplified_ademamix(alpha=1.0)
        >>> g = jnp.array([0.5, -2.0])
        >>> updates, state = tx.update(g, tx.init(g))
        >>> updates  # (m_1 + g) / |g| = 2 g / |g| on the first step (eps vanishes in float32)
        Array([ 2., -2.], dtype=float32)

    References:
        Morwani et al., "Connections between Schedule-Free Optimizers, AdEMAMix, and Accelerated SGD
        Variants", arXiv:2502.02431, 2025.
    """
    owner = "scale_by_simplified_ademamix"
    validation.decay_rate(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    validation.scalar_or_schedule(owner, "alpha", alpha)
    validation.epsilon(owner, "eps", eps)
    validation.epsilon(owner, "eps_root", eps_root)
    guard = validation.may_all_be_zero(eps, eps_root)
    m_store = resolve(owner, "mu_dtype", mu_dtype)
    n_store = resolve(owner, "nu_dtype", nu_dtype)

    def init(params):
        return ScaleBySimplifiedAdEMAMixState(zero_count(), tree.moments_like(params), tree.moments_like(params))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.m, "the momentum (state.m)")
        alpha_t = _at(alpha, state.t)
        m = tree.map_state(lambda g, m: tree.widen(g) + b1 * m, updates, state.m)
        n = tree.map_state(lambda g, n: tree.abs_sq(g) + b2 * (n - tree.abs_sq(g)), updates, state.n)
        t = safe_increment(state.t)
        n_hat = tree.bias_correction(n, b2, t)
        numerator = tree.map_updates(lambda g, m: m + alpha_t * tree.widen(g), updates, m)
        new_updates = tree.moment_ratio(updates, numerator, n_hat, eps, eps_root, guard)
        return new_updates, ScaleBySimplifiedAdEMAMixState(t, m, n, state.count)

    tx = with_storage(GradientTransformation(init, update), signed={"m": m_store}, non_negative={"n": n_store})
    return expects_state(owner, tx, ScaleBySimplifiedAdEMAMixState)
