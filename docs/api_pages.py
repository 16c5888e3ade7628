"""The API reference's pages, generated from the modules' public names at every docs build.

One page per family module, in the order of :data:`FAMILIES`; each public name is documented once, on the page of
the module that defines it, under the name users call it by (``jaxopt_zoo.adam``, ``jaxopt_zoo.torch.adam``).
A module that defines a public name but is missing from :data:`FAMILIES` fails the build (and tests/test_docs.py):
a new family adds its line here when it lands.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pathlib
import re
import types
from typing import Iterator, NamedTuple

from sphinx.pycode import ModuleAnalyzer

import jaxopt_zoo as jz


class Family(NamedTuple):
    title: str
    modules: tuple[str, ...]  # modules whose public names this page documents, in order


# (section, families): the reference's table of contents.
FAMILIES: tuple[tuple[str, tuple[Family, ...]], ...] = (
    ("Building blocks", (
        Family("The protocol: GradientTransformation, states and types", ("jaxopt_zoo.base",)),
        Family("Combining transformations", ("jaxopt_zoo.combine",)),
    )),
    ("Optimizers (Optax's names)", (
        Family("Classic optimizers: SGD, Adam, AdamW, LAMB, ...", ("jaxopt_zoo.optimizers.classic",)),
        Family("Adam's relatives", ("jaxopt_zoo.optimizers.adam_relatives", "jaxopt_zoo.optimizers.ademamix",
                                    "jaxopt_zoo.optimizers.dual_averaging")),
        Family("Sign methods", ("jaxopt_zoo.optimizers.sign",)),
        Family("Layer-wise methods", ("jaxopt_zoo.optimizers.layerwise",)),
        Family("Factored second moments", ("jaxopt_zoo.optimizers.factored",)),
        Family("Orthogonalised updates (Muon)", ("jaxopt_zoo.optimizers.orthogonal",)),
        Family("Schedule-Free", ("jaxopt_zoo.optimizers.schedule_free",)),
        Family("Learning-rate-free and parameter-free", ("jaxopt_zoo.optimizers.d_adaptation",
                                                         "jaxopt_zoo.optimizers.parameter_free")),
        Family("Polyak steps and model-based steps", ("jaxopt_zoo.optimizers.polyak", "jaxopt_zoo.optimizers.momo")),
        Family("Second-order: Sophia, L-BFGS", ("jaxopt_zoo.optimizers.sophia", "jaxopt_zoo.optimizers.linesearch")),
        Family("Low-rank projection (GaLore)", ("jaxopt_zoo.optimizers.galore",)),
        Family("Kronecker-factored preconditioners: Shampoo, SOAP, PSGD-Kron", (
            "jaxopt_zoo.optimizers.shampoo", "jaxopt_zoo.optimizers.soap", "jaxopt_zoo.optimizers.psgd")),
        Family("Cautious and variance-reduced (MARS) variants", ("jaxopt_zoo.optimizers.cautious",)),
        Family("Noise, games, Rprop and privacy", ("jaxopt_zoo.optimizers.noise", "jaxopt_zoo.optimizers.optimistic",
                                                   "jaxopt_zoo.optimizers.rprop", "jaxopt_zoo.optimizers.privacy")),
    )),
    ("Transformations", (
        Family("Scaling, momentum and weight decay", ("jaxopt_zoo.transforms.scaling", "jaxopt_zoo.transforms.momentum",
                                                      "jaxopt_zoo.transforms.weight_decay")),
        Family("Adaptive moments: Adam and its relatives", (
            "jaxopt_zoo.transforms.adaptive", "jaxopt_zoo.transforms.adam_variants",
            "jaxopt_zoo.transforms.adam_relatives", "jaxopt_zoo.transforms.ademamix",
            "jaxopt_zoo.transforms.dual_averaging")),
        Family("Sign methods", ("jaxopt_zoo.transforms.sign",)),
        Family("Layer-wise and trust-ratio methods", ("jaxopt_zoo.transforms.trust_ratio",
                                                      "jaxopt_zoo.transforms.layerwise")),
        Family("Factored second moments", ("jaxopt_zoo.transforms.factored", "jaxopt_zoo.transforms.sm3")),
        Family("Orthogonalised updates (Muon)", ("jaxopt_zoo.transforms.orthogonal",
                                                 "jaxopt_zoo.transforms.gram_newton_schulz")),
        Family("Schedule-Free", ("jaxopt_zoo.transforms.schedule_free",)),
        Family("Learning-rate-free and parameter-free", ("jaxopt_zoo.transforms.d_adaptation",
                                                         "jaxopt_zoo.transforms.parameter_free")),
        Family("Polyak and model-based steps", ("jaxopt_zoo.transforms.polyak", "jaxopt_zoo.transforms.momo")),
        Family("Second-order: Sophia, L-BFGS and line searches", (
            "jaxopt_zoo.transforms.sophia", "jaxopt_zoo.transforms.linesearch", "jaxopt_zoo.transforms.lbfgs")),
        Family("Low-rank projection (GaLore)", ("jaxopt_zoo.transforms.galore",)),
        Family("Kronecker-factored preconditioners and grafting", (
            "jaxopt_zoo.transforms.kronecker", "jaxopt_zoo.transforms.shampoo", "jaxopt_zoo.transforms.soap",
            "jaxopt_zoo.transforms.psgd", "jaxopt_zoo.transforms.grafting")),
        Family("Cautious masking and MARS", ("jaxopt_zoo.transforms.cautious", "jaxopt_zoo.transforms.mars")),
        Family("Step-size adaptation, noise, games and averaging", (
            "jaxopt_zoo.transforms.rprop", "jaxopt_zoo.transforms.noise", "jaxopt_zoo.transforms.optimistic",
            "jaxopt_zoo.transforms.averaging")),
        Family("Sharpness, plateaus and privacy", ("jaxopt_zoo.transforms.sam", "jaxopt_zoo.transforms.plateau",
                                                   "jaxopt_zoo.transforms.privacy")),
        Family("Clipping and constraints", ("jaxopt_zoo.transforms.clipping", "jaxopt_zoo.transforms.constrain")),
    )),
    ("Wrappers and schedules", (
        Family("Wrappers: injected hyperparameters, NaN safety, accumulation, averaging", ("jaxopt_zoo.wrappers",)),
        Family("When an update happens", ("jaxopt_zoo.conditional",)),
        Family("Monitoring", ("jaxopt_zoo.monitoring",)),
        Family("Microbatching", ("jaxopt_zoo.microbatching",)),
        Family("Schedules", ("jaxopt_zoo.schedules",)),
    )),
    ("Beyond Optax", (
        Family("Storage: 8-bit and bfloat16 state", ("jaxopt_zoo.storage", "jaxopt_zoo.quantization")),
        Family("Sharding", ("jaxopt_zoo.sharding",)),
        Family("torch.optim under its own names", ("jaxopt_zoo.torch",)),
    )),
    ("Utilities", (
        Family("Tree helpers and moments", ("jaxopt_zoo.tree",)),
        Family("Numerics and linear algebra", ("jaxopt_zoo.numerics", "jaxopt_zoo.linalg")),
    )),
)


class Entry(NamedTuple):
    name: str  # the documented name, as users write it: jaxopt_zoo.adam, jaxopt_zoo.torch.adam
    directive: str  # autofunction, autoclass or autodata
    module: str  # where the object is defined


def _directive(obj: object) -> str:
    if inspect.isclass(obj) and getattr(obj, "__module__", None) != "typing":  # typing.Any is a class on 3.11
        return "autoclass"
    if inspect.isfunction(obj):
        return "autofunction"
    return "autodata"  # type aliases (Schedule, MaskOrFn, ...)


def _defining_module(namespace: types.ModuleType, name: str) -> str:
    obj = getattr(namespace, name)
    module = getattr(obj, "__module__", None) if (inspect.isclass(obj) or inspect.isfunction(obj)) else None
    if module is None or not module.startswith("jaxopt_zoo"):
        return "jaxopt_zoo.base"  # the type aliases, defined in base.py from typing's constructs
    return "jaxopt_zoo.torch" if namespace is jz.torch else module


def public_entries() -> Iterator[Entry]:
    """Every public name: the flat namespace's, then jaxopt_zoo.torch's (its own surface)."""
    for namespace, prefix in ((jz, "jaxopt_zoo"), (jz.torch, "jaxopt_zoo.torch")):
        for name in namespace.__all__:
            obj = getattr(namespace, name)
            if inspect.ismodule(obj):
                continue  # submodules are documented by their pages
            yield Entry(f"{prefix}.{name}", _directive(obj), _defining_module(namespace, name))


def family_of_module() -> dict[str, tuple[str, Family]]:
    return {module: (section, family) for section, families in FAMILIES for family in families
            for module in family.modules}


def unplaced_modules() -> list[str]:
    """Modules that define public names but have no page: each must be added to FAMILIES."""
    placed = family_of_module()
    return sorted({entry.module for entry in public_entries()} - set(placed))


def page_name(family: Family) -> str:
    """The page's file name: its first module's path below the package (transforms.adaptive, base, torch)."""
    return family.modules[0].removeprefix("jaxopt_zoo.")


def _module_title(module: str) -> str:
    """A page section's heading: the module docstring's first sentence, up to its colon."""
    first = " ".join((importlib.import_module(module).__doc__ or module).strip().split("\n\n", 1)[0].split())
    return first.split(": ", 1)[0].split(". ", 1)[0].rstrip(".")


@functools.cache
def alias_docs() -> dict[str, str]:
    """The type aliases' docstrings (the string under each assignment in base.py), which autodoc finds only in the
    module that assigns them, not under the names users write (``jaxopt_zoo.Params``)."""
    docs = ModuleAnalyzer.for_module("jaxopt_zoo.base").find_attr_docs()
    return {name: " ".join(" ".join(lines).split()) for (scope, name), lines in docs.items() if not scope}


@functools.cache
def alias_sources() -> dict[str, str]:
    """Each type alias as base.py writes it (``Callable[[jax.Array], jax.typing.ArrayLike]``), not its expansion."""
    source = pathlib.Path(inspect.getsourcefile(importlib.import_module("jaxopt_zoo.base"))).read_text()
    return {node.target.id: ast.get_source_segment(source, node.value) for node in ast.parse(source).body
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None}


def _page(section: str, family: Family, entries: list[Entry]) -> str:
    lines = [family.title, "=" * len(family.title), ""]
    for module in family.modules:
        members = sorted((e for e in entries if e.module == module), key=lambda e: (e.directive != "autofunction",
                                                                                     e.name.lower()))
        if not members:
            continue
        if len(family.modules) > 1:  # a heading per module, so that each intro does not run on from the last entry
            title = _module_title(module)
            lines += [title, "-" * len(title), ""]
        lines += [f".. automodule:: {module}", "   :no-members:", "", ".. rubric:: Contents", ""]
        lines += [f"- :py:obj:`{e.name.rsplit('.', 1)[1]} <{e.name}>`" for e in members] + [""]
        for e in members:
            lines += [f".. {e.directive}:: {e.name}", ""]
            if e.directive == "autoclass":
                lines[-1:] = ["   :no-members:", ""]
            elif e.directive == "autodata":  # written out: autodoc would show typing.Any's own docstring for Params
                name = e.name.rsplit(".", 1)[1]
                lines[-2:] = [f".. py:data:: {name}", f"   :module: {e.name.rsplit('.', 1)[0]}", "",
                              f"   {alias_docs().get(name, '')}", "",
                              f"   Alias of ``{alias_sources()[name]}``.", ""]
    return "\n".join(lines) + "\n"


def summary(entry: Entry) -> str:
    """The first line of the object's docstring (its one-line rule), for the A-Z list."""
    namespace, _, name = entry.name.rpartition(".")
    obj = getattr(jz.torch if namespace == "jaxopt_zoo.torch" else jz, name)
    doc = (inspect.getdoc(obj) if entry.directive != "autodata" else alias_docs().get(name, "")) or ""
    # A bare :func:`adam` means the entry's own module's (jz.torch.adamw's text: torch.adam); the index has no module.
    module = importlib.import_module(entry.module)
    doc = re.sub(r":(func|class|data|obj):`(\w+)`", lambda m: f":{m[1]}:`~{entry.module}.{m[2]}`"
                 if hasattr(module, m[2]) else m[0], doc)
    paragraph = " ".join(doc.strip().split("\n\n", 1)[0].split())  # a sentence may run over several lines
    if paragraph.count("`") % 2:  # cut inside inline markup: keep what comes before it
        paragraph = paragraph[: paragraph.index(":math:")] if ":math:" in paragraph else paragraph.replace("`", "")
    if paragraph.endswith(":") or ": with " in paragraph:  # "torch.optim.NAdam: with mu_t = ...": a formula's setup
        paragraph = paragraph.split(": ", 1)[0]
    # The first sentence, and of a long one (a state's fields) its first clause: the list is read at a glance.
    first = re.split(r"(?<!\bal)(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Z`(:])", paragraph, maxsplit=1)[0]
    clause = re.split(r"[;:] ", first, maxsplit=1)[0]
    balanced = clause.count("`") % 2 == 0 and clause.count("(") == clause.count(")")
    if len(first) > 250 and clause != first and len(clause) >= 40 and balanced:
        return clause + " ..."
    return first.rstrip(" :,.") + ("." if paragraph.rstrip().endswith(".") or first != paragraph else "")


def write(directory: pathlib.Path) -> list[pathlib.Path]:
    """Writes one page per family, ``toctrees.inc`` (the site's captioned tables of contents, included by
    docs/index.rst) and ``index.rst`` (every name A-Z with its one-line rule) into ``directory``."""
    missing = unplaced_modules()
    if missing:
        raise RuntimeError(f"modules with public names but no API page: {missing}; add them to FAMILIES in {__file__}")
    directory.mkdir(parents=True, exist_ok=True)
    entries = list(public_entries())
    toctrees, written = [], []
    for section, families in FAMILIES:
        toctrees += [".. toctree::", "   :maxdepth: 1", "   :hidden:", f"   :caption: {section}", ""]
        for family in families:
            if not any(e.module in family.modules for e in entries):
                continue  # a family whose modules are still empty
            path = directory / f"{page_name(family)}.rst"
            _write_if_changed(path, _page(section, family, entries))
            written.append(path)
            toctrees.append(f"   {family.title} <api/{page_name(family)}>")
        toctrees.append("")
    _write_if_changed(directory / "contrib.rst", _contrib_page())
    toctrees += [".. toctree::", "   :maxdepth: 1", "   :hidden:", "   :caption: optax.contrib", "",
                 "   jaxopt_zoo.contrib <api/contrib>", ""]
    _write_if_changed(directory / "toctrees.inc", "\n".join(toctrees) + "\n")
    index = ["Every name A-Z", "==============", "",
             "Names are documented as you call them: ``jaxopt_zoo.adam`` (imported as ``jz.adam``),",
             "``jaxopt_zoo.torch.adam``. Each links to its entry on its family's page.", ""]
    for entry in sorted(entries, key=lambda e: e.name.lower()):
        index.append(f"- :py:obj:`{entry.name.removeprefix('jaxopt_zoo.')} <{entry.name}>` -- {summary(entry)}")
    _write_if_changed(directory / "index.rst", "\n".join(index) + "\n")
    return written


def _contrib_page() -> str:
    """``jaxopt_zoo.contrib``: Optax's contrib names, each linking to its entry in the flat namespace."""
    title = "jaxopt_zoo.contrib: optax.contrib's names"
    lines = [title, "=" * len(title), "", ".. automodule:: jaxopt_zoo.contrib", "   :no-members:", ""]
    lines += [f"- :py:obj:`contrib.{name} <jaxopt_zoo.{name}>`" for name in sorted(jz.contrib.__all__, key=str.lower)]
    return "\n".join(lines) + "\n"


def _write_if_changed(path: pathlib.Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:  # unchanged pages keep Sphinx's incremental build fast
        path.write_text(text)


def torch_arguments_table() -> str:
    """docs/guides/switching_from_pytorch.md's table of every jz.torch function's arguments (tests/test_docs.py
    checks that the guide holds exactly this text, so it follows the signatures)."""
    rows = ["| `torch.optim` | here, with PyTorch's argument names and defaults | added (keyword-only) |",
            "|---|---|---|"]
    for name in jz.torch.__all__:
        parameters = inspect.signature(getattr(jz.torch, name)).parameters.values()
        added = [p.name for p in parameters
                 if p.name.endswith("_dtype") or p.name in ("axis_name", "layer_sharding", "partition_specs")]
        torch_args = [(p.name if p.default is p.empty else f"{p.name}={p.default!r}") for p in parameters
                      if p.name not in added]
        cls = getattr(jz.torch, name).__doc__.split("torch.optim.", 1)[1].split("`", 1)[0].split("(", 1)[0]
        rows.append(f"| `{cls}` | `jz.torch.{name}({', '.join(torch_args)})` | {', '.join(f'`{a}`' for a in added)} |")
    return "\n".join(rows) + "\n"
