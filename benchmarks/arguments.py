"""Command-line checks shared by the benchmark scripts: a bad value fails at once, naming its option, before any work.

    parser.add_argument("--steps", type=at_least(1))                  # "argument --steps: must be >= 1, got 0"
    parser.add_argument("--optimizers", type=names)                   # "adam, lamb" -> ["adam", "lamb"]
    writable(parser, "--output", args.output)                         # creates the folder, tries a file in it
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
from typing import Callable


def at_least(minimum: int, why: str = "") -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= minimum``; ``why`` (e.g. ``" (the schedule warms up over one step)"``)
    is added to the error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}{why}, got {value}")
        return value

    return parse


def names(text: str) -> list[str]:
    """An argparse ``type``: a comma-separated list, spaces around the names ignored; at least one name."""
    found = [name.strip() for name in text.split(",") if name.strip()]
    if not found:
        raise argparse.ArgumentTypeError(f"names nothing, got {text!r}; give comma-separated names")
    return found


def writable(parser: argparse.ArgumentParser, option: str, path: pathlib.Path) -> None:
    """Exit with ``parser.error`` unless a file can be written at ``path``: its folder is created and a temporary
    file made (and removed) in it, so that a long run cannot end by failing to write its results."""
    path = pathlib.Path(path)
    if path.is_dir():
        parser.error(f"{option} {path}: is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}."):
            pass
    except OSError as error:
        parser.error(f"{option} {path}: cannot write there ({error.strerror or error})")
