"""Train a small character-level transformer with SOAP and with AdamW, and plot both loss curves.

    python examples/char_lm.py               # about 2.5 minutes on one CPU core
    python examples/char_lm.py --steps 40    # a smoke run

The model is a 2-layer causal transformer (d_model 128, 4 heads, context 64)
predicting the next character of Python's own help texts (``pydoc_data.topics``,
in the standard library: nothing is downloaded); the last tenth of the text is
held out. Both optimizers start from the same weights, see the same minibatches
and get the same learning-rate schedule (linear warm-up over the first 5% of the
steps to 3e-3, then cosine to 0) and decoupled weight decay 0.1 on the matrices.
SOAP's first step only builds its eigenbases (its update is 0).

Prints each optimizer's final training loss (the mean minibatch loss over the
last tenth of the steps), held-out loss and time, and writes both training
curves to examples/output/char_lm.png (or --output). benchmarks/lm_convergence.py
tunes the rate of every optimizer on this task and repeats it over seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

import jaxopt_zoo as jz

DEFAULT_OUTPUT = pathlib.Path(__file__).parent / "output"


def help_text() -> str:
    """Python's help texts (``pydoc_data.topics``, standard library): about 465,000 characters of English."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


@dataclasses.dataclass(frozen=True, eq=False)
class CharData:
    """The text as token ids: ``train`` (the first 90%) and ``held_out`` windows of ``context + 1`` characters."""

    train: jax.Array
    held_out: jax.Array  # (windows, context + 1), evenly spaced over the last tenth
    vocab: int
    characters: int


@functools.lru_cache(maxsize=None)
def load_text(context: int = 64, held_out_windows: int = 256) -> CharData:
    text = help_text()
    index = {c: i for i, c in enumerate(sorted(set(text)))}
    tokens = np.fromiter((index[c] for c in text), np.int32, len(text))
    split = int(0.9 * len(tokens))
    train, held_out = tokens[:split], tokens[split:]
    starts = np.linspace(0, len(held_out) - context - 1, held_out_windows).astype(np.int64)
    windows = np.stack([held_out[s : s + context + 1] for s in starts])
    return CharData(jnp.asarray(train), jnp.asarray(windows), len(index), len(text))


class Block(nnx.Module):
    """Pre-norm transformer block: causal self-attention, then a 4x GELU MLP."""

    def __init__(self, d_model: int, heads: int, rngs: nnx.Rngs):
        self.heads = heads
        self.norm1 = nnx.LayerNorm(d_model, rngs=rngs)
        self.qkv = nnx.Linear(d_model, 3 * d_model, rngs=rngs)
        self.proj = nnx.Linear(d_model, d_model, rngs=rngs)
        self.norm2 = nnx.LayerNorm(d_model, rngs=rngs)
        self.up = nnx.Linear(d_model, 4 * d_model, rngs=rngs)
        self.down = nnx.Linear(4 * d_model, d_model, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, length, d_model = x.shape
        q, k, v = jnp.split(self.qkv(self.norm1(x)), 3, axis=-1)
        q, k, v = (a.reshape(batch, length, self.heads, d_model // self.heads) for a in (q, k, v))
        attended = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(batch, length, d_model)
        x = x + self.proj(attended)
        return x + self.down(nnx.gelu(self.up(self.norm2(x))))


class CharLM(nnx.Module):
    """Causal character-level transformer: token and learned position embeddings, blocks, a final norm, a head."""

    def __init__(self, vocab: int, d_model: int, heads: int, layers: int, context: int, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, d_model, embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.position = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (context, d_model)))
        self.blocks = nnx.List([Block(d_model, heads, rngs) for _ in range(layers)])
        self.norm = nnx.LayerNorm(d_model, rngs=rngs)
        self.head = nnx.Linear(d_model, vocab, use_bias=False, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.embed(tokens) + self.position[: tokens.shape[-1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], axis=-1))


def matrices(params: Any) -> Any:
    """Weight-decay mask: matrices (and embeddings) decay, biases and norm scales do not."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def schedule(peak_rate: jax.typing.ArrayLike, steps: int) -> jz.Schedule:
    """Linear warm-up from 0 over the first 5% of the steps, then cosine to 0 at the last."""
    return jz.warmup_cosine_decay_schedule(0.0, peak_rate, max(1, steps // 20), steps)


MakeOptimizer = Callable[[jax.Array, int], jz.GradientTransformation]  # (peak rate, steps) -> optimizer

OPTIMIZERS: dict[str, MakeOptimizer] = {
    "adamw": lambda peak, steps: jz.adamw(schedule(peak, steps), weight_decay=0.1, mask=matrices),
    "soap": lambda peak, steps: jz.soap(schedule(peak, steps), weight_decay=0.1, mask=matrices),
}


@dataclasses.dataclass(frozen=True)
class Config:
    d_model: int = 128
    heads: int = 4
    layers: int = 2
    context: int = 64
    batch_size: int = 16
    held_out_windows: int = 256

    def model(self, seed: int) -> CharLM:
        vocab = load_text(self.context, self.held_out_windows).vocab
        return CharLM(vocab, self.d_model, self.heads, self.layers, self.context, nnx.Rngs(seed))

    def batches(self, seed: int, steps: int) -> np.ndarray:
        """The seed's minibatches: (steps, batch_size) start positions of windows in the training text."""
        data = load_text(self.context, self.held_out_windows)
        high = len(data.train) - self.context - 1
        return np.random.default_rng(seed).integers(0, high, (steps, self.batch_size)).astype(np.int32)


@functools.lru_cache(maxsize=None)
def compiled_run(make_optimizer: MakeOptimizer, config: Config, steps: int,
                 evaluated_at: Callable[[Any, Any], Any] | None = None) -> Callable:
    """A jitted ``run(params, starts, peak_rate) -> (losses, held-out loss)``: the whole training in one lax.scan.

    ``losses[t]`` is the minibatch loss before step t's update. The peak rate is an
    argument, so a sweep over rates compiles once. ``evaluated_at(state, params)``
    gives the point the held-out loss is measured at (the last iterate when None),
    e.g. :func:`jaxopt_zoo.schedule_free_eval_params`.
    """
    data = load_text(config.context, config.held_out_windows)
    graphdef, _ = nnx.split(config.model(0))

    def loss(params: Any, starts: jax.Array) -> jax.Array:
        window = jax.vmap(lambda s: jax.lax.dynamic_slice(data.train, (s,), (config.context + 1,)))(starts)
        return cross_entropy(nnx.merge(graphdef, params)(window[:, :-1]), window[:, 1:])

    def run(params: Any, batches: jax.Array, peak_rate: jax.Array) -> tuple[jax.Array, jax.Array]:
        tx = make_optimizer(peak_rate, steps)

        def step(carry, starts):
            params, state = carry
            value, grads = jax.value_and_grad(loss)(params, starts)
            updates, state = tx.update(grads, state, params)
            return (jz.apply_updates(params, updates), state), value

        (params, state), losses = jax.lax.scan(step, (params, tx.init(params)), batches)
        model = nnx.merge(graphdef, params if evaluated_at is None else evaluated_at(state, params))
        return losses, cross_entropy(model(data.held_out[:, :-1]), data.held_out[:, 1:])

    return jax.jit(run)


def train(make_optimizer: MakeOptimizer, peak_rate: float, seed: int, steps: int, config: Config = Config(),
          evaluated_at: Callable[[Any, Any], Any] | None = None) -> tuple[np.ndarray, float]:
    """Per-step minibatch losses and the final held-out loss of one run; ``seed`` fixes the weights and batches."""
    _, params = nnx.split(config.model(seed))
    run = compiled_run(make_optimizer, config, steps, evaluated_at)
    losses, held_out = run(params, jnp.asarray(config.batches(seed, steps)), jnp.float32(peak_rate))
    return np.asarray(losses), float(held_out)


def final_loss(losses: np.ndarray) -> float:
    """Mean minibatch loss over the last tenth of the steps (one noisy minibatch is not a final loss)."""
    return float(losses[-max(1, len(losses) // 10) :].mean())


def smoothed(losses: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` steps (fewer at the start)."""
    sums = np.cumsum(np.concatenate([[0.0], losses]))
    ends = np.arange(1, len(losses) + 1)
    return (sums[ends] - sums[np.maximum(ends - window, 0)]) / np.minimum(ends, window)


def main(steps: int, seed: int, peak_rate: float, output: pathlib.Path = DEFAULT_OUTPUT, config: Config = Config()
         ) -> dict[str, float]:
    data = load_text(config.context, config.held_out_windows)
    print(f"{config.layers}-layer transformer, {data.vocab} characters, {data.characters:,} characters of text; "
          f"{steps} steps of {config.batch_size} windows of {config.context}")
    curves, finals = {}, {}
    for name, make_optimizer in OPTIMIZERS.items():
        start = time.perf_counter()
        losses, held_out = train(make_optimizer, peak_rate, seed, steps, config)
        curves[name], finals[name] = losses, final_loss(losses)
        print(f"{name:6s} final training loss {finals[name]:.4f}, held-out loss {held_out:.4f} "
              f"({time.perf_counter() - start:.0f} s, compile included)")

    window = max(1, steps // 20)
    figure, axes = plt.subplots(figsize=(7, 4))
    for name, losses in curves.items():
        line, = axes.plot(smoothed(losses, window), label=f"{name} (final {finals[name]:.3f})")
        axes.plot(losses, color=line.get_color(), alpha=0.2, linewidth=0.7)
    # The y range of the smoothed curves (the raw ones, faint, may leave it): every mean is in view, the noise is not.
    means = np.concatenate([smoothed(losses, window) for losses in curves.values()])
    means = means[np.isfinite(means)]
    if len(means):
        margin = 0.05 * (means.max() - means.min()) or 0.1
        axes.set_ylim(means.min() - margin, means.max() + margin)
    axes.set(xlabel="step", ylabel="training cross-entropy (nats per character)",
             title=f"Char LM: SOAP and AdamW, same schedule (peak {peak_rate:g}), seed {seed}")
    axes.legend(title=f"mean over {window} step{'s' if window > 1 else ''}; raw faint")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    output.mkdir(parents=True, exist_ok=True)  # made before training too, when run as a script
    figure.savefig(output / "char_lm.png", dpi=120)
    print(f"loss curves written to {output / 'char_lm.png'}")
    return finals


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500, help="training steps of each optimizer (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="initial weights and minibatches")
    parser.add_argument("--peak-rate", type=float, default=3e-3, help="the schedule's peak learning rate")
    parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT, help="folder for the PNG")
    args = parser.parse_args()
    if args.steps < 2:  # schedule() warms up over at least one step, then decays over at least one more
        parser.error(f"--steps must be >= 2 (the schedule warms up, then decays), got {args.steps}")
    if not args.peak_rate > 0:
        parser.error(f"--peak-rate must be > 0, got {args.peak_rate}")
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--output: cannot make the folder {args.output} ({error.strerror})")
    main(args.steps, args.seed, args.peak_rate, args.output)
