"""Sign methods: signSGD, Signum and Lion, Optax's recipes of the transforms in :mod:`jaxopt_zoo.transforms.sign`."""

from __future__ import annotations

from typing import Any, Callable

import jax

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, Params, ScalarOrSchedule
from jaxopt_zoo.combine import chain
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.transforms import add_decayed_weights, ema, scale_by_learning_rate, scale_by_lion, scale_by_sign

__all__ = ["lion", "sign_sgd", "signum"]


def sign_sgd(learning_rate: ScalarOrSchedule) -> GradientTransformation:
    """signSGD (Bernstein et al. 2018): :math:`\\theta_{t+1} = \\theta_t - \\alpha_t \\operatorname{sign}(g_t)`.

    Recipe: ``chain(scale_by_sign(), scale_by_learning_rate(learning_rate))``.
    Numerically identical to ``optax.sign_sgd``.

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, or a schedule of the step count.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.sign_sgd(1e-3)

    References:
        Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex Problems", ICML 2018.
    """
    validation.learning_rate("sign_sgd", learning_rate)
    return chain(scale_by_sign(), scale_by_learning_rate(learning_rate))


def signum(
    learning_rate: ScalarOrSchedule,
    beta: jax.typing.ArrayLike = 0.9,
    accumulator_dtype: StateDtype = None,
) -> GradientTransformation:
    """Signum (Bernstein et al. 2018): signSGD on a moving average of the gradients.

    .. math::

        m_t = \\beta m_{t-1} + (1 - \\beta) g_t, \\quad m_0 = 0, \\qquad
        \\theta_{t+1} = \\theta_t - \\alpha_t \\operatorname{sign}(m_t).

    Recipe: ``chain(ema(beta, debias=False, accumulator_dtype=accumulator_dtype),
    scale_by_sign(), scale_by_learning_rate(learning_rate))`` (no bias correction
    is needed before a sign). Numerically identical to ``optax.signum``, with the
    same state leaves. ``accumulator_dtype`` may also be a
    :class:`~jaxopt_zoo.storage.StochasticBF16` or
    :class:`~jaxopt_zoo.quantization.Blockwise8Bit`.

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, or a schedule of the step count.
        beta: :math:`\\beta \\in [0, 1)`, the decay of the moving average.
        accumulator_dtype: storage of the moving average: a storage (see :mod:`jaxopt_zoo.storage`).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.signum(1e-3, beta=0.95, accumulator_dtype=jz.Blockwise8Bit())

    References:
        Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex Problems", ICML 2018.
    """
    validation.learning_rate("signum", learning_rate)
    validation.decay_rate("signum", "beta", beta)
    validation.state_dtypes("signum", accumulator_dtype=accumulator_dtype)
    return chain(
        ema(beta, debias=False, accumulator_dtype=accumulator_dtype), scale_by_sign(), scale_by_learning_rate(learning_rate)
    )


def lion(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    mu_dtype: StateDtype = None,
    weight_decay: ScalarOrSchedule = 1e-3,
    mask: Any | Callable[[Params], Any] | None = None,
) -> GradientTransformation:
    """Lion (Chen et al. 2023) with decoupled weight decay.

    .. math::

        c_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\qquad
        \\theta_{t+1} = \\theta_t - \\alpha_t \\big(\\operatorname{sign}(c_t) + \\lambda_t \\theta_t\\big), \\qquad
        m_t = \\beta_2 m_{t-1} + (1 - \\beta_2) g_t.

    Recipe: ``chain(scale_by_lion(b1, b2, mu_dtype), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``, so the decay is multiplied by the
    learning rate (as in Optax and PyTorch; the paper's Algorithm 2 too). Numerically
    identical to ``optax.lion``. Its update has unit entries, so it wants a learning rate
    3-10x smaller than AdamW's and a weight decay 3-10x larger. ``mu_dtype`` may also be
    a :class:`~jaxopt_zoo.storage.StochasticBF16` or :class:`~jaxopt_zoo.quantization.Blockwise8Bit`.

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, or a schedule of the step count.
        b1: :math:`\\beta_1 \\in [0, 1]`, the weight of the momentum in the update's interpolation.
        b2: :math:`\\beta_2 \\in [0, 1)`, the decay of the momentum.
        mu_dtype: storage of the momentum: a storage (see :mod:`jaxopt_zoo.storage`).
        weight_decay: :math:`\\lambda \\ge 0`, or a schedule of the step count.
        mask: a tree of booleans shaped like (a prefix of) the params, or a function of the
            params returning one: ``True`` where the weight decay applies.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.lion(1e-4, weight_decay=1e-2, mu_dtype=jz.StochasticBF16())

    References:
        Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023.
    """
    validation.learning_rate("lion", learning_rate)
    validation.fraction("lion", "b1", b1)
    validation.decay_rate("lion", "b2", b2)
    validation.state_dtypes("lion", mu_dtype=mu_dtype)
    validation.scalar_or_schedule("lion", "weight_decay", weight_decay)
    return chain(
        scale_by_lion(b1=b1, b2=b2, mu_dtype=mu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
