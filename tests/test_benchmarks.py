"""The benchmark scripts run end to end in their quick mode, so they cannot rot (timings are not asserted).

The scripts run on two optimizers (one keeping moments, one with a whole-array
reduction): every row comes from the same loop, and compiling all of them is
most of a quick run's time. Every entry of the table the scripts read is built
and stepped below, with both libraries, as the scripts use it.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.seed_optimizers import SEED_OPTIMIZERS
from tests.conftest import make_params

BENCHMARKS = pathlib.Path(__file__).parent.parent / "benchmarks"
NAMES = ["adam", "lamb"]


def _run(script: str, output: pathlib.Path) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--optimizers", ",".join(NAMES), "--output", str(output)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output.read_text()


def test_speed_benchmark_quick_mode_reports_its_optimizers(tmp_path):
    report = _run("run.py", tmp_path / "results.md")
    for name in NAMES:
        assert f"| {name} " in report, name
    for heading in ("step time", "bandwidth", "compile", "memory", "low-bit state", "layer-sharded muon"):
        assert heading in report.lower(), heading
    low_bit = report[report.index("## Low-bit state"):]
    for row in ("float32", "bfloat16", "bfloat16 SR", "8-bit", "8-bit arithmetic, one pass"):
        assert re.search(rf"^\| {re.escape(row)} +\|", low_bit, re.MULTILINE), row


def test_convergence_benchmark_quick_mode_reports_its_optimizers(tmp_path):
    report = _run("convergence.py", tmp_path / "convergence.md")
    for name in NAMES:
        assert f"| {name} " in report, name


@pytest.mark.parametrize("name", list(SEED_OPTIMIZERS))
def test_every_benchmark_entry_steps_with_both_libraries(name):
    # As the scripts use an entry: built from its typical rate, and from a traced rate under vmap (a sweep).
    entry, params = SEED_OPTIMIZERS[name], make_params()
    if name == "sm3":  # optax.sm3 raises on scalar params (ours takes them); the benchmark trees have none
        params = {"dense": params["dense"]}
    grads = jax.tree.map(lambda p: jnp.cos(p) + 0.5, params)
    keywords = {} if entry.extra_args is None else entry.extra_args(params, grads)  # value=, obj_fn=, ...
    for make in (entry.ours, entry.optax):

        def first_update(rate, make=make):
            tx = make(rate)
            return tx.update(grads, tx.init(params), params, **keywords)[0]

        # Jitted: one compilation of the step costs less than the many small ones running it eagerly would.
        updates = jax.jit(lambda make=make: first_update(entry.learning_rate, make))()
        assert jax.tree.structure(updates) == jax.tree.structure(params)
        # Optax's rprop (and so our Optax-exact jz.rprop) is one step late: its first update is 0; ADOPT's first
        # step only records the second moment.
        late = name in ("rprop", "adopt") or (make is entry.optax and name == "torch.rprop")
        assert all(bool(jnp.all(jnp.isfinite(u))) and (late or bool(jnp.any(u != 0))) for u in jax.tree.leaves(updates)), name
        swept = jax.jit(jax.vmap(first_update))(jnp.asarray([entry.learning_rate, 2 * entry.learning_rate]))
        np.testing.assert_allclose(jax.tree.leaves(swept)[0][0], jax.tree.leaves(updates)[0], rtol=1e-5, atol=1e-7)


def test_gram_newton_schulz_benchmark_quick_mode_reports_its_table(tmp_path):
    # benchmarks/gram_ns.py takes no optimizer list: run alone, it times and checks both iterations on one shape.
    output = tmp_path / "gram_ns.md"
    result = subprocess.run([sys.executable, str(BENCHMARKS / "gram_ns.py"), "--quick", "--output", str(output)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^\| 32 x 256 +\|", output.read_text(), re.MULTILINE)
