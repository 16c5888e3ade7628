"""L-BFGS with a line search: lbfgs, Optax's recipe of the transforms in :mod:`jaxopt_zoo.transforms.linesearch`."""

from __future__ import annotations

from typing import Any

from jaxopt_zoo import validation
from jaxopt_zoo.base import GradientTransformation, ScalarOrSchedule, identity, static_only
from jaxopt_zoo.combine import chain
from jaxopt_zoo.sharding import AxisName
from jaxopt_zoo.storage import StateDtype
from jaxopt_zoo.transforms import scale, scale_by_learning_rate
from jaxopt_zoo.transforms.linesearch import scale_by_lbfgs, scale_by_zoom_linesearch

__all__ = ["lbfgs"]

_DEFAULT_LINESEARCH = scale_by_zoom_linesearch(max_linesearch_steps=20, initial_guess_strategy="one")


@static_only("memory_size")
def lbfgs(
    learning_rate: ScalarOrSchedule | None = None,
    memory_size: int = 10,
    scale_init_precond: bool = True,
    linesearch: Any = _DEFAULT_LINESEARCH,
    *,
    memory_dtype: StateDtype = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    """L-BFGS (Liu & Nocedal 1989) with a zoom line search: :math:`w_{k+1} = w_k - \\eta_k H_k g_k`.

    :math:`H_k g_k` is :func:`~jaxopt_zoo.scale_by_lbfgs`'s two-loop direction
    from the last ``memory_size`` secant pairs, and :math:`\\eta_k` the step the
    line search accepts along :math:`-H_k g_k` (by default
    ``scale_by_zoom_linesearch(max_linesearch_steps=20, initial_guess_strategy="one")``,
    strong Wolfe conditions), times ``learning_rate`` if one is given.

    Recipe: ``chain(scale_by_lbfgs(memory_size, scale_init_precond), scale(-1.0)
    or scale_by_learning_rate(learning_rate), linesearch or identity())``.
    Numerically identical to ``optax.lbfgs`` for float32 and float64 params,
    with the same state (for bfloat16, float16, integer and bool params the
    scalars are float32 at least and the gradients of integer params float32:
    see the deviations of the three members). ``update``
    takes ``value``, ``grad`` and ``value_fn`` (the loop below); without a
    line search (``linesearch=None``) they are not needed. Additions:
    ``memory_dtype`` (storage of the secant memory) and ``axis_name`` (exact
    inner products inside ``shard_map``), both passed to ``scale_by_lbfgs``;
    with ``axis_name`` the default line search is built with it too (a line
    search of your own needs its own ``axis_name``). Memory: two stacked copies
    of the params per secant pair, so it suits small and medium problems.
    Both line searches run in a ``while_loop``, which JAX differentiates forward (``jax.jvp``) but not in
    reverse: ``jax.grad`` through the steps (of a loss after them, w.r.t. the initial params or a
    hyperparameter) needs ``linesearch=None``, as with Optax's.

    Args:
        learning_rate: an extra factor on the step (a number >= 0 or a schedule), or ``None`` for none.
        memory_size: :math:`m \\ge 1`, the secant pairs kept.
        scale_init_precond: scale the initial inverse Hessian by :math:`\\langle s, y \\rangle / \\|y\\|^2`.
        linesearch: a line search transformation, or ``None`` for the plain step :math:`-H_k g_k`.
        memory_dtype: storage of the secant memory (see :mod:`jaxopt_zoo.storage`).
        axis_name: inside ``shard_map``, the mesh axes the updates may be sharded over.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> f = lambda w: jnp.sum(w**2)
        >>> tx = jz.lbfgs()
        >>> w = jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(w)
        >>> value_and_grad = jz.value_and_grad_from_state(f)
        >>> for _ in range(2):
        ...     value, grad = value_and_grad(w, state=state)
        ...     updates, state = tx.update(grad, state, w, value=value, grad=grad, value_fn=f)
        ...     w = jz.apply_updates(w, updates)
        >>> print(f"{f(w):.1e}")
        7.5e-14

    References:
        Liu and Nocedal, "On the limited memory BFGS method for large scale optimization",
        Mathematical Programming 45, 1989.
        Nocedal and Wright, "Numerical Optimization", Springer 1999 (Algorithms 7.4, 7.5, 3.5, 3.6).
    """
    owner = "lbfgs"
    validation.learning_rate(owner, learning_rate)
    validation.whole_number(owner, "memory_size", memory_size, 1, validation.INT32_MAX)
    validation.flag(owner, "scale_init_precond", scale_init_precond)
    is_transformation = callable(getattr(linesearch, "init", None)) and callable(getattr(linesearch, "update", None))
    if linesearch is not None and not is_transformation:
        raise ValueError(f"lbfgs: linesearch must be a line search transformation or None, got {linesearch!r}.")
    validation.state_dtypes(owner, memory_dtype=memory_dtype)
    validation.axis_name(owner, axis_name)
    if linesearch is _DEFAULT_LINESEARCH and axis_name is not None:
        linesearch = scale_by_zoom_linesearch(
            max_linesearch_steps=20, initial_guess_strategy="one", axis_name=axis_name
        )
    return chain(
        scale_by_lbfgs(memory_size, scale_init_precond, memory_dtype=memory_dtype, axis_name=axis_name),
        scale(-1.0) if learning_rate is None else scale_by_learning_rate(learning_rate),
        identity() if linesearch is None else linesearch,
    )
