"""Float64 NumPy references of every update rule, written from the published formulas.

Each reference is a pair ``(init(params), update(grad, state, params, t))`` over
one NumPy array, where ``t = 1, 2, ...`` is the step number and ``update``
returns ``(delta, state)`` with ``params_next = params + delta``. They share no
code with the package on purpose.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np


class Reference(NamedTuple):
    init: Callable
    update: Callable


def schedule_value(learning_rate, t):
    """The learning rate at step ``t`` (1-based): schedules see the 0-based count ``t - 1``."""
    return float(learning_rate(t - 1)) if callable(learning_rate) else learning_rate


def sgd(learning_rate, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, decoupled_decay=0.0):
    """torch.optim.SGD's pseudocode (its documentation), plus Optax's decoupled decay hook.

    g <- g + wd * p;  b_1 = g, b_t = mu b_{t-1} + (1 - tau) g;  g <- g + mu b (nesterov) or b;
    p <- p - lr * (g + decoupled_decay * p).
    """

    def init(params):
        return {"b": None}

    def update(g, state, params, t):
        g = g + weight_decay * params
        if momentum:
            b = g.copy() if state["b"] is None else momentum * state["b"] + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
            state = {"b": b}
        return -schedule_value(learning_rate, t) * (g + decoupled_decay * params), state

    return Reference(init, update)


def adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, nesterov=False, weight_decay=0.0):
    """Kingma & Ba (2015), Algorithm 1, with Optax's eps_root, NAdam form and decoupled decay.

    m_t = b1 m + (1 - b1) g;  v_t = b2 v + (1 - b2) g^2;  m_hat = m_t / (1 - b1^t);
    NAdam: m_hat = b1 m_t / (1 - b1^(t+1)) + (1 - b1) g / (1 - b1^t);  v_hat = v_t / (1 - b2^t);
    p <- p - lr * (m_hat / (sqrt(v_hat + eps_root) + eps) + weight_decay * p).
    """

    def init(params):
        return {"m": np.zeros_like(params), "v": np.zeros_like(params)}

    def update(g, state, params, t):
        m = b1 * state["m"] + (1 - b1) * g
        v = b2 * state["v"] + (1 - b2) * g * g
        if nesterov:
            m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        else:
            m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        direction = m_hat / (np.sqrt(v_hat + eps_root) + eps) + weight_decay * params
        return -schedule_value(learning_rate, t) * direction, {"m": m, "v": v}

    return Reference(init, update)


def trajectory(reference: Reference, params: np.ndarray, grad_fn: Callable, steps: int) -> list[np.ndarray]:
    """Run ``reference`` for ``steps`` steps on gradients ``grad_fn(params, t)``; return every iterate."""
    params = np.asarray(params, np.float64)
    state = reference.init(params)
    iterates = []
    for t in range(1, steps + 1):
        delta, state = reference.update(np.asarray(grad_fn(params, t), np.float64), state, params, t)
        params = params + delta
        iterates.append(params)
    return iterates
