"""Low-bit optimizer state: moments stored as 8-bit codes with one scale per block.

Every moment-keeping transformation takes its storage as a ``*_dtype``
argument (``mu_dtype``, ``nu_dtype``, ``accumulator_dtype``). A floating dtype
(``jnp.bfloat16``, ``jnp.float32``) stores the moment in that dtype;
:class:`Blockwise8Bit` stores it as a :class:`QuantizedArray`:

* the last axis is cut into blocks of at most ``block_size`` elements, and each
  block keeps its largest magnitude :math:`s` in float32 (Dettmers et al. 2022,
  block-wise absmax);
* each element keeps one byte, a small floating-point code of :math:`x / s`:
  a sign, 4 exponent bits and 3 mantissa bits for moments that can be negative
  (first moments, momentum buffers), 5 exponent bits and 3 mantissa bits for
  moments that cannot (second moments, sums of squares). A positive
  non-negative moment never rounds to 0, so no denominator collapses to ``eps``;
* the code rounds stochastically between its two neighbouring values, up with
  probability equal to the fraction of the gap. Rounding to the nearest value
  would lose every change smaller than half a gap (3% to 6%): a second moment
  that decays by 0.1% a step would never decay, and over a few hundred steps
  it drifted to half its true value in our language-model benchmark.
  Stochastic rounding keeps the stored moment unbiased at the cost of up to
  one gap (12.5%) of error per rounding instead of half of one.

So Adam's two moments take :math:`2 + 8 / \\text{block\\_size}` bytes per
parameter instead of 8. The moment is dequantized to float32, updated, and
requantized inside the same jitted update; the update direction is computed
from the float32 moments before they are requantized, as in the paper.
Leaves with fewer than ``min_size`` elements stay in float32 (at least the
params' precision), where the saving is negligible and the error is not.
A NaN or infinite value makes its block's scale non-finite, so the whole
block reads back non-finite (float32 moments keep it to the one element);
it is never stored as a finite number.

Deviation from the paper: its codes are "dynamic tree" values, a decimal
exponent and a linear fraction, looked up in a 256-entry table and rounded to
the nearest by a search. Ours are binary floats built with a few integer
operations and no lookup: neighbouring values are at most 12.5% apart at
every magnitude down to :math:`2^{-16}` (signed) or :math:`2^{-32}` (non-negative) of
the block's absmax. The table is finer near the block's maximum (1.4% to 14%
apart in its top decade) and coarser below it (up to 56% apart between 1e-3
and 1e-2 of the maximum, more further down). Rounded to nearest, the median
error of Adam's update direction is 2.2% with ours against 1.2% with the
table when all elements of a block have the same scale, and 2.4% against 11%
when their scales spread over a decade (``tests/test_quantization.py``).

Blocks run along the last axis only, so the codes shard exactly like the
params, and the layout depends on the param's shape alone (a checkpoint
restores into ``jax.eval_shape(tx.init, params)``). When each shard of a
sharded last axis holds whole blocks, the scales shard like the params and a
step needs no communication. Otherwise blocks cross shards: on Auto mesh axes
that stays correct and costs an exchange of the (small) scales each step; on
Explicit axes, and so in ``jz.init_sharded`` and ``jz.state_shardings``, it
raises and names a ``block_size`` that fits.

Example:
    >>> import jax.numpy as jnp, jaxopt_zoo as jz
    >>> tx = jz.adamw(1e-3, mu_dtype=jz.Blockwise8Bit(), nu_dtype=jz.Blockwise8Bit())
    >>> state = tx.init({"w": jnp.zeros((256, 1024)), "b": jnp.zeros(1024)})
    >>> state[0].mu["w"].codes.dtype, state[0].mu["w"].scales.shape, state[0].mu["b"].dtype
    (dtype('int8'), (256, 4), dtype('float32'))

References:
    Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise Quantization", ICLR 2022.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

_MANTISSA_BITS = 3
_SHIFT = 23 - _MANTISSA_BITS  # float32 mantissa bits dropped by the code


class QuantizedArray(NamedTuple):
    """One moment leaf in 8 bits: ``codes`` shaped like the param, one float32 scale per block.

    ``codes`` is ``int8`` for a signed moment and ``uint8`` for a non-negative
    one; ``scales`` has the param's shape with the last axis cut into
    ``scales.shape[-1]`` equal blocks (the last may be shorter), and holds each
    block's largest magnitude. The value of an element is ``decode(code) * scale``.
    """

    codes: jax.Array
    scales: jax.Array


@dataclasses.dataclass(frozen=True)
class Blockwise8Bit:
    """Store a moment as 8-bit codes with a float32 absmax scale per block (see the module docstring).

    Args:
        block_size: the longest block, in elements of the last axis. An integer
            from 16 to 65536. Smaller blocks are more accurate and cost
            :math:`4 / \\text{block\\_size}` bytes per element.
        min_size: leaves with fewer elements than this stay in float32.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.adam(1e-3, mu_dtype=jz.Blockwise8Bit(), nu_dtype=jz.Blockwise8Bit(block_size=128))
    """

    block_size: int = 256
    min_size: int = 4096

    def __post_init__(self):
        for name, low, high in [("block_size", 16, 1 << 16), ("min_size", 0, None)]:
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"Blockwise8Bit: {name} must be an integer, got {value!r} ({type(value).__name__}).")
            if value < low or (high is not None and value > high):
                bound = f"between {low} and {high}" if high else f"at least {low}"
                raise ValueError(f"Blockwise8Bit: {name} must be {bound}, got {value}.")


StateDtype: TypeAlias = "jax.typing.DTypeLike | Blockwise8Bit | None"
"""What a ``*_dtype`` storage argument accepts: ``None`` (the params' dtype), a floating dtype, or :class:`Blockwise8Bit`."""


def is_quantized(x: Any) -> bool:
    """``is_leaf`` predicate that keeps a :class:`QuantizedArray` whole in tree maps."""
    return isinstance(x, QuantizedArray)


def _code_offset(signed: bool) -> int:
    # Shifted float32 bits of 1.0 minus the largest code, so that 1.0 encodes to 127 or 255.
    return (127 << _MANTISSA_BITS) - (127 if signed else 255)


def _explicit_shards_of_last_axis(x: jax.Array) -> int:
    # Only Explicit mesh axes are visible in an array's type; under Auto axes XLA places the blocks.
    sharding = jax.typeof(x).sharding
    spec, mesh = getattr(sharding, "spec", None), getattr(sharding, "mesh", None)
    if not spec or mesh is None or len(spec) < x.ndim or spec[x.ndim - 1] is None:
        return 1
    names = spec[x.ndim - 1]
    return math.prod(mesh.shape[name] for name in ((names,) if isinstance(names, str) else names))


def _blocked(x: jax.Array, num_blocks: int) -> jax.Array:
    # (..., n) -> (..., num_blocks, length), zero-padding the last block.
    n = x.shape[-1]
    length = -(-n // num_blocks)
    shards = _explicit_shards_of_last_axis(x)
    if shards > 1 and (n % shards or (n // shards) % length):
        raise ValueError(
            f"Blockwise8Bit: the last axis of a {x.shape} moment is split into {shards} shards of "
            f"{n / shards:g} elements, which do not hold whole blocks of {length}. Choose a block_size that "
            f"divides {n / shards:g} (for example Blockwise8Bit(block_size={math.gcd(n // shards, length) if n % shards == 0 else 16})) "
            "so that no block crosses a shard."
        )
    if num_blocks * length != n:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, num_blocks * length - n)])
    return x.reshape(*x.shape[:-1], num_blocks, length)


def _unblocked(x: jax.Array, n: int) -> jax.Array:
    x = x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])
    return x if x.shape[-1] == n else x[..., :n]


def _dither(bits: jax.Array) -> jax.Array:
    """Pseudo-random integers in [0, 2**_SHIFT): a hash of each element's float32 bits.

    Hashing the value alone, not its position, makes the rounding independent
    of the array's layout (jit, vmap and shard_map agree bit for bit).
    """
    h = bits.astype(jnp.uint32)
    for shift, multiplier in [(16, 0x7FEB352D), (15, 0x846CA68B), (16, None)]:  # a 32-bit integer mixer
        h = h ^ (h >> shift)
        if multiplier is not None:
            h = h * np.uint32(multiplier)
    return (h >> (32 - _SHIFT)).astype(jnp.int32)


def encode(y: jax.Array, signed: bool) -> jax.Array:
    """8-bit codes of ``y`` with :math:`|y| \\le 1`: :math:`|y|` rounded stochastically to 3 mantissa bits.

    Adding a pseudo-random integer below the last kept bit to the float32 bit
    pattern, then dropping the low bits, rounds up with probability equal to
    the dropped fraction (a carry moves into the exponent as it should). The
    random source is a hash of each element's bits, so the rounding is
    deterministic for given inputs but unbiased across elements and steps
    (elements of exactly equal value round alike). Magnitudes below the smallest code give 0, or the smallest code
    for a positive ``y`` when ``signed`` is False.
    """
    bits = jax.lax.bitcast_convert_type(jnp.abs(y).astype(jnp.float32), jnp.int32)
    top = 127 if signed else 255
    code = jnp.minimum(((bits + _dither(bits)) >> _SHIFT) - _code_offset(signed), top)
    if signed:
        code = jnp.maximum(code, 0)
        return jnp.where(y < 0, -code, code).astype(jnp.int8)
    return jnp.where(y > 0, jnp.maximum(code, 1), 0).astype(jnp.uint8)


def decode(codes: jax.Array) -> jax.Array:
    """The float32 values in [-1, 1] of ``codes`` (``int8``: signed, ``uint8``: non-negative)."""
    signed = codes.dtype == jnp.int8
    code = codes.astype(jnp.int32)
    magnitude = jnp.abs(code) if signed else code
    value = jax.lax.bitcast_convert_type((magnitude + _code_offset(signed)) << _SHIFT, jnp.float32)
    value = jnp.where(magnitude == 0, 0.0, value)
    return jnp.where(code < 0, -value, value) if signed else value


def _block_absmax(blocks: jax.Array) -> jax.Array:
    """The largest magnitude of each block (the last axis), NaN if the block holds one.

    One two-output reduction (the largest and the smallest value) rather than
    ``max(abs(x))``, for two reasons found on XLA:CPU. The one-output max goes
    to a library kernel that cannot compute the moment update itself, so the
    new moments were written to memory and read back (a third of the 8-bit
    step's time); the two-output reduction stays an XLA fusion that recomputes
    the update as it reduces. And that kernel skipped NaNs, so a NaN gradient
    was stored as a finite moment.
    """
    largest, smallest = jax.lax.reduce(
        (blocks, blocks),
        (np.float32(-np.inf), np.float32(np.inf)),
        lambda a, b: (jnp.maximum(a[0], b[0]), jnp.minimum(a[1], b[1])),
        (blocks.ndim - 1,),
    )
    return jnp.maximum(largest, -smallest)


def quantize(x: jax.Array, num_blocks: int, signed: bool) -> QuantizedArray:
    """Quantize ``x`` block-wise along its last axis into ``num_blocks`` blocks."""
    blocks = _blocked(x.astype(jnp.float32), num_blocks)
    scales = _block_absmax(blocks)[..., None]
    inverse = jnp.where(scales > 0, 1 / scales, 0.0)
    codes = encode(blocks * inverse, signed)
    return QuantizedArray(_unblocked(codes, x.shape[-1]), scales[..., 0])


def dequantize(q: QuantizedArray) -> jax.Array:
    """The float32 array a :class:`QuantizedArray` stands for."""
    blocks = _blocked(decode(q.codes), q.scales.shape[-1])
    return _unblocked(blocks * q.scales[..., None], q.codes.shape[-1])


def moments_like(params: Any, storage: StateDtype, fill: float = 0.0, *, signed: bool = True) -> Any:
    """A moment tree shaped like ``params``, filled with ``fill``, stored as ``storage`` says.

    With a dtype (or ``None``: each param's dtype) this is a tree of plain
    arrays. With :class:`Blockwise8Bit` each floating leaf of at least
    ``min_size`` elements becomes a :class:`QuantizedArray` (codes ``int8`` if
    ``signed`` else ``uint8``); smaller leaves are float32 (or wider) arrays.
    Built leaf by leaf from the params, so codes keep the params' shardings.
    """
    if not isinstance(storage, Blockwise8Bit):
        return jax.tree.map(lambda p: jnp.full_like(p, fill, dtype=storage), params)

    def leaf(path, p):
        if jnp.iscomplexobj(p) or not jnp.issubdtype(p.dtype, jnp.floating):
            raise ValueError(
                f"Blockwise8Bit stores real floating moments, but the param at {jax.tree_util.keystr(path) or '<root>'} "
                f"has dtype {p.dtype}. Keep this optimizer's state in full precision (a dtype or None) for it, "
                "for example with jz.partition."
            )
        wide = jnp.promote_types(p.dtype, jnp.float32)
        if p.ndim == 0 or p.size < storage.min_size:
            return jnp.full_like(p, fill, dtype=wide)
        num_blocks = math.ceil(p.shape[-1] / storage.block_size)
        return quantize(jnp.full_like(p, fill, dtype=jnp.float32), num_blocks, signed)

    return jax.tree_util.tree_map_with_path(leaf, params)


def store(values: Any, stored: Any) -> Any:
    """``values`` stored like ``stored``: requantized where it is quantized, else cast to its dtype.

    ``values`` has the params' structure (``None`` leaves keep the old stored
    leaf); ``stored`` is the moment tree from the state.
    """

    def leaf(value, old):
        if value is None or value is old:  # no update for this leaf (see tree.map_state)
            return old
        if is_quantized(old):
            return quantize(value, old.scales.shape[-1], signed=old.codes.dtype == jnp.int8)
        return jnp.asarray(value).astype(jnp.asarray(old).dtype)

    return jax.tree.map(leaf, values, stored, is_leaf=lambda x: x is None or is_quantized(x))


def state_bytes(state: Any) -> int:
    """The bytes all arrays in ``state`` occupy (codes, scales, counts and full-precision leaves alike)."""
    return sum(int(np.prod(np.shape(x))) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
