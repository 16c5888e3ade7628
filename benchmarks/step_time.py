"""Step and compile time of our optimizers against Optax's, same process, same inputs.

    python benchmarks/step_time.py [--repeats 7]

For each optimizer and tree shape it times the jitted, donated
``update + apply_updates`` step, alternating ours and Optax's, and reports the
medians and their ratio (ours / Optax; below 1 means we are faster). Absolute
times are only comparable within one run on one machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import jaxopt_zoo as jz

OPTIMIZERS = {
    "sgd": (lambda: jz.sgd(1e-2), lambda: optax.sgd(1e-2)),
    "momentum": (lambda: jz.sgd(1e-2, momentum=0.9), lambda: optax.sgd(1e-2, momentum=0.9)),
    "adam": (lambda: jz.adam(1e-3), lambda: optax.adam(1e-3)),
    "adamw": (lambda: jz.adamw(1e-3), lambda: optax.adamw(1e-3)),
    "adagrad": (lambda: jz.adagrad(1e-2), lambda: optax.adagrad(1e-2)),
    "rmsprop": (lambda: jz.rmsprop(1e-3), lambda: optax.rmsprop(1e-3)),
    "amsgrad": (lambda: jz.amsgrad(1e-3), lambda: optax.amsgrad(1e-3)),
    "lars": (lambda: jz.lars(1e-2), lambda: optax.lars(1e-2)),
    "lamb": (lambda: jz.lamb(1e-3), lambda: optax.lamb(1e-3)),
}
TREES = {
    "1 leaf of 4M": lambda: {"w": jnp.ones((2048, 2048))},
    "256 leaves of 16K": lambda: {f"w{i}": jnp.ones((128, 128)) for i in range(256)},
}


def compiled_step(tx, params):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return jz.apply_updates(params, updates), state

    state = tx.init(params)
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile()
    return compiled, state, time.perf_counter() - start


def time_steps(compiled, params, state, grads, steps):
    params, state = compiled(params, state, grads)  # warm-up
    jax.block_until_ready(params)
    start = time.perf_counter()
    for _ in range(steps):
        params, state = compiled(params, state, grads)
    jax.block_until_ready(params)
    return (time.perf_counter() - start) / steps, params, state


def main(repeats: int, steps: int) -> None:
    print(f"device: {jax.devices()[0].device_kind}, {repeats} alternating repeats of {steps} steps, medians")
    print(f"{'optimizer':<10} {'tree':<18} {'ours ms':>9} {'optax ms':>9} {'ratio':>6} {'compile ratio':>14}")
    for tree_name, make_tree in TREES.items():
        grads = jax.tree.map(lambda x: 1e-3 * x, make_tree())
        for name, (ours, theirs) in OPTIMIZERS.items():
            runs = []
            for factory in (ours, theirs):
                params = make_tree()
                compiled, state, compile_s = compiled_step(factory(), params)
                runs.append({"compiled": compiled, "params": params, "state": state, "compile": compile_s, "times": []})
            for _ in range(repeats):
                for run in runs:
                    seconds, run["params"], run["state"] = time_steps(
                        run["compiled"], run["params"], run["state"], grads, steps
                    )
                    run["times"].append(seconds)
            ours_ms, theirs_ms = (1e3 * statistics.median(run["times"]) for run in runs)
            print(
                f"{name:<10} {tree_name:<18} {ours_ms:>9.3f} {theirs_ms:>9.3f} {ours_ms / theirs_ms:>6.2f} "
                f"{runs[0]['compile'] / runs[1]['compile']:>14.2f}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    main(args.repeats, args.steps)
