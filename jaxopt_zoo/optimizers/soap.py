"""SOAP alias: soap, the official code's recipe of :func:`jaxopt_zoo.scale_by_soap` with decoupled weight decay."""

from __future__ import annotations

from typing import Any, Callable

import jax

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, Params, ScalarOrSchedule, static_only
from jaxopt_zoo.combine import chain
from jaxopt_zoo.sharding import AxisName, check_partition_specs
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.transforms import add_decayed_weights, scale_by_learning_rate
from jaxopt_zoo.transforms.soap import scale_by_soap

__all__ = ["soap"]


@static_only("precondition_frequency", "max_precond_dim")
def soap(
    learning_rate: ScalarOrSchedule = 3e-3,
    b1: jax.typing.ArrayLike = 0.95,
    b2: jax.typing.ArrayLike = 0.95,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: ScalarOrSchedule = 0.01,
    precondition_frequency: int = 10,
    max_precond_dim: int = 10000,
    merge_dims: bool = False,
    precondition_1d: bool = False,
    normalize_grads: bool = False,
    correct_bias: bool = True,
    shampoo_b2: jax.typing.ArrayLike | None = None,
    blocking: bool = True,
    mask: Any | Callable[[Params], Any] | None = None,
    *,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
    axis_name: AxisName = None,
    partition_specs: Any = None,
) -> GradientTransformation:
    """SOAP (Vyas et al. 2024): Adam in the eigenbasis of Shampoo's factors, with decoupled weight decay.

    .. math::

        \\theta_{t+1} = \\theta_t - \\eta_t \\big(u_t + \\lambda \\theta_t\\big),

    with :math:`u_t` the update of :func:`jaxopt_zoo.scale_by_soap` (0 on the first step, which only builds the
    eigenbases). Recipe: ``chain(scale_by_soap(b1, b2, shampoo_b2, eps, precondition_frequency, max_precond_dim,
    merge_dims, precondition_1d, correct_bias, normalize_grads, blocking, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
    add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))``. Every default is the
    official code's (``lr=3e-3``, ``betas=(0.95, 0.95)``, ``eps=1e-8``, ``weight_decay=0.01``,
    ``precondition_frequency=10``, ``max_precond_dim=10000``, ``merge_dims=False``, ``precondition_1d=False``,
    ``normalize_grads=False``, ``correct_bias=True``, ``shampoo_beta=-1``, i.e. ``b2``); the paper tunes
    ``precondition_frequency`` (10 is its recommendation) and uses ``max_precond_dim`` to leave large vocabulary
    dimensions alone.

    Differences from the official code: those of :func:`jaxopt_zoo.scale_by_soap` (blocking by default, NaN
    guards on the factors, complex params raise at ``init``), and the weight decay's place: here it is
    AdamW's, :math:`-\\eta\\lambda\\theta_t` from the params before the step and on every step; the
    official code shrinks the params after the step,
    :math:`\\theta \\leftarrow (\\theta_t - \\eta u_t)(1 - \\eta\\lambda)` (an extra :math:`\\eta^2\\lambda u_t`),
    and not at all on the first step. ``mask`` (where the decay applies), ``blocking`` and the storage options
    are additions.

    Args:
        learning_rate: :math:`\\eta \\ge 0`, or a schedule of the step count.
        b1: decay :math:`\\beta_1 \\in [0, 1)` of Adam's first moment.
        b2: decay :math:`\\beta_2 \\in [0, 1)` of Adam's second moment (and of the factors by default).
        eps: :math:`\\varepsilon \\ge 0`, added to :math:`\\sqrt{v}`.
        weight_decay: :math:`\\lambda \\ge 0`, or a schedule of the step count.
        precondition_frequency: Adam steps between basis refreshes, :math:`\\ge 1`.
        max_precond_dim: the largest factor; larger dimensions are blocked (or unrotated with ``blocking=False``).
        merge_dims: merge adjacent small dimensions while their product stays within ``max_precond_dim``.
        precondition_1d: rotate 1-D leaves too.
        normalize_grads: divide each leaf's direction by its root mean square.
        correct_bias: Adam's bias correction.
        shampoo_b2: decay of the factors; ``None`` uses ``b2``.
        blocking: cut dimensions above ``max_precond_dim`` into blocks (``False``: the official code's rule).
        mask: a tree of booleans shaped like (a prefix of) the params, or a function of the params returning
            one: ``True`` where the weight decay applies.
        mu_dtype: storage of Adam's first moment: a storage (see :mod:`jaxopt_zoo.storage`).
        nu_dtype: storage of Adam's second moment, as for ``mu_dtype``.
        axis_name: inside ``shard_map``, the mesh axes the params may be split over.
        partition_specs: the ``PartitionSpec`` of each update leaf (a tree or a prefix of one): inside
            ``shard_map`` the params' ``in_specs``; under ``jit`` on Auto mesh axes the params' layout (the update
            then runs in a ``shard_map`` of its own, as :func:`jaxopt_zoo.scale_by_soap` says).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.soap(3e-3, weight_decay=0.0)
        >>> params = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
        >>> state = tx.init(params)
        >>> updates, state = tx.update(params, state, params)  # the first step builds the bases only
        >>> float(abs(updates["w"]).max())
        0.0

    References:
        Vyas, Morwani, Zhao, Shapira, Brandfonbrener, Janson & Kakade, "SOAP: Improving and Stabilizing Shampoo
        using Adam", ICLR 2025 (arXiv:2409.11321).
    """
    owner = "soap"
    validation.learning_rate(owner, learning_rate)
    validation.decay_rate(owner, "b1", b1)
    validation.decay_rate(owner, "b2", b2)
    if shampoo_b2 is not None:
        validation.decay_rate(owner, "shampoo_b2", shampoo_b2)
    validation.epsilon(owner, "eps", eps)
    validation.scalar_or_schedule(owner, "weight_decay", weight_decay)
    validation.whole_number(owner, "precondition_frequency", precondition_frequency, 1, validation.INT32_MAX)
    validation.whole_number(owner, "max_precond_dim", max_precond_dim, 1, validation.INT32_MAX)
    for name, value in (("merge_dims", merge_dims), ("precondition_1d", precondition_1d),
                        ("normalize_grads", normalize_grads), ("correct_bias", correct_bias), ("blocking", blocking)):
        validation.flag(owner, name, value)
    validation.state_dtypes(owner, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    axis_name = validation.axis_name(owner, axis_name)
    check_partition_specs(owner, partition_specs)
    return validation.refusing_complex(owner, chain(
        scale_by_soap(b1, b2, shampoo_b2, eps, precondition_frequency, max_precond_dim, merge_dims, precondition_1d,
                      correct_bias, normalize_grads, blocking, mu_dtype=mu_dtype, nu_dtype=nu_dtype,
                      axis_name=axis_name, partition_specs=partition_specs),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    ))
