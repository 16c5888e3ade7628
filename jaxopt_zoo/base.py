"""The protocol every optimizer speaks: a pair of pure functions over pytrees.

A :class:`GradientTransformation` is a NamedTuple ``(init, update)``:

* ``init(params) -> state`` builds the state (a pytree of arrays);
* ``update(updates, state, params=None, **extra_args) -> (updates, state)``
  transforms the incoming updates (usually gradients) and returns the new state.

Hyperparameters live in the closures, never as array leaves of the
transformation, so a transformation is a static value that ``jax.jit``, Flax's
``nnx.Optimizer`` and ``TrainState`` can hold as-is.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple, Protocol, TypeAlias, TypeVar, runtime_checkable

import jax
import jax.numpy as jnp

from jaxopt_zoo.tree import check_same_structure, is_none

Params: TypeAlias = Any
"""A pytree of arrays: the model's parameters."""
Updates: TypeAlias = Any
"""A pytree of arrays shaped like the params: gradients or transformed gradients."""
OptState: TypeAlias = Any
"""A pytree of arrays (usually NamedTuples) holding a transformation's state."""
Schedule: TypeAlias = Callable[[jax.Array], jax.typing.ArrayLike]
"""A pure function of the int32 step count returning a scalar."""
ScalarOrSchedule: TypeAlias = float | jax.Array | Schedule
"""A number, a scalar array, or a :data:`~jaxopt_zoo.Schedule` of the step count."""
MaskOrFn: TypeAlias = Any | Callable[[Params], Any] | None
"""A tree of booleans shaped like the params, or a function of the params returning one (``None``: no mask).
A tree whose class is callable (an Equinox module of booleans) is a tree: a function is a callable whose tree
leaves are all callable (:func:`jaxopt_zoo.tree.is_function_of_params`, Optax's rule)."""


class TransformInitFn(Protocol):
    """``init(params) -> state``: the first half of a :class:`GradientTransformation`."""

    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    """``update(updates, state, params=None, **extra_args) -> (updates, state)``: the second half."""

    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, OptState]: ...


TransformUpdateExtraArgsFn: TypeAlias = TransformUpdateFn
"""Optax's name for an ``update`` that takes ``**extra_args``; here every ``update`` does."""


@runtime_checkable
class StatefulSchedule(Protocol):
    """A schedule that keeps a state: ``init() -> state``, ``update(state, **extra_args) -> state``,
    ``__call__(state, **extra_args) -> value`` (see :func:`jaxopt_zoo.inject_stateful_hyperparams`)."""

    def init(self) -> Any: ...

    def update(self, state: Any, **extra_args: Any) -> Any: ...

    def __call__(self, state: Any, **extra_args: Any) -> jax.typing.ArrayLike: ...


class GradientTransformation(NamedTuple):
    """A pure ``(init, update)`` pair; see the module docstring for the protocol.

    ``update`` always accepts ``**extra_args`` (for example ``value=`` from a
    line search) and ignores those it does not use.

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> tx = jz.scale(-0.1)
        >>> state = tx.init(jnp.ones(3))
        >>> updates, state = tx.update(jnp.ones(3), state)
    """

    init: TransformInitFn
    update: TransformUpdateFn


class _TakesExtraArgs(type):
    # Every transformation of this library takes extra args: each is an instance, as Optax's chain and aliases
    # are instances of Optax's GradientTransformationExtraArgs.
    def __instancecheck__(cls, instance: Any) -> bool:
        return isinstance(instance, GradientTransformation)


class GradientTransformationExtraArgs(GradientTransformation, metaclass=_TakesExtraArgs):
    """A :class:`GradientTransformation` whose ``update`` takes ``**extra_args`` (Optax's name for it).

    Every transformation of this library already takes and ignores extra
    keyword arguments, so this subclass adds nothing but the type, and every
    one of them is an instance of it (``isinstance(jz.adam(1e-3),
    GradientTransformationExtraArgs)`` is ``True``, as for Optax's aliases): it
    exists so that code written for Optax (``isinstance`` checks, annotations)
    runs unchanged. :func:`~jaxopt_zoo.combine.with_extra_args_support` builds one
    from any transformation.

    Example:
        >>> import jaxopt_zoo as jz
        >>> from jaxopt_zoo.base import GradientTransformationExtraArgs
        >>> tx = GradientTransformationExtraArgs(*jz.scale(-0.1))
        >>> isinstance(tx, jz.GradientTransformation)
        True
    """


class EmptyState(NamedTuple):
    """The state of a stateless transformation: an empty NamedTuple (no leaves)."""


# Optax's names for the states of its stateless transformations; all are EmptyState there too.
AdaptiveGradClipState = AddDecayedWeightsState = ClipByGlobalNormState = ClipState = EmptyState
ScaleState = ScaleByTrustRatioState = EmptyState


class StateMismatchError(ValueError):
    """Raised by ``update`` when the state was not built by this transformation's ``init``.

    For example the state of ``adamw(1e-3)`` (whose learning-rate step keeps no
    state) handed to ``adamw(schedule)`` (whose learning-rate step counts steps).
    :func:`~jaxopt_zoo.chain` adds which member's state it was.
    """


def _describe(state: Any) -> str:
    fields = getattr(type(state), "_fields", None)
    if fields is not None:
        return f"{type(state).__name__}({', '.join(fields)})"
    if isinstance(state, (tuple, list, dict)):
        return f"a {type(state).__name__} of length {len(state)}"
    return type(state).__name__


def check_state(owner: str, state: Any, *expected: type) -> None:
    """Raise :class:`StateMismatchError` unless ``state`` is one of the NamedTuple types ``expected``.

    A state matches a type when it is an instance of it or a NamedTuple with the
    same field names (a state restored as another class of the same shape).
    Every transformation whose ``update`` reads fields of its state calls this
    first, so that a state built by another optimizer fails with a message
    saying what was expected and what was found, instead of reading
    ``EmptyState().count`` (the tuple method) as a step count.
    """
    fields = getattr(type(state), "_fields", None)
    if any(isinstance(state, t) or fields == t._fields for t in expected):
        return
    wanted = " or ".join(f"{t.__name__}({', '.join(t._fields)})" for t in expected)
    raise StateMismatchError(
        f"{owner}: the state does not match this transformation: expected {wanted}, as built by this "
        f"transformation's init, got {_describe(state)}. It was built by another optimizer (for example one "
        "with a constant learning rate or weight decay where this one has a schedule, or with other options); "
        "build it with this optimizer's init (or restore a checkpoint into the state this init builds)."
    )


def expects_state(owner: str, tx: GradientTransformation, *expected: type) -> GradientTransformation:
    """``tx`` whose ``update`` first checks its state with :func:`check_state` (before any wrapper reads it)."""

    def update(updates, state, params=None, **extra_args):
        check_state(owner, state, *expected)
        return tx.update(updates, state, params, **extra_args)

    return GradientTransformation(tx.init, update)


Factory = TypeVar("Factory", bound=Callable[..., GradientTransformation])


def init_only(*names: str) -> Callable[[Factory], Factory]:
    """Declare the arguments of a transformation factory that only ``init`` reads.

    A starting value (Adagrad's ``initial_accumulator_value``) or a PRNG seed is
    used once, to build the state. :func:`~jaxopt_zoo.inject_hyperparams` keeps
    these arguments static: injected, an edit in ``state.hyperparams`` would
    silently change nothing. The names are kept in the factory's
    ``init_only_args``.

    Args:
        *names: the names of those arguments; a name that is not a parameter of the decorated factory raises
            ``TypeError``.

    Example:
        >>> import jaxopt_zoo as jz
        >>> @jz.init_only("start")
        ... def scale_from(start: float = 1.0):
        ...     return jz.identity()
        >>> scale_from.init_only_args
        frozenset({'start'})
    """

    return _declaring("init_only", "init_only_args", names)


def static_only(*names: str) -> Callable[[Factory], Factory]:
    """Declare the arguments of a transformation factory that decide the update's program: traced, they raise.

    A block size, a refresh period or a rank sets array shapes or the program's
    branches. :func:`~jaxopt_zoo.inject_hyperparams` keeps these arguments
    static, as it does :func:`init_only`'s, so that injecting a factory's numbers
    does not fail on them one at a time. The names are kept in the factory's
    ``static_only_args``.

    Args:
        *names: the names of those arguments; a name that is not a parameter of the decorated factory raises
            ``TypeError``.

    Example:
        >>> import jaxopt_zoo as jz
        >>> jz.shampoo.static_only_args == {"precondition_frequency", "max_precond_dim"}
        True
    """
    return _declaring("static_only", "static_only_args", names)


def _declaring(owner: str, attribute: str, names: tuple[str, ...]) -> Callable[[Factory], Factory]:
    def mark(factory: Factory) -> Factory:
        unknown = sorted(set(names) - set(inspect.signature(factory).parameters))
        if unknown:
            raise TypeError(f"{owner}: {unknown} are not parameters of {factory.__name__}.")
        setattr(factory, attribute, frozenset(names))
        return factory

    return mark


def init_empty_state(params: Params) -> EmptyState:
    """An ``init`` for stateless transformations.

    Args:
        params: ignored.
    """
    del params
    return EmptyState()


def identity() -> GradientTransformation:
    """The transformation that leaves updates unchanged: :math:`u_t = g_t`.

    Example:
        >>> import jaxopt_zoo as jz
        >>> tx = jz.identity()
    """

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        return updates, state

    return GradientTransformation(init_empty_state, update)


def set_to_zero() -> GradientTransformation:
    """Replace every update by zeros: :math:`u_t = 0` (the parameters stay where they are).

    Example:
        >>> import jaxopt_zoo as jz
        >>> frozen = jz.masked(jz.set_to_zero(), {"encoder": True, "head": False})
    """

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        return jax.tree.map(lambda u: None if u is None else jnp.zeros_like(u), updates, is_leaf=is_none), state

    return GradientTransformation(init_empty_state, update)


def stateless(f: Callable[[Updates, Params | None], Updates]) -> GradientTransformation:
    """A transformation from a pure function of the whole trees: :math:`u_t = f(g_t, \\theta_t)`.

    Args:
        f: ``f(updates, params)``, returning the new updates; it receives ``params=None`` when the caller
            passes none. Anything not callable raises ``TypeError``.

    Example:
        >>> import jax, jaxopt_zoo as jz
        >>> clip = jz.stateless(lambda g, p: jax.tree.map(lambda x: x.clip(-1, 1), g))
    """
    if not callable(f):
        raise TypeError(f"stateless: f must be a callable f(updates, params), got {f!r}.")

    def update(updates, state, params=None, **extra_args):
        del state, extra_args
        return f(updates, params), EmptyState()

    return GradientTransformation(init_empty_state, update)


def stateless_with_tree_map(
    f: Callable[[jax.Array, jax.Array | None], jax.Array],
) -> GradientTransformation:
    """A stateless transformation from a function of one leaf: :math:`u_i = f(g_i, \\theta_i)`.

    A ``None`` update leaf stays ``None`` (Optax's ``stateless_with_tree_map``
    skips it as an empty subtree too). Numerically ``optax.stateless_with_tree_map``.

    Args:
        f: ``f(update, param)``, mapped over the leaves, returning the new update leaf; it receives
            ``param=None`` when ``update`` gets no params. Anything not callable raises ``TypeError``.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxopt_zoo.base import stateless_with_tree_map
        >>> halve = stateless_with_tree_map(lambda g, p: g / 2)
        >>> halve.update({"w": jnp.ones(2)}, halve.init(None))[0]
        {'w': Array([0.5, 0.5], dtype=float32)}
    """
    if not callable(f):
        raise TypeError(f"stateless_with_tree_map: f must be a callable f(update, param), got {f!r}.")

    def update(updates, state, params=None, **extra_args):
        del state, extra_args
        if params is None:
            return jax.tree.map(lambda g: None if g is None else f(g, None), updates, is_leaf=is_none), EmptyState()
        check_same_structure("stateless_with_tree_map", updates, params, "the params")
        return jax.tree.map(lambda g, p: None if g is None else f(g, p), updates, params, is_leaf=is_none), EmptyState()

    return GradientTransformation(init_empty_state, update)


def safe_increment(count: jax.Array) -> jax.Array:
    """``count + 1``, saturating at the dtype's maximum instead of wrapping around (integer or real counts).

    Args:
        count: a step count (usually an int32 scalar; any integer or real floating array, element by element);
            another dtype raises ``ValueError``.
    """
    count = jnp.asarray(count)
    if jnp.issubdtype(count.dtype, jnp.integer):
        max_value = jnp.iinfo(count.dtype).max
    elif jnp.issubdtype(count.dtype, jnp.floating):
        max_value = jnp.finfo(count.dtype).max
    else:
        raise ValueError(f"safe_increment: count must be an integer or real floating array, got dtype {count.dtype}.")
    # In the count's dtype: as a Python int, an unsigned maximum above int32's would not convert.
    max_value = jnp.asarray(max_value, count.dtype)
    return jnp.where(count < max_value, count + jnp.ones([], count.dtype), max_value)


def zero_count() -> jax.Array:
    """A fresh step counter: an int32 scalar zero."""
    return jnp.zeros([], jnp.int32)


def apply_updates(params: Params, updates: Updates) -> Params:
    """Return ``params + updates`` leaf by leaf, keeping each param's dtype.

    :math:`\\theta_{t+1} = \\theta_t + u_t`. A ``None`` update leaves its
    parameter unchanged (Optax raises there). An update for a ``None``
    parameter raises, naming its path (Optax drops it: a gradient the user's
    filtering let through would vanish unseen). Updates whose tree or leaf
    shapes differ from the params raise a ``ValueError`` naming the paths
    (nothing is broadcast). The sum is rounded to nearest in the param's dtype,
    as in Optax: a bfloat16 param does not move under an update below half its
    spacing (0.2 to 0.4% of its value), so small learning rates stall there:
    put :func:`~jaxopt_zoo.round_params_stochastically` last in the chain (the
    sum is then rounded stochastically), or keep float32 params and cast them
    for the forward pass.

    Args:
        params: the parameters :math:`\\theta_t`, a tree of arrays (``None`` leaves allowed).
        updates: :math:`u_t`, a tree of the params' structure and leaf shapes (``None`` leaves allowed).

    Example:
        >>> import jax.numpy as jnp, jaxopt_zoo as jz
        >>> jz.apply_updates({"w": jnp.ones(2)}, {"w": jnp.full(2, -0.5)})
        {'w': Array([0.5, 0.5], dtype=float32)}
    """

    check_same_structure("apply_updates", updates, params, "the params")

    def add(p, u):
        if p is None or u is None:
            return p
        return jnp.asarray(p + u).astype(jnp.asarray(p).dtype)

    return jax.tree.map(add, params, updates, is_leaf=is_none)
