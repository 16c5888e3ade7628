"""Factored second moments: Adafactor and SM3, Optax's recipes of the transforms in
:mod:`jaxopt_zoo.transforms.factored` and :mod:`jaxopt_zoo.transforms.sm3`."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, Params, ScalarOrSchedule, static_only
from jaxopt_zoo.combine import chain
from jaxopt_zoo.sharding import AxisName
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.transforms import add_decayed_weights, clip_by_block_rms, ema, scale, scale_by_learning_rate
from jaxopt_zoo.transforms.factored import scale_by_factored_rms, scale_by_param_block_rms, static_size
from jaxopt_zoo.transforms.sm3 import scale_by_sm3

__all__ = ["adafactor", "sm3"]


@static_only("min_dim_size_to_factor")
def adafactor(
    learning_rate: ScalarOrSchedule | None = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: jax.typing.ArrayLike = 0.8,
    decay_offset: jax.typing.ArrayLike = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: jax.typing.ArrayLike | None = 1.0,
    momentum: jax.typing.ArrayLike | None = None,
    dtype_momentum: StateDtype = jnp.float32,
    weight_decay_rate: ScalarOrSchedule | None = None,
    eps: jax.typing.ArrayLike = 1e-30,
    factored: bool = True,
    weight_decay_mask: Any | Callable[[Params], Any] | None = None,
    *,
    factors_dtype: StateDtype = None,
    variance_dtype: StateDtype = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """Adafactor (Shazeer & Stern 2018) as Optax composes it.

    With :math:`\\hat u_t` the factored-RMS scaled gradient (:func:`~jaxopt_zoo.scale_by_factored_rms`):

    .. math::

        u_t &= \\alpha_t \\, \\max\\big(10^{-3}, \\operatorname{RMS}(\\theta_t)\\big) \\,
               \\hat u_t / \\max\\big(1, \\operatorname{RMS}(\\hat u_t) / d\\big), \\qquad
        m_t = \\beta m_{t-1} + (1 - \\beta) u_t \\ (\\text{if momentum}), \\\\
        \\theta_{t+1} &= \\theta_t - (m_t \\text{ or } u_t) - \\lambda_t \\theta_t,

    :math:`d` the ``clipping_threshold``, :math:`\\beta` the ``momentum``, :math:`\\lambda` the
    ``weight_decay_rate``. Recipe: ``chain(scale_by_factored_rms(factored, decay_rate, decay_offset,
    min_dim_size_to_factor, eps), clip_by_block_rms(clipping_threshold), scale_by_learning_rate(learning_rate,
    flip_sign=False), scale_by_param_block_rms(), ema(momentum, debias=False, accumulator_dtype=dtype_momentum),
    add_decayed_weights(weight_decay_rate, weight_decay_mask), scale(-1))``, each step present only when its
    option is set (``None`` / ``False`` leaves it out), so the state is Optax's. As in Optax, the weight
    decay comes after the learning rate (it is not multiplied by it), and ``learning_rate=None`` leaves
    the step out (a rate of 1: the paper's relative step size :math:`\\min(10^{-2}, 1/\\sqrt t)` is not
    applied; pass ``jz.relative_step_size()`` for it).

    Numerically identical to ``optax.adafactor`` in float32, and on complex64 params (squared as
    :math:`|g|^2`, as Optax does) except with a momentum: its default ``dtype_momentum=jnp.float32``
    keeps a complex param's momentum complex64 here, where Optax casts it to float32 and drops its
    imaginary part (``dtype_momentum=None`` gives Optax's numbers). Deviations from Optax: arguments are
    validated (``clipping_threshold`` > 0, ``momentum`` in [0, 1), ...); ``dtype_momentum`` also takes
    :class:`~jaxopt_zoo.storage.StochasticBF16` and :class:`~jaxopt_zoo.quantization.Blockwise8Bit`;
    ``factors_dtype``, ``variance_dtype`` and ``axis_name`` (for the RMS and the factored means inside
    ``shard_map``) are additions; see :func:`~jaxopt_zoo.scale_by_factored_rms` for its own.

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, a schedule of the step count, or ``None`` (no scaling).
        min_dim_size_to_factor: factor only params whose two largest dims have at least this many entries.
        decay_rate: :math:`c \\in (0, 1]`: the second moment decays by :math:`1 - (t + 1)^{-c}`.
        decay_offset: the step the decay schedule restarts from (e.g. fine-tuning's first); until the count
            reaches it each step takes the schedule's first decay, 0 (Optax's steps are NaN there).
        multiply_by_parameter_scale: scale the step by each param's RMS (at least :math:`10^{-3}`).
        clipping_threshold: :math:`d > 0` (1 in the paper), or ``None`` for no clipping.
        momentum: :math:`\\beta \\in [0, 1)`, or ``None`` for no momentum (and no momentum state).
        dtype_momentum: storage of the momentum: a storage (see :mod:`jaxopt_zoo.storage`); float32 by default.
        weight_decay_rate: :math:`\\lambda \\ge 0`, a schedule, or ``None`` for no decay.
        eps: :math:`\\varepsilon_1 \\ge 0`, added to the squared gradients.
        factored: whether to factor the second moment of params of two or more dims.
        weight_decay_mask: a tree of booleans shaped like (a prefix of) the params, or a function of the
            params returning one: ``True`` where the weight decay applies.
        factors_dtype: storage of the row and column second moments.
        variance_dtype: storage of the full second moment of the params that are not factored.
        axis_name: inside ``shard_map``, the mesh axes the params and gradients may be sharded over.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.adafactor(1e-2, momentum=0.9, dtype_momentum=jz.StochasticBF16())

    References:
        Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", ICML 2018.
    """
    owner = "adafactor"
    validation.learning_rate(owner, learning_rate)
    static_size(owner, "min_dim_size_to_factor", min_dim_size_to_factor)
    rate = validation.real_scalar(owner, "decay_rate", decay_rate)
    if rate is not None and not 0.0 < rate <= 1.0:
        raise ValueError(f"{owner}: decay_rate must be in (0, 1], got {decay_rate!r}.")
    validation.non_negative(owner, "decay_offset", decay_offset)
    validation.flag(owner, "multiply_by_parameter_scale", multiply_by_parameter_scale)
    if clipping_threshold is not None:
        validation.positive(owner, "clipping_threshold", clipping_threshold)
    if momentum is not None:
        validation.decay_rate(owner, "momentum", momentum)
    validation.state_dtypes(owner, dtype_momentum=dtype_momentum, factors_dtype=factors_dtype, variance_dtype=variance_dtype)
    if weight_decay_rate is not None:
        validation.scalar_or_schedule(owner, "weight_decay_rate", weight_decay_rate)
    validation.epsilon(owner, "eps", eps)
    validation.flag(owner, "factored", factored)
    validation.axis_name(owner, axis_name)

    steps = [
        scale_by_factored_rms(
            factored, decay_rate, decay_offset, min_dim_size_to_factor, eps,
            factors_dtype=factors_dtype, variance_dtype=variance_dtype, axis_name=axis_name,
        )
    ]
    if clipping_threshold is not None:
        steps.append(clip_by_block_rms(clipping_threshold, axis_name=axis_name))
    if learning_rate is not None:
        steps.append(scale_by_learning_rate(learning_rate, flip_sign=False))
    if multiply_by_parameter_scale:
        steps.append(scale_by_param_block_rms(axis_name=axis_name))
    if momentum is not None:
        steps.append(ema(momentum, debias=False, accumulator_dtype=dtype_momentum))
    if weight_decay_rate is not None:
        steps.append(add_decayed_weights(weight_decay_rate, weight_decay_mask))
    steps.append(scale(-1))  # descend
    return chain(*steps)


def sm3(
    learning_rate: jax.typing.ArrayLike | None,
    momentum: jax.typing.ArrayLike = 0.9,
    *,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """SM3 (Anil et al. 2019): Adagrad with one accumulator per slice of each axis, and momentum.

    .. math::

        \\nu_t(i) = g_t(i)^2 + \\min_a \\mu^{(a)}_{t-1}(i_a), \\quad
        \\mu^{(a)}_t(r) = \\max_{i: i_a = r} \\nu_t(i), \\quad
        m_t = \\beta m_{t-1} + (1 - \\beta) \\frac{g_t}{\\sqrt{\\nu_t + 10^{-8}}}, \\quad
        \\theta_{t+1} = \\theta_t - \\alpha m_t

    (:func:`~jaxopt_zoo.scale_by_sm3` has the details, and the rule for scalars and vectors).
    Recipe: ``chain(scale_by_sm3(momentum, mu_dtype=..., nu_dtype=...), scale_by_learning_rate(learning_rate))``.
    Numerically identical to ``optax.sm3`` in float32, where Optax works (it raises on scalar params).
    ``learning_rate`` is a number, as in Optax (no schedules). ``mu_dtype`` (the accumulators),
    ``nu_dtype`` (the momentum) and ``axis_name`` are additions. Complex params raise at ``init``,
    as in Optax (wrap it in :func:`~jaxopt_zoo.split_real_and_imaginary`).

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, or ``None`` (a rate of 1).
        momentum: :math:`\\beta \\in [0, 1)`.
        mu_dtype: storage of the accumulators: a storage (see :mod:`jaxopt_zoo.storage`).
        nu_dtype: storage of the momentum, likewise.
        axis_name: inside ``shard_map``, the mesh axes the gradients may be sharded over.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.sm3(0.1, nu_dtype=jz.Blockwise8Bit())

    References:
        Anil, Gupta, Koren & Singer, "Memory-Efficient Adaptive Optimization", NeurIPS 2019.
    """
    owner = "sm3"
    if learning_rate is None:  # a rate of 1, as for every optimizer whose rate scales its final step
        learning_rate = 1.0
    validation.non_negative(owner, "learning_rate", learning_rate)
    validation.decay_rate(owner, "momentum", momentum)
    validation.state_dtypes(owner, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    validation.axis_name(owner, axis_name)
    return validation.refusing_complex(owner, chain(  # as in Optax
        scale_by_sm3(momentum, mu_dtype=mu_dtype, nu_dtype=nu_dtype, axis_name=axis_name),
        scale_by_learning_rate(learning_rate),  # -rate, also for an unsigned integer
    ), "as in Optax")
