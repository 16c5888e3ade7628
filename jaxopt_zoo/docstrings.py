"""Argument descriptions said once: :func:`document_args` completes a function's ``Args:`` section from the
functions it is built on and from shared descriptions, when its module is imported, so that ``help()``, an IDE and
the API reference read the same full list.

An alias such as :func:`jaxopt_zoo.adam` takes the arguments of the transformations in its recipe; their meaning
is written once, in those transformations' docstrings, and the alias names them as its sources::

    @document_args(scale_by_adam, scale_by_learning_rate)
    def adam(learning_rate, b1=0.9, ...):
        \"\"\"Adam ...

        Args:
            mu_dtype: ...  # an entry of its own wins over its sources'
        \"\"\"
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable, Mapping, TypeVar

__all__ = ["args_entries", "document_args"]

F = TypeVar("F", bound=Callable[..., Any])

# A section header of a Google-style docstring (napoleon's), at the docstring's own indentation.
_SECTION = re.compile(r"^(Args|Arguments|Returns|Return|Raises|Yields|Example|Examples|Note|Notes|References|"
                      r"See Also|Warning|Warnings|Attributes):\s*$")
_ENTRY = re.compile(r"^    (\*{0,2}\w+)( \([^)]*\))?:( |$)")


def _split(doc: str) -> tuple[list[str], list[str], list[str]]:
    """A cleaned docstring's lines before its ``Args:`` section, that section's body, and the lines after it (the
    body is empty, and the after part starts at the first later section, where there is no ``Args:``)."""
    lines = doc.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() in ("Args:", "Arguments:")
                  and not line.startswith(" ")), None)
    if start is None:
        first = next((i for i, line in enumerate(lines) if _SECTION.match(line)), len(lines))
        return lines[:first], [], lines[first:]
    end = next((i for i in range(start + 1, len(lines)) if lines[i].strip() and not lines[i].startswith(" ")),
               len(lines))
    return lines[:start], lines[start + 1:end], lines[end:]


def args_entries(fn_or_doc: Callable | str | None) -> dict[str, str]:
    """The entries of a docstring's ``Args:`` section: each argument's name and its text (the first line after
    ``name:``, then its continuation lines, dedented to the entry's level)."""
    doc = fn_or_doc if isinstance(fn_or_doc, str) or fn_or_doc is None else fn_or_doc.__doc__
    _, body, _ = _split(inspect.cleandoc(doc or ""))
    entries: dict[str, list[str]] = {}
    name = None
    for line in body:
        match = _ENTRY.match(line)
        if match:
            name = match.group(1).lstrip("*")
            entries[name] = [line[match.end():].strip()]
        elif name is not None:
            entries[name].append(line[8:] if line.startswith(" " * 8) else line.strip())
    return {k: "\n".join(v).strip() for k, v in entries.items()}


def _entry(name: str, text: str) -> list[str]:
    first, *rest = text.splitlines() or [""]
    return [f"    {name}: {first}".rstrip()] + [f"        {line}".rstrip() for line in rest]


def document_args(*sources: Callable | Mapping[str, str], **descriptions: str) -> Callable[[F], F]:
    """Complete the decorated function's ``Args:`` section: each argument it does not describe itself takes its
    description from ``descriptions``, else from the first of ``sources`` (functions whose ``Args:`` sections
    describe an argument of that name, or mappings from names to descriptions) that has one. The section lists the
    arguments in the signature's order; an argument nobody describes is left out (``tests/test_docs.py`` names it).
    The function itself is returned unchanged but for its ``__doc__``."""
    tables = [dict(descriptions)] + [dict(s) if isinstance(s, Mapping) else args_entries(s) for s in sources]

    def complete(fn: F) -> F:
        before, _, after = _split(inspect.cleandoc(fn.__doc__ or ""))
        own = args_entries(fn.__doc__)
        parameters = [p.name for p in inspect.signature(fn).parameters.values()
                      if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        lines = []
        for name in parameters + [n for n in own if n not in parameters]:
            text = own.get(name) or next((table[name] for table in tables if name in table), None)
            if text is not None:
                lines += _entry(name, text)
        if lines:
            while before and not before[-1].strip():
                before.pop()
            fn.__doc__ = "\n".join(before + ["", "Args:"] + lines + ([""] + after if after else [])) + "\n"
        return fn

    return complete
