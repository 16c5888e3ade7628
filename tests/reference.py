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


# ---------------------------------------------------------------------------
# PyTorch's documented pseudocode (torch.optim docs, "Algorithm" sections), one
# tensor at a time. ``sgd`` above is torch.optim.SGD's algorithm already.


def _signed(g, maximize):
    return -g if maximize else g


def torch_sgd(lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False):
    """torch.optim.SGD: g <- (-g if maximize) + wd p, then ``sgd`` above."""
    inner = sgd(lr, momentum, dampening, nesterov, weight_decay)
    return Reference(inner.init, lambda g, state, p, t: inner.update(_signed(g, maximize), state, p, t))


def torch_adagrad(lr, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, maximize=False):
    """torch.optim.Adagrad: clr = lr / (1 + (t - 1) lr_decay); s += g^2; p -= clr g / (sqrt(s) + eps)."""

    def init(params):
        return {"sum": np.full_like(params, initial_accumulator_value)}

    def update(g, state, p, t):
        g = _signed(g, maximize) + weight_decay * p
        clr = schedule_value(lr, t) / (1 + (t - 1) * lr_decay)
        total = state["sum"] + g * g
        return -clr * g / (np.sqrt(total) + eps), {"sum": total}

    return Reference(init, update)


def torch_adadelta(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False):
    """torch.optim.Adadelta: v = rho v + (1-rho) g^2; d = sqrt(u + eps)/sqrt(v + eps) g; u = rho u + (1-rho) d^2."""

    def init(params):
        return {"v": np.zeros_like(params), "u": np.zeros_like(params)}

    def update(g, state, p, t):
        g = _signed(g, maximize) + weight_decay * p
        v = rho * state["v"] + (1 - rho) * g * g
        delta = np.sqrt(state["u"] + eps) / np.sqrt(v + eps) * g
        u = rho * state["u"] + (1 - rho) * delta * delta
        return -schedule_value(lr, t) * delta, {"v": v, "u": u}

    return Reference(init, update)


def torch_rmsprop(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, maximize=False):
    """torch.optim.RMSprop: v = a v + (1-a) g^2; centered: m = a m + (1-a) g, v~ = v - m^2;
    avg = sqrt(v~) + eps; momentum: b = mu b + g / avg, p -= lr b; else p -= lr g / avg."""

    def init(params):
        return {"v": np.zeros_like(params), "m": np.zeros_like(params), "b": np.zeros_like(params)}

    def update(g, state, p, t):
        g = _signed(g, maximize) + weight_decay * p
        v = alpha * state["v"] + (1 - alpha) * g * g
        m = alpha * state["m"] + (1 - alpha) * g
        avg = np.sqrt(v - m * m if centered else v) + eps
        b = momentum * state["b"] + g / avg
        step = b if momentum > 0 else g / avg
        return -schedule_value(lr, t) * step, {"v": v, "m": m, "b": b}

    return Reference(init, update)


def torch_adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False, decoupled=False):
    """torch.optim.Adam / AdamW: L2 (or decoupled: p <- p - lr wd p) decay; m, v EMAs;
    v_max = max(v_max, v) for amsgrad; p -= lr (m / (1-b1^t)) / (sqrt(v_hat / (1-b2^t)) + eps)."""
    b1, b2 = betas

    def init(params):
        return {"m": np.zeros_like(params), "v": np.zeros_like(params), "v_max": np.zeros_like(params)}

    def update(g, state, p, t):
        rate = schedule_value(lr, t)
        g = _signed(g, maximize)
        decay = -rate * weight_decay * p if decoupled else 0.0
        if not decoupled:
            g = g + weight_decay * p
        m = b1 * state["m"] + (1 - b1) * g
        v = b2 * state["v"] + (1 - b2) * g * g
        v_max = np.maximum(state["v_max"], v)
        v_hat = (v_max if amsgrad else v) / (1 - b2**t)
        step = (m / (1 - b1**t)) / (np.sqrt(v_hat) + eps)
        return decay - rate * step, {"m": m, "v": v, "v_max": v_max}

    return Reference(init, update)


# ---------------------------------------------------------------------------
# Optax's forms of the shared transforms, from their documented formulas.


def rss(lr, initial_accumulator_value=0.1, eps=1e-7, eps_in_sqrt=True):
    """Adagrad: s += g^2; u = g / sqrt(s + eps) (or / (sqrt(s) + eps)); u = 0 where s = 0."""

    def init(params):
        return {"s": np.full_like(params, initial_accumulator_value)}

    def update(g, state, p, t):
        s = state["s"] + g * g
        root = np.sqrt(s + eps) if eps_in_sqrt else np.sqrt(s) + eps
        return -schedule_value(lr, t) * np.where(s > 0, g / root, 0.0), {"s": s}

    return Reference(init, update)


def rms(lr, decay=0.9, eps=1e-8, initial_scale=0.0, eps_in_sqrt=True, bias_correction=False, centered=False,
        momentum=None, nesterov=False):
    """Optax's rmsprop: v (and m if centered) EMAs, optional bias correction, u = g / root(v - m^2),
    then lr, then momentum b = u_lr + mu b (nesterov: u_lr + mu b_new)."""

    def init(params):
        return {"v": np.full_like(params, initial_scale), "m": np.zeros_like(params), "b": np.zeros_like(params)}

    def update(g, state, p, t):
        v = decay * state["v"] + (1 - decay) * g * g
        m = decay * state["m"] + (1 - decay) * g
        correction = (1 - decay**t) if bias_correction else 1.0
        variance = v / correction - ((m / correction) ** 2 if centered else 0.0)
        root = np.sqrt(variance + eps) if eps_in_sqrt else np.sqrt(variance) + eps
        step = -schedule_value(lr, t) * g / root
        if momentum is None:
            return step, {"v": v, "m": m, "b": state["b"]}
        b = step + momentum * state["b"]
        return (step + momentum * b if nesterov else b), {"v": v, "m": m, "b": b}

    return Reference(init, update)


def adadelta(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0):
    """Zeiler (2012), Algorithm 1, with an optional rate and L2 decay (Optax's adadelta)."""
    return torch_adadelta(lr, rho, eps, weight_decay)


def amsgrad(lr, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, bias_correction_mu=True, bias_correction_nu=True):
    """Optax's AMSGrad: v_max = max(v_max, v / (1 - b2^t)); u = m_hat / (sqrt(v_max + eps_root) + eps)."""

    def init(params):
        return {"m": np.zeros_like(params), "v": np.zeros_like(params), "v_max": np.zeros_like(params)}

    def update(g, state, p, t):
        m = b1 * state["m"] + (1 - b1) * g
        v = b2 * state["v"] + (1 - b2) * g * g
        m_hat = m / (1 - b1**t) if bias_correction_mu else m
        v_max = np.maximum(state["v_max"], v / (1 - b2**t) if bias_correction_nu else v)
        return -schedule_value(lr, t) * m_hat / (np.sqrt(v_max + eps_root) + eps), {"m": m, "v": v, "v_max": v_max}

    return Reference(init, update)


def adam_without_bias_correction(lr, b1=0.9, b2=0.999, eps=1e-8):
    """m, v EMAs used as they are: u = m / (sqrt(v) + eps)."""

    def init(params):
        return {"m": np.zeros_like(params), "v": np.zeros_like(params)}

    def update(g, state, p, t):
        m = b1 * state["m"] + (1 - b1) * g
        v = b2 * state["v"] + (1 - b2) * g * g
        return -schedule_value(lr, t) * m / (np.sqrt(v) + eps), {"m": m, "v": v}

    return Reference(init, update)


def trust_ratio(p, u, min_norm=0.0, trust_coefficient=1.0, eps=0.0, max_param_norm=None):
    """The layer-wise trust ratio of You et al.: eta * phi(||p||) / (||u|| + eps), 1 if either norm is 0."""
    p_norm = max(np.linalg.norm(p), min_norm)
    if max_param_norm is not None:
        p_norm = min(p_norm, max_param_norm)
    u_norm = max(np.linalg.norm(u), min_norm)
    if p_norm == 0 or u_norm == 0:
        return 1.0
    return trust_coefficient * p_norm / (u_norm + eps)


def lamb(lr, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.0, bias_correction=True, max_param_norm=None):
    """You et al. (2020), Algorithm 2 (per leaf): r = m_hat / (sqrt(v_hat) + eps) + wd p;
    p -= lr * ratio(p, r) * r."""

    def init(params):
        return {"m": np.zeros_like(params), "v": np.zeros_like(params)}

    def update(g, state, p, t):
        m = b1 * state["m"] + (1 - b1) * g
        v = b2 * state["v"] + (1 - b2) * g * g
        c1, c2 = ((1 - b1**t), (1 - b2**t)) if bias_correction else (1.0, 1.0)
        r = (m / c1) / (np.sqrt(v / c2) + eps) + weight_decay * p
        return -schedule_value(lr, t) * trust_ratio(p, r, max_param_norm=max_param_norm) * r, {"m": m, "v": v}

    return Reference(init, update)


def lars(lr, weight_decay=0.0, trust_coefficient=0.001, eps=0.0, momentum=0.9, nesterov=False):
    """You et al. (2017), Algorithm 1 (per leaf): d = g + wd p; local = eta ||p|| / (||d|| + eps);
    b = mu b + lr local d; p -= b (nesterov: p -= lr local d + mu b)."""

    def init(params):
        return {"b": np.zeros_like(params)}

    def update(g, state, p, t):
        d = g + weight_decay * p
        step = schedule_value(lr, t) * trust_ratio(p, d, trust_coefficient=trust_coefficient, eps=eps) * d
        b = momentum * state["b"] + step
        return -(step + momentum * b if nesterov else b), {"b": b}

    return Reference(init, update)


# ---------------------------------------------------------------------------
# Clipping, on whole trees given as lists of NumPy arrays.


def clip_elementwise(grads, max_delta):
    """u = clip(g, -delta, delta)."""
    return [np.clip(g, -max_delta, max_delta) for g in grads]


def clip_global_norm(grads, max_norm):
    """u = g if ||g|| < c else c g / ||g||, with ||g|| over all leaves (Pascanu et al. 2013)."""
    norm = np.sqrt(sum(np.sum(g * g) for g in grads))
    return grads if norm < max_norm else [g * (max_norm / norm) for g in grads]


def clip_block_rms(grads, threshold):
    """u = g / max(1, rms(g) / c), leaf by leaf."""
    return [g / max(1.0, np.sqrt(np.mean(g * g)) / threshold) for g in grads]


def adaptive_clip(grads, params, clipping, eps=1e-3):
    """Brock et al. (2021): per output unit (axis 0 of a matrix, whole vectors), clip g to
    clipping * max(||p||, eps) in norm."""
    out = []
    for g, p in zip(grads, params):
        axis = 0 if g.ndim == 2 else None
        g_norm = np.sqrt(np.sum(g * g, axis=axis, keepdims=True))
        limit = clipping * np.maximum(np.sqrt(np.sum(p * p, axis=axis, keepdims=True)), eps)
        out.append(np.where(g_norm < limit, g, g * limit / g_norm))
    return out


# ---------------------------------------------------------------------------
# Block-wise 8-bit quantization (jaxopt_zoo.quantization), written from its
# definition with float64 arithmetic: no bit patterns, no float32.

MANTISSA_BITS = 3
TOP_CODE = {True: 127, False: 254}  # the code of 1.0; -128 (signed) and 255 (non-negative) mark non-finite values
NON_FINITE_CODE = {True: -128, False: 255}


def _code_offset(signed: bool) -> int:
    # index of the value 1.0 on the 3-mantissa-bit grid, minus the largest code
    return 127 * 2**MANTISSA_BITS - TOP_CODE[signed]


def float_code(y: np.ndarray, signed: bool, rounding: str = "nearest") -> np.ndarray:
    """Codes of ``|y| <= 1``: round |y| to 3 mantissa bits, index the grid.

    ``rounding`` is "nearest" (half away from zero), "down" or "up" (in magnitude);
    the library rounds stochastically, so each of its codes is the "down" or the "up" one.
    """
    y = np.asarray(y, np.float64)
    finite = np.isfinite(y)
    y = np.where(finite, y, 0.0)
    magnitude = np.abs(y)
    safe = np.where(magnitude > 0, magnitude, 1.0)
    exponent = np.floor(np.log2(safe))
    # guard log2 rounding at exact powers of two
    exponent = np.where(safe / 2.0**exponent >= 2, exponent + 1, exponent)
    exponent = np.where(safe / 2.0**exponent < 1, exponent - 1, exponent)
    position = (safe / 2.0**exponent - 1) * 2**MANTISSA_BITS
    steps = {"nearest": np.floor(position + 0.5), "down": np.floor(position), "up": np.ceil(position)}[rounding]
    index = (exponent + 127) * 2**MANTISSA_BITS + steps - _code_offset(signed)
    top = TOP_CODE[signed]
    index = np.clip(index, 0, top)
    if signed:
        index = np.where(magnitude > 0, index, 0)
        index = np.where(y < 0, -index, index)
    else:
        index = np.where(y > 0, np.maximum(index, 1), 0)
    return np.where(finite, index, NON_FINITE_CODE[signed]).astype(np.int64)


def float_value(codes: np.ndarray, signed: bool) -> np.ndarray:
    """The value in [-1, 1] of each code: 2**e * (1 + k / 8) read off the grid index."""
    codes = np.asarray(codes, np.int64)
    index = np.abs(codes) + _code_offset(signed)
    exponent = index // 2**MANTISSA_BITS - 127
    value = 2.0**exponent * (1 + (index % 2**MANTISSA_BITS) / 2**MANTISSA_BITS)
    value = np.where(codes == 0, 0.0, value)
    value = np.where(codes < 0, -value, value)
    return np.where(codes == NON_FINITE_CODE[signed], np.nan if signed else np.inf, value)


def blocks(x: np.ndarray, num_blocks: int) -> list[np.ndarray]:
    """Index arrays of the last axis: ``num_blocks`` blocks of ceil(n / num_blocks), the last shorter."""
    n = x.shape[-1]
    length = -(-n // num_blocks)
    return [np.arange(start, min(start + length, n)) for start in range(0, n, length)]


def quantize_blockwise(x: np.ndarray, num_blocks: int, signed: bool, code=float_code):
    """(codes, scales): per block of the last axis, scale = max |x| and codes of x / scale."""
    x = np.asarray(x, np.float64)
    codes = np.zeros(x.shape, np.int64)
    scales = np.zeros(x.shape[:-1] + (num_blocks,))
    for b, index in enumerate(blocks(x, num_blocks)):
        block = x[..., index]
        scale = np.max(np.where(np.isfinite(block), np.abs(block), 0.0), axis=-1)  # the largest finite magnitude
        scales[..., b] = scale
        safe = np.where(scale > 0, scale, 1.0)[..., None]
        codes[..., index] = code(block / safe, signed)
    return codes, scales


def dequantize_blockwise(codes, scales, signed: bool, value=float_value) -> np.ndarray:
    out = np.zeros(codes.shape)
    for b, index in enumerate(blocks(codes, scales.shape[-1])):
        out[..., index] = value(codes[..., index], signed) * scales[..., b][..., None]
    return out


def dynamic_tree_values(signed: bool) -> np.ndarray:
    """The 256 values of Dettmers et al.'s dynamic tree code, from the paper's description.

    After the sign bit (signed code only), a run of k zero bits gives the decimal
    exponent -k, a 1 bit ends the run, and the remaining bits are a linear
    fraction in [0.1, 1] (bin midpoints). Zero and 1.0 complete the 256 values.
    """
    fraction_bits = 6 if signed else 7
    values = [0.0, 1.0]
    for k in range(7):
        count = 2 ** (fraction_bits - k)
        edges = np.linspace(0.1, 1.0, count + 1)
        mids = 10.0**-k * (edges[:-1] + edges[1:]) / 2
        values += list(mids) + (list(-mids) if signed else [])
    values = np.sort(np.array(values))
    assert values.size <= 256, values.size
    return values


def nearest_code(y: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Index of the nearest table value to each element of y."""
    right = np.clip(np.searchsorted(table, y), 1, table.size - 1)
    left = right - 1
    return np.where(np.abs(y - table[left]) <= np.abs(y - table[right]), left, right)
