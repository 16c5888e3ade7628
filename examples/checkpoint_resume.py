"""Save a Flax NNX model and its optimizer with Orbax mid-training, then resume in a new process.

    python examples/checkpoint_resume.py --stop-at 150   # trains 150 of 300 steps, saves, exits
    python examples/checkpoint_resume.py                 # restores step 150 and finishes the run
    python examples/checkpoint_resume.py --fresh         # deletes the saved steps and starts over

The resumed run is bit for bit the run that was never interrupted: the
optimizer state (here a chain inside ``inject_hyperparams`` inside
``MultiSteps``, mid-accumulation when saved) is a plain pytree of arrays, and
the batches depend only on the step number. It trains on the same 75% of the
digits as train_digits.py and reports the accuracy on the held-out 25%.
Checkpoints go to examples/output/checkpoints (``--checkpoint-dir``), with the
run's ``--steps`` and ``--seed`` in settings.json; a run saved there is resumed.
One already past ``--stop-at``, or saved with other settings, is reported (exit
status 1) rather than trained: ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from train_digits import Classifier, load_data, loss_and_accuracy  # this script's folder is on sys.path

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


def main(
    steps: int,
    stop_at: int | None,
    checkpoint_dir: pathlib.Path,
    seed: int,
    final_params: pathlib.Path | None,
    fresh: bool = False,
) -> int:
    """Train (or resume) to ``stop_at`` or ``steps``; the exit status: 1 when a saved run cannot be continued."""
    x, x_test, y, y_test = load_data(seed)  # the split of train_digits.py: train on 75%, test on the rest

    model = Classifier(nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, make_optimizer(steps), wrt=nnx.Param)
    # Saving synchronously (this script waits for its one save anyway): after a failed asynchronous save, Orbax's
    # threads wait out their timeout and keep Python from exiting. The with block closes the manager however it ends.
    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
    with ocp.CheckpointManager(checkpoint_dir.absolute(), options=options) as manager:
        # Saved with the run: the schedule depends on --steps; the split, weights and batches on --seed.
        # Resuming with other settings would silently mix two runs.
        settings_file, settings = checkpoint_dir / "settings.json", {"steps": steps, "seed": seed}
        if fresh and manager.all_steps():
            print(f"--fresh: deleting the saved steps {sorted(manager.all_steps())} in {checkpoint_dir}")
            for saved in manager.all_steps():
                manager.delete(saved)

        start = manager.latest_step() or 0
        if start:
            saved = json.loads(settings_file.read_text()) if settings_file.exists() else None
            if saved != settings:
                made_with = ("settings it does not record" if saved is None
                             else " ".join(f"--{k} {v}" for k, v in saved.items()))
                print(
                    f"The run saved in {checkpoint_dir} (at step {start}) was made with {made_with}; this "
                    f"command asks for --steps {steps} --seed {seed}. Resuming would mix two runs: pass the saved "
                    f"settings to finish it, or --fresh (or delete {checkpoint_dir}) to start over.",
                    file=sys.stderr,
                )
                return 1
        end = steps if stop_at is None else min(stop_at, steps)
        if start >= end and stop_at is not None:
            # Nothing to train: say so rather than exit silently.
            status = "to finish it, run without --stop-at" if start < steps else "it is complete"
            print(
                f"A run is already saved in {checkpoint_dir} at step {start} ({status}); this command would stop "
                f"at step {end}, so it does nothing. To start over, pass --fresh or delete {checkpoint_dir}.",
                file=sys.stderr,
            )
            return 1
        if start:
            # Restore into the freshly built objects: their states give Orbax the
            # target structure, shapes and dtypes (NamedTuple states included).
            target = {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
            restored = manager.restore(start, args=ocp.args.StandardRestore(target))
            nnx.update(model, restored["model"])
            nnx.update(optimizer, restored["optimizer"])
            print(f"resumed from step {start} in {checkpoint_dir}")

        for step in range(start, end):
            loss = train_step(model, optimizer, *batch(x, y, step, seed))
            if (step + 1) % 50 == 0:
                print(f"step {step + 1:4d}  loss {float(loss):.4f}")

        if end > start:
            if not start:
                settings_file.write_text(json.dumps(settings))
            state = {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
            manager.save(end, args=ocp.args.StandardSave(state))
            print(f"saved step {end} to {checkpoint_dir}")

    if end == steps:
        if start == steps:
            print(f"the run in {checkpoint_dir} is complete ({steps} steps); --fresh starts over")
        _, accuracy = loss_and_accuracy(model, x_test, y_test)
        print(f"finished {steps} steps; test accuracy {float(accuracy):.4f} on {len(x_test)} held-out digits")
    if final_params is not None:
        leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
        with open(final_params, "wb") as file:  # np.savez(path) would add .npz to a name without it
            np.savez(file, *[np.asarray(leaf) for leaf in leaves])
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="length of the whole run (default 300)")
    parser.add_argument("--stop-at", type=int, default=None, help="save and exit after this step (an interruption)")
    parser.add_argument("--checkpoint-dir", type=pathlib.Path, default=DEFAULT_CHECKPOINTS,
                        help="where the steps are saved, and resumed from (default examples/output/checkpoints)")
    parser.add_argument("--fresh", action="store_true", help="delete the steps saved in --checkpoint-dir first")
    parser.add_argument("--seed", type=int, default=0, help="train/test split, initial weights and batches")
    parser.add_argument("--final-params", type=pathlib.Path, default=None, help="write the params here (.npz)")
    args = parser.parse_args()
    for option, value in [("--steps", args.steps), ("--stop-at", args.stop_at)]:
        if value is not None and value < 1:
            parser.error(f"{option} must be >= 1, got {value}")
    # Checked now, not after training: a file in the way, or a folder that cannot be made.
    folders = [("--checkpoint-dir", args.checkpoint_dir)]
    if args.final_params is not None:
        if args.final_params.is_dir():
            parser.error(f"--final-params {args.final_params} is a folder; give a file name")
        folders.append(("--final-params", args.final_params.parent))
    for option, folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            in_the_way = isinstance(error, (FileExistsError, NotADirectoryError))
            parser.error(f"{option}: cannot make the folder {folder} "
                         f"({'a file is in the way' if in_the_way else error.strerror})")
    sys.exit(main(args.steps, args.stop_at, args.checkpoint_dir, args.seed, args.final_params, args.fresh))
