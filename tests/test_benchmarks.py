"""The benchmark scripts run end to end in their quick mode, so they cannot rot (timings are not asserted)."""

from __future__ import annotations

import pathlib
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
    for heading in ("step time", "bandwidth", "compile", "memory"):
        assert heading in report.lower(), heading


def test_convergence_benchmark_quick_mode_reports_every_optimizer(tmp_path):
    report = _run("convergence.py", tmp_path / "convergence.md")
    for name in NAMES:
        assert f"| {name} " in report, name
