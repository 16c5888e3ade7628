"""Shared fixtures: small parameter trees, a gradient field, and runners for both sides."""

from __future__ import annotations

import os
import pathlib
import platform
from collections.abc import Callable

# Eight simulated CPU devices for the sharding tests; XLA reads XLA_FLAGS once, when the first array is made.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
# Most of the suite's time is XLA compiling thousands of small programs that the tests then run for
# microseconds. Four flags make compiling cheaper without changing any program's HLO (fusion, buffer
# assignment, donation are as users get them). Each is added only when XLA_FLAGS does not name it: run the
# suite as users compile with XLA_FLAGS="--xla_backend_optimization_level=3 --xla_cpu_use_fusion_emitters=true
# --xla_cpu_parallel_codegen_split_count=32" (XLA's defaults).
# - Optimisation level 0: LLVM does not optimise the machine code (a fifth of the suite's time).
# - No fusion emitters: XLA's CPU backend writes each fused kernel as LLVM IR directly, not through its MLIR
#   fusion emitters (about 4 ms per kernel instead of 11 here): small programs compile 2.5x faster, the suite
#   takes two thirds of the time (10:42 instead of 16:48 on 2 cores, from an empty .jax_cache/).
# - AVX at most (x86-64 only): the direct emitters let LLVM fuse a multiply and an add wherever the CPU has FMA
#   instructions, so one formula rounds differently in two differently fused programs (29 of the tests
#   comparing ours with Optax bit for bit then differed by an ulp). AVX has no FMA: every product is rounded
#   before its sum, as in NumPy. With the default emitters at level 0 every bit-for-bit test passes on FMA
#   hardware too. At level 3 (as users compile) LLVM contracts there as well, and 7 of them differed by a few ulps
#   on an AVX-512 machine (Muon's float32 and sharded runs, Shampoo donated against plain jit, SOAP's NaN skip):
#   those compare with assert_programs_agree, bitwise here, within 64 ulps where XLA may contract.
# - One LLVM module per program: XLA splits each program's LLVM IR into up to 32 modules to compile them on
#   several threads, which costs more than it saves for small programs on 2 busy cores (three test files under
#   `-n 2` from an empty .jax_cache/: 78 s instead of 99). Only the compiling is split, not the kernels.
# XLA's defaults, for the tests that must compile as users do (in a process of their own).
USER_XLA_FLAGS = ("--xla_backend_optimization_level=3", "--xla_cpu_use_fusion_emitters=true",
                  "--xla_cpu_parallel_codegen_split_count=32")
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"


# XLA aborts at a flag it does not know: a jaxlib without one of these is left with its default. One process asks
# this jaxlib's XLA whether it takes them all (each alone only if not), while this one imports JAX: XLA reads XLA_FLAGS
# when the first array is made, not at import. The answer is kept in .jax_cache/ per jaxlib version.
def _xla_accepts(flags: str) -> Callable[[], bool]:
    """Starts asking a new process whether XLA accepts `flags`; returns a function that waits for the answer."""
    import importlib.metadata
    import subprocess
    import sys

    answer = pathlib.Path(__file__).resolve().parent.parent / ".jax_cache" / (
        f"xla-flags-probe-{importlib.metadata.version('jaxlib')}-{flags.strip().replace(' ', '').replace('-', '')}")
    if answer.exists():
        return lambda: answer.read_text() == "yes"
    probe = "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    process = subprocess.Popen([sys.executable, "-c", probe], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)

    def wait() -> bool:
        ok = process.wait() == 0
        try:
            answer.parent.mkdir(exist_ok=True)
            answer.write_text("yes" if ok else "no")
        except OSError:  # a read-only checkout: probe again next time
            pass
        return ok

    return wait


_DIRECT_EMITTERS = " --xla_cpu_use_fusion_emitters=false --xla_cpu_max_isa=AVX"
_ONE_MODULE = " --xla_cpu_parallel_codegen_split_count=1"
_WANTED = [flags for flags, wanted in (
    (_DIRECT_EMITTERS, "xla_cpu_use_fusion_emitters" not in os.environ["XLA_FLAGS"]
     and platform.machine().lower() in ("x86_64", "amd64")),
    (_ONE_MODULE, "xla_cpu_parallel_codegen_split_count" not in os.environ["XLA_FLAGS"]),
) if wanted]
_all_wanted_accepted = _xla_accepts("".join(_WANTED)) if _WANTED else lambda: True

import atexit
import functools
import gc
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

os.environ["XLA_FLAGS"] += "".join(_WANTED) if _all_wanted_accepted() else "".join(
    flags for flags in _WANTED if _xla_accepts(flags)())

# Python's collector runs a full collection whenever enough objects survived its younger ones, and each walks every
# live object: in a worker holding JAX's caches of thousands of programs, ~0.3 s. Python's default thresholds
# (700, 10, 10) spent about 10 of every 180 test-seconds there; these, under 4.
gc.set_threshold(5000, 20, 20)

# A test worker that has sent its last report leaves without tearing down, ~5 s at the end of every run while the
# controller waits for both workers: pytest's last garbage collection (it looks for exceptions raised in __del__)
# walks the worker's whole heap, ~2 s, and at exit JAX's handler destroys the thousands of programs the worker
# compiled and Python then frees everything else, ~3 s. Frozen objects are left out of a collection. Exit handlers
# registered after the one below (weakref finalizers, which remove temporary folders) still run first; those
# registered before it (JAX's, and a plugin's loaded before this file) do not run in a worker. A worker whose session
# did not reach its end (a crash) exits as usual; an interrupted one reaches it, and the run still reports the
# interruption.
_worker_session_finished = False


@pytest.hookimpl(trylast=True)  # after the session's fixtures are torn down
def pytest_sessionfinish(session):
    global _worker_session_finished
    if "PYTEST_XDIST_WORKER" in os.environ:
        gc.freeze()
        _worker_session_finished = True


def _leave_without_teardown():
    if _worker_session_finished:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


atexit.register(_leave_without_teardown)

# JAX lowers each program in an MLIR context of its own, and making one registers and loads every dialect it
# uses (~3.7 ms, llvm-project PR 217320). The suite lowers ~10,000 programs: one context for all of them took the
# suite from an empty .jax_cache/ from 4:24 to 3:40 on 2 quiet cores (485 -> 403 CPU-seconds) and a worker's peak
# memory from 4.3 to 1.9 GB. A shared context keeps every type and attribute it has seen (why a long-running
# process should not share one; a test worker can). The programs, their bits and their cache keys are the same: a
# context holds the IR, it does not shape it. Done only where this JAX makes its contexts there.
from jax._src.interpreters import mlir as _jax_mlir  # noqa: E402

if callable(getattr(_jax_mlir, "make_ir_context", None)):
    _jax_mlir.make_ir_context = functools.cache(_jax_mlir.make_ir_context)

# The compiled programs go to disk (.jax_cache/ in the repository, ignored by git) and are read back
# whenever a test compiles a program some test compiled before, in this run (the other worker, a fresh
# closure over the same optimizer) or an earlier one. Three test files on one core: 245 s without it,
# 215 s from an empty cache, 60 s run again. Set here, not in the environment, so the scripts the tests
# start compile afresh. JAX writes an entry in place, unlocked: a worker can read an entry the other is still
# writing (and a run killed while writing one leaves it broken); JAX then warns "Error reading persistent
# compilation cache entry" and compiles that program again, which pyproject.toml's filterwarnings hides. (A size
# limit, jax_compilation_cache_max_size, would lock each read and write, but every write then reads the whole
# directory: quadratic in the suite's ~8,000 entries.) JAX compresses each entry with zstandard where it is installed
# (the test extra installs it), else with zlib: ~340 MB of programs, 9 CPU-seconds with zlib, 1.3 with zstandard.
if jax.config.jax_compilation_cache_dir is None:
    jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # the suite's programs are small and many
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import jaxopt_zoo as jz
from tests import reference

STEPS = 25

# The longest tests, longest first: started first, so that under `-n 2` no worker is left running one of
# them alone at the end. Every other test keeps its place.
SLOW_FIRST = [
    "tests/test_lowbit_accuracy.py::",
    "tests/test_benchmarks.py::test_speed_benchmark",
    "tests/test_docs.py::test_docs_build_without_warnings",
    "tests/test_benchmarks.py::test_kronecker_benchmark",
    "tests/test_benchmarks.py::test_convergence_benchmark",
    "tests/test_examples.py::test_compare_optimizers",
    "tests/test_examples.py::test_checkpoint_resume_in_a_new_process",
    "tests/test_quantization_integration.py::test_jitted_donated_steps_match_eager_steps",
]
# Files whose tests run on one xdist worker: test_lowbit_accuracy.py trains every run in one module-scoped
# fixture, and the others step their cases in shared programs (functools.cache, a module fixture): each worker
# running any of their tests would train or compile them again (shampoo, soap, psgd, adam_contrib, cautious_mars:
# 136 -> 109 test-seconds under `-n 2` from an empty .jax_cache/; muon_sharded 161 -> 114 programs). In the files
# of ONE_WORKER_PER_CASE the tests of one parametrization id run on one worker: those of test_sharding.py share
# each optimizer's compiled steps (52.9 -> 46.5 test-seconds).
ONE_WORKER = ("tests/test_lowbit_accuracy.py", "tests/test_shampoo.py", "tests/test_soap.py", "tests/test_psgd.py",
              "tests/test_adam_contrib.py", "tests/test_cautious_mars.py", "tests/test_muon_sharded.py")
ONE_WORKER_PER_CASE = ("tests/test_sharding.py",)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    def rank(item):
        return next((i for i, prefix in enumerate(SLOW_FIRST) if item.nodeid.startswith(prefix)), len(SLOW_FIRST))

    items.sort(key=rank)  # stable: the order within each rank is the collection's


def pytest_xdist_make_scheduler(config, log):
    """Under `-n` (xdist's default `--dist load`): tests one at a time in the order above, but ONE_WORKER files
    whole and ONE_WORKER_PER_CASE files by parametrization id.

    (`--dist loadgroup` with xdist_group marks would do this, but pytest-xdist 3.8 renames the tests of a
    group through ``item._nodeid``, which pytest 9.2 no longer reads: the groups are split.)
    """
    if config.getvalue("dist") != "load":
        return None  # a --dist given on the command line is kept
    from xdist.scheduler import LoadScopeScheduling

    if not hasattr(LoadScopeScheduling, "_split_scope"):  # a pytest-xdist without it: its default order
        return None

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            if path in ONE_WORKER_PER_CASE and nodeid.endswith("]"):
                return path + nodeid[nodeid.index("["):]
            return path if path in ONE_WORKER else nodeid

    return Scheduling(config, log)


@pytest.fixture
def x64():
    """Run the test body with 64-bit JAX types (float64 references are compared there)."""
    with jax.enable_x64(True):
        yield


class MLP(nnx.Module):
    """5 -> width -> 1 tanh MLP: the NNX model of the tests that train through ``nnx.Optimizer``."""

    def __init__(self, rngs: nnx.Rngs, width: int = 8):
        self.hidden = nnx.Linear(5, width, rngs=rngs)
        self.out = nnx.Linear(width, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.tanh(self.hidden(x)))


def make_params(dtype=jnp.float32, seed: int = 0) -> dict:
    """A small nested tree with a matrix, a vector and a scalar leaf."""
    rng = np.random.default_rng(seed)
    return {
        "dense": {"w": jnp.asarray(rng.normal(size=(3, 4)), dtype), "b": jnp.asarray(rng.normal(size=(4,)), dtype)},
        "scale": jnp.asarray(rng.normal(), dtype),
    }


def grad_fn(params, t, xp=np):
    """Gradient of an ill-conditioned quadratic plus a step-dependent drift, in NumPy or jax.numpy.

    Leaf-wise ``g = c * p + sin(t + k)`` with curvature ``c`` spread over [0.1, 10]
    so momentum and adaptive rules take visibly different paths.
    """
    if xp is jnp and not any(isinstance(x, jax.core.Tracer) for x in (params, t)):
        # Outside a trace: one compiled program per param shape and dtype, not seven eager ones (the suite
        # would otherwise compile ~550 of them). Python ints stay weakly typed arguments, as eagerly.
        return _grad_fn_jitted(jnp.asarray(params), t)
    n = xp.size(params)
    curvature = xp.reshape(xp.linspace(0.1, 10.0, n), xp.shape(params)) if n > 1 else 3.0
    drift = xp.reshape(xp.sin(t + xp.arange(n)), xp.shape(params)) if n > 1 else xp.sin(t)
    return curvature * params + drift


_grad_fn_jitted = jax.jit(lambda params, t: grad_fn(params, t, jnp))


def run_ours(tx, params, steps: int = STEPS, jit: bool = True):
    """Iterates of ``tx`` on :func:`grad_fn`, as a list of param trees, and the last state.

    ``jit=False`` steps eagerly: for comparisons within a tolerance, cheaper than compiling each case
    (the eager operations are compiled once for the whole suite). Bit-for-bit comparisons with Optax
    need ``jit=True``: XLA rewrites both sides' arithmetic the same way, eager operations do not.
    """
    if jit:
        return run_together([tx], params, steps)[0]
    state = tx.init(params)
    iterates = []
    for t in range(1, steps + 1):
        grads = jax.tree.map(lambda p: grad_fn(p, t, jnp).astype(p.dtype), params)
        updates, state = tx.update(grads, state, params)
        params = jz.apply_updates(params, updates)
        iterates.append(params)
    return iterates, state


def run_together(txs, params, steps: int = STEPS):
    """:func:`run_ours` of each transformation (``[(iterates, state), ...]``), all stepped by one jitted program.

    Most of the suite's time is XLA compiling small programs: ours and Optax's side by side in one program
    compile in less time than as two (test_transforms' 99 Optax comparisons: 28.7 -> 12.6 test-seconds with the
    jitted :func:`grad_fn`). Each side sees only its own params, state and gradients.
    """

    def step(carry, grads):
        updated = [tx.update(g, state, p) for tx, g, (p, state) in zip(txs, grads, carry)]
        return [(jz.apply_updates(p, u), state) for (p, _), (u, state) in zip(carry, updated)]

    step = jax.jit(step)
    carry = [(params, tx.init(params)) for tx in txs]
    iterates = [[] for _ in txs]
    for t in range(1, steps + 1):
        grads = [jax.tree.map(lambda p: grad_fn(p, t, jnp).astype(p.dtype), p) for p, _ in carry]
        carry = step(carry, grads)
        for run, (p, _) in zip(iterates, carry):
            run.append(p)
    return [(run, state) for run, (_, state) in zip(iterates, carry)]


def assert_vmap_matches_separate_runs(tx, batch=None, steps: int = 3, rtol: float = 1e-6, atol: float = 1e-7):
    """``vmap`` over a stack of param sets equals running each set alone: nothing (a norm, a count) mixes the sets.

    The batched step is jitted once; the separate runs step eagerly (their operations are compiled once
    for the whole suite). ``batch`` defaults to three :func:`make_params` trees.
    """
    batch = [make_params(seed=s) for s in range(3)] if batch is None else batch
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batch)
    state, batched_update = jax.vmap(tx.init)(stacked), jax.jit(jax.vmap(tx.update))
    separate = [(p, tx.init(p)) for p in batch]
    for t in range(1, steps + 1):
        grads = jax.tree.map(jax.vmap(lambda q: grad_fn(q, t, jnp)), stacked)
        updates, state = batched_update(grads, state, stacked)
        stacked = jz.apply_updates(stacked, updates)
        for i, (p, s) in enumerate(separate):
            u, s = tx.update(jax.tree.map(lambda x: grad_fn(x, t, jnp), p), s, p)
            separate[i] = (jz.apply_updates(p, u), s)
    for i, (p, _) in enumerate(separate):
        assert_trees_close(jax.tree.map(lambda x: x[i], stacked), p, rtol=rtol, atol=atol)


def run_reference(ref: reference.Reference, params, steps: int = STEPS):
    """Iterates of a NumPy reference, leaf by leaf, as a list of param trees."""
    leaves, treedef = jax.tree.flatten(params)
    per_leaf = [reference.trajectory(ref, np.asarray(leaf, np.float64), grad_fn, steps) for leaf in leaves]
    return [jax.tree.unflatten(treedef, [path[i] for path in per_leaf]) for i in range(steps)]


def assert_trees_close(actual, expected, rtol: float, atol: float = 0.0):
    def close(a, e):
        # In float64, or complex128 where either side is complex (a float64 cast would drop the imaginary parts).
        wide = np.complex128 if np.iscomplexobj(a) or np.iscomplexobj(e) else np.float64
        np.testing.assert_allclose(np.asarray(a, wide), np.asarray(e, wide), rtol=rtol, atol=atol)

    jax.tree.map(close, actual, expected)


def assert_trees_equal(actual, expected):
    """Bitwise equality (same dtypes, same values)."""
    jax.tree.map(lambda a, e: np.testing.assert_array_equal(np.asarray(a), np.asarray(e), strict=True), actual,
                 expected)


# Whether XLA may contract a multiply and an add into one FMA, rounding once (see the flags at the top): not
# with AVX at most, nor at level 0 with the default (fusion) emitters, measured on an AVX-512 machine.
_FLAGS = os.environ["XLA_FLAGS"].lower().split()
MAY_CONTRACT = not ("--xla_cpu_max_isa=avx" in _FLAGS or (
    "--xla_backend_optimization_level=0" in _FLAGS and "--xla_cpu_use_fusion_emitters=false" not in _FLAGS))


def assert_programs_agree(actual, expected):
    """Two differently compiled programs computing the same operations (ours and Optax's, sharded and one
    device, donated and not): bitwise equal where every product is rounded before its sum, as the suite
    compiles. Where XLA may contract a multiply-add (MAY_CONTRACT: level 3 on an FMA CPU, as users compile),
    it decides per program, so the two may differ in the last bits: within 64 ulps of each leaf's largest entry.
    """
    if not MAY_CONTRACT:
        return assert_trees_equal(actual, expected)

    def agree(a, e):
        a, e = np.asarray(a), np.asarray(e)
        assert a.dtype == e.dtype and a.shape == e.shape, (a.dtype, a.shape, e.dtype, e.shape)
        if not jnp.issubdtype(a.dtype, jnp.inexact):
            return np.testing.assert_array_equal(a, e)
        eps = float(jnp.finfo(a.dtype).eps)  # of the compared dtype, before widening
        wide = np.complex128 if np.iscomplexobj(a) else np.float64
        a, e = a.astype(wide), e.astype(wide)
        np.testing.assert_allclose(a, e, rtol=0, atol=64 * eps * np.max(np.abs(e[np.isfinite(e)]), initial=0.0))

    jax.tree.map(agree, actual, expected)


# --- shard_map against one device: the whole-tree reductions that take axis_name -------------------------
SHARD_AXES = ("data", "model")
SHARD_SPECS = {"w": jax.sharding.PartitionSpec("data", "model"), "b": jax.sharding.PartitionSpec("model")}


def sharded_params() -> dict:
    """A matrix split over both mesh axes and a vector split over "model" (as arrays on one device)."""
    rng = np.random.default_rng(0)
    return {"w": jnp.asarray(rng.normal(size=(8, 16)), jnp.float32), "b": jnp.asarray(rng.normal(size=16), jnp.float32)}


def shard_map_steps(tx, steps: int = 2, value_fn=None):
    """``steps`` jitted ``shard_map`` steps of ``tx`` on :func:`sharded_params` over a 2 x 4 mesh, gradients from
    :func:`grad_fn`; with ``value_fn``, ``update`` also gets ``value=value_fn(params)`` (replicated)."""
    mesh = jax.make_mesh((2, 4), SHARD_AXES, devices=jax.devices("cpu")[:8])
    params = {k: jax.device_put(v, jax.sharding.NamedSharding(mesh, SHARD_SPECS[k]))
              for k, v in sharded_params().items()}
    state = jz.init_sharded(tx, params)
    state_specs = jax.tree.map(lambda s: s.spec, jz.state_shardings(tx, params))

    def step(params, state, grads, value):
        updates, state = tx.update(grads, state, params, **({} if value_fn is None else {"value": value}))
        return jz.apply_updates(params, updates), state

    in_specs = (SHARD_SPECS, state_specs, SHARD_SPECS, jax.sharding.PartitionSpec())
    local = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=in_specs, out_specs=(SHARD_SPECS, state_specs)))
    for t in range(1, steps + 1):
        grads = {k: grad_fn(p, t, jnp) for k, p in params.items()}
        params, state = local(params, state, grads, jnp.zeros(()) if value_fn is None else value_fn(params))
    return params
