"""Adaptive scaling by running moments of the gradient: Adam, AMSGrad, RMSprop, Adagrad, Adadelta.

Every transformation here divides the update by a root of a running second
moment. ``None`` update leaves pass through and keep their state.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, Updates, expects_state, init_only, safe_increment, zero_count
from jaxopt_zoo.docstrings import document_args
from jaxopt_zoo.storage import StateDtype, resolve, with_storage


def _inverse_root(v: jax.Array, eps: jax.typing.ArrayLike, eps_in_sqrt: bool) -> jax.Array:
    # 1/sqrt(v + eps) or 1/(sqrt(v) + eps), formed as Optax forms them so the two agree bit for bit.
    return jax.lax.rsqrt(v + eps) if eps_in_sqrt else 1 / (tree.root(v) + eps)


def _scaled_by_inverse_root(g: jax.Array, v: jax.Array, eps, eps_in_sqrt: bool, guard: bool) -> jax.Array:
    # g / sqrt(v + eps) or g / (sqrt(v) + eps). With guard (eps may be 0), 0 where the denominator is 0
    # (all gradients so far zero) instead of inf * 0 = NaN; the double where keeps its gradient finite.
    if not guard:
        return _inverse_root(v, eps, eps_in_sqrt) * g
    zero = (v + eps == 0) if eps_in_sqrt else (jnp.sqrt(v) + eps == 0)
    return jnp.where(zero, 0, _inverse_root(jnp.where(zero, 1, v), eps, eps_in_sqrt) * g)


def _bias_corrector(enabled: bool):
    # tree.bias_correction, or the identity when the option turns correction off.
    return tree.bias_correction if enabled else (lambda moments, decay, count: moments)


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
    mu_dtype: StateDtype = None,
    *,
    nesterov: bool = False,
    nu_dtype: StateDtype = None,
    bias_correction: bool = True,
) -> GradientTransformation:
    """Scale updates by Adam's bias-corrected moment ratio (Kingma & Ba 2015).

    .. math::

        m_t &= \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\qquad
        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2, \\\\
        \\hat m_t &= m_t / (1 - \\beta_1^t), \\qquad \\hat v_t = v_t / (1 - \\beta_2^t), \\\\
        u_t &= \\hat m_t / \\big(\\sqrt{\\hat v_t + \\bar\\varepsilon} + \\varepsilon\\big).

    With ``nesterov=True`` (NAdam, Dozat 2016, in Optax's form) :math:`\\hat m_t`
    becomes :math:`\\beta_1 m_t / (1 - \\beta_1^{t+1}) + (1 - \\beta_1) g_t / (1 - \\beta_1^t)`.
    With ``bias_correction=False`` :math:`\\hat m_t = m_t` and :math:`\\hat v_t = v_t`
    (and :math:`\\hat m_t = \\beta_1 m_t + (1 - \\beta_1) g_t` with ``nesterov``), as
    widely used LAMB code does. For complex gradients :math:`g_t^2` is :math:`|g_t|^2`.

    Numerically identical to ``optax.scale_by_adam``. Deviations from Optax:
    the moments are stored in the state's dtypes (``mu_dtype``/``nu_dtype``,
    else the params') even when gradients arrive in another dtype; a ``None``
    update leaves its moments unchanged; integer gradients step as their float32
    values (with ``nesterov``, Optax's correction of :math:`g_t` divides by
    :math:`1 - \\beta_1^t` cast to the integer 0: steps of :math:`\\pm\\infty`);
    ``nu_dtype`` is an addition.

    Args:
        b1: decay :math:`\\beta_1 \\in [0, 1)` of the first moment.
        b2: decay :math:`\\beta_2 \\in [0, 1)` of the second moment.
        eps: :math:`\\varepsilon \\ge 0`, added outside the square root (as in the paper).
            With ``eps = eps_root = 0`` the update is 0 where the denominator is 0
            (no non-zero gradient yet, or gradients whose squares underflow); Optax and
            PyTorch (which also accept 0) give NaN (0/0) or infinity there, a deliberate
            difference. Any ``eps > 0`` gives Optax's numbers bit for bit. A denormal
            ``eps`` (below 1.18e-38, flushed to 0 by the hardware) raises.
        eps_root: :math:`\\bar\\varepsilon \\ge 0`, added inside the square root
            (keeps the gradient of the update finite when differentiating through it).
        mu_dtype: storage of the first moment: ``None`` (the params' dtype), a floating dtype, or a
            storage such as :class:`~jaxopt_zoo.quantization.Blockwise8Bit` (8 bits; see :mod:`jaxopt_zoo.storage`).
        nesterov: use Nesterov momentum (NAdam).
        nu_dtype: storage of the second moment, as for ``mu_dtype``.
        bias_correction: divide the moments by :math:`1 - \\beta^t` (an addition to Optax's).

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
    validation.epsilon("scale_by_adam", "eps", eps)
    validation.epsilon("scale_by_adam", "eps_root", eps_root)
    guard = validation.may_all_be_zero(eps, eps_root)
    validation.flag("scale_by_adam", "nesterov", nesterov)
    validation.flag("scale_by_adam", "bias_correction", bias_correction)
    mu_dtype = resolve("scale_by_adam", "mu_dtype", mu_dtype)
    nu_dtype = resolve("scale_by_adam", "nu_dtype", nu_dtype)

    def init(params):
        return ScaleByAdamState(zero_count(), tree.moments_like(params), tree.moments_like(params))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure("scale_by_adam", updates, state.mu, "the first moment (state.mu)")
        count = safe_increment(state.count)
        mu = tree.update_moment(updates, state.mu, b1, 1)
        nu = tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        correct = _bias_corrector(bias_correction)
        if nesterov:
            mu_hat = tree.map_updates(
                lambda g, m, g_hat: b1 * m + (1 - b1) * g_hat,
                updates,
                correct(mu, b1, safe_increment(count)),
                correct(updates, b1, count),
            )
        else:
            mu_hat = correct(mu, b1, count)
        nu_hat = correct(nu, b2, count)
        updates = tree.moment_ratio(updates, mu_hat, nu_hat, eps, eps_root, guard)
        return updates, ScaleByAdamState(count, mu, nu)

    tx = with_storage(GradientTransformation(init, update), signed={"mu": mu_dtype}, non_negative={"nu": nu_dtype})
    return expects_state("scale_by_adam", tx, ScaleByAdamState)


class ScaleByAmsgradState(NamedTuple):
    """Step count, moments ``mu`` and ``nu``, and the running maximum ``nu_max`` of the second moment."""

    count: jax.Array
    mu: Updates
    nu: Updates
    nu_max: Updates


@document_args(scale_by_adam)
def scale_by_amsgrad(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: StateDtype = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    correct_after_max: bool = False,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """AMSGrad (Reddi et al. 2018): Adam whose denominator never shrinks.

    With :math:`m_t, v_t` as in :func:`scale_by_adam` and :math:`c_t = 1 - \\beta_2^t`:

    .. math::

        \\text{Optax (default):} \\quad \\hat v_t = \\max(\\hat v_{t-1}, v_t / c_t), \\qquad
        \\text{PyTorch (} \\texttt{correct_after_max} \\text{):} \\quad
        \\hat v_t = \\max_{s \\le t} v_s \\, / \\, c_t,

    .. math::

        u_t = \\hat m_t / \\big(\\sqrt{\\hat v_t + \\bar\\varepsilon} + \\varepsilon\\big), \\qquad
        \\hat m_t = m_t / (1 - \\beta_1^t).

    With the defaults this is numerically ``optax.scale_by_amsgrad`` (as in :func:`scale_by_adam`,
    ``eps = eps_root = 0`` gives 0, not NaN, where the denominator is 0, and a denormal eps raises);
    ``correct_after_max=True`` is
    ``torch.optim.Adam(amsgrad=True)``, whose stored maximum is of the raw
    :math:`v_t` (an addition to Optax). A ``None`` update keeps its state.

    Args:
        bias_correction_mu: divide :math:`m_t` by :math:`1 - \\beta_1^t`; ``False`` drops the correction
            (the paper's original form).
        bias_correction_nu: divide by :math:`c_t`; ``False`` drops it, as for ``bias_correction_mu``.
        correct_after_max: keep the maximum of the raw :math:`v_t` and correct it after (PyTorch's form above).
        nu_dtype: storage of both ``nu`` and ``nu_max``, as for ``mu_dtype`` (an addition to Optax).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.chain(jz.scale_by_amsgrad(correct_after_max=True), jz.scale_by_learning_rate(1e-3))

    References:
        Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", ICLR 2018.
    """
    owner = "scale_by_amsgrad"
    validation.decay_rate(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    validation.epsilon(owner, "eps", eps)
    validation.epsilon(owner, "eps_root", eps_root)
    guard = validation.may_all_be_zero(eps, eps_root)
    mu_dtype = resolve(owner, "mu_dtype", mu_dtype)
    nu_dtype = resolve(owner, "nu_dtype", nu_dtype)
    for name, value in [("bias_correction_mu", bias_correction_mu), ("bias_correction_nu", bias_correction_nu)]:
        validation.flag(owner, name, value)
    validation.flag(owner, "correct_after_max", correct_after_max)
    correct_mu, correct_nu = _bias_corrector(bias_correction_mu), _bias_corrector(bias_correction_nu)

    def init(params):
        # Separate arrays for nu and nu_max: one buffer in two leaves cannot be donated.
        return ScaleByAmsgradState(zero_count(), *(tree.moments_like(params) for _ in range(3)))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.mu, "the first moment (state.mu)")
        count = safe_increment(state.count)
        mu = tree.update_moment(updates, state.mu, b1, 1)
        nu = tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        candidate = nu if correct_after_max else correct_nu(nu, b2, count)
        nu_max = tree.map_state(lambda g, high, v: jnp.maximum(high, v), updates, state.nu_max, candidate)
        nu_hat = correct_nu(nu_max, b2, count) if correct_after_max else nu_max
        mu_hat = correct_mu(mu, b1, count)
        updates = tree.moment_ratio(updates, mu_hat, nu_hat, eps, eps_root, guard)
        return updates, ScaleByAmsgradState(count, mu, nu, nu_max)

    tx = with_storage(
        GradientTransformation(init, update), signed={"mu": mu_dtype}, non_negative={"nu": nu_dtype, "nu_max": nu_dtype}
    )
    return expects_state(owner, tx, ScaleByAmsgradState)


class ScaleByRssState(NamedTuple):
    """The running sum of squared gradients (Adagrad's accumulator); ``count``: see
    :func:`~jaxopt_zoo.storage.with_storage`."""

    sum_of_squares: Updates
    count: jax.Array | None = None


@init_only("initial_accumulator_value")
def scale_by_rss(
    initial_accumulator_value: jax.typing.ArrayLike = 0.1,
    eps: jax.typing.ArrayLike = 1e-7,
    *,
    eps_in_sqrt: bool = True,
    accumulator_dtype: StateDtype = None,
) -> GradientTransformation:
    """Adagrad's scaling by the root of the sum of squared gradients (Duchi et al. 2011).

    .. math::

        s_t = s_{t-1} + g_t^2, \\quad s_0 = a, \\qquad
        u_t = \\begin{cases} g_t / \\sqrt{s_t + \\varepsilon} & \\text{eps_in_sqrt (Optax)} \\\\
        g_t / (\\sqrt{s_t} + \\varepsilon) & \\text{otherwise (PyTorch)} \\end{cases}

    and :math:`u_t = 0` wherever :math:`s_t = 0` (Optax's guard; PyTorch would
    give 0/0 there when :math:`\\varepsilon = 0`). ``eps_in_sqrt`` is an addition to Optax.
    A denormal ``eps`` (below 1.18e-38, flushed to 0 by the hardware) raises.

    Args:
        initial_accumulator_value: :math:`a \\ge 0` (Optax's default 0.1; PyTorch's 0).
        eps: :math:`\\varepsilon \\ge 0`.
        eps_in_sqrt: add :math:`\\varepsilon` inside the square root.
        accumulator_dtype: storage of :math:`s`: a storage (see :mod:`jaxopt_zoo.storage`); an addition to Optax.

    Example:
        >>> import jaxopt_zoo as jz
        >>> adagrad = jz.chain(jz.scale_by_rss(), jz.scale_by_learning_rate(0.1))

    References:
        Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning and Stochastic
        Optimization", JMLR 2011.
    """
    validation.non_negative("scale_by_rss", "initial_accumulator_value", initial_accumulator_value)
    validation.epsilon("scale_by_rss", "eps", eps)
    validation.flag("scale_by_rss", "eps_in_sqrt", eps_in_sqrt)
    accumulator_dtype = resolve("scale_by_rss", "accumulator_dtype", accumulator_dtype)

    def init(params):
        return ScaleByRssState(tree.moments_like(params, initial_accumulator_value))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure("scale_by_rss", updates, state.sum_of_squares, "the accumulator (state.sum_of_squares)")
        sums = tree.map_state(lambda g, s: tree.abs_sq(g) + s, updates, state.sum_of_squares)
        scale = lambda g, s: jnp.where(s > 0, _inverse_root(s, eps, eps_in_sqrt), 0.0) * g
        return tree.map_updates(scale, updates, sums), ScaleByRssState(sums)

    tx = with_storage(GradientTransformation(init, update), non_negative={"sum_of_squares": accumulator_dtype})
    return expects_state("scale_by_rss", tx, ScaleByRssState)


class ScaleByRmsState(NamedTuple):
    """The running mean ``nu`` of squared gradients; ``count``: see :func:`~jaxopt_zoo.storage.with_storage`."""

    nu: Updates
    count: jax.Array | None = None


class ScaleByRmsWithCountState(NamedTuple):
    """The running mean of squared gradients, and the step count for its bias correction."""

    count: jax.Array
    nu: Updates


class ScaleByRStdDevState(NamedTuple):
    """Running means of the gradients (``mu``) and of their squares (``nu``); ``count``: see
    :func:`~jaxopt_zoo.storage.with_storage`."""

    mu: Updates
    nu: Updates
    count: jax.Array | None = None


class ScaleByRStdDevWithCountState(NamedTuple):
    """Running means of gradients and squares, and the step count for their bias correction."""

    count: jax.Array
    mu: Updates
    nu: Updates


def check_rms_options(owner: str, decay, eps, initial_scale, eps_in_sqrt, bias_correction, decay_name="decay") -> None:
    """RMSprop's options: ``decay`` in [0, 1], an ``eps``, ``initial_scale >= 0``, two flags; ``decay = 1`` neither
    with bias correction (1 - 1^t = 0) nor with ``initial_scale = 0`` (the average stays 0: steps of g / eps)."""
    rate = validation.fraction(owner, decay_name, decay)
    validation.epsilon(owner, "eps", eps)
    start = validation.non_negative(owner, "initial_scale", initial_scale)
    validation.flag(owner, "eps_in_sqrt", eps_in_sqrt)
    validation.flag(owner, "bias_correction", bias_correction)
    if rate == 1.0 and bias_correction:
        raise ValueError(f"{owner}: {decay_name}=1 with bias_correction=True divides by 1 - 1^t = 0; "
                         f"use {decay_name} < 1.")
    if rate == 1.0 and start == 0.0:
        alternative = " or initial_scale > 0" if decay_name == "decay" else ""
        raise ValueError(f"{owner}: {decay_name}=1 keeps the squares' average at its start, 0, for good, so each step "
                         f"is g / eps; use {decay_name} < 1{alternative}.")


def _scale_by_rms_or_stddev(
    owner: str, centered: bool, decay, eps, initial_scale, eps_in_sqrt: bool, bias_correction: bool,
    mu_dtype: StateDtype, nu_dtype: StateDtype,
) -> GradientTransformation:
    # RMSprop's scaling, plain or centered: the two differ only by the mean they subtract.
    check_rms_options(owner, decay, eps, initial_scale, eps_in_sqrt, bias_correction)
    guard = validation.may_all_be_zero(eps)
    mu_dtype = resolve(owner, "mu_dtype", mu_dtype)
    nu_dtype = resolve(owner, "nu_dtype", nu_dtype)
    correct = _bias_corrector(bias_correction)
    state_type = {
        (False, False): ScaleByRmsState,
        (False, True): ScaleByRmsWithCountState,
        (True, False): ScaleByRStdDevState,
        (True, True): ScaleByRStdDevWithCountState,
    }[centered, bias_correction]

    def init(params):
        moments = {"nu": tree.moments_like(params, initial_scale)}
        if centered:
            moments["mu"] = tree.moments_like(params)
        if bias_correction:
            moments["count"] = zero_count()
        return state_type(**moments)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.nu, "the second moment (state.nu)")
        count = safe_increment(state.count) if bias_correction else None
        nu = tree.update_moment_per_elem_norm(updates, state.nu, decay, 2)
        nu_hat = correct(nu, decay, count)
        new = {"nu": nu}
        if centered:
            mu = tree.update_moment(updates, state.mu, decay, 1)
            mu_hat = correct(mu, decay, count)
            # Where the gradients barely vary, m^2 can round above v (more so with moments rounded apart in storage).
            variance = tree.map_updates(lambda g, m, v: jnp.maximum(v - tree.abs_sq(m), 0), updates, mu_hat, nu_hat)
            new["mu"] = mu
        else:
            variance = nu_hat
        if bias_correction:
            new["count"] = count
        updates = tree.map_updates(lambda g, v: _scaled_by_inverse_root(g, v, eps, eps_in_sqrt, guard), updates, variance)
        return updates, type(state)(**new)

    signed = {"mu": mu_dtype} if centered else {}
    tx = with_storage(GradientTransformation(init, update), signed=signed, non_negative={"nu": nu_dtype})
    return expects_state(owner, tx, state_type)


@init_only("initial_scale")
def scale_by_rms(
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """RMSprop's scaling by the root of a running mean of squared gradients (Tieleman & Hinton 2012).

    .. math::

        v_t = \\rho v_{t-1} + (1 - \\rho) g_t^2, \\quad v_0 = v_{\\text{init}}, \\qquad
        u_t = \\begin{cases} g_t / \\sqrt{\\hat v_t + \\varepsilon} & \\text{eps_in_sqrt} \\\\
        g_t / (\\sqrt{\\hat v_t} + \\varepsilon) & \\text{otherwise (PyTorch)} \\end{cases}

    with :math:`\\hat v_t = v_t / (1 - \\rho^t)` if ``bias_correction`` else :math:`v_t`.
    Numerically ``optax.scale_by_rms``; ``decay`` must lie in [0, 1] (1 only with
    ``initial_scale > 0``: from 0, v stays 0 and Optax steps g / eps). With ``eps=0``
    the update is 0 where :math:`\\hat v_t = 0` (all gradients so far zero), where
    Optax and PyTorch give NaN (:math:`0 \\cdot \\infty`): a deliberate difference that
    changes no number for ``eps > 0``; a denormal ``eps`` raises.

    Args:
        decay: :math:`\\rho \\in [0, 1]`, the decay of each running mean (1 only with ``initial_scale > 0``
            and without ``bias_correction``, whose :math:`1 - \\rho^t` would be 0).
        eps: :math:`\\varepsilon \\ge 0`, added inside the square root or outside it, as ``eps_in_sqrt`` says.
        initial_scale: :math:`v_{\\text{init}} \\ge 0`, the mean square's starting value :math:`v_0` (PyTorch's is 0).
        eps_in_sqrt: add :math:`\\varepsilon` inside the square root (Optax); ``False`` adds it outside (PyTorch).
        bias_correction: divide each running mean by :math:`1 - \\rho^t` (the state then counts the steps).
        nu_dtype: storage of :math:`v`: a storage (see :mod:`jaxopt_zoo.storage`); an addition to Optax.

    Example:
        >>> import jaxopt_zoo as jz
        >>> torch_like = jz.chain(jz.scale_by_rms(0.99, eps_in_sqrt=False), jz.scale_by_learning_rate(1e-2))

    References:
        Tieleman & Hinton, "Lecture 6.5 - RMSProp", COURSERA: Neural Networks for Machine Learning, 2012.
    """
    return _scale_by_rms_or_stddev(
        "scale_by_rms", False, decay, eps, initial_scale, eps_in_sqrt, bias_correction, None, nu_dtype
    )


@init_only("initial_scale")
@document_args(scale_by_rms)
def scale_by_stddev(
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """Centered RMSprop's scaling by a running estimate of the gradients' standard deviation (Graves 2013).

    .. math::

        m_t = \\rho m_{t-1} + (1 - \\rho) g_t, \\quad
        v_t = \\rho v_{t-1} + (1 - \\rho) g_t^2, \\qquad
        u_t = g_t / \\sqrt{\\hat v_t - \\hat m_t^2 + \\varepsilon}
        \\ \\text{or} \\ g_t / (\\sqrt{\\hat v_t - \\hat m_t^2} + \\varepsilon),

    with the hats the optional bias corrections, as in :func:`scale_by_rms`.
    Numerically ``optax.scale_by_stddev``; ``decay`` must lie in [0, 1] (1 only with
    ``initial_scale > 0``, as for :func:`scale_by_rms`). With ``eps=0``
    the update is 0 where the variance is exactly 0, instead of NaN, as in :func:`scale_by_rms`.
    The variance :math:`\\hat v_t - \\hat m_t^2` is clamped at 0: where the gradients barely vary it
    can round below 0, and below :math:`-\\varepsilon` Optax's step is NaN (a steady gradient of
    20,000 entries did so in 10% of them after 129 steps; with ``decay=0`` on the first step).
    Where the gradients vary little next to their mean, most of :math:`\\hat v_t` cancels in the
    variance, and so the rounding of low-precision moments is magnified: a gradient with 5% noise took
    steps up to 27 times float32's with 8-bit moments and 9 times with ``StochasticBF16`` (30 steps of a
    512 x 512 leaf). Keep both moments in float32 for centered RMSprop.

    Args:
        mu_dtype: storage of :math:`m`, as for ``nu_dtype`` (an addition to Optax; low precision: see above).

    Example:
        >>> import jaxopt_zoo as jz
        >>> centered = jz.chain(jz.scale_by_stddev(0.99, eps_in_sqrt=False), jz.scale_by_learning_rate(1e-2))

    References:
        Graves, "Generating Sequences With Recurrent Neural Networks", 2013 (eq. 38-41).
    """
    return _scale_by_rms_or_stddev(
        "scale_by_stddev", True, decay, eps, initial_scale, eps_in_sqrt, bias_correction, mu_dtype, nu_dtype
    )


class ScaleByAdaDeltaState(NamedTuple):
    """Running means of squared gradients (``e_g``) and of squared updates (``e_x``)."""

    e_g: Updates
    e_x: Updates
    count: jax.Array | None = None


def scale_by_adadelta(
    rho: jax.typing.ArrayLike = 0.9, eps: jax.typing.ArrayLike = 1e-6, *, accumulator_dtype: StateDtype = None
) -> GradientTransformation:
    """Adadelta's unit-correcting scaling (Zeiler 2012).

    .. math::

        E[g^2]_t = \\rho E[g^2]_{t-1} + (1 - \\rho) g_t^2, \\qquad
        u_t = \\frac{\\sqrt{E[\\Delta x^2]_{t-1} + \\varepsilon}}{\\sqrt{E[g^2]_t + \\varepsilon}} \\, g_t, \\qquad
        E[\\Delta x^2]_t = \\rho E[\\Delta x^2]_{t-1} + (1 - \\rho) u_t^2.

    The paper applies :math:`-u_t` directly (a learning rate of 1).
    Numerically ``optax.scale_by_adadelta`` for real parameters; ``rho`` must
    lie in [0, 1] and ``eps`` be positive (and not denormal): with ``eps=0``
    :math:`E[\\Delta x^2]` starts at 0 and stays there, so every step would be 0
    (or NaN for a zero gradient). Optax and PyTorch accept ``eps=0``; here it
    raises. Deviation from Optax: for complex gradients :math:`g^2` is
    :math:`|g|^2` (Optax squares the complex number, so its "mean square" is complex).

    Args:
        rho: :math:`\\rho \\in [0, 1]`, the decay of both running means.
        eps: :math:`\\varepsilon > 0`, added inside both square roots.
        accumulator_dtype: storage of both running means: a storage (see :mod:`jaxopt_zoo.storage`); an
            addition to Optax.

    Example:
        >>> import jaxopt_zoo as jz
        >>> adadelta = jz.chain(jz.scale_by_adadelta(), jz.scale_by_learning_rate(1.0))

    References:
        Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012.
    """
    validation.fraction("scale_by_adadelta", "rho", rho)
    # eps = 0 would keep every step at 0: E[dx^2] starts at 0 and only grows from the steps.
    validation.epsilon("scale_by_adadelta", "eps", eps, allow_zero=False, why_positive=" (with eps=0 every step is 0: the mean square of the steps starts at 0 and stays there)")
    accumulator_dtype = resolve("scale_by_adadelta", "accumulator_dtype", accumulator_dtype)

    def init(params):
        return ScaleByAdaDeltaState(tree.moments_like(params), tree.moments_like(params))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure("scale_by_adadelta", updates, state.e_g, "the mean square (state.e_g)")
        e_g = tree.update_moment_per_elem_norm(updates, state.e_g, rho, 2)
        updates = tree.map_updates(lambda g, sq_g, sq_x: (jnp.sqrt(sq_x + eps) / jnp.sqrt(sq_g + eps)) * g, updates, e_g, state.e_x)
        e_x = tree.update_moment_per_elem_norm(updates, state.e_x, rho, 2)
        return updates, ScaleByAdaDeltaState(e_g, e_x)

    storage = {"e_g": accumulator_dtype, "e_x": accumulator_dtype}
    tx = with_storage(GradientTransformation(init, update), non_negative=storage)
    return expects_state("scale_by_adadelta", tx, ScaleByAdaDeltaState)
