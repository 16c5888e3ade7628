"""The examples run end to end in a fast mode, so they cannot rot."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"


def test_train_digits_runs_and_learns(tmp_path, capsys):
    stdout = _run_example_here(capsys, "train_digits.py", "--epochs", "3", "--output", str(tmp_path))
    accuracy = float(stdout.split("final test accuracy:")[1].split()[0])
    assert accuracy > 0.8  # chance is 0.1; three epochs of AdamW reach ~0.9
    assert (tmp_path / "digits_loss.png").stat().st_size > 10_000


def _run_example(script: str, *args: str, returncode: int = 0) -> str:
    """The stdout of a run in a new process that exits with `returncode` (its stderr, when that is not 0)."""
    result = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == returncode, result.stderr[-2000:]
    return result.stdout if returncode == 0 else result.stderr


def _run_example_here(capsys, script: str, *args: str, returncode: int = 0) -> str:
    """As :func:`_run_example`, but the script runs in this process, as ``python script args`` would run it.

    Its ``__main__`` block (argument parsing, exit status) included; what saves the seconds a new process
    spends importing JAX, Flax, Orbax and scikit-learn. Only where a new process is not what is tested.
    """
    import runpy

    capsys.readouterr()  # what the test printed before is not the script's
    argv, path, environ = sys.argv, list(sys.path), dict(os.environ)  # train_sharded.py sets JAX_PLATFORMS
    sys.argv, sys.path[:0] = [str(EXAMPLES / script), *args], [str(EXAMPLES)]  # as python puts the script's folder
    try:
        runpy.run_path(str(EXAMPLES / script), run_name="__main__")
        status = 0
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv, sys.path[:] = argv, path
        os.environ.clear()
        os.environ.update(environ)
    stdout, stderr = capsys.readouterr()
    assert status == returncode, stderr[-2000:]
    return stdout if returncode == 0 else stderr


def test_checkpoint_resume_in_a_new_process_is_bit_identical(tmp_path, capsys):
    import numpy as np

    steps = ["--steps", "40"]
    # Interrupted here, resumed in a new process (which shares nothing with this one but the files saved),
    # compared with an uninterrupted run.
    interrupted = _run_example_here(
        capsys, "checkpoint_resume.py", *steps, "--stop-at", "17", "--checkpoint-dir", str(tmp_path / "a")
    )
    assert "saved step 17" in interrupted and "finished" not in interrupted
    # Params written where --final-params says, without .npz added, its folder created first (was: after training,
    # np.savez's FileNotFoundError).
    ours_path = tmp_path / "new" / "a_params"
    resumed = _run_example(
        "checkpoint_resume.py", *steps, "--checkpoint-dir", str(tmp_path / "a"), "--final-params", str(ours_path)
    )
    assert "resumed from step 17" in resumed
    _run_example_here(
        capsys, "checkpoint_resume.py", *steps, "--checkpoint-dir", str(tmp_path / "b"),
        "--final-params", str(tmp_path / "b.npz"),
    )

    ours, uninterrupted = np.load(ours_path), np.load(tmp_path / "b.npz")
    assert len(ours.files) == 4  # kernel and bias of two layers
    for name in uninterrupted.files:
        np.testing.assert_array_equal(ours[name], uninterrupted[name], strict=True)

    # The accuracy it prints is the held-out one: that of the final params on train_digits.py's test split.
    import jax
    from flax import nnx

    sys.path.insert(0, str(EXAMPLES))
    try:
        from train_digits import Classifier, load_data, loss_and_accuracy
    finally:
        sys.path.remove(str(EXAMPLES))
    model = Classifier(nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(params)
    nnx.update(model, jax.tree.unflatten(treedef, [ours[f"arr_{i}"] for i in range(len(leaves))]))
    _, x_test, _, y_test = load_data(0)
    printed = float(resumed.split("test accuracy")[1].split()[0])
    assert f"on {len(x_test)} held-out digits" in resumed
    assert abs(printed - float(loss_and_accuracy(model, x_test, y_test)[1])) < 1e-4


def test_checkpoint_resume_says_when_a_run_exists_and_fresh_starts_over(tmp_path, capsys):
    folder = str(tmp_path / "run")
    steps = ["--steps", "4", "--checkpoint-dir", folder]
    run = lambda *args, returncode=0: _run_example_here(capsys, "checkpoint_resume.py", *args, returncode=returncode)
    assert "saved step 4" in run(*steps)
    # Used to exit 0 having done nothing, without a word.
    message = run(*steps, "--stop-at", "2", returncode=1)
    assert f"A run is already saved in {folder} at step 4 (it is complete)" in message
    assert "--fresh" in message and f"delete {folder}" in message
    # A complete run asked to finish again reports its accuracy and how to start over.
    again = run(*steps)
    assert "is complete" in again and "--fresh" in again and "test accuracy" in again
    # A run saved with other settings is refused, not resumed (was: resumed without a word, mixing two schedules,
    # or training on another seed's held-out digits).
    for other in (["--steps", "6", "--checkpoint-dir", folder], [*steps, "--seed", "1"]):
        message = run(*other, returncode=1)
        assert f"The run saved in {folder} (at step 4) was made with --steps 4 --seed 0" in message, message
        assert "Resuming would mix two runs" in message and "--fresh" in message
    restarted = run(*steps, "--stop-at", "2", "--fresh")
    assert "deleting the saved steps [4]" in restarted and "saved step 2" in restarted
    assert sorted(int(p.name) for p in pathlib.Path(folder).iterdir() if p.name.isdigit()) == [2]


def test_checkpoint_resume_refuses_bad_options_before_training(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("")
    folder = ["--checkpoint-dir", str(tmp_path / "run")]
    # --stop-at 0 or -5 claimed that a run was saved in an empty folder; a file as --checkpoint-dir trained, then the
    # save failed and Orbax's threads kept the process from exiting; a file in --final-params' path failed after
    # training.
    for argv, message in [
        (["--stop-at", "0", *folder], "--stop-at must be >= 1, got 0"),
        (["--stop-at", "-5", *folder], "--stop-at must be >= 1, got -5"),
        (["--steps", "0", *folder], "--steps must be >= 1, got 0"),
        (["--checkpoint-dir", str(a_file)], f"--checkpoint-dir: cannot make the folder {a_file} (a file is in the way)"),
        (["--final-params", str(a_file / "params.npz"), *folder],
         f"--final-params: cannot make the folder {a_file} (a file is in the way)"),
    ]:
        assert message in _run_example_here(capsys, "checkpoint_resume.py", *argv, returncode=2), argv
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())  # nothing saved


def test_examples_refuse_bad_options_before_training(tmp_path, capsys):
    """Each in this process, each refused by argparse (exit status 2) before any training: each used to train
    nothing and report success, fail deep in the library or XLA, or fail after training."""
    a_file = tmp_path / "file"
    a_file.write_text("")
    for script, argv, message in [
        ("train_digits.py", ["--epochs", "0"], "--epochs must be >= 1, got 0"),
        ("train_digits.py", ["--epochs", "-1"], "--epochs must be >= 1, got -1"),
        ("train_digits.py", ["--batch-size", "0"], "--batch-size must be between 1 and the 1347 training images, got 0"),
        ("train_digits.py", ["--batch-size", "5000"], "--batch-size must be between 1 and the 1347 training images"),
        ("train_digits.py", ["--output", str(a_file / "out")], f"--output: cannot make the folder {a_file / 'out'}"),
        ("train_digits_linen.py", ["--epochs", "0"], "--epochs must be >= 1, got 0"),
        ("train_digits_linen.py", ["--batch-size", "5000"], "--batch-size must be between 1 and the 1347"),
        ("schedule_free_nnx.py", ["--steps", "0"], "--steps must be >= 1, got 0"),
        ("schedule_free_nnx.py", ["--eval-every", "0"], "--eval-every must be >= 1, got 0"),
        ("schedule_free_nnx.py", ["--batch-size", "5000"], "--batch-size must be between 1 and the 1347"),
        ("compare_optimizers.py", ["--steps", "0"], "--steps must be >= 1, got 0"),  # 0 meant the default
        ("compare_optimizers.py", ["--digits-steps", "-3"], "--digits-steps must be >= 1, got -3"),
        ("compare_optimizers.py", ["--optimizers", ","], "--optimizers ',' names no optimizer; choose from sgd"),
        ("char_lm.py", ["--steps", "1"], "--steps must be >= 2 (the schedule warms up, then decays), got 1"),
        ("char_lm.py", ["--peak-rate", "-1"], "--peak-rate must be > 0, got -1.0"),
        ("char_lm.py", ["--output", str(a_file)], f"--output: cannot make the folder {a_file}"),
        ("train_sharded.py", ["--steps", "0"], "--steps must be >= 1, got 0"),
    ]:
        assert message in _run_example_here(capsys, script, *argv, returncode=2), (script, argv)


def test_train_digits_linen_runs_and_learns(capsys):
    stdout = _run_example_here(capsys, "train_digits_linen.py", "--epochs", "3")
    accuracy = float(stdout.split("final test accuracy:")[1].split()[0])
    assert accuracy > 0.8


def test_schedule_free_nnx_evaluates_at_the_average(capsys):
    stdout = _run_example_here(capsys, "schedule_free_nnx.py", "--steps", "60", "--eval-every", "30")
    assert stdout.count("test accuracy at y") == 2
    assert float(stdout.split("final test accuracy at x:")[1].split()[0]) > 0.8


def _printed_table(stdout: str, title: str, rows: int) -> dict[str, list[float]]:
    """The rows under the printed heading that starts with `title`, by optimizer name."""
    block = stdout.split(f"\n{title}")[1]
    return {line.split()[0]: [float(v) for v in line.split()[1:]] for line in block.splitlines()[2 : 2 + rows]}


def _run_here_with_terminal_stderr(capsys, script: str, *args: str) -> tuple[str, str]:
    """stdout and stderr of an example run here (:func:`_run_example_here`) whose stderr is a terminal (a pty),
    where progress bars show."""
    import contextlib
    import fcntl
    import os
    import pty
    import struct
    import termios
    import threading

    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 0-column pty gets no bar
    chunks: list[bytes] = []

    def drain():  # a full pty would block the script
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the terminal's end is closed and all of it read
                break
            if not chunk:
                break
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        with open(terminal, "w", encoding="utf-8") as stderr, contextlib.redirect_stderr(stderr):
            stdout = _run_example_here(capsys, script, *args)
    finally:
        reader.join(10)
        os.close(main)
    return stdout, b"".join(chunks).decode(errors="replace")


def test_compare_optimizers_runs_fast(tmp_path, capsys):
    # Three of the twelve (every optimizer is one more compile of the same loop): plain, adaptive, trust ratio.
    names = ["sgd", "adam", "lamb"]
    stdout, stderr = _run_here_with_terminal_stderr(
        capsys, "compare_optimizers.py", "--fast", "--optimizers", ",".join(reversed(names)), "--output", str(tmp_path)
    )
    # A progress bar on the terminal, one tick per optimizer on each of the three problems; none in stdout.
    assert "comparing" in stderr and f"{3 * len(names)}/{3 * len(names)}" in stderr, stderr[-2000:]
    assert "comparing" not in stdout
    start_loss = float(stdout.split("Rosenbrock:")[1].split("start loss")[1].split()[0])
    rosenbrock = _printed_table(stdout, "Rosenbrock:", len(names))
    beale = _printed_table(stdout, "Beale:", len(names))
    digits = _printed_table(stdout, "digits MLP:", len(names))
    assert list(rosenbrock) == list(beale) == list(digits) == names  # in the table's order, not the option's
    assert min(loss for _, loss in rosenbrock.values()) < start_loss
    assert max(accuracy for _, _, accuracy in digits.values()) > 0.5  # chance is 0.1
    for picture in ("trajectories.png", "digits_comparison.png"):
        assert (tmp_path / picture).stat().st_size > 10_000


def test_compare_optimizers_names_the_choices_for_an_unknown_optimizer(capsys):
    message = _run_example_here(capsys, "compare_optimizers.py", "--optimizers", "adam,adamax", returncode=2)
    assert "unknown names ['adamax']" in message and "choose from sgd, momentum" in message


@pytest.mark.parametrize("optimizer", ["adamw", "shampoo"])
def test_train_sharded_matches_one_device(capsys, optimizer):
    # 20 steps: past the ~15 where clipping hides a gradient off by a constant factor (e.g. summed over "data").
    # In this process: the 8 CPU devices it asks XLA for are conftest.py's too. Shampoo: its factor blocks laid out
    # across the devices, refreshed at steps 5, 10, 15, 20.
    stdout = _run_example_here(capsys, "train_sharded.py", "--steps", "20", "--optimizer", optimizer)
    if optimizer == "shampoo":
        assert "Shampoo's w1 factor blocks (4, 64, 64): P('model',), 1 per device" in stdout
    for mode in ("jit", "shard_map"):
        difference = float(stdout.split(f"max |{mode} - single device| =")[1].split()[0])
        assert difference < 1e-4  # float32 rounding is ~1e-6; a gradient summed, not averaged, over "data" is ~3e-2
        losses = [float(line.split("loss")[1]) for line in stdout.splitlines() if line.startswith(f"{mode} ")]
        assert len(losses) >= 2 and losses[-1] < losses[0]


def test_char_lm_trains_soap_and_adamw_and_plots_both(tmp_path, capsys):
    """The script's main, on a smaller transformer: what takes the time here is compiling two training runs."""
    import runpy

    char_lm = runpy.run_path(str(EXAMPLES / "char_lm.py"))
    tiny = char_lm["Config"](d_model=16, heads=2, layers=1, context=8, batch_size=8, held_out_windows=8)
    finals = char_lm["main"](30, 0, 1e-2, tmp_path, tiny)
    stdout = capsys.readouterr().out
    assert set(finals) == {"adamw", "soap"} and all(f"{name:6s} final training loss" in stdout for name in finals)
    assert all(1.0 < loss < 4.0 for loss in finals.values())  # from ~4.6 (a uniform guess over ~100 characters)
    assert (tmp_path / "char_lm.png").stat().st_size > 10_000
    import matplotlib.pyplot as plt

    # The y range comes from the curves: the first steps' ~4.6 in view (it was capped at 3.5).
    figure = plt.figure(plt.get_fignums()[-1])
    assert figure.axes[0].get_ylim()[1] > 4.5
    plt.close(figure)
