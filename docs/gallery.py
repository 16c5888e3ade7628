"""The gallery: the examples run as scripts at docs build time, each page showing the command, what it printed,
the plots it drew and its source.

Run modes (``-D gallery=...`` on the sphinx command line): ``full`` (the default) runs each example as the README
gives it; ``fast`` uses the examples' quick modes; ``off`` runs nothing and the pages say so (the test suite builds
the site this way; tests/test_examples.py runs the examples). A run is cached in ``docs/gallery/_outputs/<name>/``
under a key of its scripts' contents, its commands and the mode, so a rebuild reruns only what changed.
"""

from __future__ import annotations

import ast
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
from typing import NamedTuple

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = ROOT / "docs" / "gallery"
OUT = "{out}"  # stands for the example's output folder in its commands


class Example(NamedTuple):
    name: str
    title: str
    script: str  # the source shown on the page (relative to the repository root)
    full: tuple[tuple[str, ...], ...]  # the commands' arguments after `python`, run in order
    fast: tuple[tuple[str, ...], ...]
    images: tuple[str, ...] = ()  # files the commands write into OUT
    markdown: str | None = None  # a markdown report the commands write into OUT, shown on the page


EXAMPLES = (
    Example("train_digits", "Digits classifier with Flax NNX", "examples/train_digits.py",
            full=(("examples/train_digits.py", "--output", OUT),),
            fast=(("examples/train_digits.py", "--epochs", "3", "--output", OUT),), images=("digits_loss.png",)),
    Example("train_digits_linen", "The same classifier with Flax linen", "examples/train_digits_linen.py",
            full=(("examples/train_digits_linen.py",),), fast=(("examples/train_digits_linen.py", "--epochs", "3"),)),
    Example("compare_optimizers", "Every optimizer on Rosenbrock, Beale and the digits", "examples/compare_optimizers.py",
            full=(("examples/compare_optimizers.py", "--output", OUT),),
            fast=(("examples/compare_optimizers.py", "--fast", "--output", OUT),),
            images=("trajectories.png", "digits_comparison.png")),
    Example("checkpoint_resume", "Checkpoint with Orbax, resume in a new process", "examples/checkpoint_resume.py",
            full=(("examples/checkpoint_resume.py", "--stop-at", "150", "--checkpoint-dir", OUT + "/checkpoints"),
                  ("examples/checkpoint_resume.py", "--checkpoint-dir", OUT + "/checkpoints")),
            fast=(("examples/checkpoint_resume.py", "--steps", "40", "--stop-at", "17", "--checkpoint-dir",
                   OUT + "/checkpoints"),
                  ("examples/checkpoint_resume.py", "--steps", "40", "--checkpoint-dir", OUT + "/checkpoints"))),
    Example("train_sharded", "Sharded training on 8 devices, with jit and with shard_map", "examples/train_sharded.py",
            full=(("examples/train_sharded.py",),), fast=(("examples/train_sharded.py", "--steps", "10"),)),
    Example("schedule_free_nnx", "Schedule-Free AdamW in NNX, evaluated at the averaged point",
            "examples/schedule_free_nnx.py", full=(("examples/schedule_free_nnx.py",),),
            fast=(("examples/schedule_free_nnx.py", "--steps", "60"),)),
    Example("char_lm", "A character-level transformer trained with SOAP and with AdamW", "examples/char_lm.py",
            full=(("examples/char_lm.py", "--output", OUT),), fast=(("examples/char_lm.py", "--steps", "40", "--output", OUT),),
            images=("char_lm.png",)),
    Example("lowbit", "Low-bit optimizer state: 8-bit and bfloat16 AdamW against float32", "benchmarks/lowbit.py",
            full=(("benchmarks/lowbit.py", "--quick", "--tasks", "digits", "--output", OUT + "/lowbit.md"),),
            fast=(("benchmarks/lowbit.py", "--quick", "--tasks", "digits", "--output", OUT + "/lowbit.md"),),
            markdown="lowbit.md"),
)


def docstring(script: str) -> str:
    return ast.get_docstring(ast.parse((ROOT / script).read_text())) or ""


def shown(command: tuple[str, ...]) -> str:
    return ".venv/bin/python " + " ".join(a.replace(OUT, "OUT") for a in command)


def printed(text: str) -> str:
    """What a terminal would show: a progress bar's carriage-return redraws collapse to their last state."""
    lines = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").splitlines()]
    return "\n".join(line for line in lines if line.strip())


def run(example: Example, mode: str) -> tuple[pathlib.Path, str]:
    """Runs the example's commands unless their cached output is current; returns its folder and its output."""
    out = PAGES / "_outputs" / example.name
    commands = example.full if mode == "full" else example.fast
    sources = [ROOT / example.script] + [ROOT / c[0] for c in commands]
    key = hashlib.sha256(repr((mode, commands, [p.read_bytes() for p in sources])).encode()).hexdigest()
    if (out / "key").exists() and (out / "key").read_text() == key:
        return out, (out / "printed.txt").read_text()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    environment = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    text = []
    for command in commands:
        arguments = [a.replace(OUT, str(out)) for a in command]
        result = subprocess.run([sys.executable, *arguments], cwd=ROOT, env=environment, capture_output=True,
                                text=True, timeout=1800)
        if result.returncode != 0:
            raise RuntimeError(f"gallery: {shown(command)} failed:\n{result.stderr[-3000:]}")
        output = printed(result.stdout + result.stderr).replace(str(out), "OUT").replace(str(ROOT) + "/", "")
        text.append(f"$ {shown(command)}\n{output}")
    (out / "printed.txt").write_text("\n\n".join(text))
    (out / "key").write_text(key)
    return out, (out / "printed.txt").read_text()


def indent(text: str) -> str:
    return "\n".join("   " + line if line else "" for line in text.splitlines())


def page(example: Example, mode: str) -> str:
    commands = example.full if mode == "full" else example.fast
    lines = [example.title, "=" * len(example.title), "", ".. code-block:: bash", ""]
    lines += [indent(shown(c)) for c in commands] + [""]
    lines += ["``OUT`` is the example's output folder. From the script's docstring:", "", ".. code-block:: text", "",
              indent(docstring(example.script)), ""]
    if mode == "off":
        lines += [".. note::", "", "   This build ran no examples (``-D gallery=off``): build with ``-D gallery=full`` "
                  "(the default) to see what this one prints and draws.", ""]
    else:
        out, text = run(example, mode)
        label = "What it printed" + (" (the examples' quick mode)" if mode == "fast" else "")
        lines += [label, "-" * len(label), "", ".. code-block:: text", "", indent(text), ""]
        for image in example.images:
            lines += [f".. image:: _outputs/{example.name}/{image}", f"   :alt: {image}", ""]
        if example.markdown:
            lines += [".. include:: " + f"_outputs/{example.name}/{example.markdown}", "   :parser: myst_parser.sphinx_", ""]
    lines += ["Source", "------", "", f".. literalinclude:: ../../{example.script}", "   :language: python", ""]
    return "\n".join(lines)


def write(mode: str) -> None:
    if mode not in ("full", "fast", "off"):
        raise ValueError(f"gallery must be full, fast or off, got {mode!r}")
    PAGES.mkdir(exist_ok=True)
    index = ["Gallery", "=======", "", "The examples, run when the site was built: each page gives the command, what it",
             "printed, the plots it drew and the script.", "", ".. toctree::", "   :maxdepth: 1", ""]
    for example in EXAMPLES:
        text = page(example, mode)
        path = PAGES / f"{example.name}.rst"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        index.append(f"   {example.name}")
    (PAGES / "index.rst").write_text("\n".join(index) + "\n")
