"""Gradient accumulation over microbatches inside one step: microbatch.

:func:`microbatch` turns a function of a whole batch into one that runs it on
``batch_size / microbatch_size`` slices in a ``lax.fori_loop`` (so only one
slice's activations are live at a time) and combines the slices' results by
an :class:`AccumulationType` (sum, mean, running mean, concatenation) or an
:class:`Accumulator` of your own. Same names, arguments and numbers as
``optax.microbatch`` and ``optax.microbatching``.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_zoo import validation

__all__ = ["Accumulator", "AccumulationType", "microbatch", "reshape_batch_axis"]
# micro_vmap, micro_grad and IndividualOutputs stay in this module (jz.microbatching.micro_grad), as in Optax.


@dataclasses.dataclass(frozen=True)
class Accumulator:
    """How :func:`microbatch` combines the results :math:`x_0, \\ldots, x_{n-1}` of the microbatches.

    ``carry = init(shape_of_x0)``; for each ``i``: ``carry = update(carry, x_i, i)``;
    the result is ``finalize(carry)``. ``init`` gets a ``jax.ShapeDtypeStruct`` tree, or inside
    ``shard_map`` the traced :math:`x_0` itself: build the carry with ``jnp.zeros_like`` or
    ``jnp.full_like``, which take both and make it vary over the manual mesh axes as the results do.

    Args:
        init: ``init(x0) -> carry``, the carry before the first microbatch, from the first result's shape.
        update: ``update(carry, x_i, i) -> carry``, the carry with the ``i``-th result taken in.
        finalize: ``finalize(carry) -> result``, what :func:`microbatch` returns.
        aggregate: ``aggregate(xs) -> result``, the same reduction of the results stacked along axis 0 (Optax's
            ``micro_vmap`` uses it).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxopt_zoo.microbatching import Accumulator, microbatch
        >>> largest = Accumulator(lambda x: jnp.full_like(x, -jnp.inf), lambda c, x, i: jnp.maximum(c, x),
        ...                       lambda c: c, lambda xs: xs.max(axis=0))
        >>> microbatch(jnp.max, 0, 2, largest)(jnp.array([3.0, 1.0, 4.0, 1.0]))
        Array(4., dtype=float32)
    """

    init: Callable[[Any], Any]
    update: Callable[[Any, Any, Any], Any]
    finalize: Callable[[Any], Any]
    aggregate: Callable[[Any], Any]


class AccumulationType(enum.Enum):
    """The built-in ways to combine microbatch results (each result leaf separately)."""

    MEAN = enum.auto()
    """:math:`\\frac1n \\sum_i x_i` (floating results only)."""
    SUM = enum.auto()
    """:math:`\\sum_i x_i`."""
    RUNNING_MEAN = enum.auto()
    """:math:`m_i = m_{i-1} \\frac{i}{i+1} + \\frac{x_i}{i+1}`: the mean of the microbatches run so far (floating only)."""
    CONCAT = enum.auto()
    """The results concatenated along axis 0, in the original batch order."""


def _leafwise(init, update, finalize, aggregate) -> Accumulator:
    # An Accumulator over whole result trees from one over single arrays.
    return Accumulator(
        lambda shapes: jax.tree.map(init, shapes),
        lambda carry, value, i: jax.tree.map(lambda c, v: update(c, v, i), carry, value),
        lambda carry: jax.tree.map(finalize, carry),
        lambda values: jax.tree.map(aggregate, values),
    )


def _floating_only(init: Callable[[Any], Any], kind: str) -> Callable[[Any], Any]:
    def checked(x):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"microbatch: AccumulationType.{kind} needs floating-point results, got {x.dtype}.")
        return init(x)

    return checked


def _sum() -> Accumulator:
    return _leafwise(jnp.zeros_like, lambda c, x, i: c + x, lambda c: c, functools.partial(jnp.sum, axis=0))


def _mean(count: int) -> Accumulator:
    return _leafwise(
        _floating_only(jnp.zeros_like, "MEAN"), lambda c, x, i: c + x, lambda c: c / count,
        functools.partial(jnp.mean, axis=0),
    )


def _running_mean() -> Accumulator:
    def update(carry, x, i):
        seen = i / (i + 1)  # weight of the mean so far after microbatch i
        return (carry * seen + x * (1 - seen)).astype(carry.dtype)

    return _leafwise(_floating_only(jnp.zeros_like, "RUNNING_MEAN"), update, lambda c: c, functools.partial(jnp.mean, axis=0))


def _concat(count: int) -> Accumulator:
    def finalize(stacked):
        # Undo reshape_batch_axis: microbatch m holds examples m, m + n, m + 2n, ... (column-major split).
        return stacked.reshape(-1, *stacked.shape[2:], order="F", **_out_sharding_without_axis0(stacked))

    return _leafwise(
        lambda x: jnp.broadcast_to(jnp.zeros_like(x), (count, *x.shape)),
        lambda c, x, i: c.at[i].set(x),
        finalize,
        lambda x: x,
    )


def _out_sharding_without_axis0(x: jax.Array) -> dict:
    sharding = jax.typeof(x).sharding
    if not sharding.mesh.are_all_axes_explicit:
        return {}
    spec = jax.sharding.PartitionSpec(*sharding.spec[1:]) if sharding.spec else jax.sharding.PartitionSpec()
    return {"out_sharding": jax.sharding.NamedSharding(sharding.mesh, spec)}


def _as_accumulator(choice: Any, count: int) -> Accumulator:
    if isinstance(choice, Accumulator) or all(hasattr(choice, a) for a in ("init", "update", "finalize", "aggregate")):
        return choice
    # Optax's AccumulationType members are accepted by name, so code mixing the two keeps working.
    kind = choice.name if isinstance(choice, enum.Enum) and type(choice).__name__ == "AccumulationType" else None
    builders = {"SUM": _sum, "MEAN": lambda: _mean(count), "RUNNING_MEAN": _running_mean, "CONCAT": lambda: _concat(count)}
    if kind not in builders:
        raise ValueError(f"microbatch: accumulator leaves must be AccumulationType members or Accumulators, got {choice!r}.")
    return builders[kind]()


def _is_accumulator_leaf(x: Any) -> bool:
    return isinstance(x, (Accumulator, enum.Enum))


def _combined(accumulators: Any, count: int) -> Accumulator:
    # One Accumulator from a tree of them (a prefix of the results' tree).
    tree = jax.tree.map(lambda a: _as_accumulator(a, count), accumulators, is_leaf=_is_accumulator_leaf)
    over = lambda fn, *trees: jax.tree.map(fn, tree, *trees, is_leaf=lambda x: isinstance(x, Accumulator))
    return Accumulator(
        lambda shapes: over(lambda a, s: a.init(s), shapes),
        lambda carry, value, i: over(lambda a, c, v: a.update(c, v, i), carry, value),
        lambda carry: over(lambda a, c: a.finalize(c), carry),
        lambda values: over(lambda a, v: a.aggregate(v), values),
    )


def reshape_batch_axis(tree: Any, microbatch_size: int, axis: int = 0) -> Any:
    """Split the batch axis of every leaf into ``(num_microbatches, microbatch_size)``, column-major.

    Microbatch :math:`m` of :math:`n` holds examples :math:`m, m + n, m + 2n, \\ldots`,
    so a batch axis sharded over devices keeps its sharding on the
    ``microbatch_size`` axis (on Explicit mesh axes it is laid out there; the
    number of shards must divide ``microbatch_size``). Same as
    ``optax.microbatching.reshape_batch_axis``.

    Args:
        tree: a tree of arrays, each with the batch axis ``axis``.
        microbatch_size: the examples per microbatch: a whole number >= 1 that divides the batch size.
        axis: the batch axis, counted from the front (a negative one raises); it becomes the two axes
            ``(num_microbatches, microbatch_size)``.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxopt_zoo.microbatching import reshape_batch_axis
        >>> reshape_batch_axis(jnp.arange(6), 3)
        Array([[0, 2, 4],
               [1, 3, 5]], dtype=int32)
    """
    owner = "reshape_batch_axis"
    microbatch_size = validation.whole_number(owner, "microbatch_size", microbatch_size, 1)
    axis = validation.whole_number(owner, "axis", axis)  # counted from the front: Optax's fail when negative

    def split(x):
        if axis >= x.ndim or x.shape[axis] % microbatch_size:
            raise ValueError(f"{owner}: a leaf of shape {x.shape} has no batch axis {axis} divisible by "
                             f"microbatch_size={microbatch_size}.")
        shape = x.shape[:axis] + (-1, microbatch_size) + x.shape[axis + 1 :]
        sharding = jax.typeof(x).sharding
        if not sharding.mesh.are_all_axes_explicit:
            return x.reshape(shape, order="F")
        spec = sharding.spec
        new_spec = spec if len(spec) < axis else jax.sharding.PartitionSpec(*spec[:axis], None, spec[axis], *spec[axis + 1 :])
        shards = x.shape[axis] // sharding.shard_shape(x.shape)[axis]
        if microbatch_size % shards:
            raise ValueError(
                f"reshape_batch_axis: the batch axis is split over {shards} shards, which must divide "
                f"microbatch_size={microbatch_size}."
            )
        return x.reshape(shape, order="F", out_sharding=jax.sharding.NamedSharding(sharding.mesh, new_spec))

    return jax.tree.map(split, tree)


def _as_tuple(value: Any, kind: type) -> tuple:
    return (value,) if isinstance(value, kind) else tuple(value)


def _positions(owner: str, name: str, value: Any) -> tuple[int, ...]:
    """``value``, an argument position or a sequence of them, as a tuple of ints; NumPy integers are ints too."""
    is_position = lambda i: isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_))  # noqa: E731
    if is_position(value):
        return (int(value),)
    if isinstance(value, Sequence) and not isinstance(value, str) and all(is_position(i) for i in value):
        return tuple(int(i) for i in value)
    raise ValueError(f"{owner}: {name} must be an int or a sequence of ints, got {value!r}.")


def microbatch(
    fun: Callable[..., Any],
    argnums: int | Sequence[int],
    microbatch_size: int | None,
    accumulator: Any = AccumulationType.SUM,
    *,
    argnames: str | Sequence[str] = (),
    in_axes: int | Sequence[int] = 0,
    num_real_microbatches: int | jax.Array | None = None,
) -> Callable[..., Any]:
    """``fun`` run on microbatches one after another, its results combined:
    :math:`F(x) = \\mathrm{acc}_{m=0}^{n-1} f(x^{(m)})`.

    The batch arguments (positions ``argnums`` and keywords ``argnames``, batch
    axis ``in_axes``, all of the same batch size :math:`B`) are split into
    :math:`n = B / \\mathit{microbatch\\_size}` microbatches by
    :func:`reshape_batch_axis`, and ``fun`` runs on each in a
    ``jax.lax.fori_loop``: peak memory is one microbatch's. ``accumulator`` is
    an :class:`AccumulationType`, an :class:`Accumulator` or a tree of them (a
    prefix of ``fun``'s output tree). ``num_real_microbatches`` stops the loop
    early (a traced value is allowed: variable batch sizes without
    recompiling). ``microbatch_size=None`` returns ``fun`` itself.

    Same arguments and numbers as ``optax.microbatch``. Deviations: arguments
    are checked when ``microbatch`` is called (``microbatch_size`` a whole
    number >= 1, ``argnums``/``argnames``/``in_axes`` consistent; NumPy integers
    are accepted as ints), and when the batch is seen: an empty batch (Optax:
    "num_microbatches=0 must be positive"), an ``argnums`` position or an
    ``argnames`` keyword the call lacks raise ``ValueError`` naming it (Optax:
    ``IndexError``, ``KeyError``); a
    ``num_real_microbatches`` above :math:`n` raises when the batch is seen
    (a traced one stops at :math:`n`; Optax reads past the batch: NaN), and
    ``RUNNING_MEAN`` keeps the carry's dtype (Optax's carry is promoted by its
    float weight, which fails for bfloat16 results or under x64), and it runs
    inside a ``shard_map`` that is manual over some of the mesh's axes only
    (Optax's fails there in JAX's ``zeros_like``).

    Args:
        fun: the function of a batch, run on one microbatch at a time (its other arguments as given).
        argnums: the position, or positions, of ``fun``'s batch arguments (may be ``()`` when
            ``argnames`` names some); each may be a tree of arrays.
        microbatch_size: the examples per microbatch, a whole number >= 1 that must divide the batch
            size (checked when the batch is seen); ``None`` returns ``fun`` itself.
        accumulator: how the microbatches' results combine: an :class:`~jaxopt_zoo.AccumulationType`
            (``MEAN`` and ``RUNNING_MEAN`` need floating results), an :class:`~jaxopt_zoo.Accumulator`,
            or a tree of them that is a prefix of ``fun``'s output tree.
        argnames: the name, or names, of ``fun``'s keyword batch arguments.
        in_axes: the batch axis of the batch arguments: one for all, or one each (``argnums``' first,
            then ``argnames``'), counted from the front (a negative one raises).
        num_real_microbatches: ``None`` runs every microbatch; a number runs the first ones only (the
            rest being padding): a whole number from 0 to their count where concrete (more raises
            when the batch is seen), and a traced one is capped at the count. ``MEAN`` still divides
            by the full count.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxopt_zoo.microbatching import AccumulationType, microbatch
        >>> fun = lambda x: (x + 1, jnp.sum(3 * x))
        >>> per_row = (AccumulationType.CONCAT, AccumulationType.SUM)
        >>> microbatch(fun, argnums=0, microbatch_size=2, accumulator=per_row)(jnp.array([1, 2, 3, 4]))
        (Array([2, 3, 4, 5], dtype=int32), Array(30, dtype=int32))
    """
    owner = "microbatch"
    argnums_given, in_axes_given = argnums, in_axes
    if not callable(fun):
        raise TypeError(f"{owner}: fun must be callable, got {fun!r}.")
    if microbatch_size is None:
        return fun
    microbatch_size = validation.whole_number(owner, "microbatch_size", microbatch_size, 1)
    argnums, argnames = _positions(owner, "argnums", argnums), _as_tuple(argnames, str)
    if not argnums and not argnames:
        raise ValueError(f"{owner}: name at least one batch argument (argnums or argnames).")
    in_axes = (in_axes,) * (len(argnums) + len(argnames)) if isinstance(in_axes, (int, np.integer)) else tuple(in_axes)
    # Counted from the front, as Optax's (whose negative axes fail in a reshape): refused here by name.
    in_axes = tuple(validation.whole_number(owner, "in_axes", ax) for ax in in_axes)
    if len(in_axes) != len(argnums) + len(argnames):
        raise ValueError(
            f"{owner}: in_axes has {len(in_axes)} entries for {len(argnums) + len(argnames)} batch arguments "
            "(argnums then argnames)."
        )
    if num_real_microbatches is not None and not isinstance(num_real_microbatches, jax.core.Tracer):
        validation.whole_number(owner, "num_real_microbatches", num_real_microbatches, 0, validation.INT32_MAX)
    positional_axes, keyword_axes = in_axes[: len(argnums)], in_axes[len(argnums) :]

    def batched(args, kwargs):
        return [(args[i], ax) for i, ax in zip(argnums, positional_axes)] + [
            (kwargs[k], ax) for k, ax in zip(argnames, keyword_axes)
        ]

    def microbatched(*args, **kwargs):
        missing = [i for i in argnums if not -len(args) <= i < len(args)]
        if missing:
            raise ValueError(
                f"{owner}: argnums={argnums_given!r} names positional argument {missing[0]}, but the function was "
                f"called with {len(args)} positional argument{'' if len(args) == 1 else 's'}; pass the batch there "
                "or name it in argnames."
            )
        missing = [k for k in argnames if k not in kwargs]
        if missing:
            raise ValueError(f"{owner}: argnames names the keyword argument {missing[0]!r}, but the function was "
                             f"called without it (keywords: {sorted(kwargs)}).")
        for tree, ax in batched(args, kwargs):
            for x in jax.tree.leaves(tree):
                if ax >= jnp.ndim(x):
                    raise ValueError(f"{owner}: in_axes gives batch axis {ax}, but a batch argument's leaf has shape "
                                     f"{jnp.shape(x)}.")
        sizes = {x.shape[ax] for tree, ax in batched(args, kwargs) for x in jax.tree.leaves(tree)}
        if not sizes:
            raise ValueError(f"{owner}: the batch arguments (argnums, argnames) hold no arrays to split.")
        if len(sizes) != 1:
            raise ValueError(f"{owner}: the batch arguments must have one batch size, got sizes {sorted(sizes)}.")
        (batch_size,) = sizes
        if batch_size == 0:  # no microbatch to run, nor one whose result shows the output's shape (Optax: the same)
            raise ValueError(f"{owner}: the batch is empty (batch size 0 along in_axes={in_axes_given!r}); pass at "
                             f"least one microbatch of microbatch_size={microbatch_size} examples.")
        if batch_size % microbatch_size:
            raise ValueError(f"{owner}: batch size {batch_size} is not divisible by microbatch_size={microbatch_size}.")
        count = batch_size // microbatch_size
        args, kwargs = list(args), dict(kwargs)
        for i, ax in zip(argnums, positional_axes):
            args[i] = reshape_batch_axis(args[i], microbatch_size, ax)
        for k, ax in zip(argnames, keyword_axes):
            kwargs[k] = reshape_batch_axis(kwargs[k], microbatch_size, ax)
        combine = _combined(accumulator, count)

        def on_microbatch(index):
            take = lambda tree, ax: jax.tree.map(functools.partial(jnp.take, indices=index, axis=ax), tree)
            sliced_args, sliced_kwargs = list(args), dict(kwargs)
            for i, ax in zip(argnums, positional_axes):
                sliced_args[i] = take(args[i], ax)
            for k, ax in zip(argnames, keyword_axes):
                sliced_kwargs[k] = take(kwargs[k], ax)
            return fun(*sliced_args, **sliced_kwargs)

        if num_real_microbatches is None:
            steps = count
        elif isinstance(num_real_microbatches, jax.core.Tracer):
            steps = jnp.minimum(num_real_microbatches, count)
        elif int(num_real_microbatches) > count:
            raise ValueError(
                f"{owner}: num_real_microbatches={num_real_microbatches!r} is more than the {count} microbatches "
                f"of this batch (batch size {batch_size}, microbatch_size={microbatch_size})."
            )
        else:
            steps = num_real_microbatches
        # Inside shard_map the zeros must vary over the manual axes as the results do (the loop carry's type), and
        # zeros_like of an abstract result there asserts in JAX (Optax's microbatch too): they are built from the
        # first microbatch's traced result, of which only the shape is used (dead code for XLA).
        inside_shard_map = bool(jax.sharding.get_abstract_mesh().manual_axes)
        carry = combine.init(on_microbatch(0) if inside_shard_map else jax.eval_shape(on_microbatch, 0))
        carry = jax.lax.fori_loop(0, steps, lambda i, c: combine.update(c, on_microbatch(i), i), carry)
        return combine.finalize(carry)

    return microbatched


def micro_vmap(
    fun: Callable[..., Any],
    in_axes: int | Sequence[int | None] = 0,
    out_axes: Any = 0,
    *,
    microbatch_size: int | None = None,
    vmap_fn: Callable[..., Callable[..., Any]] = jax.vmap,
    accumulator: Any = AccumulationType.CONCAT,
    num_real_microbatches: int | jax.Array | None = None,
) -> Callable[..., Any]:
    """``jax.vmap(fun)`` run ``microbatch_size`` rows at a time, its outputs concatenated or reduced over the batch.

    With the default ``CONCAT`` it returns what ``vmap_fn(fun, in_axes, 0)``
    returns; ``SUM``/``MEAN``/``RUNNING_MEAN`` (or a tree of them) reduce the
    batch axis instead, so the per-row outputs are never all held at once.
    Keyword arguments are mapped over axis 0. ``out_axes`` must be 0. Same as
    ``optax.microbatching.micro_vmap``.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxopt_zoo.microbatching import AccumulationType, micro_vmap
        >>> micro_vmap(lambda x: x**2, microbatch_size=2, accumulator=AccumulationType.SUM)(jnp.arange(4.0))
        Array(14., dtype=float32)
    """
    if out_axes != 0:
        raise NotImplementedError("micro_vmap: out_axes must be 0.")
    in_axes = (int(in_axes),) if isinstance(in_axes, (int, np.integer)) else tuple(in_axes)

    def map_and_reduce(*args, kwargs):
        outputs = vmap_fn(fun, in_axes, out_axes)(*args, **kwargs)
        rows = jax.tree.leaves(outputs)[0].shape[0]
        return _combined(accumulator, rows).aggregate(outputs)  # reduces this microbatch's rows

    mapped = [i for i, ax in enumerate(in_axes) if ax is not None]
    run = microbatch(
        map_and_reduce, argnums=tuple(mapped), microbatch_size=microbatch_size, accumulator=accumulator,
        argnames="kwargs", in_axes=tuple(in_axes[i] for i in mapped) + (0,), num_real_microbatches=num_real_microbatches,
    )
    return lambda *args, **kwargs: run(*args, kwargs=kwargs)


IndividualOutputs = collections.namedtuple("Aux", ["values", "metrics", "aux"])
"""What :func:`micro_grad` returns per example: the loss ``values``, ``metrics_fn``'s ``metrics``, ``fun``'s ``aux``."""


def micro_grad(
    fun: Callable[..., Any],
    has_aux: bool = False,
    argnums: int | Sequence[int] = 0,
    *,
    batch_argnums: int | Sequence[int] = 1,
    keep_batch_dim: bool = True,
    microbatch_size: int | None = None,
    accumulator: Any = AccumulationType.SUM,
    transform_fn: Callable[[Any], Any] = lambda x: x,
    metrics_fn: Callable[[Any], Any] = lambda x: None,
    num_real_microbatches: int | jax.Array | None = None,
) -> Callable[..., tuple[Any, Any]]:
    """Per-example gradients, transformed and accumulated: :math:`G = \\mathrm{acc}_b\\, T(\\nabla_\\theta f(\\theta; x_b))`.

    Each example's gradient (``fun`` on a batch of one, along ``batch_argnums``)
    goes through ``transform_fn`` (say a per-example clip) and is combined by
    ``accumulator`` (sum by default); ``metrics_fn`` of each raw gradient, the
    loss values and ``fun``'s aux come back per example in an
    :data:`IndividualOutputs`. Computed by :func:`micro_vmap`, so
    ``microbatch_size`` bounds memory. ``keep_batch_dim`` hands ``fun`` a batch
    axis of size 1. Same arguments and numbers as ``optax.microbatching.micro_grad``; ``batch_argnums`` (ints,
    NumPy's too) must name at least one argument, each >= 0 and passed by the call, else a ``ValueError`` names it
    (Optax fails inside ``max`` or ``vmap``).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxopt_zoo.microbatching import AccumulationType, micro_grad
        >>> loss = lambda w, x, y: 0.5 * jnp.mean((x @ w - y) ** 2)
        >>> grads, aux = micro_grad(loss, batch_argnums=(1, 2), accumulator=AccumulationType.MEAN)(
        ...     jnp.zeros(1), jnp.ones((4, 1)), jnp.array([0.0, 2.0, 4.0, 6.0]))
        >>> grads, aux.values
        (Array([-3.], dtype=float32), Array([ 0.,  2.,  8., 18.], dtype=float32))
    """
    owner = "micro_grad"
    batch_argnums = _positions(owner, "batch_argnums", batch_argnums)
    if not batch_argnums:
        raise ValueError(f"{owner}: batch_argnums must name at least one argument holding the batch, got "
                         f"{batch_argnums!r}.")
    if any(i < 0 for i in batch_argnums):  # they index a list of in_axes built from the front
        raise ValueError(f"{owner}: batch_argnums must be >= 0 (counted from the front), got {batch_argnums!r}.")
    with_aux = fun if has_aux else (lambda *args, **kwargs: (fun(*args, **kwargs), None))
    value_and_grad = jax.value_and_grad(with_aux, argnums, has_aux=True)

    def per_example(*args, **kwargs):
        (value, aux), grad = value_and_grad(*args, **kwargs)
        return transform_fn(grad), IndividualOutputs(values=value, metrics=metrics_fn(grad), aux=aux)

    in_axes = [None] * (max(batch_argnums) + 1)
    for i in batch_argnums:
        in_axes[i] = 0
    mapped = micro_vmap(
        per_example, in_axes=in_axes, microbatch_size=microbatch_size, accumulator=(accumulator, AccumulationType.CONCAT),
        num_real_microbatches=num_real_microbatches,
    )

    def run(*args, **kwargs):
        if max(batch_argnums) >= len(args):
            raise ValueError(
                f"{owner}: batch_argnums={batch_argnums!r} names positional argument {max(batch_argnums)}, but the "
                f"function was called with {len(args)} positional argument{'' if len(args) == 1 else 's'}."
            )
        return mapped(*args, **kwargs)

    if not keep_batch_dim:
        return run

    def with_batch_of_one(*args, **kwargs):
        args = [jax.tree.map(lambda x: jnp.expand_dims(x, 1), a) if i in batch_argnums else a for i, a in enumerate(args)]
        return run(*args, **kwargs)

    return with_batch_of_one
