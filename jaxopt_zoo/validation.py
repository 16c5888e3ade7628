"""Construction-time checks of hyperparameters, with messages that name the culprit.

Every check accepts Python numbers, NumPy scalars and concrete JAX scalars. A
traced value (a hyperparameter that is being differentiated, vmapped or
injected under ``jit``) cannot be inspected, so it is accepted as it is.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def real_scalar(owner: str, name: str, value: Any) -> float | None:
    """``value`` as a finite Python float, or ``None`` when it is traced.

    Raises ``ValueError`` naming ``owner`` and ``name`` for anything that is not
    a finite real scalar (strings, ``None``, booleans, arrays of several
    elements, complex numbers, NaN and infinities), and for a Python or NumPy
    integer beyond int32's range: JAX converts it to int32, which a Python int
    overflows (an ``OverflowError`` naming none of the user's arguments) and a
    NumPy one wraps silently; the message says to pass it as a float. Without
    ``jax_enable_x64`` a float beyond float32's range raises too (it would be
    inf inside JAX).
    """
    if isinstance(value, jax.core.Tracer):
        return None
    bad = ValueError(f"{owner}: {name} must be a finite real number, got {value!r} ({type(value).__name__}).")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.generic, np.ndarray, jax.Array)):
        raise bad
    integer = isinstance(value, (int, np.integer)) or (isinstance(value, np.ndarray) and value.dtype.kind in "iu")
    if integer and np.ndim(value) == 0 and abs(int(value)) > INT32_MAX:
        try:
            as_float = float(value)
        except OverflowError:  # beyond float64 too
            raise bad from None
        raise ValueError(f"{owner}: {name} must be a float when it is beyond int32's range (JAX converts an integer "
                         f"to int32), got {value!r}; pass {as_float!r} instead.")
    array = np.asarray(value)
    if array.shape != () and array.size == 1:  # (PyTorch takes a one-element tensor lr; here it would broadcast)
        raise ValueError(f"{owner}: {name} must be a scalar (a 0-d array), got an array of shape {array.shape}; "
                         f"pass {name}.reshape(()) or a float.")
    # jnp.issubdtype also knows bfloat16 and the other ml_dtypes floats.
    if array.shape != () or not (jnp.issubdtype(array.dtype, jnp.integer) or jnp.issubdtype(array.dtype, jnp.floating)):
        raise bad
    result = float(array)
    if not math.isfinite(result):
        raise bad
    if abs(result) > FLOAT32_MAX and not jax.config.jax_enable_x64:
        raise ValueError(f"{owner}: {name} is beyond float32's range (largest {FLOAT32_MAX:.8g}), got {value!r}: JAX "
                         "computes in float32 unless jax_enable_x64 is set, where it would be inf.")
    return result


def non_negative(owner: str, name: str, value: Any) -> float | None:
    """Require a finite real ``value >= 0``; return it as a float (``None`` when traced)."""
    x = real_scalar(owner, name, value)
    if x is not None and x < 0:
        raise ValueError(f"{owner}: {name} must be >= 0, got {value!r}.")
    return x


INT32_MAX = 2**31 - 1
"""The largest int32, JAX's integer type: the bound of step counts (int32 scalars), loop bounds and sizes."""

FLOAT32_MAX = float(np.finfo(np.float32).max)
"""float32's largest finite number: a hyperparameter beyond it is inf in JAX's default precision."""

SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)
"""float32's smallest normal number; below it a value is denormal and flushed to 0 by CPUs and GPUs."""


def epsilon(owner: str, name: str, value: Any, *, allow_zero: bool = True, why_positive: str = "") -> float | None:
    """Require a finite real ``eps >= 0`` (``> 0`` unless ``allow_zero``) that is not denormal in float32.

    A denormal ``eps`` (``0 < eps < 1.18e-38``) is flushed to 0 by XLA on CPUs
    and GPUs, so it would silently act as ``eps=0``; it is refused, and the
    message says to pass 0 or a normal number. Returns the value as a float
    (``None`` when traced).
    """
    x = non_negative(owner, name, value)
    if x is None:
        return None
    if x == 0 and not allow_zero:
        raise ValueError(f"{owner}: {name} must be > 0{why_positive}, got {value!r}.")
    if 0 < x < SMALLEST_NORMAL:
        zero = "0 or " if allow_zero else ""
        raise ValueError(
            f"{owner}: {name}={value!r} is below float32's smallest normal number ({SMALLEST_NORMAL:.3g}), so it is "
            f"flushed to 0 in the update; pass {zero}a value of at least {SMALLEST_NORMAL:.3g} (1e-8 is typical)."
        )
    return x


def may_be_zero(value: Any) -> bool:
    """False only for a concrete ``value > 0``; a traced value may be zero."""
    if isinstance(value, jax.core.Tracer):
        return True
    try:
        return not float(np.asarray(value)) > 0
    except (TypeError, ValueError):
        return True


def may_all_be_zero(*values: Any) -> bool:
    """Whether every value may be 0 (a literal 0 or traced): a denominator :math:`\\sqrt{v} + \\sum \\epsilon` then may be 0."""
    return all(may_be_zero(value) for value in values)


def whole_number(owner: str, name: str, value: Any, minimum: int = 0, maximum: int | None = None) -> int:
    """Require an integer ``>= minimum`` (a Python or NumPy integer, or an integral float); return it as an int.

    With ``maximum`` (for example :data:`INT32_MAX` for a step count, which is
    compared with int32 counters, or a size) a larger value raises too, with a
    message stating that bound (a Python int of any size is compared exactly).
    """
    bad = ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}.")
    if isinstance(value, jax.core.Tracer):
        raise ValueError(
            f"{owner}: {name} must be a concrete integer, not traced, got {value!r}; with jz.inject_hyperparams "
            f"pass static_args=({name!r},).")
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating, np.ndarray, jax.Array)
    ):
        raise bad
    if isinstance(value, int):  # exactly, and beyond int64 (NumPy would make it an object array)
        number: int | float = value
    else:
        array = np.asarray(value)
        if array.shape != () or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise bad
        number = int(array) if np.issubdtype(array.dtype, np.integer) else float(array)
    if maximum is not None and number > maximum:  # before the integer check: 3e9 + 0.5 fails the bound too
        why = " (the largest int32, JAX's integer type)" if maximum == INT32_MAX else ""
        raise ValueError(f"{owner}: {name} must be at most {maximum}{why}, got {value!r}.")
    if (isinstance(number, float) and not number.is_integer()) or number < minimum:
        raise bad
    return int(number)


def positive(owner: str, name: str, value: Any) -> float | None:
    """Require a finite real ``value > 0``; return it as a float (``None`` when traced)."""
    x = real_scalar(owner, name, value)
    if x is not None and x <= 0:
        raise ValueError(f"{owner}: {name} must be > 0, got {value!r}.")
    return x


def is_literal_zero(value: Any) -> bool:
    """True only for a Python ``int``/``float`` equal to 0.

    Constructors drop a step that a literal zero turns into a no-op. An array
    zero keeps the step: it may be injected (``inject_hyperparams``) or traced,
    and the state's structure must not depend on values.
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


def decay_rate(owner: str, name: str, value: Any) -> None:
    """Require a finite real ``value`` in ``[0, 1)``, as for Adam's betas."""
    x = real_scalar(owner, name, value)
    if x is not None and not 0.0 <= x < 1.0:
        raise ValueError(f"{owner}: {name} must be in [0, 1), got {value!r}.")


def belief_b1(owner: str, b1: Any) -> None:
    """AdaBelief's and ACProp's ``b1`` in (0, 1): with ``b1 = 0`` the running mean is the gradient itself, the
    prediction error ``g - m`` is 0 and every step is ``g / (sqrt(eps_root) + eps)`` (1e8 g at Optax's defaults,
    which accept it)."""
    decay_rate(owner, "b1", b1)
    if real_scalar(owner, "b1", b1) == 0.0:
        raise ValueError(f"{owner}: b1 must be in (0, 1), got {b1!r}: with b1=0 the mean is the gradient itself, "
                         "the prediction error g - m is 0 and each step is g / (sqrt(eps_root) + eps).")


def fraction(owner: str, name: str, value: Any) -> float | None:
    """Require a finite real ``value`` in ``[0, 1]``; return it as a float (``None`` when traced)."""
    x = real_scalar(owner, name, value)
    if x is not None and not 0.0 <= x <= 1.0:
        raise ValueError(f"{owner}: {name} must be in [0, 1], got {value!r}.")
    return x


def scalar_or_schedule(owner: str, name: str, value: Any) -> None:
    """Require a schedule (any callable of the step count but a class) or a finite real ``value >= 0``."""
    if isinstance(value, type):  # jnp.float32 is callable: as a schedule, the rate would be the step count
        raise ValueError(f"{owner}: {name} must be a number or a schedule (a function of the step count), got the "
                         f"class {value!r}.")
    if not callable(value):
        non_negative(owner, name, value)


def optional_dtype(owner: str, name: str, value: Any) -> jnp.dtype | None:
    """``value`` as a floating dtype (``None`` stays ``None``), or a ``ValueError``."""
    if value is None:
        return None
    _not_an_array(owner, name, value, "a floating dtype such as jnp.float32")
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        raise ValueError(f"{owner}: {name} must be a floating dtype such as jnp.float32, got {value!r}.") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{owner}: {name} must be a floating dtype such as jnp.float32, got {value!r}.")
    # float64 becomes float32 unless jax_enable_x64 is on, as for every JAX array.
    return jax.dtypes.canonicalize_dtype(dtype)


def _not_an_array(owner: str, name: str, value: Any, expected: str) -> None:
    """Refuse an array (or a NumPy scalar, a ``jax.ShapeDtypeStruct``) given for a dtype: ``jnp.dtype`` reads its
    ``.dtype``, so ``mu_dtype=jnp.ones(2)`` would silently be float32."""
    if hasattr(value, "dtype") and not isinstance(value, (type, np.dtype)):
        raise ValueError(f"{owner}: {name} must be {expected}, got an array of dtype {value.dtype} and shape "
                         f"{np.shape(value)} ({type(value).__name__}); to take an array's dtype, pass x.dtype.")


def state_dtype(owner: str, name: str, value: Any) -> Any:
    """A moment's storage: ``None``, a floating dtype of 16 bits or more, or a storage object (returned as it is).

    A complex dtype is read as its real precision (``complex64`` as ``float32``), Optax's way to keep a complex
    param's moment complex: here a complex param's moment is complex at the precision asked for anyway, and a real
    param's stays real (Optax would make it complex). A storage object is anything with ``create``, ``read`` and ``write`` and the boolean flags ``stochastic`` and
    ``encoded`` (see :mod:`jaxopt_zoo.storage`).
    """
    if not isinstance(value, type) and all(callable(getattr(value, m, None)) for m in ("create", "read", "write")):
        missing = [flag for flag in ("stochastic", "encoded") if not isinstance(getattr(value, flag, None), bool)]
        if missing:
            raise ValueError(f"{owner}: {name}={value!r} has create, read and write but no boolean "
                             f"{' or '.join(missing)} flag, which a storage needs (see jaxopt_zoo.storage).")
        return value
    hint = (
        "a floating dtype such as jnp.bfloat16, None for the params' dtype, jz.StochasticBF16() or "
        "jz.Blockwise8Bit() for 8-bit moments"
    )
    _not_an_array(owner, name, value, "a dtype such as jnp.bfloat16")
    try:
        dtype = None if value is None else jnp.dtype(value)
    except TypeError:
        raise ValueError(f"{owner}: {name} must be {hint}; got {value!r}.") from None
    if dtype is not None and jnp.issubdtype(dtype, jnp.complexfloating):
        return optional_dtype(owner, name, jnp.finfo(dtype).dtype)
    if dtype is not None and jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize == 1:
        raise ValueError(
            f"{owner}: {name}={dtype} has no per-block scale, so small moments would flush to zero; "
            f"use jz.Blockwise8Bit() for 8-bit moments."
        )
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{owner}: {name} must be {hint}; got {value!r}.")
    return optional_dtype(owner, name, value)


def nesterov_needs_momentum(owner: str, momentum: Any, nesterov: Any) -> None:
    """Check ``nesterov`` is a flag, and refuse ``nesterov=True`` without a ``momentum`` (Optax ignores the flag)."""
    flag(owner, "nesterov", nesterov)
    if momentum is None and nesterov:
        raise ValueError(f"{owner}: nesterov=True needs a momentum, got momentum=None.")


def refuse_complex(owner: str, params: Any, why: str | None = None) -> None:
    """Raise for a complex param, pointing to ``jz.combine.split_real_and_imaginary`` (for rules with no complex
    form: Kronecker factors :math:`GG^\\top` that would not be Hermitian, a cube root of a sum of squares).

    ``why``, when given, says in the message what in the rule has no complex meaning.
    """
    for p in jax.tree.leaves(params):
        if jnp.iscomplexobj(p):
            reason = f"{why}; " if why else ""
            raise ValueError(f"{owner}: complex params are not supported ({reason}a leaf of dtype "
                             f"{jnp.result_type(p)}); wrap the optimizer in jz.combine.split_real_and_imaginary.")


def refusing_complex(owner: str, tx: Any, why: str | None = None) -> Any:
    """``tx`` whose ``init`` first applies :func:`refuse_complex` under ``owner``: an optimizer recipe names itself,
    where its inner transformation's own refusal would name the part the user did not call."""

    def init(params):
        refuse_complex(owner, params, why)
        return tx.init(params)

    return type(tx)(init, tx.update)


def rectification_threshold(owner: str, value: Any) -> None:
    """RAdam's ``threshold``: a finite real >= 4, since its rectification :math:`r_t` is the square root of a
    negative number for :math:`2 < \\rho_t < 4`."""
    x = real_scalar(owner, "threshold", value)
    if x is not None and x < 4:
        raise ValueError(f"{owner}: threshold must be >= 4 (the rectification of a step with threshold <= rho_t < 4 "
                         f"is the square root of a negative number: NaN), got {value!r}.")


def state_dtypes(owner: str, **storage: Any) -> None:
    """Check each named storage option with :func:`state_dtype`, under ``owner``'s name.

    Optimizer recipes call this so that the error names the optimizer, and an
    option the recipe leaves unused (no momentum, not centered) is still checked.
    """
    for name, value in storage.items():
        state_dtype(owner, name, value)


def flag(owner: str, name: str, value: Any) -> None:
    """Require a Python (or NumPy) bool, so that a number passed in a flag's position is not read as truthy."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r} ({type(value).__name__}).")


def require_params(owner: str, params: Any) -> None:
    """Raise when a transformation that reads the parameters was called without them."""
    if params is None:
        raise ValueError(f"{owner} needs the parameters: call update(updates, state, params) with params.")


def array_leaves(owner: str, params: Any) -> None:
    """Raise naming the first params leaf that is neither an array, a number nor ``None`` (a function, a string:
    an Equinox model not filtered to its arrays), which would otherwise fail deep inside ``init``."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: x is None)
    for path, leaf in leaves:
        if (leaf is None or (hasattr(leaf, "shape") and hasattr(leaf, "dtype")) or hasattr(leaf, "__jax_array__")
                or isinstance(leaf, (int, float, complex))):
            continue
        raise TypeError(
            f"{owner}: the params leaf at {jax.tree_util.keystr(path) or '<root>'} is {type(leaf).__name__} "
            f"{leaf!r:.80}, not an array. Initialise on the array leaves only (with Equinox: "
            "eqx.filter(model, eqx.is_array))."
        )


def axis_name(owner: str, value: Any) -> tuple[str, ...] | None:
    """``axis_name`` as ``None`` or a tuple of mesh axis names; anything else raises naming ``owner``."""
    if value is None:
        return None
    names = (value,) if isinstance(value, str) else value
    if not isinstance(names, (tuple, list)) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{owner}: axis_name must be None, a mesh axis name or a tuple of them, got {value!r}.")
    return tuple(names)


def non_positive(owner: str, name: str, value: Any) -> float | None:
    """Require a finite real ``value <= 0`` (an exponent such as Adafactor's ``beta2_decay``); return it as a float."""
    x = real_scalar(owner, name, value)
    if x is not None and x > 0:
        raise ValueError(f"{owner}: {name} must be <= 0, got {value!r}.")
    return x


def learning_rate(owner: str, value: Any) -> None:
    """An optimizer's ``learning_rate``: a number or a schedule, or ``None`` (a rate of 1: see
    :func:`jaxopt_zoo.scale_by_learning_rate`)."""
    if value is not None:
        scalar_or_schedule(owner, "learning_rate", value)


def adam_options(owner: str, b1: Any, b2: Any, eps: Any, eps_root: Any, nesterov: Any) -> None:
    """Adam's ``b1`` and ``b2`` in [0, 1), ``eps`` and ``eps_root`` epsilons, ``nesterov`` a bool."""
    decay_rate(owner, "b1", b1)
    decay_rate(owner, "b2", b2)
    epsilon(owner, "eps", eps)
    epsilon(owner, "eps_root", eps_root)
    flag(owner, "nesterov", nesterov)


def scalar_loss(owner: str, name: str, value: Any, *, returned: bool = False) -> None:
    """Require a loss to be a real scalar: a number or a 0-d array of integer or floating dtype.

    For ``update(..., value=loss)`` (``name="value"``) and, with ``returned``, for what an objective ``name``
    (``value_fn``) returns. Only the shape and dtype are read, so a traced loss is checked too (at trace time).
    An unreduced loss (per-example losses, or a PyTorch-style one-element loss of shape ``(1,)``) would broadcast
    against the state's scalars into per-element step sizes and a state of another shape; it is refused, and the
    message says how to reduce it.
    """
    subject = f"{name} must return" if returned else f"{name} must be"
    try:
        shape, dtype = jnp.shape(value), jnp.result_type(value)
    except TypeError:
        shape, dtype = None, None
    if isinstance(value, (bool, np.bool_)) or dtype is None or not (
            jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
        got = f"{type(value).__name__} {value!r:.80}" if dtype is None else f"{value!r:.80} of dtype {dtype}"
        raise ValueError(f"{owner}: {subject} a real scalar loss (a number or a 0-d array), got {got}.")
    if shape != ():
        fix = (f"reduce it inside {name} (jnp.mean or jnp.sum of per-example losses; .reshape(()) for a one-element "
               "array)") if returned else (
               "pass the reduced loss (jnp.mean or jnp.sum of per-example losses; loss.reshape(()) for a one-element "
               "array)")
        raise ValueError(f"{owner}: {subject} a scalar loss (a 0-d array), got an array of shape {shape}; {fix}.")


def objective(owner: str, name: str, value: Any) -> None:
    """Require ``value`` (an objective such as a line search's ``value_fn``) to be callable."""
    if not callable(value):
        raise ValueError(f"{owner}: {name} must be a function of the params returning the scalar loss (e.g. "
                         f"{name}=lambda p: loss_fn(p, batch)), got {value!r:.80} ({type(value).__name__}).")


SEED_BITS = 32
"""The bits of an integer seed that ``jax.random.key`` keeps without ``jax_enable_x64`` (with it, 64)."""


def random_seed(owner: str, name: str, value: Any) -> None:
    """Require an integer seed that ``jax.random.key`` takes exactly, or one typed key (``jax.random.key(0)``).

    Without ``jax_enable_x64`` JAX keeps a seed's low 32 bits, so ``2**32`` draws what ``0`` draws and ``-1`` what
    ``2**32 - 1`` draws: seeds outside :math:`[0, 2^{32} - 1]` are refused, naming the argument and the seed it would
    collide with. With ``jax_enable_x64`` every int64 seed gives its own key, and any int64 is taken. A traced seed
    cannot be inspected and is taken as it is.
    """
    if isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
        if value.shape != ():
            raise ValueError(f"{owner}: {name} must be one PRNG key (shape ()), got keys of shape {value.shape}.")
        return
    if isinstance(value, jax.core.Tracer):
        return
    # A Python int is read exactly (NumPy would make one beyond int64 an object array).
    array = np.asarray(value) if isinstance(value, (np.integer, np.ndarray, jax.Array)) else None
    integer = isinstance(value, int) or (array is not None and array.shape == () and np.issubdtype(array.dtype,
                                                                                                      np.integer))
    if isinstance(value, (bool, np.bool_)) or not integer:
        raise ValueError(
            f"{owner}: {name} must be an integer seed or a key from jax.random.key, "
            f"got {value!r} ({type(value).__name__})."
        )
    seed = value if isinstance(value, int) else int(array)
    if jax.config.jax_enable_x64:
        if not -(2**63) <= seed < 2**63:
            raise ValueError(f"{owner}: {name} must be an integer seed in [-2**63, 2**63 - 1] (JAX reads a seed as an "
                             f"int64), got {value!r}; pass a smaller seed or a key from jax.random.key.")
        return
    if not 0 <= seed < 2**SEED_BITS:
        collides = f", which would draw what seed {seed % 2**SEED_BITS} draws" if -(2**63) <= seed < 2**63 else ""
        raise ValueError(
            f"{owner}: {name} must be an integer seed in [0, 2**32 - 1], got {value!r}: without jax_enable_x64 JAX "
            f"keeps a seed's low 32 bits{collides}. Pass a seed in that range (e.g. seed % 2**32) or a key from "
            "jax.random.key."
        )
