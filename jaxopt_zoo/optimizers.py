"""Optax-compatible optimizers, each a ``chain(...)`` recipe of shared transforms.

Names, argument names, defaults and numerics are Optax's, so replacing
``optax.X(...)`` with ``jaxopt_zoo.X(...)`` gives the same trajectory.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, Params, ScalarOrSchedule, identity
from jaxopt_zoo.combine import chain
from jaxopt_zoo.transforms import add_decayed_weights, scale_by_adam, scale_by_learning_rate, trace


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: jax.typing.ArrayLike | None = None,
    nesterov: bool = False,
    accumulator_dtype: jax.typing.DTypeLike | None = None,
) -> GradientTransformation:
    """Stochastic gradient descent, optionally with (Nesterov) momentum.

    .. math::

        b_t = g_t + \\mu b_{t-1}, \\qquad
        \\theta_{t+1} = \\theta_t - \\alpha_t \\cdot
        \\begin{cases} g_t + \\mu b_t & \\text{nesterov} \\\\ b_t & \\text{momentum} \\\\ g_t & \\text{no momentum.} \\end{cases}

    Recipe: ``chain(trace(momentum, nesterov), scale_by_learning_rate(learning_rate))``.
    Deviation from Optax: ``nesterov=True`` without a ``momentum`` raises
    (Optax ignores it silently).

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, or a schedule of the step count.
        momentum: :math:`\\mu \\ge 0`; ``None`` for plain SGD.
        nesterov: use Nesterov momentum.
        accumulator_dtype: storage dtype of the momentum buffer.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.sgd(0.1, momentum=0.9, nesterov=True)

    References:
        Sutskever et al., "On the importance of initialization and momentum in deep learning", ICML 2013.
    """
    validation.flag("sgd", "nesterov", nesterov)
    if momentum is None:
        if nesterov:
            raise ValueError("sgd: nesterov=True needs a momentum, got momentum=None.")
        return chain(identity(), scale_by_learning_rate(learning_rate))
    return chain(
        trace(momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype),
        scale_by_learning_rate(learning_rate),
    )


def adam(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    """Adam (Kingma & Ba 2015): :math:`\\theta_{t+1} = \\theta_t - \\alpha_t \\hat m_t / (\\sqrt{\\hat v_t + \\bar\\varepsilon} + \\varepsilon)`.

    The moments and their bias correction are those of :func:`jaxopt_zoo.scale_by_adam`.
    Recipe: ``chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
    scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.adam(1e-3)

    References:
        Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    """
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        scale_by_learning_rate(learning_rate),
    )


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any | Callable[[Params], Any] | None = None,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019).

    .. math::

        \\theta_{t+1} = \\theta_t - \\alpha_t \\big(\\hat m_t / (\\sqrt{\\hat v_t + \\bar\\varepsilon} + \\varepsilon)
        + \\lambda \\theta_t\\big)

    The decay is multiplied by the learning rate, as in Optax (PyTorch's
    ``AdamW`` does the same: :math:`\\theta \\leftarrow \\theta - \\alpha\\lambda\\theta`).
    Recipe: ``chain(scale_by_adam(...), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``.

    Args:
        mask: where to apply the decay; see :func:`jaxopt_zoo.add_decayed_weights`.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.adamw(1e-3, weight_decay=1e-2)

    References:
        Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
