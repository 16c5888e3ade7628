"""Learning-rate estimation by D-adaptation: Prodigy and D-Adapt AdamW.

Both rules are AdamW whose step size is :math:`d_t \\alpha_t`, where
:math:`\\alpha_t` is a schedule around 1 and :math:`d_t` an estimate of the
distance from the initial point to a solution, which only grows. The estimate
is a ratio of two sums over the whole parameter tree: a weighted sum of inner
products of the gradients (with the distance travelled, for Prodigy; with the
preconditioned gradient sum, for D-Adapt) over the l1 norm of a decayed sum of
the gradients :math:`s`. Those sums take ``axis_name``, so that inside
``shard_map`` they are the whole tree's, not the local shard's.

The per-parameter state (``exp_avg``, ``exp_avg_sq``, ``grad_sum`` and
Prodigy's copy of the initial params ``params0``) takes the storage options;
the whole-tree scalars (``estim_lr`` = :math:`d_t`, ``numerator_weighted``)
are float32 (float64 when every param is).

    >>> import jaxopt_zoo as jz
    >>> tx = jz.scale_by_prodigy(jz.warmup_cosine_decay_schedule(0.0, 1.0, 100, 1000))
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import (
    GradientTransformation,
    ScalarOrSchedule,
    Updates,
    expects_state,
    init_only,
    safe_increment,
    zero_count,
)
from jaxopt_zoo.docstrings import document_args
from jaxopt_zoo.sharding import AxisName, sum_over_shards
from jaxopt_zoo.storage import StateDtype, resolve, resolve_floating, with_storage

__all__ = [
    "DAdaptAdamWState",
    "ProdigyState",
    "scale_by_dadapt_adamw",
    "scale_by_prodigy",
]


# --- the pieces both rules share ----------------------------------------------------------------


def check_options(owner: str, learning_rate: Any, betas: Any, eps: Any, estim_lr0: Any, weight_decay: Any,
                  axis_name: Any, **storages: Any) -> tuple[Any, Any, tuple[str, ...] | None]:
    """Validate the options both rules take, under ``owner``'s name; return ``(b1, b2, axis_name)``."""
    validation.scalar_or_schedule(owner, "learning_rate", learning_rate)
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{owner}: betas must be a pair (b1, b2), got {betas!r}.")
    validation.decay_rate(owner, "betas[0]", betas[0])
    validation.decay_rate(owner, "betas[1]", betas[1])
    validation.epsilon(owner, "eps", eps)
    validation.positive(owner, "estim_lr0", estim_lr0)
    validation.non_negative(owner, "weight_decay", weight_decay)
    validation.state_dtypes(owner, **storages)
    return betas[0], betas[1], validation.axis_name(owner, axis_name)


DISTANCE_IS_REAL = "the distance estimate is a real number"


def _scalar_dtype(owner: str, params: Any) -> jnp.dtype:
    # float64 when every param is float64, float32 otherwise. Optax uses the params' narrowest dtype: in
    # bfloat16 the numerator's decay beta3 = 0.9995 rounds to 1 and d_t has 8 bits.
    validation.refuse_complex(owner, params, DISTANCE_IS_REAL)
    return tree.scalar_dtype(params)


def _step_size(estimate: jax.Array, rate: Any, count: jax.Array, b1: Any, b2: Any) -> jax.Array:
    """:math:`\\lambda_t = d_t \\alpha_t \\sqrt{1 - \\beta_2^t} / (1 - \\beta_1^t)`, in :math:`d_t`'s dtype."""
    correction = ((1 - b2**count) ** 0.5) / (1 - b1**count)
    return jnp.asarray(estimate * rate * correction, dtype=estimate.dtype)


def _raised_estimate(estimate: jax.Array, numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """:math:`d_{t+1} = \\max(d_t, \\text{numerator} / \\text{denominator})`; :math:`d_t` while the denominator is 0.

    The denominator is 0 until some gradient has entered :math:`s` with a non-zero step: at a zero first
    gradient, or a schedule that starts at 0 (a warmup). Optax divides 0 by 0 there and the run is NaN.
    """
    positive = denominator > 0
    ratio = numerator / jnp.where(positive, denominator, 1)
    return jnp.where(positive, jnp.maximum(estimate, ratio), estimate).astype(estimate.dtype)


def _tree_l1(owner: str, moments: Any, axis_name: AxisName) -> jax.Array:
    """:math:`\\|s\\|_1` of the whole tree (a kept leaf, where an update was ``None``, counts too)."""
    return sum_over_shards(owner, ((jnp.sum(jnp.abs(s)), s) for s in jax.tree.leaves(moments)), axis_name)


def _rate(learning_rate: ScalarOrSchedule, count: jax.Array) -> Any:
    return learning_rate(count) if callable(learning_rate) else learning_rate


def _divide(guard: bool, numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    # With eps = 0 a coordinate whose gradients were all 0 has a 0 denominator: its step is 0, not 0/0.
    if not guard:
        return numerator / denominator
    zero = denominator == 0
    return jnp.where(zero, 0, numerator / jnp.where(zero, 1, denominator))


def _storages(owner: str, exp_avg_dtype: StateDtype, exp_avg_sq_dtype: StateDtype, grad_sum_dtype: StateDtype):
    return dict(
        signed={"exp_avg": resolve(owner, "exp_avg_dtype", exp_avg_dtype),
                "grad_sum": resolve(owner, "grad_sum_dtype", grad_sum_dtype)},
        non_negative={"exp_avg_sq": resolve(owner, "exp_avg_sq_dtype", exp_avg_sq_dtype)},
    )


# --- Prodigy ------------------------------------------------------------------------------------


class ProdigyState(NamedTuple):
    """Adam's moments of :math:`d g` (``exp_avg``, ``exp_avg_sq``), the decayed gradient sum :math:`s`
    (``grad_sum``), the initial params ``params0``, the estimate :math:`d_t` (``estim_lr``), the weighted
    numerator :math:`r_t` (``numerator_weighted``) and the step count."""

    exp_avg: Updates
    exp_avg_sq: Updates
    grad_sum: Updates
    params0: Updates
    estim_lr: jax.Array
    numerator_weighted: jax.Array
    count: jax.Array


def scale_by_prodigy(
    learning_rate: ScalarOrSchedule = 1.0,
    betas: tuple[jax.typing.ArrayLike, jax.typing.ArrayLike] = (0.9, 0.999),
    beta3: jax.typing.ArrayLike | None = None,
    eps: jax.typing.ArrayLike = 1e-8,
    estim_lr0: jax.typing.ArrayLike = 1e-6,
    estim_lr_coef: jax.typing.ArrayLike = 1.0,
    weight_decay: jax.typing.ArrayLike = 0.0,
    safeguard_warmup: bool = False,
    *,
    exp_avg_dtype: StateDtype = None,
    exp_avg_sq_dtype: StateDtype = None,
    grad_sum_dtype: StateDtype = None,
    params0_dtype: StateDtype = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """Prodigy (Mishchenko and Defazio 2023): AdamW whose step size :math:`d_t \\alpha_t` estimates itself.

    With :math:`x_0` the initial params, :math:`\\lambda_t = d_t \\alpha_t \\sqrt{1-\\beta_2^t}/(1-\\beta_1^t)`
    and sums :math:`\\sum`, :math:`\\|\\cdot\\|_1` over the whole tree:

    .. math::

        m_t = \\beta_1 m_{t-1} + (1-\\beta_1) d_t g_t, \\qquad
        v_t = \\beta_2 v_{t-1} + (1-\\beta_2) d_t^2 g_t^2, \\\\
        s_t = \\beta_3 s_{t-1} + \\frac{d_t \\omega_t}{d_0} g_t, \\qquad
        r_t = \\beta_3 r_{t-1} + \\frac{d_t \\lambda_t}{d_0} \\langle g_t, x_0 - x_t \\rangle, \\\\
        d_{t+1} = \\max\\Big(d_t, \\frac{c \\, r_t}{\\|s_t\\|_1}\\Big), \\qquad
        u_t = -\\lambda_t \\Big(\\frac{m_t}{\\sqrt{v_t} + d_{t+1} \\epsilon} + w x_t\\Big),

    from :math:`m_0 = v_0 = s_0 = 0`, :math:`r_0 = 0`, where :math:`\\omega_t = \\lambda_t`
    (:math:`d_t` with ``safeguard_warmup``, which keeps a small :math:`\\alpha_t` out of :math:`s`),
    :math:`\\beta_3 = \\sqrt{\\beta_2}` unless given, :math:`c` is ``estim_lr_coef`` and :math:`w` the
    ``weight_decay`` (decoupled, AdamW's). The update includes the learning rate and the sign: it is
    the whole step.

    Numerically identical to ``optax.contrib.prodigy`` with float32 or float64 params (states
    included). Differences from ``optax.contrib.prodigy``: while :math:`\\|s_t\\|_1 = 0` (no gradient
    has entered with a non-zero step yet: a zero first gradient, or a schedule starting at 0, as a
    warmup does) :math:`d` stays as it is, where Optax computes 0/0 and the run becomes NaN; the
    scalars :math:`d_t, r_t` are float32 at least (Optax keeps them in the params' narrowest dtype,
    where bfloat16 rounds :math:`\\beta_3` to 1), and the update is in the gradient's dtype (float32
    for float16);
    ``params0`` is a copy (Optax's aliases the params, so donating both fails); with ``eps = 0``
    a coordinate whose gradients were all 0 steps by 0 instead of 0/0, and so does one whose
    :math:`(d g)^2` underflows to 0 when :math:`d_0 \\epsilon` is below float32's smallest normal
    number (``estim_lr0`` below about 1e-30 with the default ``eps``: Optax's steps are NaN there,
    from ``estim_lr0`` about 1e-19 on); complex params raise
    (wrap in ``jz.split_real_and_imaginary``); a ``None`` update keeps its state (its ``grad_sum``
    still counts in :math:`\\|s\\|_1`) and adds nothing to :math:`r`; bad numbers raise when built.
    Additions: the storage options and ``axis_name``. ``params0_dtype`` refuses
    :class:`~jaxopt_zoo.quantization.Blockwise8Bit`: :math:`x_0 - x_t` is read every step, and
    8-bit rounding of :math:`x_0` (3 mantissa bits: up to 1/8 of each entry, about 3% of
    :math:`\\|x_0\\|`) would swamp the distance travelled in the first steps. A bfloat16 copy (also
    :class:`~jaxopt_zoo.storage.StochasticBF16`'s, written once at ``init`` and so rounded to nearest)
    is accepted, but its rounding, :math:`2^{-9} |x_0|`, counts as distance travelled: :math:`d`
    grows from the second step as if the params had moved that far (a 256-parameter quadratic with
    :math:`x_0 \\approx 1`: updates some 60 times those of an exact copy at step 2, and a final loss
    100 times higher after 200 steps); keep it in the params' dtype unless they are far larger than
    the distance to travel.

    Args:
        learning_rate: :math:`\\alpha_t \\ge 0` around 1, or a schedule of the step count (the paper
            recommends a cosine or linear decay from 1, with a warmup).
        betas: :math:`(\\beta_1, \\beta_2)`, each in [0, 1), Adam's decays.
        beta3: :math:`\\beta_3 \\in [0, 1)`, the decay of :math:`s` and :math:`r`; ``None`` for
            :math:`\\sqrt{\\beta_2}`.
        eps: :math:`\\epsilon \\ge 0`, times :math:`d_{t+1}` in the denominator.
        estim_lr0: :math:`d_0 > 0`, the first (under-)estimate, not below the smallest normal number of the
            scalars' dtype (float32's 1.18e-38: a denormal one is flushed to 0, and ``init`` raises). The first steps are about :math:`d_0` per
            entry, and a step below the params' rounding (about :math:`6 \\cdot 10^{-8} |x|` in float32)
            leaves them unchanged, so that :math:`x_0 - x_t` and :math:`d` never grow: in float32 keep
            :math:`d_0` above about :math:`10^{-7}` times the params' magnitude (the default 1e-6 is).
        estim_lr_coef: :math:`c > 0`, a factor on every new estimate.
        weight_decay: :math:`w \\ge 0`, decoupled weight decay.
        safeguard_warmup: leave :math:`\\alpha_t` out of :math:`s` (for warmups).
        exp_avg_dtype: storage of the first moment :math:`m`: a storage (see :mod:`jaxopt_zoo.storage`).
        exp_avg_sq_dtype: storage of the second moment :math:`v`, as for ``exp_avg_dtype``.
        grad_sum_dtype: storage of the decayed gradient sum :math:`s`, as for ``exp_avg_dtype``.
        params0_dtype: storage of :math:`x_0`: ``None`` (the params' dtype) or a floating dtype (a
            narrower one adds its rounding to the distance, see above); not 8-bit.
        axis_name: inside ``shard_map``, the mesh axes the params may be sharded over, so that the
            sums over the tree are whole.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_prodigy(estim_lr0=0.5, eps=0.0)
        >>> params = jnp.array([1.0, -2.0])
        >>> updates, state = tx.update(jnp.array([0.5, -4.0]), tx.init(params), params)
        >>> updates.round(3)  # the first step is -d_0 sign(g): nothing has moved yet, so d stays d_0
        Array([-0.5,  0.5], dtype=float32)
        >>> state.estim_lr
        Array(0.5, dtype=float32)

    References:
        Mishchenko and Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner",
        ICML 2024 (arXiv:2306.06101), Algorithm 4.
    """
    owner = "scale_by_prodigy"
    b1, b2, axis_name = check_prodigy_options(
        owner, learning_rate, betas, beta3, eps, estim_lr0, estim_lr_coef, weight_decay, safeguard_warmup, axis_name,
        exp_avg_dtype=exp_avg_dtype, exp_avg_sq_dtype=exp_avg_sq_dtype, grad_sum_dtype=grad_sum_dtype,
        params0_dtype=params0_dtype,
    )
    beta3 = b2**0.5 if beta3 is None else beta3
    storages = _storages(owner, exp_avg_dtype, exp_avg_sq_dtype, grad_sum_dtype)
    storages["signed"]["params0"] = _params0_storage(owner, params0_dtype)
    # The denominator sqrt(v) + d eps is 0 where g was always 0 if eps = 0, and also wherever (d g)^2 underflows
    # to 0 if d eps does (denormal, flushed): guarded then, 0 steps instead of 0/0. Unguarded (Optax's bits)
    # while d_0 eps is a normal float32, as d never falls below d_0.
    first_d = validation.real_scalar(owner, "estim_lr0", estim_lr0)
    first_eps = validation.real_scalar(owner, "eps", eps)
    guard = first_d is None or first_eps is None or first_d * first_eps < validation.SMALLEST_NORMAL

    def init(params):
        dtype = _scalar_dtype(owner, params)
        if first_d is not None and first_d < jnp.finfo(dtype).tiny:
            raise ValueError(
                f"{owner}: estim_lr0={estim_lr0!r} is below the smallest normal {dtype} number "
                f"({jnp.finfo(dtype).tiny:.3g}), so it is flushed to 0 in the update (d_t / d_0 would be 0/0); "
                "pass a value of at least that (the default is 1e-6)."
            )
        moments = lambda: tree.moments_like(params)  # noqa: E731  (three separate buffers, for donation)
        return ProdigyState(moments(), moments(), moments(), jax.tree.map(jnp.copy, params),
                            jnp.asarray(estim_lr0, dtype), jnp.zeros((), dtype), zero_count())

    def update(updates, state, params=None, **extra_args):
        del extra_args
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, state.exp_avg, "the first moment (state.exp_avg)")
        tree.check_same_structure(owner, updates, params, "the params")
        d, count = state.estim_lr, safe_increment(state.count)
        dlr = _step_size(d, _rate(learning_rate, state.count), count, b1, b2)
        s_rate = d if safeguard_warmup else dlr
        moved = tree.map_updates(lambda g, x0, x: x0 - x, updates, state.params0, params)
        progress = tree.tree_vdot(updates, moved, axis_name, owner)  # <g_t, x_0 - x_t>
        exp_avg = tree.map_state(lambda g, m: b1 * m + (1 - b1) * (d * tree.widen(g)), updates, state.exp_avg)
        exp_avg_sq = tree.map_state(
            lambda g, v: b2 * v + (1 - b2) * (d * tree.widen(g)) * (d * tree.widen(g)), updates, state.exp_avg_sq
        )
        grad_sum = tree.map_state(
            lambda g, s: beta3 * s + s_rate * (d * tree.widen(g)) / estim_lr0, updates, state.grad_sum
        )
        numerator = (beta3 * state.numerator_weighted + (d / estim_lr0) * dlr * progress).astype(d.dtype)
        new_d = _raised_estimate(d, estim_lr_coef * numerator, _tree_l1(owner, grad_sum, axis_name))

        def step(g, m, v, x):
            u = -weight_decay * dlr * x - _divide(guard, dlr * m, tree.root(v) + new_d * eps)
            return u.astype(tree.moment_dtype(jnp.result_type(g)))

        new_updates = tree.map_updates(step, updates, exp_avg, exp_avg_sq, params)
        return new_updates, ProdigyState(exp_avg, exp_avg_sq, grad_sum, state.params0, new_d, numerator, count)

    tx = with_storage(GradientTransformation(init, update), **storages)
    return expects_state(owner, tx, ProdigyState)


def check_prodigy_options(owner, learning_rate, betas, beta3, eps, estim_lr0, estim_lr_coef, weight_decay,
                          safeguard_warmup, axis_name, **storages):
    """Validate :func:`scale_by_prodigy`'s options under ``owner``'s name; return ``(b1, b2, axis_name)``."""
    b1, b2, axis_name = check_options(owner, learning_rate, betas, eps, estim_lr0, weight_decay, axis_name, **storages)
    if beta3 is not None:
        validation.decay_rate(owner, "beta3", beta3)
    validation.positive(owner, "estim_lr_coef", estim_lr_coef)
    validation.flag(owner, "safeguard_warmup", safeguard_warmup)
    _params0_storage(owner, storages.get("params0_dtype"))
    return b1, b2, axis_name


def _params0_storage(owner: str, params0_dtype: StateDtype):
    return resolve_floating(
        owner, "params0_dtype", params0_dtype,
        "keeps the initial params as 8-bit codes, whose rounding (3 mantissa bits: up to 1/8 of each entry) would "
        "swamp x_0 - x_t in the first steps and so the distance estimate; use None (the params' dtype) or a floating "
        "dtype as wide as the params (a bfloat16 copy, jz.StochasticBF16()'s too, rounds by 2^-9 |x_0|, which the "
        "distance estimate counts as well).")


# --- D-Adapt AdamW ------------------------------------------------------------------------------


class DAdaptAdamWState(NamedTuple):
    """Adam's moments (``exp_avg`` of :math:`\\lambda g`, ``exp_avg_sq`` of :math:`g^2`), the decayed gradient
    sum :math:`s` (``grad_sum``), the estimate :math:`d_t` (``estim_lr``), the weighted numerator :math:`r_t`
    (``numerator_weighted``) and the step count."""

    exp_avg: Updates
    exp_avg_sq: Updates
    grad_sum: Updates
    estim_lr: jax.Array
    numerator_weighted: jax.Array
    count: jax.Array


@init_only("estim_lr0")
@document_args(scale_by_prodigy)
def scale_by_dadapt_adamw(
    learning_rate: ScalarOrSchedule = 1.0,
    betas: tuple[jax.typing.ArrayLike, jax.typing.ArrayLike] = (0.9, 0.999),
    eps: jax.typing.ArrayLike = 1e-8,
    estim_lr0: jax.typing.ArrayLike = 1e-6,
    weight_decay: jax.typing.ArrayLike = 0.0,
    *,
    exp_avg_dtype: StateDtype = None,
    exp_avg_sq_dtype: StateDtype = None,
    grad_sum_dtype: StateDtype = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """D-Adapt AdamW (Defazio and Mishchenko 2023): AdamW whose step size :math:`d_t \\alpha_t` estimates itself.

    With :math:`\\lambda_t = d_t \\alpha_t \\sqrt{1-\\beta_2^t}/(1-\\beta_1^t)`, :math:`\\gamma = \\sqrt{\\beta_2}`
    and sums :math:`\\langle\\cdot,\\cdot\\rangle`, :math:`\\|\\cdot\\|_1` over the whole tree:

    .. math::

        r_t = \\gamma r_{t-1} + (1-\\gamma) \\lambda_t
              \\Big\\langle g_t, \\frac{s_{t-1}}{\\sqrt{v_{t-1}} + \\epsilon} \\Big\\rangle, \\qquad
        s_t = \\gamma s_{t-1} + (1-\\gamma) \\lambda_t g_t, \\\\
        m_t = \\beta_1 m_{t-1} + (1-\\beta_1) \\lambda_t g_t, \\qquad
        v_t = \\beta_2 v_{t-1} + (1-\\beta_2) g_t^2, \\\\
        d_{t+1} = \\max\\Big(d_t, \\frac{r_t}{(1-\\gamma) \\|s_t\\|_1}\\Big), \\qquad
        u_t = -\\frac{m_t}{\\sqrt{v_t} + \\epsilon} - w \\lambda_t x_t,

    from :math:`m_0 = v_0 = s_0 = 0`, :math:`r_0 = 0`, :math:`w` the decoupled ``weight_decay``. The
    step size is inside :math:`m`; the update includes it and the sign: it is the whole step.

    Numerically identical to ``optax.contrib.dadapt_adamw`` with float32 or float64 params (states
    included). Differences from ``optax.contrib.dadapt_adamw``: while :math:`\\|s_t\\|_1 = 0` (a zero
    first gradient, or a schedule starting at 0, as a warmup does) :math:`d` stays as it is, where
    Optax computes 0/0 and the run becomes NaN; the scalars :math:`d_t, r_t` are float32 at least
    (Optax keeps them in the params' narrowest dtype, where bfloat16 rounds :math:`\\gamma` to 1), and
    the update is in the gradient's dtype (float32 for float16); with ``eps = 0`` a coordinate whose
    gradients were all 0 contributes and steps 0 instead of 0/0; complex params raise (wrap in
    ``jz.split_real_and_imaginary``); a ``None`` update keeps its state (its ``grad_sum`` still counts
    in :math:`\\|s\\|_1`) and adds nothing to :math:`r`; bad numbers raise when built. Additions: the
    storage options and ``axis_name``.

    Args:
        learning_rate: :math:`\\alpha_t \\ge 0` around 1, or a schedule of the step count.
        eps: :math:`\\epsilon \\ge 0`, added to :math:`\\sqrt{v}`.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale_by_dadapt_adamw(estim_lr0=0.5, eps=0.0)
        >>> params = jnp.array([1.0, -2.0])
        >>> updates, state = tx.update(jnp.array([0.5, -4.0]), tx.init(params), params)
        >>> updates.round(3)  # the first step is -d_0 sign(g); s_0 = 0, so d stays d_0
        Array([-0.5,  0.5], dtype=float32)
        >>> state.estim_lr
        Array(0.5, dtype=float32)

    References:
        Defazio and Mishchenko, "Learning-Rate-Free Learning by D-Adaptation", ICML 2023
        (arXiv:2301.07733), Algorithm 5 (Adam).
    """
    owner = "scale_by_dadapt_adamw"
    b1, b2, axis_name = check_options(
        owner, learning_rate, betas, eps, estim_lr0, weight_decay, axis_name,
        exp_avg_dtype=exp_avg_dtype, exp_avg_sq_dtype=exp_avg_sq_dtype, grad_sum_dtype=grad_sum_dtype,
    )
    root_b2 = b2**0.5
    storages = _storages(owner, exp_avg_dtype, exp_avg_sq_dtype, grad_sum_dtype)
    guard = validation.may_all_be_zero(eps)

    def init(params):
        dtype = _scalar_dtype(owner, params)
        moments = lambda: tree.moments_like(params)  # noqa: E731  (three separate buffers, for donation)
        return DAdaptAdamWState(moments(), moments(), moments(), jnp.asarray(estim_lr0, dtype), jnp.zeros((), dtype),
                                zero_count())

    def update(updates, state, params=None, **extra_args):
        del extra_args
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, state.exp_avg, "the first moment (state.exp_avg)")
        tree.check_same_structure(owner, updates, params, "the params")
        d, count = state.estim_lr, safe_increment(state.count)
        dlr = _step_size(d, _rate(learning_rate, state.count), count, b1, b2)
        weighted = tree.map_updates(lambda g, s, v: _divide(guard, s, tree.root(v) + eps), updates, state.grad_sum,
                                    state.exp_avg_sq)
        progress = tree.tree_vdot(updates, weighted, axis_name, owner)  # <g_t, s_{t-1} / (sqrt(v_{t-1}) + eps)>
        exp_avg = tree.map_state(lambda g, m: b1 * m + (1 - b1) * dlr * tree.widen(g), updates, state.exp_avg)
        exp_avg_sq = tree.map_state(lambda g, v: b2 * v + (1 - b2) * tree.widen(g) * tree.widen(g), updates,
                                    state.exp_avg_sq)
        grad_sum = tree.map_state(lambda g, s: root_b2 * s + (1 - root_b2) * dlr * tree.widen(g), updates,
                                  state.grad_sum)
        numerator = (root_b2 * state.numerator_weighted + (1 - root_b2) * dlr * progress).astype(d.dtype)
        new_d = _raised_estimate(d, numerator, (1 - root_b2) * _tree_l1(owner, grad_sum, axis_name))

        def step(g, m, v, x):
            u = -weight_decay * dlr * x - _divide(guard, m, tree.root(v) + eps)
            return u.astype(tree.moment_dtype(jnp.result_type(g)))

        new_updates = tree.map_updates(step, updates, exp_avg, exp_avg_sq, params)
        return new_updates, DAdaptAdamWState(exp_avg, exp_avg_sq, grad_sum, new_d, numerator, count)

    tx = with_storage(GradientTransformation(init, update), **storages)
    return expects_state(owner, tx, DAdaptAdamWState)
