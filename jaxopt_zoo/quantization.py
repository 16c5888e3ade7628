"""8-bit optimizer state: moments stored as 8-bit codes with one scale per block.

:class:`Blockwise8Bit` is a storage (see :mod:`jaxopt_zoo.storage`) that any
``mu_dtype``, ``nu_dtype`` or ``accumulator_dtype`` accepts:

* the last axis is cut into blocks of equal length :math:`L`, and each block
  keeps its largest finite magnitude :math:`s` in float32 (Dettmers et al.
  2022, block-wise absmax);
* each element keeps one byte, a small floating-point code of :math:`x / s`:
  a sign, 4 exponent bits and 3 mantissa bits for moments that can be negative
  (first moments, momentum buffers), 5 exponent bits and 3 mantissa bits for
  moments that cannot (second moments, sums of squares). A positive
  non-negative moment never rounds to 0, so no denominator collapses to ``eps``;
* the code rounds stochastically between its two neighbouring values, up with
  probability equal to the fraction of the gap (:mod:`jaxopt_zoo.rounding`:
  the random source is a hash of the step count, the value and its position
  in the block). Rounding to the nearest value would lose every change smaller
  than half a gap (3% to 6%): a second moment that decays by 0.1% a step would
  never decay. Stochastic rounding keeps the stored moment unbiased at the cost
  of up to one gap (12.5%) of error per rounding instead of half of one;
* a non-finite element is stored as a reserved code (NaN in a signed moment,
  :math:`+\\infty` in a non-negative one) and leaves its block's scale to the
  finite elements, so it never turns its neighbours NaN. An outlier that is
  finite does set its block's scale: elements below the smallest code,
  :math:`1.25 \\cdot 2^{-16}` of it (signed) or :math:`1.375 \\cdot 2^{-32}`
  (non-negative), read back as 0 or that code until it decays (signed: rounded
  stochastically between the two, so mostly 0; non-negative: that code).
  After a gradient of 3e19, Adam's second moment of that element is infinite
  and its update 0, as with float32 moments, but the first moments of its
  block's other elements read back as 0 for a few hundred steps, so their
  updates are 0 too (float32 keeps them). That is the price of one scale per
  block; ``apply_if_finite`` skips such a step altogether.

A stored leaf is one array, ``int8`` (signed) or ``uint8`` (non-negative), of
shape ``param.shape[:-1] + (G, L + 4, q)``: the last axis is cut into :math:`G`
groups (one per shard it may be split into, see below) of :math:`q` blocks;
each group holds its codes in the param's order (the first :math:`L` rows of
:math:`q` bytes), then its blocks' float32 scales as 4 rows of bytes. One
array is what Flax NNX, Orbax, ``vmap`` and ``init_sharded`` carry without
knowing anything about it; the group axis takes the sharding of the param's
last axis. Codes contiguous in the param's order are what lets the compiler
read them with vector loads (interleaving each block's scale with its codes
made the CPU step about 10% slower). A zero-filled moment is created behind an
optimization barrier: XLA would otherwise encode the constant at compile time,
element by element (four minutes for a 16M-element moment under ``jax.jit``).

So Adam's two moments take :math:`2 + 8 / L` bytes per parameter instead of 8.
The moment is decoded to float32, updated, and encoded again inside the same
jitted update; the update direction is computed from the float32 moments
before they are encoded, as in the paper.

**Which leaves, which blocks.** A leaf stays float32 (or wider, like its
param) when it has fewer than ``min_size`` elements, is a scalar, or its last
axis :math:`n` has no divisor from 16 to ``block_size`` that fits the rule
below (an ``(N, 1)`` param, a prime :math:`n` above ``block_size``): there 8
bits would save little or cost more than float32. Otherwise :math:`G = \\gcd(n,
D)`, where :math:`D` is ``max_shards`` (default: ``jax.device_count()`` at
init), and :math:`L` is the largest divisor of :math:`n / G` that is at most
``block_size``. Every even split of the last axis over up to :math:`D`
devices then holds whole groups, so the default works on any mesh of this
machine, a step needs no communication, and sharded and single-device runs
store the same bits. (A (1024, 1024) param on 8 devices gets 8 groups of blocks
of 128, on one device one group of blocks of 256: restore a checkpoint onto the
same device count, or fix ``max_shards``. On a machine with many devices and
unsharded params, ``max_shards=1`` keeps blocks of up to ``block_size``.) On
Explicit mesh axes a split that does not hold whole groups raises, naming a
``max_shards`` that fits.

Deviation from the paper: its codes are "dynamic tree" values, a decimal
exponent and a linear fraction, looked up in a 256-entry table and rounded to
the nearest by a search. Ours are binary floats built with a few integer
operations and no lookup: neighbouring values are at most 12.5% apart at every
magnitude down to the smallest code, :math:`1.25 \\cdot 2^{-16}` (signed) or
:math:`1.375 \\cdot 2^{-32}` (non-negative) of the block's absmax. The table is
finer near the block's maximum (1.4% to 14% apart in its top decade) and
coarser below it (up to 56% apart between 1e-3 and 1e-2 of the maximum, more
further down). Rounded to nearest, the median error of Adam's update direction
is 2.2% with ours against 1.2% with the table when all elements of a block have
the same scale, and 2.4% against 11% when their scales spread over a decade
(``tests/test_quantization.py``).

Example:
    >>> import jax.numpy as jnp, jaxopt_zoo as jz
    >>> tx = jz.adamw(1e-3, mu_dtype=jz.Blockwise8Bit(max_shards=1), nu_dtype=jz.Blockwise8Bit(max_shards=1))
    >>> state = tx.init({"w": jnp.zeros((256, 1024)), "b": jnp.zeros(1024)})
    >>> state[0].mu["w"].dtype, state[0].mu["w"].shape, state[0].mu["b"].dtype
    (dtype('int8'), (256, 1, 260, 4), dtype('float32'))

References:
    Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise Quantization", ICLR 2022.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_zoo import rounding

_MANTISSA_BITS = 3
_SHIFT = 23 - _MANTISSA_BITS  # float32 mantissa bits dropped by the code
_SCALE_BYTES = 4
_SMALLEST_BLOCK = 16
# The code that marks a non-finite element: below the signed range, above the non-negative one.
_NON_FINITE = {True: -128, False: 255}
_TOP = {True: 127, False: 254}


def _code_offset(signed: bool) -> int:
    # Shifted float32 bits of 1.0 minus the largest code, so that 1.0 encodes to the top code.
    return (127 << _MANTISSA_BITS) - _TOP[signed]


def _float_of_bits(bits: int) -> float:
    return float(np.array(bits, np.int32).view(np.float32))


def encode(y: jax.Array, signed: bool, step: jax.typing.ArrayLike = 0, position: jax.Array | None = None) -> jax.Array:
    """8-bit codes of ``y`` with :math:`|y| \\le 1`: :math:`|y|` rounded stochastically to 3 mantissa bits.

    Adding a random integer below the last kept bit to the float32 bit pattern,
    then dropping the low bits, rounds up with probability equal to the dropped
    fraction. The random numbers hash ``step``, the bits and ``position``
    (:func:`jaxopt_zoo.rounding.random_bits`). Magnitudes below the smallest
    code round stochastically between 0 and it when ``signed``, up to it for a
    positive ``y`` when not; a non-finite ``y`` gives the reserved code.
    """
    magnitude = jnp.abs(y).astype(jnp.float32)
    if signed:
        # Below the smallest code its neighbours are 0 and it, but the bits round between it and the float below it
        # (whose code, 0, stands for 0). Moved into that gap in proportion, |y| rounds up with probability
        # |y| / smallest, as between any two codes.
        smallest, below = (_float_of_bits((_code_offset(signed) + k) << _SHIFT) for k in (1, 0))
        magnitude = jnp.where(magnitude < smallest, below + magnitude * ((smallest - below) / smallest), magnitude)
    bits = jax.lax.bitcast_convert_type(magnitude, jnp.int32)
    dither = (rounding.random_bits(bits, step, position) >> (32 - _SHIFT)).astype(jnp.int32)
    code = jnp.minimum(((bits + dither) >> _SHIFT) - _code_offset(signed), _TOP[signed])
    non_finite = bits >= 0x7F800000  # exponent bits all ones: an infinity or a NaN (a test on the bits we have)
    if signed:
        code = jnp.where(non_finite, _NON_FINITE[signed], jnp.where(y < 0, -code, code))
    else:
        code = jnp.where(non_finite, _NON_FINITE[signed], jnp.where(y > 0, jnp.maximum(code, 1), 0))
    return code.astype(jnp.int8 if signed else jnp.uint8)


def decode(codes: jax.Array, scale: jax.typing.ArrayLike = 1.0) -> jax.Array:
    """The float32 values of ``codes`` (``int8``: signed, ``uint8``: non-negative), in [-1, 1] times ``scale``.

    Reserved codes are non-finite whatever the scale: a block whose only non-zero elements are infinite has a scale of
    0, and its infinities must not read back as ``inf * 0 = NaN``.
    """
    signed = codes.dtype == jnp.int8
    code = codes.astype(jnp.int32)
    magnitude = jnp.abs(code) if signed else code
    value = jax.lax.bitcast_convert_type((magnitude + _code_offset(signed)) << _SHIFT, jnp.float32)
    value = jnp.where(magnitude == 0, 0.0, value)
    value = (jnp.where(code < 0, -value, value) if signed else value) * scale
    return jnp.where(code == _NON_FINITE[signed], jnp.nan if signed else jnp.inf, value)


def _block_absmax(blocks: jax.Array) -> jax.Array:
    """The largest finite magnitude of each block (the last axis), 0 for a block with none.

    One two-output reduction (the largest and the smallest value) rather than
    ``max(abs(x))``: on XLA:CPU the one-output max goes to a library kernel that
    cannot compute the moment update itself, so the new moments were written to
    memory and read back (a third of the 8-bit step's time); the two-output
    reduction stays an XLA fusion that recomputes the update as it reduces.
    """
    finite = jnp.where(jnp.isfinite(blocks), blocks, 0.0)
    largest, smallest = jax.lax.reduce(
        (finite, finite),
        (np.float32(-np.inf), np.float32(np.inf)),
        lambda a, b: (jnp.maximum(a[0], b[0]), jnp.minimum(a[1], b[1])),
        (blocks.ndim - 1,),
    )
    return jnp.maximum(largest, -smallest)


def _explicit_shards_of_last_axis(x: jax.Array) -> int:
    # Only Explicit mesh axes are visible in an array's type; under Auto axes XLA places the blocks.
    sharding = jax.typeof(x).sharding
    spec, mesh = getattr(sharding, "spec", None), getattr(sharding, "mesh", None)
    if not spec or mesh is None or len(spec) < x.ndim or spec[x.ndim - 1] is None:
        return 1
    names = spec[x.ndim - 1]
    return math.prod(mesh.shape[name] for name in ((names,) if isinstance(names, str) else names))


def _blocked(x: jax.Array, groups: int, length: int) -> jax.Array:
    # (..., n) -> (..., groups, n / (groups * length), length): the blocks of each group in order.
    n = x.shape[-1]
    shards = _explicit_shards_of_last_axis(x)
    if shards > 1 and groups % shards:
        raise ValueError(
            f"Blockwise8Bit: the last axis of a {x.shape} moment is split into {shards} shards of "
            f"{n / shards:g} elements, but its 8-bit state is laid out for even splits into at most {groups}, "
            f"so blocks would cross shards. Choose Blockwise8Bit(max_shards={shards}) or a multiple of it "
            "(if the last axis divides evenly), or keep this param's state in float32 (a dtype, or jz.partition)."
        )
    return x.reshape(*x.shape[:-1], groups, n // (groups * length), length)


def quantize(x: jax.Array, groups: int, length: int, signed: bool, step: jax.typing.ArrayLike = 0) -> jax.Array:
    """``x`` encoded in blocks of ``length`` elements of its last axis, laid out in ``groups`` groups.

    ``groups * length`` must divide the last axis :math:`n`. Returns the stored
    leaf: ``int8`` (``signed``) or ``uint8``, shaped ``x.shape[:-1] + (groups,
    length + 4, q)`` with :math:`q = n / (\\text{groups} \\cdot \\text{length})`
    blocks per group: each group's codes, in the param's order, then its
    blocks' scales as 4 rows of bytes.
    """
    blocks = _blocked(x.astype(jnp.float32), groups, length)
    scales = _block_absmax(blocks)
    inverse = jnp.where(scales > 0, 1 / scales, 0.0)[..., None]
    position = jax.lax.broadcasted_iota(jnp.int32, blocks.shape, blocks.ndim - 1)
    codes = encode(blocks * inverse, signed, step, position)
    codes = codes.reshape(*codes.shape[:-2], length, codes.shape[-2])  # the same bytes, in rows of q
    scale_bytes = jnp.swapaxes(jax.lax.bitcast_convert_type(scales, codes.dtype), -1, -2)
    return jnp.concatenate([codes, scale_bytes], axis=-2)


def unpack(stored: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(codes, scales)`` of a stored leaf: codes shaped ``(..., num_blocks, L)``, float32 scales ``(..., num_blocks)``."""
    *outer, groups, rows, per_group = stored.shape
    length = rows - _SCALE_BYTES
    codes = stored[..., :length, :].reshape(*outer, groups * per_group, length)
    scale_bytes = jnp.swapaxes(stored[..., length:, :], -1, -2)
    return codes, jax.lax.bitcast_convert_type(scale_bytes, jnp.float32).reshape(*outer, groups * per_group)


def dequantize(stored: jax.Array) -> jax.Array:
    """The float32 array, shaped like the param, that a stored leaf stands for."""
    codes, scales = unpack(stored)
    values = decode(codes, scales[..., None])
    return values.reshape(*values.shape[:-2], values.shape[-2] * values.shape[-1])


# The storage's entry points, each one compiled program per leaf shape. Called outside jit (an eager init, as
# nnx.Optimizer makes, or an eager step) the functions above would compile each of their ~20 operations for each
# shape: ten 8-bit leaves of different shapes took 25 s to initialise (XLA defaults). Under jit they are inlined.
_quantize = jax.jit(quantize, static_argnums=(1, 2, 3))
_dequantize = jax.jit(dequantize)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _quantize_initial(value: jax.Array, groups: int, length: int, signed: bool) -> jax.Array:
    # The initial value is usually a constant (zeros): without the barrier XLA would encode it at compile time,
    # element by element in its constant folder (minutes for a 16M-element moment under jit).
    return quantize(jax.lax.optimization_barrier(value), groups, length, signed)


def is_encoded(leaf: Any) -> bool:
    """Whether a state leaf holds 8-bit codes (an ``int8``/``uint8`` array) rather than values."""
    return jnp.result_type(leaf) in (jnp.int8, jnp.uint8)


@jax.custom_jvp
def _not_differentiated(value: jax.Array) -> jax.Array:
    # The moment on its way into integer codes, which carry no derivative: a gradient taken through optimizer steps
    # would silently lose the moment's share (the state path). Differentiated, it raises instead.
    return value


@_not_differentiated.defjvp
def _not_differentiated_jvp(primals, tangents):
    raise ValueError(
        "Blockwise8Bit: a gradient taken through optimizer steps cannot pass through an 8-bit moment (its integer "
        "codes carry no derivative, so the moment's share of the gradient would silently be 0). Keep the moments "
        "of the steps you differentiate through in jnp.float32, jnp.bfloat16 or jz.StochasticBF16()."
    )


_not_differentiated_traced = jax.jit(_not_differentiated, inline=True)  # a custom_jvp is traced again at every call


@dataclasses.dataclass(frozen=True)
class Blockwise8Bit:
    """Store a moment as 8-bit codes with a float32 absmax scale per block (see the module docstring).

    Args:
        block_size: the longest block, in elements of the last axis. An integer
            from 16 to 65536. Smaller blocks are more accurate and cost
            :math:`4 / L` bytes per element.
        min_size: leaves with fewer elements than this stay in float32.
        max_shards: blocks fit every even split of the last axis into up to
            this many shards; ``None`` is ``jax.device_count()`` at init.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.adam(1e-3, mu_dtype=jz.Blockwise8Bit(), nu_dtype=jz.Blockwise8Bit(block_size=128))
    """

    block_size: int = 256
    min_size: int = 4096
    max_shards: int | None = None

    stochastic = True
    encoded = True

    def __post_init__(self):
        for name, low, high in [("block_size", 16, 1 << 16), ("min_size", 0, None), ("max_shards", 1, None)]:
            value = getattr(self, name)
            if value is None and name == "max_shards":
                continue
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"Blockwise8Bit: {name} must be an integer, got {value!r} ({type(value).__name__}).")
            if value < low or (high is not None and value > high):
                bound = f"between {low} and {high}" if high else f"at least {low}"
                raise ValueError(f"Blockwise8Bit: {name} must be {bound}, got {value}.")

    def layout(self, shape: tuple[int, ...]) -> tuple[int, int] | None:
        """``(groups, block length)`` for a param of ``shape``, or ``None`` where it stays float32 (see the module docstring)."""
        size = math.prod(shape)
        if not shape or size == 0 or size < self.min_size:
            return None
        n = shape[-1]
        groups = math.gcd(n, self.max_shards or jax.device_count())
        per_shard = n // groups
        divisors = {d for k in range(1, math.isqrt(per_shard) + 1) if per_shard % k == 0 for d in (k, per_shard // k)}
        length = max(d for d in divisors if d <= self.block_size)
        return (groups, length) if length >= _SMALLEST_BLOCK else None

    def block_length(self, shape: tuple[int, ...]) -> int | None:
        """The block length :math:`L` for a param of ``shape``, or ``None`` where it stays float32."""
        layout = self.layout(shape)
        return None if layout is None else layout[1]

    def create(self, value: jax.Array, signed: bool) -> jax.Array:
        if jnp.iscomplexobj(value) or not jnp.issubdtype(value.dtype, jnp.floating):
            raise ValueError(
                f"Blockwise8Bit stores real floating moments, not {value.dtype} ones. Keep this optimizer's state "
                "in full precision (a dtype or None) for such params, for example with jz.partition."
            )
        layout = self.layout(value.shape)
        if layout is None:
            return value.astype(jnp.promote_types(value.dtype, jnp.float32))
        return _quantize_initial(value, *layout, signed)

    def is_encoded(self, stored: Any) -> bool:
        return is_encoded(stored)

    def read(self, stored: jax.Array) -> jax.Array:
        return _dequantize(stored) if is_encoded(stored) else stored

    def write(self, value: jax.Array, stored: jax.Array, step: jax.Array) -> jax.Array:
        if not is_encoded(stored):
            return value.astype(stored.dtype)
        groups, rows = stored.shape[-3:-1]
        return _quantize(_not_differentiated_traced(value), groups, rows - _SCALE_BYTES, stored.dtype == jnp.int8, step)
