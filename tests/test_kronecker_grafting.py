"""The Kronecker-factored preconditioners' shared pieces (merged and blocked layouts, statistics, mode products)
and layer-wise grafting."""

from __future__ import annotations

import functools
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_zoo as jz
from tests import reference
from tests.conftest import (
    SHARD_AXES, SHARD_SPECS, assert_trees_close, assert_trees_equal, grad_fn, make_params, run_ours, run_reference,
    shard_map_steps, sharded_params,
)


# --- merging and blocking ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, max_dim, expected",
    [
        ((3, 3, 64, 128), 1024, (576, 128)),  # a convolution kernel: 3 * 3 * 64 = 576 <= 1024 < 576 * 128
        ((1, 2, 5, 1), 10, (10,)),  # size-1 dimensions dropped, the rest merged
        ((4, 1, 3), 11, (4, 3)),  # 12 > 11
        ((2, 3, 4), 100, (24,)),
        ((1, 1), 4, (1,)),
        ((), 4, ()),
        ((5000,), 4, (5000,)),  # a dimension over the limit stays (it is blocked, not merged)
    ],
)
def test_merge_dims_follows_distributed_shampoos_rule(shape, max_dim, expected):
    assert jz.merge_dims(shape, max_dim) == expected


@pytest.mark.parametrize(
    "shape, max_dim, merge",
    [((7, 5), 4, True), ((2, 3, 5), 4, True), ((2, 3, 5), 4, False), ((9,), 4, True), ((8, 8), 4, True),
     ((), 4, True), ((1, 6), 6, True), ((3, 1, 2), 100, False)],
)
def test_blocks_are_the_slices_of_the_merged_leaf_and_round_trip(shape, max_dim, merge):
    x = np.arange(float(np.prod(shape))).reshape(shape)
    layout = jz.block_layout(shape, max_dim, merge)
    stacks = jz.to_blocks(jnp.asarray(x), layout)
    assert tuple(s.shape for s in stacks) == layout.stack_shapes
    assert all(size <= max_dim for stack in layout.stack_shapes for size in stack[1:])
    np.testing.assert_array_equal(np.asarray(jz.from_blocks(stacks, layout)), x)
    # Every block, in row-major block order, is the slice of the merged leaf it stands for: cut each merged
    # dimension into pieces of max_dim and a remainder and check all blocks of every combination of pieces.
    merged = x.reshape(layout.merged)
    cuts = [[(s, min(s + max_dim, d)) for s in range(0, d, max_dim)] for d in layout.merged]
    seen = 0
    for stack in stacks:
        for block in np.asarray(stack):
            matches = [
                c for c in itertools.product(*cuts)
                if tuple(b - a for a, b in c) == block.shape and np.array_equal(merged[tuple(slice(a, b) for a, b in c)], block)
            ]
            assert len(matches) == 1
            seen += 1
    assert seen == max(1, int(np.prod([len(c) for c in cuts])))


def test_dim_statistics_and_mode_products_match_their_definitions():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(2, 3, 4))
    stats = jz.dim_statistics(jnp.asarray(g))
    np.testing.assert_allclose(stats[0], np.einsum("ijk,ljk->il", g, g), rtol=1e-5)
    np.testing.assert_allclose(stats[1], np.einsum("ijk,ilk->jl", g, g), rtol=1e-5)
    np.testing.assert_allclose(stats[2], np.einsum("ijk,ijl->kl", g, g), rtol=1e-5)
    a, c = rng.normal(size=(2, 2)), rng.normal(size=(4, 4))
    np.testing.assert_allclose(jz.mode_product(jnp.asarray(g), [a, None, c]), np.einsum("ai,ijk,ck->ajc", a, g, c), rtol=1e-5)
    np.testing.assert_allclose(
        jz.mode_product(jnp.asarray(g), [a, None, c], transpose=True), np.einsum("ia,ijk,kc->ajc", a, g, c), rtol=1e-5
    )
    m = rng.normal(size=(3, 5))
    left, right = rng.normal(size=(3, 3)), rng.normal(size=(5, 5))
    np.testing.assert_allclose(jz.mode_product(jnp.asarray(m), [left, right]), left @ m @ right.T, rtol=1e-5)
    b = rng.normal(size=(3, 3))
    np.testing.assert_allclose(jz.mode_product(jnp.asarray(g), [a, b, c]), np.einsum("ai,bj,ijk,ck->abc", a, b, g, c), rtol=1e-5)
    np.testing.assert_allclose(
        jz.mode_product(jnp.asarray(g), [a, b, c], transpose=True), np.einsum("ia,jb,ijk,kc->abc", a, b, g, c), rtol=1e-5
    )


def _moved(hlo: str, shape: tuple[int, ...]) -> list[str]:
    """The lines of compiled HLO that make an array of ``shape`` (or a stack of one) by a transpose, or hold one in
    another than row-major layout."""
    found = []
    for dims in (shape, (1, *shape)):
        pattern = r"f32\[" + ",".join(map(str, dims)) + r"\]\{([\d,]+)\}"
        row_major = ",".join(map(str, reversed(range(len(dims)))))
        found += [line.strip()[:160] for line in hlo.splitlines()
                  for layout in re.findall(pattern, line) if layout != row_major or " transpose(" in line]
    return found


@pytest.mark.parametrize("shape, rotated", [((6, 5), (0, 1)), ((40, 6), (1,)), ((6, 40), (0,)), ((6, 40, 4), (0, 2))])
def test_mode_products_and_soaps_step_move_no_data(shape, rotated):
    """Every product's result comes out in place when no middle dimension is rotated: a transposed copy (or the
    transposed layout XLA picks instead) is paid for again by every reader; on CPUs SOAP's step on an 8192 x 512
    leaf spent 3x its products' time in them."""
    x = jnp.ones(shape)
    matrices = [jnp.eye(d) if i in rotated else None for i, d in enumerate(shape)]
    for transpose in (False, True):
        hlo = jax.jit(lambda x, ms: jz.mode_product(x, ms, transpose=transpose)).lower(x, matrices).compile().as_text()
        assert f"f32[{','.join(map(str, shape))}]" in hlo  # the check below looks at something
        assert _moved(hlo, shape) == [], (transpose, _moved(hlo, shape))
    # SOAP's whole step, its refresh branch included, for the moments' shape (dimensions above max_precond_dim stay
    # unrotated); its factors (d x d) may be laid out as LAPACK wants them.
    tx = jz.soap(0.1, precondition_frequency=2, max_precond_dim=max(shape[i] for i in rotated), blocking=False,
                 merge_dims=False)
    step = jax.jit(lambda g, s: tx.update(g, s, g)).lower([x], tx.init([x])).compile().as_text()
    assert f"f32[{','.join(map(str, shape))}]" in step
    assert _moved(step, shape) == [], _moved(step, shape)


WHOLE_BLOCKS = {"shampoo": lambda **k: jz.shampoo(0.1, eps=1e-4, precondition_frequency=1, max_precond_dim=4, **k),
                "soap": lambda **k: jz.soap(0.01, precondition_frequency=2, max_precond_dim=4, **k)}


def _whole_blocks_params() -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    return {"w": jnp.asarray(rng.normal(size=(32, 8)), jnp.float32),
            "v": jnp.asarray(rng.normal(size=(16, 12)), jnp.float32),
            "u": jnp.asarray(rng.normal(size=(16, 16)), jnp.float32),
            "x": jnp.asarray(rng.normal(size=(3, 8, 16)), jnp.float32)}


@functools.cache
def _whole_blocks_on_one_device(name: str) -> dict[str, np.ndarray]:
    # Computed once per optimizer for the three settings below.
    return jax.tree.map(np.asarray, run_ours(WHOLE_BLOCKS[name](), _whole_blocks_params(), steps=4)[0][-1])


@pytest.mark.parametrize("where", ["shard_map", "explicit", "auto"])
@pytest.mark.parametrize("name", ["shampoo", "soap"])
def test_leaves_split_into_whole_blocks_are_worked_where_they_lie(name, where):
    # Leaves split at block boundaries (w: one row of 4 x 4 blocks per device, v: two per "data" shard, u: 2 x 1
    # blocks per device of a 2 x 4 split, x: split along its last dimension): nothing is gathered, inside shard_map
    # or under jit on Explicit axes. A device's rows are its share of the factors' stacks; u's and x's blocks go to
    # the devices whose shares hold them, one block to each of 2 devices (2 rounds), for each leaf taken to blocks
    # or back (Shampoo: g, the momentum, the result; SOAP: g, mu, nu and back). Under jit on Auto axes, given
    # partition_specs, the update runs as inside shard_map (the partitioner gathered the factors for the refresh's
    # eighs and QRs). The steps equal one device's.
    make, params = WHOLE_BLOCKS[name], _whole_blocks_params()
    specs = {"w": jax.sharding.PartitionSpec(SHARD_AXES), "v": jax.sharding.PartitionSpec("data"),
             "u": jax.sharding.PartitionSpec(*SHARD_AXES), "x": jax.sharding.PartitionSpec(None, None, "model")}
    axis_type = jax.sharding.AxisType.Explicit if where == "explicit" else jax.sharding.AxisType.Auto
    mesh = jax.make_mesh((2, 4), SHARD_AXES, axis_types=(axis_type,) * 2)
    tx = {"shard_map": lambda: make(axis_name=SHARD_AXES, partition_specs=specs), "explicit": make,
          "auto": lambda: make(partition_specs=specs)}[where]()
    placed = {k: jax.device_put(v, jax.sharding.NamedSharding(mesh, specs[k])) for k, v in params.items()}

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return jz.apply_updates(p, u), s

    with jax.set_mesh(mesh):
        sharded = (placed, jz.init_sharded(tx, placed))
        if where == "shard_map":
            state_specs = jax.tree.map(lambda s: s.spec, jz.state_shardings(tx, placed))
            step = jax.shard_map(step, mesh=mesh, in_specs=(specs, state_specs, specs), out_specs=(specs, state_specs))
        local = jax.jit(step).lower(*sharded, placed).compile()
        program = local.as_text()
        assert "all-gather" not in program
        assert program.count("collective-permute-start(" if "collective-permute-start(" in program
                             else "collective-permute(") == 4 * (3 if name == "shampoo" else 6)
        for t in range(1, 5):  # conftest's gradients (of the whole arrays, outside shard_map), as run_ours takes them
            sharded = local(*sharded, {k: grad_fn(x, t, jnp) for k, x in sharded[0].items()})
    # (SOAP on Explicit axes: 1.9e-6 apart on x, as much when x is gathered whole: products batched over fewer blocks)
    assert_trees_close(sharded[0], _whole_blocks_on_one_device(name), rtol=1e-5, atol=3e-6)
    assert sharded[0]["w"].sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, specs["w"]), 2)


@pytest.mark.parametrize("shape, block, placement, sizes, rounds", [
    ((16, 16), 4, (("data",), ("model",)), {"data": 2, "model": 4}, [2]),
    ((16, 16), 4, (("model",), ("data",)), {"data": 2, "model": 4}, [0]),  # a device's blocks are its share
    ((12, 20), 4, ((), ("x",)), {"x": 5}, [3]),
    ((3, 8, 16), 4, ((), (), ("model",)), {"model": 4}, [2]),
    ((16, 6, 16), 4, (("a",), (), ("b", "c")), {"a": 2, "b": 2, "c": 2}, [2, 2]),  # 6 = 4 + 2: two stacks
    ((1, 16, 1, 8), 4, ((), ("a",), (), ("b",)), {"a": 2, "b": 2}, [1]),  # size-1 dimensions are dropped
    ((32, 8), 4, (("a", "b"), ()), {"a": 2, "b": 4}, [0]),  # rows: nothing moves
    ((32, 32), 4, (("data",), ("model",)), {"data": 2, "model": 2}, [2]),  # 8 blocks to each of 2 devices, together
])
def test_block_moves_bring_every_device_its_share_of_each_stack(shape, block, placement, sizes, rounds):
    # The plan alone, played out in NumPy for every device: its part of the leaf cut into blocks, then sent round
    # by round (each round a permutation of the devices), ends as its consecutive share of each whole stack. Rounds
    # whose every block stays where it is are dropped (so 1 round, not 2, for the size-1 case).
    from jaxopt_zoo.transforms import kronecker
    layout = jz.block_layout(shape, block)
    local = kronecker._local_layout(layout, placement, sizes)
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    whole = [np.asarray(s) for s in jz.to_blocks(jnp.asarray(x), layout)]
    axes = [a for p in placement for a in p]
    devices = list(itertools.product(*(range(sizes[a]) for a in axes)))
    parts = []
    for coords in devices:
        at = dict(zip(axes, coords))
        index = []
        for n, p in zip(shape, placement):
            ways = int(np.prod([sizes[a] for a in p]))
            i = 0
            for a in p:
                i = i * sizes[a] + at[a]
            index.append(slice(i * n // ways, (i + 1) * n // ways))
        parts.append([np.asarray(s) for s in jz.to_blocks(jnp.asarray(x[tuple(index)]), local._replace(moves=None))])
    moves = local.moves.rounds if local.moves else [()] * len(whole)
    assert [len(r) for r in moves] == rounds  # by hand: a round per destination, less rounds where nothing moves
    for k, (stack, plan) in enumerate(zip(whole, moves)):
        held = [p[k].copy() for p in parts]
        for r in plan:
            assert sorted(s for s, _ in r.pairs) == sorted(d for _, d in r.pairs) == list(range(len(devices)))
            for s, d in r.pairs:  # (what a device sends is read from its stack as cut)
                held[d][list(r.receive[d])] = parts[s][k][list(r.send[s])]
        share = len(stack) // len(devices)
        for device, h in enumerate(held):
            np.testing.assert_array_equal(h, stack[device * share:(device + 1) * share])


@pytest.mark.parametrize("shape, spec", [
    ((16, 16), ("data", "model")),
    ((32, 16), ("model", "data")),  # axes in the other order than the mesh's
    ((8, 64), (None, ("model", "data"))),
    ((12, 16, 32), (None, "data", "model")),
    ((20, 16), ("data", "model")),  # 10 rows per device: not whole blocks, gathered
])
def test_blocks_of_a_split_leaf_on_explicit_axes_are_one_devices_blocks(shape, spec):
    # Whatever the split, to_blocks gives one device's stacks (split over the leaf's axes where its parts are whole
    # blocks, each device sending its blocks by ppermute) and from_blocks gives the leaf back in its layout. (jax
    # 0.10's ppermute numbers devices in the mesh's axis order whatever order it is given: ("model", "data") failed.)
    layout = jz.block_layout(shape, 4)
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    mesh = jax.make_mesh((2, 4), SHARD_AXES, axis_types=(jax.sharding.AxisType.Explicit,) * 2)
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
    with jax.set_mesh(mesh):
        placed = jax.device_put(x, split)
        stacks = jax.jit(lambda y: jz.to_blocks(y, layout))(placed)
        back = jax.jit(lambda s, y: jz.from_blocks(s, layout, like=y))(stacks, placed)
    for ours, one in zip(stacks, jz.to_blocks(x, layout), strict=True):
        np.testing.assert_array_equal(ours, one)
    np.testing.assert_array_equal(back, x)
    assert back.sharding.is_equivalent_to(split, len(shape))


def test_a_split_of_merged_dimensions_is_not_whole_blocks():
    from jaxopt_zoo.transforms import kronecker
    layout = jz.block_layout((2, 2, 16), 4)  # merged (4, 16): the first two dimensions are one block
    assert kronecker._local_layout(layout, (("a",), (), ()), {"a": 2}) is None
    assert kronecker._local_layout(layout, ((), (), ("a",)), {"a": 2}) is not None


def test_specs_that_do_not_split_a_leaf_evenly_leave_auto_axes_to_the_partitioner():
    # partition_specs naming 4 devices for 10 rows (the leaf itself replicated): shard_map cannot take such a
    # split, so the update falls back to the partitioner's collectives instead of raising.
    params = {"w": jnp.asarray(np.random.default_rng(2).normal(size=(10, 16)), jnp.float32)}
    make = lambda **k: jz.soap(0.01, precondition_frequency=2, max_precond_dim=4, **k)  # noqa: E731
    tx = make(partition_specs={"w": jax.sharding.PartitionSpec("model")})
    mesh = jax.make_mesh((2, 4), SHARD_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)
    with jax.set_mesh(mesh):
        state, p = tx.init(params), params
        for t in range(1, 4):
            updates, state = jax.jit(tx.update)({"w": grad_fn(p["w"], t, jnp)}, state, p)
            p = jz.apply_updates(p, updates)
    assert_trees_close(p, run_ours(make(), params, steps=3)[0][-1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["shampoo", "soap"])
def test_factors_held_whole_serve_leaves_split_into_whole_blocks_on_explicit_axes(name):
    # A state whose factors are replicated (not init_sharded's layout) still steps a leaf whose blocks each device
    # cuts from its own share: the blocks are gathered to the factors' layout, and the state keeps its layout (a
    # refresh cond whose branches came out laid out differently failed to trace).
    make = WHOLE_BLOCKS[name]
    params = {"w": jnp.asarray(np.random.default_rng(1).normal(size=(32, 8)), jnp.float32)}
    mesh = jax.make_mesh((2, 4), SHARD_AXES, axis_types=(jax.sharding.AxisType.Explicit,) * 2)
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(SHARD_AXES))
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    tx, placed = make(), {"w": jax.device_put(params["w"], split)}
    with jax.set_mesh(mesh):
        state = jax.tree.map(lambda x: jax.device_put(x, whole) if x.ndim == 3 else x, jz.init_sharded(tx, placed))
        for t in range(1, 4):
            updates, state = jax.jit(tx.update)({"w": grad_fn(placed["w"], t, jnp)}, state, placed)
            placed = jz.apply_updates(placed, updates)
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state) if x.ndim == 3)
    assert_trees_close(placed, run_ours(make(), params, steps=3)[0][-1], rtol=1e-5, atol=3e-6)


# --- grafting ----------------------------------------------------------------------------------------------

GRAFTED = jz.chain(jz.graft(jz.scale_by_adam(), jz.scale_by_sign()), jz.scale(-0.05))


def test_graft_matches_the_float64_reference(x64):
    params = make_params(jnp.float64)
    ours, _ = run_ours(GRAFTED, params, steps=20)
    assert_trees_close(ours, run_reference(reference.graft_adam_sign(0.05), params, steps=20), rtol=1e-10)


def test_graft_of_a_zero_direction_is_zero_and_none_leaves_pass():
    tx = jz.graft(jz.scale(2.0), jz.scale(0.0))
    g = {"w": jnp.array([1.0, 2.0]), "skip": None}
    updates, state = tx.update(g, tx.init({"w": g["w"], "skip": None}))
    np.testing.assert_array_equal(updates["w"], [0.0, 0.0])
    assert updates["skip"] is None and isinstance(state, jz.GraftState)


def test_graft_rejects_what_is_not_a_transformation():
    with pytest.raises(TypeError, match="graft: expected gradient transformations"):
        jz.graft(3.0, jz.scale_by_sign())


def test_graft_under_shard_map_needs_axis_name_and_is_then_exact():
    one_device, _ = run_ours(jz.chain(jz.graft(jz.scale_by_adam(), jz.scale_by_sign()), jz.scale(-0.05)),
                             sharded_params(), steps=2, jit=False)
    sharded = shard_map_steps(
        jz.chain(jz.graft(jz.scale_by_adam(), jz.scale_by_sign(), axis_name=("data", "model")), jz.scale(-0.05))
    )
    assert_trees_close(sharded, one_device[-1], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="graft: inside shard_map.*axis_name"):
        shard_map_steps(jz.chain(jz.graft(jz.scale_by_adam(), jz.scale_by_sign()), jz.scale(-0.05)))


def test_graft_per_block_takes_each_blocks_norms():
    # Blocks of 2: [3, -4] -> sign [1, -1] at the norm 5 of g's block, [0, 2] -> [0, 1] at norm 2. Per leaf, every
    # entry of sign(g) would get sqrt(29) / sqrt(3).
    g = jnp.array([3.0, -4.0, 0.0, 2.0])
    per_block = jz.graft(jz.scale(1.0), jz.scale_by_sign(), max_block_dim=2)
    np.testing.assert_allclose(per_block.update(g, per_block.init(g))[0], [5 / 2**0.5, -5 / 2**0.5, 0.0, 2.0],
                               rtol=1e-6)
    per_leaf = jz.graft(jz.scale(1.0), jz.scale_by_sign())
    np.testing.assert_allclose(per_leaf.update(g, per_leaf.init(g))[0], np.array([1, -1, 0, 1]) * np.sqrt(29 / 3),
                               rtol=1e-6)
    # A matrix's blocks are those of jz.block_layout: (3, 4) at 2 is four 2 x 2 blocks and two 1 x 2 ones.
    m = jnp.arange(1.0, 13.0).reshape(3, 4)
    tx = jz.graft(jz.scale_by_sign(), jz.scale(1.0), max_block_dim=2)  # each block at the norm of its signs
    out = np.asarray(tx.update(m, tx.init(m))[0])
    for rows, cols in itertools.product((slice(0, 2), slice(2, 3)), (slice(0, 2), slice(2, 4))):
        block = np.asarray(m)[rows, cols]
        np.testing.assert_allclose(out[rows, cols], block * np.sqrt(block.size) / np.linalg.norm(block), rtol=1e-6)


def test_graft_per_block_keeps_an_overflowing_square_in_its_own_block():
    # 3e19 squared overflows float32: the one-hot sums made the other blocks' steps NaN (inf * 0), and Shampoo's
    # params with them, for good; in a matrix, so did two squares whose partial sum along one axis overflows.
    # Squares are held below float32's largest number over the block's size (2 here, 4 below).
    tx = jz.graft(jz.scale_by_sign(), jz.scale(1.0), max_block_dim=2)
    g = jnp.array([3e19, 1.0, 3.0, -4.0])
    huge = np.sqrt(np.float64(np.finfo(np.float32).max) / 2)
    np.testing.assert_allclose(tx.update(g, tx.init(g))[0], [3e19 * 2**0.5 / huge, 2**0.5 / huge, 3 * 2**0.5 / 5,
                                                             -4 * 2**0.5 / 5], rtol=1e-5)
    m = jnp.arange(1.0, 17.0).reshape(4, 4)
    for big in (m.at[0, 0].set(3e19).at[1, 0].set(1e16), m.at[0, 0].set(1.5e19).at[1, 0].set(1.5e19)):
        out = np.asarray(tx.update(big, tx.init(big))[0])
        assert np.isfinite(out).all()
        block = np.asarray(big)[2:, 2:]  # a block without a large entry: at the norm of its signs, 2
        np.testing.assert_allclose(out[2:, 2:], block * 2 / np.linalg.norm(block), rtol=1e-6)


def test_graft_per_block_inside_shard_map_equals_one_device_and_needs_partition_specs():
    # w (8, 16) split 2 x 4 is eight 4 x 4 blocks across the devices' shards; b (16,) four blocks of 4.
    make = lambda **k: jz.chain(jz.graft(jz.scale_by_adam(), jz.scale_by_sign(), max_block_dim=4, **k),  # noqa: E731
                                jz.scale(-0.05))
    one_device, _ = run_ours(make(), sharded_params(), steps=2, jit=False)
    sharded = shard_map_steps(make(axis_name=("data", "model"), partition_specs=SHARD_SPECS))
    assert_trees_close(sharded, one_device[-1], rtol=1e-6, atol=1e-7)
    per_leaf, _ = run_ours(jz.chain(jz.graft(jz.scale_by_adam(), jz.scale_by_sign()), jz.scale(-0.05)),
                           sharded_params(), steps=2, jit=False)
    assert not np.allclose(per_leaf[-1]["w"], one_device[-1]["w"], rtol=1e-3)  # the blocks' norms did differ
    # Nothing gathered: per-block sums of squares, completed by an all-reduce of the small table.
    tx, mesh = make(axis_name=SHARD_AXES, partition_specs=SHARD_SPECS), jax.make_mesh((2, 4), SHARD_AXES)
    params = {k: jax.device_put(v, jax.sharding.NamedSharding(mesh, SHARD_SPECS[k]))
              for k, v in sharded_params().items()}
    state = jz.init_sharded(tx, params)
    specs = jax.tree.map(lambda s: s.spec, jz.state_shardings(tx, params))
    update = jax.shard_map(lambda g, s: tx.update(g, s), mesh=mesh, in_specs=(SHARD_SPECS, specs),
                           out_specs=(SHARD_SPECS, specs))
    hlo = jax.jit(update).lower(params, state).compile().as_text()
    assert "all-gather" not in hlo and "all-reduce" in hlo
    with pytest.raises(ValueError, match="graft: inside shard_map, axis_name needs partition_specs"):
        shard_map_steps(make(axis_name=("data", "model")))
    with pytest.raises(ValueError, match="graft: max_block_dim must be"):
        jz.graft(jz.scale(1.0), jz.scale(1.0), max_block_dim=0)


def test_graft_vmaps_and_jits_with_donation():
    from tests.conftest import assert_vmap_matches_separate_runs

    assert_vmap_matches_separate_runs(GRAFTED, rtol=1e-5, atol=1e-6)  # norms of jitted and eager float32 steps round apart
    params = make_params()
    state = GRAFTED.init(params)
    step = jax.jit(GRAFTED.update, donate_argnums=(1,))
    updates, state = step(params, state, params)
    assert all(jnp.isfinite(u).all() for u in jax.tree.leaves(updates))


def test_stacked_eigh_decomposes_each_matrix_of_the_stack():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 5, 5))
    stack = jnp.asarray(a @ a.transpose(0, 2, 1), jnp.float32)
    values, vectors = jax.jit(jz.stacked_eigh)(stack)
    np.testing.assert_allclose(values, np.linalg.eigvalsh(np.asarray(stack, np.float64)), rtol=1e-4, atol=1e-4)
    rebuilt = np.einsum("bij,bj,bkj->bik", vectors, values, vectors)
    np.testing.assert_allclose(rebuilt, stack, rtol=1e-4, atol=1e-4)


def test_a_stack_of_one_matrix_is_decomposed_on_a_cpu_without_a_loop():
    # On CPUs a stack's matrices are decomposed one at a time in a loop (lax.map); a stack of one, most leaves'
    # stacks, needs no loop (5 of every 6 ms of tracing, lowering and compiling a 128 x 128 QR alone): the same numbers.
    rng = np.random.default_rng(2)
    a = rng.normal(size=(3, 5, 5))
    stacks = {"one": jnp.asarray(a[:1] @ a[:1].transpose(0, 2, 1), jnp.float32),
              "three": jnp.asarray(a @ a.transpose(0, 2, 1), jnp.float32)}
    decompositions = {"eigh": (jz.stacked_eigh, jnp.linalg.eigh), "qr": (jz.stacked_qr, lambda m: jnp.linalg.qr(m)[0])}
    for name, (stacked, one_matrix) in decompositions.items():
        loops = {size: jax.jit(stacked).trace(x).lower(lowering_platforms=("cpu",)).as_text().count("stablehlo.while")
                 for size, x in stacks.items()}
        assert loops == {"one": 0, "three": 1}, (name, loops)
        for x in stacks.values():
            assert_trees_equal(jax.jit(stacked)(x), jax.jit(lambda m: jax.lax.map(one_matrix, m))(x))


def test_graft_passes_the_magnitude_through_where_it_is_not_active():
    # active reads the direction's new state: here a step count, grafting from the second step on.
    tx = jz.graft(jz.scale(3.0), jz.chain(jz.scale_by_sign(), jz.scale_by_schedule(lambda count: 1.0)),
                  active=lambda state: state[1].count >= 2)
    g = jnp.array([3.0, -4.0])
    first, state = tx.update(g, tx.init(g))
    second, _ = tx.update(g, state)
    np.testing.assert_allclose(first, 3.0 * g)  # the magnitude's own update
    np.testing.assert_allclose(second, np.sign(g) * 15.0 / np.sqrt(2.0), rtol=1e-6)  # grafted


def test_block_layout_and_merge_dims_refuse_a_size_below_one_or_fractional():
    # The optimizers check their max_precond_dim; the public helpers divided by 0 or returned negative blocks.
    for call, message in [
        (lambda: jz.block_layout((4, 4), 0), r"^block_layout: max_precond_dim must be an integer >= 1, got 0"),
        (lambda: jz.block_layout((4, 4), 1.5), r"^block_layout: max_precond_dim .* got 1\.5"),
        (lambda: jz.merge_dims((4, 4), -1), r"^merge_dims: max_dim must be an integer >= 1, got -1"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()


def test_shampoo_and_soap_refuse_complex_params():
    # Their factors G G^T of a complex G are not Hermitian: they used to step on, silently wrong.
    params = {"w": jnp.ones((3, 4), jnp.complex64), "b": jnp.ones(4)}
    for tx, owner in [(jz.shampoo(0.1), "shampoo"), (jz.soap(0.1), "soap"), (jz.scale_by_shampoo(), "scale_by_shampoo"),
                      (jz.scale_by_soap(), "scale_by_soap")]:
        with pytest.raises(ValueError, match=rf"^{owner}: complex params are not supported .*split_real_and_imag"):
            tx.init(params)


def test_graft_checks_active_and_takes_an_integer_direction():
    # active=True failed at the first update with "'bool' object is not callable", a vector from active with a
    # broadcasting error, and 0.5 was taken as true; an integer direction was truncated (or, in blocks, refused by
    # jnp.finfo).
    params = jnp.ones((4, 4))
    with pytest.raises(ValueError, match="graft: active must be None .* got True"):
        jz.graft(jz.scale_by_adam(), jz.scale_by_sign(), active=True)
    for returned in (jnp.ones(3, bool), 0.5):
        tx = jz.graft(jz.scale_by_adam(), jz.scale_by_sign(), active=lambda state, r=returned: r)
        with pytest.raises(ValueError, match="graft: active must return a boolean scalar"):
            tx.update(params, tx.init(params))
    grads = jnp.array([[3, -4, 0, 1], [5, 1, -2, 2]])
    for max_block_dim in (None, 2):
        tx = jz.graft(jz.scale_by_adam(), jz.scale_by_sign(), max_block_dim=max_block_dim)
        state = tx.init(grads.astype(jnp.float32))
        np.testing.assert_array_equal(tx.update(grads, state)[0], tx.update(grads.astype(jnp.float32), state)[0])
