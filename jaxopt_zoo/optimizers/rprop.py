"""Resilient backpropagation under Optax's name: rprop, the recipe of :func:`jaxopt_zoo.transforms.rprop.scale_by_rprop`."""

from __future__ import annotations

import jax

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, init_only
from jaxopt_zoo.combine import chain
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.transforms.rprop import COMPLEX_WHY, check_options, scale_by_rprop
from jaxopt_zoo.transforms.scaling import scale

__all__ = ["rprop"]


@init_only("learning_rate")
def rprop(
    learning_rate: jax.typing.ArrayLike,
    eta_minus: jax.typing.ArrayLike = 0.5,
    eta_plus: jax.typing.ArrayLike = 1.2,
    min_step_size: jax.typing.ArrayLike = 1e-6,
    max_step_size: jax.typing.ArrayLike = 50.0,
    *,
    step_size_dtype: StateDtype = None,
    prev_dtype: StateDtype = None,
) -> GradientTransformation:
    """Rprop (Riedmiller & Braun 1993) as ``optax.rprop``: per-element step sizes grown while the gradient keeps
    its sign and shrunk when it flips, each step applied one gradient late.

    .. math::

        \\theta_{t+1} = \\theta_t - u_t,

    with :math:`u_t` the update of :func:`~jaxopt_zoo.transforms.rprop.scale_by_rprop`
    (the previous step :math:`\\Delta_{t-1} \\operatorname{sign}(g_{t-1})`, dropped where the sign
    flipped; the first update is 0, as in Optax 0.2.8). Recipe: ``chain(scale_by_rprop(learning_rate,
    eta_minus, eta_plus, min_step_size, max_step_size, step_size_dtype=..., prev_dtype=...), scale(-1.0))``.
    Numerically identical to ``optax.rprop``. For PyTorch's rule, without the lag, use
    :func:`jaxopt_zoo.torch.rprop`.

    Deviations from Optax: the options are checked (see ``scale_by_rprop``), a ``None``
    update keeps its state, ``step_size_dtype``/``prev_dtype`` (storage of the step sizes
    and of the previous step) are additions, and complex params, which have no sign, raise at
    ``init`` naming ``rprop`` (Optax fails at the first update inside ``jnp.clip``): wrap it in
    :func:`~jaxopt_zoo.split_real_and_imaginary`, or use :func:`jaxopt_zoo.torch.rprop`, which does.

    Args:
        learning_rate: the initial step size :math:`\\gamma \\ge 0` (a number: it is read at init only).
        eta_minus: :math:`0 < \\eta_- < 1`, the factor applied where the gradient's sign flipped.
        eta_plus: :math:`\\eta_+ > 1`, the factor applied where it kept its sign.
        min_step_size: :math:`\\Delta_{\\min} \\ge 0`.
        max_step_size: :math:`\\Delta_{\\max} \\ge \\Delta_{\\min}`.
        step_size_dtype: storage of the step sizes: a storage (see :mod:`jaxopt_zoo.storage`).
        prev_dtype: storage of the previous step: a storage (see :mod:`jaxopt_zoo.storage`).

    Example:
        >>> import jax, jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.rprop(learning_rate=0.1)
        >>> params = jnp.array([1.0, -2.0])
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     updates, state = tx.update(2 * params, state, params)
        ...     params = jz.apply_updates(params, updates)
        >>> params  # 0, then 0.1, then 0.12 towards 0
        Array([ 0.78, -1.78], dtype=float32)

    References:
        Riedmiller & Braun, "A Direct Adaptive Method for Faster Backpropagation Learning:
        The RPROP Algorithm", IEEE ICNN 1993.
    """
    owner = "rprop"
    check_options(
        owner, ("learning_rate", learning_rate), ("eta_minus", eta_minus), ("eta_plus", eta_plus),
        ("min_step_size", min_step_size), ("max_step_size", max_step_size),
    )
    validation.state_dtypes(owner, step_size_dtype=step_size_dtype, prev_dtype=prev_dtype)
    steps = scale_by_rprop(
        learning_rate, eta_minus, eta_plus, min_step_size, max_step_size,
        step_size_dtype=step_size_dtype, prev_dtype=prev_dtype,
    )
    return validation.refusing_complex(owner, chain(steps, scale(-1.0)), COMPLEX_WHY)
