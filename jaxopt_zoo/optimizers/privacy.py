"""Differentially private SGD alias: dpsgd."""

from __future__ import annotations

import jax

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, ScalarOrSchedule, identity, init_only
from jaxopt_zoo.combine import chain
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.transforms import scale_by_learning_rate, trace
from jaxopt_zoo.transforms.clipping import _clip_norm
from jaxopt_zoo.transforms.noise import _check_seed
from jaxopt_zoo.transforms.privacy import differentially_private_aggregate

__all__ = ["dpsgd"]


@init_only("seed")
def dpsgd(
    learning_rate: ScalarOrSchedule,
    l2_norm_clip: jax.typing.ArrayLike,
    noise_multiplier: jax.typing.ArrayLike,
    seed: int,
    momentum: jax.typing.ArrayLike | None = None,
    nesterov: bool = False,
    *,
    accumulator_dtype: StateDtype = None,
) -> GradientTransformation:
    """DP-SGD (Abadi et al. 2016): SGD, with or without momentum, on privately aggregated per-example gradients.

    .. math::

        \\tilde g = \\frac{1}{B} \\Big( \\sum_b g_b \\min\\!\\Big(1, \\frac{C}{\\|g_b\\|}\\Big) + \\sigma C \\xi \\Big),
        \\qquad \\theta_{t+1} = \\theta_t - \\alpha_t\\, m_t, \\quad m_t = \\mu m_{t-1} + \\tilde g

    (:math:`m_t = \\tilde g` without momentum; Nesterov's form with ``nesterov``).
    The updates are per-example gradients, examples on axis 0 of every leaf.

    Recipe: ``chain(differentially_private_aggregate(l2_norm_clip, noise_multiplier, key=seed),
    trace(momentum, nesterov, accumulator_dtype=accumulator_dtype) or identity(),
    scale_by_learning_rate(learning_rate))``. Numerically ``optax.contrib.dpsgd``,
    noise draws included, for the same ``seed``. Differences: ``accumulator_dtype``
    (an addition at the end, keyword only: the momentum's storage, see
    :mod:`jaxopt_zoo.storage`); Optax's deprecation warning about ``seed`` is not
    raised; bad arguments raise when the optimizer is built, ``nesterov=True``
    without a ``momentum`` too (Optax ignores it), as in :func:`jaxopt_zoo.sgd`; each ``init`` gets its
    own key (Optax's hands every ``init`` the same one, which a donated step deletes: see
    :func:`jaxopt_zoo.differentially_private_aggregate`).

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, or a schedule of the step count.
        l2_norm_clip: :math:`C \\ge 0`, finite, the largest norm of an example's gradient.
        noise_multiplier: :math:`\\sigma \\ge 0`, the noise's standard deviation relative to :math:`C`.
        seed: the integer seed (or ``jax.random.key``) of the noise.
        momentum: :math:`\\mu \\in [0, 1)`, or ``None`` for no momentum (and no momentum state).
        nesterov: whether to use Nesterov's momentum.
        accumulator_dtype: storage of the momentum: a storage (see :mod:`jaxopt_zoo.storage`).

    Example:
        >>> import jax, jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.dpsgd(0.1, l2_norm_clip=1.0, noise_multiplier=1.1, seed=0, momentum=0.9)
        >>> params = {"w": jnp.zeros(3)}
        >>> per_example = {"w": jnp.ones((8, 3))}  # 8 examples' gradients
        >>> updates, state = tx.update(per_example, tx.init(params), params)
        >>> updates["w"].shape
        (3,)

    References:
        Abadi et al., "Deep Learning with Differential Privacy", CCS 2016.
    """
    owner = "dpsgd"
    validation.learning_rate(owner, learning_rate)
    if momentum is not None:
        validation.decay_rate(owner, "momentum", momentum)
    validation.nesterov_needs_momentum(owner, momentum, nesterov)
    validation.state_dtypes(owner, accumulator_dtype=accumulator_dtype)
    _clip_norm(owner, "l2_norm_clip", l2_norm_clip, finite=True)  # the noise is C * sigma
    validation.non_negative(owner, "noise_multiplier", noise_multiplier)
    _check_seed(owner, "seed", seed)
    momentum_step = identity() if momentum is None else trace(momentum, nesterov, accumulator_dtype=accumulator_dtype)
    return chain(
        differentially_private_aggregate(l2_norm_clip, noise_multiplier, key=seed),
        momentum_step,
        scale_by_learning_rate(learning_rate),
    )

