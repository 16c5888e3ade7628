"""Parameter-free aliases: dog, dowg, cocob, Optax's recipes of :mod:`jaxopt_zoo.transforms.parameter_free`."""

from __future__ import annotations

from typing import Any, Callable

import jax

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, Params, ScalarOrSchedule, identity, init_only
from jaxopt_zoo.combine import chain
from jaxopt_zoo.sharding import AxisName
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.transforms import add_decayed_weights, scale_by_learning_rate
from jaxopt_zoo.transforms.parameter_free import (
    _anchor_dtype,
    _check_init_step,
    _distance_anchor_storage,
    scale_by_cocob,
    scale_by_dog,
    scale_by_dowg,
)

__all__ = ["cocob", "dog", "dowg"]


def dog(
    learning_rate: ScalarOrSchedule = 1.0,
    init_step: tuple[str, jax.typing.ArrayLike] = ("heuristic", 1e-6),
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike | None = None,
    mask: Any | Callable[[Params], Any] | None = None,
    *,
    param_dtype: StateDtype = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """DoG (Ivgi et al. 2023): SGD stepping the distance travelled over the root of the summed squared gradient norms.

    .. math::

        \\bar r_t = \\max(\\bar r_{t-1}, \\|x_t - x_0\\|), \\qquad
        G_t = G_{t-1} + \\|g_t\\|^2, \\qquad
        x_{t+1} = x_t - \\alpha_t \\frac{\\bar r_t}{\\sqrt{G_t + \\epsilon}} (g_t + \\lambda x_t),

    with norms over the whole tree and :math:`\\bar r_0` from ``init_step`` (see
    :func:`jaxopt_zoo.scale_by_dog`; the default ``("heuristic", 1e-6)`` is
    :math:`10^{-6}(1 + \\|x_0\\|)`, so ``init`` must see the real params).

    Recipe: ``chain(add_decayed_weights(weight_decay, mask) if weight_decay is not None else
    identity(), scale_by_dog(init_step, eps), scale_by_learning_rate(learning_rate))``, so the
    decay enters the gradient norms (as in Optax). Numerically identical to
    ``optax.contrib.dog``. Differences from ``optax.contrib.dog``: bad arguments raise when
    built; ``None`` updates pass through; ``param_dtype`` (storage of the initial params, not
    8-bit) and ``axis_name`` are additions. The authors recommend averaging the iterates.

    Args:
        learning_rate: :math:`\\alpha \\ge 0` (1 for plain DoG), or a schedule of the step count.
        init_step: ``(kind, value)``: ``"distance"``, ``"learning_rate"`` or ``"heuristic"``, value > 0.
        eps: :math:`\\epsilon \\ge 0`, added under the square root.
        weight_decay: :math:`\\lambda \\ge 0`, or ``None`` for none.
        mask: a tree of booleans shaped like (a prefix of) the params, or a function of the
            params returning one: ``True`` where the weight decay applies.
        param_dtype: storage of the initial params: ``None`` (the params' dtype), a floating dtype or
            :class:`~jaxopt_zoo.storage.StochasticBF16`, not 8-bit (a lossy one adds its rounding to the
            distance, see :mod:`jaxopt_zoo.transforms.parameter_free`).
        axis_name: inside ``shard_map``, the mesh axes the params may be sharded over.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.dog(init_step=("heuristic", 1e-4), weight_decay=1e-4)

    References:
        Ivgi, Hinder and Carmon, "DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
        Schedule", ICML 2023 (arXiv:2302.12022).
    """
    owner = "dog"
    validation.learning_rate(owner, learning_rate)
    _check_init_step(owner, init_step)
    validation.epsilon(owner, "eps", eps)
    if weight_decay is not None:
        validation.scalar_or_schedule(owner, "weight_decay", weight_decay)
    _distance_anchor_storage(owner, param_dtype, "init_step")
    validation.axis_name(owner, axis_name)
    return chain(
        identity() if weight_decay is None else add_decayed_weights(weight_decay, mask),
        scale_by_dog(init_step, eps, param_dtype=param_dtype, axis_name=axis_name),
        scale_by_learning_rate(learning_rate),
    )


@init_only("init_estim_sq_dist")
def dowg(
    learning_rate: ScalarOrSchedule = 1.0,
    init_estim_sq_dist: jax.typing.ArrayLike | None = None,
    eps: jax.typing.ArrayLike = 1e-4,
    weight_decay: jax.typing.ArrayLike | None = None,
    mask: Any | Callable[[Params], Any] | None = None,
    *,
    param_dtype: StateDtype = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """DoWG (Khaled et al. 2023): DoG with each squared gradient norm weighted by the squared distance.

    .. math::

        \\bar r_t^2 = \\max(\\bar r_{t-1}^2, \\|x_t - x_0\\|^2), \\qquad
        v_t = v_{t-1} + \\bar r_t^2 \\|g_t\\|^2, \\qquad
        x_{t+1} = x_t - \\alpha_t \\frac{\\bar r_t^2}{\\sqrt{v_t} + \\epsilon} (g_t + \\lambda x_t),

    with norms over the whole tree, from :math:`\\bar r_0^2` = ``init_estim_sq_dist``
    (``eps`` when ``None``).

    Recipe: ``chain(add_decayed_weights(weight_decay, mask) if weight_decay is not None else
    identity(), scale_by_dowg(init_estim_sq_dist, eps), scale_by_learning_rate(learning_rate))``.
    Numerically identical to ``optax.contrib.dowg``. Differences from ``optax.contrib.dowg``:
    bad arguments raise when built; ``None`` updates pass through; ``param_dtype`` (not 8-bit)
    and ``axis_name`` are additions.

    Args:
        learning_rate: :math:`\\alpha \\ge 0` (1 for plain DoWG), or a schedule of the step count.
        init_estim_sq_dist: :math:`\\bar r_0^2 > 0`, a guess of the squared distance to a solution.
        eps: :math:`\\epsilon`, added to the denominator (> 0 when ``init_estim_sq_dist`` is ``None``).
        weight_decay: :math:`\\lambda \\ge 0`, or ``None`` for none.
        mask: a tree of booleans shaped like (a prefix of) the params, or a function of the
            params returning one: ``True`` where the weight decay applies.
        param_dtype: storage of the initial params: ``None`` (the params' dtype), a floating dtype or
            :class:`~jaxopt_zoo.storage.StochasticBF16`, not 8-bit (a lossy one adds its rounding to the
            distance, see :mod:`jaxopt_zoo.transforms.parameter_free`).
        axis_name: inside ``shard_map``, the mesh axes the params may be sharded over.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.dowg(init_estim_sq_dist=1e-6)

    References:
        Khaled, Mishchenko and Jin, "DoWG Unleashed: An Efficient Universal Parameter-Free
        Gradient Descent Method", NeurIPS 2023 (arXiv:2305.16284).
    """
    owner = "dowg"
    validation.learning_rate(owner, learning_rate)
    if init_estim_sq_dist is not None:
        validation.positive(owner, "init_estim_sq_dist", init_estim_sq_dist)
    validation.epsilon(owner, "eps", eps, allow_zero=init_estim_sq_dist is not None,
                       why_positive=" (it is the first squared distance when init_estim_sq_dist is None)")
    if weight_decay is not None:
        validation.scalar_or_schedule(owner, "weight_decay", weight_decay)
    _distance_anchor_storage(owner, param_dtype, "init_estim_sq_dist (or eps)")
    validation.axis_name(owner, axis_name)
    return chain(
        identity() if weight_decay is None else add_decayed_weights(weight_decay, mask),
        scale_by_dowg(init_estim_sq_dist, eps, param_dtype=param_dtype, axis_name=axis_name),
        scale_by_learning_rate(learning_rate),
    )


@init_only("eps")
def cocob(
    learning_rate: ScalarOrSchedule = 1.0,
    alpha: jax.typing.ArrayLike = 100.0,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any | Callable[[Params], Any] | None = None,
    *,
    accumulator_dtype: StateDtype = None,
    param_dtype: StateDtype = None,
) -> GradientTransformation:
    """COCOB-Backprop (Orabona and Tommasi 2017): per-coordinate coin betting, no learning rate.

    The gradient, plus :math:`\\lambda x_t` (an L2 penalty), times :math:`\\alpha_t` (without a
    sign flip) goes into :func:`jaxopt_zoo.scale_by_cocob`, whose update points downhill.
    COCOB's step is unchanged when all gradients are scaled alike, so a constant
    ``learning_rate`` changes almost nothing (only how the initial :math:`L = \\epsilon`
    compares with the gradients); a schedule reweights the gradients of different steps.

    Recipe: ``chain(add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate,
    flip_sign=False), scale_by_cocob(alpha, eps))``. Numerically identical to
    ``optax.contrib.cocob``. Differences from ``optax.contrib.cocob``: ``alpha`` and ``eps``
    must be > 0 and bad arguments raise when built; ``None`` updates pass through;
    ``accumulator_dtype`` and ``param_dtype`` (storages of the sums and of the initial
    params) are additions.

    Args:
        learning_rate: :math:`\\alpha_t \\ge 0`, a factor on the gradients, or a schedule of the step count.
        alpha: :math:`\\alpha > 0`, bounding the fraction of the wealth bet early on.
        eps: :math:`\\epsilon > 0`, the initial :math:`L`.
        weight_decay: :math:`\\lambda \\ge 0`, or a schedule of the step count.
        mask: a tree of booleans shaped like (a prefix of) the params, or a function of the
            params returning one: ``True`` where the weight decay applies.
        accumulator_dtype: storage of the four per-parameter sums (see :mod:`jaxopt_zoo.storage`).
        param_dtype: the dtype of the initial params' copy (``None``: the params' dtype).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.cocob(weight_decay=1e-4, accumulator_dtype=jz.StochasticBF16())

    References:
        Orabona and Tommasi, "Training Deep Networks without Learning Rates Through Coin Betting",
        NeurIPS 2017 (arXiv:1705.07795).
    """
    owner = "cocob"
    validation.learning_rate(owner, learning_rate)
    validation.positive(owner, "alpha", alpha)
    validation.epsilon(owner, "eps", eps, allow_zero=False, why_positive=" (it is the first L, a divisor)")
    validation.scalar_or_schedule(owner, "weight_decay", weight_decay)
    validation.state_dtypes(owner, accumulator_dtype=accumulator_dtype)
    _anchor_dtype(owner, param_dtype)
    return chain(
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate, flip_sign=False),
        scale_by_cocob(alpha, eps, accumulator_dtype=accumulator_dtype, param_dtype=param_dtype),
    )
