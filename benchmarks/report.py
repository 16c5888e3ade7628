"""Shared by the benchmarks: the machine header and tables of the Markdown output, and timing without GC pauses."""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import pathlib
import platform
import statistics
import subprocess
import sys
from typing import Sequence

import flax
import jax
import jaxlib
import numpy as np
import optax

import jaxopt_zoo

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def without_gc():
    """Python's garbage collector paused inside (as ``timeit`` does): a collection would add its pause to one
    timed run only. (A gc.collect() before each run did the same, at 70 ms a call over JAX's objects, and 300 ms
    inside the test suite's process.)"""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _cpu_model() -> str:
    # platform.processor() is empty on most Linux systems; /proc/cpuinfo names the model there.
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str:
    try:
        result = subprocess.run(
            ["git", "-C", str(REPOSITORY), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPOSITORY), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if result.returncode != 0:
        return "unknown"
    return result.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def run_on_8_cpu_devices(script: str, *arguments: str) -> str:
    """The stdout of ``python script arguments`` in a new process with 8 simulated CPU devices (XLA reads its
    device count once, at startup). Raises RuntimeError with the child's stderr, where its error is, if it fails."""
    environment = dict(os.environ,
                       XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
    command = [sys.executable, script, *arguments]
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} (run on 8 simulated CPU devices) failed with exit status "
                           f"{done.returncode}; its stderr ends:\n{done.stderr[-4000:]}")
    return done.stdout


def machine_header(title: str, settings: str) -> str:
    """A title, then what ran where: the numbers below are only comparable within one such run."""
    device = jax.devices()[0]
    rows = [
        ("date", datetime.datetime.now().isoformat(timespec="seconds")),
        ("CPU", f"{_cpu_model()}, {os.cpu_count()} logical cores visible"),
        ("backend", f"{jax.default_backend()}: {jax.device_count()} x {device.device_kind}"),
        ("versions", f"Python {platform.python_version()}, jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
                     f"optax {optax.__version__}, flax {flax.__version__}, numpy {np.__version__}"),
        ("jaxopt_zoo", f"commit {_commit()}"),
        ("settings", settings),
    ]
    return f"# {title}\n\n" + "".join(f"- **{name}**: {value}\n" for name, value in rows)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; the first column is left-aligned, the rest (numbers) right-aligned."""
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        padded = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join([":" + "-" * (widths[0] + 1)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|"
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])]) + "\n"


def spread(values: Sequence[float]) -> str:
    """Median [min, max], compactly: how much a figure moved across repeats or seeds."""
    return f"{number(statistics.median(values))} [{number(min(values))}, {number(max(values))}]"


def plural(count: int, noun: str) -> str:
    """``1 step``, ``2 steps``: the count and the noun, an "s" added unless the count is 1."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def number(x: float) -> str:
    """Three significant figures, switching to exponent notation for very small or large values."""
    if not np.isfinite(x):
        return str(x)
    x += 0.0  # -0.0 (a cross-entropy of exactly zero, negated) prints as 0
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.2e}"
    return f"{x:.3g}"
