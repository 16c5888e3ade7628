"""The examples run end to end in a fast mode, so they cannot rot."""

from __future__ import annotations

import pathlib
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"


def test_train_digits_runs_and_learns(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "train_digits.py"), "--epochs", "3", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    accuracy = float(result.stdout.split("final test accuracy:")[1].split()[0])
    assert accuracy > 0.8  # chance is 0.1; three epochs of AdamW reach ~0.9
    assert (tmp_path / "digits_loss.png").stat().st_size > 10_000
