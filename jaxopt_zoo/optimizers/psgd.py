"""PSGD-Kron alias: psgd_kron, psgd-jax's ``kron`` recipe of :func:`jaxopt_zoo.scale_by_psgd_kron`."""

from __future__ import annotations

from typing import Any, Callable

import jax

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, Params, ScalarOrSchedule, init_only, static_only
from jaxopt_zoo.combine import chain
from jaxopt_zoo.sharding import AxisName
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.transforms import add_decayed_weights, scale_by_learning_rate
from jaxopt_zoo.transforms.psgd import precond_update_prob_schedule, scale_by_psgd_kron

__all__ = ["psgd_kron"]


@static_only("max_size_triangular", "min_ndim_triangular")
@init_only("key", "precond_init_scale")
def psgd_kron(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: jax.typing.ArrayLike = 0.9,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any | Callable[[Params], Any] | None = None,
    preconditioner_update_probability: ScalarOrSchedule = precond_update_prob_schedule(),
    max_size_triangular: int = 8192,
    min_ndim_triangular: int = 2,
    memory_save_mode: str | None = None,
    momentum_into_precond_update: bool = True,
    precond_lr: jax.typing.ArrayLike = 0.1,
    precond_init_scale: jax.typing.ArrayLike | None = None,
    mu_dtype: StateDtype = None,
    *,
    key: jax.Array | int = 0,
    damping: jax.typing.ArrayLike = 1e-9,
    cached: bool = False,
    axis_name: AxisName = None,
    partition_specs: Any = None,
) -> GradientTransformation:
    """PSGD-Kron (Li 2015, 2022): momentum whitened by a learned Kronecker-factored preconditioner, then SGD.

    .. math::

        \\theta_{t+1} = \\theta_t - \\eta_t \\big(u_t + \\lambda \\theta_t\\big), \\qquad
        u_t = \\frac{P_t \\hat m_t}{\\max(1,\\ \\mathrm{rms}(P_t \\hat m_t) / 1.1)},

    with :math:`P_t = Q_t^\\top Q_t` and the momentum of :func:`jaxopt_zoo.scale_by_psgd_kron`. Recipe:
    ``chain(scale_by_psgd_kron(b1, preconditioner_update_probability, max_size_triangular, min_ndim_triangular,
    memory_save_mode, momentum_into_precond_update, precond_lr, precond_init_scale, mu_dtype, key=key,
    damping=damping, cached=cached), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``, as psgd-jax 0.2.9's ``kron`` (its defaults: ``learning_rate=1e-3``,
    decoupled decay multiplied by the rate). The capped RMS of :math:`u_t` (1.1) makes learning rates Adam-like
    in scale.

    Differences from psgd-jax's ``kron``: those of :func:`jaxopt_zoo.scale_by_psgd_kron` (random update
    draws from ``key``, ``precond_init_scale=None`` by default, the absolute ``damping``, balancing every fit,
    0-based schedules, full-precision products, the storage options of ``mu_dtype``, complex params raise at
    ``init``); ``mask`` is psgd-jax's
    ``weight_decay_mask``; ``precond_lr`` and ``precond_init_scale`` are its ``preconditioner_lr`` and
    ``preconditioner_init_scale``.

    Args:
        learning_rate: :math:`\\eta \\ge 0`, or a schedule of the step count.
        b1: momentum decay :math:`\\beta_1 \\in [0, 1)`.
        weight_decay: :math:`\\lambda \\ge 0`, or a schedule of the step count.
        mask: where the weight decay applies; see :func:`jaxopt_zoo.add_decayed_weights`.
        preconditioner_update_probability: :math:`p \\in [0, 1]`, or a schedule of the step count.
        max_size_triangular: dims larger than this get diagonal factors.
        min_ndim_triangular: leaves with fewer dims get diagonal factors only.
        memory_save_mode: ``None``, ``"one_diag"``, ``"smart_one_diag"``, ``"one_triu"`` or ``"all_diag"``.
        momentum_into_precond_update: fit the preconditioner to the momentum (else to the gradient).
        precond_lr: the preconditioner fit's step size, > 0.
        precond_init_scale: initial :math:`Q = s I`; ``None``: from the first gradient (Li's rule).
        mu_dtype: storage of the momentum (see :mod:`jaxopt_zoo.storage`).
        key: an integer seed or a ``jax.random.key`` for the update draws and probes.
        damping: the absolute damping of the fitted input, >= 0.
        cached: keep :math:`Q_k^\\top Q_k` in the state: one product per dimension per step instead of two.
        axis_name: inside ``shard_map``, the mesh axes the params may be split over.
        partition_specs: inside ``shard_map``, the ``PartitionSpec`` of each update leaf (the params' ``in_specs``;
            a tree or a prefix of one).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.psgd_kron(1e-3, weight_decay=0.1, mu_dtype=jz.StochasticBF16(), key=1)

    References:
        Li, "Preconditioned Stochastic Gradient Descent", IEEE TNNLS 2018 (arXiv:1512.04202);
        Li, "Black Box Lie Group Preconditioners for SGD", 2022 (arXiv:2211.04422).
    """
    owner = "psgd_kron"
    validation.learning_rate(owner, learning_rate)
    validation.scalar_or_schedule(owner, "weight_decay", weight_decay)
    validation.state_dtypes(owner, mu_dtype=mu_dtype)
    try:
        inner = scale_by_psgd_kron(b1, preconditioner_update_probability, max_size_triangular, min_ndim_triangular,
                                   memory_save_mode, momentum_into_precond_update, precond_lr, precond_init_scale,
                                   mu_dtype, key=key, damping=damping, cached=cached,
                                   axis_name=axis_name, partition_specs=partition_specs)
    except ValueError as error:  # the same checks, under the alias's name
        message = str(error)
        prefix = "scale_by_psgd_kron: "
        raise ValueError(owner + ": " + message[len(prefix):] if message.startswith(prefix) else message) from None
    return validation.refusing_complex(
        owner, chain(inner, add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate)))
