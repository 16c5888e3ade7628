"""Averaged stochastic gradient descent (ASGD): a decaying rate, and the running average of the iterates."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, OptState, Params, ScalarOrSchedule, expects_state, safe_increment, zero_count
from jaxopt_zoo.combine import RealImaginaryPair
from jaxopt_zoo.storage import StateDtype, read_leaf, resolve, with_storage

__all__ = ["AverageIteratesState", "ScaleByAsgdState", "average_iterates", "averaged_params", "scale_by_asgd"]


def _scalar_dtype() -> jnp.dtype:
    # float32, or float64 under jax_enable_x64 (as torch keeps eta in its default dtype).
    return jnp.dtype(jnp.result_type(float))


class ScaleByAsgdState(NamedTuple):
    """Step count (int32, saturating) and the rate :math:`\\eta_{t+1}` of the next step (a scalar)."""

    count: jax.Array
    eta: jax.Array


def scale_by_asgd(
    learning_rate: ScalarOrSchedule = 1e-2, lambd: jax.typing.ArrayLike = 1e-4, alpha: jax.typing.ArrayLike = 0.75
) -> GradientTransformation:
    """ASGD's step (Bottou 2012's schedule, as ``torch.optim.ASGD`` takes it):
    :math:`u_t = \\eta_t (g_t + \\lambda \\theta_t)`.

    .. math::

        \\eta_1 = \\gamma_0, \\qquad
        \\eta_{t+1} = \\frac{\\gamma_t}{(1 + \\lambda \\gamma_t t)^{\\alpha}},

    with :math:`\\gamma_t` the learning rate at step :math:`t` (a schedule's value
    at the 0-based count :math:`t - 1`; :math:`\\gamma_0` its value at init).  The
    learning rate is inside :math:`\\eta_t`: chain ``scale(-1.0)`` after it to
    descend. The next rate is formed at the end of each step and kept in
    ``state.eta``, as PyTorch keeps it, so a schedule (or an injected learning
    rate) acts one step later, exactly as an ``lr_scheduler`` acts on
    ``torch.optim.ASGD``. The decay term :math:`\\lambda \\theta_t` is the
    regularisation of Bottou's ASGD (PyTorch's ``lambd``), distinct from weight decay.
    Optax has no ASGD. Put :func:`average_iterates` last in the chain for the averaged iterate.

    Args:
        learning_rate: :math:`\\gamma \\ge 0`, or a schedule of the step count.
        lambd: :math:`\\lambda \\ge 0` (PyTorch accepts any number).
        alpha: the power :math:`\\alpha` of the rate's decay (any finite real, as in PyTorch).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.chain(jz.scale_by_asgd(0.1, lambd=0.5), jz.scale(-1.0))
        >>> params = jnp.ones(2)
        >>> u, state = tx.update(jnp.array([1.0, -1.0]), tx.init(params), params)
        >>> u  # -eta_1 (g + lambd theta) with eta_1 = 0.1
        Array([-0.15,  0.05], dtype=float32)
        >>> state[0].eta  # 0.1 / (1 + 0.5 * 0.1 * 1) ** 0.75
        Array(0.0964..., dtype=float32)

    References:
        Bottou, "Stochastic Gradient Descent Tricks", in Neural Networks: Tricks of the Trade, 2012.
    """
    owner = "scale_by_asgd"
    validation.scalar_or_schedule(owner, "learning_rate", learning_rate)
    validation.non_negative(owner, "lambd", lambd)
    validation.real_scalar(owner, "alpha", alpha)
    rate = learning_rate if callable(learning_rate) else (lambda count: learning_rate)

    def init(params):
        del params
        return ScaleByAsgdState(zero_count(), jnp.array(rate(zero_count()), dtype=_scalar_dtype(), copy=True))

    def update(updates, state, params=None, **extra_args):
        del extra_args
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, params, "the params")
        eta = state.eta
        steps = tree.map_updates(lambda g, p: (eta * (g + lambd * p)).astype(g.dtype), updates, params)
        count = safe_increment(state.count)
        gamma = jnp.asarray(rate(state.count), eta.dtype)
        next_eta = gamma / (1 + lambd * gamma * count.astype(eta.dtype)) ** alpha
        return steps, ScaleByAsgdState(count, next_eta.astype(eta.dtype))

    return expects_state(owner, GradientTransformation(init, update), ScaleByAsgdState)


class AverageIteratesState(NamedTuple):
    """Step count and the averaged iterate ``ax`` (read it with :func:`averaged_params`)."""

    count: jax.Array
    ax: Params


def average_iterates(t0: jax.typing.ArrayLike = 1e6, *, ax_dtype: StateDtype = None) -> GradientTransformation:
    """Polyak–Ruppert averaging of the iterates from step :math:`t_0` on, as ``torch.optim.ASGD`` keeps it.

    Put it last in a chain: it sees the final updates :math:`u_t` and the
    params :math:`\\theta_{t-1}`, passes the updates through unchanged, and keeps
    :math:`\\bar\\theta_t` of the new iterate :math:`\\theta_t = \\theta_{t-1} + u_t`:

    .. math::

        \\bar\\theta_t = \\bar\\theta_{t-1} + \\mu_t (\\theta_t - \\bar\\theta_{t-1})
        \\ (\\bar\\theta_t = \\theta_t \\text{ where } \\mu_t = 1), \\qquad
        \\mu_1 = 1, \\quad \\mu_t = \\frac{1}{\\max(1, t - 1 - t_0)}.

    For an integer :math:`t_0 \\ge -1`, :math:`\\bar\\theta_t = \\theta_t` up to step
    :math:`t_0 + 2` and the mean of :math:`\\theta_{t_0 + 2}, \\ldots, \\theta_t` after it.
    :math:`\\bar\\theta_0 = 0` (before any step), as in PyTorch. Read it with :func:`averaged_params`.

    Args:
        t0: :math:`t_0`, the step after which averaging starts (any finite real, as in PyTorch).
        ax_dtype: storage of :math:`\\bar\\theta` (signed): ``None`` (the params' dtype), a floating
            dtype, :class:`~jaxopt_zoo.storage.StochasticBF16` or
            :class:`~jaxopt_zoo.quantization.Blockwise8Bit`. With bfloat16 params, the
            late increments :math:`\\mu_t (\\theta_t - \\bar\\theta_{t-1})` round away in
            bfloat16: use ``jnp.float32`` or ``StochasticBF16()``. The average is only read, never
            stepped from, so 8-bit codes are taken, but their rounding is coarse for it: 100 to 400
            noisy steps on a 64 x 64 quadratic left it 8-11% (of its norm) from the float32 average,
            where ``StochasticBF16()`` stayed within 2% and plain bfloat16 drifted 8-19%.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.chain(jz.sgd(0.5), jz.average_iterates(t0=0))
        >>> params = jnp.zeros(1)
        >>> state = tx.init(params)
        >>> for _ in range(4):
        ...     updates, state = tx.update(jnp.array([-2.0]), state, params)
        ...     params = jz.apply_updates(params, updates)
        >>> params, jz.averaged_params(state)  # iterates 1, 2, 3, 4: the mean from the second is 3
        (Array([4.], dtype=float32), Array([3.], dtype=float32))

    References:
        Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging", SIAM J. Control Optim. 1992.
    """
    owner = "average_iterates"
    validation.real_scalar(owner, "t0", t0)
    ax_dtype = resolve(owner, "ax_dtype", ax_dtype)

    def init(params):
        return AverageIteratesState(zero_count(), tree.moments_like(params))

    def update(updates, state, params=None, **extra_args):
        del extra_args
        validation.require_params(owner, params)
        tree.check_same_structure(owner, updates, params, "the params")
        tree.check_same_structure(owner, updates, state.ax, "the averaged iterate (state.ax)")
        count = safe_increment(state.count)
        t = count.astype(_scalar_dtype())
        mu = jnp.where(count == 1, 1.0, 1 / jnp.maximum(1.0, t - 1 - t0)).astype(t.dtype)

        def average(u, ax, p):
            new = jnp.asarray(p + u).astype(p.dtype)  # the next iterate, as apply_updates forms it
            return jnp.where(mu == 1, new.astype(ax.dtype), ax + mu * (new - ax))

        return updates, AverageIteratesState(count, tree.map_state(average, updates, state.ax, params))

    tx = with_storage(GradientTransformation(init, update), signed={"ax": ax_dtype})
    return expects_state(owner, tx, AverageIteratesState)


def averaged_params(state: OptState) -> Params:
    """The averaged parameters :math:`\\bar\\theta` kept by :func:`average_iterates` anywhere in ``state``.

    Works on the state of any optimizer that holds exactly one
    :func:`average_iterates` (``jz.torch.asgd``, a chain, ``inject_hyperparams``,
    ...). Stored leaves are decoded (8-bit codes and bfloat16 with stochastic
    rounding read as float32), and complex params split by
    :func:`~jaxopt_zoo.split_real_and_imaginary` come back complex. Before the first step the average is 0.

    Args:
        state: an optimizer state holding exactly one :func:`average_iterates` state (else a ``ValueError``).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.torch.asgd(lr=0.1, t0=0)
        >>> params = {"w": jnp.ones(3)}
        >>> jz.averaged_params(tx.init(params))
        {'w': Array([0., 0., 0.], dtype=float32)}
    """
    is_average = lambda x: getattr(type(x), "_fields", None) == AverageIteratesState._fields
    found = [x for x in jax.tree.leaves(state, is_leaf=is_average) if is_average(x)]
    if len(found) != 1:
        raise ValueError(
            f"averaged_params: the state must hold exactly one average_iterates state (as jz.torch.asgd's does), "
            f"found {len(found)}."
        )
    ax = jax.tree.map(read_leaf, found[0].ax)
    merge = lambda x: jax.lax.complex(x.real, x.imaginary) if isinstance(x, RealImaginaryPair) else x
    return jax.tree.map(merge, ax, is_leaf=lambda x: isinstance(x, RealImaginaryPair))

