"""Sharded training: optimizer state laid out like the params, and reductions that are exact inside ``shard_map``.

Under ``jax.jit`` with sharded arrays, JAX's partitioner already computes every
update exactly; what it does not do is give a freshly initialised state the
params' layout: ``jax.jit(tx.init)(params)`` puts the whole state on one device
(or replicates it). :func:`init_sharded` builds each state leaf directly on the
shards its parameter lives on.

Inside ``shard_map`` each device sees only its shard, so a norm over a sharded
array must be summed over the mesh axes it is split along. The transformations
that reduce whole arrays (``clip_by_global_norm``, ``clip_by_block_rms``,
``scale_by_trust_ratio`` and so ``lars`` and ``lamb``, ``apply_if_finite``) take
``axis_name``; without it they raise when they see an array that varies over a
mesh axis, rather than return one shard's answer. ``adaptive_grad_clip``, whose
unit norms cannot be told from shard norms, raises there in any case. Naming
every ``shard_map`` axis is always safe: each array is summed only over the
axes it varies along, which ``shard_map``'s default ``check_vma=True`` tracks
(with ``check_vma=False`` these transformations raise). ``centralize``, whose
row means must not mix the shards of a leaf's first axis, needs the updates'
``partition_specs`` with ``axis_name`` (it raises without them). Outside ``shard_map``
``axis_name`` changes nothing, so one optimizer serves both. Axes of ``vmap``
are not mesh axes: there, reduce the updates yourself first. ``jax.pmap`` runs
as a ``shard_map`` that does not track varying values (as ``check_vma=False``):
inside it these transformations raise unless ``axis_name=()``, which, with the
gradients already averaged across devices (``jax.lax.pmean``), gives each
device the global value (what Optax computes under ``pmap``).

One pitfall of data parallelism inside ``shard_map`` that no optimizer can
catch: the gradient of a param replicated over ``"data"`` comes out of
``jax.grad`` already summed over the data shards, so ``pmean`` the *loss* over
``"data"``; a ``pmean`` of such gradients changes nothing.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxopt_zoo.docstrings import document_args

AxisName = str | tuple[str, ...] | None


def _mesh_of(owner: str, params: Any) -> Mesh | None:
    meshes = {x.sharding.mesh for x in jax.tree.leaves(params)
              if isinstance(getattr(x, "sharding", None), NamedSharding)}
    if len(meshes) > 1:
        raise ValueError(f"{owner}: the params live on {len(meshes)} different meshes; put them on one mesh.")
    return meshes.pop() if meshes else None


def _spec_of(owner: str, x: Any) -> PartitionSpec:
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, NamedSharding):
        return sharding.spec
    if sharding is None or sharding.is_fully_replicated:
        return PartitionSpec()
    raise ValueError(
        f"{owner}: a param of shape {x.shape} has sharding {sharding}; use a NamedSharding over a Mesh "
        "(jax.device_put(x, NamedSharding(mesh, PartitionSpec(...))))."
    )


def _state_shardings(owner: str, tx: Any, params: Any) -> Any:
    init = tx.init if hasattr(tx, "init") else tx
    mesh = _mesh_of(owner, params)
    if mesh is None:
        return None
    explicit = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Explicit,) * len(mesh.axis_names))
    typed = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            jnp.shape(x), jnp.result_type(x), sharding=NamedSharding(explicit, _spec_of(owner, x))
        ),
        params,
    )
    try:
        with jax.set_mesh(explicit):
            abstract_state = jax.eval_shape(init, typed)
    except Exception as error:
        # JAX's sharding-in-types rules reject some operations (e.g. concatenating
        # differently sharded arrays); its error class is not public.
        if type(error).__name__ != "ShardingTypeError":
            raise
        raise ValueError(
            f"{owner}: tracing this transformation's init with sharded types failed ({type(error).__name__}: "
            f"{str(error).splitlines()[0]}). Initialise it with jax.jit(tx.init, out_shardings=...) and shardings "
            "of your choice."
        ) from error

    def like_traced(leaf):
        spec = leaf.sharding.spec if isinstance(getattr(leaf, "sharding", None), NamedSharding) else PartitionSpec()
        if not mesh.explicit_axes:
            # Under Auto axes a jitted step returns P('d') where the sharded types say P('d', None): the same
            # layout, another cache key, so a state placed as the latter compiled the step a second time.
            entries = list(spec)
            while entries and entries[-1] is None:
                entries.pop()
            spec = PartitionSpec(*entries)
        elif len(spec) < jnp.ndim(leaf):
            # Under Explicit axes a jitted step returns a spec of one entry per dimension: P(None) for a vector
            # built from constants (Muon's coefficients, PSGD's key), which the trace left as P().
            spec = PartitionSpec(*spec, *[None] * (jnp.ndim(leaf) - len(spec)))
        return NamedSharding(mesh, spec)

    return jax.tree.map(like_traced, abstract_state)


def state_shardings(tx: Any, params: Any) -> Any:
    """The shardings ``tx.init(params)`` should have: each per-parameter leaf like its param, the rest replicated.

    Traces ``init`` once, abstractly, under an Explicit-axes copy of the
    params' mesh, where JAX carries each array's sharding in its type: a state
    leaf built from a param (``zeros_like``, ``astype``, arithmetic) gets the
    param's sharding. A leaf built from a shape alone (``jnp.zeros(p.shape)``)
    comes out replicated, and an init that JAX cannot trace with sharded types
    raises. Returns a tree of ``NamedSharding`` shaped like the state, usable as
    ``out_shardings`` or an Orbax restore target; or ``None`` when no param has
    a ``NamedSharding``. Under Auto mesh axes a spec has no trailing ``None``
    (``P('d')`` for a matrix split by rows), and under Explicit axes one entry
    per dimension (``P(None)`` for a replicated vector), as a jitted step returns
    it, so that a state placed with it does not compile the step a second time.

    Args:
        tx: the transformation, or its ``init``.
        params: the params, each leaf an array with a ``NamedSharding`` over one mesh shared by all, or an
            unsharded array (taken as replicated); several meshes, or another sharding that splits an array, raise
            ``ValueError``.
    """
    return _state_shardings("state_shardings", tx, params)


@document_args(state_shardings)
def init_sharded(tx: Any, params: Any) -> Any:
    """``tx.init(params)`` with every per-parameter state leaf sharded like its param, scalars replicated.

    Each device allocates only its own shards: nothing is first built whole on
    one device. Works under Auto and Explicit mesh axes, for ours and Optax's
    transformations (see :func:`state_shardings` for which leaves follow the
    params); without a mesh it is ``tx.init(params)``.

    Example:
        >>> import jax, jax.numpy as jnp, jaxopt_zoo as jz
        >>> from jax.sharding import NamedSharding, PartitionSpec as P
        >>> mesh = jax.make_mesh((jax.device_count(),), ("model",))
        >>> params = {"w": jax.device_put(jnp.ones((8, 2)), NamedSharding(mesh, P("model")))}
        >>> state = jz.init_sharded(jz.adam(1e-3), params)
        >>> state[0].mu["w"].sharding.spec, state[0].count.sharding.spec
        (P('model', None), P())
    """
    init = tx.init if hasattr(tx, "init") else tx
    shardings = _state_shardings("init_sharded", init, params)
    if shardings is None:
        return init(params)
    return jax.jit(init, out_shardings=shardings)(params)


@document_args(state_shardings)
def check_state_shardings(tx: Any, params: Any, state: Any) -> None:
    """Raise ``ValueError`` naming every state leaf whose sharding differs from its param's.

    Call it after restoring a checkpoint or building state by hand: a state
    laid out differently from the params makes every step reshard (slow), or
    holds a full copy per device (memory). Scalars may be anywhere.

    Args:
        state: the optimizer state to check, shaped like ``tx.init(params)`` (else ``ValueError``).
    """
    expected = _state_shardings("check_state_shardings", tx, params)
    if expected is None:
        return
    if jax.tree.structure(expected) != jax.tree.structure(state):
        paths = lambda tree: {jax.tree_util.keystr(path) for path, _ in jax.tree.leaves_with_path(tree)}
        only_state, only_init = sorted(paths(state) - paths(expected)), sorted(paths(expected) - paths(state))
        raise ValueError(
            "check_state_shardings: the state is not shaped like tx.init(params): "
            f"paths only in the state: {only_state or 'none'}; only in tx.init(params): {only_init or 'none'}."
        )
    problems = []
    for (path, want), have in zip(jax.tree.leaves_with_path(expected), jax.tree.leaves(state)):
        sharding = getattr(have, "sharding", None)
        if jnp.size(have) <= 1 or sharding is None:
            continue
        if not sharding.is_equivalent_to(want, jnp.ndim(have)):
            got = sharding.spec if isinstance(sharding, NamedSharding) else sharding
            problems.append(f"state{jax.tree_util.keystr(path)} is sharded {got}, expected {want.spec}")
    if problems:
        raise ValueError(
            "check_state_shardings: the optimizer state is not laid out like the params: "
            + "; ".join(problems)
            + ". Build it with jz.init_sharded(tx, params), or jax.device_put(state, jz.state_shardings(tx, params))."
        )


def varying_axes(x: Any) -> frozenset[str]:
    """The ``shard_map`` mesh axes over which ``x`` differs from device to device (empty outside ``shard_map``)."""
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)  # JAX >= 0.9; earlier versions call it ``vma``
    return frozenset(manual.varying if manual is not None else getattr(aval, "vma", ()))


def varying_like(tree: Any, *refs: Any) -> Any:
    """``tree``'s arrays marked as varying over every ``shard_map`` axis that an array of ``refs`` varies over: a
    loop's carry that starts from constants, for a body that mixes them with varying operands (``check_vma``
    wants its input and output types equal). Unchanged outside ``shard_map``."""
    axes = frozenset().union(*map(varying_axes, jax.tree.leaves(refs)))

    def cast(x: Any) -> Any:
        missing = tuple(sorted(axes - varying_axes(x)))
        return jax.lax.pcast(x, missing, to="varying") if missing else x

    return jax.tree.map(cast, tree) if axes else tree


class _ManualContext(NamedTuple):
    mesh_axes: tuple[str, ...]  # all axes of the enclosing mesh
    manual: tuple[str, ...]  # those shard_map made manual (empty under plain jit)
    tracked: bool  # whether shard_map tracks which values vary (check_vma=True)


def manual_context() -> _ManualContext:
    """The enclosing ``shard_map``'s mesh axes, its manual axes, and whether it tracks varying values."""
    mesh = jax.sharding.get_abstract_mesh()
    manual = tuple(getattr(mesh, "manual_axes", ()))
    # Under check_vma=False nothing varies, not even the device's own index.
    tracked = bool(manual) and manual[0] in varying_axes(jax.lax.axis_index(manual[0]))
    return _ManualContext(tuple(getattr(mesh, "axis_names", ())), manual, tracked)


def _axes_to_sum(owner: str, x: Any, axis_name: AxisName, context: _ManualContext) -> tuple[str, ...]:
    if not context.manual:
        return ()  # no shard_map: arrays are global, and the partitioner makes every reduction exact
    if axis_name == ():
        return ()  # per-shard values, asked for
    if not context.tracked:
        raise ValueError(
            f"{owner}: inside jax.pmap, or shard_map(..., check_vma=False), nothing tells sharded arrays from "
            "replicated ones, so this reduction cannot be made exact on its own. Under pmap, with the gradients "
            "averaged across devices first (jax.lax.pmean), pass axis_name=(): each device's value is then the "
            f"global one. Inside shard_map, use check_vma=True (the default) with axis_name={context.manual!r}, or "
            "axis_name=() for per-shard values."
        )
    varying = varying_axes(x)
    if axis_name is None:
        if varying:
            raise ValueError(
                f"{owner}: inside shard_map, an array of local shape {jnp.shape(x)} varies over mesh axes "
                f"{sorted(varying)}, so this reduction would see one shard only. Pass axis_name={context.manual!r} "
                "(the shard_map axes) for the exact global value, or axis_name=() for per-shard values."
            )
        return ()
    unknown = [name for name in axis_name if name not in context.mesh_axes]
    if unknown:
        raise ValueError(f"{owner}: axis_name={axis_name!r} names {unknown}, not axes of the mesh {context.mesh_axes}.")
    missing = varying - set(axis_name)
    if missing:
        raise ValueError(
            f"{owner}: axis_name={axis_name!r} leaves out mesh axes {sorted(missing)} that an array of local shape "
            f"{jnp.shape(x)} varies over, so its reduction would be partial. Name every shard_map axis (always "
            "safe), or pass axis_name=() for per-shard values."
        )
    return tuple(name for name in axis_name if name in varying)


def require_whole_arrays(owner: str, tree: Any, *, remedy: str | None = None,
                         operation: str = "this reduction would see one shard only") -> None:
    """Raise if, inside ``shard_map``, any leaf may be a shard rather than a whole array.

    For transformations that cannot work on shards as they are configured, so the message offers what the
    caller can do instead: ``remedy`` (by default: the transformation has no ``axis_name`` option, and what
    works without one); ``operation`` says what would go wrong on a shard.
    """
    context = manual_context()
    if not context.manual:
        return
    remedy = remedy or (
        f"{owner} has no axis_name option: call it outside shard_map, under jax.jit with sharded arrays (where it is "
        f"exact), or hand it whole arrays inside shard_map (replicated, e.g. gathered with jax.lax.all_gather)."
    )
    if not context.tracked:
        raise ValueError(
            f"{owner}: inside jax.pmap, or shard_map(..., check_vma=False), nothing tells sharded arrays from "
            f"replicated ones, so {operation.replace(' would ', ' may ')}. {remedy} Inside shard_map with "
            "check_vma=True (the default) replicated arrays are accepted."
        )
    for x in jax.tree.leaves(tree):
        varying = varying_axes(x)
        if varying:
            raise ValueError(
                f"{owner}: inside shard_map, an array of local shape {jnp.shape(x)} varies over mesh axes "
                f"{sorted(varying)}, so {operation}. {remedy}"
            )


def sum_over_shards(owner: str, partials: Iterable[tuple[jax.Array, Any]], axis_name: AxisName) -> jax.Array:
    """Sum of per-array partial results, each summed over the mesh axes its array is sharded along.

    ``partials`` pairs a local reduction (e.g. the sum of squares of a shard)
    with the array it came from. Arrays sharded along the same axes share one
    ``psum``; outside ``shard_map`` this is a plain sum in the given order.
    """
    context = manual_context()
    groups: dict[tuple[str, ...], jax.Array] = {}
    for partial, source in partials:
        axes = _axes_to_sum(owner, source, axis_name, context)
        groups[axes] = partial if axes not in groups else groups[axes] + partial
    total = [jax.lax.psum(value, axes) if axes else value for axes, value in groups.items()]
    return sum(total[1:], total[0]) if total else jnp.array(0.0)


def axis_size(owner: str, x: Any, axis_name: AxisName) -> int:
    """How many shards of ``x`` there are along ``axis_name`` (1 outside ``shard_map``)."""
    size = 1
    for name in _axes_to_sum(owner, x, axis_name, manual_context()):
        size *= jax.lax.psum(1, name)
    return size


def split_axes(owner: str, x: Any, reduced: Any, axis_name: AxisName) -> tuple[str, ...]:
    """Inside ``shard_map``: the mesh axes a reduction of ``x`` (kept as ``reduced``, a factor or accumulator
    with one entry across the reduced axes) is split across, i.e. those ``x`` varies over and ``reduced``
    does not; a ``psum``/``pmax`` over them completes it. ``axis_name`` is validated as every whole-array
    reduction's is: a sharded ``x`` without it raises, and ``()`` asks for per-shard values."""
    axis_size(owner, x, axis_name)
    if not axis_name:
        return ()
    return tuple(a for a in axis_name if a in varying_axes(x) and a not in varying_axes(reduced))


def explicit_layout(x: Any) -> NamedSharding | None:
    """The sharding of ``x`` when it is split over Explicit mesh axes (sharding in types), else ``None``.

    On Explicit axes JAX refuses to choose a layout itself for a reshape or a product over a split axis, so code
    that needs whole arrays (Kronecker factors, Newton–Schulz) gathers such an ``x`` first
    (``jax.sharding.reshard(x, NamedSharding(mesh, PartitionSpec()))``) and lays its result out like ``x`` again
    with this sharding.
    On Auto axes (``None`` here) the partitioner chooses the collectives itself.
    """
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh, spec = getattr(sharding, "mesh", None), getattr(sharding, "spec", None)
    explicit = any(t == AxisType.Explicit for t in getattr(mesh, "axis_types", ()))
    return sharding if explicit and spec is not None and any(a is not None for a in spec) else None


def gathered(x: jax.Array) -> tuple[jax.Array, NamedSharding | None]:
    """``x`` whole on every device and its sharding, when it is split over Explicit mesh axes (see
    :func:`explicit_layout`); else ``(x, None)``. Lay a result out like ``x`` again with
    ``jax.sharding.reshard(result, sharding)``."""
    split = explicit_layout(x)
    return (x, None) if split is None else (jax.sharding.reshard(x, NamedSharding(split.mesh, PartitionSpec())), split)


# Inside shard_map: leaves as local blocks of whole arrays, for rules that need the whole arrays (Newton–Schulz,
# Kronecker factors). A leaf's placement lists, per dimension, the mesh axes it is split over (``()``: whole).
Placement = tuple[tuple[str, ...], ...]


def is_partition_spec(x: Any) -> bool:
    return x is None or isinstance(x, PartitionSpec)


def check_partition_specs(owner: str, partition_specs: Any) -> None:
    """Raise unless ``partition_specs`` is ``None`` or a tree (or prefix of one) of PartitionSpecs."""
    bad = [s for s in jax.tree.leaves(partition_specs, is_leaf=is_partition_spec) if not is_partition_spec(s)]
    if bad:
        raise ValueError(f"{owner}: partition_specs must be PartitionSpecs (a tree or prefix of them), got {bad[0]!r}.")


def leaf_specs(owner: str, partition_specs: Any, tree: Any) -> list | None:
    """``partition_specs`` (a tree of specs, or a prefix of ``tree``'s) as one spec per leaf of ``tree``, ``None``
    leaves counted (``jax.tree.leaves(tree, is_leaf=lambda x: x is None)`` order); ``None`` when not given."""
    if partition_specs is None:
        return None
    is_none = lambda x: x is None  # noqa: E731
    try:
        spread = jax.tree.map(lambda s, sub: jax.tree.map(lambda _: s, sub, is_leaf=is_none), partition_specs, tree,
                              is_leaf=is_partition_spec)
    except ValueError as error:
        raise ValueError(
            f"{owner}: partition_specs must be shaped like the updates (or a prefix of them): one PartitionSpec per "
            f"leaf, as shard_map's in_specs for the params. JAX: {' '.join(str(error).split())}") from None
    return jax.tree.structure(tree, is_leaf=is_none).flatten_up_to(spread)


def placement_of(owner: str, spec: PartitionSpec | None, ndim: int) -> Placement:
    entries = () if spec is None else tuple(spec)
    if len(entries) > ndim or any(e is not None and not isinstance(e, (str, tuple)) for e in entries):
        raise ValueError(f"{owner}: partition_specs gives {spec} for a leaf of rank {ndim}; give mesh axis names or "
                         "None for at most that many dimensions.")
    whole = ((),) * (ndim - len(entries))
    return tuple(() if e is None else (e,) if isinstance(e, str) else tuple(e) for e in entries) + whole


def local_placements(owner: str, leaves: list, specs: list | None, axis_name: tuple[str, ...] | None,
                     needs: str) -> list[Placement] | None:
    """Inside ``shard_map``, each leaf's placement (from ``specs``, the params' ``in_specs`` per leaf), checked
    against ``axis_name`` and the axes the leaf varies over; ``None`` outside ``shard_map``. ``needs`` says, in the
    message for a split leaf without ``axis_name``, what needs whole arrays. ``None`` leaves get ``None``."""
    context = manual_context()
    if not context.manual:
        return None
    unknown = [a for a in axis_name or () if a not in context.manual]
    if unknown:
        raise ValueError(f"{owner}: axis_name={axis_name!r} names {unknown}, not shard_map axes {context.manual}.")
    if not context.tracked and specs is None:
        raise ValueError(f"{owner}: inside jax.pmap, or shard_map(..., check_vma=False), nothing tells blocks from "
                         "whole arrays: pass axis_name and partition_specs (the params' in_specs, P() for whole "
                         "arrays). Under pmap each device holds whole arrays: axis_name=() and P() for every leaf.")
    placements = [None if x is None else placement_of(owner, None if specs is None else s, x.ndim)
                  for x, s in zip(leaves, specs or leaves)]
    for x, p in zip(leaves, placements):
        if x is None:
            continue
        named, varying = set().union(*p), varying_axes(x)
        if varying and axis_name is None:
            raise ValueError(
                f"{owner}: inside shard_map, an array of local shape {x.shape} varies over mesh axes "
                f"{sorted(varying)}: it is a block of a whole array, and {needs}. Pass "
                f"axis_name={context.manual!r} and partition_specs (the params' in_specs).")
        if varying and specs is None:
            raise ValueError(f"{owner}: inside shard_map, axis_name needs partition_specs (the params' in_specs): "
                             f"an array of local shape {x.shape} does not say which of its dimensions are split.")
        if (context.tracked and named != varying) or not named <= set(axis_name or ()):
            raise ValueError(
                f"{owner}: partition_specs gives {PartitionSpec(*p)} for an array of local shape {x.shape} that "
                f"varies over mesh axes {sorted(varying)}, with axis_name={axis_name!r}: the spec must name exactly "
                "the axes the array varies over, each of them in axis_name.")
    return placements


def split_over(placement: Placement) -> tuple[str, ...]:
    """Every mesh axis of ``placement``, in the order of its dimensions (the order :func:`jaxopt_zoo.stack_sharding`
    splits a stack of the leaf's blocks over)."""
    return tuple(a for axes in placement for a in axes)


def whole_shape(x: Any, placement: Placement | None) -> tuple[int, ...]:
    """Inside ``shard_map``: the shape of the whole array of which ``x`` is the local block placed by ``placement``."""
    placement = placement or ((),) * jnp.ndim(x)
    return tuple(n * (jax.lax.axis_size(axes) if axes else 1) for n, axes in zip(jnp.shape(x), placement))


def whole_leaf(x: jax.Array, placement: Placement | None) -> jax.Array:
    """Inside ``shard_map``: the whole array of which ``x`` is the local block placed by ``placement`` (the same on
    every device)."""
    for d, axes in enumerate(placement or ()):
        if axes:
            x = jax.lax.all_gather(x, axes, axis=d, tiled=True, to="invarying")
    return x


def local_block(x: jax.Array, placement: Placement | None) -> jax.Array:
    """Inside ``shard_map``: this device's block of the whole array ``x``, placed by ``placement``."""
    for d, axes in enumerate(placement or ()):
        if axes:
            size = x.shape[d] // jax.lax.axis_size(axes)
            x = jax.lax.dynamic_slice_in_dim(x, jax.lax.axis_index(axes) * size, size, axis=d)
    return x


def on_auto_axes(update: Callable[[Any, Any, tuple[str, ...]], Any], updates: Any, state: Any,
                 partition_specs: Any, state_specs: Callable[[list, dict[str, int]], Any]) -> Any:
    """Under ``jit`` on Auto mesh axes (a mesh set by ``jax.set_mesh``), where the arrays' types do not say how they
    are split, given ``partition_specs`` (the params' specs, a tree or prefix): ``update(updates, state, axis_name)``
    run inside a ``shard_map`` over the mesh, ``axis_name`` every mesh axis, the updates laid out by
    ``partition_specs`` and the state by ``state_specs(specs per leaf, mesh axis sizes)``, so that the update's own
    collectives serve (as inside a user's ``shard_map``) rather than the partitioner's. ``None`` elsewhere: no
    specs, no mesh, inside ``shard_map``, on Explicit axes (whose types say it), or a leaf that its spec does not
    split evenly (which ``shard_map`` cannot take, and the partitioner pads)."""
    mesh = jax.sharding.get_abstract_mesh()
    if (partition_specs is None or mesh.empty or manual_context().manual
            or any(t == AxisType.Explicit for t in mesh.axis_types)):
        return None
    specs = leaf_specs("on_auto_axes", partition_specs, updates)
    leaves = jax.tree.leaves(updates, is_leaf=lambda x: x is None)
    sizes = dict(mesh.shape)
    if any(x is not None and any(n % math.prod(sizes[a] for a in axes) for n, axes in
                                 zip(jnp.shape(x), placement_of("on_auto_axes", s, jnp.ndim(x))))
           for x, s in zip(leaves, specs)):
        return None
    update_specs = jax.tree.structure(updates, is_leaf=lambda x: x is None).unflatten(
        [PartitionSpec() if s is None else s for s in specs])
    state_tree = state_specs(specs, sizes)
    run = lambda u, s: update(u, s, tuple(mesh.axis_names))  # noqa: E731
    return jax.shard_map(run, mesh=mesh, in_specs=(update_specs, state_tree),
                         out_specs=(update_specs, state_tree))(updates, state)
