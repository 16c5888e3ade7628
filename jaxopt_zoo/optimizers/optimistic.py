"""Optimistic methods: optimistic_gradient_descent, optimistic_adam, optimistic_adam_v2.

Optax's recipes of :func:`jaxopt_zoo.transforms.optimistic.scale_by_optimistic_gradient`,
alone or after Adam's scaling.
"""

from __future__ import annotations

import warnings

import jax

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, ScalarOrSchedule
from jaxopt_zoo.combine import chain
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.transforms import scale_by_adam, scale_by_learning_rate, scale_by_optimistic_gradient

__all__ = ["optimistic_adam", "optimistic_adam_v2", "optimistic_gradient_descent"]


def optimistic_gradient_descent(
    learning_rate: ScalarOrSchedule,
    alpha: jax.typing.ArrayLike = 1.0,
    beta: jax.typing.ArrayLike = 1.0,
    *,
    previous_gradient_dtype: StateDtype = None,
) -> GradientTransformation:
    """Optimistic gradient descent (Mokhtari et al. 2019), generalized by :math:`\\alpha, \\beta`.

    .. math::

        u_t = (\\alpha + \\beta) g_t - \\beta g_{t-1} \\quad (g_0 := g_1), \\qquad
        \\theta_{t+1} = \\theta_t - \\eta_t u_t.

    Recipe: ``chain(scale_by_optimistic_gradient(alpha, beta), scale_by_learning_rate(learning_rate))``.
    Numerically identical to ``optax.optimistic_gradient_descent``. Deviations:
    ``alpha`` and ``beta`` must be numbers (Optax's signature says schedules, which
    its transformation cannot use); ``previous_gradient_dtype`` is an addition.

    Args:
        learning_rate: :math:`\\eta \\ge 0`, or a schedule of the step count.
        alpha: :math:`\\alpha`, the weight of the current gradient.
        beta: :math:`\\beta`, the weight of the optimistic correction :math:`g_t - g_{t-1}`.
        previous_gradient_dtype: storage of :math:`g_{t-1}` (see :mod:`jaxopt_zoo.storage`).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.optimistic_gradient_descent(1e-2)

    References:
        Mokhtari et al., "A Unified Analysis of Extra-gradient and Optimistic Gradient Methods
        for Saddle Point Problems: Proximal Point Approach", AISTATS 2020 (arXiv:1901.08511).
    """
    owner = "optimistic_gradient_descent"
    validation.learning_rate(owner, learning_rate)
    validation.real_scalar(owner, "alpha", alpha)
    validation.real_scalar(owner, "beta", beta)
    validation.state_dtypes(owner, previous_gradient_dtype=previous_gradient_dtype)
    return chain(
        scale_by_optimistic_gradient(alpha, beta, previous_gradient_dtype=previous_gradient_dtype),
        scale_by_learning_rate(learning_rate),
    )


def optimistic_adam(
    learning_rate: jax.typing.ArrayLike,
    optimism: jax.typing.ArrayLike | None = None,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-08,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: StateDtype = None,
    *,
    nesterov: bool = True,
    nu_dtype: StateDtype = None,
    previous_gradient_dtype: StateDtype = None,
) -> GradientTransformation:
    """Optimistic Adam (Daskalakis et al. 2018), Optax's first interface (deprecated there: use
    :func:`optimistic_adam_v2`).

    With :math:`r_t` Adam's bias-corrected ratio (Nesterov's form by default),

    .. math::

        r_t = \\frac{\\hat m_t}{\\sqrt{\\hat v_t + \\bar\\varepsilon} + \\varepsilon}, \\qquad
        \\theta_{t+1} = \\theta_t - \\alpha r_t - o (r_t - r_{t-1}) \\quad (r_0 := r_1),

    with :math:`o` the ``optimism`` (``None``: the learning rate, as in the paper).
    Recipe: ``chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
    scale_by_optimistic_gradient(alpha=learning_rate, beta=optimism), scale_by_learning_rate(1.0))``.
    Numerically identical to ``optax.optimistic_adam``; it warns that it is
    deprecated, and refuses a schedule as ``learning_rate``, as Optax does.
    ``nu_dtype`` and ``previous_gradient_dtype`` are additions.

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, a number (for a schedule use :func:`optimistic_adam_v2`).
        optimism: :math:`o`, or ``None`` for the learning rate.
        b1: decay :math:`\\beta_1 \\in [0, 1)` of the first moment.
        b2: decay :math:`\\beta_2 \\in [0, 1)` of the second moment.
        eps: :math:`\\varepsilon \\ge 0`, added to the denominator.
        eps_root: :math:`\\bar\\varepsilon \\ge 0`, added inside the square root.
        mu_dtype: storage of the first moment (see :mod:`jaxopt_zoo.storage`).
        nesterov: whether :math:`\\hat m_t` takes Nesterov's form.
        nu_dtype: storage of the second moment.
        previous_gradient_dtype: storage of :math:`r_{t-1}`.

    Example:
        >>> import warnings, jaxopt_zoo as jz
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     tx = jz.optimistic_adam(1e-2, 1.0)

    References:
        Daskalakis et al., "Training GANs with Optimism", ICLR 2018 (arXiv:1711.00141).
    """
    owner = "optimistic_adam"
    warnings.warn(f"{owner} is deprecated (as in Optax); use optimistic_adam_v2.", DeprecationWarning, stacklevel=2)
    if callable(learning_rate):
        raise ValueError(
            f"{owner}: learning_rate must be a number, got a schedule; optimistic_adam_v2 takes schedules."
        )
    validation.non_negative(owner, "learning_rate", learning_rate)
    if optimism is not None:
        validation.real_scalar(owner, "optimism", optimism)
    validation.adam_options(owner, b1, b2, eps, eps_root, nesterov)
    validation.state_dtypes(
        owner, mu_dtype=mu_dtype, nu_dtype=nu_dtype, previous_gradient_dtype=previous_gradient_dtype
    )
    if optimism is None:
        optimism = learning_rate
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype),
        scale_by_optimistic_gradient(
            alpha=learning_rate, beta=optimism, previous_gradient_dtype=previous_gradient_dtype
        ),
        scale_by_learning_rate(1.0),  # descent: the sign flip
    )


def optimistic_adam_v2(
    learning_rate: ScalarOrSchedule,
    *,
    alpha: jax.typing.ArrayLike = 1.0,
    beta: jax.typing.ArrayLike = 1.0,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-08,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: StateDtype = None,
    nesterov: bool = True,
    nu_dtype: StateDtype = None,
    previous_gradient_dtype: StateDtype = None,
) -> GradientTransformation:
    """Optimistic Adam (Daskalakis et al. 2018) with a learning rate that may be a schedule.

    With :math:`r_t` Adam's bias-corrected ratio (Nesterov's form by default),

    .. math::

        r_t = \\frac{\\hat m_t}{\\sqrt{\\hat v_t + \\bar\\varepsilon} + \\varepsilon}, \\qquad
        \\theta_{t+1} = \\theta_t - \\eta_t \\big((\\alpha + \\beta) r_t - \\beta r_{t-1}\\big) \\quad (r_0 := r_1).

    Recipe: ``chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
    scale_by_optimistic_gradient(alpha, beta), scale_by_learning_rate(learning_rate))``.
    Numerically identical to ``optax.optimistic_adam_v2``; ``nu_dtype`` and
    ``previous_gradient_dtype`` are additions.

    Args:
        learning_rate: :math:`\\eta \\ge 0`, or a schedule of the step count.
        alpha: :math:`\\alpha`, the weight of the current ratio.
        beta: :math:`\\beta`, the weight of the optimistic correction :math:`r_t - r_{t-1}`.
        b1: decay :math:`\\beta_1 \\in [0, 1)` of the first moment.
        b2: decay :math:`\\beta_2 \\in [0, 1)` of the second moment.
        eps: :math:`\\varepsilon \\ge 0`, added to the denominator.
        eps_root: :math:`\\bar\\varepsilon \\ge 0`, added inside the square root.
        mu_dtype: storage of the first moment (see :mod:`jaxopt_zoo.storage`).
        nesterov: whether :math:`\\hat m_t` takes Nesterov's form.
        nu_dtype: storage of the second moment.
        previous_gradient_dtype: storage of :math:`r_{t-1}`.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.optimistic_adam_v2(1.0, alpha=1e-2, beta=1.0, mu_dtype=jz.StochasticBF16())

    References:
        Daskalakis et al., "Training GANs with Optimism", ICLR 2018 (arXiv:1711.00141).
    """
    owner = "optimistic_adam_v2"
    validation.learning_rate(owner, learning_rate)
    validation.real_scalar(owner, "alpha", alpha)
    validation.real_scalar(owner, "beta", beta)
    validation.adam_options(owner, b1, b2, eps, eps_root, nesterov)
    validation.state_dtypes(
        owner, mu_dtype=mu_dtype, nu_dtype=nu_dtype, previous_gradient_dtype=previous_gradient_dtype
    )
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype),
        scale_by_optimistic_gradient(alpha, beta, previous_gradient_dtype=previous_gradient_dtype),
        scale_by_learning_rate(learning_rate),
    )
