"""Save a Flax NNX model and its optimizer with Orbax mid-training, then resume in a new process.

    python examples/checkpoint_resume.py --stop-at 150   # trains 150 of 300 steps, saves, exits
    python examples/checkpoint_resume.py                 # restores step 150 and finishes the run

The resumed run is bit for bit the run that was never interrupted: the
optimizer state (here a chain inside ``inject_hyperparams`` inside
``MultiSteps``, mid-accumulation when saved) is a plain pytree of arrays, and
the batches depend only on the step number. Checkpoints go to
examples/output/checkpoints (``--checkpoint-dir``); delete it to start over.
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from sklearn.datasets import load_digits
from train_digits import Classifier, loss_and_accuracy

import jaxopt_zoo as jz

DEFAULT_CHECKPOINTS = pathlib.Path(__file__).parent / "output" / "checkpoints"
BATCH_SIZE = 32


def make_optimizer(total_steps: int) -> jz.GradientTransformation:
    # Every kind of state a training loop accumulates: gradient accumulation
    # (MultiSteps), hyperparameters as arrays (inject_hyperparams), a schedule
    # driven by the step count, and the moments of AdamW after global clipping.
    schedule = jz.warmup_cosine_decay_schedule(0.0, 3e-3, total_steps // 20, total_steps)
    adamw = jz.inject_hyperparams(jz.adamw)(learning_rate=schedule, weight_decay=1e-4)
    return jz.MultiSteps(jz.chain(jz.clip_by_global_norm(1.0), adamw), every_k_schedule=2)


def batch(x: np.ndarray, y: np.ndarray, step: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # A function of the step alone, so a resumed run sees the same batches.
    per_epoch = len(x) // BATCH_SIZE
    epoch, i = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(len(x))[i * BATCH_SIZE : (i + 1) * BATCH_SIZE]
    return x[order], y[order]


@nnx.jit
def train_step(model, optimizer, x, y):
    (loss, _), grads = nnx.value_and_grad(loss_and_accuracy, has_aux=True)(model, x, y)
    optimizer.update(model, grads)
    return loss


def main(steps: int, stop_at: int | None, checkpoint_dir: pathlib.Path, seed: int, final_params: pathlib.Path | None):
    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target

    model = Classifier(nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, make_optimizer(steps), wrt=nnx.Param)
    manager = ocp.CheckpointManager(checkpoint_dir.absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=2))

    start = manager.latest_step() or 0
    if start:
        # Restore into the freshly built objects: their states give Orbax the
        # target structure, shapes and dtypes (NamedTuple states included).
        target = {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
        restored = manager.restore(start, args=ocp.args.StandardRestore(target))
        nnx.update(model, restored["model"])
        nnx.update(optimizer, restored["optimizer"])
        print(f"resumed from step {start} in {checkpoint_dir}")

    end = steps if stop_at is None else min(stop_at, steps)
    for step in range(start, end):
        loss = train_step(model, optimizer, *batch(x, y, step, seed))
        if (step + 1) % 50 == 0:
            print(f"step {step + 1:4d}  loss {float(loss):.4f}")

    if end > start:
        state = {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
        manager.save(end, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
        print(f"saved step {end} to {checkpoint_dir}")
    manager.close()

    if end == steps:
        _, accuracy = loss_and_accuracy(model, x, y)
        print(f"finished {steps} steps; accuracy on all digits {float(accuracy):.4f}")
    if final_params is not None:
        leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
        np.savez(final_params, *[np.asarray(leaf) for leaf in leaves])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="length of the whole run")
    parser.add_argument("--stop-at", type=int, default=None, help="save and exit after this step (an interruption)")
    parser.add_argument("--checkpoint-dir", type=pathlib.Path, default=DEFAULT_CHECKPOINTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--final-params", type=pathlib.Path, default=None, help="write the params here (.npz)")
    args = parser.parse_args()
    main(args.steps, args.stop_at, args.checkpoint_dir, args.seed, args.final_params)
