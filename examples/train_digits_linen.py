"""The digits classifier of train_digits.py written with Flax linen and ``TrainState``.

    python examples/train_digits_linen.py [--epochs 40]

A jaxopt_zoo optimizer goes where an Optax one would: ``TrainState.create(...,
tx=jz.adamw(...))``; ``apply_gradients`` calls its ``update`` and
``apply_updates``.
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.training.train_state import TrainState
from train_digits import load_data

import jaxopt_zoo as jz


class Classifier(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(128)(x)))


def loss_and_accuracy(params, apply_fn, x, y):
    logits = apply_fn(params, x)
    loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))
    return loss, jnp.mean(jnp.argmax(logits, axis=1) == y)


@jax.jit
def train_step(state: TrainState, x, y):
    (loss, accuracy), grads = jax.value_and_grad(loss_and_accuracy, has_aux=True)(state.params, state.apply_fn, x, y)
    return state.apply_gradients(grads=grads), loss, accuracy


def main(epochs: int, batch_size: int, seed: int) -> float:
    x_train, x_test, y_train, y_test = load_data(seed)
    model = Classifier()
    steps = epochs * (len(x_train) // batch_size)
    tx = jz.adamw(jz.cosine_decay_schedule(3e-3, steps), weight_decay=1e-4)
    state = TrainState.create(apply_fn=model.apply, params=model.init(jax.random.key(seed), x_train[:1]), tx=tx)

    rng = np.random.default_rng(seed)
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x_train))
        for i in range(len(x_train) // batch_size):
            batch = order[i * batch_size : (i + 1) * batch_size]
            state, loss, accuracy = train_step(state, x_train[batch], y_train[batch])
        if epoch % max(1, epochs // 10) == 0 or epoch == epochs:
            print(f"epoch {epoch:3d}  step {int(state.step):5d}  loss {float(loss):.4f}  batch accuracy {float(accuracy):.3f}")

    _, test_accuracy = loss_and_accuracy(state.params, state.apply_fn, x_test, y_test)
    print(f"final test accuracy: {float(test_accuracy):.4f} ({len(x_test)} held-out digits)")
    return float(test_accuracy)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40, help="passes over the training images (default 40)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="train/test split, initial weights and batch order")
    args = parser.parse_args()
    # Checked before training: the schedule needs at least one step.
    train_size = len(load_data(args.seed)[0])
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if not 1 <= args.batch_size <= train_size:
        parser.error(f"--batch-size must be between 1 and the {train_size} training images, got {args.batch_size}")
    main(args.epochs, args.batch_size, args.seed)
