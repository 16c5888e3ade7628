"""Muon's Newton–Schulz orthogonalisation against its own matrix products, timed in the same run.

``python benchmarks/run.py --parts muon`` (part of run.py's default parts). For each matrix shape,
:func:`jaxopt_zoo.newton_schulz` (5 steps, the default coefficients, jitted) is timed against a
*floor*: the same 15 matrix products on matrices of the same shapes and dtype, with nothing else
(no normalisation, no transposition, no scaling or sums), each step ``X <- (X X^T)(X X^T) X``
from an X with orthonormal rows so that the values stay near 1. The fraction floor / ours is
how close the orthogonalisation comes to the cost of its products: 1 would mean the rest is free.
Products dominate as n^3 against the rest's n^2, so the fraction is lowest for small matrices.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxopt_zoo as jz
from report import table

GOAL = 0.8  # of the floor (issue 16)
NS_STEPS = 5

# (rows, cols): a wide, a tall (transposed for its iteration) and a square matrix per size.
SHAPES = {
    "quick": [(32, 64)],
    "cpu": [(512, 2048), (2048, 512), (1024, 1024)],
    "accelerator": [(4096, 16384), (16384, 4096), (8192, 8192)],
}


def products_only(x: jax.Array) -> jax.Array:
    """The Newton–Schulz steps' products alone: ``X <- (X X^T)(X X^T) X``, as many times (X wide or square)."""
    for _ in range(NS_STEPS):
        gram = x @ x.T
        x = (gram @ gram) @ x
    return x


def orthonormal_rows(rows: int, cols: int, dtype: Any) -> jax.Array:
    """A rows x cols matrix (rows <= cols) with orthonormal rows: the floor's products keep it near itself."""
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(cols, rows)))
    return jnp.asarray(q.T, dtype)


def seconds_per_call(compiled: Callable, x: jax.Array, calls: int) -> float:
    jax.block_until_ready(compiled(x))
    gc.collect()
    start = time.perf_counter()
    for _ in range(calls):
        out = compiled(x)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / calls


def product_flops(rows: int, cols: int) -> int:
    """Flops of one orthogonalisation's products: per step 2 m^2 n (X X^T) + 2 m^3 (A A) + 2 m^2 n (B X), m <= n."""
    m, n = min(rows, cols), max(rows, cols)
    return NS_STEPS * (4 * m * m * n + 2 * m**3)


def newton_schulz_section(size: str, repeats: int, calls: int) -> str:
    """The report section: for each shape and dtype, ours, the floor and their ratio (median of alternating runs)."""
    dtypes = [jnp.float32] + ([jnp.bfloat16] if jax.default_backend() != "cpu" else [])
    rows_out = []
    for shape in SHAPES[size]:
        for dtype in dtypes:
            g = jnp.asarray(np.random.default_rng(1).normal(size=shape), dtype)
            wide = orthonormal_rows(min(shape), max(shape), dtype)
            ours = jax.jit(jz.newton_schulz).lower(g).compile()
            floor = jax.jit(products_only).lower(wide).compile()
            times: dict[str, list[float]] = {"ours": [], "floor": []}
            for _ in range(repeats):  # alternating, so that drift in the machine's speed hits both alike
                times["ours"].append(seconds_per_call(ours, g, calls))
                times["floor"].append(seconds_per_call(floor, wide, calls))
            mine, base = statistics.median(times["ours"]), statistics.median(times["floor"])
            spread = max((max(t) - min(t)) / statistics.median(t) for t in times.values())
            rows_out.append([
                f"{shape[0]} x {shape[1]}", jnp.dtype(dtype).name, f"{1e3 * mine:.3f}", f"{1e3 * base:.3f}",
                f"{base / mine:.2f}", f"{100 * spread:.0f}%", f"{product_flops(*shape) / base / 1e9:.1f}",
            ])
    return (
        f"## Muon: Newton–Schulz against its products alone\n\n"
        f"`jz.newton_schulz` ({NS_STEPS} steps, jitted) against the same {3 * NS_STEPS} matrix products with nothing "
        "else (`benchmarks/muon.py`: `X <- (X X^T)(X X^T) X` on the wide orientation), median of "
        f"{repeats} alternating runs of {calls} calls each. fraction = products' time / ours (goal >= {GOAL}); "
        "spread = (max - min) / median, the larger of the two. GFLOP/s is the products' rate.\n\n"
        + table(["matrix", "dtype", "ours ms", "products ms", "fraction", "spread", "products GFLOP/s"], rows_out)
    )
