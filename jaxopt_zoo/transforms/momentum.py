"""Momentum: heavy-ball traces of past updates, in Optax's and PyTorch's forms."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, Updates, expects_state, safe_increment, zero_count
from jaxopt_zoo.storage import StateDtype, resolve, with_storage


class TraceState(NamedTuple):
    """The momentum buffer :math:`b`, shaped like the params; ``count``: see :func:`~jaxopt_zoo.storage.with_storage`."""

    trace: Updates
    count: jax.Array | None = None


class DampenedTraceState(NamedTuple):
    """The momentum buffer and the step count that tells the first step apart."""

    count: jax.Array
    trace: Updates


def trace(
    decay: jax.typing.ArrayLike,
    nesterov: bool = False,
    dampening: jax.typing.ArrayLike = 0.0,
    accumulator_dtype: StateDtype = None,
    *,
    idle_at_zero: bool = False,
) -> GradientTransformation:
    """Heavy-ball momentum (Polyak 1964), with PyTorch's dampening and Nesterov options.

    With decay :math:`\\mu` and dampening :math:`\\tau`, PyTorch's rule
    (``torch.optim.SGD``) is

    .. math::

        b_1 = g_1, \\qquad b_t = \\mu \\, b_{t-1} + (1 - \\tau) \\, g_t \\quad (t > 1), \\qquad
        u_t = \\begin{cases} g_t + \\mu \\, b_t & \\text{nesterov} \\\\ b_t & \\text{otherwise.} \\end{cases}

    With :math:`\\tau` given as the Python number 0 (the default) this is
    exactly ``optax.trace``, :math:`b_t = g_t + \\mu b_{t-1}` from :math:`b_0 = 0`,
    and the state is the same ``TraceState``. Any other ``dampening`` (a
    non-zero number, or an array, which may be injected or traced) takes the
    dampened rule, whose state also counts steps (``DampenedTraceState``)
    because the first step is not dampened.

    Deviations from Optax: ``dampening`` is the third positional argument
    (Optax's third is ``accumulator_dtype``: pass it by keyword); the buffer is
    stored in the state's dtype (the params' dtype, or ``accumulator_dtype``)
    even when gradients arrive in another dtype; a ``None`` update leaves its
    buffer unchanged. Deviations from PyTorch: ``nesterov`` with dampening is
    computed as written above (``torch.optim.SGD`` refuses it); the first-step
    rule counts optimizer steps, so a parameter whose first gradient comes
    after step 1 is dampened at once (PyTorch starts its buffer undamped).

    Args:
        decay: the momentum :math:`\\mu \\ge 0`.
        nesterov: return :math:`g_t + \\mu b_t` (Sutskever et al. 2013, in PyTorch's form).
        dampening: :math:`\\tau \\in [0, 1]`, PyTorch's ``dampening``.
        accumulator_dtype: storage of the buffer: ``None`` (the params' dtype), a
            floating dtype, or :class:`~jaxopt_zoo.quantization.Blockwise8Bit`.
        idle_at_zero: ``True``: on a step whose ``decay`` is 0 (an array, e.g. injected, that is 0 on some
            steps), return the gradient and leave the buffer and its step count as they are, as PyTorch's SGD and
            RMSprop skip their buffers then (so that a dampened buffer starts undamped on the first step with a
            non-zero decay). ``False`` (Optax's rule): the buffer becomes the gradient there.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.trace(0.9, dampening=0.5)
        >>> state = tx.init(jnp.zeros(1))
        >>> for _ in range(3):  # b = 1 (undamped), 0.9 * 1 + 0.5 * 1, 0.9 * 1.4 + 0.5 * 1
        ...     updates, state = tx.update(jnp.ones(1), state)
        ...     print(updates)
        [1.]
        [1.4]
        [1.76]
        >>> sgd_momentum = jz.chain(jz.trace(0.9), jz.scale_by_learning_rate(0.1))

    References:
        Polyak, "Some methods of speeding up the convergence of iteration methods", 1964.
        Sutskever et al., "On the importance of initialization and momentum in deep learning", ICML 2013.
    """
    validation.non_negative("trace", "decay", decay)
    validation.flag("trace", "nesterov", nesterov)
    validation.fraction("trace", "dampening", dampening)
    validation.flag("trace", "idle_at_zero", idle_at_zero)
    accumulator_dtype = resolve("trace", "accumulator_dtype", accumulator_dtype)
    # Decided by type, not value, so that init (concrete) and update (traced,
    # e.g. under inject_hyperparams) agree on the state's structure.
    dampened = not validation.is_literal_zero(dampening)

    def init(params):
        buffer = tree.moments_like(params)
        return DampenedTraceState(zero_count(), buffer) if dampened else TraceState(buffer)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure("trace", updates, state.trace, "the momentum buffer (state.trace)")
        if dampened:
            first = state.count == 0
            accumulate = lambda g, b: jnp.where(first, g, (1 - dampening) * g + decay * b)
        else:
            accumulate = lambda g, b: g + decay * b
        step = lambda g, b: g + decay * b if nesterov else b  # noqa: E731
        if idle_at_zero:  # selected element by element, in the kernels that form the buffer and the step
            idle = jnp.asarray(decay) == 0
            accumulate = lambda g, b, accumulate=accumulate: jnp.where(idle, b, accumulate(g, b))
            step = lambda g, b, step=step: jnp.where(idle, g, step(g, b))
        buffer = tree.map_state(accumulate, updates, state.trace)
        updates = tree.map_updates(step, updates, buffer)
        if dampened:
            count = safe_increment(state.count)
            return updates, DampenedTraceState(jnp.where(idle, state.count, count) if idle_at_zero else count, buffer)
        return updates, TraceState(buffer)

    tx = with_storage(GradientTransformation(init, update), signed={"trace": accumulator_dtype})
    return expects_state("trace", tx, DampenedTraceState if dampened else TraceState)


def nesterov(decay: jax.typing.ArrayLike, accumulator_dtype: StateDtype = None) -> GradientTransformation:
    """Nesterov accelerated gradient in PyTorch's form (``SGD(nesterov=True)``).

    .. math::

        b_t = \\mu \\, b_{t-1} + g_t, \\quad b_0 = 0, \\qquad u_t = g_t + \\mu \\, b_t.

    This is :func:`trace` with ``nesterov=True``; PyTorch allows no dampening here.

    Args:
        decay: the momentum :math:`\\mu \\ge 0`.
        accumulator_dtype: storage of the buffer, as in :func:`trace`.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.chain(jz.nesterov(0.9), jz.scale_by_learning_rate(0.1))

    References:
        Nesterov, "A method for solving the convex programming problem with convergence rate O(1/k^2)", 1983.
        Sutskever et al., "On the importance of initialization and momentum in deep learning", ICML 2013.
    """
    validation.non_negative("nesterov", "decay", decay)  # named here, not as trace's
    validation.state_dtypes("nesterov", accumulator_dtype=accumulator_dtype)
    return trace(decay, nesterov=True, accumulator_dtype=accumulator_dtype)


class EmaState(NamedTuple):
    """The step count and the moving average ``ema``, shaped like the params (Optax's ``EmaState``)."""

    count: jax.Array
    ema: Updates


def ema(decay: jax.typing.ArrayLike, debias: bool = True, accumulator_dtype: StateDtype = None) -> GradientTransformation:
    """An exponential moving average of the updates, bias-corrected or not.

    .. math::

        m_t = \\beta m_{t-1} + (1 - \\beta) g_t, \\quad m_0 = 0, \\qquad
        u_t = m_t / (1 - \\beta^t) \\ (\\texttt{debias=True}) \\ \\text{or} \\ m_t.

    Unlike :func:`trace` (:math:`b_t = \\mu b_{t-1} + g_t`), the new update is
    weighted by :math:`1 - \\beta`. Numerically identical to ``optax.ema``, with
    the same state; ``accumulator_dtype`` also takes
    :class:`~jaxopt_zoo.storage.StochasticBF16` and
    :class:`~jaxopt_zoo.quantization.Blockwise8Bit`, and the update is formed
    from the average before it is stored, as in Optax.

    Args:
        decay: :math:`\\beta \\in [0, 1)`.
        debias: divide by :math:`1 - \\beta^t`, so that early averages are not pulled towards 0.
        accumulator_dtype: storage of the average: a storage (see :mod:`jaxopt_zoo.storage`).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.ema(0.9, debias=False)
        >>> updates, state = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
        >>> updates  # 0.1 * 2; with debias=True it would be 2.0
        Array([0.2], dtype=float32)
    """
    validation.decay_rate("ema", "decay", decay)
    validation.flag("ema", "debias", debias)
    accumulator_dtype = resolve("ema", "accumulator_dtype", accumulator_dtype)

    def init(params):
        return EmaState(zero_count(), tree.moments_like(params))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure("ema", updates, state.ema, "the moving average (state.ema)")
        average = tree.update_moment(updates, state.ema, decay, 1)
        count = safe_increment(state.count)
        out = tree.bias_correction(average, decay, count) if debias else average
        return tree.map_updates(lambda g, m: m, updates, out), EmaState(count, average)

    tx = with_storage(GradientTransformation(init, update), signed={"ema": accumulator_dtype})
    return expects_state("ema", tx, EmaState)
