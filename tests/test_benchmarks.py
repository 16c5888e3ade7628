"""The benchmark scripts run end to end in their quick mode, so they cannot rot (timings are not asserted)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

BENCHMARKS = pathlib.Path(__file__).parent.parent / "benchmarks"
NAMES = ["sgd", "momentum", "nesterov", "adagrad", "adadelta", "rmsprop", "adam", "amsgrad", "adamw", "nadam", "lars", "lamb"]


def _run(script: str, output: pathlib.Path) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--output", str(output)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output.read_text()


def test_speed_benchmark_quick_mode_reports_every_optimizer(tmp_path):
    report = _run("run.py", tmp_path / "results.md")
    for name in NAMES:
        assert f"| {name} " in report, name
    for heading in ("step time", "bandwidth", "compile", "memory", "low-bit state"):
        assert heading in report.lower(), heading
    low_bit = report[report.index("## Low-bit state"):]
    for row in ("float32", "bfloat16", "bfloat16 SR", "8-bit", "8-bit arithmetic, one pass"):
        assert re.search(rf"^\| {re.escape(row)} +\|", low_bit, re.MULTILINE), row


def test_convergence_benchmark_quick_mode_reports_every_optimizer(tmp_path):
    report = _run("convergence.py", tmp_path / "convergence.md")
    for name in NAMES:
        assert f"| {name} " in report, name
