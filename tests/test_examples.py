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


def _run_example(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_checkpoint_resume_in_a_new_process_is_bit_identical(tmp_path):
    import numpy as np

    steps = ["--steps", "40"]
    interrupted = _run_example("checkpoint_resume.py", *steps, "--stop-at", "17", "--checkpoint-dir", str(tmp_path / "a"))
    assert "saved step 17" in interrupted and "finished" not in interrupted
    resumed = _run_example(
        "checkpoint_resume.py", *steps, "--checkpoint-dir", str(tmp_path / "a"), "--final-params", str(tmp_path / "a.npz")
    )
    assert "resumed from step 17" in resumed
    _run_example("checkpoint_resume.py", *steps, "--checkpoint-dir", str(tmp_path / "b"), "--final-params", str(tmp_path / "b.npz"))

    ours, uninterrupted = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert len(ours.files) == 4  # kernel and bias of two layers
    for name in uninterrupted.files:
        np.testing.assert_array_equal(ours[name], uninterrupted[name], strict=True)


def test_train_digits_linen_runs_and_learns(tmp_path):
    stdout = _run_example("train_digits_linen.py", "--epochs", "3")
    accuracy = float(stdout.split("final test accuracy:")[1].split()[0])
    assert accuracy > 0.8


def _printed_table(stdout: str, title: str, rows: int) -> dict[str, list[float]]:
    """The rows under the printed heading that starts with `title`, by optimizer name."""
    block = stdout.split(f"\n{title}")[1]
    return {line.split()[0]: [float(v) for v in line.split()[1:]] for line in block.splitlines()[2 : 2 + rows]}


def test_compare_optimizers_runs_fast(tmp_path):
    names = ["sgd", "momentum", "nesterov", "adagrad", "adadelta", "rmsprop"]
    names += ["adam", "amsgrad", "adamw", "nadam", "lars", "lamb"]
    stdout = _run_example("compare_optimizers.py", "--fast", "--output", str(tmp_path))
    start_loss = float(stdout.split("Rosenbrock:")[1].split("start loss")[1].split()[0])
    rosenbrock = _printed_table(stdout, "Rosenbrock:", len(names))
    beale = _printed_table(stdout, "Beale:", len(names))
    digits = _printed_table(stdout, "digits MLP:", len(names))
    assert list(rosenbrock) == list(beale) == list(digits) == names
    assert min(loss for _, loss in rosenbrock.values()) < start_loss
    assert max(accuracy for _, _, accuracy in digits.values()) > 0.5  # chance is 0.1
    for picture in ("trajectories.png", "digits_comparison.png"):
        assert (tmp_path / picture).stat().st_size > 10_000


def test_train_sharded_matches_one_device():
    # 20 steps: past the ~15 where clipping hides a gradient off by a constant factor (e.g. summed over "data").
    stdout = _run_example("train_sharded.py", "--steps", "20")
    for mode in ("jit", "shard_map"):
        difference = float(stdout.split(f"max |{mode} - single device| =")[1].split()[0])
        assert difference < 1e-4  # float32 rounding is ~1e-6; a gradient summed, not averaged, over "data" is ~3e-2
        losses = [float(line.split("loss")[1]) for line in stdout.splitlines() if line.startswith(f"{mode} ")]
        assert len(losses) >= 2 and losses[-1] < losses[0]
