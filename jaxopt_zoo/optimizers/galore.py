"""GaLore alias: galore, Optax's recipe of :func:`jaxopt_zoo.scale_by_galore` with decoupled weight decay."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, Params, ScalarOrSchedule, static_only
from jaxopt_zoo.combine import chain
from jaxopt_zoo.transforms import add_decayed_weights, scale_by_learning_rate
from jaxopt_zoo.transforms.galore import DimensionNumbersSpec, check_options, scale_by_galore

__all__ = ["galore"]


@static_only("rank", "update_proj_gap")
def galore(
    learning_rate: ScalarOrSchedule,
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: jax.typing.ArrayLike = 1.0,
    base_optimizer: GradientTransformation | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any | Callable[[Params], Any] | None = None,
    weight_dimension_numbers: DimensionNumbersSpec = None,
    *,
    svd_dtype: jax.typing.DTypeLike | None = jnp.float32,
) -> GradientTransformation:
    """GaLore (Zhao et al. 2024): Adam (or ``base_optimizer``) on low-rank projections of the matrix gradients.

    .. math::

        u_t = \\operatorname{GaLore}_{r, T, \\alpha}(g_t), \\qquad
        \\theta_{t+1} = \\theta_t - \\eta_t \\big(u_t + \\lambda_t \\theta_t\\big),

    with :math:`\\operatorname{GaLore}` the projected step of
    :func:`jaxopt_zoo.scale_by_galore` (the projector refreshed by an SVD every
    :math:`T` = ``update_proj_gap`` steps, ``base_optimizer`` run on the
    rank-:math:`r` projections, the result projected back and scaled by
    :math:`\\alpha` = ``scale``). Recipe: ``chain(scale_by_galore(rank,
    update_proj_gap, scale, base_optimizer, weight_dimension_numbers),
    add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))``:
    the weight decay acts in the full space. ``base_optimizer`` must not read
    the params (use ``scale_by_adam``, not ``adamw``); if it includes a learning
    rate, pass ``learning_rate=1.0`` here. Its moments take its own storage
    options, e.g. ``base_optimizer=jz.scale_by_adam(mu_dtype=jz.Blockwise8Bit())``.

    Numerically identical to ``optax.contrib.galore``. Differences from
    ``optax.contrib.galore``: a leaf that is not projected has no projector in
    the state (Optax keeps a ``(0, 0)`` array, which Orbax cannot save);
    ``svd_dtype`` is an addition (``None`` runs the SVD in the gradient's dtype,
    at least float32; Optax's is always float32); ``None`` updates pass through;
    bad options raise ``ValueError`` naming ``galore`` (see
    :func:`jaxopt_zoo.scale_by_galore`); complex params raise where they would
    be projected (Optax's SVD drops their imaginary part).

    Args:
        learning_rate: :math:`\\eta \\ge 0`, or a schedule of the step count.
        rank: :math:`r \\ge 1`, the rank of the projection (clipped to each matrix's smaller side).
        update_proj_gap: :math:`T \\ge 1`, the steps between SVD refreshes of the projectors.
        scale: :math:`\\alpha`, the factor on the projected leaves' updates.
        base_optimizer: the transformation run in the projected space; ``None``: ``scale_by_adam()``.
        weight_decay: :math:`\\lambda \\ge 0`, or a schedule of the step count.
        mask: a tree of booleans shaped like (a prefix of) the params, or a function of the
            params returning one: ``True`` where the weight decay applies.
        weight_dimension_numbers: which leaves are matrices, and how (see :func:`jaxopt_zoo.scale_by_galore`).
        svd_dtype: the dtype the SVD runs in; ``None`` for the gradient's dtype (at least float32).

    Example:
        >>> import jax, jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.galore(0.1, rank=2, update_proj_gap=5, weight_decay=1e-2)
        >>> params = {"w": jnp.ones((6, 4)), "b": jnp.zeros(4)}
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = jax.grad(lambda p: jnp.sum((p["w"] - 2.0) ** 2) + jnp.sum(p["b"] ** 2))(params)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = jz.apply_updates(params, updates)
        >>> bool(jnp.all(params["w"] > 1.0))
        True

    References:
        Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection", ICML 2024,
        arXiv:2403.03507.
    """
    owner = "galore"
    validation.learning_rate(owner, learning_rate)
    check_options(owner, rank, update_proj_gap, scale, base_optimizer, svd_dtype)
    validation.scalar_or_schedule(owner, "weight_decay", weight_decay)
    return chain(
        scale_by_galore(rank, update_proj_gap, scale, base_optimizer, weight_dimension_numbers, svd_dtype=svd_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
