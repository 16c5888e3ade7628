"""Adam's relatives: Adamax's infinity norm, Dozat's scheduled NAdam and Rectified Adam.

Each keeps a step count and Adam's two per-parameter moments (first moment
``mu``, signed; second moment or infinity norm ``nu``, non-negative), which
take the storage options ``mu_dtype`` and ``nu_dtype``. ``None`` update leaves
pass through and keep their state.
ADOPT (:func:`scale_by_adopt`) keeps Adam's state and normalises each gradient
by the second moment of the steps before it, and :func:`scale_by_sparse_adam`
(PyTorch's SparseAdam) moves only the entries whose gradient is non-zero.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.chain(jz.scale_by_radam(), jz.scale_by_learning_rate(1e-3))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, Updates, expects_state, safe_increment, zero_count
from jaxopt_zoo.docstrings import document_args
from jaxopt_zoo.storage import StateDtype, resolve, with_storage
from jaxopt_zoo.transforms.adaptive import ScaleByAdamState, scale_by_adam

__all__ = [
    "ScaleByAdamaxState",
    "ScaleByRAdamState",
    "ScaleByScheduledNadamState",
    "scale_by_adamax",
    "scale_by_adopt",
    "scale_by_radam",
    "scale_by_scheduled_nadam",
    "scale_by_sparse_adam",
]


def _steps(count: jax.Array) -> jax.Array:
    # The step number as a float scalar: float32, or float64 when 64-bit types are enabled.
    return count.astype(jnp.result_type(float))


def _times(scalar: jax.Array, x: jax.Array) -> jax.Array:
    # A per-step scalar times a moment, in the moment's dtype (a float64 scalar must not widen float32 state).
    return scalar.astype(x.dtype) * x


class ScaleByAdamaxState(NamedTuple):
    """Step count, first moment ``mu`` and exponentially weighted infinity norm ``nu``."""

    count: jax.Array
    mu: Updates
    nu: Updates


def scale_by_adamax(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """Adamax (Kingma & Ba 2015, section 7.1): Adam with an infinity norm in place of the second moment.

    .. math::

        m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\qquad
        u_t = \\max(\\beta_2 u_{t-1}, |g_t| + \\varepsilon), \\qquad
        \\text{update} = \\frac{m_t}{(1 - \\beta_1^t)\\, u_t}.

    :math:`\\varepsilon` sits inside the maximum, as in both Optax and PyTorch.
    Numerically identical to ``optax.scale_by_adamax`` (the same name for the
    same rule). Deviations from Optax: with ``eps=0`` the update is 0 where
    :math:`u_t = 0` (no non-zero gradient yet) instead of 0/0 = NaN, and a
    denormal ``eps`` raises; a ``None`` update keeps its moments; ``mu_dtype``
    and ``nu_dtype`` are additions. For complex gradients :math:`|g_t|` is the
    modulus, as in Optax (``jz.torch.adamax`` takes real and imaginary parts
    apart, as PyTorch does).

    Args:
        b1: decay :math:`\\beta_1 \\in [0, 1)` of the first moment.
        b2: decay :math:`\\beta_2 \\in [0, 1)` of the infinity norm.
        eps: :math:`\\varepsilon \\ge 0`, added to :math:`|g_t|` inside the maximum.
        mu_dtype: storage of the first moment: a storage (see :mod:`jaxopt_zoo.storage`).
        nu_dtype: storage of the infinity norm, as for ``mu_dtype``.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_adamax()
        >>> updates, state = tx.update(jnp.array([0.5, -2.0]), tx.init(jnp.zeros(2)))
        >>> updates  # the first step is g / (|g| + eps)
        Array([ 0.99999..., -0.99999...], dtype=float32)

    References:
        Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    """
    owner = "scale_by_adamax"
    validation.decay_rate(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    validation.epsilon(owner, "eps", eps)
    guard = validation.may_all_be_zero(eps)
    mu_dtype = resolve(owner, "mu_dtype", mu_dtype)
    nu_dtype = resolve(owner, "nu_dtype", nu_dtype)

    def init(params):
        return ScaleByAdamaxState(zero_count(), tree.moments_like(params), tree.moments_like(params))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.mu, "the first moment (state.mu)")
        count = safe_increment(state.count)
        mu = tree.update_moment(updates, state.mu, b1, 1)
        nu = tree.map_state(lambda g, u: jnp.maximum(jnp.abs(tree.widen(g)) + eps, b2 * u), updates, state.nu)
        mu_hat = tree.bias_correction(mu, b1, count)
        if guard:  # 0, not 0/0, where the norm is 0
            ratio = lambda g, m, u: jnp.where(u == 0, 0, m / jnp.where(u == 0, 1, u))
        else:
            ratio = lambda g, m, u: m / u
        return tree.map_updates(ratio, updates, mu_hat, nu), ScaleByAdamaxState(count, mu, nu)

    tx = with_storage(GradientTransformation(init, update), signed={"mu": mu_dtype}, non_negative={"nu": nu_dtype})
    return expects_state(owner, tx, ScaleByAdamaxState)


class ScaleByScheduledNadamState(NamedTuple):
    """Step count, the running product ``mu_product`` (a scalar) of the coefficients mu_t, moments ``mu``, ``nu``."""

    count: jax.Array
    mu_product: jax.Array
    mu: Updates
    nu: Updates


def scale_by_scheduled_nadam(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    momentum_decay: jax.typing.ArrayLike = 4e-3,
    *,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """NAdam with Dozat's momentum schedule (Dozat 2016), the rule of ``torch.optim.NAdam``.

    With :math:`\\psi` the ``momentum_decay``:

    .. math::

        \\mu_t &= \\beta_1 \\big(1 - \\tfrac12\\, 0.96^{t \\psi}\\big), \\qquad
        \\Pi_t = \\textstyle\\prod_{i=1}^{t} \\mu_i, \\\\
        m_t &= \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\qquad
        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2, \\\\
        \\hat m_t &= \\frac{\\mu_{t+1} m_t}{1 - \\Pi_t \\mu_{t+1}} + \\frac{(1 - \\mu_t) g_t}{1 - \\Pi_t}, \\qquad
        \\text{update} = \\frac{\\hat m_t}{\\sqrt{v_t / (1 - \\beta_2^t)} + \\varepsilon}.

    The momentum coefficient :math:`\\mu_t` warms up from :math:`\\beta_1 / 2`
    towards :math:`\\beta_1`. :math:`\\Pi_t` is kept in the state
    (``mu_product``, a scalar starting at 1) in float32, or float64 when
    64-bit types are enabled; PyTorch keeps it as a float32 tensor (float64
    under a float64 default dtype) but forms :math:`1 - \\Pi_t` and
    :math:`\\Pi_t \\mu_{t+1}` in Python's float64, so in float32 the two differ
    by float32 rounding of these scalars (relative 1e-7). The bias correction
    :math:`1 - \\beta_2^t` is formed from :math:`\\beta_2` rounded to float32, as in
    every Adam here, where PyTorch uses Python floats: relative 1e-5 at
    :math:`\\beta_2 = 0.999`, the size of float32 NAdam's difference from PyTorch.

    Not ``optax.nadam`` (:func:`~jaxopt_zoo.transforms.adaptive.scale_by_adam`
    with ``nesterov=True``), which fixes :math:`\\mu_t = \\beta_1` and so uses
    :math:`\\beta_1^{t+1}` and :math:`\\beta_1^t` for the products. Hence a name
    of its own: the two coincide only in the limit :math:`\\psi \\to \\infty`
    (in floating point, from :math:`\\psi \\approx 10^5` on, where
    :math:`0.96^{t\\psi}` underflows). With ``eps=0`` the update is 0 where the
    denominator is 0 (PyTorch gives NaN). A ``None`` update keeps its moments;
    the step count and :math:`\\Pi_t` advance once per step for the whole tree.

    Args:
        b1: :math:`\\beta_1 \\in [0, 1)`: decay of the first moment and the limit of :math:`\\mu_t`.
        b2: decay :math:`\\beta_2 \\in [0, 1)` of the second moment.
        eps: :math:`\\varepsilon \\ge 0`, added outside the square root.
        momentum_decay: :math:`\\psi \\ge 0` (PyTorch's default 4e-3 is Dozat's 1/250).
        mu_dtype: storage of the first moment: a storage (see :mod:`jaxopt_zoo.storage`).
        nu_dtype: storage of the second moment, as for ``mu_dtype``.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.chain(jz.scale_by_scheduled_nadam(), jz.scale_by_learning_rate(2e-3))

    References:
        Dozat, "Incorporating Nesterov Momentum into Adam", ICLR workshop 2016.
    """
    owner = "scale_by_scheduled_nadam"
    validation.decay_rate(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    validation.epsilon(owner, "eps", eps)
    validation.non_negative(owner, "momentum_decay", momentum_decay)
    guard = validation.may_all_be_zero(eps)
    mu_dtype = resolve(owner, "mu_dtype", mu_dtype)
    nu_dtype = resolve(owner, "nu_dtype", nu_dtype)

    def init(params):
        product = jnp.ones((), jnp.result_type(float))
        return ScaleByScheduledNadamState(zero_count(), product, tree.moments_like(params), tree.moments_like(params))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.mu, "the first moment (state.mu)")
        count = safe_increment(state.count)
        t = _steps(count)
        mu_t = b1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
        mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
        product = (state.mu_product * mu_t).astype(state.mu_product.dtype)
        gradient_weight = (1 - mu_t) / (1 - product)
        momentum_weight = mu_next / (1 - product * mu_next)
        mu = tree.update_moment(updates, state.mu, b1, 1)
        nu = tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        nesterov_mix = lambda g, m: _times(momentum_weight, m) + _times(gradient_weight, tree.widen(g).astype(m.dtype))
        mu_hat = tree.map_updates(nesterov_mix, updates, mu)
        nu_hat = tree.bias_correction(nu, b2, count)
        updates = tree.moment_ratio(updates, mu_hat, nu_hat, eps, 0.0, guard)
        return updates, ScaleByScheduledNadamState(count, product, mu, nu)

    tx = with_storage(GradientTransformation(init, update), signed={"mu": mu_dtype}, non_negative={"nu": nu_dtype})
    return expects_state(owner, tx, ScaleByScheduledNadamState)


def _f(x: jax.Array) -> jax.Array:
    # 1/x - 1/expm1(x) for x >= 0 (+inf included), without the cancellation at small x: there,
    # its series 1/2 - x/12 + x^3/720 - ... (Bernoulli numbers), whose next term is at most 1.3e-16 for x < 1/4.
    small = x < 0.25
    xs = jnp.where(small, x, 0.0)
    x2 = xs * xs
    series = 0.5 - xs * (1 / 12 - x2 * (1 / 720 - x2 * (1 / 30240 - x2 * (1 / 1209600 - x2 / 47900160))))
    xl = jnp.where(small, 1.0, x)
    return jnp.where(small, series, 1 / xl - 1 / jnp.expm1(xl))


def _sma_length(b2: jax.typing.ArrayLike, t: jax.Array) -> jax.Array:
    """RAdam's :math:`\\rho_t = \\rho_\\infty - 2 t \\beta_2^t / (1 - \\beta_2^t)`, accurate in float32.

    With :math:`a = -\\ln \\beta_2`, :math:`\\rho_t = 1 + 2\\,(t f(a t) - f(a))` where
    :math:`f(x) = 1/x - 1/(e^x - 1)`: no two large terms cancel. The direct formula
    loses :math:`\\rho_\\infty` float32 ulps (15% of :math:`\\rho_5` at :math:`\\beta_2 = 0.9999`).
    """
    a = -jnp.log(jnp.asarray(b2, t.dtype))
    return 1 + 2 * (t * _f(a * t) - _f(a))


class ScaleByRAdamState(NamedTuple):
    """Step count, first moment ``mu`` and second moment ``nu``."""

    count: jax.Array
    mu: Updates
    nu: Updates


def scale_by_radam(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    threshold: jax.typing.ArrayLike = 5.0,
    *,
    nesterov: bool = False,
    eps_before_correction: bool = False,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """Rectified Adam (Liu et al. 2020): Adam's step scaled by a variance rectification, or plain momentum
    while the variance of the adaptive rate is intractable.

    With :math:`m_t, v_t, \\hat m_t = m_t / (1 - \\beta_1^t), \\hat v_t = v_t / (1 - \\beta_2^t)` as in
    :func:`~jaxopt_zoo.transforms.adaptive.scale_by_adam`:

    .. math::

        \\rho_\\infty = \\frac{2}{1 - \\beta_2} - 1, \\qquad
        \\rho_t = \\rho_\\infty - \\frac{2 t \\beta_2^t}{1 - \\beta_2^t}, \\qquad
        r_t = \\sqrt{\\frac{(\\rho_t - 4)(\\rho_t - 2)\\, \\rho_\\infty}
                         {(\\rho_\\infty - 4)(\\rho_\\infty - 2)\\, \\rho_t}},

    .. math::

        \\text{update} = \\begin{cases}
        r_t \\hat m_t / \\big(\\sqrt{\\hat v_t + \\bar\\varepsilon} + \\varepsilon'\\big) & \\rho_t \\ge \\tau \\\\
        \\hat m_t & \\text{otherwise,} \\end{cases}

    with :math:`\\tau` the ``threshold``, :math:`\\varepsilon' = \\varepsilon` (Optax) or, with
    ``eps_before_correction=True``, :math:`\\varepsilon / \\sqrt{1 - \\beta_2^t}` (PyTorch adds
    :math:`\\varepsilon` to :math:`\\sqrt{v_t}` before the bias correction:
    :math:`\\sqrt{1 - \\beta_2^t} / (\\sqrt{v_t} + \\varepsilon)`). ``nesterov`` replaces
    :math:`\\hat m_t` as in :func:`~jaxopt_zoo.transforms.adaptive.scale_by_adam`.

    Optax's rule under Optax's name: ``optax.scale_by_radam`` with the same arguments, to float64
    rounding. Deviations from Optax: :math:`\\rho_t` is computed as :math:`1 + 2 (t f(at) - f(a))`,
    :math:`a = -\\ln\\beta_2`, :math:`f(x) = 1/x - 1/(e^x - 1)`, which keeps float32's precision
    (Optax's direct formula subtracts two numbers near :math:`\\rho_\\infty`: at
    :math:`\\beta_2 = 0.9999` its float32 :math:`\\rho_5` is 4.23 instead of 5.00), so float32
    trajectories differ from Optax's by that error; with ``eps = eps_root = 0`` the update is 0 where
    the denominator is 0, not NaN; a ``threshold`` below 4 raises (Optax's steps with
    :math:`\\tau \\le \\rho_t < 4` are NaN); a ``None`` update keeps its moments; ``eps_before_correction``,
    ``mu_dtype`` and ``nu_dtype`` are additions. PyTorch's RAdam is ``eps_before_correction=True``
    with :math:`\\tau = 5`, except that it switches on :math:`\\rho_t > 5`, not :math:`\\ge`: the two
    differ only at a step whose :math:`\\rho_t` rounds to exactly 5.

    Args:
        b1: decay :math:`\\beta_1 \\in [0, 1)` of the first moment.
        b2: decay :math:`\\beta_2 \\in [0, 1)` of the second moment.
        eps: :math:`\\varepsilon \\ge 0`, added outside the square root.
        eps_root: :math:`\\bar\\varepsilon \\ge 0`, added inside the square root.
        threshold: :math:`\\tau \\ge 4`, the :math:`\\rho_t` from which the step is rectified (Optax's and PyTorch's 5).
        nesterov: use Nesterov momentum, as in ``optax.scale_by_radam``.
        eps_before_correction: add :math:`\\varepsilon` to :math:`\\sqrt{v_t}` before the bias correction (PyTorch).
        mu_dtype: storage of the first moment: a storage (see :mod:`jaxopt_zoo.storage`).
        nu_dtype: storage of the second moment, as for ``mu_dtype``.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_radam()
        >>> g = jnp.array([0.5, -2.0])
        >>> updates, state = tx.update(g, tx.init(g))
        >>> bool(jnp.allclose(updates, g))  # rho_1 = 1 < 5: the bias-corrected momentum, here g itself
        True

    References:
        Liu, Jiang, He, Chen, Liu, Gao & Han, "On the Variance of the Adaptive Learning Rate and
        Beyond", ICLR 2020.
    """
    owner = "scale_by_radam"
    validation.decay_rate(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    validation.epsilon(owner, "eps", eps)
    validation.epsilon(owner, "eps_root", eps_root)
    validation.rectification_threshold(owner, threshold)
    validation.flag(owner, "nesterov", nesterov)
    validation.flag(owner, "eps_before_correction", eps_before_correction)
    guard = validation.may_all_be_zero(eps, eps_root)
    mu_dtype = resolve(owner, "mu_dtype", mu_dtype)
    nu_dtype = resolve(owner, "nu_dtype", nu_dtype)

    def init(params):
        return ScaleByRAdamState(zero_count(), tree.moments_like(params), tree.moments_like(params))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.mu, "the first moment (state.mu)")
        count = safe_increment(state.count)
        mu = tree.update_moment(updates, state.mu, b1, 1)
        nu = tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
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
        t = _steps(count)
        rho = _sma_length(b2, t)
        rho_inf = (1 + jnp.asarray(b2, t.dtype)) / (1 - jnp.asarray(b2, t.dtype))
        rectified = rho >= threshold
        # r_t^2, replaced by 1 where unused (it is negative for 2 < rho_t < 4).
        r2 = jnp.where(rectified, (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho), 1.0)
        r = jnp.sqrt(r2)
        # PyTorch's sqrt(1 - b2^t) / (sqrt(v_t) + eps) is 1 / (sqrt(v_hat) + eps / sqrt(1 - b2^t)).
        eps_t = eps / jnp.sqrt(1 - jnp.asarray(b2, t.dtype) ** t) if eps_before_correction else eps

        def step(g, m, v):
            adapted = tree.over_root(m, v + eps_root, jnp.asarray(eps_t, v.dtype), guard)
            return jnp.where(rectified, _times(r, adapted), m)

        updates = tree.map_updates(step, updates, mu_hat, nu_hat)
        return updates, ScaleByRAdamState(count, mu, nu)

    tx = with_storage(GradientTransformation(init, update), signed={"mu": mu_dtype}, non_negative={"nu": nu_dtype})
    return expects_state(owner, tx, ScaleByRAdamState)


def _fourth_root(count: jax.Array) -> jax.Array:
    """ADOPT's default clipping bound :math:`c_t = t^{1/4}` of the 0-based step count."""
    return count**0.25


def scale_by_adopt(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.9999,
    eps: jax.typing.ArrayLike = 1e-6,
    mu_dtype: StateDtype = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], jax.Array] = _fourth_root,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """ADOPT (Taniguchi et al. 2024): Adam that normalises the gradient by the second moment of the steps
    *before* it, then averages the normalised gradients.

    .. math::

        v_0 &= g_0^2 \\quad (\\text{the first call only sets } v \\text{: its update is } 0), \\\\
        m_t &= \\beta_1 m_{t-1}
        + (1 - \\beta_1)\\, \\operatorname{clip}\\big(g_t / \\max(\\sqrt{v_{t-1}}, \\varepsilon),\\ c_t\\big),
        \\qquad u_t = m_t, \\\\
        v_t &= \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2,

    from :math:`m_0 = 0`, where :math:`\\operatorname{clip}(x, c)` clips to :math:`[-c, c]` and
    :math:`c_t` is ``clip_value_fn`` of the 0-based step count (:math:`t^{1/4}` by default; the paper's
    stabilisation; ``use_clipping=False`` leaves the normalised gradient as it is). Because :math:`v_{t-1}`
    does not contain :math:`g_t`, the step converges for any :math:`\\beta_2` (the paper's point). With
    ``nesterov=True`` the update is :math:`\\beta_1 m_t + (1 - \\beta_1)\\operatorname{clip}(\\cdot)`. No bias
    correction. For complex gradients :math:`g_t^2` is :math:`|g_t|^2`, with ``use_clipping=False`` (a clip to
    :math:`[-c, c]` has no complex meaning: complex params raise with it, where Optax's clip fails).

    Numerically identical to ``optax.contrib.scale_by_adopt``, whose state is also a ``ScaleByAdamState``.
    Differences from ``optax.contrib.scale_by_adopt``: with ``eps=0`` the normalised gradient is 0 where
    :math:`v_{t-1} = 0`, not 0/0 (NaN, which Optax's first step turns into a NaN momentum without
    clipping); a ``None`` update keeps its moments; ``nu_dtype`` (storage of :math:`v`, which Optax keeps
    in the params' dtype) is an addition, and ``mu_dtype`` also takes
    :class:`~jaxopt_zoo.storage.StochasticBF16` and :class:`~jaxopt_zoo.quantization.Blockwise8Bit`.

    Args:
        b1: decay :math:`\\beta_1 \\in [0, 1)` of the momentum of normalised gradients.
        b2: decay :math:`\\beta_2 \\in [0, 1)` of the second moment.
        eps: :math:`\\varepsilon \\ge 0`, the floor of :math:`\\sqrt{v}`.
        mu_dtype: storage of the momentum: a storage (see :mod:`jaxopt_zoo.storage`).
        nesterov: use Nesterov momentum.
        use_clipping: clip the normalised gradient to :math:`[-c_t, c_t]`.
        clip_value_fn: :math:`c_t` as a function of the int32 step count (0 on the first call).
        nu_dtype: storage of the second moment, as for ``mu_dtype``.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_adopt()
        >>> state = tx.init(jnp.zeros(2))
        >>> updates, state = tx.update(jnp.array([0.5, -2.0]), state)
        >>> updates, state.nu  # the first call only records g^2
        (Array([0., 0.], dtype=float32), Array([0.25, 4.  ], dtype=float32))
        >>> updates, state = tx.update(jnp.array([1.0, -2.0]), state)
        >>> updates  # (1 - b1) clip(g / |g_0|, 1)
        Array([ 0.1000..., -0.1000...], dtype=float32)

    References:
        Taniguchi, Harada, Minegishi, Oshima, Jeong, Nagahara, Iiyama, Suzuki, Iwasawa & Matsuo, "ADOPT:
        Modified Adam Can Converge with Any beta2 with the Optimal Rate", NeurIPS 2024.
    """
    owner = "scale_by_adopt"
    validation.decay_rate(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    validation.epsilon(owner, "eps", eps)
    validation.flag(owner, "nesterov", nesterov)
    validation.flag(owner, "use_clipping", use_clipping)
    if not callable(clip_value_fn):
        raise ValueError(f"{owner}: clip_value_fn must be a function of the step count, got {clip_value_fn!r}.")
    guard = validation.may_all_be_zero(eps)
    mu_dtype = resolve(owner, "mu_dtype", mu_dtype)
    nu_dtype = resolve(owner, "nu_dtype", nu_dtype)

    def init(params):
        if use_clipping and any(jnp.iscomplexobj(p) for p in jax.tree.leaves(params)):
            raise ValueError(f"{owner}: use_clipping=True clips each entry to [-c, c], which a complex one has no "
                             "place in; pass use_clipping=False, or wrap in jz.combine.split_real_and_imaginary.")
        return ScaleByAdamState(zero_count(), tree.moments_like(params), tree.moments_like(params))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.mu, "the first moment (state.mu)")
        started = state.count > 0
        # The first call sets v_0 = g_0^2 and leaves m at 0: decays of 0 and 1, as Optax forms them.
        b1_t, b2_t = jnp.where(started, b1, 1), jnp.where(started, b2, 0)
        bound = clip_value_fn(state.count) if use_clipping else None

        def normalised(g, v):
            floor = jnp.maximum(tree.root(v), eps)
            if guard:  # 0, not 0/0, where v and eps are both 0
                ratio = jnp.where(floor == 0, 0, tree.widen(g) / jnp.where(floor == 0, 1, floor))
            else:
                ratio = tree.widen(g) / floor
            return jnp.clip(ratio, -bound, bound) if use_clipping else ratio

        nu = tree.update_moment_per_elem_norm(updates, state.nu, b2_t, 2)
        steps = tree.map_updates(normalised, updates, state.nu)
        mu = tree.update_moment(steps, state.mu, b1_t, 1)
        if nesterov:
            direction = tree.map_updates(lambda x, m: (1 - b1_t) * x + b1_t * m, steps, mu)
        else:
            direction = tree.map_updates(lambda x, m: m, steps, mu)
        return direction, ScaleByAdamState(safe_increment(state.count), mu, nu)

    tx = with_storage(GradientTransformation(init, update), signed={"mu": mu_dtype}, non_negative={"nu": nu_dtype})
    return expects_state(owner, tx, ScaleByAdamState)


@document_args(scale_by_adam)  # b1, b2, mu_dtype, nu_dtype: Adam's
def scale_by_sparse_adam(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """PyTorch's SparseAdam on dense gradients: Adam's step where the gradient is non-zero, no change elsewhere.

    With the mask :math:`M = [g_t \\ne 0]` (element by element):

    .. math::

        m_t = m_{t-1} + M (1 - \\beta_1)(g_t - m_{t-1}), \\qquad
        v_t = v_{t-1} + M (1 - \\beta_2)(|g_t|^2 - v_{t-1}),

    .. math::

        \\text{update} = M \\, \\frac{\\sqrt{1 - \\beta_2^t}}{1 - \\beta_1^t} \\,
        \\frac{m_t}{\\sqrt{v_t} + \\varepsilon}.

    Where :math:`M` is 0 the moments keep their values (Adam would decay them) and the step is 0: an embedding's
    rows that no example of the batch looked up are left as they are, and their moments too. This is the rule
    ``torch.optim.SparseAdam`` documents ("masking out the parameter and moment updates corresponding to the
    zero values in the gradients"); PyTorch applies it to the entries stored in a sparse gradient, which are the
    non-zero ones unless an exact 0 is stored (an embedding row that was looked up and got an exactly zero
    gradient): there PyTorch decays the moments and moves the param by the decayed first moment, and this rule
    leaves both. With ``jz.Blockwise8Bit()`` storage a moment left alone is still written again whenever another
    entry of its block moves (the block is quantized anew), so it may change by that rounding; the params where
    the gradient is 0 do not move. :math:`\\varepsilon` is added to
    :math:`\\sqrt{v_t}` before the bias correction of the second moment, as in Kingma and Ba's paper and
    PyTorch's SparseAdam (``torch.optim.Adam`` and :func:`scale_by_adam` add it after). The step count
    :math:`t` counts every update, masked or not; a ``None`` update keeps its moments; complex gradients take
    :math:`|g_t|^2` (``jz.torch.sparse_adam`` refuses complex params, as PyTorch does). An ``eps`` injected as 0
    gives a step of 0 where :math:`\\sqrt{v_t}` underflows to 0. Optax has no such rule.

    Args:
        eps: :math:`\\varepsilon > 0`, added to :math:`\\sqrt{v_t}` (not denormal).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_sparse_adam()
        >>> updates, state = tx.update(jnp.array([0.5, 0.0, -2.0]), tx.init(jnp.zeros(3)))
        >>> updates.round(4)  # the first step is about sign(g), and 0 where g is 0
        Array([ 1.,  0., -1.], dtype=float32)
        >>> state.nu
        Array([0.00025, 0.     , 0.004  ], dtype=float32)

    References:
        Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015 (Algorithm 1, the form after it).
    """
    owner = "scale_by_sparse_adam"
    validation.decay_rate(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    validation.epsilon(owner, "eps", eps, allow_zero=False, why_positive=" (the step is m / (sqrt(v) + eps))")
    guard = validation.may_all_be_zero(eps)  # an injected eps: 0, not m / 0, where v underflows to 0
    mu_dtype = resolve(owner, "mu_dtype", mu_dtype)
    nu_dtype = resolve(owner, "nu_dtype", nu_dtype)

    def init(params):
        return ScaleByAdamState(zero_count(), tree.moments_like(params), tree.moments_like(params))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.mu, "the first moment (state.mu)")
        count = safe_increment(state.count)
        masked = lambda g, x, new: jnp.where(g != 0, x + new, x)  # noqa: E731
        mu = tree.map_state(lambda g, m: masked(g, m, (1 - b1) * (tree.widen(g) - m)), updates, state.mu)
        nu = tree.map_state(lambda g, v: masked(g, v, (1 - b2) * (tree.abs_sq(g) - v)), updates, state.nu)
        steps = _steps(count)
        step_size = jnp.sqrt(1 - b2**steps) / (1 - b1**steps)

        ratio = lambda g, m, v: jnp.where(g != 0, _times(step_size, tree.over_root(m, v, eps, guard)), 0)  # noqa: E731
        return tree.map_updates(ratio, updates, mu, nu), ScaleByAdamState(count, mu, nu)

    tx = with_storage(GradientTransformation(init, update), signed={"mu": mu_dtype}, non_negative={"nu": nu_dtype})
    return expects_state(owner, tx, ScaleByAdamState)
