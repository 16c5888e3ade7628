"""D-adaptation aliases: prodigy, dadapt_adamw (Optax's ``optax.contrib`` names, the same numbers).

Each is the whole step of its transformation in :mod:`jaxopt_zoo.transforms.d_adaptation`: the learning
rate and the weight decay act inside the rule (they scale the quantities the distance is estimated from),
so they cannot be chained after it. The state is the transformation's own NamedTuple, as in Optax, so
``state.estim_lr`` reads the current estimate :math:`d_t`.

    >>> import jaxopt_zoo as jz
    >>> tx = jz.prodigy(weight_decay=1e-2, exp_avg_dtype=jz.StochasticBF16())
"""

from __future__ import annotations

import jax

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, ScalarOrSchedule, init_only
from jaxopt_zoo.docstrings import document_args
from jaxopt_zoo.sharding import AxisName
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.transforms.d_adaptation import (
    DISTANCE_IS_REAL,
    check_options,
    check_prodigy_options,
    scale_by_dadapt_adamw,
    scale_by_prodigy,
)

__all__ = ["dadapt_adamw", "prodigy"]


@document_args(scale_by_prodigy)
def prodigy(
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
    """Prodigy (Mishchenko and Defazio 2023): learning-rate-free AdamW that estimates its step size :math:`d_t`.

    The rule is :func:`~jaxopt_zoo.transforms.d_adaptation.scale_by_prodigy` (its docstring has the math):
    AdamW on :math:`d_t g_t` at step size :math:`d_t \\alpha_t`, where :math:`d_t` grows towards the
    distance to a solution, estimated from :math:`\\langle g_t, x_0 - x_t \\rangle` weighted towards
    recent steps. Use :math:`\\alpha_t` as a schedule around 1 (a cosine or linear decay, with a warmup).

    Numerically identical to ``optax.contrib.prodigy`` with float32 or float64 params (states included).
    Differences from ``optax.contrib.prodigy``: a schedule that starts at 0 (a warmup) or a zero first
    gradient leaves :math:`d` at :math:`d_0` where Optax's run becomes NaN; the scalars :math:`d_t` and its
    numerator are float32 at least (Optax's are bfloat16 with bfloat16 params, where
    :math:`\\beta_3` rounds to 1); ``params0`` is a copy, not the caller's params; ``eps=0`` gives 0, not
    NaN, where every gradient was 0; complex params raise; ``None`` updates keep their state; bad
    numbers raise here, naming the argument. Additions: storages for the four per-parameter states
    (``params0_dtype`` not 8-bit: see the transformation) and ``axis_name`` for ``shard_map``.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.prodigy(jz.cosine_decay_schedule(1.0, 1000), weight_decay=1e-2)

    References:
        Mishchenko and Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner",
        ICML 2024 (arXiv:2306.06101).
    """
    storages = dict(exp_avg_dtype=exp_avg_dtype, exp_avg_sq_dtype=exp_avg_sq_dtype, grad_sum_dtype=grad_sum_dtype,
                    params0_dtype=params0_dtype)
    check_prodigy_options("prodigy", learning_rate, betas, beta3, eps, estim_lr0, estim_lr_coef, weight_decay,
                          safeguard_warmup, axis_name, **storages)
    return validation.refusing_complex("prodigy", scale_by_prodigy(
        learning_rate, betas, beta3, eps, estim_lr0, estim_lr_coef, weight_decay, safeguard_warmup, **storages,
        axis_name=axis_name), DISTANCE_IS_REAL)


@init_only("estim_lr0")
@document_args(scale_by_dadapt_adamw)
def dadapt_adamw(
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
    """D-Adapt AdamW (Defazio and Mishchenko 2023): learning-rate-free AdamW that estimates its step size :math:`d_t`.

    The rule is :func:`~jaxopt_zoo.transforms.d_adaptation.scale_by_dadapt_adamw` (its docstring has the
    math): AdamW at step size :math:`d_t \\alpha_t`, where :math:`d_t` is a lower bound on the distance
    to a solution in the (preconditioned) infinity norm, from the decayed gradient sum. Use
    :math:`\\alpha_t` as a schedule around 1.

    Numerically identical to ``optax.contrib.dadapt_adamw`` with float32 or float64 params (states
    included). Differences from ``optax.contrib.dadapt_adamw``: a schedule that starts at 0 (a warmup)
    or a zero first gradient leaves :math:`d` at :math:`d_0` where Optax's run becomes NaN; the scalars are
    float32 at least (Optax's are bfloat16 with bfloat16 params); ``eps=0`` gives 0, not NaN, where every
    gradient was 0; complex params raise; ``None`` updates keep their state; bad numbers raise here,
    naming the argument. Additions: storages for the three per-parameter moments and ``axis_name``.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.dadapt_adamw(jz.linear_schedule(1.0, 0.0, 1000), grad_sum_dtype=jz.Blockwise8Bit())

    References:
        Defazio and Mishchenko, "Learning-Rate-Free Learning by D-Adaptation", ICML 2023 (arXiv:2301.07733).
    """
    storages = dict(exp_avg_dtype=exp_avg_dtype, exp_avg_sq_dtype=exp_avg_sq_dtype, grad_sum_dtype=grad_sum_dtype)
    check_options("dadapt_adamw", learning_rate, betas, eps, estim_lr0, weight_decay, axis_name, **storages)
    return validation.refusing_complex("dadapt_adamw", scale_by_dadapt_adamw(
        learning_rate, betas, eps, estim_lr0, weight_decay, **storages, axis_name=axis_name), DISTANCE_IS_REAL)
