"""Every docstring example and every ```python block of README.md and the guides runs; every public name has a
docstring and an API page; the documentation site builds without a warning."""

from __future__ import annotations

import doctest
import enum
import importlib
import inspect
import pathlib
import pkgutil
import re
import warnings

import jax.numpy as jnp
import pytest

import jaxopt_zoo as jz

MODULES = [
    "jaxopt_zoo",
    "jaxopt_zoo.base",
    "jaxopt_zoo.combine",
    "jaxopt_zoo.tree",
    "jaxopt_zoo.numerics",
    "jaxopt_zoo.linalg",
    "jaxopt_zoo.validation",
    "jaxopt_zoo.optimizers.classic",
    "jaxopt_zoo.schedules",
    "jaxopt_zoo.quantization",
    "jaxopt_zoo.rounding",
    "jaxopt_zoo.storage",
    "jaxopt_zoo.sharding",
    "jaxopt_zoo.transforms",
    "jaxopt_zoo.wrappers",
    "jaxopt_zoo.conditional",
    "jaxopt_zoo.monitoring",
    "jaxopt_zoo.transforms.adaptive",
    "jaxopt_zoo.transforms.clipping",
    "jaxopt_zoo.transforms.momentum",
    "jaxopt_zoo.transforms.scaling",
    "jaxopt_zoo.transforms.trust_ratio",
    "jaxopt_zoo.transforms.weight_decay",
    "jaxopt_zoo.torch",
    "jaxopt_zoo.transforms.rprop",
    "jaxopt_zoo.transforms.averaging",
    "jaxopt_zoo.transforms.adam_variants",
    "jaxopt_zoo.transforms.lbfgs",
    "jaxopt_zoo.transforms.factored",
    "jaxopt_zoo.transforms.sm3",
    "jaxopt_zoo.optimizers.factored",
    "jaxopt_zoo.transforms.orthogonal",
    "jaxopt_zoo.optimizers.orthogonal",
    "jaxopt_zoo.transforms.sign",
    "jaxopt_zoo.optimizers.sign",
    "jaxopt_zoo.transforms.adam_relatives",
    "jaxopt_zoo.optimizers.adam_relatives",
    "jaxopt_zoo.transforms.layerwise",
    "jaxopt_zoo.optimizers.layerwise",
    "jaxopt_zoo.transforms.noise",
    "jaxopt_zoo.optimizers.noise",
    "jaxopt_zoo.transforms.schedule_free",
    "jaxopt_zoo.optimizers.schedule_free",
    "jaxopt_zoo.transforms.d_adaptation",
    "jaxopt_zoo.optimizers.d_adaptation",
    "jaxopt_zoo.transforms.optimistic",
    "jaxopt_zoo.optimizers.optimistic",
    "jaxopt_zoo.transforms.polyak",
    "jaxopt_zoo.optimizers.polyak",
    "jaxopt_zoo.transforms.parameter_free",
    "jaxopt_zoo.optimizers.parameter_free",
    "jaxopt_zoo.transforms.linesearch",
    "jaxopt_zoo.optimizers.linesearch",
    "jaxopt_zoo.optimizers.rprop",
    "jaxopt_zoo.transforms.constrain",
    "jaxopt_zoo.microbatching",
    "jaxopt_zoo.transforms.sam",
    "jaxopt_zoo.transforms.plateau",
    "jaxopt_zoo.transforms.privacy",
    "jaxopt_zoo.optimizers.privacy",
    "jaxopt_zoo.transforms.ademamix",
    "jaxopt_zoo.optimizers.ademamix",
    "jaxopt_zoo.transforms.dual_averaging",
    "jaxopt_zoo.optimizers.dual_averaging",
    "jaxopt_zoo.transforms.galore",
    "jaxopt_zoo.optimizers.galore",
    "jaxopt_zoo.transforms.momo",
    "jaxopt_zoo.optimizers.momo",
    "jaxopt_zoo.transforms.sophia",
    "jaxopt_zoo.optimizers.sophia",
    "jaxopt_zoo.transforms.kronecker",
    "jaxopt_zoo.transforms.grafting",
    "jaxopt_zoo.transforms.gram_newton_schulz",
    "jaxopt_zoo.transforms.cautious",
    "jaxopt_zoo.transforms.mars",
    "jaxopt_zoo.optimizers.cautious",
    "jaxopt_zoo.transforms.soap",
    "jaxopt_zoo.optimizers.soap",
    "jaxopt_zoo.transforms.psgd",
    "jaxopt_zoo.optimizers.psgd",
    "jaxopt_zoo.transforms.shampoo",
    "jaxopt_zoo.optimizers.shampoo",
]
WITHOUT_EXAMPLES = {"jaxopt_zoo.tree", "jaxopt_zoo.validation"}  # internal helpers, tested in test_tree.py


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0
    assert result.attempted > 0 or name in WITHOUT_EXAMPLES


def test_no_docstring_holds_a_control_character():
    # Docstrings are plain (not raw) strings: a LaTeX \\beta written with one backslash is a backspace and "eta"
    # (MathJax showed "Math input error" on two pages), \\varepsilon a vertical tab, \\times a tab and "imes".
    control = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
    found = set()
    for info in pkgutil.walk_packages(jz.__path__, "jaxopt_zoo."):
        module = importlib.import_module(info.name)
        ours = [module] + [x for x in vars(module).values() if getattr(x, "__module__", None) == info.name]
        for obj in ours:
            for member in [obj, *(vars(obj).values() if inspect.isclass(obj) else ())]:
                doc = getattr(member, "__doc__", None)
                if isinstance(doc, str) and control.search(doc):
                    found.add(f"{info.name}.{getattr(member, '__qualname__', '')}")
    assert not found, sorted(found)


TYPE_ALIASES = {"MaskOrFn", "OptState", "Params", "ScalarOrSchedule", "Schedule", "Updates"}


@pytest.mark.parametrize("name", sorted(set(jz.__all__) - TYPE_ALIASES))
def test_public_names_are_documented(name):
    obj = getattr(jz, name)
    assert inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismodule(obj)
    assert obj.__doc__ and obj.__doc__.strip(), f"jaxopt_zoo.{name} has no docstring of its own"


def test_every_public_name_of_the_namespace_is_listed_in_all():
    # __all__ decides the API reference's entries: jz.init_only was importable but had no entry.
    listed = set(jz.__all__)
    assert [n for n in dir(jz) if not n.startswith("_") and not inspect.ismodule(getattr(jz, n)) and n not in listed] == []


@pytest.mark.parametrize("name", jz.torch.__all__)
def test_torch_functions_are_documented(name):
    assert getattr(jz.torch, name).__doc__.strip()


# The optimizers' arguments that take a rate or a bound: enough to build every factory that needs no other argument.
RATE_ARGUMENTS = {"learning_rate", "lr", "max_delta", "max_norm", "threshold"}


def _built_with_rates(namespace):
    """``(name, function, transformation)`` for each factory of ``namespace`` whose required arguments are rates."""
    for name in namespace.__all__:
        function = getattr(namespace, name)
        if not inspect.isfunction(function) or "GradientTransformation" not in str(inspect.signature(function)):
            continue
        required = [p.name for p in inspect.signature(function).parameters.values()
                    if p.default is inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD]
        if set(required) <= RATE_ARGUMENTS:
            with warnings.catch_warnings():  # a deprecated alias, a default seed: said to users, not to this test
                warnings.simplefilter("ignore")
                tx = function(*[0.1] * len(required))
            yield name, function, tx


def _refuses_complex(tx):
    try:
        tx.init({"w": jnp.ones((3, 4), jnp.complex64)})  # a matrix, which Muon-like rules take
    except ValueError as error:
        return "complex" in str(error)
    return False


@pytest.mark.parametrize("namespace", [jz, jz.torch], ids=["jz", "jz.torch"])
def test_an_optimizer_that_refuses_complex_params_says_so_in_its_docstring(namespace):
    # The recipes jz.muon, jz.adopt, jz.madgrad, jz.psgd_kron, jz.shampoo and jz.soap said it only in their
    # transformations' docstrings.
    built = list(_built_with_rates(namespace))
    assert len(built) > 10
    silent = [name for name, function, tx in built
              if _refuses_complex(tx) and "complex" not in function.__doc__.lower()]
    assert silent == []


def test_the_torch_module_names_the_recipes_that_refuse_complex_params():
    # Its docstring said every recipe updates complex params as real pairs.
    paragraph = next(p for p in jz.torch.__doc__.split("\n\n") if "Complex parameters" in p)
    refusing = [name for name, _, tx in _built_with_rates(jz.torch) if _refuses_complex(tx)]
    assert sorted(refusing) == ["adafactor", "lbfgs", "muon", "sparse_adam"]
    assert all(f"``{name}``" in paragraph for name in refusing)


@pytest.mark.parametrize("name", ["adadelta", "momo_adam", "simplified_ademamix"])
def test_recipes_name_their_complex_squares_deviation_from_optax(name):
    # Each squares a complex gradient as |g|^2 where Optax takes the complex square; jz.adadelta did not say so.
    assert re.search(r"complex.*\|g\|\^2", " ".join(getattr(jz, name).__doc__.split()))


# README.md's and the guides' ```python blocks run as written (issue 15). README's blocks after the Quick start
# are fragments of a training loop: the names they take from the surrounding prose (a model, its gradients) come
# from CONTEXT below, keyed by a line of the block, and each runs in a namespace of its own after
# `import jax, jax.numpy as jnp; import jaxopt_zoo as jz`. A guide's blocks run in order in one namespace, as a
# reader would paste them, with CONTEXT for what its prose assumes (sharded params). A block that needs a name
# nobody gives fails with a NameError: give it CONTEXT here, or make it self-contained. Nothing is skipped.
# A block's "/tmp/run" becomes a temporary folder; the sharded blocks run on conftest.py's 8 simulated devices.
ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
GUIDES = sorted((ROOT / "docs" / "guides").glob("*.md"))


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


README_BLOCKS = [
    (heading, code)
    for section in re.split(r"^## ", README.read_text(), flags=re.M)[1:]
    for heading in [section.splitlines()[0]]
    for code in python_blocks(section)
]
FLAX_CONTEXT = """
from flax import nnx
model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
grads = nnx.grad(lambda m: jnp.mean(m(jnp.ones((4, 3))) ** 2))(model)
"""
CONTEXT = {
    "optimizer = nnx.Optimizer(model, jz.adamw(1e-3), wrt=nnx.Param)": FLAX_CONTEXT,
    "params = jax.device_put(params, shardings)": """
from jax.sharding import NamedSharding, PartitionSpec as P
assert jax.device_count() >= 8, "conftest.py sets up 8 simulated CPU devices"
mesh = jax.make_mesh((4, 2), ("data", "model"))
params = {"w": jnp.ones((8, 4)), "b": jnp.zeros(4)}
shardings = {"w": NamedSharding(mesh, P("data", "model")), "b": NamedSharding(mesh, P("model"))}
""",
}


def run_block(code: str, namespace: dict, where: str, tmp_path: pathlib.Path) -> None:
    code = code.replace('"/tmp/run"', repr(str(tmp_path / "run")))
    for line, context in CONTEXT.items():
        if line in code:
            exec(context, namespace)
    exec(compile(code, where, "exec"), namespace)


def fresh_namespace() -> dict:
    namespace: dict = {}
    exec("import jax, jax.numpy as jnp\nimport jaxopt_zoo as jz\n", namespace)
    return namespace


def test_readme_has_the_blocks_this_file_knows():
    headings = [heading for heading, _ in README_BLOCKS]
    assert headings[0] == "Quick start" and "In a Flax loop" in headings
    guides = [code for guide in GUIDES for code in python_blocks(guide.read_text())]
    for line in CONTEXT:
        assert any(line in code for _, code in README_BLOCKS) or any(line in code for code in guides), (
            f"no README or guide block has {line!r} any more: update CONTEXT")
    assert any("manager.restore(" in code for code in guides) and any("init_sharded" in code for code in guides)


@pytest.mark.parametrize("index", range(len(README_BLOCKS)), ids=[f"{i}-{h}" for i, (h, _) in enumerate(README_BLOCKS)])
def test_readme_python_block_runs(index, tmp_path, capsys):
    heading, code = README_BLOCKS[index]
    namespace = fresh_namespace()
    run_block(code, namespace, f"README.md, {heading}", tmp_path)
    if heading == "Quick start":  # prints a falling loss
        losses = [float(line.split("loss")[1]) for line in capsys.readouterr().out.splitlines() if "loss" in line]
        assert len(losses) >= 3 and losses[-1] < losses[0] / 10, losses


@pytest.mark.parametrize("guide", GUIDES, ids=lambda path: path.stem)
def test_guide_python_blocks_run_in_order(guide, tmp_path, capsys):
    namespace = fresh_namespace()
    blocks = python_blocks(guide.read_text())
    for i, code in enumerate(blocks):
        run_block(code, namespace, f"{guide.name}, block {i}", tmp_path)
    if guide.stem == "getting_started":  # the NNX loop prints a falling loss; the Orbax round trip restores
        losses = [float(line.split("loss")[1]) for line in capsys.readouterr().out.splitlines() if "loss" in line]
        assert len(losses) >= 3 and losses[-1] < losses[0] / 2, losses
        assert namespace["manager"].latest_step() == namespace["step"]
    if guide.stem == "sharded_training":  # the state really is laid out on the 8 devices
        assert len(namespace["params"]["w"].sharding.device_set) == 8
    if guide.stem == "performance":  # "Compile once": setting a hyperparameter does not compile the step again
        assert namespace["update"]._cache_size() == 1


# The documentation site (docs/, issue 20): every public name has an entry, and the build is warning-free.
def load_api_pages():
    import importlib.util

    spec = importlib.util.spec_from_file_location("api_pages", ROOT / "docs" / "api_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _public_callables() -> dict[str, object]:
    """Every public function users call, and every class they build (not the states, NamedTuples whose fields are
    described in their docstrings, nor enumerations): the flat namespace's and ``jz.torch``'s (contrib's are the same
    objects)."""
    named = {f"jz.{n}": getattr(jz, n) for n in jz.__all__} | {f"jz.torch.{n}": getattr(jz.torch, n)
                                                                for n in jz.torch.__all__}
    return {n: f for n, f in named.items() if inspect.isfunction(f) or (
        inspect.isclass(f) and not hasattr(f, "_fields") and not issubclass(f, enum.Enum))}


def test_every_argument_of_a_public_function_is_described_in_its_args_section():
    from jaxopt_zoo.docstrings import args_entries

    undescribed, stale = {}, {}
    for name, fn in _public_callables().items():
        described = args_entries(fn)  # a class's: in its own docstring, where the API reference shows them
        arguments = [p.name for p in inspect.signature(fn).parameters.values()
                     if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if missing := [a for a in arguments if not described.get(a)]:
            undescribed[name] = missing
        if unknown := sorted(set(described) - set(inspect.signature(fn).parameters)):
            stale[name] = unknown
    assert not undescribed, (f"{sum(map(len, undescribed.values()))} arguments of {len(undescribed)} callables have no "
                             f"entry in their Args: section (write one, or take it from a source with "
                             f"jaxopt_zoo.docstrings.document_args): {undescribed}")
    assert not stale, f"Args entries naming no argument of their callable: {stale}"


def test_the_package_imports_without_docstrings():
    """Under python -OO (docstrings stripped) the Args sections that decorators assemble from docstrings are empty,
    and nothing may depend on them (an entry looked up by name raised KeyError at import)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-OO", "-c", "import jaxopt_zoo"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_every_public_name_has_an_api_entry():
    api_pages = load_api_pages()
    assert api_pages.unplaced_modules() == [], "add these modules to FAMILIES in docs/api_pages.py"
    documented = {entry.name for entry in api_pages.public_entries()}
    expected = {f"jaxopt_zoo.{n}" for n in jz.__all__ if not inspect.ismodule(getattr(jz, n))}
    expected |= {f"jaxopt_zoo.torch.{n}" for n in jz.torch.__all__}
    assert documented == expected


def test_the_pytorch_guide_lists_every_torch_function_with_its_current_arguments():
    # The table is generated from the signatures; rewrite it with docs/api_pages.py's torch_arguments_table().
    guide = (ROOT / "docs" / "guides" / "switching_from_pytorch.md").read_text()
    assert load_api_pages().torch_arguments_table() in guide


def test_conf_py_defines_no_name_that_would_shadow_the_gallery_option():
    # Sphinx reads conf.py's top-level names as config values: a module imported as "gallery" replaced the option's
    # default, so the README's build command (without -D gallery=...) failed while the -D builds passed.
    import runpy

    namespace = runpy.run_path(str(ROOT / "docs" / "conf.py"))
    assert "gallery" not in namespace


def _own_signatures() -> dict[object, inspect.Signature | None]:
    """Every function and class of the package (and the functions in its classes), with the ``__signature__`` it
    holds itself (None: none)."""
    found: dict[object, inspect.Signature | None] = {}
    for info in pkgutil.walk_packages(jz.__path__, "jaxopt_zoo."):
        for obj in vars(importlib.import_module(info.name)).values():
            members = [obj, *vars(obj).values()] if inspect.isclass(obj) else [obj]
            for member in members:
                while inspect.isfunction(member) or inspect.isclass(member):
                    if member in found or not getattr(member, "__module__", "").startswith("jaxopt_zoo"):
                        break
                    found[member] = vars(member).get("__signature__")
                    member = getattr(member, "__wrapped__", None)
    return found


def test_docs_build_without_warnings(tmp_path):
    import sys

    from sphinx.cmd.build import build_main

    # -W: a warning (a broken cross-reference, a malformed docstring, a page left out of every toctree) fails.
    # The gallery runs no example here (tests/test_examples.py runs them): -D gallery=off. In this process, as
    # `python -m sphinx` would build: a new one spent ~3 of its ~15 s importing JAX, Flax and the package again.
    warnings_file, path, signatures = tmp_path / "warnings.txt", list(sys.path), _own_signatures()
    try:
        with warnings.catch_warnings():  # Sphinx's and MyST's deprecations of each other, hidden as in a new process
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            status = build_main(["-W", "--keep-going", "-q", "-b", "html", "-D", "gallery=off",
                                 "-w", str(warnings_file), str(ROOT / "docs"), str(tmp_path / "html")])
    finally:
        sys.path[:] = path  # conf.py puts docs/ first
        # autodoc_preserve_defaults gives each documented callable a __signature__ whose defaults are their source
        # text ("0.9", a DefaultValue): the package's own signature reads (validation, inject_hyperparams) then
        # take them for the values, as 4 later tests in this process did.
        for owner, signature in signatures.items():
            if signature is not None:
                owner.__signature__ = signature
            elif "__signature__" in vars(owner):
                delattr(owner, "__signature__")
    assert _own_signatures() == signatures and type(inspect.signature(jz.adamw).parameters["b1"].default) is float
    assert status == 0, warnings_file.read_text()[-4000:]
    page = (tmp_path / "html" / "api" / "transforms.adaptive.html").read_text()
    assert 'id="jaxopt_zoo.scale_by_adam"' in page and "_static/mathjax/tex-chtml.js" in page
    # A module's text names its functions bare (apply_every): linked to their entries under the names users write
    # (docs/conf.py; 153 such references rendered as unlinked code), and the type aliases have their own text.
    conditional = (tmp_path / "html" / "api" / "conditional.html").read_text()
    references = re.findall(r'(<a class="reference internal"[^>]*>)?<code class="xref py', conditional)
    assert references and all(references), f"{references.count('')} of {len(references)} references unlinked"
    base = (tmp_path / "html" / "api" / "base.html").read_text()
    assert "the model’s parameters" in base and "Special type indicating" not in base
    schedules = re.sub(r"<[^>]+>", "", (tmp_path / "html" / "api" / "schedules.html").read_text())
    assert "jax.typing.ArrayLike" in schedules and "bool | number | bool" not in schedules  # types as written
    pages = [path.name for path in (tmp_path / "html" / "api").glob("*.html")
             if "TypeAliasForwardRef" in path.read_text()]
    assert pages == [], pages  # an alias inside a union (ArrayLike | None) was written as its repr
    assert (tmp_path / "html" / "_static" / "mathjax" / "tex-chtml.js").is_file()  # the math renders offline


def test_readme_commands_use_the_virtualenv_they_set_up():
    # A bare `python examples/...` copied from the README outside the venv fails with "No module named 'jax'".
    text = README.read_text()
    commands = re.findall(r"`([^`\n]*python[^`\n]*)`", text) + re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)
    assert any("examples/" in c for c in commands) and any("benchmarks/" in c for c in commands)
    for command in commands:
        for line in command.splitlines():
            bare = re.findall(r"(?:^|[\s&;])(python3?)\s+(?!-m venv)", line)
            assert not bare, f"README runs {line.strip()!r} with a bare python: use .venv/bin/python"


def test_ci_runs_exactly_the_readme_test_command():
    """CI (.ci/run) and a newcomer (README) run the same command; a change to one must reach the other."""
    root = ROOT
    readme = (root / "README.md").read_text()
    commands = [line for line in readme.splitlines() if "pytest" in line and line.startswith("python3 -m venv")]
    assert len(commands) == 1, commands
    ci = [line for line in (root / ".ci" / "run").read_text().splitlines() if line.startswith("python3 -m venv")]
    assert ci == commands
