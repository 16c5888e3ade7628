"""SOAP against PyTorch: a 20-step float64 trajectory of ours, of the official algorithm in torch, and of heavyball.

Run by hand, in two steps (torch is not a dependency of this project)::

    .venv/bin/python benchmarks/heavyball_soap_check.py jax                  # ours: writes /tmp/soap_trajectory.npz
    /tmp/torchvenv/bin/python benchmarks/heavyball_soap_check.py torch       # reads it, runs torch, prints

heavyball 3.2.1's ``SOAP`` cannot be configured to run the official algorithm (github.com/nikhilvyas/SOAP): it
seeds the factors with :math:`G G^\\top` (the official code with :math:`(1 - \\beta_s) G G^\\top`), debiases its betas
and :math:`\\beta_s` every step, adds eps after the bias correction, lifts the null space of a factor before QR and
keeps the first dimension of every leaf unrotated. So the torch side runs two things: the official algorithm,
written here in torch float64 (torch's eigh and QR, the official code's order of operations: ``exp_avg`` rotated
back and forth every step), which ours must match to rounding; and heavyball's ``SOAP`` with the closest
settings, whose difference from ours the script reports.

Both sides take the same gradient field as tests/conftest.py (``c * p + sin(t + k)``, curvature ``c`` spread over
[0.1, 10]) on leaves whose first factors are never rank deficient in more than one dimension (see
tests/test_soap.py: a wider null space makes the first eigenbasis, hence the trajectory, depend on rounding).
"""

from __future__ import annotations

import argparse

import numpy as np

PATH = "/tmp/soap_trajectory.npz"
SHAPES = {"w": (6, 5), "t": (2, 3, 4), "b": (5,)}
STEPS, LR, B1, B2, EPS, FREQUENCY = 20, 0.01, 0.95, 0.95, 1e-8, 3


def initial_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: rng.normal(size=shape) for name, shape in SHAPES.items()}


def field(p, t, xp):
    """conftest.grad_fn in NumPy or torch: ``c * p + sin(t + k)`` leaf-wise."""
    n = p.numel() if hasattr(p, "numel") else p.size
    if xp is np:
        return np.linspace(0.1, 10.0, n).reshape(p.shape) * p + np.sin(t + np.arange(n)).reshape(p.shape)
    c = xp.linspace(0.1, 10.0, n, dtype=p.dtype).reshape(p.shape)
    return c * p + xp.sin(t + xp.arange(n, dtype=p.dtype)).reshape(p.shape)


def run_jax() -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import jaxopt_zoo as jz

    tx = jz.soap(LR, B1, B2, EPS, weight_decay=0.0, precondition_frequency=FREQUENCY)
    params = {k: jnp.asarray(v) for k, v in initial_params().items()}
    state = tx.init(params)

    @jax.jit
    def step(params, state, t):
        grads = {k: field(p, t, jnp) for k, p in params.items()}
        updates, state = tx.update(grads, state, params)
        return jz.apply_updates(params, updates), state

    trajectory = {k: [] for k in params}
    for t in range(1, STEPS + 1):
        params, state = step(params, state, t)
        for k, v in params.items():
            trajectory[k].append(np.asarray(v))
    np.savez(PATH, **{k: np.stack(v) for k, v in trajectory.items()})
    print(f"wrote {PATH}: {STEPS} steps of {sorted(SHAPES)}")


def official_soap_torch(params: dict, torch) -> dict:
    """The official algorithm on whole leaves (no blocks: every dimension here is below max_precond_dim), float64."""

    def turn(x, bases, into):
        for i, q in enumerate(bases):
            if q is not None:
                x = torch.movedim(torch.tensordot(q.T if into else q, x, dims=([1], [i])), 0, i)
        return x

    def square(x, i):
        rows = torch.movedim(x, i, 0).reshape(x.shape[i], -1)
        return rows @ rows.T

    state = {}
    trajectory = {k: [] for k in params}
    for t in range(1, STEPS + 1):
        for name, p in params.items():
            g = field(p, t, torch)
            factors = [torch.zeros(d, d, dtype=p.dtype) if p.ndim >= 2 else None for d in p.shape]
            s = state.setdefault(name, {"L": factors, "m": torch.zeros_like(p), "v": torch.zeros_like(p), "Q": None})
            k = t - 1
            if t > 1:
                turned = turn(g, s["Q"], True)
                s["m"] = B1 * s["m"] + (1 - B1) * turned
                s["v"] = B2 * s["v"] + (1 - B2) * turned**2
                direction = turn(s["m"] / (s["v"].sqrt() + EPS), s["Q"], False)
                p = p - LR * (1 - B2**k) ** 0.5 / (1 - B1**k) * direction
                s["m"] = turn(s["m"], s["Q"], False)
            s["L"] = [None if L is None else B2 * L + (1 - B2) * square(g, i) for i, L in enumerate(s["L"])]
            if t == 1:
                s["Q"] = [None if L is None else torch.flip(torch.linalg.eigh(L)[1], [1]) for L in s["L"]]
            elif k % FREQUENCY == 0:
                for i, (L, Q) in enumerate(zip(s["L"], s["Q"])):
                    if L is not None:
                        order = torch.argsort(torch.diag(Q.T @ L @ Q), descending=True)
                        s["v"] = s["v"].index_select(i, order)
                        s["Q"][i] = torch.linalg.qr(L @ Q[:, order])[0]
            if t > 1:
                s["m"] = turn(s["m"], s["Q"], True)
            params[name] = p
            trajectory[name].append(p.numpy().copy())
    return {k: np.stack(v) for k, v in trajectory.items()}


def heavyball_soap(params: dict, torch) -> dict:
    import heavyball

    tensors = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    opt = heavyball.SOAP(list(tensors.values()), lr=LR, betas=(B1, B2), shampoo_beta=B2, eps=EPS, weight_decay=0.0,
                         precondition_frequency=FREQUENCY, max_precond_dim=10000, merge_dims=False,
                         precondition_1d=False, compile_step=False, storage_dtype="float64")
    trajectory = {k: [] for k in params}
    for t in range(1, STEPS + 1):
        for p in tensors.values():
            p.grad = field(p.detach(), t, torch)
        opt.step()
        for k, p in tensors.items():
            trajectory[k].append(p.detach().numpy().copy())
    return {k: np.stack(v) for k, v in trajectory.items()}


def max_relative_difference(a: dict, b: dict, steps: slice = slice(None)) -> float:
    return max(float(np.max(np.abs(a[k][steps] - b[k][steps]) / np.abs(b[k][steps]))) for k in a)


def run_torch() -> None:
    import torch

    ours = dict(np.load(PATH))
    start = {k: torch.tensor(v, dtype=torch.float64) for k, v in initial_params().items()}
    official = official_soap_torch(dict(start), torch)
    heavy = heavyball_soap(start, torch)
    print(f"ours vs the official algorithm in torch float64: max relative difference "
          f"{max_relative_difference(ours, official):.2e} over {STEPS} steps (refreshes every {FREQUENCY})")
    for k in SHAPES:
        final = np.linalg.norm(ours[k][-1] - heavy[k][-1]) / np.linalg.norm(heavy[k][-1])
        print(f"ours vs heavyball SOAP, {k}{SHAPES[k]}: max relative difference "
              f"{max_relative_difference({k: ours[k]}, {k: heavy[k]}):.2e} (after 2 steps: "
              f"{max_relative_difference({k: ours[k]}, {k: heavy[k]}, slice(0, 2)):.2e}); "
              f"at step {STEPS}, |ours - heavyball| / |heavyball| = {final:.2e}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("side", choices=["jax", "torch"],
                        help="jax: run ours and write the trajectory; torch: read it, run torch and compare (second)")
    parser.add_argument("--trajectory", default=PATH, help="the file between the two steps (default %(default)s)")
    args = parser.parse_args()
    PATH = args.trajectory  # read by run_jax and run_torch
    {"jax": run_jax, "torch": run_torch}[args.side]()
