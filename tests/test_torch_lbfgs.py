"""jz.torch.lbfgs against tests/reference.torch_lbfgs, a float64 NumPy transcription of torch.optim.LBFGS.

Every run goes through a few jitted programs shared by the tests (the options are traced arguments, so one
program serves many configurations): compiling is most of the cost.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import jaxopt_zoo as jz
from jaxopt_zoo.sharding import gathered
from tests import reference
from tests.conftest import make_params

N = 17  # make_params' size: dense/b (4), dense/w (12), scale (1), in jax.tree.leaves order
CURVATURE = np.linspace(0.1, 10.0, N)


def flat(params, xp=np):
    return xp.concatenate([xp.ravel(leaf) for leaf in jax.tree.leaves(params)])


def unflatten(x, like):
    leaves, treedef = jax.tree.flatten(like)
    sizes = np.cumsum([np.size(leaf) for leaf in leaves])[:-1]
    pieces = [jnp.asarray(v.reshape(np.shape(leaf))) for v, leaf in zip(np.split(x, sizes), leaves)]
    return jax.tree.unflatten(treedef, pieces)


def objective(x, t, w, xp=jnp):
    """w = (quadratic, Rosenbrock, ripple, drift) weights; the drift moves the quadratic's minimum each step."""
    u = x[1:] - x[:-1] ** 2
    curvature, k = xp.asarray(CURVATURE, x.dtype), xp.arange(N, dtype=x.dtype)  # x's dtype also after x64 tests
    quadratic = 0.5 * xp.sum(curvature * x * x) + w[3] * xp.sum(xp.sin(t + k) * x)
    rosenbrock = xp.sum(100.0 * u * u + (1.0 - x[:-1]) ** 2)
    return w[0] * quadratic + w[1] * rosenbrock + w[2] * xp.sum(xp.cos(3.0 * x))


def value_and_grad_np(x, t, w):
    """The objective and its gradient, written out in NumPy for the reference."""
    u = x[1:] - x[:-1] ** 2
    grad_rosenbrock = np.zeros(N)
    grad_rosenbrock[1:] += 200.0 * u
    grad_rosenbrock[:-1] += -400.0 * u * x[:-1] - 2.0 * (1.0 - x[:-1])
    grad_quadratic = CURVATURE * x + w[3] * np.sin(t + np.arange(N))
    grad = w[0] * grad_quadratic + w[1] * grad_rosenbrock - w[2] * 3.0 * np.sin(3.0 * x)
    return float(objective(x, t, w, np)), grad


@functools.partial(jax.jit, static_argnames=("history_size", "line_search_fn"), donate_argnums=(1,))
def _step(params, state, t, w, options, *, history_size, line_search_fn):
    # One torch step(closure) on objective(., t, w); the numeric options are traced, so that one compiled
    # program per (history_size, line_search_fn) serves every configuration.
    tx = jz.torch.lbfgs(**options, history_size=history_size, line_search_fn=line_search_fn)
    value_fn = lambda p: objective(flat(p, jnp), t, w)
    value, grads = jax.value_and_grad(value_fn)(params)
    return tx.update(grads, state, params, value=value, value_fn=value_fn)


def run_ours(config, w, steps, params):
    static = {k: config.get(k, v) for k, v in (("history_size", 100), ("line_search_fn", None))}
    options = {k: jnp.asarray(config.get(k, v), dtype) for k, v, dtype in (
        ("lr", 1.0, jnp.float64), ("max_iter", 20, jnp.int32), ("tolerance_grad", 1e-7, jnp.float64),
        ("tolerance_change", 1e-9, jnp.float64))}
    # max_eval always given (its default is torch's max_iter * 5 // 4), so one program serves all; the default
    # itself is taken inside in the vmap and float32 tests.
    max_eval = config.get("max_eval") or int(options["max_iter"]) * 5 // 4
    options["max_eval"] = jnp.asarray(max_eval, jnp.int32)
    state = jz.torch.lbfgs(**config).init(params)
    iterates = []
    for t in range(1, steps + 1):
        updates, state = _step(params, state, t, jnp.asarray(w, jnp.float64), options, **static)
        params = jz.apply_updates(params, updates)
        iterates.append(flat(params))
    return iterates, state


def run_reference(config, w, steps, x, mask=None):
    ref = reference.torch_lbfgs(**config)
    x = np.asarray(x, np.float64)
    state = ref.init(x)
    iterates = []
    for t in range(1, steps + 1):
        def value_and_grad(z, t=t):
            value, grad = value_and_grad_np(z, t, w)
            return value, grad if mask is None else grad * mask
        delta, state = ref.update(value_and_grad, state, x)
        x = x + delta
        iterates.append(x)
    return iterates, state


# (config, objective weights, steps). Together they take every line of the reference: the fixed step and the
# strong-Wolfe search (bracketing, extrapolation, zoom with its boundary moves and swaps, the bracket-length
# stop, the out-of-evaluations fallback, a cubic without a minimum), skipped curvature pairs, and every
# stopping test, including the early return of a step that starts with max|g| <= tolerance_grad. (A full
# history ring, history_size 3, is in the vmap and float32 tests.) Iterations that run on to rounding level
# amplify 1-ulp differences (torch against the reference grows alike), so the long runs use tolerances that
# stop them first, or few steps. Two compiled programs serve them all, and the defaults and Optax tests.
GRID = [
    (dict(line_search_fn="strong_wolfe", history_size=100, lr=10.0, max_iter=20, max_eval=25), (0, 0, 0.5, 1), 20),
    (dict(line_search_fn="strong_wolfe", history_size=100, lr=1000.0, max_iter=2, max_eval=25), (1, 0, 5, 0), 20),
    (dict(line_search_fn="strong_wolfe", history_size=100, lr=0.01, max_iter=20, max_eval=2, tolerance_change=1e-2),
     (0, 1, 0.5, 1), 20),
    (dict(line_search_fn="strong_wolfe", history_size=100, lr=1.0, max_iter=5, max_eval=2, tolerance_change=1e-4),
     (1, 0.1, 2, 1), 20),
    (dict(line_search_fn="strong_wolfe", history_size=100, lr=10.0, max_iter=20, max_eval=25, tolerance_grad=1e-3),
     (1, 0.1, 2, 0), 20),
    (dict(history_size=100, lr=0.3, max_iter=3, max_eval=3, tolerance_change=1.0), (1, 0.1, 0.5, 0), 20),
    (dict(history_size=100, lr=1.0, max_iter=4, max_eval=2, tolerance_grad=1e-1, tolerance_change=1e-3),
     (1, 0, 0, 0), 20),
    (dict(history_size=100, lr=1.0, max_iter=20, tolerance_grad=1.0, tolerance_change=1.0), (0, 0.1, 0.5, 1), 20),
    (dict(history_size=100, lr=1.0, max_iter=1), (1, 0, 0, 1), 20),
]


def _check(config, w, steps, params):
    ours, state = run_ours(config, w, steps, params)
    expected, ref_state = run_reference(config, w, steps, flat(params))
    for step, (a, e) in enumerate(zip(ours, expected), 1):
        np.testing.assert_allclose(a, e, rtol=1e-9, err_msg=f"step {step}")
    assert (int(state.func_evals), int(state.n_iter)) == (ref_state["func_evals"], ref_state["n_iter"])
    assert int(state.num_old) == len(ref_state["dirs"])
    return ref_state


@pytest.mark.parametrize("config, w, steps", GRID, ids=[f"{i}" for i in range(len(GRID))])
def test_matches_torch_reference(x64, config, w, steps):
    _check(config, w, steps, make_params(jnp.float64))


def test_defaults_are_torchs(x64):
    defaults = {k: p.default for k, p in inspect.signature(jz.torch.lbfgs).parameters.items()}
    assert defaults == dict(lr=1, max_iter=20, max_eval=None, tolerance_grad=1e-7, tolerance_change=1e-9,
                            history_size=100, line_search_fn=None)
    # Two steps (29 iterations): more would run on below rounding level.
    ref_state = _check({}, (1, 0, 0, 1), 2, make_params(jnp.float64, seed=1))
    assert ref_state["n_iter"] > 20


def test_equals_optax_lbfgs_where_the_conventions_meet(x64):
    # One iteration per step, no line search, a fixed objective (every y.s > 0, so torch keeps every pair as
    # Optax does) and a first gradient with |g|_1 <= 1 (both first steps are then lr * g): the same iterates.
    params = jax.tree.map(lambda p: 0.01 * p, make_params(jnp.float64))
    w = (1, 0, 0, 0)
    ours, _ = run_ours(dict(lr=0.5, max_iter=1, history_size=100), w, 20, params)
    theirs = optax.lbfgs(learning_rate=0.5, memory_size=100, linesearch=None)
    step = jax.jit(lambda g, s, p: theirs.update(g, s, p))
    gradient = lambda p, t: unflatten(value_and_grad_np(flat(p), t, w)[1], p)
    state, x = theirs.init(params), params
    for t, a in enumerate(ours, 1):
        updates, state = step(gradient(x, t), state, x)
        x = optax.apply_updates(x, updates)
        # Relative to the largest entry: the two compute the same iterate by different sums, and an entry 100x
        # smaller than the rest carries their rounding (1e-10 of itself, 1e-12 of the largest, seen).
        np.testing.assert_allclose(a, flat(x), rtol=1e-10, atol=1e-10 * float(np.abs(flat(x)).max()))
    # The documented difference: a first step scaled by min(1, 1/|g|_1) here, min(1, 1/|g|_2) in Optax.
    start = make_params(jnp.float64)
    g = value_and_grad_np(flat(start), 1, w)[1]
    assert np.sum(np.abs(g)) > np.linalg.norm(g) > 1
    first, _ = run_ours(dict(lr=0.5, max_iter=1, history_size=100), w, 1, start)
    np.testing.assert_allclose(first[0] - flat(start), -0.5 * g / np.sum(np.abs(g)), rtol=1e-12)
    optax_first, _ = step(gradient(start, 1), theirs.init(start), start)
    np.testing.assert_allclose(flat(optax_first), -0.5 * g / np.linalg.norm(g), rtol=1e-12)


def test_vmap_over_injected_learning_rates(x64):
    # inject_hyperparams (history_size static: it sets the state's shape) and vmap over two starts whose
    # lr differ, through the strong-Wolfe search's nested loops: each member is its own torch run.
    tx = jz.inject_hyperparams(jz.torch.lbfgs, static_args="history_size")(
        lr=1.0, max_iter=3, history_size=3, line_search_fn="strong_wolfe")
    starts = [make_params(jnp.float64, seed) for seed in (0, 1)]
    params = jax.tree.map(lambda *xs: jnp.stack(xs), *starts)
    state = jax.vmap(tx.init)(params)
    state.hyperparams["lr"] = jnp.asarray([1.0, 0.3])
    w = (1, 0, 0.5, 1)

    @jax.jit
    def step(params, state, t):
        def one(p, s):
            value_fn = lambda q: objective(flat(q, jnp), t, jnp.asarray(w, jnp.float64))
            value, grads = jax.value_and_grad(value_fn)(p)
            return tx.update(grads, s, p, value=value, value_fn=value_fn)

        return jax.vmap(one)(params, state)

    ours = []
    for t in range(1, 6):
        updates, state = step(params, state, t)
        params = jz.apply_updates(params, updates)
        ours.append(params)
    for i, (start, lr) in enumerate(zip(starts, (1.0, 0.3))):
        expected, ref_state = run_reference(dict(lr=lr, max_iter=3, history_size=3, line_search_fn="strong_wolfe"),
                                            w, 5, flat(start))
        for a, e in zip(ours, expected):
            np.testing.assert_allclose(flat(jax.tree.map(lambda x: x[i], a)), e, rtol=1e-9)
        assert int(state.inner_state.func_evals[i]) == ref_state["func_evals"]
        assert int(state.inner_state.num_old[i]) == len(ref_state["dirs"]) == 3 < ref_state["n_iter"] - 1  # wrapped


def test_none_gradient_leaf_freezes_its_parameter_in_float32():
    # torch with grad=None for "scale" all along: its gradient entries are 0, so it never moves.
    params = make_params(jnp.float32)
    tx = jz.torch.lbfgs(max_iter=3, history_size=3)
    w = (1, 0, 0.5, 0)
    value_fn = lambda p: objective(flat(p, jnp), 1, jnp.asarray(w, jnp.float32))

    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(value_fn)(params)
        return tx.update({**grads, "scale": None}, state, params, value=value, value_fn=value_fn)

    state = tx.init(params)
    assert state.old_dirs.dtype == state.d.dtype == jnp.float32 and state.old_dirs.shape == (3, N)
    ours, current = [], params
    for _ in range(3):
        updates, state = step(current, state)
        assert updates["scale"] is None
        current = jz.apply_updates(current, updates)
        ours.append(current)
    mask = np.ones(N)
    mask[-1] = 0  # "scale" is the last leaf
    expected, _ = run_reference(dict(max_iter=3, history_size=3), w, 3, flat(params), mask)
    for a, e in zip(ours, expected):
        assert jax.tree.map(lambda x: x.dtype, a) == jax.tree.map(lambda x: x.dtype, params)
        np.testing.assert_array_equal(a["scale"], params["scale"])
        np.testing.assert_allclose(flat(a), e, rtol=2e-5, atol=1e-6)
    assert np.max(np.abs(flat(ours[-1]) - flat(params))) > 0.1


def test_refusals_name_the_problem():
    tx = jz.torch.lbfgs()
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    f = lambda p: jnp.sum(p["w"] ** 2)
    with pytest.raises(ValueError, match="torch.lbfgs needs the objective"):
        tx.update(params, state, params)
    with pytest.raises(ValueError, match="value_fn must return a scalar"):
        tx.update(params, state, params, value_fn=lambda p: p["w"])
    with pytest.raises(jz.base.StateMismatchError):
        tx.update(params, jz.torch.adam().init(params), params, value_fn=f)
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update(params, state, value_fn=f)
    with pytest.raises(ValueError, match="real floating"):
        tx.init({"w": jnp.ones(3, jnp.complex64)})
    injected = jz.inject_hyperparams(jz.torch.lbfgs)(lr=0.5)  # history_size stays static (jz.static_only)
    jax.jit(lambda s, p: injected.update(p, s, p, value_fn=f))(injected.init(params), params)
    with pytest.raises(ValueError, match=r"history_size.*static_args=\('history_size',\)"):
        jax.jit(lambda h: jz.torch.lbfgs(lr=0.5, history_size=h).init(params))(3)
    with pytest.raises(ValueError, match="for a schedule, wrap the optimizer"):
        jz.torch.lbfgs(lr=jz.constant_schedule(1.0))
    for bad in (dict(max_iter=-1), dict(max_iter=2.5), dict(max_eval=0), dict(history_size=0),
                dict(tolerance_grad=float("nan")), dict(line_search_fn="backtracking"), dict(lr=-1.0)):
        with pytest.raises(ValueError, match=f"^torch.lbfgs: {next(iter(bad))}"):
            jz.torch.lbfgs(**bad)


def test_shard_map_needs_whole_arrays():
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    tx = jz.torch.lbfgs()
    f = lambda p: jnp.sum(p**2)
    local = jax.shard_map(lambda g, p: tx.update(g, tx.init(p), p, value_fn=f)[0], mesh=mesh,
                          in_specs=(P("data"), P("data")), out_specs=P("data"))
    x = jax.device_put(jnp.ones(2 * jax.device_count()), jax.sharding.NamedSharding(mesh, P("data")))
    with pytest.raises(ValueError, match="torch.lbfgs: inside shard_map"):
        jax.jit(local)(x, x)


def test_params_split_over_explicit_mesh_axes_step_as_on_one_device():
    # The flat vector concatenated leaves laid out differently (P(None, 'y') raveled, P('y')), which JAX refuses on
    # Explicit axes ("All operands should have the same sharding"): init raised, in nnx.Optimizer too. The vector is
    # gathered now, and each update laid out like its param.
    tx = jz.torch.lbfgs(max_iter=3, history_size=3)
    w = jnp.asarray((1, 0, 0.5, 0), jnp.float32)
    # The objective ravels the params: those split over Explicit axes are gathered first, as a user's would be.
    value_fn = lambda p: objective(flat(jax.tree.map(lambda x: gathered(x)[0], p), jnp), 1, w)  # noqa: E731

    def run(params, steps=3):
        step = jax.jit(lambda p, s: tx.update(jax.grad(value_fn)(p), s, p, value=value_fn(p), value_fn=value_fn))
        state = tx.init(params)
        for _ in range(steps):
            updates, state = step(params, state)
            params = jz.apply_updates(params, updates)
        return params

    mesh = jax.make_mesh((2, 4), ("x", "y"), axis_types=(jax.sharding.AxisType.Explicit,) * 2,
                         devices=jax.devices("cpu")[:8])
    specs = {"dense": {"w": P(None, "y"), "b": P("y")}, "scale": P()}
    with jax.set_mesh(mesh):
        split = run(jax.tree.map(lambda x, s: jax.device_put(x, s), make_params(), specs))
        assert jax.tree.map(lambda x: jax.typeof(x).sharding.spec, split) == specs
    whole = run(make_params())
    for ours, expected in zip(jax.tree.leaves(split), jax.tree.leaves(whole)):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), rtol=1e-5, atol=1e-6)
