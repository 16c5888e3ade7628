"""Optax's Muon alias: muon (Muon on matrices, Nesterov AdamW elsewhere)."""

from __future__ import annotations

from typing import Any, Callable

import jax

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, Params, ScalarOrSchedule
from jaxopt_zoo.combine import chain, partition
from jaxopt_zoo.sharding import AxisName
from jaxopt_zoo.optimizers.classic import adamw
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.transforms import add_decayed_weights, scale_by_learning_rate
from jaxopt_zoo.transforms.orthogonal import (
    NS_COEFFICIENTS,
    MuonDimensionNumbers,
    WeightDimensionNumbers,
    scale_by_muon,
)

__all__ = ["muon"]


def _labels(muon_weight_dimension_numbers: WeightDimensionNumbers) -> Callable[[Params], Any]:
    """'muon' for the leaves Muon orthogonalises, 'adam' for the others (Optax's rule)."""
    if muon_weight_dimension_numbers is None:
        return lambda params: jax.tree.map(lambda p: "muon" if p.ndim == 2 else "adam", params)

    def labels(params):
        specs = muon_weight_dimension_numbers
        specs = specs(params) if tree.is_function_of_params(specs) else specs
        label = lambda spec, sub: jax.tree.map(lambda _: "adam" if spec is None else "muon", sub)
        return jax.tree.map(label, specs, params, is_leaf=lambda x: x is None or isinstance(x, MuonDimensionNumbers))

    return labels


def muon(
    learning_rate: ScalarOrSchedule,
    ns_coeffs: Any = NS_COEFFICIENTS,
    ns_steps: int = 5,
    beta: jax.typing.ArrayLike = 0.95,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any | Callable[[Params], Any] | None = None,
    mu_dtype: StateDtype = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: str = "frobenius",
    adam_b1: jax.typing.ArrayLike = 0.9,
    adam_b2: jax.typing.ArrayLike = 0.999,
    adam_eps_root: jax.typing.ArrayLike = 0.0,
    adam_weight_decay: ScalarOrSchedule = 0.0,
    adam_learning_rate: ScalarOrSchedule | None = None,
    muon_weight_dimension_numbers: WeightDimensionNumbers = None,
    consistent_rms: jax.typing.ArrayLike | None = None,
    nu_dtype: StateDtype = None,
    ns_method: str = "plain",
    layer_sharding: bool = False,
    axis_name: AxisName = None,
    partition_specs: Any = None,
) -> GradientTransformation:
    """Muon (Jordan et al. 2024) on the matrices, Nesterov AdamW on the other parameters, as ``optax.contrib.muon``.

    For a weight :math:`W` with fan-in :math:`n_\\text{in}` and fan-out :math:`n_\\text{out}`:

    .. math::

        W \\leftarrow W - \\alpha_t \\big(s \\, u_t + \\lambda W\\big), \\qquad
        s = \\sqrt{\\max(1, n_\\text{out} / n_\\text{in})} \\text{ or }
        r \\sqrt{\\max(n_\\text{in}, n_\\text{out})} \\text{ (consistent_rms } r\\text{)},

    with :math:`u_t` :func:`~jaxopt_zoo.scale_by_muon`'s orthogonalised (bias-corrected,
    Nesterov) momentum. Muon takes the 2-D leaves, or, given
    ``muon_weight_dimension_numbers``, the leaves whose entry is a
    :class:`~jaxopt_zoo.MuonDimensionNumbers` (``None`` entries go to Adam). Every other leaf
    gets ``adamw(adam_learning_rate or learning_rate, adam_b1, adam_b2, eps, adam_eps_root,
    mu_dtype, adam_weight_decay, nesterov=nesterov)`` (Optax's defaults make it NAdamW).

    Recipe: ``partition({"muon": chain(scale_by_muon(ns_coeffs, ns_steps, beta, eps, mu_dtype,
    nesterov=..., adaptive=..., preconditioning=..., weight_dimension_numbers=...,
    shape_scale="width" or consistent_rms), add_decayed_weights(weight_decay, weight_decay_mask),
    scale_by_learning_rate(learning_rate)), "adam": adamw(...)}, labels)``. Optax chains its
    shape factor as a separate stateless ``scale_by_shape``; here it is ``scale_by_muon``'s
    ``shape_scale`` (the same product): the states hold the same leaves.

    Differences from ``optax.contrib.muon`` (the same numbers otherwise, bit for bit in
    float32 under ``jit``): those of :func:`~jaxopt_zoo.scale_by_muon` (a complex leaf given to
    Muon raises at ``init``, as in ``torch.optim.Muon``, where Optax runs complex matrices through
    Newton–Schulz; complex leaves given to Adam are updated, as in Optax; ``"aol"``/``"schatten"``
    use the ``eps`` given; more rows of ``ns_coeffs`` than ``ns_steps`` run the last ``ns_steps``
    rows instead of raising; ``"muon"`` is accepted as the standard preset, as Optax's docstring
    names it; ``ns_steps`` is at most 99); the options are checked when built; ``mu_dtype`` also
    takes a storage (:mod:`jaxopt_zoo.storage`), for both Muon's momentum and Adam's first moment;
    ``nu_dtype`` (Adam's second moment), ``ns_method`` and the layer-sharding options
    (``layer_sharding``, ``axis_name``, ``partition_specs``) are additions.

    Args:
        learning_rate: :math:`\\alpha \\ge 0`, or a schedule of the step count.
        ns_coeffs: :math:`(a, b, c)`, rows of them (one per step), or ``"standard"``/``"dion"``;
            coefficients whose iteration diverges on [0, 1] raise (Optax's updates are then inf or NaN).
        ns_steps: Newton–Schulz steps, an integer in [0, 99].
        beta: Muon's momentum decay, in [0, 1).
        eps: Muon's :math:`\\varepsilon` (added to the norm), also Adam's.
        weight_decay: :math:`\\lambda \\ge 0` for Muon's leaves (multiplied by the learning rate).
        weight_decay_mask: where the decay applies: a tree of booleans or a function of the params.
        mu_dtype: storage of the momenta: a storage (see :mod:`jaxopt_zoo.storage`).
        nesterov: Nesterov momentum in both Muon and Adam.
        adaptive: scale Muon's update by the dual norm (see :func:`~jaxopt_zoo.scale_by_muon`).
        preconditioning: ``"frobenius"``, ``"spectral"``, ``"aol"`` or ``"schatten"``.
        adam_b1: Adam's :math:`\\beta_1`.
        adam_b2: Adam's :math:`\\beta_2`.
        adam_eps_root: Adam's :math:`\\varepsilon` inside the square root.
        adam_weight_decay: Adam's decoupled weight decay.
        adam_learning_rate: Adam's learning rate (``None``: ``learning_rate``).
        muon_weight_dimension_numbers: which leaves Muon takes and their matrix axes: a tree
            (or prefix) of :class:`~jaxopt_zoo.MuonDimensionNumbers` and ``None`` (Adam), or a
            function of the params returning one; ``None``: the 2-D leaves, as ``(in, out)``.
        consistent_rms: ``None`` for the width factor, or :math:`r \\ge 0` (0.2 matches AdamW's RMS).
        nu_dtype: storage of Adam's second moment (an addition; Optax keeps it in the params' dtype).
        ns_method: ``"plain"`` or ``"gram"``: Gram Newton–Schulz on rectangular matrices (an addition; see
            :func:`~jaxopt_zoo.scale_by_muon`).
        layer_sharding: orthogonalise each matrix whole on one device (an addition; see
            :func:`~jaxopt_zoo.scale_by_muon`): on sharded params, each device runs about 1/N of the
            Newton–Schulz work, with no collective inside the iteration.
        axis_name: with ``layer_sharding`` inside ``shard_map``: the mesh axes to spread the matrices over
            (every axis the params are split along must be named). Adam's leaves need none.
        partition_specs: with ``layer_sharding``: the params' ``PartitionSpec`` (a tree or prefix of the
            params), needed inside ``shard_map``, and under ``jit`` on Auto mesh axes for an all-to-all exchange.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> params = {"w": jnp.ones((4, 8)), "b": jnp.zeros(8)}
        >>> tx = jz.muon(0.02, weight_decay=0.01, consistent_rms=0.2)
        >>> updates, state = tx.update(params, tx.init(params), params)
        >>> sorted(state.inner_states)
        ['adam', 'muon']

    References:
        Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024,
        https://kellerjordan.github.io/posts/muon/.
        Liu et al., "Muon is Scalable for LLM Training", 2025, arXiv:2502.16982.
    """
    owner = "muon"
    validation.learning_rate(owner, learning_rate)
    validation.decay_rate(owner, "beta", beta)
    validation.epsilon(owner, "eps", eps)
    validation.scalar_or_schedule(owner, "weight_decay", weight_decay)
    validation.state_dtypes(owner, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    validation.flag(owner, "nesterov", nesterov)
    validation.flag(owner, "adaptive", adaptive)
    validation.decay_rate(owner, "adam_b1", adam_b1)
    validation.decay_rate(owner, "adam_b2", adam_b2)
    validation.epsilon(owner, "adam_eps_root", adam_eps_root)
    validation.scalar_or_schedule(owner, "adam_weight_decay", adam_weight_decay)
    if adam_learning_rate is not None:
        validation.scalar_or_schedule(owner, "adam_learning_rate", adam_learning_rate)
    if consistent_rms is not None:
        validation.non_negative(owner, "consistent_rms", consistent_rms)
    try:
        orthogonalised = scale_by_muon(
            ns_coeffs, ns_steps, beta, eps, mu_dtype, nesterov=nesterov, adaptive=adaptive,
            preconditioning=preconditioning, weight_dimension_numbers=muon_weight_dimension_numbers,
            shape_scale="width" if consistent_rms is None else consistent_rms,
            ns_method=ns_method, layer_sharding=layer_sharding, axis_name=axis_name, partition_specs=partition_specs,
        )
    except ValueError as error:  # ns_coeffs, ns_steps, preconditioning: say whose argument it is
        raise ValueError(f"{owner}: {str(error).removeprefix('scale_by_muon: ')}") from None
    return partition(
        {
            "muon": chain(
                orthogonalised,
                add_decayed_weights(weight_decay, weight_decay_mask),
                scale_by_learning_rate(learning_rate),
            ),
            "adam": adamw(
                learning_rate if adam_learning_rate is None else adam_learning_rate,
                adam_b1, adam_b2, eps, adam_eps_root, mu_dtype, adam_weight_decay, nesterov=nesterov, nu_dtype=nu_dtype,
            ),
        },
        _labels(muon_weight_dimension_numbers),
    )
