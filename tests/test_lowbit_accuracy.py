"""8-bit AdamW state trains as well as fp32: a short version of benchmarks/lowbit.py (the full table is in RESULTS.md).

On the digits MLP and a tiny character-level transformer trained on Python's
help texts, AdamW with both moments in :class:`jaxopt_zoo.Blockwise8Bit`
reaches the fp32 run's final training loss within 2% (same initial weights,
same minibatches; one seed per task here, five in the benchmark), with at
least 90% of the parameters in quantized leaves, so that the comparison cannot
pass by leaving the state in float32. bfloat16 moments written with stochastic rounding
(:class:`jaxopt_zoo.StochasticBF16`, the ``bf16-SR`` row) are held to the same
2% bar, keep 2 bytes per moment element, and must not train exactly like
plain bfloat16 (which they would if the writes rounded to nearest). Plain
bfloat16 moments must train (finite loss); their ratio is reported, not
bounded. No timings are asserted.

These runs are short, so the losses are still far from zero and a ratio means
something (over 20 digits seeds at this length, with the packed layout and the
counter-based hash of b61f206, the 8-bit ratio stays within [0.976, 1.007] and
bf16-SR's within [0.991, 1.014]). The full benchmark's digits run ends at a
training loss of ~0.0025, where per-seed ratios scatter by a few percent either
way and 8-bit misses 2% on some seeds while its median is lower than fp32's
(see RESULTS.md).

The 8-bit storage is ``lowbit.EIGHT_BIT``, ``Blockwise8Bit(max_shards=1)``:
under the 8 simulated devices of conftest.py the default ``max_shards`` would
leave every 64-wide leaf of the small LM in float32 (54% of its parameters
quantized instead of 95%), which the quantized-fraction test catches.
"""

from __future__ import annotations

import math
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import lowbit  # noqa: E402

TARGET = lowbit.TARGET  # 1.02
SEEDS = {"digits": [0], "char LM": [0]}  # one seed each: 16 training runs took 40% of the suite's longest test
STORAGES = ["fp32", "8-bit", "bf16", "bf16-SR"]


def _tasks() -> dict[str, lowbit.Task]:
    return {
        "digits": lowbit.digits_task(210),  # 10 epochs of 21 minibatches
        "char LM": lowbit.lm_task(150, d_model=64, heads=4, layers=1, context=32, batch_size=16, held_out_windows=64),
    }


@pytest.fixture(scope="module")
def tasks() -> dict[str, lowbit.Task]:
    return _tasks()


@pytest.fixture(scope="module")
def runs(tasks) -> dict[str, dict[str, list[lowbit.Run]]]:
    """``{task: {storage: [Run per seed]}}``, trained once for every test here."""
    return {name: lowbit.train_all(task, STORAGES, SEEDS[name], log=lambda line: None) for name, task in tasks.items()}


def _unigram_entropy(tokens) -> float:
    """Cross-entropy of the best model that ignores context: the LM must beat it to have learned anything."""
    counts = np.bincount(np.asarray(tokens))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _report(name: str, runs: dict[str, list[lowbit.Run]]) -> str:
    return "\n".join(
        f"{name} {storage}: final losses {[round(r.final_loss, 5) for r in seeds]}, "
        f"ratios to fp32 {[round(x, 4) for x in lowbit.ratios(runs, storage, lambda r: r.final_loss)]}"
        for storage, seeds in runs.items()
    )


def test_training_makes_progress(tasks, runs):
    """The comparison is between trained models: the fp32 losses have fallen well below their start.

    The digits' cross-entropy falls from ~2.3 to a few hundredths; the LM's from
    ~4.6 (a uniform guess) to below the ~3.25 of the text's character frequencies.
    """
    for run in runs["digits"]["fp32"]:
        assert run.final_loss < 0.05 * run.losses[0], (run.losses[0], run.final_loss)
    unigram = _unigram_entropy(tasks["char LM"].data[0])
    for run in runs["char LM"]["fp32"]:
        assert run.final_loss < min(0.6 * run.losses[0], 0.85 * unigram), (run.losses[0], unigram, run.final_loss)


@pytest.mark.parametrize("task", list(SEEDS))
def test_most_parameters_are_quantized(runs, task):
    run = runs[task]["8-bit"][0]
    assert run.quantized_params >= 0.9 * run.params, (task, run.quantized_params, run.params)
    assert runs[task]["fp32"][0].quantized_params == 0
    # Two moments of one byte each plus the block scales and the float32 leftovers, against 8 bytes in fp32.
    assert run.state_bytes < 0.35 * runs[task]["fp32"][0].state_bytes


@pytest.mark.parametrize("task", list(SEEDS))
def test_bfloat16_state_is_half_of_fp32s(runs, task):
    """Both bfloat16 rows keep their moments in 2-byte leaves (plus the step count), none as 8-bit codes."""
    fp32 = runs[task]["fp32"][0]
    for storage in ("bf16", "bf16-SR"):
        run = runs[task][storage][0]
        assert run.quantized_params == 0, (task, storage, run.quantized_params)
        assert 0.45 * fp32.state_bytes < run.state_bytes < 0.51 * fp32.state_bytes, (task, storage, run.state_bytes)


@pytest.mark.parametrize("task", list(SEEDS))
@pytest.mark.parametrize("storage", ["8-bit", "bf16-SR"])
def test_final_loss_within_2_percent_of_fp32(runs, task, storage):
    ratios = lowbit.ratios(runs[task], storage, lambda r: r.final_loss)
    print(_report(task, runs[task]))
    assert max(ratios) <= TARGET, _report(task, runs[task])


@pytest.mark.parametrize("task", list(SEEDS))
def test_stochastic_rounding_changes_the_run(runs, task):
    """bf16-SR is not plain bfloat16 under another name: its losses differ from round-to-nearest's on every seed."""
    for sr, nearest in zip(runs[task]["bf16-SR"], runs[task]["bf16"]):
        assert not np.array_equal(sr.losses, nearest.losses), _report(task, runs[task])


@pytest.mark.parametrize("task", list(SEEDS))
def test_bf16_state_trains(runs, task):
    for run in runs[task]["bf16"]:
        assert math.isfinite(run.final_loss) and math.isfinite(run.metrics["held-out loss"]), _report(task, runs[task])
        assert run.final_loss < 0.6 * run.losses[0], _report(task, runs[task])  # it trains, however well
    print(_report(task, runs[task]))


def test_report_has_every_row_and_verdict(tasks, runs):
    """The benchmark's report (benchmarks/lowbit.py's section) lists every storage and judges 8-bit and bf16-SR."""
    for name, task in tasks.items():
        text = lowbit.section(task, runs[name], SEEDS[name])
        for storage in STORAGES:
            assert f"| {storage} " in text, (name, storage, text)
        for storage in lowbit.JUDGED:
            assert f"- {storage} against the target" in text, (name, storage, text)
