"""Gram Newton–Schulz against the plain iteration: time and accuracy, measured in the same run.

``python benchmarks/gram_ns.py [--quick] [--repeats N] [--output FILE]``. For each shape,
:func:`jaxopt_zoo.newton_schulz` and :func:`jaxopt_zoo.gram_newton_schulz` (5 steps, the default
coefficients, float32, jitted) are timed alternately, the median of ``--repeats`` runs each; their
ratio is the speed-up (the machine's load hits both alike). The matrix has singular values
log-spaced over four decades (so that some start below 1e-3 of the Frobenius norm), and the
accuracy of each is measured three ways:

- ``s dev``: on the singular directions :math:`(u_i, v_i)` of the input whose singular value
  started above 1e-3 (after the Frobenius normalisation), the largest :math:`|u_i^\\top O v_i - 1|`
  (the default coefficients leave it near 0.3 by design: they trade convergence for slope);
- ``err vs f64``: the largest entry of :math:`O - O_{64}`, :math:`O_{64}` the same 5 steps in float64
  NumPy (the rounding error alone);
- ``polar dist``: :math:`\\|O - U V^\\top\\|_2` for the convergent coefficients (15/8, -10/8, 3/8)
  and 30 steps, against the exact polar factor from the SVD.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics

import jax
import jax.numpy as jnp
import numpy as np

import jaxopt_zoo as jz
from arguments import at_least, writable
from muon import seconds_per_call as seconds
from report import table

SHAPES = {"quick": [(32, 256)], "full": [(256, 4096), (512, 2048), (1024, 1024)]}
DEFAULT = (3.4445, -4.775, 2.0315)
CONVERGENT = (15 / 8, -10 / 8, 3 / 8)
STEPS, CONVERGENT_STEPS = 5, 30


def spread_spectrum(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """rows x cols with singular values log-spaced from 1 to 1e-4 and random singular vectors."""
    rng = np.random.default_rng(seed)
    k = min(rows, cols)
    u, _ = np.linalg.qr(rng.normal(size=(rows, k)))
    v, _ = np.linalg.qr(rng.normal(size=(cols, k)))
    return (u * np.logspace(0, -4, k)) @ v.T


def plain_float64(g: np.ndarray, coefficients, steps: int) -> np.ndarray:
    """The quintic iteration in float64 NumPy (wide orientation, Frobenius normalisation)."""
    tall = g.shape[0] > g.shape[1]
    x = g.T if tall else g
    x = x / np.linalg.norm(x)
    a, b, c = coefficients
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def flops(rows: int, cols: int, restarts: int = 1) -> tuple[int, int]:
    """(plain, Gram) flops of 5 steps: K (4 m^2 n + 2 m^3) and (4 + 4 r) m^2 n + (8 K - 6 (r + 1)) m^3."""
    m, n = min(rows, cols), max(rows, cols)
    return STEPS * (4 * m * m * n + 2 * m**3), (4 + 4 * restarts) * m * m * n + (8 * STEPS - 6 * (restarts + 1)) * m**3


def measure(shape: tuple[int, int], repeats: int, calls: int) -> list[str]:
    g = spread_spectrum(*shape)
    x = jnp.asarray(g, jnp.float32)
    functions = {"plain": jz.newton_schulz, "gram": jz.gram_newton_schulz}
    compiled = {name: jax.jit(f).lower(x).compile() for name, f in functions.items()}
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):  # alternating, so that drift in the machine's speed hits both alike
        for name in functions:
            times[name].append(seconds(compiled[name], x, calls))
    median = {name: statistics.median(t) for name, t in times.items()}

    u, s, vt = np.linalg.svd(g, full_matrices=False)
    started = s / np.linalg.norm(s) > 1e-3
    exact = plain_float64(g, DEFAULT, STEPS)
    polar = u @ vt
    deviation, error, distance = {}, {}, {}
    for name, f in functions.items():
        o = np.asarray(compiled[name](x), np.float64)
        deviation[name] = np.abs(((u.T @ o) * vt).sum(axis=1) - 1)[started].max()
        error[name] = np.abs(o - exact).max()
        o = np.asarray(f(x, CONVERGENT, CONVERGENT_STEPS), np.float64)
        distance[name] = np.linalg.norm(o - polar, 2)
    plain_flops, gram_flops = flops(*shape)
    ms = lambda name: f"{1e3 * median[name]:.2f}"
    spread = max((max(t) - min(t)) / statistics.median(t) for t in times.values())
    return [
        f"{shape[0]} x {shape[1]}", ms("plain"), ms("gram"), f"{median['plain'] / median['gram']:.2f}",
        f"{plain_flops / gram_flops:.2f}", f"{100 * spread:.0f}%",
        *(f"{d[n]:.2e}" for d in (deviation, error, distance) for n in functions),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small shape, few repeats")
    parser.add_argument("--repeats", type=at_least(5), default=None,
                        help="timed runs per function, median taken (>= 5; default 7, --quick 5)")
    parser.add_argument("--output", type=pathlib.Path, default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.output is not None:
        writable(parser, "--output", args.output)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 7)
    calls = 20 if args.quick else 2
    rows = [measure(shape, repeats, calls) for shape in SHAPES["quick" if args.quick else "full"]]
    headers = ["matrix", "plain ms", "gram ms", "speed-up", "flop ratio", "spread", "s dev plain",
               "s dev gram", "err vs f64 plain", "err vs f64 gram", "polar dist plain", "polar dist gram"]
    text = (
        f"## Gram Newton–Schulz against the plain iteration ({jax.default_backend()}, float32)\n\n"
        f"`jz.newton_schulz` (plain) and `jz.gram_newton_schulz` (gram, default restarts), {STEPS} steps of the "
        f"default coefficients, jitted: median of {repeats} alternating runs of {calls} calls each; speed-up = "
        "plain / gram time, flop ratio = plain / gram flops (5 steps, one restart); spread = (max - min) / median, "
        "the larger of the two. Input: singular values log-spaced over 1 to 1e-4. s dev: largest "
        "abs(u_i^T O v_i - 1) over the input's singular directions that start above 1e-3 (after normalisation); "
        "err vs f64: largest abs(O - O_64) against the same steps in float64; polar dist: spectral norm of "
        f"O - U V^T after {CONVERGENT_STEPS} steps of the convergent (15/8, -10/8, 3/8) (`benchmarks/gram_ns.py`).\n\n"
        + table(headers, rows)
    )
    print(text)
    if args.output is not None:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
