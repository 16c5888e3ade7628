"""Noisy SGD: noisy_sgd, Optax's recipe of :func:`jaxopt_zoo.transforms.noise.add_noise`."""

from __future__ import annotations

import jax

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, ScalarOrSchedule, init_only
from jaxopt_zoo.combine import chain
from jaxopt_zoo.transforms import add_noise, scale_by_learning_rate
from jaxopt_zoo.transforms.noise import _check_seed

__all__ = ["noisy_sgd"]


@init_only("key", "seed")
def noisy_sgd(
    learning_rate: ScalarOrSchedule,
    eta: jax.typing.ArrayLike = 0.01,
    gamma: jax.typing.ArrayLike = 0.55,
    key: jax.Array | int | None = None,
    *,
    seed: int | None = None,
) -> GradientTransformation:
    """SGD on gradients with annealed Gaussian noise (Neelakantan et al. 2015).

    .. math::

        \\theta_{t+1} = \\theta_t - \\alpha_t \\big(g_t + \\sigma_t \\xi_t\\big), \\qquad
        \\xi_t \\sim \\mathcal{N}(0, I), \\qquad \\sigma_t^2 = \\frac{\\eta}{t^{\\gamma}}, \\quad t = 1, 2, \\dots

    Recipe: ``chain(add_noise(eta, gamma, key, seed=seed), scale_by_learning_rate(learning_rate))``.
    Numerically identical to ``optax.noisy_sgd``, draws included, for the same
    ``key``. No key means seed 0, with a warning (as in Optax); ``seed`` is
    Optax's deprecated spelling of an integer ``key``. Differences from Optax: those of
    :func:`jaxopt_zoo.add_noise` (each ``init`` a copy of a typed key, checked arguments, ...).

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, or a schedule of the step count.
        eta: :math:`\\eta \\ge 0`, the variance of the noise at the first step.
        gamma: :math:`\\gamma \\ge 0`, the decay exponent of the variance.
        key: an integer seed or a ``jax.random.key``.
        seed: deprecated: an integer seed; give ``key`` instead.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.noisy_sgd(1e-2, key=0)

    References:
        Neelakantan et al., "Adding Gradient Noise Improves Learning for Very Deep Networks", 2015 (arXiv:1511.06807).
    """
    validation.learning_rate("noisy_sgd", learning_rate)
    validation.non_negative("noisy_sgd", "eta", eta)
    validation.non_negative("noisy_sgd", "gamma", gamma)
    for name, value in (("key", key), ("seed", seed)):  # named here, not as add_noise's
        if value is not None:
            _check_seed("noisy_sgd", name, value)
    return chain(add_noise(eta, gamma, key, seed=seed), scale_by_learning_rate(learning_rate))
