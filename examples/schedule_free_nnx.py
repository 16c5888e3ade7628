"""Train train_digits.py's Flax NNX classifier with Schedule-Free AdamW, and evaluate where Schedule-Free says to.

    python examples/schedule_free_nnx.py              # a few seconds on 2 CPU cores
    python examples/schedule_free_nnx.py --steps 60   # quick check

Schedule-Free trains at one point (``y``, the model's params) and averages another
(``x``), which is where the model should be evaluated. No learning-rate decay is
needed: a short warmup to a constant rate. Every ``--eval-every`` steps this prints the
test accuracy at ``y`` and at ``x``, the latter a copy of the model updated with
``jz.schedule_free_eval_params(optimizer.opt_state, nnx.state(model, nnx.Param))``;
training goes on from ``y``.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from flax import nnx
from train_digits import Classifier, load_data, loss_and_accuracy  # this script's folder is on sys.path

import jaxopt_zoo as jz


@nnx.jit
def train_step(model, optimizer, x, y):
    (loss, _), grads = nnx.value_and_grad(loss_and_accuracy, has_aux=True)(model, x, y)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def accuracy_at_y_and_x(model, optimizer, x, y):
    """Test accuracy of the training params y, and of the Schedule-Free average x (a copy of the model)."""
    at_x = nnx.clone(model)
    nnx.update(at_x, jz.schedule_free_eval_params(optimizer.opt_state, nnx.state(model, nnx.Param)))
    return loss_and_accuracy(model, x, y)[1], loss_and_accuracy(at_x, x, y)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--eval-every", type=int, default=60, help="steps between test evaluations (default 60)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="train/test split, initial weights and batches")
    args = parser.parse_args()

    x_train, x_test, y_train, y_test = load_data(args.seed)
    for option, value in [("--steps", args.steps), ("--eval-every", args.eval_every)]:
        if value < 1:
            parser.error(f"{option} must be >= 1, got {value}")
    if not 1 <= args.batch_size <= len(x_train):  # a batch draws distinct images
        parser.error(f"--batch-size must be between 1 and the {len(x_train)} training images, got {args.batch_size}")
    model = Classifier(nnx.Rngs(args.seed))
    optimizer = nnx.Optimizer(model, jz.schedule_free_adamw(1e-2, warmup_steps=20, weight_decay=1e-4), wrt=nnx.Param)
    rng = np.random.default_rng(args.seed)
    for step in range(1, args.steps + 1):
        batch = rng.choice(len(x_train), args.batch_size, replace=False)
        loss = train_step(model, optimizer, x_train[batch], y_train[batch])
        if step % args.eval_every == 0 or step == args.steps:
            at_y, at_x = jax.device_get(accuracy_at_y_and_x(model, optimizer, x_test, y_test))
            print(f"step {step:4d}  loss {float(loss):.3f}  test accuracy at y {at_y:.3f}  at x {at_x:.3f}")
    print(f"final test accuracy at x: {at_x:.3f}")


if __name__ == "__main__":
    main()
