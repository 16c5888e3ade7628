"""Schedule-Free aliases: schedule_free_adamw, schedule_free_sgd, Optax's recipes around
:func:`jaxopt_zoo.transforms.schedule_free.schedule_free`."""

from __future__ import annotations

import jax

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, ScalarOrSchedule
from jaxopt_zoo.combine import chain
from jaxopt_zoo.optimizers.classic import sgd
from jaxopt_zoo.schedules import warmup_constant_schedule
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.transforms import add_decayed_weights, scale_by_learning_rate, scale_by_rms
from jaxopt_zoo.transforms.schedule_free import _b1_in_open_closed_unit, _iterate_storage, schedule_free

__all__ = ["schedule_free_adamw", "schedule_free_sgd"]


def _with_warmup(owner: str, learning_rate: ScalarOrSchedule, warmup_steps: int | None) -> ScalarOrSchedule:
    """The rate, or a linear warmup from 0 to it over ``warmup_steps`` steps (then constant)."""
    validation.scalar_or_schedule(owner, "learning_rate", learning_rate)  # no None: the rate weights the average
    if warmup_steps is None:
        return learning_rate
    warmup_steps = validation.whole_number(owner, "warmup_steps", warmup_steps, 0, validation.INT32_MAX)
    if callable(learning_rate):
        raise ValueError(f"{owner}: with warmup_steps, learning_rate must be a number (the peak), got a schedule.")
    return warmup_constant_schedule(0.0, learning_rate, warmup_steps)


def _check_common(owner: str, b1, weight_lr_power, state_dtype) -> None:
    _b1_in_open_closed_unit(owner, b1)
    validation.non_negative(owner, "weight_lr_power", weight_lr_power)
    _iterate_storage(owner, state_dtype)


def schedule_free_sgd(
    learning_rate: ScalarOrSchedule = 1.0,
    warmup_steps: int | None = None,
    b1: jax.typing.ArrayLike = 0.9,
    weight_decay: ScalarOrSchedule | None = None,
    weight_lr_power: jax.typing.ArrayLike = 2.0,
    state_dtype: StateDtype = None,
) -> GradientTransformation:
    """Schedule-Free SGD (Defazio et al. 2024): :func:`~jaxopt_zoo.schedule_free` around plain SGD.

    .. math::

        z_{t+1} = z_t - \\gamma_t (\\nabla f(y_t) + \\lambda y_t), \\qquad
        x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}, \\qquad
        y_{t+1} = \\beta_1 x_{t+1} + (1 - \\beta_1) z_{t+1},

    with :math:`c_{t+1} = w_t / \\sum_{i \\le t} w_i`, :math:`w_t = (\\max_{i \\le t}\\gamma_i)^p`.
    Recipe: ``schedule_free(chain(add_decayed_weights(weight_decay), sgd(lr)), lr, b1,
    weight_lr_power, state_dtype)``, where ``lr`` is ``learning_rate`` or, with
    ``warmup_steps``, ``warmup_constant_schedule(0, learning_rate, warmup_steps)``; the decay
    is multiplied by the learning rate (as in PyTorch) and applied at :math:`y`. Evaluate at
    :func:`~jaxopt_zoo.schedule_free_eval_params`.

    Numerically identical to ``optax.contrib.schedule_free_sgd`` in float32. Differences
    from ``optax.contrib.schedule_free_sgd``: those of :func:`~jaxopt_zoo.schedule_free`;
    ``warmup_steps=0`` means no warmup (Optax's warmup schedule then stays at 0 for good, so
    nothing ever moves); with ``warmup_steps`` a schedule for ``learning_rate`` raises.

    Args:
        learning_rate: :math:`\\gamma \\ge 0`, or a schedule of the step count (without ``warmup_steps``).
        warmup_steps: an integer >= 0, the length of a linear warmup from 0, or ``None``.
        b1: :math:`\\beta_1 \\in (0, 1]`, the weight of :math:`x` in :math:`y`.
        weight_decay: :math:`\\lambda \\ge 0` (or a schedule), or ``None`` for none.
        weight_lr_power: :math:`p \\ge 0`, the power of the largest rate so far in the averaging weights.
        state_dtype: how :math:`z` is kept: ``None`` (the params' dtype), a floating dtype, or
            :class:`~jaxopt_zoo.storage.StochasticBF16`.

    Example:
        >>> import jax, jax.numpy as jnp, jaxopt_zoo as jz
        >>> f = lambda x: jnp.sum(x**2)
        >>> tx, params = jz.schedule_free_sgd(0.2, b1=0.5), jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(params)
        >>> for _ in range(20):
        ...     updates, state = tx.update(jax.grad(f)(params), state, params)
        ...     params = jz.apply_updates(params, updates)
        >>> bool(f(jz.schedule_free_eval_params(state, params)) < 1e-2)
        True

    References:
        Defazio et al., "The Road Less Scheduled", NeurIPS 2024.
    """
    owner = "schedule_free_sgd"
    rate = _with_warmup(owner, learning_rate, warmup_steps)
    if weight_decay is not None:
        validation.scalar_or_schedule(owner, "weight_decay", weight_decay)
    _check_common(owner, b1, weight_lr_power, state_dtype)
    optimizer = sgd(rate)
    if weight_decay is not None:
        optimizer = chain(add_decayed_weights(weight_decay), optimizer)
    return schedule_free(optimizer, rate, b1, weight_lr_power, state_dtype)


def schedule_free_adamw(
    learning_rate: ScalarOrSchedule = 0.0025,
    warmup_steps: int | None = None,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_lr_power: jax.typing.ArrayLike = 2.0,
    state_dtype: StateDtype = None,
    *,
    nu_dtype: StateDtype = None,
) -> GradientTransformation:
    """Schedule-Free AdamW (Defazio et al. 2024): :func:`~jaxopt_zoo.schedule_free` around Adam without momentum.

    .. math::

        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2, \\qquad
        z_{t+1} = z_t - \\gamma_t \\Big(\\frac{g_t}{\\sqrt{v_t / (1 - \\beta_2^t)} + \\epsilon} + \\lambda y_t\\Big),

    then :math:`x` and :math:`y` as in :func:`schedule_free_sgd`, with :math:`g_t = \\nabla f(y_t)`.
    Recipe: ``schedule_free(chain(scale_by_rms(b2, eps, eps_in_sqrt=False, bias_correction=True,
    nu_dtype=nu_dtype), add_decayed_weights(weight_decay), scale_by_learning_rate(lr)), lr, b1,
    weight_lr_power, state_dtype)`` (``scale_by_rms`` so configured is ``scale_by_adam`` with
    ``b1=0``, without its always-zero first moment). ``lr`` is ``learning_rate`` or, with
    ``warmup_steps``, a linear warmup from 0 to it. Evaluate at :func:`~jaxopt_zoo.schedule_free_eval_params`.

    Numerically identical to ``optax.contrib.schedule_free_adamw`` in float32, with the same
    state leaves. Differences from ``optax.contrib.schedule_free_adamw``: those of
    :func:`~jaxopt_zoo.schedule_free` and :func:`schedule_free_sgd` (``warmup_steps=0``);
    ``nu_dtype`` (an addition, last and keyword-only) stores the second moment: a dtype,
    :class:`~jaxopt_zoo.storage.StochasticBF16` or :class:`~jaxopt_zoo.quantization.Blockwise8Bit`.

    Args:
        learning_rate: :math:`\\gamma \\ge 0`, or a schedule of the step count (without ``warmup_steps``).
        warmup_steps: an integer >= 0, the length of a linear warmup from 0, or ``None``.
        b1: :math:`\\beta_1 \\in (0, 1]`, the weight of :math:`x` in :math:`y`.
        b2: :math:`\\beta_2 \\in [0, 1)`, the decay of the second moment.
        eps: :math:`\\epsilon \\ge 0`, added to the root of the second moment.
        weight_decay: :math:`\\lambda \\ge 0`, or a schedule of the step count.
        weight_lr_power: :math:`p \\ge 0`, the power of the largest rate so far in the averaging weights.
        state_dtype: how :math:`z` is kept: ``None`` (the params' dtype), a floating dtype, or
            :class:`~jaxopt_zoo.storage.StochasticBF16`.
        nu_dtype: storage of the second moment (see :mod:`jaxopt_zoo.storage`).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.schedule_free_adamw(1e-3, warmup_steps=100, weight_decay=1e-4, nu_dtype=jz.Blockwise8Bit())

    References:
        Defazio et al., "The Road Less Scheduled", NeurIPS 2024 (Algorithm 1, AdamW).
    """
    owner = "schedule_free_adamw"
    rate = _with_warmup(owner, learning_rate, warmup_steps)
    validation.decay_rate(owner, "b2", b2)
    validation.epsilon(owner, "eps", eps)
    validation.scalar_or_schedule(owner, "weight_decay", weight_decay)
    _check_common(owner, b1, weight_lr_power, state_dtype)
    validation.state_dtypes(owner, nu_dtype=nu_dtype)
    optimizer = chain(
        scale_by_rms(decay=b2, eps=eps, eps_in_sqrt=False, bias_correction=True, nu_dtype=nu_dtype),
        add_decayed_weights(weight_decay),
        scale_by_learning_rate(rate),
    )
    return schedule_free(optimizer, rate, b1, weight_lr_power, state_dtype)
