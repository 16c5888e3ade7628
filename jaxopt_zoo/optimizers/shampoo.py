"""Shampoo alias: Distributed Shampoo's recipe of :mod:`jaxopt_zoo.transforms.shampoo`, grafting and AdamW's decay."""

from __future__ import annotations

from typing import Any, Callable, Literal

import jax

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, Params, ScalarOrSchedule, static_only
from jaxopt_zoo.combine import chain
from jaxopt_zoo.sharding import AxisName, check_partition_specs
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.transforms import add_decayed_weights, ema, scale_by_adam, scale_by_learning_rate
from jaxopt_zoo.transforms.grafting import graft
from jaxopt_zoo.transforms.shampoo import _whole_number, scale_by_diagonal_grafting, scale_by_shampoo

__all__ = ["shampoo"]

GRAFTINGS = ("adam", "rmsprop", "adagrad", "sgd", None)


def _grafting(
    kind: str, b1: Any, b2: Any, eps: Any, mu_dtype: StateDtype, nu_dtype: StateDtype
) -> GradientTransformation:
    # Distributed Shampoo's grafting configs, each applied to the filtered gradient (its betas[0] = b1).
    if kind == "adam":
        return scale_by_adam(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    if kind == "sgd":
        return ema(b1, debias=True, accumulator_dtype=mu_dtype)
    b2 = 1.0 if kind == "adagrad" else b2
    return scale_by_diagonal_grafting(b1, b2, eps, bias_correction=False, mu_dtype=mu_dtype, nu_dtype=nu_dtype)


@static_only("precondition_frequency", "max_precond_dim")
def shampoo(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-12,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any | Callable[[Params], Any] | None = None,
    *,
    grafting: Literal["adam", "rmsprop", "adagrad", "sgd"] | None = "adam",
    grafting_b2: jax.typing.ArrayLike = 0.999,
    grafting_eps: jax.typing.ArrayLike = 1e-8,
    graft_per_block: bool = True,
    precondition_frequency: int = 100,
    start_preconditioning_step: int | None = None,
    max_precond_dim: int = 1024,
    merge_dims: bool = True,
    inverse_root: Literal["eigh", "newton"] = "newton",
    exponent_override: int | None = None,
    precondition_1d: bool = False,
    mu_dtype: StateDtype = None,
    nu_dtype: StateDtype = None,
    axis_name: AxisName = None,
    partition_specs: Any = None,
) -> GradientTransformation:
    """Shampoo (Gupta et al. 2018) as Distributed Shampoo runs it: grafted, filtered, with AdamW's weight decay.

    .. math::

        \\theta_{t+1} = \\theta_t - \\eta_t \\Big(\\frac{\\|a_t\\|_F}{\\|s_t\\|_F}\\, s_t + \\lambda \\theta_t\\Big),

    per block of :func:`jaxopt_zoo.block_layout` ``(shape, max_precond_dim)`` (Shampoo's blocks; per
    leaf with ``graft_per_block=False``), with :math:`s_t` the Shampoo step of :func:`jaxopt_zoo.scale_by_shampoo`
    (its factors fed the raw gradients, applied to the filtered gradient :math:`\\hat m_t`, the bias-corrected EMA of
    decay :math:`\\beta_1`) and :math:`a_t` the grafting optimizer's step on :math:`\\hat m_t`: ``"adam"``
    :math:`\\hat m_t / (\\sqrt{\\hat v_t} + \\epsilon_g)`, ``"rmsprop"`` the same without :math:`v`'s bias
    correction, ``"adagrad"`` with :math:`v` the sum of squares, ``"sgd"`` :math:`\\hat m_t`. Recipe:
    ``chain(graft(<grafting>(b1, grafting_b2, grafting_eps), scale_by_shampoo(b1, b2, eps, ...), active=...,
    max_block_dim=max_precond_dim),
    add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))``, ``active`` grafting from
    ``start_preconditioning_step`` on: before it the update is the grafting optimizer's own (Distributed
    Shampoo's "grafting method"); with ``grafting=None`` the Shampoo step is used as it is
    (the filtered gradient before the start). The momentum is where Distributed Shampoo puts it: on the gradients,
    before preconditioning and grafting (its "filtered gradient"); grafting rescales the preconditioned direction.

    Defaults are those of Distributed Shampoo's README AdamW example (``betas=(0.9, 0.999)``, ``epsilon=1e-12``,
    ``precondition_frequency=100``, ``start_preconditioning_step`` = the frequency, Adam grafting with
    ``beta2=0.999``, ``epsilon=1e-8``, decoupled weight decay), with its constructor's ``max_preconditioner_dim=1024``;
    the inverse roots by coupled Newton iterations (Distributed Shampoo's default is ``eigh``: see
    :func:`jaxopt_zoo.scale_by_shampoo` for the measured reasons).

    The integer options (``precondition_frequency``, ``start_preconditioning_step``, ``max_precond_dim``,
    ``exponent_override``) shape the program: under :func:`jaxopt_zoo.inject_hyperparams` name them in
    ``static_args``. A NaN gradient poisons the moments as in any optimizer (factors keep their last finite roots):
    wrap the optimizer in :func:`jaxopt_zoo.apply_if_finite` to skip such steps.

    Grafting is per block, as Distributed Shampoo's, also on the leaves Shampoo leaves alone (cut into blocks by the
    same rule). With ``graft_per_block=False`` the blocks of a leaf share the leaf's norms (layer-wise grafting, as
    heavyball's).

    Differences from Distributed Shampoo: on the leaves Shampoo leaves alone (scalars, and vectors unless
    ``precondition_1d``) the update is the filtered gradient rescaled to the grafting optimizer's norm (Distributed
    Shampoo preconditions them with full-matrix factors; the two agree for scalars); the grafting and Shampoo
    transformations each keep their own copy of the filtered gradient (one extra param-sized moment; ``mu_dtype``
    stores both); no ``beta3``, iterate averaging or L2 weight decay; those of :func:`jaxopt_zoo.scale_by_shampoo`
    (complex params raise at ``init``, among them).

    Args:
        learning_rate: :math:`\\eta \\ge 0`, or a schedule of the step count.
        b1: decay :math:`\\beta_1 \\in [0, 1)` of the filtered gradient.
        b2: decay :math:`\\beta_2 \\in [0, 1]` of Shampoo's statistics (1 sums them, as the 2018 paper).
        eps: :math:`\\varepsilon > 0` added to each factor before its inverse root.
        weight_decay: :math:`\\lambda \\ge 0`, or a schedule of the step count (multiplied by the learning rate).
        mask: where the weight decay applies; see :func:`jaxopt_zoo.add_decayed_weights`.
        grafting: ``"adam"``, ``"rmsprop"``, ``"adagrad"``, ``"sgd"`` or ``None``.
        grafting_b2: the grafting optimizer's :math:`\\beta_2` (Adam, RMSprop).
        grafting_eps: the grafting optimizer's :math:`\\epsilon_g \\ge 0`.
        graft_per_block: take the grafting norms per block (Distributed Shampoo's), else per leaf.
        precondition_frequency: steps between inverse-root refreshes.
        start_preconditioning_step: the first refresh (``None``: ``precondition_frequency``).
        max_precond_dim: the largest factor; larger dimensions are blocked.
        merge_dims: merge adjacent small dimensions.
        inverse_root: ``"newton"`` (coupled Newton iterations) or ``"eigh"``; see :func:`jaxopt_zoo.scale_by_shampoo`.
        exponent_override: an integer root :math:`p` for every factor instead of :math:`2k`.
        precondition_1d: give vectors a (full-matrix) factor too.
        mu_dtype: storage of the filtered gradients: a storage (see :mod:`jaxopt_zoo.storage`); a low-precision one
            spoils the direction of leaves merged into one dimension and of preconditioned vectors (see
            :func:`jaxopt_zoo.scale_by_shampoo`).
        nu_dtype: storage of the grafting optimizer's second moment.
        axis_name: inside ``shard_map``, the mesh axes the params may be split over (for the factors and the
            grafting norms).
        partition_specs: the ``PartitionSpec`` of each update leaf (a tree or a prefix of one): inside
            ``shard_map`` the params' ``in_specs``; under ``jit`` on Auto mesh axes the params' layout (the update
            then runs in a ``shard_map`` of its own, as :func:`jaxopt_zoo.scale_by_shampoo` says).

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.shampoo(1e-3, weight_decay=0.1, precondition_frequency=10, nu_dtype=jz.StochasticBF16())

    References:
        Gupta, Koren & Singer, "Shampoo: Preconditioned Stochastic Tensor Optimization", ICML 2018
        (arXiv:1802.09568); Shi et al., "A Distributed Data-Parallel PyTorch Implementation of the Distributed
        Shampoo Optimizer for Training Neural Networks At-Scale", arXiv:2309.06497; Agarwal et al.,
        "Disentangling Adaptive Gradient Methods from Learning Rates", arXiv:2002.11803.
    """
    owner = "shampoo"
    validation.learning_rate(owner, learning_rate)
    validation.decay_rate(owner, "b1", b1)
    validation.fraction(owner, "b2", b2)
    validation.epsilon(owner, "eps", eps, allow_zero=False, why_positive=" (the first steps' factors are singular)")
    validation.scalar_or_schedule(owner, "weight_decay", weight_decay)
    if grafting not in GRAFTINGS:
        raise ValueError(f"{owner}: grafting must be one of {GRAFTINGS}, got {grafting!r}.")
    validation.fraction(owner, "grafting_b2", grafting_b2)
    validation.epsilon(owner, "grafting_eps", grafting_eps)
    validation.state_dtypes(owner, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    counts = dict(precondition_frequency=precondition_frequency, max_precond_dim=max_precond_dim,
                  start_preconditioning_step=start_preconditioning_step, exponent_override=exponent_override)
    for name, value in counts.items():
        if value is not None or name in ("precondition_frequency", "max_precond_dim"):  # these take no None
            _whole_number(owner, name, value)
    if grafting == "adam":
        validation.decay_rate(owner, "grafting_b2", grafting_b2)
    for name, value in (("merge_dims", merge_dims), ("precondition_1d", precondition_1d),
                        ("graft_per_block", graft_per_block)):
        validation.flag(owner, name, value)
    if inverse_root not in ("eigh", "newton"):
        raise ValueError(f"{owner}: inverse_root must be 'eigh' or 'newton', got {inverse_root!r}.")
    axis_name = validation.axis_name(owner, axis_name)
    check_partition_specs(owner, partition_specs)
    direction = scale_by_shampoo(b1, b2, eps, precondition_frequency, start_preconditioning_step, max_precond_dim,
                                 merge_dims, inverse_root, exponent_override, precondition_1d, mu_dtype=mu_dtype,
                                 axis_name=axis_name, partition_specs=partition_specs)
    if grafting is not None:
        start = precondition_frequency if start_preconditioning_step is None else start_preconditioning_step
        # Before the start step, the grafting optimizer's own update (Distributed Shampoo's "grafting method"):
        # scale_by_shampoo's count is the 1-based step.
        direction = graft(_grafting(grafting, b1, grafting_b2, grafting_eps, mu_dtype, nu_dtype), direction,
                          active=lambda shampoo_state: shampoo_state.count >= int(start),
                          max_block_dim=max_precond_dim if graft_per_block else None, axis_name=axis_name,
                          partition_specs=partition_specs)
    return validation.refusing_complex(
        owner, chain(direction, add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate)))
