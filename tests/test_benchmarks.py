"""The benchmark scripts run end to end in their quick mode, so they cannot rot (timings are not asserted).

The scripts run on two optimizers (one keeping moments, one with a whole-array
reduction): every row comes from the same loop, and compiling all of them is
most of a quick run's time. Every entry of the table the scripts read is built
and stepped below, with both libraries, as the scripts use it.
"""

from __future__ import annotations

import importlib
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


def _run(script: str, output: pathlib.Path, *options: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--optimizers", ",".join(NAMES), "--output", str(output),
         *options],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output.read_text()


def test_speed_benchmark_quick_mode_reports_its_optimizers(tmp_path):
    # Part kronecker has its own test below, in this process.
    report = _run("run.py", tmp_path / "results.md", "--parts", "step,compile,lowbit,muon",
                  "--trees", "many,transformer")
    step = report[report.index("## Step time"):report.index("## Achieved bandwidth")]
    assert "### 4 leaves of" in step and "### transformer" in step and "### 1 leaf of" not in step
    for name in NAMES:
        assert f"| {name} " in report, name
    for heading in ("step time", "bandwidth", "compile", "memory", "low-bit state", "layer-sharded muon"):
        assert heading in report.lower(), heading
    low_bit = report[report.index("## Low-bit state"):]
    for row in ("float32", "bfloat16", "bfloat16 SR", "8-bit", "8-bit arithmetic, one pass"):
        assert re.search(rf"^\| {re.escape(row)} +\|", low_bit, re.MULTILINE), row


def test_convergence_benchmark_quick_mode_reports_its_optimizers(tmp_path, capsys):
    # Its main, in this process: a new one spent half of the test's ~5 s importing JAX and Flax (the speed
    # benchmark above runs as a script, as the README runs them all).
    output = tmp_path / "convergence.md"
    _benchmark("convergence").main(["--quick", "--optimizers", ",".join(NAMES), "--output", str(output)])
    report = output.read_text()
    for name in NAMES:
        assert f"| {name} " in report, name


def test_convergence_benchmark_refuses_what_it_cannot_run_before_training(tmp_path, capsys):
    convergence = _benchmark("convergence")
    # The optimizers that read the loss were dropped without a word (and all of them dropped: an IndexError at the
    # end); --seeds 0 failed after the tuning runs.
    for argv, message in [
        (["--optimizers", "polyak_sgd,momo"], "--optimizers: cannot run polyak_sgd, momo: they read the loss value"),
        (["--optimizers", "adam, sophia"], "--optimizers: cannot run sophia: they read the loss value"),
        (["--optimizers", " , "], "argument --optimizers: names nothing"),
        (["--seeds", "0"], "argument --seeds: must be >= 1, got 0"),
        (["--output", str(tmp_path)], f"--output {tmp_path}: is a folder"),
    ]:
        assert message in _refused(convergence.parse_args, argv, capsys), argv
    every = convergence.parse_args(["--output", str(tmp_path / "c.md")]).selected  # the others, all of them
    assert set(every) == set(SEED_OPTIMIZERS) - {"polyak_sgd", "lbfgs", "momo", "momo_adam", "sophia"}


def test_lowbit_benchmark_checks_its_options_before_training(tmp_path, capsys):
    lowbit = _benchmark("lowbit")
    a_file = tmp_path / "file"
    a_file.write_text("")
    # --seeds 0 failed with IndexError after training, --steps 1 inside the LM's schedule (naming no option), an
    # unwritable --output after the whole run; "digits, lm" was refused for its space.
    for argv, message in [
        (["--seeds", "0"], "argument --seeds: must be >= 1, got 0"),
        (["--steps", "0"], "argument --steps: must be >= 1, got 0"),
        (["--steps", "1"], "--steps must be >= 2 for task lm, got 1: its schedule warms up over at least one step"),
        (["--storages", "8-bit,fp32"], "--storages must start with fp32"),
        (["--output", str(a_file / "lowbit.md")], f"--output {a_file / 'lowbit.md'}: cannot write there"),
    ]:
        assert message in _refused(lowbit.parse_args, argv, capsys), argv
    args = lowbit.parse_args(["--steps", "1", "--tasks", "digits", "--output", str(tmp_path / "l.md")])
    assert args.steps == 1 and args.tasks == ["digits"]
    args = lowbit.parse_args(["--tasks", "digits, lm", "--storages", "fp32, 8-bit", "--output", str(tmp_path / "l.md")])
    assert args.tasks == ["digits", "lm"] and args.storages == ["fp32", "8-bit"]


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

        # Jitted, the two uses in one program: one compilation costs less than the many small ones running the
        # step eagerly would, or than two.
        rates = jnp.asarray([entry.learning_rate, 2 * entry.learning_rate])
        updates, swept = jax.jit(lambda r, make=make: (first_update(entry.learning_rate, make),
                                                       jax.vmap(first_update)(r)))(rates)
        assert jax.tree.structure(updates) == jax.tree.structure(params)
        # Optax's rprop (and so our Optax-exact jz.rprop) is one step late: its first update is 0; ADOPT's first
        # step only records the second moment.
        late = name in ("rprop", "adopt") or (make is entry.optax and name == "torch.rprop")
        assert all(bool(jnp.all(jnp.isfinite(u))) and (late or bool(jnp.any(u != 0))) for u in jax.tree.leaves(updates)), name
        np.testing.assert_allclose(jax.tree.leaves(swept)[0][0], jax.tree.leaves(updates)[0], rtol=1e-5, atol=1e-7)


def test_gram_newton_schulz_benchmark_quick_mode_reports_its_table(tmp_path, capsys):
    # benchmarks/gram_ns.py takes no optimizer list: run alone, it times and checks both iterations on one shape.
    # Its --repeats 2 used to become 5 without a word, and an --output in a new folder failed after measuring.
    assert "argument --repeats: must be >= 5, got 2" in _refused(_benchmark("gram_ns").parse_args, ["--repeats", "2"],
                                                                 capsys)
    output = tmp_path / "new" / "gram_ns.md"
    _benchmark("gram_ns").main(["--quick", "--output", str(output)])  # in this process, as the test above
    assert re.search(r"^\| 32 x 256 +\|", output.read_text(), re.MULTILINE)


def _lm_convergence():
    sys.path.insert(0, str(BENCHMARKS))
    import lm_convergence

    return lm_convergence


@pytest.mark.parametrize("name", list(_lm_convergence().OPTIMIZERS))
def test_every_lm_convergence_entry_steps_from_a_traced_peak_rate(name):
    # As benchmarks/lm_convergence.py runs it: the peak rate is traced (one compilation per sweep), the schedule
    # spans `steps`; a block's matrix (Muon's), a vector and an embedding-like matrix (Adam's, in Muon).
    entry = _lm_convergence().OPTIMIZERS[name]
    params = {"blocks": {"w": jnp.ones((6, 4))}, "b": jnp.zeros(4), "embed": jnp.full((5, 4), 0.5)}
    grads = jax.tree.map(lambda p: jnp.cos(p + jnp.arange(p.size).reshape(p.shape)), params)

    @jax.jit
    def three_steps(peak):
        tx = entry.make(peak, 10)
        state, current = tx.init(params), params
        for _ in range(3):
            updates, state = tx.update(grads, state, current)
            current = jax.tree.map(lambda p, u: p + u, current, updates)
        held_out_at = current if entry.evaluated_at is None else entry.evaluated_at(state, current)
        return current, held_out_at

    moved, evaluated = three_steps(jnp.float32(entry.centre))
    assert jax.tree.structure(evaluated) == jax.tree.structure(params)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((moved, evaluated)))
    assert any(bool(jnp.any(m != p)) for m, p in zip(jax.tree.leaves(moved), jax.tree.leaves(params)))


def test_lm_convergence_checks_its_options_before_training_and_explicit_ones_win_over_quick(tmp_path, capsys):
    lm = _lm_convergence()
    files = ["--runs", str(tmp_path / "runs.json"), "--output", str(tmp_path / "lm.md")]
    # --short 0.05 of 20 steps failed in the library's schedule after every tuning and seed run, --seeds 0 after the
    # AdamW grid; --quick dropped an explicit --seeds/--steps/--short; --optimizers took no comma list.
    for argv, message in [
        (["--steps", "20", "--short", "0.05", "--optimizers", "shampoo"],
         "--short 0.05 of 20 steps is 1 step for shampoo; a run needs >= 2"),
        (["--seeds", "0"], "argument --seeds: must be >= 1, got 0"),
        (["--steps", "1"], "argument --steps: must be >= 2 (the schedule warms up over at least one step"),
        (["--short", "1"], "--short must be in [0, 1); got 1.0"),
        (["--optimizers", "adamw,nope"], "--optimizers takes names from adamw, soap"),
        (["--output", str(tmp_path)], f"--output {tmp_path}: is a folder"),
    ]:
        assert message in _refused(lm.parse_args, argv + files if argv[0] != "--output" else argv, capsys), argv
    args = lm.parse_args(["--quick", "--seeds", "2", "--steps", "20", "--short", "0.5", *files])
    assert (args.steps, args.seeds, args.short) == (20, 2, 0.5)
    args = lm.parse_args(["--quick", *files])
    assert (args.steps, args.seeds, args.short) == (30, 1, 0.0)
    assert lm.parse_args(["--optimizers", "soap, muon", *files]).names == ["adamw", "soap", "muon"]
    assert lm.parse_args(["--optimizers", "soap", "adamw", *files]).names == ["adamw", "soap"]  # the old form


def test_lm_convergence_report_counts_steps_to_adamw_target(tmp_path):
    """The report from made-up runs: the target is AdamW's median final loss, ratios are of median steps."""
    lm = _lm_convergence()
    steps = 100

    def run(level, seconds=1.0):  # a loss falling linearly from 4 to `level`
        return {"losses": list(np.linspace(4.0, level, steps)), "held_out": level + 0.1, "seconds": seconds}

    adamw = lm.Result("adamw", 3e-3, False, [run(2.0), run(2.1), run(1.9)], [])
    soap = lm.Result("soap", 1e-2, True, [run(1.0), run(1.1), run(4.0)], [run(1.5)] * 3)
    text, target = lm.section({"adamw": adamw, "soap": soap}, steps, 0.7)
    # A final loss is the mean of the last tenth: for a linear fall to 2.0, 2.0 + 4.5 steps' worth of the fall.
    assert target == pytest.approx(2.0 + 4.5 * 2.0 / 99)
    assert lm.steps_to(target, run(2.0)["losses"], steps) == steps  # AdamW's median run gets there at its end
    # SOAP's median run: its mean over 10 steps at step t is its loss at t - 4.5, 4 - 2.9 (t - 5.5) / 99, which
    # is at the target from t = 70.67 on.
    soap_steps = lm.steps_to(target, run(1.1)["losses"], steps)
    assert soap_steps == 71
    row = next(line for line in text.splitlines() if line.startswith("| soap"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == "0.01 (edge)" and cells[5] == f"{soap_steps:.0f}" and cells[6] == f"{soap_steps / steps:.2f}"
    assert float(cells[7]) == pytest.approx(1.5 + 4.5 * 2.5 / 99, rel=1e-2)  # the 0.7x schedule's final loss
    assert lm.steps_to(target, run(4.0)["losses"], steps) == np.inf and "never" not in row  # 2 of 3 reach it
    # Two seeds: the target is the higher of AdamW's two finals, so both AdamW runs reach it (a mean of the two
    # would leave one short of it, and AdamW's median steps infinite).
    two = lm.Result("adamw", 3e-3, False, [run(2.0), run(2.2)], [])
    text, target = lm.section({"adamw": two}, steps, None)
    assert target == pytest.approx(2.2 + 4.5 * 1.8 / 99) and "never" not in text
    lm.plot({"adamw": adamw, "soap": soap}, steps, target, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def _benchmark(module: str):
    """A script of benchmarks/ as a module, its siblings importable as when it runs as a script."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(module)


def _refused(parse_args, argv: list[str], capsys) -> str:
    """The error argparse prints when ``parse_args(argv)`` refuses its options (exit status 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2, argv
    return capsys.readouterr().err


def test_speed_benchmark_refuses_bad_options_before_measuring(tmp_path, capsys):
    run = _benchmark("run")
    a_file = tmp_path / "file"
    a_file.write_text("")
    # Each used to run: --steps -1 reported negative times and exited 0; 0 steps, 0 repeats and "," failed deep in
    # the run (ZeroDivisionError, StatisticsError, StopIteration); an unwritable --output lost the whole run.
    for argv, message in [
        (["--steps", "0"], "argument --steps: must be >= 1, got 0"),
        (["--steps", "-1"], "argument --steps: must be >= 1, got -1"),
        (["--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
        (["--compile-repeats", "0"], "argument --compile-repeats: must be >= 1, got 0"),
        (["--optimizers", ","], "argument --optimizers: names nothing"),
        (["--optimizers", "adam,nope"], "--optimizers: unknown optimizers ['nope']"),
        (["--parts", "step,nope"], "--parts takes step, compile, lowbit, muon, kronecker; got step, nope"),
        (["--output", str(a_file / "r.md")], f"--output {a_file / 'r.md'}: cannot write there"),
    ]:
        assert message in _refused(run.parse_args, argv, capsys), argv
    args = run.parse_args(["--optimizers", " adam , lamb", "--parts", "step, kronecker",
                           "--output", str(tmp_path / "new" / "r.md")])
    assert list(args.selected) == ["adam", "lamb"] and args.parts == ["step", "kronecker"]
    assert (tmp_path / "new").is_dir() and not list((tmp_path / "new").iterdir())  # created, nothing left in it


def test_speed_benchmark_part_kronecker_reports_steps_refresh_floors_and_sharded_layouts(tmp_path, monkeypatch):
    """run.py --parts kronecker as run.py runs it (its results file included), in this process, on a tiny tree
    and three of the contenders: compiling them is the time this takes."""
    run, kronecker = _benchmark("run"), _benchmark("kronecker")
    shapes = {"w": jax.ShapeDtypeStruct((8, 12), jnp.float32), "b": jax.ShapeDtypeStruct((12,), jnp.float32)}
    monkeypatch.setattr(run, "transformer_shapes", lambda config: shapes)
    every = kronecker.optimizers
    three = ("AdamW", "SOAP", "Shampoo")
    monkeypatch.setattr(kronecker, "optimizers", lambda frequency: {k: v for k, v in every(frequency).items() if k in three})
    output = tmp_path / "results.md"
    # This Python has no heavyball: the section says so instead of failing.
    run.measure(run.parse_args(["--quick", "--parts", "kronecker", "--torch-python", sys.executable,
                                "--output", str(output)]))
    report = output.read_text()  # the README's default run used to crash here, in its last part, writing nothing
    assert "optimizers of" not in report and "kronecker: fixed optimizers, named in its sections" in report
    for name in ("AdamW", "SOAP", "Shampoo"):
        assert re.search(rf"^\| {name} +\| +[0-9.]+ \|", report, re.MULTILINE), name
    refresh = report[report.index("### Refresh time"):]
    assert re.search(r"^\| SOAP +\| +-?[0-9.]+ \| +[0-9.]+ \|", refresh, re.MULTILINE)
    assert "heavyball's SOAP" in report and "not run (ModuleNotFoundError" in report
    compiled = report[report.index("### Compile time against AdamW"):]
    assert re.search(r"^\| AdamW +\| +[0-9.]+ \| +[0-9.]+ \| +1\.0 \|", compiled, re.MULTILINE), compiled
    for name in ("SOAP", "Shampoo"):
        assert re.search(rf"^\| {name} +\| +[0-9.]+ \| +[0-9.]+ \| +[0-9.]+ \|", compiled, re.MULTILINE), name
    # This process has conftest's 8 simulated devices: the 8-device section runs here, at its quick size.
    sharded = report[report.index("### Kronecker factors on 8 devices"):]
    for axes, name in [(a, n) for a in ("Auto", "Explicit", "shard_map")
                       for n in ("AdamW", "Shampoo, factor blocks across devices", "SOAP, factors replicated")]:
        assert re.search(rf"^\| {axes} +\| +{re.escape(name)} \|", sharded, re.MULTILINE), (axes, name)
    for name in ("Shampoo", "SOAP"):  # on Auto axes given the params' specs: blocks moved, nothing gathered
        row = re.search(rf"^\| Auto, partition_specs +\| +{name}, factor blocks across devices \|(.*)$", sharded,
                        re.MULTILINE)
        assert row and "collective-permute" in row[1] and "all-gather" not in row[1], row


def test_eight_device_child_failure_shows_the_childs_error(monkeypatch):
    # muon.py and kronecker.py re-run themselves on 8 simulated devices when this process has fewer; a failing
    # child used to surface as a bare CalledProcessError, its stderr (the cause) thrown away.
    muon = _benchmark("muon")
    monkeypatch.setattr(jax, "device_count", lambda: 1)
    with pytest.raises(RuntimeError, match=r"(?s)exit status 2; its stderr ends:.*argument --repeats: must be >= 1"):
        muon.layer_sharded_section("quick", 0, 1)


def test_muon_and_kronecker_refuse_counts_below_one(capsys):
    # --repeats 0 used to fail after the compiles, with "no median for empty data".
    muon, kronecker = _benchmark("muon"), _benchmark("kronecker")
    assert "argument --repeats: must be >= 1, got 0" in _refused(muon.parse_args, ["--repeats", "0"], capsys)
    assert "argument --calls: must be >= 1, got 0" in _refused(muon.parse_args, ["--calls", "0"], capsys)
    assert "argument --repeats: must be >= 1, got 0" in _refused(kronecker.parse_args, ["--repeats", "0"], capsys)
