"""Stochastic rounding driven by a counter-based hash, shared by the low-precision storages and by
round_params_stochastically.

Rounding :math:`x` down to a coarser grid loses every change smaller than half
a grid step: a second moment that decays by 0.1% a step never decays. Rounding
up with probability equal to the fraction of the step that :math:`x` covers
keeps the stored value unbiased, :math:`E[\\mathrm{round}(x)] = x`.

The random numbers are a hash of the step count, of each value's float32 bits
and (where the caller gives one) of a position, so that

* they change from step to step: a value that stays the same is not rounded
  the same way forever;
* they depend on nothing a layout changes: jit, vmap, sharded and
  ``shard_map`` runs draw the same numbers for the same element;
* nothing is carried in the state but the step count the optimizer already keeps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _mix(h: jax.Array) -> jax.Array:
    # A 32-bit integer finaliser (xor-shift, multiply): each input bit flips each output bit with probability ~1/2.
    h = h ^ (h >> 16)
    h = h * np.uint32(0x7FEB352D)
    h = h ^ (h >> 15)
    h = h * np.uint32(0x846CA68B)
    return h ^ (h >> 16)


def random_bits(value_bits: jax.Array, step: jax.typing.ArrayLike, position: jax.Array | None = None) -> jax.Array:
    """Uniform ``uint32`` numbers, a hash of (step, the value's bits, position), one per element."""
    key = _mix(jnp.asarray(step).astype(jnp.uint32) * np.uint32(0x9E3779B9) + np.uint32(0x6A09E667))
    h = value_bits.astype(jnp.uint32) ^ key
    if position is not None:
        h = h ^ position.astype(jnp.uint32)  # the mixer spreads the low bits it changes over the whole word
    return _mix(h)


def to_bfloat16(x: jax.Array, step: jax.typing.ArrayLike) -> jax.Array:
    """``x`` rounded stochastically to bfloat16: up with probability equal to the dropped fraction.

    Adding a random integer below the last kept bit to the float32 bit pattern
    and clearing the 16 dropped bits rounds the magnitude up exactly that
    often (a carry moves into the exponent as it should). Non-finite values
    are converted as they are.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxopt_zoo import rounding
        >>> x = jnp.float32(1 + 2**-10)  # an eighth of the way from bfloat16's 1 to 1 + 2**-7
        >>> draws = jax.vmap(lambda step: rounding.to_bfloat16(x, step))(jnp.arange(1000)).astype(jnp.float32)
        >>> sorted(set(draws.tolist())), round(float(draws.mean()), 3)  # unbiased: 1 + 2**-10 = 1.00098
        ([1.0, 1.0078125], 1.001)
    """
    x = jnp.asarray(x, jnp.float32)
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    noise = random_bits(bits, step) >> 16
    rounded = jax.lax.bitcast_convert_type((bits + noise) & np.uint32(0xFFFF0000), jnp.float32)
    return jnp.where(jnp.isfinite(x), rounded, x).astype(jnp.bfloat16)


def to_float16(x: jax.Array, step: jax.typing.ArrayLike) -> jax.Array:
    """``x`` rounded stochastically to float16: up (in magnitude) with probability equal to the dropped fraction.

    float16 keeps 11 significant bits down to :math:`2^{-14}` and a fixed
    spacing of :math:`2^{-24}` below it, so the dropped bits are not a fixed
    field of the float32 pattern as they are for bfloat16: the magnitude is cut
    to a multiple of its float16 spacing (exact in float32) and moved up one
    spacing when a 24-bit uniform number falls below the dropped fraction. A
    magnitude moved up to :math:`2^{16}` is infinite, as the next float16 would
    be; non-finite values are converted as they are.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxopt_zoo import rounding
        >>> x = jnp.float32(1 + 2**-13)  # an eighth of the way from float16's 1 to 1 + 2**-10
        >>> draws = jax.vmap(lambda step: rounding.to_float16(x, step))(jnp.arange(10000)).astype(jnp.float32)
        >>> sorted(set(draws.tolist())), round(float(draws.mean()) - 1, 5)  # unbiased: 2**-13 = 0.00012
        ([1.0, 1.0009765625], 0.00012)
    """
    x = jnp.asarray(x, jnp.float32)
    magnitude = jnp.abs(x)
    _, exponent = jnp.frexp(jnp.where(magnitude > 0, magnitude, 1.0))  # magnitude in [2**(exponent-1), 2**exponent)
    spacing = jnp.ldexp(jnp.float32(1), jnp.maximum(exponent - 1, -14) - 10)
    low = jnp.floor(magnitude / spacing) * spacing
    uniform = (random_bits(jax.lax.bitcast_convert_type(x, jnp.uint32), step) >> 8).astype(jnp.float32) * 2.0**-24
    rounded = low + jnp.where(uniform < (magnitude - low) / spacing, spacing, 0.0)
    rounded = jnp.where(rounded >= 2.0**16, jnp.inf, rounded)
    return jnp.where(jnp.isfinite(x), jnp.copysign(rounded, x), x).astype(jnp.float16)


@jax.custom_jvp
def _straight_through(value: jax.Array, rounded: jax.Array) -> jax.Array:
    return rounded


# The output through _straight_through again, so that its derivative is the identity at every order (returning
# primals[1] here left second derivatives to the bit operations: 0).
_straight_through.defjvp(lambda primals, tangents: (_straight_through(*primals), tangents[0]))
# Traced once per shape: JAX traces a custom_jvp function again at every call (a step has one per leaf).
_straight_through_traced = jax.jit(_straight_through, inline=True)


def straight_through(value: jax.Array, rounded: jax.Array) -> jax.Array:
    """``rounded``, differentiated as ``value`` (a straight-through estimator, of ``value``'s shape and dtype).

    A stochastic rounding's expectation is the value itself, so its derivative
    is the identity (at every order); the bit operations that compute it have
    none (a gradient taken through them is silently 0).

    Args:
        value: what was rounded, in the dtype of ``rounded``.
        rounded: its rounding.
    """
    return _straight_through_traced(value, rounded)
