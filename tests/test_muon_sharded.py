"""Layer-sharded Muon (issue 18): each matrix orthogonalised whole on one device, on 8 simulated CPU devices.

Every variant (jit on Auto mesh axes with and without partition_specs, jit on Explicit axes, shard_map with
axis_name) is compared bit for bit with ``layer_sharding=True`` on one device, itself compared with the plain
path (the same rule: float64 to 1e-12, float32 within the few ulp XLA's different fusions give). The compiled
step is checked for collectives: all-to-alls only, none inside the iteration, where the plain path all-reduces.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxopt_zoo as jz
from tests.conftest import assert_programs_agree, assert_trees_close, grad_fn

AXES = ("data", "model")
LR = 0.05
STEPS = 2
# Three (8, 16) matrices (a count 8 does not divide) laid out three ways and a fourth without updates (None),
# a tall one split along its fan-out over both axes, an (in, heads, out) leaf split along in and heads (one
# matrix per head), an (in1, in2, out) leaf whose second fan-in axis is split (gathered before the exchange),
# and a vector (Adam's, the rest of the chain).
SHAPES = {"a0": (8, 16), "a1": (8, 16), "a2": (8, 16), "none": (8, 16), "tall": (16, 8), "heads": (8, 4, 16),
          "merged": (4, 4, 8), "b": (16,)}
SPECS = {"a0": P("data", "model"), "a1": P("model"), "a2": P(), "none": P("data"), "tall": P(None, ("data", "model")),
         "heads": P("data", "model"), "merged": P(None, "model", "data"), "b": P("model")}
DIMS = {k: jz.MuonDimensionNumbers() for k in SHAPES} | {
    "heads": jz.MuonDimensionNumbers(0, 2), "merged": jz.MuonDimensionNumbers((0, 1), 2), "b": None}


def make_params(dtype=jnp.float32):
    rng = np.random.default_rng(0)
    return {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in SHAPES.items()}


def muon(**options):
    return jz.muon(LR, weight_decay=0.01, muon_weight_dimension_numbers=DIMS, **options)


def pair(**options):
    """Muon without and with the adaptive scale (a sum over each leaf: exact only to rounding under sharding)."""
    return muon(**options), muon(adaptive=True, **options)


def mesh_of(axis_type=AxisType.Auto):
    return jax.make_mesh((2, 4), AXES, axis_types=(axis_type,) * 2, devices=jax.devices("cpu")[:8])


def put(tree, mesh):
    return {k: jax.device_put(v, NamedSharding(mesh, SPECS[k])) for k, v in tree.items()}


def run(txs, params, mesh=None):
    """STEPS jitted, donated steps of each of ``txs`` in one program; on ``mesh`` everything laid out by SPECS."""
    params = jax.tree.map(jnp.copy, params) if mesh is None else put(params, mesh)
    states = [jz.init_sharded(tx, params) for tx in txs]

    def step(params, states, grads):
        out = [tx.update(grads, state, p) for tx, state, p in zip(txs, states, params)]
        return [jz.apply_updates(p, u) for p, (u, _) in zip(params, out)], [state for _, state in out]

    step, params = jax.jit(step, donate_argnums=(0, 1)), [jax.tree.map(jnp.copy, params) for _ in txs]
    for t in range(1, STEPS + 1):
        grads = {k: grad_fn(p, t, jnp) for k, p in params[0].items()} | {"none": None}
        params, states = step(params, states, grads)
    return params, states


@pytest.fixture(scope="module")
def one_device():
    return run(pair(layer_sharding=True), make_params())


def test_layer_sharding_on_one_device_is_muon(one_device, x64):
    # The same rule as the plain path: float64 to 1e-12; in float32 XLA fuses the plain path's iteration with the
    # momentum's arithmetic, which rounds differently (a few ulp, amplified by the iteration and the steps).
    params = make_params(jnp.float64)
    assert_trees_close(run(pair(layer_sharding=True), params)[0], run(pair(), params)[0], rtol=1e-12, atol=1e-12)
    with jax.enable_x64(False):
        plain = run(pair(), make_params())[0]
    assert_trees_close(one_device[0], plain, rtol=1e-4, atol=1e-5)
    initial = make_params()
    assert not np.allclose(one_device[0][0]["a0"], initial["a0"])
    np.testing.assert_array_equal(one_device[0][0]["none"], initial["none"])  # None updates: param and momentum kept
    assert not np.any(one_device[1][0].inner_states["muon"].inner_state[0].mu["none"])


@pytest.mark.parametrize("axis_type, specs", [(AxisType.Auto, SPECS), (AxisType.Auto, None),
                                              (AxisType.Explicit, None)],
                         ids=["auto-partition_specs", "auto-partitioner", "explicit"])
def test_jit_on_sharded_params_equals_one_device(one_device, axis_type, specs):
    mesh = mesh_of(axis_type)
    params, states = run([muon(layer_sharding=True, partition_specs=specs)], make_params(), mesh)
    assert_programs_agree(params[0], one_device[0][0])
    assert_programs_agree(jax.tree.leaves(states[0]), jax.tree.leaves(one_device[1][0]))
    for k, p in params[0].items():  # laid out as before, the state too (init_sharded)
        assert p.sharding.is_equivalent_to(NamedSharding(mesh, SPECS[k]), p.ndim), k
    muon_state = states[0].inner_states["muon"].inner_state[0]
    assert muon_state.mu["heads"].sharding.is_equivalent_to(NamedSharding(mesh, SPECS["heads"]), 3)


def shard_map_update(txs, mesh, params):
    states = [jz.init_sharded(tx, params) for tx in txs]
    state_specs = [jax.tree.map(lambda s: s.spec, jz.state_shardings(tx, params)) for tx in txs]
    local = jax.shard_map(lambda g, s, p: [tx.update(g, x, p) for tx, x in zip(txs, s)], mesh=mesh,
                          in_specs=(SPECS, state_specs, SPECS), out_specs=[(SPECS, s) for s in state_specs])
    return jax.jit(local)(params, states, params)


def test_shard_map_with_axis_name_equals_one_device_and_without_it_raises():
    mesh, params = mesh_of(), make_params()
    txs = pair(layer_sharding=True, axis_name=AXES, partition_specs=SPECS)
    # (the state an argument: a zero momentum folded into the program would round the first step differently)
    one = jax.jit(lambda p, s: [tx.update(p, x, p) for tx, x in zip(txs, s)])(params, [tx.init(params) for tx in txs])
    local = shard_map_update(txs, mesh, put(params, mesh))
    assert_programs_agree(local[0], one[0])
    assert_trees_close(local[1], one[1], rtol=1e-5, atol=1e-6)  # adaptive: its sum is psummed over blocks
    with pytest.raises(ValueError, match=r"scale_by_muon: inside shard_map, an array of local shape \(4, 4\) varies "
                                         r"over mesh axes \['data', 'model'\].*Pass axis_name=\('data', 'model'\)"):
        shard_map_update([muon(layer_sharding=True)], mesh, put(params, mesh))
    with pytest.raises(ValueError, match="needs partition_specs"):
        shard_map_update([muon(layer_sharding=True, axis_name=AXES)], mesh, put(params, mesh))
    wrong = SPECS | {"a0": P("data")}  # the block varies over both axes
    with pytest.raises(ValueError, match=r"partition_specs gives P\('data', None\) for an array of local "
                                         r"shape \(4, 4\) that varies over mesh axes \['data', 'model'\]"):
        shard_map_update([muon(layer_sharding=True, axis_name=AXES, partition_specs=wrong)], mesh, put(params, mesh))


def collectives(compiled) -> dict[str, int]:
    ops = re.findall(r" (all-to-all|all-gather|all-reduce|reduce-scatter|collective-permute)(?:-start)?\(",
                     compiled.as_text())
    return {op: ops.count(op) for op in set(ops)}


def test_compiled_step_exchanges_whole_matrices_once():
    # Eight (16, 16) matrices split over both axes: one matrix per device, two all-to-alls each way (one per
    # split matrix axis), no all-reduce (the plain path all-reduces inside every Newton-Schulz step), and
    # 1/8 of the one-device FLOPs (plus the elementwise rest).
    mesh, spec = mesh_of(), P("data", "model")
    params = {f"w{i}": jax.device_put(jnp.ones((16, 16)), NamedSharding(mesh, spec)) for i in range(8)}
    specs = jax.tree.map(lambda _: spec, params)

    def compiled(tx, params):
        return jax.jit(lambda g, s: tx.update(g, s)).lower(params, jz.init_sharded(tx, params)).compile()

    layered = compiled(jz.scale_by_muon(layer_sharding=True, partition_specs=specs), params)
    assert collectives(layered) == {"all-to-all": 4}
    assert "all-reduce" in collectives(compiled(jz.scale_by_muon(), params))
    alone = compiled(jz.scale_by_muon(layer_sharding=True), jax.device_get(params))
    flops = lambda c: (lambda a: a[0] if isinstance(a, (list, tuple)) else a)(c.cost_analysis())["flops"]
    assert flops(layered) < 0.15 * flops(alone)


def test_inject_hyperparams_with_layer_sharding(one_device):
    hyperparams = dict(learning_rate=LR, weight_decay=0.01, beta=0.95, eps=1e-8)
    injected = jz.inject_hyperparams(jz.muon)(**hyperparams, muon_weight_dimension_numbers=DIMS,
                                              layer_sharding=True, partition_specs=SPECS)
    params, states = run([injected], make_params(), mesh_of())
    assert_trees_close(params[0], one_device[0][0], rtol=1e-5, atol=1e-6)
    assert set(hyperparams) <= set(states[0].hyperparams)


def test_bad_layer_sharding_options_raise():
    with pytest.raises(ValueError, match=r"^scale_by_muon: layer_sharding must be True or False, got 1"):
        jz.scale_by_muon(layer_sharding=1)
    with pytest.raises(ValueError, match=r"^scale_by_muon: axis_name and partition_specs are options of layer_shar"):
        jz.scale_by_muon(axis_name="data")
    with pytest.raises(ValueError, match=r"^muon: axis_name must be None, a mesh axis name"):
        jz.muon(0.1, layer_sharding=True, axis_name=3)
    with pytest.raises(ValueError, match=r"^scale_by_muon: partition_specs must be PartitionSpecs.*'data'"):
        jz.scale_by_muon(layer_sharding=True, partition_specs={"w": "data"})
