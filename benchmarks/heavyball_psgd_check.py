"""One-off check of jz.psgd_kron's definition against heavyball 3.2.1's PSGD-Kron (torch), run by hand.

    /tmp/torchvenv/bin/python benchmarks/heavyball_psgd_check.py

torch is not a dependency of this project: the script runs in a separate environment with torch and heavyball,
and compares heavyball's functions with the float64 NumPy reference of tests/reference.py (NumPy only; the test
suite checks jz.psgd_kron against that reference at rel 1e-9), on a fixed 6 x 8 matrix, in float64:

1. the preconditioned gradient P G = (Q1 kron Q2)^T (Q1 kron Q2) vec G for the same factors Q1, Q2
   (heavyball's ``psgd_precond_grad`` vs the reference's step with the fit skipped): the same definition;
2. one fit of the factors from the same damped input h and probe V (heavyball's ``psgd_update_precond`` vs
   the reference's fit): the same direction triu(A A^T - B B^T) Q_k per factor, but heavyball divides by a
   2-step power iteration's largest eigenvalue of A A^T + B B^T, kept as a running lower bound (an EMA, 0.9),
   where psgd-jax (and we) divide by its cheap spectral-norm lower bound; heavyball also rebalances the factors
   (P unchanged);
3. 40 fits on a stream of inputs with an anisotropic covariance: how far the two learned P drift apart, and how
   well each whitens the inputs.

Deliberately not compared: heavyball's update clipping (a trust-region clip) versus psgd-jax's RMS cap at 1.1,
its elementwise damping, its default preconditioner update schedule and its momentum wiring.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import torch

import heavyball.utils as hb

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from tests import reference  # noqa: E402  (NumPy only)

hb.compile_mode = None  # heavyball's functions run eagerly (no torch.compile)
SHAPE = (6, 8)
LR = 0.1


def kron(factors):
    return np.kron(factors[0], factors[1])


def preconditioner(factors):
    """P = Q^T Q, Q = Q1 kron Q2 (heavyball's factors are torch tensors with a leading bucket dimension)."""
    factors = [q.numpy()[0] if isinstance(q, torch.Tensor) else q for q in factors]
    return kron(factors).T @ kron(factors)


def reference_step(g, factors, fit, v=None):
    """(P g, new factors) from tests/reference.py: b1 = 0, the fit on g itself, learning rate -1 (delta = P g)."""
    ref = reference.psgd_kron(-1.0, probes=lambda t: v, fits=lambda t: fit, triangular=[True, True], b1=0.0,
                              precond_lr=LR, precond_init_scale=1.0, momentum_into_precond_update=False)
    state = ref.init(np.zeros(SHAPE))
    state["q"] = [q.copy() for q in factors]
    delta, state = ref.update(g, state, np.zeros(SHAPE), 2)
    return delta, state["q"]


def damped(g, v):  # the reference's (psgd-jax's) damping of the fitted input, with the absolute 1e-9
    return g + (float(np.sqrt(np.finfo(np.float32).eps)) * np.mean(np.abs(g)) + 1e-9) * v


def t(x):
    return torch.tensor(np.asarray(x, np.float64))[None]  # heavyball's leading bucket dimension


def main():
    rng = np.random.default_rng(0)
    q1 = np.eye(6) + 0.3 * np.triu(rng.normal(size=(6, 6)))
    q2 = np.eye(8) + 0.3 * np.triu(rng.normal(size=(8, 8)))
    g = 0.05 * rng.normal(size=SHAPE)  # small enough that the RMS cap at 1.1 stays inactive

    ours, _ = reference_step(g, [q1, q2], fit=False)
    theirs = hb.psgd_precond_grad(t(g), [t(q1), t(q2)])[0].numpy()
    print(f"1. P G, same factors: max |ours - heavyball| / max |P G| = "
          f"{np.max(np.abs(ours - theirs)) / np.max(np.abs(ours)):.2e}")

    v = rng.normal(size=SHAPE)
    h = damped(g, v)
    _, (r1, r2) = reference_step(g, [q1, q2], fit=True, v=v)
    hq = [t(q1), t(q2)]
    lower_bounds = [torch.zeros(1, dtype=torch.float64) for _ in hq]
    hb.psgd_update_precond(t(h), LR, hq, False, 0.0, t(v), lower_bounds, 0.9, 2)
    balance = np.exp(np.mean(np.log([np.max(np.abs(q1)), np.max(np.abs(q2))])))
    for k, (q, ref_new, hb_new) in enumerate(zip((q1, q2), (r1, r2), hq)):
        c = balance / np.max(np.abs(q))  # heavyball's rebalancing of factor k before its step
        ours_step, their_step = ref_new - q, hb_new[0].numpy() / c - q
        cosine = np.sum(ours_step * their_step) / np.linalg.norm(ours_step) / np.linalg.norm(their_step)
        print(f"2. fit, factor {k + 1}: cosine(our step, heavyball's) = {cosine:.12f}, "
              f"|ours| / |heavyball's| - 1 = {np.linalg.norm(ours_step) / np.linalg.norm(their_step) - 1:.2e}")
    p_ours, p_theirs = preconditioner([r1, r2]), preconditioner(hq)
    print(f"   after one fit, |P_ours - P_heavyball|_F / |P_ours|_F = "
          f"{np.linalg.norm(p_ours - p_theirs) / np.linalg.norm(p_ours):.2e}")

    # 3. A stream of inputs with covariance C = C1 kron C2 (strongly anisotropic): P should approach C^(-1/2).
    left, right = np.diag(np.logspace(0, 1.5, 6)), np.diag(np.logspace(0, -1, 8))
    ours_q, hq = [np.eye(6), np.eye(8)], [t(np.eye(6)), t(np.eye(8))]
    lower_bounds = [torch.zeros(1, dtype=torch.float64) for _ in hq]
    for step in range(40):
        g = 0.05 * left @ rng.normal(size=SHAPE) @ right
        v = rng.normal(size=SHAPE)
        _, ours_q = reference_step(g, ours_q, fit=True, v=v)
        hb.psgd_update_precond(t(damped(g, v)), LR, hq, False, 0.0, t(v), lower_bounds, 0.9, 2)
    covariance = 0.05**2 * np.kron(left @ left, right @ right)
    target = np.diag(1 / np.sqrt(np.diag(covariance)))
    for name, factors in (("ours", ours_q), ("heavyball", hq)):
        p = preconditioner(factors)
        whitened = np.linalg.eigvalsh(p @ covariance @ p)
        print(f"3. after 40 fits, {name:9s}: |P - C^(-1/2)|_F / |C^(-1/2)|_F = "
              f"{np.linalg.norm(p - target) / np.linalg.norm(target):.3f}, eigenvalues of P C P in "
              f"[{whitened.min():.3f}, {whitened.max():.3f}] (1 when whitened)")
    p_ours, p_theirs = preconditioner(ours_q), preconditioner(hq)
    print(f"   |P_ours - P_heavyball|_F / |P_ours|_F = "
          f"{np.linalg.norm(p_ours - p_theirs) / np.linalg.norm(p_ours):.3f}")


if __name__ == "__main__":
    main()
