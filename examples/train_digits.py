"""Train a small Flax NNX classifier on scikit-learn's bundled digits with a jaxopt_zoo optimizer.

    python examples/train_digits.py            # a few seconds on 2 CPU cores
    python examples/train_digits.py --epochs 2 # quick check

Prints a progress bar with loss and accuracy, the final test accuracy, and
writes the loss curve to examples/output/digits_loss.png.
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import jaxopt_zoo as jz

DEFAULT_OUTPUT = pathlib.Path(__file__).parent / "output"


class Classifier(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(64, 128, rngs=rngs)
        self.out = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x)))


def loss_and_accuracy(model, x, y):
    logits = model(x)
    loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))
    return loss, jnp.mean(jnp.argmax(logits, axis=1) == y)


@nnx.jit
def train_step(model, optimizer, x, y):
    (loss, accuracy), grads = nnx.value_and_grad(loss_and_accuracy, has_aux=True)(model, x, y)
    optimizer.update(model, grads)
    return loss, accuracy


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """8x8 digit images scaled to [0, 1], split 75/25: ``x_train, x_test, y_train, y_test``."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    return train_test_split(x, digits.target, test_size=0.25, random_state=seed)


def main(epochs: int, batch_size: int, seed: int, output: pathlib.Path = DEFAULT_OUTPUT) -> float:
    x_train, x_test, y_train, y_test = load_data(seed)

    model = Classifier(nnx.Rngs(seed))
    # AdamW written out as its recipe: the Adam direction, decoupled decay on the
    # weight matrices only, then the learning rate (warm-up-free cosine decay).
    steps_per_epoch = len(x_train) // batch_size
    schedule = lambda step: 3e-3 * 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(step / (epochs * steps_per_epoch), 1.0)))
    tx = jz.chain(
        jz.scale_by_adam(),
        jz.add_decayed_weights(1e-4, mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params)),
        jz.scale_by_learning_rate(schedule),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    rng = np.random.default_rng(seed)
    losses = []
    with tqdm(total=epochs * steps_per_epoch, desc="training", unit="step", mininterval=0.5) as bar:
        for _ in range(epochs):
            order = rng.permutation(len(x_train))
            for i in range(steps_per_epoch):
                batch = order[i * batch_size : (i + 1) * batch_size]
                loss, accuracy = train_step(model, optimizer, x_train[batch], y_train[batch])
                losses.append(float(loss))
                bar.set_postfix(loss=f"{float(loss):.4f}", acc=f"{float(accuracy):.3f}", refresh=False)
                bar.update()

    _, test_accuracy = loss_and_accuracy(model, x_test, y_test)
    print(f"final test accuracy: {float(test_accuracy):.4f} ({len(x_test)} held-out digits)")

    output.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(np.arange(1, len(losses) + 1), losses, label="training loss (per batch)")
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy loss")
    axes.set_yscale("log")
    axes.set_title("MLP on scikit-learn digits, jaxopt_zoo AdamW recipe")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(output / "digits_loss.png", dpi=120)
    print(f"loss curve written to {output / 'digits_loss.png'}")
    return float(test_accuracy)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40, help="passes over the training images (default 40)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="train/test split, initial weights and batch order")
    parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT, help="folder for the PNG")
    args = parser.parse_args()
    # Checked before training: a bad value would otherwise train nothing, or fail only at the end.
    train_size = len(load_data(args.seed)[0])
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if not 1 <= args.batch_size <= train_size:
        parser.error(f"--batch-size must be between 1 and the {train_size} training images, got {args.batch_size}")
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--output: cannot make the folder {args.output} ({error.strerror})")
    main(args.epochs, args.batch_size, args.seed, args.output)
