"""Resilient backpropagation: per-element step sizes adapted by the sign of the gradient (Rprop).

Two conventions of the same rule: :func:`scale_by_resilient_step` is PyTorch's
(``torch.optim.Rprop``), :func:`scale_by_rprop` is Optax's (``optax.scale_by_rprop``,
one step late). They share their option checks (:func:`check_options`) and
their state's layout: per-element step sizes (non-negative) and what is kept
of the previous step (signed), each with a storage option.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_zoo import tree, validation
from jaxopt_zoo.base import GradientTransformation, Updates, expects_state, init_only
from jaxopt_zoo.storage import StateDtype, resolve, with_storage

__all__ = ["ScaleByResilientStepState", "ScaleByRpropState", "scale_by_resilient_step", "scale_by_rprop"]


# Said by every Rprop's refusal of complex params.
COMPLEX_WHY = "Rprop adapts each step size to the sign of each coordinate, which a complex number does not have"


def check_options(owner: str, rate, minus, plus, smallest, largest) -> None:
    """Rprop's options, each a ``(name, value)`` pair, named as the caller names them: a constant initial
    step size >= 0, 0 < minus < 1 < plus, and 0 <= smallest <= largest, all finite."""
    if callable(rate[1]):
        raise ValueError(
            f"{owner}: {rate[0]} is Rprop's initial step size, read once at init, so a schedule "
            f"({rate[1]!r}) cannot act; pass a number (to scale the steps over time, chain "
            "jz.scale_by_schedule(...) after the optimizer)."
        )
    validation.non_negative(owner, *rate)
    low, high = validation.real_scalar(owner, *minus), validation.real_scalar(owner, *plus)
    if low is not None and not 0 < low < 1:
        raise ValueError(f"{owner}: {minus[0]} must be in (0, 1), got {minus[1]!r}.")
    if high is not None and not high > 1:
        raise ValueError(f"{owner}: {plus[0]} must be > 1, got {plus[1]!r}.")
    bottom, top = validation.non_negative(owner, *smallest), validation.non_negative(owner, *largest)
    if bottom is not None and top is not None and bottom > top:
        raise ValueError(f"{owner}: {smallest[0]} must be <= {largest[0]}, got {smallest[1]!r} > {largest[1]!r}.")


class ScaleByResilientStepState(NamedTuple):
    """Per-element step sizes, the sign of the previous (masked) gradient, and ``count``
    (see :func:`~jaxopt_zoo.storage.with_storage`)."""

    step_size: Updates
    prev: Updates
    count: jax.Array | None = None


@init_only("learning_rate")
def scale_by_resilient_step(
    learning_rate: jax.typing.ArrayLike = 1e-2,
    eta_minus: jax.typing.ArrayLike = 0.5,
    eta_plus: jax.typing.ArrayLike = 1.2,
    min_step_size: jax.typing.ArrayLike = 1e-6,
    max_step_size: jax.typing.ArrayLike = 50.0,
    *,
    step_size_dtype: StateDtype = None,
    prev_dtype: StateDtype = None,
) -> GradientTransformation:
    """Rprop's step (Riedmiller & Braun 1993, in PyTorch's form): a per-element step size times the gradient's sign.

    With :math:`s_t = \\operatorname{sign}(g_t) \\operatorname{sign}(g'_{t-1})`, :math:`g'_0 = 0`,
    :math:`\\Delta_0 = \\gamma` (``learning_rate``):

    .. math::

        \\Delta_t &= \\operatorname{clip}\\big(\\Delta_{t-1} \\cdot
        (\\eta_+ \\text{ if } s_t > 0, \\ \\eta_- \\text{ if } s_t < 0, \\ 1 \\text{ else}),
        \\Delta_{\\min}, \\Delta_{\\max}\\big),

        g'_t &= 0 \\text{ if } s_t < 0 \\text{ else } g_t,

        u_t &= \\Delta_t \\operatorname{sign}(g'_t).

    Chain ``scale(-1.0)`` after it to descend (it already holds the step sizes;
    no learning-rate scaling follows). The clip is applied every step, so an
    initial step outside :math:`[\\Delta_{\\min}, \\Delta_{\\max}]` is clipped at
    the first step, as PyTorch does. A NaN gradient makes its step size NaN, as in PyTorch.
    The rule is for real numbers: complex params raise at ``init``, naming this function; wrap it
    in :func:`~jaxopt_zoo.split_real_and_imaginary` (as :func:`jaxopt_zoo.torch.rprop` does).

    Deviations. From PyTorch (``torch.optim.Rprop``, see :func:`jaxopt_zoo.torch.rprop`):
    ``prev`` keeps :math:`\\operatorname{sign}(g'_t)` instead of :math:`g'_t`, and
    :math:`s_t` is the product of two signs instead of the sign of the product
    :math:`g_t g'_{t-1}`. They differ only where that product underflows to 0
    (PyTorch then keeps the step size; here it grows or shrinks) or is
    :math:`\\infty \\cdot 0` (an infinite gradient: PyTorch's step size turns NaN
    for good; here it is kept), and the signs
    -1, 0, 1 survive every storage exactly (``prev_dtype=jnp.bfloat16`` or
    :class:`~jaxopt_zoo.quantization.Blockwise8Bit` lose nothing). Also stricter:
    :math:`0 \\le \\Delta_{\\min} \\le \\Delta_{\\max}`, both finite.
    From ``optax.scale_by_rprop`` (0.2.8), same arguments, so this is not named like it:
    Optax returns the *previous* step's update (one step late: its first update is 0;
    google-deepmind/optax pull request #1725), does not clip the step size where
    :math:`s_t = 0`, and keeps :math:`\\Delta_t \\operatorname{sign}(g'_t)` in its state.
    Where :math:`\\gamma \\in [\\Delta_{\\min}, \\Delta_{\\max}]` and
    :math:`\\Delta_{\\min} > 0`, Optax's step sizes equal these, and its update at
    step :math:`t + 1` is this :math:`u_t`, zeroed where :math:`s_{t+1} < 0`.

    Args:
        learning_rate: the initial step size :math:`\\gamma \\ge 0` (a number; read at init only,
            so a schedule raises and an injected value acts only through ``init``).
        eta_minus: :math:`0 < \\eta_- < 1`, the factor applied where the gradient's sign flipped.
        eta_plus: :math:`\\eta_+ > 1`, the factor applied where it kept its sign.
        min_step_size: :math:`\\Delta_{\\min} \\ge 0`.
        max_step_size: :math:`\\Delta_{\\max} \\ge \\Delta_{\\min}`.
        step_size_dtype: storage of the step sizes (non-negative): ``None`` (the params'
            dtype), a floating dtype, :class:`~jaxopt_zoo.storage.StochasticBF16` or
            :class:`~jaxopt_zoo.quantization.Blockwise8Bit`.
        prev_dtype: storage of the previous sign (signed), as for ``step_size_dtype``;
            any of them keeps it exactly.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.chain(jz.scale_by_resilient_step(0.1), jz.scale(-1.0))
        >>> state = tx.init(jnp.zeros(2))
        >>> u, state = tx.update(jnp.array([3.0, -0.5]), state)
        >>> u  # the first step is the initial step size against the gradient's sign
        Array([-0.1,  0.1], dtype=float32)
        >>> u, state = tx.update(jnp.array([1.0, 2.0]), state)
        >>> u  # kept its sign: 0.1 * 1.2; flipped: 0.05, and no step
        Array([-0.12, -0.  ], dtype=float32)

    References:
        Riedmiller & Braun, "A Direct Adaptive Method for Faster Backpropagation Learning:
        The RPROP Algorithm", IEEE ICNN 1993.
    """
    owner = "scale_by_resilient_step"
    check_options(
        owner, ("learning_rate", learning_rate), ("eta_minus", eta_minus), ("eta_plus", eta_plus),
        ("min_step_size", min_step_size), ("max_step_size", max_step_size),
    )
    step_size_dtype = resolve(owner, "step_size_dtype", step_size_dtype)
    prev_dtype = resolve(owner, "prev_dtype", prev_dtype)

    def init(params):
        validation.refuse_complex(owner, params, COMPLEX_WHY)
        return ScaleByResilientStepState(tree.moments_like(params, learning_rate), tree.moments_like(params))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.step_size, "the step sizes (state.step_size)")
        sign = tree.map_updates(lambda g, prev: jnp.sign(tree.widen(g)) * jnp.sign(prev), updates, state.prev)
        # NaN where the gradient is NaN (sign NaN), as PyTorch's factor stays NaN there.
        factor = lambda s: jnp.where(s > 0, eta_plus, jnp.where(s < 0, eta_minus, jnp.where(s == 0, 1.0, s)))
        # Two exact no-ops keep a donated step in place. Dividing by one (NaN where s is, and the size is
        # NaN there already) makes the new size a division, which XLA computes once instead of again
        # inside the parameter update (that recomputation kept the old state alive: a copy of each).
        # Reading the new size for the sign (never negative) orders the size's write before the sign's.
        step_size = tree.map_state(
            lambda s, size: jnp.clip(size * factor(s).astype(size.dtype), min_step_size, max_step_size)
            / jnp.where(s == s, 1, s).astype(size.dtype),
            sign,
            state.step_size,
        )
        prev = tree.map_state(
            lambda s, _, g, size: jnp.where((s < 0) | (size < 0), 0, jnp.sign(tree.widen(g))),
            sign, state.prev, updates, step_size,
        )
        steps = tree.map_updates(lambda g, size, direction: (size * direction).astype(g.dtype), updates, step_size, prev)
        return steps, ScaleByResilientStepState(step_size, prev, state.count)

    tx = with_storage(
        GradientTransformation(init, update), signed={"prev": prev_dtype}, non_negative={"step_size": step_size_dtype}
    )
    return expects_state(owner, tx, ScaleByResilientStepState)


class ScaleByRpropState(NamedTuple):
    """Optax's Rprop state: per-element step sizes, the previous step :math:`\\Delta \\operatorname{sign}(g)`
    (still to be returned), and ``count`` (see :func:`~jaxopt_zoo.storage.with_storage`)."""

    step_sizes: Updates
    prev_updates: Updates
    count: jax.Array | None = None


@init_only("learning_rate")
def scale_by_rprop(
    learning_rate: jax.typing.ArrayLike,
    eta_minus: jax.typing.ArrayLike = 0.5,
    eta_plus: jax.typing.ArrayLike = 1.2,
    min_step_size: jax.typing.ArrayLike = 1e-6,
    max_step_size: jax.typing.ArrayLike = 50.0,
    *,
    step_size_dtype: StateDtype = None,
    prev_dtype: StateDtype = None,
) -> GradientTransformation:
    """Rprop (Riedmiller & Braun 1993) as ``optax.scale_by_rprop`` computes it: each step is returned one step late.

    With :math:`s_t = g_t \\, p_{t-1}` (the gradient times the previous step),
    :math:`\\Delta_0 = \\gamma` (``learning_rate``) and :math:`p_0 = 0`:

    .. math::

        \\Delta_t = \\begin{cases} \\Delta_{t-1} & s_t = 0 \\\\
        \\operatorname{clip}(\\eta_+ \\Delta_{t-1}, \\Delta_{\\min}, \\Delta_{\\max}) & s_t > 0 \\\\
        \\operatorname{clip}(\\eta_- \\Delta_{t-1}, \\Delta_{\\min}, \\Delta_{\\max}) & \\text{otherwise,}
        \\end{cases} \\qquad
        p_t = \\begin{cases} 0 & s_t < 0 \\\\ \\Delta_t \\operatorname{sign}(g_t) & \\text{else,} \\end{cases}
        \\qquad
        u_t = \\begin{cases} 0 & s_t < 0 \\\\ p_{t-1} & \\text{else.} \\end{cases}

    The update :math:`u_t` is the *previous* step :math:`p_{t-1}`, so the first
    update is 0 and each step acts one gradient late. That is Optax 0.2.8's code
    (an open fix: google-deepmind/optax pull request #1725), kept here because
    this name promises Optax's numbers; :func:`scale_by_resilient_step` is the
    rule without the lag (PyTorch's). A NaN product :math:`s_t` (a NaN gradient)
    shrinks its step size and makes :math:`p_t` NaN, as in Optax. Chain
    ``scale(-1.0)`` after it to descend (:func:`jaxopt_zoo.rprop` does).

    Numerically identical to ``optax.scale_by_rprop``: same arguments and
    defaults, and the same state leaves (``step_sizes``, ``prev_updates``).
    Deviations from Optax: a ``None`` update keeps its state; the options are
    checked (:math:`\\gamma \\ge 0` a number, :math:`0 < \\eta_- < 1 < \\eta_+`,
    :math:`0 \\le \\Delta_{\\min} \\le \\Delta_{\\max}`, all finite); the
    storage options ``step_size_dtype`` and ``prev_dtype`` are additions; a
    float16 param's state is float32 (see :func:`jaxopt_zoo.tree.moments_like`),
    and the updates keep the gradient's dtype; complex params, which have no sign, raise at
    ``init`` naming this function (Optax fails at the first update inside ``jnp.clip``): wrap
    it in :func:`~jaxopt_zoo.split_real_and_imaginary`.

    Args:
        learning_rate: the initial step size :math:`\\gamma \\ge 0` (a number; read at init only).
        eta_minus: :math:`0 < \\eta_- < 1`, the factor applied where the gradient's sign flipped.
        eta_plus: :math:`\\eta_+ > 1`, the factor applied where it kept its sign.
        min_step_size: :math:`\\Delta_{\\min} \\ge 0`.
        max_step_size: :math:`\\Delta_{\\max} \\ge \\Delta_{\\min}`.
        step_size_dtype: storage of the step sizes (non-negative): ``None`` (the params'
            dtype), a floating dtype, :class:`~jaxopt_zoo.storage.StochasticBF16` or
            :class:`~jaxopt_zoo.quantization.Blockwise8Bit`.
        prev_dtype: storage of the previous step :math:`p_t` (signed), as for ``step_size_dtype``.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.transforms.rprop.scale_by_rprop(0.1)
        >>> state = tx.init(jnp.zeros(2))
        >>> u, state = tx.update(jnp.array([3.0, -0.5]), state)
        >>> u  # one step late: nothing yet
        Array([0., 0.], dtype=float32)
        >>> u, state = tx.update(jnp.array([1.0, 2.0]), state)
        >>> u  # the first step; where the sign flipped now it is dropped
        Array([0.1, 0. ], dtype=float32)

    References:
        Riedmiller & Braun, "A Direct Adaptive Method for Faster Backpropagation Learning:
        The RPROP Algorithm", IEEE ICNN 1993.
    """
    owner = "scale_by_rprop"
    check_options(
        owner, ("learning_rate", learning_rate), ("eta_minus", eta_minus), ("eta_plus", eta_plus),
        ("min_step_size", min_step_size), ("max_step_size", max_step_size),
    )
    step_size_dtype = resolve(owner, "step_size_dtype", step_size_dtype)
    prev_dtype = resolve(owner, "prev_dtype", prev_dtype)

    def init(params):
        validation.refuse_complex(owner, params, COMPLEX_WHY)
        return ScaleByRpropState(tree.moments_like(params, learning_rate), tree.moments_like(params))

    def adapted(s, size):  # kept where s = 0 (unclipped), grown or shrunk and clipped elsewhere
        grown = jnp.clip(size * jnp.where(s > 0, eta_plus, eta_minus), min_step_size, max_step_size)
        return jnp.where(s == 0, size, grown)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        tree.check_same_structure(owner, updates, state.step_sizes, "the step sizes (state.step_sizes)")
        agreement = tree.map_updates(lambda g, prev: tree.widen(g) * prev, updates, state.prev_updates)
        step_sizes = tree.map_state(adapted, agreement, state.step_sizes)
        steps = tree.map_state(
            lambda s, _, g, size: jnp.where(s < 0, 0, size * jnp.sign(tree.widen(g))),
            agreement, state.prev_updates, updates, step_sizes,
        )
        late = tree.map_updates(
            lambda s, prev, g: jnp.where(s < 0, 0, prev).astype(g.dtype), agreement, state.prev_updates, updates
        )
        return late, ScaleByRpropState(step_sizes, steps, state.count)

    tx = with_storage(
        GradientTransformation(init, update), signed={"prev_updates": prev_dtype}, non_negative={"step_sizes": step_size_dtype}
    )
    return expects_state(owner, tx, ScaleByRpropState)
