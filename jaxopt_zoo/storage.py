"""How a state leaf is kept: one protocol for every moment of every transformation.

A transformation that keeps per-parameter moments computes with plain arrays
and declares, with :func:`with_storage`, which fields of its state are stored
how; it never sees a stored leaf. Each step :func:`with_storage` reads those
fields into arrays before the transformation's ``update`` and writes the new
values back after it. Adding storage options to a transformation is one line::

    return with_storage(GradientTransformation(init, update), signed={"mu": mu_dtype}, non_negative={"nu": nu_dtype})

A *storage* is what a ``*_dtype`` argument accepts:

* ``None``: the params' dtype; a floating dtype such as ``jnp.bfloat16``: that
  dtype (:class:`Dtype`). Reading gives the stored array; writing rounds to
  nearest, as a cast does.
* :class:`StochasticBF16`: bfloat16, read as float32 and written with
  stochastic rounding, so that changes below bfloat16's resolution (a second
  moment decaying by 0.1% a step) survive on average.
* :class:`~jaxopt_zoo.quantization.Blockwise8Bit`: 8-bit codes with a scale per
  block (:mod:`jaxopt_zoo.quantization`), read as float32.

Complex params: a moment that can be complex (``signed``) is kept complex at
the precision asked for, float32 as complex64 and float64 as complex128 (Optax
casts it to the real dtype, dropping its imaginary part); bfloat16, float16,
:class:`StochasticBF16` and 8 bits, which have no complex form, raise for it. A
non-negative moment (a magnitude such as :math:`|g|^2`) is kept real.

Every storage keeps a leaf as one array, created from the param it belongs to
(so it keeps the param's Flax ``Variable`` metadata and sharding), and is an
object with ``create(value, signed)``, ``read(stored)`` and
``write(value, stored, step)``, and two flags: ``stochastic`` (it rounds
stochastically) and ``encoded`` (some leaves hold codes, not values: casting
them would change what they mean; ``is_encoded(leaf)`` then tells which). A storage that
rounds stochastically draws from the step count (:mod:`jaxopt_zoo.rounding`):
the transformation's own ``count`` when it keeps one, else a ``count`` that
:func:`with_storage` keeps in the state's ``count`` field.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_zoo import rounding, tree, validation
from jaxopt_zoo.base import GradientTransformation, safe_increment, zero_count
from jaxopt_zoo.quantization import Blockwise8Bit, _dequantize, is_encoded


class Storage(Protocol):
    """How one moment is kept: created from its initial value, read to compute, written back."""

    stochastic: bool
    encoded: bool

    def create(self, value: jax.Array, signed: bool) -> jax.Array: ...

    def read(self, stored: jax.Array) -> jax.Array: ...

    def write(self, value: jax.Array, stored: jax.Array, step: jax.Array) -> jax.Array: ...


@dataclasses.dataclass(frozen=True)
class Dtype:
    """Store in a dtype (``None``: the initial value's, i.e. the param's); compute in it, round to nearest."""

    dtype: Any = None
    stochastic = False
    encoded = False

    def create(self, value, signed):
        if self.dtype is None:
            return value
        target = jnp.dtype(self.dtype)
        if jnp.iscomplexobj(value) and not jnp.issubdtype(target, jnp.complexfloating):
            if not signed:  # a magnitude (|g|^2): its imaginary part is 0
                return jnp.real(value).astype(target)
            return value.astype(_complex_of(target))  # a cast to a real dtype would drop the imaginary part
        return value.astype(target)

    def read(self, stored):
        return stored

    def write(self, value, stored, step):
        return _real_if_stored_real(value, stored).astype(stored.dtype)


def _real_if_stored_real(value: Any, stored: jax.Array) -> jax.Array:
    # A magnitude of a complex param, kept real (see create): its imaginary part is 0, and JAX deprecates the cast.
    value = jnp.asarray(value)
    return jnp.real(value) if jnp.iscomplexobj(value) and not jnp.iscomplexobj(stored) else value


def _complex_of(dtype: jnp.dtype) -> jnp.dtype:
    # The complex dtype of a real one's precision, for a complex param's moment kept "in float32".
    if dtype in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        return jnp.result_type(dtype, jnp.complex64)
    raise ValueError(f"a complex moment cannot be kept in {dtype}: JAX has no complex {dtype}. Use None (the param's "
                     "dtype) or jnp.float32 (complex64) for complex params, for example with jz.partition, or "
                     "jz.split_real_and_imaginary.")


@dataclasses.dataclass(frozen=True)
class StochasticBF16:
    """Store a moment in bfloat16 with stochastic rounding; compute with it in float32.

    Plain bfloat16 rounds every change below half its resolution (:math:`2^{-9}`
    relative) away, so a second moment decaying by 0.1% a step never decays.
    Rounded stochastically, the stored value is unbiased, and it costs 2 bytes
    per element like plain bfloat16. The random source hashes the step count
    and the value (not its position, so that sharded and single-device runs
    agree): elements of exactly equal value round alike within a step.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.adamw(1e-3, mu_dtype=jz.StochasticBF16(), nu_dtype=jz.StochasticBF16())
    """

    stochastic = True
    encoded = False

    def create(self, value, signed):
        if jnp.iscomplexobj(value):
            if signed:
                raise ValueError("StochasticBF16 stores real bfloat16 numbers, and this complex param's moment would "
                                 "lose its imaginary part. Use None or jnp.float32 (complex64) for complex params, for "
                                 "example with jz.partition, or jz.split_real_and_imaginary.")
            value = jnp.real(value)  # a magnitude (|g|^2): its imaginary part is 0
        return value.astype(jnp.bfloat16)

    def read(self, stored):
        return stored.astype(jnp.promote_types(stored.dtype, jnp.float32))

    def write(self, value, stored, step):
        value = _real_if_stored_real(value, stored)
        if stored.dtype != jnp.bfloat16:  # a leaf restored or mapped into another dtype keeps it
            return value.astype(stored.dtype)
        # Differentiated (a gradient through optimizer steps), the moment is written as it is, not as 0.
        return rounding.straight_through(value.astype(jnp.bfloat16), _to_bfloat16(value, step))


_to_bfloat16 = jax.jit(rounding.to_bfloat16)  # outside jit: one program per shape, not one per operation


StateDtype: TypeAlias = "jax.typing.DTypeLike | Storage | None"
"""What a ``*_dtype`` argument accepts: ``None`` (the params' dtype), a floating dtype, or a storage object."""


def resolve(owner: str, name: str, value: Any) -> Storage:
    """The storage a ``*_dtype`` argument asks for; a ``ValueError`` naming ``owner`` and ``name`` otherwise."""
    if isinstance(value, (Blockwise8Bit, StochasticBF16, Dtype)):
        return value
    checked = validation.state_dtype(owner, name, value)
    return Dtype(checked) if checked is None or isinstance(checked, jnp.dtype) else checked  # or the user's storage


def resolve_floating(owner: str, name: str, value: Any, why_not_8bit: str) -> Storage:
    """:func:`resolve` for state that 8-bit codes would spoil (a copy of the params the steps start from or are
    measured against): they raise ``"{owner}: {name}={value!r} {why_not_8bit}"``."""
    storage = resolve(owner, name, value)
    if storage.encoded:
        raise ValueError(f"{owner}: {name}={value!r} {why_not_8bit}")
    return storage


def with_storage(
    tx: GradientTransformation,
    *,
    signed: Mapping[str, StateDtype] | None = None,
    non_negative: Mapping[str, StateDtype] | None = None,
) -> GradientTransformation:
    """``tx`` whose state fields named here are kept in the given storages.

    Where the update of a leaf is ``None``, ``tx`` returns the array it was
    given and the stored leaf is kept bit for bit. The storages must already be
    resolved (``jaxopt_zoo.storage.resolve(owner, "mu_dtype", mu_dtype)`` turns a
    user's ``*_dtype`` argument into one, raising for a bad one), so that a bad
    one fails when the transformation is built.

    Args:
        tx: the transformation. Its state is a NamedTuple whose named fields are trees of arrays shaped like
            the params; ``tx`` creates and updates them as plain arrays in the params' dtype. With a stochastic
            storage the state needs a ``count`` field (``None`` where ``tx`` keeps no count of its own).
        signed: the state fields holding moments that can be negative, each mapped to its storage (a complex
            param's moment is kept complex).
        non_negative: the fields holding moments that cannot be negative, mapped likewise (kept real; 8-bit
            codes differ for the two).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> from jaxopt_zoo.storage import resolve
        >>> def scale_by_ema(decay, mu_dtype=None):  # a transformation of one's own, with a storage option
        ...     store = resolve("scale_by_ema", "mu_dtype", mu_dtype)
        ...     tx = jz.ema(decay, debias=False)
        ...     return jz.with_storage(tx, signed={"ema": store})
        >>> tx = scale_by_ema(0.9, mu_dtype=jnp.bfloat16)
        >>> state = tx.init({"w": jnp.ones(3)})
        >>> updates, state = tx.update({"w": jnp.ones(3)}, state)
        >>> state.ema["w"].dtype, updates["w"]
        (dtype(bfloat16), Array([0.1, 0.1, 0.1], dtype=float32))
    """
    fields = {**{k: (v, True) for k, v in (signed or {}).items()},
              **{k: (v, False) for k, v in (non_negative or {}).items()}}
    stochastic = any(s.stochastic for s, _ in fields.values())

    def init(params):
        state = tx.init(params)
        created = {}
        for name, (store, sign) in fields.items():
            value = getattr(state, name)
            if tree.is_optax_params_placeholder(value):  # optax.tree.map_params: its marker, as it is
                created[name] = value
            elif tree.is_params_placeholder(value):  # tree.map_params looking for per-parameter parts
                created[name] = tree.params_placeholder(encoded=store.is_encoded if store.encoded else None)
            else:
                created[name] = jax.tree_util.tree_map_with_path(lambda path, v: _create(store, sign, path, v), value)
        if stochastic and getattr(state, "count", None) is None:
            created["count"] = zero_count()  # a step count for the random draws of the rounding
        return state._replace(**created)

    def update(updates, state, params=None, **extra_args):
        stored = {name: getattr(state, name) for name in fields}
        values = {name: jax.tree.map(fields[name][0].read, stored[name]) for name in fields}
        new_updates, new_state = tx.update(updates, state._replace(**values), params, **extra_args)
        step = getattr(new_state, "count", None)
        if stochastic and (step is None or step is state.count):  # tx keeps no count: the one with_storage added
            step = safe_increment(state.count)
            new_state = new_state._replace(count=step)

        def write(store, new, old_value, old):
            # tx hands back the very array it was given where an update is None: keep the stored leaf.
            return old if new is old_value else store.write(new, old, step)

        written = {
            name: jax.tree.map(lambda n, v, o: write(fields[name][0], n, v, o), getattr(new_state, name), values[name],
                               stored[name])
            for name in fields
        }
        return new_updates, new_state._replace(**written)

    return GradientTransformation(init, update)


def _create(store: Storage, signed: bool, path: Any, value: jax.Array) -> jax.Array:
    try:
        return store.create(value, signed)
    except ValueError as error:
        raise ValueError(f"the param at {jax.tree_util.keystr(path) or '<root>'}: {error}") from None


def read_leaf(stored: jax.Array) -> jax.Array:
    """The value of any stored leaf (8-bit codes decoded; arrays as they are), for inspection and tests."""
    return _dequantize(stored) if is_encoded(stored) else stored


def non_finite_leaves(state: Any) -> list[tuple[jax.Array, jax.Array]]:
    """``(whether it holds a NaN or an infinity, leaf)`` for each value-holding leaf of a state.

    Floating leaves are checked as they are, 8-bit leaves through their codes
    and scales; integer leaves (step counts) cannot be non-finite.
    """
    return [(jnp.any(~jnp.isfinite(read_leaf(x))), x) for x in jax.tree.leaves(state) if _holds_values(x)]


def _holds_values(x: Any) -> bool:
    return is_encoded(x) or jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def state_bytes(state: Any) -> int:
    """The bytes all arrays in ``state`` occupy (codes, scales, counts, random keys and full-precision leaves alike)."""

    def nbytes(x: Any) -> int:
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):  # a typed key: the bytes of its key data
            x = jax.eval_shape(jax.random.key_data, x)
        return int(np.prod(np.shape(x))) * jnp.dtype(x.dtype).itemsize

    return sum(nbytes(x) for x in jax.tree.leaves(state))
