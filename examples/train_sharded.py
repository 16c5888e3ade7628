"""Train a tensor- and data-parallel MLP on 8 devices, under ``jax.jit`` and under ``jax.shard_map``.

    python examples/train_sharded.py                      # ~10 s on 2 CPU cores
    python examples/train_sharded.py --steps 10           # quick check
    python examples/train_sharded.py --optimizer shampoo  # each device refreshes its own factor blocks

Runs anywhere: it asks XLA for 8 simulated CPU devices (set JAX_PLATFORMS to
use real accelerators instead) and lays them out as a 2 x 4 mesh, ("data",
"model"). The digits MLP is split Megatron-style: the hidden units are divided
over "model" (w1 by columns, w2 by rows) and the batch over "data". It shows:

* ``jz.init_sharded`` building the AdamW moments with the params' layout, and
  ``jz.check_state_shardings`` confirming the layout survives training;
* one optimizer for every run: under plain ``jax.jit`` the partitioner makes the
  global norm exact, inside ``shard_map`` ``clip_by_global_norm``'s ``axis_name`` does;
* with ``--optimizer shampoo``, Shampoo's factors cut into 64-wide blocks laid out across
  the devices (each "model" shard keeps and refreshes its own blocks' factors), inside
  ``shard_map`` given ``axis_name`` and the params' specs;
* that each device holds about a quarter of the params and state;
* that both runs end where a single-device run ends, up to float32 rounding.
"""

from __future__ import annotations

import os

# XLA reads its flags once, when jax is first imported; keep any flags already given.
_DEVICES_FLAG = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICES_FLAG}".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # a machine with one GPU would otherwise have one device

import argparse
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from sklearn.datasets import load_digits

import jaxopt_zoo as jz

AXES = ("data", "model")
HIDDEN, BATCH = 256, 256
# Megatron-style: each "model" shard owns a quarter of the hidden units, so the
# first layer needs no communication and the second one sum over "model".
SPECS = {"w1": P(None, "model"), "b1": P("model"), "w2": P("model", None), "b2": P()}
BATCH_SPEC = P("data")

Params = dict[str, jax.Array]
Batch = tuple[np.ndarray, np.ndarray]  # images, labels
Step = Callable[..., tuple[Params, Any, jax.Array]]


def loss_fn(params: Params, x: jax.Array, y: jax.Array, in_shard_map: bool) -> jax.Array:
    """Mean cross-entropy over the whole batch, whether this device sees all of it or one shard."""
    hidden = jax.nn.relu(x @ params["w1"] + params["b1"])
    logits = hidden @ params["w2"]
    if in_shard_map:  # each device holds its hidden units' share of the logits
        logits = jax.lax.psum(logits, "model")
    logits = logits + params["b2"]
    loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))
    if in_shard_map:
        # Average the loss, not the gradients: for a param replicated over "data",
        # jax.grad already sums the shards' gradients (the transpose of broadcasting
        # the param), so a pmean of them would change nothing and leave twice the mean.
        loss = jax.lax.pmean(loss, "data")
    return loss


def make_optimizer(name: str = "adamw") -> jz.GradientTransformation:
    # The global norm sums over every shard: jit's partitioner does that by
    # itself, inside shard_map the norm needs the mesh axes to psum over (and
    # outside shard_map axis_name changes nothing, so one optimizer serves all). The
    # gradient norm starts near 0.8, so a 0.5 limit clips most of the first 20 steps
    # and a wrong norm would show in the final comparison.
    if name == "shampoo":  # w1's and w2's 4 blocks each: one block's factors per "model" shard
        # eps 1e-6, not the default 1e-12: these factors are nearly singular early on, and a root at 1e-12 magnifies
        # their near-null directions, float32 rounding with them, 1000-fold (the runs would agree to ~1e-2 only).
        inner = jz.shampoo(3e-3, eps=1e-6, precondition_frequency=5, max_precond_dim=64, axis_name=AXES,
                           partition_specs=SPECS)
    else:
        inner = jz.adamw(1e-2)
    return jz.chain(jz.clip_by_global_norm(0.5, axis_name=AXES), inner)


def make_step(tx: jz.GradientTransformation, in_shard_map: bool) -> Step:
    def step(params: Params, state: Any, x: jax.Array, y: jax.Array) -> tuple[Params, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y, in_shard_map)
        updates, state = tx.update(grads, state, params)
        return jz.apply_updates(params, updates), state, loss

    return step


def init_params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.normal(scale=64**-0.5, size=(64, HIDDEN)).astype(np.float32),
        "b1": np.zeros(HIDDEN, np.float32),
        "w2": rng.normal(scale=HIDDEN**-0.5, size=(HIDDEN, 10)).astype(np.float32),
        "b2": np.zeros(10, np.float32),
    }


def train(
    label: str, step: Step, params: Params, state: Any, batches: list[Batch], place: Callable[[np.ndarray], jax.Array]
) -> tuple[Params, Any]:
    every = max(1, len(batches) // 5)
    for t, (x, y) in enumerate(batches):
        params, state, loss = step(params, state, place(x), place(y))
        if t % every == 0 or t == len(batches) - 1:
            print(f"{label:<13} step {t:4d}  loss {float(loss):.4f}")
    return params, state


def per_device_bytes(tree: Any) -> tuple[int, int]:
    leaves = jax.tree.leaves(tree)
    return sum(x.addressable_shards[0].data.nbytes for x in leaves), sum(x.nbytes for x in leaves)


def _first_state(state: Any, wanted: Callable[[Any], bool]) -> Any:
    # The first state in the optimizer's nested state that is wanted, in tree order.
    return next(s for s in jax.tree.leaves(state, is_leaf=wanted) if wanted(s))


def max_abs_difference(a: Params, b: Params) -> float:
    return max(float(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k])))) for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="training steps of each run (default 100)")
    parser.add_argument("--optimizer", choices=["adamw", "shampoo"], default="adamw",
                        help="AdamW, or Shampoo with its factor blocks laid out across the devices (default adamw)")
    args = parser.parse_args()
    if args.steps < 1:  # 0 steps would compare untrained params: a difference of 0 that shows nothing
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if jax.device_count() < 8:
        raise SystemExit(f"needs 8 devices, found {jax.device_count()}: is XLA_FLAGS asking for fewer?")

    digits = load_digits()
    images, labels = (digits.images.reshape(-1, 64) / 16).astype(np.float32), digits.target.astype(np.int32)
    rows = np.random.default_rng(1).integers(0, len(labels), size=(args.steps, BATCH))
    batches = [(images[r], labels[r]) for r in rows]  # the same batches for every run

    mesh = jax.make_mesh((2, 4), AXES, axis_types=(AxisType.Auto,) * 2)  # jax 0.10 defaults to Explicit
    shard = lambda params: jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), params, SPECS)
    place_batch = lambda a: jax.device_put(a, NamedSharding(mesh, BATCH_SPEC))

    print("single device: the reference")
    tx = make_optimizer(args.optimizer)
    params = jax.tree.map(jnp.asarray, init_params())
    jit_step = jax.jit(make_step(tx, in_shard_map=False), donate_argnums=(0, 1))
    single, _ = train("single device", jit_step, params, tx.init(params), batches, jnp.asarray)

    print("\nmode 1: jax.jit on sharded arrays (the partitioner inserts the collectives)")
    params = shard(init_params())
    state = jz.init_sharded(tx, params)  # jax.jit(tx.init) would put the moments on one device
    by_jit, state = train("jit", jit_step, params, state, batches, place_batch)
    jz.check_state_shardings(tx, by_jit, state)
    moments = _first_state(state, lambda s: hasattr(s, "mu"))  # AdamW's (Shampoo's grafting Adam's) moments
    for name in ("w1", "w2", "b2"):
        print(f"  param {name}: {by_jit[name].sharding.spec}  ->  mu[{name!r}]: {moments.mu[name].sharding.spec}")
    print(f"  count: {moments.count.sharding.spec} (a scalar, replicated)")
    if args.optimizer == "shampoo":  # factors: one entry per leaf, in jax.tree.leaves order (b1, b2, w1, w2)
        factors = _first_state(state, lambda s: isinstance(s, jz.ScaleByShampooState)).factors[2][0][0]
        print(f"  Shampoo's w1 factor blocks {factors.shape}: {factors.sharding.spec}, "
              f"{factors.addressable_shards[0].data.shape[0]} per device")
    local, total = per_device_bytes((by_jit, state))
    print(f"  params+state: {local} bytes per device of {total} ({local / total:.2f}; replicated over 'data')")

    print("\nmode 2: jax.shard_map (each device runs the step on its shards, collectives by hand)")
    params = shard(init_params())
    state = jz.init_sharded(tx, params)
    state_specs = jax.tree.map(lambda s: s.spec, jz.state_shardings(tx, params))
    local_step = jax.shard_map(
        make_step(tx, in_shard_map=True),
        mesh=mesh,
        in_specs=(SPECS, state_specs, BATCH_SPEC, BATCH_SPEC),
        out_specs=(SPECS, state_specs, P()),
    )
    shard_map_step = jax.jit(local_step, donate_argnums=(0, 1))
    by_shard_map, state = train("shard_map", shard_map_step, params, state, batches, place_batch)
    jz.check_state_shardings(tx, by_shard_map, state)

    print(f"\nmax |jit - single device| = {max_abs_difference(by_jit, single):.1e}")
    print(f"max |shard_map - single device| = {max_abs_difference(by_shard_map, single):.1e}")


if __name__ == "__main__":
    main()
