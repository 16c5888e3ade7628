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
        mu = schedule_value(momentum, t)  # PyTorch: no buffer, and the buffer left alone, on a step with mu = 0
        if mu:
            b = g.copy() if state["b"] is None else mu * state["b"] + (1 - dampening) * g
            g = g + mu * b if nesterov else b
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


def _float64(x) -> np.ndarray:
    x = np.asarray(x)
    return np.asarray(x, np.complex128 if np.iscomplexobj(x) else np.float64)


def trajectory(reference: Reference, params: np.ndarray, grad_fn: Callable, steps: int) -> list[np.ndarray]:
    """Run ``reference`` for ``steps`` steps on gradients ``grad_fn(params, t)``; return every iterate.

    Real inputs are taken in float64, complex ones in complex128.
    """
    params = _float64(params)
    state = reference.init(params)
    iterates = []
    for t in range(1, steps + 1):
        delta, state = reference.update(_float64(grad_fn(params, t)), state, params, t)
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
    avg = sqrt(v~) + eps; momentum: b = mu b + g / avg, p -= lr b; else p -= lr g / avg (momentum may be a schedule)."""

    def init(params):
        return {"v": np.zeros_like(params), "m": np.zeros_like(params), "b": np.zeros_like(params)}

    def update(g, state, p, t):
        g = _signed(g, maximize) + weight_decay * p
        v = alpha * state["v"] + (1 - alpha) * g * g
        m = alpha * state["m"] + (1 - alpha) * g
        avg = np.sqrt(v - m * m if centered else v) + eps
        mu = schedule_value(momentum, t)  # the buffer is left alone on a step with mu = 0
        b = mu * state["b"] + g / avg if mu > 0 else state["b"]
        step = b if mu > 0 else g / avg
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
        # Below the smallest code the neighbours are 0 and that code.
        smallest = float_value(np.array([1]), signed)[0]
        bottom = {"nearest": magnitude >= smallest / 2, "down": False, "up": True}[rounding]
        index = np.where(magnitude < smallest, bottom, index)
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


def torch_muon(lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True, ns_coefficients=(3.4445, -4.775, 2.0315),
               eps=1e-7, ns_steps=5, adjust_lr_fn=None, bfloat16=False):
    """torch.optim.Muon (its source, torch/optim/_muon.py, in float64; PyTorch runs Newton-Schulz in bfloat16).

    ``bfloat16=True``: Newton-Schulz rounded where PyTorch's rounds: X cast to bfloat16; its norm summed in float32
    and rounded; X / norm, X X^T and each addmm (b A + c A A, a X + B X) formed in float32 and rounded once, with
    the coefficients as Python floats.

    B = mu B + (1 - mu) g (buf.lerp_(g, 1 - mu); the docs' B = mu B + g differs by a scale the normalisation
    removes); U = (1 - mu) g + mu B (g.lerp(B, mu)) if nesterov else B;
    X = U (transposed if rows > cols) / max(||U||_F, eps); k times: A = X X^T, X = a X + (b A + c A A) X;
    p <- p (1 - lr wd) - lr s X, s = sqrt(max(1, rows / cols)) ("original", None) or 0.2 sqrt(max(rows, cols)).
    """
    a, b, c = ns_coefficients

    def orthogonalize(u):
        tall = u.shape[0] > u.shape[1]
        x = u.T if tall else u
        if bfloat16:
            import ml_dtypes

            bf16 = lambda v: np.asarray(v, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)  # noqa: E731
            f32 = lambda v: np.asarray(v, np.float32)  # noqa: E731
            x = bf16(x)
            x = bf16(f32(x) / max(bf16(np.sqrt(np.sum(f32(x) ** 2, dtype=np.float32))), eps))
            for _ in range(ns_steps):
                gram = bf16(f32(x) @ f32(x).T)
                update = bf16(b * f32(gram) + c * (f32(gram) @ f32(gram)))
                x = bf16(a * f32(x) + f32(update) @ f32(x))
            return x.T if tall else x
        x = x / max(np.sqrt(np.sum(x * x)), eps)
        for _ in range(ns_steps):
            gram = x @ x.T
            x = a * x + (b * gram + c * (gram @ gram)) @ x
        return x.T if tall else x

    def init(params):
        return {"buf": np.zeros_like(params)}

    def update(g, state, p, t):
        rate = schedule_value(lr, t)
        buf = momentum * state["buf"] + (1 - momentum) * g
        u = (1 - momentum) * g + momentum * buf if nesterov else buf
        rows, cols = p.shape
        s = 0.2 * np.sqrt(max(rows, cols)) if adjust_lr_fn == "match_rms_adamw" else np.sqrt(max(1, rows / cols))
        return -rate * weight_decay * p - rate * s * orthogonalize(u), {"buf": buf}

    return Reference(init, update)


def torch_rprop(lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), maximize=False):
    """torch.optim.Rprop: s = sign(g prev); step = clamp(step * (eta+ if s > 0, eta- if s < 0, 1), min, max);
    g = 0 where s < 0; p -= sign(g) step; prev = g (step starts at lr, prev at 0)."""
    eta_minus, eta_plus = etas

    def init(params):
        return {"step": np.full_like(params, lr), "prev": np.zeros_like(params)}

    def update(g, state, p, t):
        g = _signed(g, maximize)
        sign = np.sign(g * state["prev"])
        factor = np.where(sign > 0, eta_plus, np.where(sign < 0, eta_minus, 1.0))
        step = np.clip(state["step"] * factor, *step_sizes)
        g = np.where(sign < 0, 0.0, g)
        return -np.sign(g) * step, {"step": step, "prev": g}

    return Reference(init, update)


def torch_asgd(lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0, maximize=False):
    """torch.optim.ASGD: g <- +-g + wd p; p <- p (1 - lambd eta) - eta g; ax <- p if mu == 1 else ax + mu (p - ax);
    then eta = lr / (1 + lambd lr t)^alpha, mu = 1 / max(1, t - t0) (eta starts at lr, mu at 1, ax at 0).
    ``state["ax"]`` is the averaged iterate; ``lr`` may be a schedule (read each step, as an lr_scheduler sets it)."""

    def init(params):
        return {"eta": schedule_value(lr, 1), "mu": 1.0, "ax": np.zeros_like(params)}

    def update(g, state, p, t):
        eta, mu = state["eta"], state["mu"]
        g = _signed(g, maximize) + weight_decay * p
        new = p * (1 - lambd * eta) - eta * g
        ax = new.copy() if mu == 1 else state["ax"] + (new - state["ax"]) * mu
        rate = schedule_value(lr, t)
        state = {"eta": rate / (1 + lambd * rate * t) ** alpha, "mu": 1 / max(1, t - t0), "ax": ax}
        return new - p, state

    return Reference(init, update)


# torch.optim.SparseAdam, Adamax, NAdam and RAdam, from their documented algorithms (torch 2.13 docs).


def torch_sparse_adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, maximize=False):
    """torch.optim.SparseAdam on the entries whose gradient is non-zero (the mask its docstring describes; its
    code updates the entries a sparse gradient stores): there m += (1-b1)(g - m), v += (1-b2)(g^2 - v) and
    p -= lr sqrt(1-b2^t)/(1-b1^t) m / (sqrt(v) + eps); elsewhere m, v and p stay. t counts every step."""
    b1, b2 = betas

    def init(params):
        return {"m": np.zeros_like(params), "v": np.zeros_like(params)}

    def update(g, state, p, t):
        g = _signed(g, maximize)
        on = g != 0
        m = np.where(on, state["m"] + (1 - b1) * (g - state["m"]), state["m"])
        v = np.where(on, state["v"] + (1 - b2) * (g * g - state["v"]), state["v"])
        step_size = schedule_value(lr, t) * np.sqrt(1 - b2**t) / (1 - b1**t)
        return np.where(on, -step_size * m / (np.sqrt(v) + eps), 0.0), {"m": m, "v": v}

    return Reference(init, update)


def torch_adamax(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, maximize=False):
    """torch.optim.Adamax: g <- (-g if maximize) + wd p; m = b1 m + (1-b1) g; u = max(b2 u, |g| + eps);
    p -= lr m / ((1 - b1^t) u)."""
    b1, b2 = betas

    def init(params):
        return {"m": np.zeros_like(params), "u": np.zeros_like(params)}

    def update(g, state, p, t):
        g = _signed(g, maximize) + weight_decay * p
        m = b1 * state["m"] + (1 - b1) * g
        u = np.maximum(b2 * state["u"], np.abs(g) + eps)
        return -schedule_value(lr, t) * m / ((1 - b1**t) * u), {"m": m, "u": u}

    return Reference(init, update)


def torch_nadam(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
                decoupled_weight_decay=False, maximize=False):
    """torch.optim.NAdam: mu_t = b1 (1 - 0.5 * 0.96^(t psi)); prod_t = mu_1 ... mu_t;
    m_hat = mu_{t+1} m / (1 - prod_t mu_{t+1}) + (1 - mu_t) g / (1 - prod_t);
    p -= lr m_hat / (sqrt(v / (1 - b2^t)) + eps), after p -= lr wd p (decoupled) or with g += wd p."""
    b1, b2 = betas

    def init(params):
        return {"m": np.zeros_like(params), "v": np.zeros_like(params), "mu_product": 1.0}

    def update(g, state, p, t):
        rate = schedule_value(lr, t)
        g = _signed(g, maximize)
        decay = -rate * weight_decay * p if decoupled_weight_decay else 0.0
        if not decoupled_weight_decay:
            g = g + weight_decay * p
        mu = b1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
        mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
        product = state["mu_product"] * mu
        m = b1 * state["m"] + (1 - b1) * g
        v = b2 * state["v"] + (1 - b2) * g * g
        m_hat = mu_next * m / (1 - product * mu_next) + (1 - mu) * g / (1 - product)
        step = m_hat / (np.sqrt(v / (1 - b2**t)) + eps)
        return decay - rate * step, {"m": m, "v": v, "mu_product": product}

    return Reference(init, update)


def torch_radam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, maximize=False):
    """torch.optim.RAdam: rho_inf = 2 / (1 - b2) - 1; rho_t = rho_inf - 2 t b2^t / (1 - b2^t);
    m_hat = m / (1 - b1^t); if rho_t > 5: p -= lr m_hat r_t sqrt(1 - b2^t) / (sqrt(v) + eps), with
    r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t)); else p -= lr m_hat."""
    b1, b2 = betas

    def init(params):
        return {"m": np.zeros_like(params), "v": np.zeros_like(params)}

    def update(g, state, p, t):
        rate = schedule_value(lr, t)
        g = _signed(g, maximize)
        decay = -rate * weight_decay * p if decoupled_weight_decay else 0.0
        if not decoupled_weight_decay:
            g = g + weight_decay * p
        m = b1 * state["m"] + (1 - b1) * g
        v = b2 * state["v"] + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        rho_inf = 2 / (1 - b2) - 1
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho > 5:
            r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            step = m_hat * r * np.sqrt(1 - b2**t) / (np.sqrt(v) + eps)
        else:
            step = m_hat
        return decay - rate * step, {"m": m, "v": v}

    return Reference(init, update)


def torch_adafactor(lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0, maximize=False,
                    dtype=np.float64):
    """torch.optim.Adafactor (its documented algorithm and note on eps1): G = +-g; b2_t = 1 - t^decay;
    rho = min(lr, 1/sqrt(t)); alpha = max(eps2, RMS(p)) rho; p <- p - lr wd p; for >= 2 dims (the last
    two factored) R = b2_t R + (1 - b2_t) mean_j G^2, C = b2_t C + (1 - b2_t) mean_i G^2,
    V = R C / max(mean_i R, eps1); else V = b2_t V + (1 - b2_t) G^2; U = G / max(sqrt(V), eps1);
    p <- p - alpha U / max(1, RMS(U) / d). eps1=None is the machine epsilon of ``dtype``."""
    eps1 = float(np.finfo(dtype).eps) if eps[0] is None else eps[0]
    eps2 = eps[1]

    def init(params):
        if params.ndim >= 2:
            return {"R": np.zeros(params.shape[:-1] + (1,)), "C": np.zeros(params.shape[:-2] + (1,) + params.shape[-1:])}
        return {"V": np.zeros_like(params)}

    def update(g, state, p, t):
        rate = schedule_value(lr, t)
        g = _signed(g, maximize)
        beta2 = 1 - t**beta2_decay
        rho = min(rate, 1 / np.sqrt(t))
        alpha = max(eps2, np.sqrt(np.mean(p * p))) * rho
        if p.ndim >= 2:
            R = beta2 * state["R"] + (1 - beta2) * np.mean(g * g, axis=-1, keepdims=True)
            C = beta2 * state["C"] + (1 - beta2) * np.mean(g * g, axis=-2, keepdims=True)
            V = (R @ C) / np.maximum(np.mean(R, axis=-2, keepdims=True), eps1)
            state = {"R": R, "C": C}
        else:
            V = beta2 * state["V"] + (1 - beta2) * g * g
            state = {"V": V}
        U = g / np.maximum(np.sqrt(V), eps1)
        U = U / max(1.0, np.sqrt(np.mean(U * U)) / d)
        return -rate * weight_decay * p - alpha * U, state

    return Reference(init, update)


# ---------------------------------------------------------------------------
# torch.optim.LBFGS: a whole step(closure) at a time, over one flat float64 vector.


def _cubic_minimum(x1, f1, g1, x2, f2, g2, bounds=None):
    """Minimiser of the cubic through (x1, f1, g1) and (x2, f2, g2), clipped to ``bounds``
    (default: the interval between x1 and x2); the interval's midpoint when the cubic has no minimum."""
    lo, hi = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 * d1 - g1 * g2
    if not d2_square >= 0:
        return (lo + hi) / 2.0
    d2 = np.sqrt(d2_square)
    if x1 <= x2:
        x = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        x = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(x, lo), hi)  # Python's min/max, as torch (NaN-order semantics included)


def _strong_wolfe_search(value_and_grad, x, t, d, f, g, gtd, max_ls, c1=1e-4, c2=0.9, tolerance_change=1e-9):
    """torch's strong-Wolfe line search (bracketing, then zoom with cubic interpolation).

    Returns ``(f, g, t, evaluations)`` at the accepted step ``t`` along ``d`` from ``x``.
    """

    def probe(step):
        value, grad = value_and_grad(x + step * d)
        return float(value), grad, float(grad @ d)

    d_norm = float(np.max(np.abs(d)))
    f_t, g_t, gtd_t = probe(t)
    evals, iters = 1, 0
    # points: [step, value, grad, slope]; "prev" starts at the origin.
    prev = [0.0, f, g, gtd]
    done = False
    bracket = None
    while iters < max_ls:
        cur = [t, f_t, g_t, gtd_t]
        if f_t > f + c1 * t * gtd or (iters > 1 and f_t >= prev[1]):
            bracket = [prev, cur]
            break
        if abs(gtd_t) <= -c2 * gtd:
            bracket, done = [cur], True
            break
        if gtd_t >= 0:
            bracket = [prev, cur]
            break
        bounds = (t + 0.01 * (t - prev[0]), t * 10)
        t_next = _cubic_minimum(prev[0], prev[1], prev[3], t, f_t, gtd_t, bounds)
        prev = cur
        t = t_next
        f_t, g_t, gtd_t = probe(t)
        evals += 1
        iters += 1
    if iters == max_ls:
        bracket = [[0.0, f, g, None], [t, f_t, g_t, None]]

    low, high = (0, 1) if bracket[0][1] <= bracket[-1][1] else (1, 0)
    stalled = False  # the last trial was too close to an end of the bracket
    while not done and iters < max_ls:
        a, b = bracket[0][0], bracket[1][0]
        if abs(b - a) * d_norm < tolerance_change:
            break
        t = _cubic_minimum(a, bracket[0][1], bracket[0][3], b, bracket[1][1], bracket[1][3])
        top, bottom = max(a, b), min(a, b)
        margin = 0.1 * (top - bottom)
        if min(top - t, t - bottom) < margin:
            if stalled or t >= top or t <= bottom:
                t = top - margin if abs(t - top) < abs(t - bottom) else bottom + margin
                stalled = False
            else:
                stalled = True
        else:
            stalled = False
        f_t, g_t, gtd_t = probe(t)
        evals += 1
        iters += 1
        cur = [t, f_t, g_t, gtd_t]
        if f_t > f + c1 * t * gtd or f_t >= bracket[low][1]:
            bracket[high] = cur
            low, high = (0, 1) if bracket[0][1] <= bracket[1][1] else (1, 0)
        else:
            if abs(gtd_t) <= -c2 * gtd:
                done = True
            elif gtd_t * (bracket[high][0] - bracket[low][0]) >= 0:
                bracket[high] = bracket[low]
            bracket[low] = cur
    t, f_t, g_t, _ = bracket[low]
    return f_t, g_t, t, evals


def torch_lbfgs(lr=1.0, max_iter=20, max_eval=None, tolerance_grad=1e-7, tolerance_change=1e-9, history_size=100,
                line_search_fn=None):
    """torch.optim.LBFGS (its source read for the facts), one ``step(closure)`` per ``update``.

    Unlike the references above, ``update(value_and_grad, state, x)`` takes the
    objective ``value_and_grad(x) -> (value, grad)`` over the flat float64
    parameter vector ``x`` and returns ``(x_next - x, state)``. Per step: evaluate
    at ``x``; stop if ``max|g| <= tolerance_grad``; else up to ``max_iter``
    iterations of: curvature pair ``(y, s) = (g - g_prev, t d)`` kept when
    ``y.s > 1e-10`` (oldest dropped beyond ``history_size``; ``H = y.s / y.y``),
    ``d = -H_k g`` by the two-loop recursion, step ``t = min(1, 1/|g|_1) lr`` on
    the very first iteration and ``lr`` after, then a fixed step (with a fresh
    evaluation except on the last iteration) or torch's strong-Wolfe search;
    stop on ``max_iter``, ``max_eval`` evaluations, ``max|g| <= tolerance_grad``,
    ``max|t d| <= tolerance_change`` or a loss change below ``tolerance_change``.
    """
    if max_eval is None:
        max_eval = max_iter * 5 // 4

    def init(x):
        return {"func_evals": 0, "n_iter": 0, "d": None, "t": None, "dirs": [], "stps": [], "ro": [],
                "H_diag": 1.0, "prev_grad": None, "prev_loss": None}

    def update(value_and_grad, state, x):
        state = dict(state, dirs=list(state["dirs"]), stps=list(state["stps"]), ro=list(state["ro"]))
        x0 = np.asarray(x, np.float64)
        x = x0.copy()
        loss, grad = value_and_grad(x)
        loss, grad = float(loss), np.asarray(grad, np.float64)
        evals = 1
        state["func_evals"] += 1
        if np.max(np.abs(grad)) <= tolerance_grad:
            return x - x0, state
        d, t = state["d"], state["t"]
        iteration = 0
        while iteration < max_iter:
            iteration += 1
            state["n_iter"] += 1
            if state["n_iter"] == 1:
                d = -grad
                state.update(dirs=[], stps=[], ro=[], H_diag=1.0)
            else:
                y = grad - state["prev_grad"]
                s = d * t
                ys = float(y @ s)
                if ys > 1e-10:
                    if len(state["dirs"]) == history_size:
                        for key in ("dirs", "stps", "ro"):
                            state[key].pop(0)
                    state["dirs"].append(y)
                    state["stps"].append(s)
                    state["ro"].append(1.0 / ys)
                    state["H_diag"] = ys / float(y @ y)
                dirs, stps, ro = state["dirs"], state["stps"], state["ro"]
                alpha = [0.0] * len(dirs)
                q = -grad
                for i in reversed(range(len(dirs))):
                    alpha[i] = float(stps[i] @ q) * ro[i]
                    q = q - alpha[i] * dirs[i]
                r = q * state["H_diag"]
                for i in range(len(dirs)):
                    beta = float(dirs[i] @ r) * ro[i]
                    r = r + (alpha[i] - beta) * stps[i]
                d = r
            state["prev_grad"] = grad.copy()
            state["prev_loss"] = prev_loss = loss
            t = (min(1.0, 1.0 / float(np.sum(np.abs(grad)))) * lr) if state["n_iter"] == 1 else lr
            gtd = float(grad @ d)
            if gtd > -tolerance_change:
                break
            spent = 0
            if line_search_fn == "strong_wolfe":
                loss, grad, t, spent = _strong_wolfe_search(value_and_grad, x, t, d, loss, grad, gtd, max_eval - evals)
                x = x + t * d
                optimal = np.max(np.abs(grad)) <= tolerance_grad
            else:
                x = x + t * d
                if iteration != max_iter:
                    loss, grad = value_and_grad(x)
                    loss, grad = float(loss), np.asarray(grad, np.float64)
                    optimal = np.max(np.abs(grad)) <= tolerance_grad
                    spent = 1
            evals += spent
            state["func_evals"] += spent
            if iteration == max_iter or evals >= max_eval or optimal:
                break
            if np.max(np.abs(d * t)) <= tolerance_change or abs(loss - prev_loss) < tolerance_change:
                break
        state.update(d=d, t=t)
        return x - x0, state

    return Reference(init, update)


def sign_sgd(learning_rate, momentum=0.0):
    """signSGD and Signum, Bernstein et al. (2018), Algorithms 1 and 2 (momentum=0 is signSGD).

    signSGD: p <- p - lr * sign(g).  Signum: m_t = beta m_{t-1} + (1 - beta) g,  m_0 = 0;  p <- p - lr * sign(m_t).
    """

    def init(params):
        return {"m": np.zeros_like(params)}

    def update(g, state, params, t):
        m = momentum * state["m"] + (1 - momentum) * g
        return -schedule_value(learning_rate, t) * np.sign(m), {"m": m}

    return Reference(init, update)


def lion(learning_rate, b1=0.9, b2=0.99, weight_decay=0.0, mode="hard", smooth_beta=1.0):
    """Lion, Chen et al. (2023), Algorithm 2, with Optax's "smooth" and "refined" variants of the sign.

    c = b1 m + (1 - b1) g;  u = sign(c) (hard), tanh(smooth_beta c) (smooth), c if |c| < 1 else sign(c) (refined);
    m <- b2 m + (1 - b2) g;  p <- p - lr * (u + weight_decay * p).
    """

    def init(params):
        return {"m": np.zeros_like(params)}

    def update(g, state, params, t):
        c = b1 * state["m"] + (1 - b1) * g
        if mode == "hard":
            u = np.sign(c)
        elif mode == "smooth":
            u = np.tanh(smooth_beta * c)
        else:
            u = np.where(np.abs(c) < 1, c, np.sign(c))
        m = b2 * state["m"] + (1 - b2) * g
        return -schedule_value(learning_rate, t) * (u + weight_decay * params), {"m": m}

    return Reference(init, update)


def yogi(learning_rate, b1=0.9, b2=0.999, eps=1e-3, eps_root=0.0, initial_accumulator_value=1e-6):
    """Yogi, Zaheer et al. (2018), Algorithm 2, with Adam's bias correction as Optax applies it.

    m = b1 m + (1 - b1) g;  v = v - (1 - b2) sign(v - g^2) g^2  (m_0 = v_0 = initial_accumulator_value);
    p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t) + eps_root) + eps).
    """

    def init(params):
        return {"m": np.full_like(params, initial_accumulator_value), "v": np.full_like(params, initial_accumulator_value)}

    def update(g, state, params, t):
        m = b1 * state["m"] + (1 - b1) * g
        v = state["v"] - (1 - b2) * np.sign(state["v"] - g * g) * g * g
        step = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t) + eps_root) + eps)
        return -schedule_value(learning_rate, t) * step, {"m": m, "v": v}

    return Reference(init, update)


def adabelief(learning_rate, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16, nesterov=False):
    """AdaBelief, Zhuang et al. (2020), Algorithm 2, with Optax's Nesterov form.

    m = b1 m + (1 - b1) g;  s = b2 s + (1 - b2) (g - m)^2 + eps_root;  m_hat = m / (1 - b1^t)
    (Nesterov: b1 m / (1 - b1^(t+1)) + (1 - b1) g / (1 - b1^t));  p <- p - lr m_hat / (sqrt(s / (1 - b2^t)) + eps).
    """

    def init(params):
        return {"m": np.zeros_like(params), "s": np.zeros_like(params)}

    def update(g, state, params, t):
        m = b1 * state["m"] + (1 - b1) * g
        s = b2 * state["s"] + (1 - b2) * (g - m) ** 2 + eps_root
        if nesterov:
            m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        else:
            m_hat = m / (1 - b1**t)
        step = m_hat / (np.sqrt(s / (1 - b2**t)) + eps)
        return -schedule_value(learning_rate, t) * step, {"m": m, "s": s}

    return Reference(init, update)


def adamax(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    """Adamax, Kingma & Ba (2015), Algorithm 2, with eps inside the maximum and Optax's decoupled decay.

    m = b1 m + (1 - b1) g;  u = max(b2 u, |g| + eps);  p <- p - lr * (m / ((1 - b1^t) u) + weight_decay * p).
    """

    def init(params):
        return {"m": np.zeros_like(params), "u": np.zeros_like(params)}

    def update(g, state, params, t):
        m = b1 * state["m"] + (1 - b1) * g
        u = np.maximum(b2 * state["u"], np.abs(g) + eps)
        return -schedule_value(learning_rate, t) * (m / ((1 - b1**t) * u) + weight_decay * params), {"m": m, "u": u}

    return Reference(init, update)


def radam(learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, threshold=5.0, nesterov=False):
    """Rectified Adam, Liu et al. (2020), Algorithm 2, in Optax's form (eps after the bias correction).

    rho_inf = 2 / (1 - b2) - 1;  rho_t = rho_inf - 2 t b2^t / (1 - b2^t);  m_hat, v_hat as in Adam (NAdam form
    with nesterov);  if rho_t >= threshold: p -= lr r_t m_hat / (sqrt(v_hat + eps_root) + eps), with
    r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t)); else p -= lr m_hat.
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
        rho_inf = 2 / (1 - b2) - 1
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho >= threshold:
            r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            step = r * m_hat / (np.sqrt(v_hat + eps_root) + eps)
        else:
            step = m_hat
        return -schedule_value(learning_rate, t) * step, {"m": m, "v": v}

    return Reference(init, update)


def novograd(learning_rate, b1=0.9, b2=0.25, eps=1e-6, eps_root=0.0, weight_decay=0.0):
    """NovoGrad, Ginsburg et al. (2019), Algorithm 1, one layer per array, with Optax's eps_root.

    v_1 = ||g_1||^2, v_t = b2 v + (1 - b2) ||g_t||^2 (a scalar per array);
    d_t = g_t / (sqrt(v_t + eps_root) + eps) + wd p;  m_1 = d_1, m_t = b1 m + d_t;  p <- p - lr m_t.
    """

    def init(params):
        return {"m": None, "v": None}

    def update(g, state, params, t):
        norm_sq = float(np.sum(g * g))
        v = norm_sq if state["v"] is None else b2 * state["v"] + (1 - b2) * norm_sq
        d = g / (np.sqrt(v + eps_root) + eps) + schedule_value(weight_decay, t) * params
        m = d if state["m"] is None else b1 * state["m"] + d
        return -schedule_value(learning_rate, t) * m, {"m": m, "v": v}

    return Reference(init, update)


def fromage(learning_rate, min_norm=1e-6):
    """Fromage, Bernstein et al. (2020), Algorithm 1, per array, norms floored at min_norm (LARS-style ratio).

    p <- (p - lr * (max(||p||, min_norm) / max(||g||, min_norm)) * g) / sqrt(1 + lr^2).
    """

    def update(g, state, params, t):
        lr = schedule_value(learning_rate, t)
        p_norm = max(float(np.linalg.norm(params)), min_norm)
        g_norm = max(float(np.linalg.norm(g)), min_norm)
        ratio = 1.0 if p_norm == 0 or g_norm == 0 else p_norm / g_norm
        return (params - lr * ratio * g) / np.sqrt(1 + lr * lr) - params, state

    return Reference(lambda params: {}, update)


def param_block_norm_sgd(learning_rate, min_scale=1e-3):
    """SGD with the step of each array scaled by its parameter norm: p <- p - lr * max(||p||, min_scale) * g."""

    def update(g, state, params, t):
        scale = max(float(np.linalg.norm(params)), min_scale)
        return -schedule_value(learning_rate, t) * scale * g, state

    return Reference(lambda params: {}, update)


def adan(learning_rate, b1=0.98, b2=0.92, b3=0.99, eps=1e-8, eps_root=1e-8, weight_decay=0.0):
    """Adan, Xie et al. (2022), Algorithm 1, in decay form (b = 1 - the paper's beta, so its 1 - beta_2 is b2) with
    zero-started, bias-corrected moments as in the authors' code (sail-sg/Adan: grad + beta2 * diff, exp_avg / bc1 +
    beta2 * exp_avg_diff / bc2), and decoupled decay (their no_prox=True, Optax's form).

    d = g - g_prev (0 at t = 1);  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) d;  n = b3 n + (1 - b3) (g + b2 d)^2;
    p <- p - lr * ((m / (1 - b1^t) + b2 v / (1 - b2^t)) / (sqrt(n / (1 - b3^t) + eps_root) + eps) + weight_decay * p).
    """

    def init(params):
        return {"m": np.zeros_like(params), "v": np.zeros_like(params), "n": np.zeros_like(params), "g": None}

    def update(g, state, params, t):
        d = np.zeros_like(g) if state["g"] is None else g - state["g"]
        m = b1 * state["m"] + (1 - b1) * g
        v = b2 * state["v"] + (1 - b2) * d
        n = b3 * state["n"] + (1 - b3) * np.abs(g + b2 * d) ** 2
        direction = (m / (1 - b1**t) + b2 * v / (1 - b2**t)) / (np.sqrt(n / (1 - b3**t) + eps_root) + eps)
        return -schedule_value(learning_rate, t) * (direction + weight_decay * params), {"m": m, "v": v, "n": n, "g": g}

    return Reference(init, update)


def ema(learning_rate, decay, debias=True):
    """Optax's ``ema`` followed by a descent step: m_t = decay m_{t-1} + (1 - decay) g, m_0 = 0;
    p <- p - lr * m_t / (1 - decay^t) (debiased) or p - lr * m_t."""

    def init(params):
        return {"m": np.zeros_like(params)}

    def update(g, state, params, t):
        m = decay * state["m"] + (1 - decay) * g
        direction = m / (1 - decay**t) if debias else m
        return -schedule_value(learning_rate, t) * direction, {"m": m}

    return Reference(init, update)


# ---------------------------------------------------------------------------
# Issue 17 families: each section is written by its family's author.
# ---------------------------------------------------------------------------
# === factored: adafactor, scale_by_factored_rms, sm3 ===
def _largest_two_axes(shape, min_dim_size_to_factor):
    # Optax's documented choice: factor over the two largest dims when both have min_dim_size_to_factor entries.
    if len(shape) < 2:
        return None
    order = np.argsort(shape)
    return (int(order[-2]), int(order[-1])) if shape[order[-2]] >= min_dim_size_to_factor else None


def adafactor(learning_rate=None, min_dim_size_to_factor=128, decay_rate=0.8, decay_offset=0,
              multiply_by_parameter_scale=True, clipping_threshold=1.0, momentum=None, weight_decay_rate=None,
              eps=1e-30, factored=True):
    """Adafactor, Shazeer & Stern (2018), Algorithms 4 and 5, composed as Optax documents it.

    beta2_t = 1 - (t - offset)^(-c);  G = g^2 + eps;  for a factored param (axes i, j = second largest,
    largest): R = beta2 R + (1 - beta2) sum_j G,  C = beta2 C + (1 - beta2) sum_i G,  V = R C / sum_i R;
    else V = beta2 V + (1 - beta2) G;  U = g / sqrt(V);  U <- U / max(1, RMS(U) / d);  U <- lr U;
    U <- max(1e-3, RMS(p)) U;  m = beta m + (1 - beta) U (momentum);  p <- p - (m or U) - wd p.
    """

    def init(params):
        axes = _largest_two_axes(params.shape, min_dim_size_to_factor) if factored else None
        if axes is None:
            return {"V": np.zeros_like(params), "m": np.zeros_like(params)}
        i, j = axes
        return {"R": np.zeros(np.delete(params.shape, j)), "C": np.zeros(np.delete(params.shape, i)), "m": np.zeros_like(params)}

    def update(g, state, p, t):
        beta2 = 1 - (t - decay_offset) ** (-decay_rate)
        G = g * g + eps
        state = dict(state)
        if "V" in state:
            state["V"] = beta2 * state["V"] + (1 - beta2) * G
            V = state["V"]
        else:
            i, j = _largest_two_axes(p.shape, min_dim_size_to_factor)
            state["R"] = beta2 * state["R"] + (1 - beta2) * np.sum(G, axis=j)
            state["C"] = beta2 * state["C"] + (1 - beta2) * np.sum(G, axis=i)
            row_total = np.sum(state["R"], axis=i if i < j else i - 1, keepdims=True)
            V = np.expand_dims(state["R"] / row_total, j) * np.expand_dims(state["C"], i)
        U = g / np.sqrt(V)
        if clipping_threshold is not None:
            U = U / max(1.0, np.sqrt(np.mean(U * U)) / clipping_threshold)
        if learning_rate is not None:
            U = schedule_value(learning_rate, t) * U
        if multiply_by_parameter_scale:
            U = max(1e-3, np.sqrt(np.mean(p * p))) * U
        if momentum is not None:
            state["m"] = momentum * state["m"] + (1 - momentum) * U
            U = state["m"]
        if weight_decay_rate is not None:
            U = U + schedule_value(weight_decay_rate, t) * p
        return -U, state

    return Reference(init, update)


def sm3(learning_rate, momentum=0.9, b2=1.0, eps=1e-8):
    """SM3-II, Anil et al. (2019), Algorithm 2, with the cover {slices along each axis} and momentum.

    nu(i) = c g(i)^2 + b2 min_{r: S_r contains i} mu(r)  (c = 1 if b2 = 1 else 1 - b2);  mu(r) = max_{i in S_r} nu(i);
    m = momentum m + (1 - momentum) g / sqrt(nu + eps)  (0 where nu = 0);  p <- p - lr m.
    A scalar or vector keeps nu itself (each entry is its own set).
    """

    def init(params):
        mu = [np.zeros(n) for n in params.shape] if params.ndim >= 2 else [np.zeros_like(params)]
        return {"mu": mu, "m": np.zeros_like(params)}

    def update(g, state, p, t):
        if p.ndim >= 2:
            broadcast = [mu.reshape([n if a == axis else 1 for a, n in enumerate(p.shape)]) for axis, (mu, n) in enumerate(zip(state["mu"], p.shape))]
            smallest = np.minimum.reduce(np.broadcast_arrays(*broadcast))
        else:
            smallest = state["mu"][0]
        nu = (1.0 if b2 == 1.0 else 1.0 - b2) * g * g + b2 * smallest
        if p.ndim >= 2:
            mu = [np.max(nu, axis=tuple(b for b in range(p.ndim) if b != a)) for a in range(p.ndim)]
        else:
            mu = [nu]
        scaled = np.where(nu > 0, g / np.sqrt(np.where(nu > 0, nu, 1.0) + eps), 0.0)
        m = momentum * state["m"] + (1 - momentum) * scaled
        return -learning_rate * m, {"mu": mu, "m": m}

    return Reference(init, update)


# === linesearch: lbfgs, backtracking, zoom ===

def lbfgs_direction(g, pairs, gamma):
    """H g by the two-loop recursion (Nocedal & Wright, Algorithm 7.4); ``pairs`` are (s, y), oldest first."""
    rhos = [0.0 if y @ s == 0 else 1.0 / (y @ s) for s, y in pairs]
    q, alphas = g.copy(), []
    for (s, y), rho in reversed(list(zip(pairs, rhos))):
        alphas.append(rho * (s @ q))
        q = q - alphas[-1] * y
    r = gamma * q
    for (s, y), rho, alpha in zip(pairs, rhos, reversed(alphas)):
        r = r + (alpha - rho * (y @ r)) * s
    return r


def armijo_backtracking(f, x, d, value, slope, first, max_steps, c, shrink, atol, rtol):
    """Nocedal & Wright's Algorithm 3.1 with Optax's tolerances: (step, value at the last trial).

    ``max_steps`` reductions at most after the first trial; a step whose trials were all non-finite is 0."""
    eta = first
    for i in range(max_steps + 1):
        eta = eta * shrink if i > 0 else eta
        trial = f(x + eta * d)
        error = trial - (1.0 + rtol) * value - eta * c * slope
        error = np.inf if np.isnan(error) else max(error, 0.0)
        if error <= atol:
            break
    return (0.0 if np.isinf(error) else eta), trial, x + eta * d


def zoom_linesearch(f, grad, x, d, value, g, guess, max_steps, max_lr=None, tol=0.0, growth=2.0, c1=1e-4, c2=0.9,
                    c3=1e-6, precision=1e-5):
    """A step meeting the strong Wolfe conditions (Nocedal & Wright, Algorithms 3.5 and 3.6), as Optax documents it:
    Hager and Zhang's approximate decrease near a minimizer (c3), cubic, then quadratic, then bisection
    interpolation, and the best step with sufficient decrease when the trials run out. Returns (step, value, grad)."""
    slope0 = d @ g

    def errors(eta, v, dv):
        dec = v - value - c1 * eta * slope0
        if c3 is not None:
            dec = min(max(dv - (2 * c1 - 1.0) * slope0, v - value - c3 * abs(value)), dec)
        dec = np.inf if np.isnan(dec) else max(dec, 0.0)
        curv = abs(dv) - c2 * abs(slope0)
        curv = np.inf if np.isnan(curv) else max(curv, 0.0)
        return dec, curv

    def cubic_min(a, fa, fpa, b, fb, c, fc):  # the cubic through the three points with slope fpa at a
        with np.errstate(all="ignore"):
            db, dc = b - a, c - a
            coef3, coef2 = np.linalg.solve([[db**3, db**2], [dc**3, dc**2]], [fb - fa - fpa * db, fc - fa - fpa * dc]) \
                if db * dc * (db - dc) != 0 else (np.nan, np.nan)
            return a + (-coef2 + np.sqrt(coef2**2 - 3 * coef3 * fpa)) / (3 * coef3)

    def quad_min(a, fa, fpa, b, fb):
        with np.errstate(all="ignore"):
            return a - fpa / (2 * (fb - fa - fpa * (b - a)) / (b - a) ** 2)

    last = (0.0, value, g, slope0)  # the previous trial: step, value, grad, slope
    safe = (0.0, value, g)
    lo = hi = ref = None
    found = False
    for count in range(max_steps):
        if not found:  # bracketing
            eta = guess if count == 0 else growth * last[0]
            at_max = max_lr is not None and eta >= max_lr
            eta = min(eta, max_lr) if max_lr is not None else eta
        else:  # zooming
            width, left, right = abs(hi[0] - lo[0]), min(hi[0], lo[0]), max(hi[0], lo[0])
            cubic = cubic_min(*lo, hi[0], hi[1], *ref)
            quad = quad_min(*lo, hi[0], hi[1])
            if left + 0.2 * width < cubic < right - 0.2 * width:
                eta = cubic
            elif left + 0.1 * width < quad < right - 0.1 * width:
                eta = quad
            else:
                eta = (lo[0] + hi[0]) / 2
        v, gv = f(x + eta * d), grad(x + eta * d)
        dv = gv @ d
        dec, curv = errors(eta, v, dv)
        ok = max(dec, curv) <= tol
        if not found:
            if dec <= tol:
                safe = (eta, v, gv)
            high_new = dec > 0 or (v >= last[1] and count > 0)
            low_new = dv >= 0 and not high_new
            new, prev = (eta, v, dv), (last[0], last[1], last[3])
            lo, hi = (new, prev) if low_new else (prev, new)
            ref = lo[:2]
            found = high_new or low_new or ok
            done = ok or (at_max and not found)
            stop = False
        else:
            if dec <= tol and v < safe[1]:
                safe = (eta, v, gv)
            done = ok
            high_new = dec > 0 or v >= lo[1]
            high_to_low = dv * (hi[0] - lo[0]) >= 0 and not high_new
            ref = hi[:2] if high_new or high_to_low else lo[:2]
            new = (eta, v, dv)
            lo, hi = (lo if high_new else new), (lo if high_to_low else new if high_new else hi)
            stop = width <= precision and safe[0] > 0
        last = (eta, v, gv, dv)
        if done:
            return eta, v, gv
        if count + 1 >= max_steps or stop:
            return safe if safe[0] > 0 or np.isinf(dec) else (eta, v, gv)
    return eta, v, gv


def linesearch_descent(f, grad, x, steps, *, lbfgs_memory=None, scale_init_precond=True, learning_rate=None,
                       search=None, **options):
    """Iterates of x <- x + eta * rate * d: d = -H g (L-BFGS with ``lbfgs_memory`` pairs) or -g (``None``), eta from
    ``search`` ("zoom", "backtracking" or None for 1), the value and gradient reused from the search when finite."""
    iterates, pairs, previous = [], [], None
    value, g = f(x), grad(x)
    eta_last = 1.0
    for k in range(steps):
        if lbfgs_memory is None:
            direction = g
        else:
            if previous is not None:
                pairs = (pairs + [(x - previous[0], g - previous[1])])[-lbfgs_memory:]
            s, y = pairs[-1] if pairs else (None, None)
            if not scale_init_precond:
                gamma = 1.0
            elif k == 0:
                gamma = min(1.0, 1.0 / np.linalg.norm(g))
            else:
                gamma = (s @ y) / (y @ y) if y @ y > 0 else 1.0
            direction = lbfgs_direction(g, pairs, gamma)
            previous = (x, g)
        d = -(1.0 if learning_rate is None else learning_rate) * direction
        if search is None:
            x = x + d
            value, g = f(x), grad(x)
        elif search == "zoom":
            guess = eta_last if options.get("initial_guess_strategy", "keep") == "keep" else 1.0
            zoom = {k: v for k, v in options.items() if k != "initial_guess_strategy"}
            eta_last, new_value, new_g = zoom_linesearch(f, grad, x, d, value, g, guess, **zoom)
            x = x + eta_last * d
            value, g = (new_value, new_g) if np.isfinite(new_value) else (f(x), grad(x))
        else:  # backtracking, the gradient kept at the last trial (store_grad=True)
            o = dict(max_lr=1.0, growth=1.5, c=1e-4, shrink=0.8, atol=0.0, rtol=0.0) | options
            first = min(o["growth"] * eta_last, o["max_lr"])
            eta_last, new_value, trial = armijo_backtracking(f, x, d, value, d @ g, first, o["max_steps"], o["c"],
                                                             o["shrink"], o["atol"], o["rtol"])
            x = x + eta_last * d
            value, g = (new_value, grad(trial)) if np.isfinite(new_value) else (f(x), grad(x))
        iterates.append(x)
    return iterates

# === noise, optimistic, polyak, distance over gradients ===
def noisy_sgd(learning_rate, eta, gamma, draws):
    """Neelakantan et al. (2015): p <- p - lr (g + sigma_t xi_t), sigma_t^2 = eta / t^gamma (t = 1, 2, ...).

    ``draws[t - 1]`` is the standard normal sample xi_t of this array at step t (the random source is the caller's).
    """

    def init(params):
        return {}

    def update(g, state, params, t):
        sigma = np.sqrt(eta / t**gamma)
        return -schedule_value(learning_rate, t) * (g + sigma * np.asarray(draws[t - 1], np.float64)), state

    return Reference(init, update)


def optimistic_gradient(learning_rate, alpha=1.0, beta=1.0):
    """Generalized optimistic gradient descent (Mokhtari et al. 2019): u_t = (alpha + beta) g_t - beta g_{t-1},
    with g_0 = g_1; p <- p - lr u_t."""

    def init(params):
        return {"prev": None}

    def update(g, state, params, t):
        prev = g if state["prev"] is None else state["prev"]
        return -schedule_value(learning_rate, t) * ((alpha + beta) * g - beta * prev), {"prev": g}

    return Reference(init, update)


def optimistic_adam(learning_rate, alpha=1.0, beta=1.0, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, nesterov=True):
    """Optimistic Adam (Daskalakis et al. 2018) as Optax documents it: r_t is Adam's ratio
    m_hat / (sqrt(v_hat + eps_root) + eps) (``adam`` above, NAdam's m_hat when nesterov);
    p <- p - lr ((alpha + beta) r_t - beta r_{t-1}), r_0 = r_1. Optax's first interface
    ``optimistic_adam(lr, o)`` is this with lr = 1, alpha = lr, beta = o."""
    ratio = adam(-1.0, b1, b2, eps, eps_root, nesterov)  # a learning rate of -1: the update is the ratio itself
    outer = optimistic_gradient(learning_rate, alpha, beta)

    def init(params):
        return {"adam": ratio.init(params), "optimistic": outer.init(params)}

    def update(g, state, params, t):
        r, adam_state = ratio.update(g, state["adam"], params, t)
        delta, optimistic_state = outer.update(r, state["optimistic"], params, t)
        return delta, {"adam": adam_state, "optimistic": optimistic_state}

    return Reference(init, update)


def distance_over_gradients(reps_rel=1e-6, eps=1e-8, global_scale=1.0):
    """Layer-wise DoG (Ivgi et al. 2023), per array: r_0 = reps_rel (1 + ||x_0||), r_t = max(r_{t-1}, ||x_t - x_0||),
    G_t = G_{t-1} + ||g_t||^2, update = global_scale r_t / sqrt(G_t + eps) g_t (added to the params)."""

    def init(params):
        return {"x0": params.copy(), "r": reps_rel * (1 + np.linalg.norm(params)), "G": 0.0}

    def update(g, state, params, t):
        r = max(state["r"], np.linalg.norm(params - state["x0"]))
        G = state["G"] + np.sum(g * g)
        return global_scale * r / np.sqrt(G + eps) * g, {"x0": state["x0"], "r": r, "G": G}

    return Reference(init, update)


def polyak_sgd_step(grads, value, t, max_learning_rate=1.0, scaling=1.0, f_min=0.0, eps=0.0, variant="sps"):
    """One step of SGD with the stochastic Polyak step (Loizou et al. 2021; "sps+": Garrigos et al. 2023) over
    a whole list of arrays, in Optax's recipe: the direction d = -s g (s the scaling), then
    gamma = min((f - f*) / (||d||^2 + eps), gamma_max) ((f - f*)_+ for sps+), and 0 when ||d||^2 + eps is at
    most float64's machine epsilon; returns the deltas gamma d. With s = 1 this is the paper's step."""
    d = [-schedule_value(scaling, t) * np.asarray(g, np.float64) for g in grads]
    norm_sq = sum(float(np.sum(x * x)) for x in d)
    gap = value - f_min
    if variant == "sps+":
        gap = max(gap, 0.0)
    gamma = 0.0 if norm_sq + eps <= np.finfo(np.float64).eps else min(gap / (norm_sq + eps), max_learning_rate)
    return [gamma * x for x in d]


# === rprop (Optax), scale_gradient, normalize_by_update_norm, centralize, constraints ===
def optax_rprop(learning_rate, eta_minus=0.5, eta_plus=1.2, min_step_size=1e-6, max_step_size=50.0):
    """Rprop (Riedmiller & Braun 1993) in Optax's documented form, one step late: s = g * p_prev;
    step = step where s == 0, else clip(step * (eta+ if s > 0 else eta-), min, max);
    p = 0 where s < 0 else step * sign(g); the param moves by -(0 where s < 0 else p_prev)
    (step starts at learning_rate, p_prev at 0)."""

    def init(params):
        return {"step": np.full_like(params, learning_rate), "prev": np.zeros_like(params)}

    def update(g, state, p, t):
        s = g * state["prev"]
        grown = np.clip(state["step"] * np.where(s > 0, eta_plus, eta_minus), min_step_size, max_step_size)
        step = np.where(s == 0, state["step"], grown)
        delta = -np.where(s < 0, 0.0, state["prev"])
        return delta, {"step": step, "prev": np.where(s < 0, 0.0, step * np.sign(g))}

    return Reference(init, update)


def centralized_sgd(learning_rate):
    """Gradient centralization (Yong et al. 2020) then SGD: for two or more dimensions,
    g <- g - mean of g over all axes but the first (each row its own mean); p <- p - lr g."""

    def init(params):
        return {}

    def update(g, state, p, t):
        if g.ndim > 1:
            g = g - g.mean(axis=tuple(range(1, g.ndim)), keepdims=True)
        return -learning_rate * g, state

    return Reference(init, update)


def nonnegative_sgd(learning_rate):
    """SGD projected onto p >= 0 (Optax's keep_params_nonnegative): p <- max(p - lr g, 0) where it would go
    below 0, i.e. the update is -p there."""

    def init(params):
        return {}

    def update(g, state, p, t):
        delta = -learning_rate * g
        return np.where(p + delta < 0, -p, delta), state

    return Reference(init, update)


def zero_nans_sgd(learning_rate):
    """SGD with every NaN in the gradient replaced by 0; the state records whether the last one had any."""

    def init(params):
        return {"found_nan": False}

    def update(g, state, p, t):
        nan = np.isnan(g)
        return -learning_rate * np.where(nan, 0.0, g), {"found_nan": bool(nan.any())}

    return Reference(init, update)


def normalized_gd(learning_rate, eps=1e-6):
    """Normalized gradient descent over a whole tree (a list of arrays): u = -lr g / (||g|| + eps), with
    ||g|| the Euclidean norm of all entries of all arrays together. Returns the list of updates."""

    def update(grads):
        norm = np.sqrt(sum(float(np.sum(np.square(g))) for g in grads))
        return [-learning_rate * g / (norm + eps) for g in grads]

    return update


# === conditional and monitoring wrappers ===


def apply_every_sgd(learning_rate, k):
    """Gradients summed over groups of k steps, the sum applied with SGD on the group's last step.

    Step t is position c = (t - 1) mod k of its group; a = g at c = 0, a + g after;
    p <- p - lr * a at c = k - 1, unchanged otherwise.
    """

    def init(params):
        return {"sum": np.zeros_like(params)}

    def update(g, state, params, t):
        position = (t - 1) % k
        total = g if position == 0 else state["sum"] + g
        delta = -learning_rate * total if position == k - 1 else np.zeros_like(params)
        return delta, {"sum": total}

    return Reference(init, update)


def polyak_average(iterates, initial, step_size):
    """Polyak & Juditsky's running average of the iterates: a <- alpha p + (1 - alpha) a, one per iterate."""
    averages, a = [], np.asarray(initial, np.float64)
    for p in iterates:
        a = step_size * np.asarray(p, np.float64) + (1 - step_size) * a
        averages.append(a)
    return averages


def target_copy(iterates, initial, period):
    """A DQN target network: after the n-th iterate (n = 1, 2, ...), a copy of it when n is a multiple of period."""
    copies, target = [], np.asarray(initial, np.float64)
    for n, p in enumerate(iterates, start=1):
        if n % period == 0:
            target = np.asarray(p, np.float64)
        copies.append(target)
    return copies


# === combinators, per-example clips, microbatch ===
def per_example_clipped_sum(grads, clip_norm):
    """DP-SGD's per-example clipping (Abadi et al. 2016): each example's global norm is
    ||g_b|| = sqrt(sum over leaves of sum g_b^2); it is scaled by min(1, C / ||g_b||) (1 where
    C / ||g_b|| is 0/0 or inf/inf), and the scaled examples are summed over the batch.
    ``grads`` is a list of arrays with the examples on axis 0; returns (sums, number clipped)."""
    norms = np.sqrt(sum(np.sum(np.reshape(g, (g.shape[0], -1)) ** 2, axis=1) for g in grads))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = clip_norm / norms
    scale = np.where(np.isnan(ratio), 1.0, np.minimum(ratio, 1.0))
    sums = [np.sum(scale.reshape((-1,) + (1,) * (g.ndim - 1)) * g, axis=0) for g in grads]
    return sums, int(np.sum(scale < 1.0))


def per_example_layer_clipped_sums(grads, clip_norm, uniform=True):
    """McMahan et al. (2018): leaf i of K (D_i elements per example, D in all) is clipped per
    example to C / sqrt(K) (uniform) or C sqrt(D_i / D); returns (sums, per-leaf numbers clipped)."""
    total = sum(g[0].size for g in grads)
    results = [
        per_example_clipped_sum([g], clip_norm / np.sqrt(len(grads)) if uniform else clip_norm * np.sqrt(g[0].size / total))
        for g in grads
    ]
    return [r[0][0] for r in results], [r[1] for r in results]


def microbatched(fun, batch, microbatch_size, kind):
    """A microbatched evaluation of ``fun`` over axis 0 of ``batch`` written out as a loop: microbatch m of n
    holds rows m, m + n, m + 2n, ... (a column-major split); the results are summed ('sum'), averaged ('mean'),
    running-averaged m_i = m_{i-1} i/(i+1) + x_i/(i+1) ('running_mean'), or their rows put back in batch order
    ('concat')."""
    n = batch.shape[0] // microbatch_size
    outputs = [np.asarray(fun(batch[m::n]), np.float64) for m in range(n)]
    if kind == "sum":
        return sum(outputs)
    if kind == "mean":
        return sum(outputs) / n
    if kind == "running_mean":
        mean = np.zeros_like(outputs[0])
        for i, x in enumerate(outputs):
            mean = mean * (i / (i + 1)) + x / (i + 1)
        return mean
    result = np.empty((batch.shape[0],) + outputs[0].shape[1:])
    for m, x in enumerate(outputs):
        result[m::n] = x
    return result


# === muon (Optax contrib) ===


def _muon_orthogonalize(m, coefficient_rows, preconditioning, eps):
    """Newton-Schulz on one matrix (Jordan et al. 2024), on its wide orientation, after the preconditioning:
    frobenius/spectral: X = M / (||M|| + eps); aol (Boissin et al. 2025): the first step's X and A = X X^T are
    rescaled by D = diag(1 / sqrt(max(sum_j |A_ij|, eps))) as D X, D A D; schatten (Grishina et al. 2025): by
    1 / sqrt(max(||A||_F, eps)). Each step: X <- a X + (b A + c A^2) X, A = X X^T."""
    tall = m.shape[0] > m.shape[1]
    x = m.T if tall else m
    if preconditioning == "frobenius":
        x = x / (np.linalg.norm(x) + eps)
    elif preconditioning == "spectral":
        x = x / (np.linalg.svd(x, compute_uv=False)[0] + eps)
    for k, (a, b, c) in enumerate(coefficient_rows):
        gram = x @ x.T
        if k == 0 and preconditioning == "aol":
            d = 1 / np.sqrt(np.maximum(np.abs(gram).sum(axis=1), eps))
            x, gram = d[:, None] * x, d[:, None] * gram * d[None, :]
        elif k == 0 and preconditioning == "schatten":
            scale = 1 / np.sqrt(max(np.linalg.norm(gram), eps))
            x, gram = scale * x, scale**2 * gram
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def muon(learning_rate, ns_coeffs=(3.4445, -4.775, 2.0315), ns_steps=5, beta=0.95, eps=1e-8, weight_decay=0.0,
         nesterov=True, adaptive=False, preconditioning="frobenius", adam_b1=0.9, adam_b2=0.999, adam_eps_root=0.0,
         adam_weight_decay=0.0, adam_learning_rate=None, consistent_rms=None, matrix_axes=None):
    """Muon (Jordan et al. 2024) as Optax documents optax.contrib.muon, for one leaf.

    A matrix (or, with matrix_axes = (reduction axes, output axes), a leaf of higher rank: a batch of
    fan-in x fan-out matrices over the other axes) gets m = beta m + (1 - beta) g;
    m_hat = beta m / (1 - beta^(t+1)) + (1 - beta) g / (1 - beta^t) (nesterov) or m / (1 - beta^t);
    O = NS(m_hat) per matrix, times <m_hat, O> (summed over the leaf) if adaptive (Bernstein & Newhouse 2024);
    p <- p - lr (s O + wd p), s = sqrt(max(1, fan_out / fan_in)) or consistent_rms sqrt(max(fan_in, fan_out))
    (Liu et al. 2025). Other leaves: AdamW in its NAdam form when nesterov (reference adam above).
    ns_coeffs: (a, b, c) for ns_steps steps, or rows (one per step).
    """
    rows = [ns_coeffs] * ns_steps if np.ndim(ns_coeffs) == 1 else list(ns_coeffs)[-ns_steps:]
    adam_rule = adam(learning_rate if adam_learning_rate is None else adam_learning_rate, adam_b1, adam_b2, eps,
                     adam_eps_root, nesterov, adam_weight_decay)

    def axes_of(p):
        if matrix_axes is None:
            return ((0,), (1,)) if p.ndim == 2 else None
        return matrix_axes if p.ndim > 2 else ((0,), (1,)) if p.ndim == 2 else None

    def init(params):
        return {"m": np.zeros_like(params)} if axes_of(params) else adam_rule.init(params)

    def update(g, state, p, t):
        axes = axes_of(p)
        if axes is None:
            return adam_rule.update(g, state, p, t)
        m = beta * state["m"] + (1 - beta) * g
        if nesterov:
            m_hat = beta * m / (1 - beta ** (t + 1)) + (1 - beta) * g / (1 - beta**t)
        else:
            m_hat = m / (1 - beta**t)
        reduction, output = axes
        batch = [a for a in range(p.ndim) if a not in reduction + output]
        order = batch + list(reduction) + list(output)
        fan_in, fan_out = (int(np.prod([p.shape[a] for a in axes_])) for axes_ in (reduction, output))
        stacked = m_hat.transpose(order).reshape(-1, fan_in, fan_out)
        o = np.stack([_muon_orthogonalize(x, rows, preconditioning, eps) for x in stacked])
        o = o.reshape([p.shape[a] for a in order]).transpose(np.argsort(order))
        if adaptive:
            o = np.sum(m_hat * o) * o
        s = np.sqrt(max(1, fan_out / fan_in)) if consistent_rms is None else consistent_rms * np.sqrt(max(fan_in, fan_out))
        return -schedule_value(learning_rate, t) * (s * o + weight_decay * p), {"m": m}

    return Reference(init, update)


# === schedule_free ===
def schedule_free(learning_rate, b1=0.9, weight_lr_power=2.0, weight_decay=0.0, adam=False, b2=0.999, eps=1e-8,
                  weight_rate=None):
    """Schedule-Free SGD / AdamW (Defazio et al. 2024, Algorithm 1), keeping the sequences x and z themselves.

    The params are y_t = (1 - b1) z_t + b1 x_t, where the gradient g_t is taken; with gamma_t the rate at step t,
      SGD:   z_{t+1} = z_t - gamma_t (g_t + wd y_t)
      AdamW: v_t = b2 v_{t-1} + (1 - b2) g_t^2,  z_{t+1} = z_t - gamma_t (g_t / (sqrt(v_t / (1 - b2^t)) + eps) + wd y_t)
      c_{t+1} = w_t / sum_{i<=t} w_i,  w_t = (max_{i<=t} rho_i)^p,  x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}.
    The weights follow the authors' implementation (largest rate so far, to the power p; the paper's
    Algorithm 1 is p = 2 without the max, and its bias correction sits in gamma_t). rho_t is the rate the
    weights read: gamma_t unless ``weight_rate(t)`` says otherwise (Optax reads a schedule at t, one ahead).
    """
    weight_rate = weight_rate or (lambda t: schedule_value(learning_rate, t))

    def init(params):
        return {"x": params.copy(), "z": params.copy(), "v": np.zeros_like(params), "max_rate": 0.0, "weights": 0.0}

    def update(g, state, y, t):
        gamma = schedule_value(learning_rate, t)
        if adam:
            v = b2 * state["v"] + (1 - b2) * g**2
            direction = g / (np.sqrt(v / (1 - b2**t)) + eps)
        else:
            v, direction = state["v"], g
        z = state["z"] - gamma * (direction + weight_decay * y)
        max_rate = max(state["max_rate"], weight_rate(t))
        weights = state["weights"] + max_rate**weight_lr_power
        c = max_rate**weight_lr_power / weights if weights > 0 else 0.0
        x = (1 - c) * state["x"] + c * z
        y_next = (1 - b1) * z + b1 * x
        return y_next - y, {"x": x, "z": z, "v": v, "max_rate": max_rate, "weights": weights}

    return Reference(init, update)



# === adopt, ademamix, acprop, madgrad ===
def adopt(learning_rate, b1=0.9, b2=0.9999, eps=1e-6, nesterov=False, use_clipping=True, clip_value=lambda k: k**0.25):
    """Taniguchi et al. (2024), ADOPT with its clipping stabilisation: v_0 = g_0^2 and no step on the first call;
    then x = clip(g_t / max(sqrt(v_{t-1}), eps), c) with c = clip_value(t - 1); m_t = b1 m + (1 - b1) x;
    p <- p - lr m_t (Nesterov: p <- p - lr (b1 m_t + (1 - b1) x)); v_t = b2 v + (1 - b2) g_t^2."""

    def init(params):
        return {"m": np.zeros_like(params), "v": None}

    def update(g, state, params, t):
        if state["v"] is None:
            return np.zeros_like(params), {"m": state["m"], "v": g * g}
        x = g / np.maximum(np.sqrt(state["v"]), eps)
        if use_clipping:
            x = np.clip(x, -clip_value(t - 1), clip_value(t - 1))
        m = b1 * state["m"] + (1 - b1) * x
        direction = b1 * m + (1 - b1) * x if nesterov else m
        v = b2 * state["v"] + (1 - b2) * g * g
        return -schedule_value(learning_rate, t) * direction, {"m": m, "v": v}

    return Reference(init, update)


def ademamix(learning_rate, b1=0.9, b2=0.999, b3=0.9999, alpha=5.0, eps=1e-8, eps_root=0.0, weight_decay=0.0):
    """Pagliardini et al. (2024), Algorithm 1: fast EMA m1 (bias-corrected), slow EMA m2 (not), Adam's nu;
    b3 and alpha may be schedules of the 0-based step t - 1;
    p <- p - lr ((m1_hat + alpha m2) / (sqrt(nu_hat + eps_root) + eps) + weight_decay p)."""

    def init(params):
        return {"m1": np.zeros_like(params), "m2": np.zeros_like(params), "nu": np.zeros_like(params)}

    def update(g, state, params, t):
        b3_t = schedule_value(b3, t)
        alpha_t = schedule_value(alpha, t)
        m1 = b1 * state["m1"] + (1 - b1) * g
        m2 = b3_t * state["m2"] + (1 - b3_t) * g
        nu = b2 * state["nu"] + (1 - b2) * g * g
        m1_hat, nu_hat = m1 / (1 - b1**t), nu / (1 - b2**t)
        direction = (m1_hat + alpha_t * m2) / (np.sqrt(nu_hat + eps_root) + eps) + weight_decay * params
        return -schedule_value(learning_rate, t) * direction, {"m1": m1, "m2": m2, "nu": nu}

    return Reference(init, update)


def simplified_ademamix(learning_rate, b1=0.99, b2=0.95, alpha=0.0, eps=1e-8, eps_root=0.0, weight_decay=0.0):
    """Morwani et al. (2025), simplified AdEMAMix: m_t = b1 m + g (no 1 - b1), n_t = b2 n + (1 - b2) g^2;
    p <- p - lr ((m_t + alpha g) / (sqrt(n_t / (1 - b2^t) + eps_root) + eps) + weight_decay p)."""

    def init(params):
        return {"m": np.zeros_like(params), "n": np.zeros_like(params)}

    def update(g, state, params, t):
        m = b1 * state["m"] + g
        n = b2 * state["n"] + (1 - b2) * g * g
        alpha_t = schedule_value(alpha, t)
        direction = (m + alpha_t * g) / (np.sqrt(n / (1 - b2**t) + eps_root) + eps) + weight_decay * params
        return -schedule_value(learning_rate, t) * direction, {"m": m, "n": n}

    return Reference(init, update)


def acprop(learning_rate, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16, weight_decay=0.0, center_on="current"):
    """Zhuang et al. (2021), ACProp (the authors' code without rectification, Optax's first step):
    m_t = b1 m + (1 - b1) g;  s_t = b2 s + (1 - b2) (g - m_t)^2 + eps_root;
    p <- p - lr (g / (sqrt(s_{t-1} / (1 - b2^(t-1))) + eps) + weight_decay p), and g / (1 + eps) at t = 1.
    ``center_on="previous"`` centres on m_{t-1} instead, as optax.contrib.scale_by_acprop's code does."""

    def init(params):
        return {"m": np.zeros_like(params), "s": np.zeros_like(params)}

    def update(g, state, params, t):
        m = b1 * state["m"] + (1 - b1) * g
        center = state["m"] if center_on == "previous" else m
        s = b2 * state["s"] + (1 - b2) * (g - center) ** 2 + eps_root
        denominator = 1.0 if t == 1 else np.sqrt(state["s"] / (1 - b2 ** (t - 1)))
        direction = g / (denominator + eps) + weight_decay * params
        return -schedule_value(learning_rate, t) * direction, {"m": m, "s": s}

    return Reference(init, update)


def madgrad(learning_rate, momentum=0.9, eps=1e-6, weight_decay=0.0):
    """Defazio & Jelassi (2021), Algorithm 1 (MADGRAD), with the authors' code's step size lr + eps and L2 decay:
    g <- g + wd x;  lam_k = (lr_k + eps) sqrt(k + 1), k = t - 1;  s += lam g;  nu += lam g^2;
    z = x_0 - s / (cbrt(nu) + eps);  x <- momentum x + (1 - momentum) z."""

    def init(params):
        return {"x0": params.copy(), "s": np.zeros_like(params), "nu": np.zeros_like(params)}

    def update(g, state, params, t):
        g = g + weight_decay * params
        lam = (schedule_value(learning_rate, t) + eps) * np.sqrt(t)
        s = state["s"] + lam * g
        nu = state["nu"] + lam * g * g
        z = state["x0"] - s / (np.cbrt(nu) + eps)
        new = momentum * params + (1 - momentum) * z
        return new - params, {"x0": state["x0"], "s": s, "nu": nu}

    return Reference(init, update)



# === prodigy, dadapt_adamw ===
# D-adaptation estimates one step size for the whole tree, so these references act on a LIST of arrays (the
# tree's leaves): update(grads, state, params, t) takes and returns lists (tests/test_d_adaptation.py runs them).


def _d_adapted_rate(learning_rate, d, t, b1, b2):
    """lambda_t = d_t alpha_t sqrt(1 - b2^t) / (1 - b1^t): the implementations' bias-corrected step size."""
    return d * schedule_value(learning_rate, t) * np.sqrt(1 - b2**t) / (1 - b1**t)


def prodigy(learning_rate=1.0, betas=(0.9, 0.999), beta3=None, eps=1e-8, estim_lr0=1e-6, estim_lr_coef=1.0,
            weight_decay=0.0, safeguard_warmup=False):
    """Mishchenko & Defazio (2023), Algorithm 4 (Prodigy, Adam version), over a list of arrays, with the
    reference implementation's bias correction in lambda_t, eps times d_{t+1}, estim_lr_coef c, safeguard_warmup
    (omega_t = d_t instead of lambda_t in s) and decoupled weight decay w:

    m = b1 m + (1 - b1) d g;  v = b2 v + (1 - b2) d^2 g^2;  r = b3 r + (1 - b3) d lambda <g, x0 - x>;
    s = b3 s + (1 - b3) d omega g;  d' = max(d, c r / |s|_1) (d while |s|_1 = 0);
    x <- x - lambda (m / (sqrt(v) + d' eps) + w x).
    """
    b1, b2 = betas
    b3 = np.sqrt(b2) if beta3 is None else beta3

    def init(params):
        zeros = [np.zeros_like(p) for p in params]
        return {"m": zeros, "v": list(zeros), "s": list(zeros), "x0": [p.copy() for p in params],
                "d": estim_lr0, "r": 0.0}

    def update(grads, state, params, t):
        d = state["d"]
        rate = _d_adapted_rate(learning_rate, d, t, b1, b2)
        omega = d if safeguard_warmup else rate
        inner = sum(float(np.sum(g * (x0 - x))) for g, x0, x in zip(grads, state["x0"], params))
        r = b3 * state["r"] + (1 - b3) * d * rate * inner
        m = [b1 * m + (1 - b1) * d * g for m, g in zip(state["m"], grads)]
        v = [b2 * v + (1 - b2) * d**2 * g**2 for v, g in zip(state["v"], grads)]
        s = [b3 * s + (1 - b3) * d * omega * g for s, g in zip(state["s"], grads)]
        l1 = sum(float(np.sum(np.abs(x))) for x in s)
        new_d = max(d, estim_lr_coef * r / l1) if l1 > 0 else d
        deltas = [-rate * (m_ / (np.sqrt(v_) + new_d * eps) + weight_decay * x) for m_, v_, x in zip(m, v, params)]
        return deltas, {"m": m, "v": v, "s": s, "x0": state["x0"], "d": new_d, "r": r}

    return Reference(init, update)


def dadapt_adamw(learning_rate=1.0, betas=(0.9, 0.999), eps=1e-8, estim_lr0=1e-6, weight_decay=0.0):
    """Defazio & Mishchenko (2023), the Adam variant of D-Adaptation, over a list of arrays, with the reference
    implementation's bias correction in lambda_t and decoupled weight decay w; gamma = sqrt(b2):

    r = gamma r + (1 - gamma) lambda <g, s / (sqrt(v) + eps)>  (s, v before this step);
    s = gamma s + (1 - gamma) lambda g;  m = b1 m + (1 - b1) lambda g;  v = b2 v + (1 - b2) g^2;
    d' = max(d, r / ((1 - gamma) |s|_1)) (d while |s|_1 = 0);  x <- x - m / (sqrt(v) + eps) - w lambda x.
    """
    b1, b2 = betas
    gamma = np.sqrt(b2)

    def init(params):
        zeros = [np.zeros_like(p) for p in params]
        return {"m": zeros, "v": list(zeros), "s": list(zeros), "d": estim_lr0, "r": 0.0}

    def update(grads, state, params, t):
        d = state["d"]
        rate = _d_adapted_rate(learning_rate, d, t, b1, b2)
        inner = sum(float(np.sum(g * s / (np.sqrt(v) + eps))) for g, s, v in zip(grads, state["s"], state["v"]))
        r = gamma * state["r"] + (1 - gamma) * rate * inner
        s = [gamma * s + (1 - gamma) * rate * g for s, g in zip(state["s"], grads)]
        m = [b1 * m + (1 - b1) * rate * g for m, g in zip(state["m"], grads)]
        v = [b2 * v + (1 - b2) * g**2 for v, g in zip(state["v"], grads)]
        l1 = sum(float(np.sum(np.abs(x))) for x in s)
        new_d = max(d, r / ((1 - gamma) * l1)) if l1 > 0 else d
        deltas = [-m_ / (np.sqrt(v_) + eps) - weight_decay * rate * x for m_, v_, x in zip(m, v, params)]
        return deltas, {"m": m, "v": v, "s": s, "d": new_d, "r": r}

    return Reference(init, update)



# === dog, dowg, cocob, mechanize ===
# Global rules (DoG, DoWG, Mechanic) are written over ONE vector: a params tree flattened into one array has
# the tree's norms and inner products. COCOB is per coordinate.
def dog(learning_rate=1.0, init_step=("heuristic", 1e-6), eps=1e-8, weight_decay=0.0):
    """DoG (Ivgi et al. 2023, Algorithm 1, with Optax's eps and first-step options):
    r_bar_t = max(r_bar_{t-1}, ||x_t - x_0||), r_bar_0 = r_eps (or a (1 + ||x_0||); 0 with a first learning rate);
    G_t = G_{t-1} + ||g_t||^2;  eta_t = r_bar_t / sqrt(G_t + eps) (eta_1 given for "learning_rate");
    x_{t+1} = x_t - lr eta_t (g_t + weight_decay x_t)."""
    kind, value = init_step

    def init(params):
        r0 = {"distance": value, "heuristic": value * (1 + np.linalg.norm(params)), "learning_rate": 0.0}[kind]
        return {"x0": params.copy(), "r": r0, "G": 0.0}

    def update(g, state, params, t):
        g = g + weight_decay * params
        r = max(state["r"], np.linalg.norm(params - state["x0"]))
        G = state["G"] + np.sum(g * g)
        eta = value if kind == "learning_rate" and t == 1 else r / np.sqrt(G + eps)
        return -schedule_value(learning_rate, t) * eta * g, {"x0": state["x0"], "r": r, "G": G}

    return Reference(init, update)


def dowg(learning_rate=1.0, init_estim_sq_dist=None, eps=1e-4, weight_decay=0.0):
    """DoWG (Khaled et al. 2023, Algorithm 1, with Optax's eps): r_bar_t = max(r_bar_{t-1}, ||x_t - x_0||),
    v_t = v_{t-1} + r_bar_t^2 ||g_t||^2, eta_t = r_bar_t^2 / (sqrt(v_t) + eps), r_bar_0^2 = init_estim_sq_dist or eps."""

    def init(params):
        r0 = np.sqrt(eps if init_estim_sq_dist is None else init_estim_sq_dist)
        return {"x0": params.copy(), "r": r0, "v": 0.0}

    def update(g, state, params, t):
        g = g + weight_decay * params
        r = max(state["r"], np.linalg.norm(params - state["x0"]))
        v = state["v"] + r**2 * np.sum(g * g)
        eta = r**2 / (np.sqrt(v) + eps)
        return -schedule_value(learning_rate, t) * eta * g, {"x0": state["x0"], "r": r, "v": v}

    return Reference(init, update)


def cocob(learning_rate=1.0, alpha=100.0, eps=1e-8, weight_decay=0.0):
    """COCOB-Backprop (Orabona & Tommasi 2017, Algorithm 2), per coordinate, on the negative gradient
    c = -lr (g + weight_decay w), with L_0 = eps (Optax's) instead of 0:
    L = max(L, |c|); G += |c|; Reward = max(Reward + (w_t - w_1) c, 0); theta += c;
    w_{t+1} = w_1 + theta / (L max(G + L, alpha L)) (L + Reward)."""

    def init(params):
        zeros = np.zeros_like(params)
        return {"w1": params.copy(), "L": np.full_like(params, eps), "G": zeros, "reward": zeros, "theta": zeros}

    def update(g, state, params, t):
        c = -schedule_value(learning_rate, t) * (g + weight_decay * params)
        L = np.maximum(state["L"], np.abs(c))
        G = state["G"] + np.abs(c)
        reward = np.maximum(state["reward"] + (params - state["w1"]) * c, 0.0)
        theta = state["theta"] + c
        w_next = state["w1"] + theta / (L * np.maximum(G + L, alpha * L)) * (L + reward)
        return w_next - params, {"w1": state["w1"], "L": L, "G": G, "reward": reward, "theta": theta}

    return Reference(init, update)


def mechanic(base, weight_decay=1e-2, eps=1e-8, s_init=1e-6, num_betas=6):
    """Mechanic (Cutkosky, Defazio & Mehta 2023, Algorithm 1) around the reference ``base`` (whose update u_t
    is added to the params), with Optax's additions: s_0 = s_init per beta, eps in m, h clipped to +-m_{t-1}.
    Delta_{t+1} = Delta_t + u_t;  g~ = g + lam S ||g|| / (||x|| + eps) x;  h = <g~, Delta_t>  (paper's sign);
    m = max(beta m, |h| + eps); v = beta^2 v + h^2; r = beta r - clip(h, m_{t-1}) s; W = s_init m / n + max(r, 0);
    s = W / (sqrt(v) + eps);  x_{t+1} = x_ref + (sum s) Delta_{t+1}, x_ref the params at the first step.
    Delta is kept exactly here (the paper's form); Optax recomputes it as (x_t - x_ref) / (S + eps).
    Complex params: h = Re<g~, Delta> (Re vdot), the inner product of the real pairs (Re, Im): the scalars stay
    real."""
    betas = np.array([1.0 - 0.1**i for i in range(1, num_betas + 1)])

    def init(params):
        zeros = np.zeros(num_betas)
        return {"base": base.init(params), "x_ref": None, "r": zeros, "m": zeros, "v": zeros,
                "s": np.full(num_betas, s_init)}

    def update(g, state, params, t):
        x_ref = params.copy() if state["x_ref"] is None else state["x_ref"]
        u, base_state = base.update(g, state["base"], params, t)
        S = np.sum(state["s"])
        delta = (params - x_ref) / (S + eps)  # Delta_t as Optax keeps it: exact up to the eps
        g = g + weight_decay * S * np.linalg.norm(g) / (np.linalg.norm(params) + eps) * params
        h = np.real(np.vdot(g, delta))
        m = np.maximum(betas * state["m"], np.abs(h) + eps)
        v = betas**2 * state["v"] + h**2
        r = betas * state["r"] - np.clip(h, -state["m"], state["m"]) * state["s"]
        s = (s_init / num_betas * m + np.maximum(r, 0.0)) / (np.sqrt(v) + eps)
        x_next = x_ref + np.sum(s) * (delta + u)
        return x_next - params, {"base": base_state, "x_ref": x_ref, "r": r, "m": m, "v": v, "s": s}

    return Reference(init, update)



# === momo, sophia ===
def momo(learning_rate=1.0, beta=0.9, lower_bound=0.0, weight_decay=0.0, adapt_lower_bound=False, adam=False,
         b2=0.999, eps=1e-8):
    """MoMo and MoMo-Adam (Schaipp et al. 2023, Algorithms 1-3, MoMo* for the bound), over ONE flat vector x
    (the whole parameter tree raveled: every sum below is over the whole tree). ``update`` takes the loss too.

    Complex params: <x, y> is Re(vdot(x, y)) and g^2 is |g|^2, which is this algorithm on the real pairs (Re, Im)
    except that the pair shares one second moment.
    MoMo: beta_1 = 0 (the averages start at the first values), then beta; rho = 1, D = 1.
    MoMo-Adam: beta_t = beta (= b1) from zero averages; rho_t = 1 - b1^t; D_t = sqrt(v_t / (1 - b2^t)) + eps.
      d_t = beta_t d + (1 - beta_t) g;  fbar_t = beta_t fbar + (1 - beta_t) f;  gamma_t = beta_t gamma + (1 - beta_t) <g, x>
      c = (1 + lr wd)(fbar - gamma) + <d, x>;  MoMo*: if c < (1 + lr wd) rho lb: lb = max(c / (2 rho (1 + lr wd)), lb_0)
      tau = min(lr / rho, ((1 + lr wd)(fbar - rho lb - gamma) + <d, x>)_+ / <d, d/D>)   (0 if <d, d/D> <= 2.2e-16)
      MoMo*: lb = max((fbar + <d, x> - gamma - tau <d, d/D> / 2) / rho, lb_0)
      x_next = (x - tau d / D) / (1 + lr wd)     (the proximal step of the paper and the authors' code)
    """

    def inner(x, y):
        return float(np.real(np.vdot(x, y)))

    def init(params):
        return {"d": np.zeros_like(params), "v": np.zeros(np.shape(params)), "fbar": 0.0, "gamma": 0.0,
                "lb": float(lower_bound)}

    def update(g, state, x, t, value):
        lr, shrink = schedule_value(learning_rate, t), 1 + schedule_value(learning_rate, t) * weight_decay
        beta_t = beta if (adam or t > 1) else 0.0
        rho = 1 - beta**t if adam else 1.0
        d = beta_t * state["d"] + (1 - beta_t) * g
        fbar = beta_t * state["fbar"] + (1 - beta_t) * value
        gamma = beta_t * state["gamma"] + (1 - beta_t) * inner(g, x)
        v = b2 * state["v"] + (1 - b2) * np.abs(g) ** 2
        D = np.sqrt(v / (1 - b2**t)) + eps if adam else np.ones(np.shape(x))
        norm, dot, lb = inner(d, d / D), inner(d, x), state["lb"]
        if adapt_lower_bound:
            cap = shrink * (fbar - gamma) + dot
            if cap < shrink * rho * lb:
                lb = max(cap / (2 * rho * shrink), lower_bound)
        polyak = max(shrink * (fbar - rho * lb - gamma) + dot, 0.0) / norm if norm > np.finfo(float).eps else 0.0
        tau = min(lr / rho, polyak)
        if adapt_lower_bound:
            lb = max((fbar + dot - gamma - 0.5 * tau * norm) / rho, lower_bound)
        x_next = (x - tau * d / D) / shrink
        return x_next - x, {"d": d, "v": v, "fbar": fbar, "gamma": gamma, "lb": lb, "capped": tau < polyak}

    return Reference(init, update)


def sophia(learning_rate, hessian_diagonal, b1=0.965, b2=0.99, eps=1e-8, weight_decay=1e-4, gamma=0.01,
           clip_threshold=1.0, update_interval=10):
    """Sophia (Liu et al. 2023, Algorithm 3) in the form Optax documents (Levanter's): ``hessian_diagonal(x)``
    is the estimator's value at the current params (exact for a separable objective).

      m_t = b1 m + (1 - b1) g;  u = clip((m_t / (1 - b1^t)) / max(gamma h, eps), rho)   (h: before this step's refresh)
      x <- x - lr (u + wd x);  at steps t = 1, k + 1, 2k + 1, ...: h <- b2 h + (1 - b2) hessian_diagonal(x_t).
    The paper instead steps with the refreshed h and does not bias-correct m.
    """

    def init(params):
        return {"m": np.zeros_like(params), "h": np.zeros_like(params)}

    def update(g, state, x, t):
        m = b1 * state["m"] + (1 - b1) * g
        u = (m / (1 - b1**t)) / np.maximum(gamma * state["h"], eps)
        if clip_threshold is not None:
            u = np.clip(u, -clip_threshold, clip_threshold)
        h = state["h"]
        if (t - 1) % update_interval == 0:
            h = b2 * h + (1 - b2) * hessian_diagonal(x)
        return -schedule_value(learning_rate, t) * (u + weight_decay * x), {"m": m, "h": h}

    return Reference(init, update)



# === sam, reduce_on_plateau, privacy ===


def sam_trajectory(leaves, grad_fn, steps, learning_rate, rho, sync_period=2):
    """SAM (Foret et al. 2021, Algorithm 1) with SGD outer steps, one call per step over a list of leaves:
    calls 1..k-1 of each period step to w~ <- w~ + rho g / ||g|| (||g|| the norm over all leaves), call k
    sets w <- w - lr g(w~) and w~ <- w. ``grad_fn(x, t)`` is the gradient at call t; returns every w~ (as
    the caller's params after each call)."""
    w = [np.asarray(x, np.float64) for x in leaves]
    current, iterates = list(w), []
    for t in range(1, steps + 1):
        g = [np.asarray(grad_fn(x, t), np.float64) for x in current]
        if t % sync_period == 0:
            w = [a - learning_rate * b for a, b in zip(w, g)]
            current = list(w)
        else:
            norm = np.sqrt(sum(np.sum(b * b) for b in g))
            current = [a + rho * b / norm for a, b in zip(current, g)]
        iterates.append(list(current))
    return iterates


def reduce_on_plateau_scales(values, factor=0.1, patience=10, rtol=1e-4, atol=0.0, cooldown=0,
                             accumulation_size=1, min_scale=0.0):
    """Keras/PyTorch ReduceLROnPlateau (mode min, relative threshold) over averages of accumulation_size
    values: an average a improves when a < best - rtol |best| - atol (any finite a improves on the first; the
    libraries' best (1 - rtol) is the same for a positive best, above a negative one);
    after `patience` averages without improvement the scale becomes max(scale factor, min_scale), the
    count restarts and the next `cooldown` averages count no plateau. Returns the scale after each value."""
    scale, best, bad, cooling, window, scales = 1.0, None, 0, 0, [], []
    for v in values:
        window.append(float(v))
        if len(window) == accumulation_size:
            average = sum(window) / accumulation_size
            window = []
            improved = best is None or average < best - rtol * abs(best) - atol
            if improved:
                best, bad = average, 0
            else:
                bad += 1
            if cooling > 0:
                cooling, bad = cooling - 1, 0
            elif bad == patience:
                scale, bad, cooling = max(scale * factor, min_scale), 0, cooldown
        scales.append(scale)
    return scales


def dp_aggregate(per_example, clip_norm, noise_multiplier, noise):
    """DP-SGD's aggregate (Abadi et al. 2016, Algorithm 1): (sum_b g_b min(1, C/||g_b||) + sigma C xi) / B,
    with ``noise`` the standard normal draws xi, one array per leaf."""
    sums, _ = per_example_clipped_sum(per_example, clip_norm)
    batch = per_example[0].shape[0]
    return [(s + noise_multiplier * clip_norm * np.asarray(xi, np.float64)) / batch for s, xi in zip(sums, noise)]


# === galore ===
def galore(learning_rate, rank, update_proj_gap, scale=1.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
           axes=None):
    """Zhao et al. (2024), Algorithm 2 (GaLore with Adam), with decoupled weight decay in the full space.

    A leaf is the matrix G (m x n) of its axes ``axes = (rows, cols)`` (default: a 2-D leaf as it is; any other
    leaf takes plain Adam). k = min(rank, m, n). At steps t = 1, 1 + T, 1 + 2T, ...: U S V^T = svd(G), and
    P = U[:, :k] if m >= n else V[:, :k]. R = P^T G (m >= n) or G P; Adam on R, its moments carried over a
    refresh of P unchanged; N = m_hat / (sqrt(v_hat) + eps); update = scale * (P N or N P^T);
    p <- p - lr (update + weight_decay p).
    """

    def as_matrix(params):
        rows, cols = axes if axes is not None else ((0,), (1,))
        order = tuple(rows) + tuple(cols)
        m = int(np.prod([params.shape[a] for a in rows]))
        return order, m, params.size // m

    def init(params):
        if axes is None and params.ndim != 2:
            return {"adam": adam(learning_rate, b1, b2, eps, weight_decay=weight_decay).init(params)}
        _, m, n = as_matrix(params)
        k = min(rank, m, n)
        low_rank = (k, n) if m >= n else (m, k)
        return {"m": np.zeros(low_rank), "v": np.zeros(low_rank), "P": None}

    def update(g, state, params, t):
        if "adam" in state:
            delta, inner = adam(learning_rate, b1, b2, eps, weight_decay=weight_decay).update(g, state["adam"], params, t)
            return delta, {"adam": inner}
        order, m, n = as_matrix(params)
        matrix = g.transpose(order).reshape(m, n)
        left, k = m >= n, min(rank, m, n)
        P = state["P"]
        if (t - 1) % update_proj_gap == 0:
            u, _, vh = np.linalg.svd(matrix, full_matrices=False)
            P = u[:, :k] if left else vh[:k, :].T
        R = P.T @ matrix if left else matrix @ P
        mu = b1 * state["m"] + (1 - b1) * R
        nu = b2 * state["v"] + (1 - b2) * R * R
        N = (mu / (1 - b1**t)) / (np.sqrt(nu / (1 - b2**t)) + eps)
        full = (P @ N if left else N @ P.T).reshape([params.shape[a] for a in order])
        update = scale * full.transpose(np.argsort(order))
        return -schedule_value(learning_rate, t) * (update + weight_decay * params), {"m": mu, "v": nu, "P": P}

    return Reference(init, update)


# === graft ===
def graft_adam_sign(learning_rate, b1=0.9, b2=0.999, eps=1e-8):
    """Agarwal et al. (2020), layer-wise grafting: the direction sign(g), rescaled to the norm of Adam's step
    m_hat / (sqrt(v_hat) + eps) of the same leaf (0 where the direction is 0); p <- p - lr * grafted."""

    def init(params):
        return {"m": np.zeros_like(params), "v": np.zeros_like(params)}

    def update(g, state, params, t):
        m = b1 * state["m"] + (1 - b1) * g
        v = b2 * state["v"] + (1 - b2) * g * g
        adam_step = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        direction = np.sign(g)
        d_norm = np.linalg.norm(direction)
        grafted = direction * np.linalg.norm(adam_step) / d_norm if d_norm > 0 else np.zeros_like(g)
        return -learning_rate * grafted, {"m": m, "v": v}

    return Reference(init, update)


# === gram newton-schulz ===


def quintic_newton_schulz(g, coefficient_rows, eps=1e-7):
    """The plain quintic Newton-Schulz iteration (Jordan et al. 2024) on one matrix, in float64.

    On the wide orientation (G^T when G has more rows than columns, transposed back at the end):
    X_0 = G / max(||G||_F, eps) (a zero G stays 0); for each row (a, b, c): A = X X^T, X <- a X + b A X + c A A X.
    """
    g = np.asarray(g, np.float64)
    tall = g.shape[0] > g.shape[1]
    x = g.T if tall else g
    norm = max(np.linalg.norm(x), eps)
    x = x / norm if norm > 0 else x
    for a, b, c in coefficient_rows:
        gram = x @ x.T
        x = a * x + b * (gram @ x) + c * (gram @ (gram @ x))
    return x.T if tall else x


def polar_factor(g):
    """U V^T of the thin SVD G = U S V^T: the orthogonal polar factor, the limit of the convergent iteration."""
    u, _, vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
    return u @ vt


# === cautious, mars ===
def _caution(u, g):
    """Liang et al. (2024), Algorithm 1: phi = 1[u * g > 0], the step u * phi scaled by d / (nnz(phi) + 1)."""
    phi = (u * g > 0).astype(np.float64)
    return u * phi * (phi.size / (phi.sum() + 1.0))


def cautious_adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, weight_decay=0.0, nesterov=False):
    """C-AdamW (Liang et al. 2024, Algorithm 1): Adam's u_t = m_hat / (sqrt(v_hat + eps_root) + eps) (NAdam's
    m_hat with nesterov), masked and rescaled by _caution against g_t; the decay unmasked, of p_t (as AdamW and
    the authors' code; see jz.cautious_adamw): p <- p - lr (caution(u_t, g_t) + weight_decay p)."""

    def init(params):
        return {"m": np.zeros_like(params), "v": np.zeros_like(params)}

    def update(g, state, params, t):
        m = b1 * state["m"] + (1 - b1) * g
        v = b2 * state["v"] + (1 - b2) * g * g
        if nesterov:
            m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        else:
            m_hat = m / (1 - b1**t)
        u = m_hat / (np.sqrt(v / (1 - b2**t) + eps_root) + eps)
        return -schedule_value(learning_rate, t) * (_caution(u, g) + weight_decay * params), {"m": m, "v": v}

    return Reference(init, update)


def cautious_lion(learning_rate, b1=0.9, b2=0.99, weight_decay=0.0):
    """C-Lion (Liang et al. 2024): Lion's u_t = sign(b1 m + (1 - b1) g) masked by _caution against g_t;
    m <- b2 m + (1 - b2) g;  p <- p - lr (caution(u_t, g_t) + weight_decay p)."""

    def init(params):
        return {"m": np.zeros_like(params)}

    def update(g, state, params, t):
        u = np.sign(b1 * state["m"] + (1 - b1) * g)
        m = b2 * state["m"] + (1 - b2) * g
        return -schedule_value(learning_rate, t) * (_caution(u, g) + weight_decay * params), {"m": m}

    return Reference(init, update)


def cautious_sgd(learning_rate, momentum, nesterov=False):
    """Cautious heavy-ball SGD: b_t = g + mu b_{t-1} (b_0 = 0), u_t = b_t or g + mu b_t (Nesterov);
    p <- p - lr caution(u_t, g_t)."""

    def init(params):
        return {"b": np.zeros_like(params)}

    def update(g, state, params, t):
        b = g + momentum * state["b"]
        u = g + momentum * b if nesterov else b
        return -schedule_value(learning_rate, t) * _caution(u, g), {"b": b}

    return Reference(init, update)


def _mars_corrected(g, prev, gamma, b1, max_norm):
    """Yuan et al. (2024), Algorithm 1 with MARS-approx: c_t = g_t + gamma_t b1 / (1 - b1) (g_t - g_{t-1}), with
    c_1 = g_1 (x_1 = x_0); c_t / ||c_t|| * max_norm where ||c_t|| > max_norm (the paper: max_norm = 1)."""
    c = g if prev is None else g + gamma * b1 / (1 - b1) * (g - prev)
    norm = np.sqrt(np.sum(c * c))
    return c * (max_norm / norm) if max_norm is not None and norm > max_norm else c


def mars_adamw(learning_rate, b1=0.95, b2=0.99, eps=1e-8, weight_decay=0.0, gamma=0.025, max_norm=1.0):
    """MARS-AdamW (Yuan et al. 2024, Algorithm 2, approximate form): m_t = b1 m + (1 - b1) c~_t,
    v_t = b2 v + (1 - b2) c~_t^2;  p <- p - lr (m_hat / (sqrt(v_hat) + eps) + weight_decay p).
    gamma may be a schedule of the 0-based step t - 1."""

    def init(params):
        return {"m": np.zeros_like(params), "v": np.zeros_like(params), "prev": None}

    def update(g, state, params, t):
        c = _mars_corrected(g, state["prev"], schedule_value(gamma, t), b1, max_norm)
        m = b1 * state["m"] + (1 - b1) * c
        v = b2 * state["v"] + (1 - b2) * c * c
        direction = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps) + weight_decay * params
        return -schedule_value(learning_rate, t) * direction, {"m": m, "v": v, "prev": g}

    return Reference(init, update)


def mars_lion(learning_rate, b1=0.95, weight_decay=0.0, gamma=0.025, max_norm=1.0):
    """MARS-Lion (Yuan et al. 2024, H_t = sqrt(diag(m_t^2))): m_t = b1 m + (1 - b1) c~_t;
    p <- p - lr (sign(m_t) + weight_decay p)."""

    def init(params):
        return {"m": np.zeros_like(params), "prev": None}

    def update(g, state, params, t):
        c = _mars_corrected(g, state["prev"], schedule_value(gamma, t), b1, max_norm)
        m = b1 * state["m"] + (1 - b1) * c
        return -schedule_value(learning_rate, t) * (np.sign(m) + weight_decay * params), {"m": m, "prev": g}

    return Reference(init, update)


# === psgd_kron ===
_PSGD_RELATIVE_DAMPING = float(np.sqrt(np.finfo(np.float32).eps))


def psgd_norm_lower_bound(a):
    """psgd-jax 0.2.9's ``_norm_lower_bound``: a lower bound of the spectral norm of A from its largest row/column.

    A <- A / max|A|; take the column i (row j) of largest 2-norm; if the column wins, x = A[:, i]^T A and the
    bound is max|A| ||x A^T|| / ||x||; else x = A A[j, :]^T and the bound is max|A| ||A^T x|| / ||x||; 0 for A = 0.
    """
    scale = np.max(np.abs(a))
    if scale == 0:
        return 0.0
    a = a / scale
    columns, rows = np.sum(a * a, axis=0), np.sum(a * a, axis=1)
    i, j = int(np.argmax(columns)), int(np.argmax(rows))
    if columns[i] > rows[j]:
        x = a[:, i] @ a
        return scale * np.linalg.norm((x / np.linalg.norm(x)) @ a.T)
    x = a @ a[j, :]
    return scale * np.linalg.norm(a.T @ (x / np.linalg.norm(x)))


def psgd_kron(learning_rate, probes, fits, triangular, b1=0.9, precond_lr=0.1, precond_init_scale=None,
              momentum_into_precond_update=True, damping=1e-9, weight_decay=0.0):
    """PSGD-Kron (Li, arXiv:1512.04202 and 2211.04422) as psgd-jax 0.2.9's ``kron`` defines it, on one leaf,
    written on the full Kronecker matrices (row-major vec: vec(X x_1 Q_1 ... x_n Q_n) = (Q_1 kron ... kron Q_n) vec X).

    The random inputs are given: ``probes(t)`` is the probe V of step t (1-based), ``fits(t)`` whether the
    preconditioner is fitted at step t; ``triangular`` lists, per dim, whether its factor is dense triangular
    (else diagonal). Q_k = s^(1/n) I, s = precond_init_scale, or on the first step Li's
    s = (mean g^4 + damping^4)^(-1/8) (1 if not finite or if g = 0). Each step:
    m = b1 m + (1 - b1) g, m_hat = m / (1 - b1^t) (m_hat = g when b1 = 0); on fitted steps, with
    h = m_hat (or g) + (sqrt(eps_f32) mean|h| + damping) V, A = Q h, B = Q^{-T} V (the full inverse), and the
    mode-k unfoldings A_k, B_k: Q_k <- Q_k - lr_Q triu(A_k A_k^T - B_k B_k^T) / (lb(A_k A_k^T + B_k B_k^T) + tiny) Q_k
    (a diagonal factor: the diagonals, divided by the max of |diag(A_k A_k^T + B_k B_k^T)|), all from the same A, B;
    then u = Q^T Q m_hat, u <- u / max(1, rms(u) / 1.1), and the step is -lr (u + weight_decay p).
    No balancing of the factors: it leaves Q = Q_1 kron ... kron Q_n unchanged.
    """
    tiny = np.finfo(np.float64).tiny

    def init(params):
        scale = 1.0 if precond_init_scale is None else precond_init_scale
        each = scale ** (1 / max(1, params.ndim))
        factors = [each * (np.eye(d) if dense else np.ones(d)) for d, dense in zip(params.shape, triangular)]
        return {"m": np.zeros_like(params), "q": factors if params.ndim else [np.array(each)]}

    def full(factors):
        out = np.ones((1, 1))
        for q in factors:
            out = np.kron(out, q if q.ndim == 2 else np.diag(np.atleast_1d(q)))
        return out

    def unfold(x, k):
        return x.reshape(1, 1) if x.ndim == 0 else np.moveaxis(x, k, 0).reshape(x.shape[k], -1)

    def update(g, state, params, t):
        factors = [q.copy() for q in state["q"]]
        if precond_init_scale is None and t == 1:
            s = (np.mean(g**4) + damping**4) ** (-1 / 8)
            s = s if np.isfinite(s) and np.mean(g**4) > 0 else 1.0  # (1 also for a zero first gradient)
            factors = [q * s ** (1 / len(factors)) for q in factors]
        m = b1 * state["m"] + (1 - b1) * g
        m_hat = m / (1 - b1**t) if b1 else g
        if fits(t):
            v = probes(t)
            h = m_hat if momentum_into_precond_update else g
            h = h + (_PSGD_RELATIVE_DAMPING * np.mean(np.abs(h)) + damping) * v
            q_full = full(factors)
            a = (q_full @ h.ravel()).reshape(g.shape)
            b = (np.linalg.inv(q_full).T @ v.ravel()).reshape(g.shape)
            new = []
            for k, q in enumerate(factors):
                t1, t2 = unfold(a, k) @ unfold(a, k).T, unfold(b, k) @ unfold(b, k).T
                if q.ndim == 2:
                    new.append(q - precond_lr * np.triu(t1 - t2) / (psgd_norm_lower_bound(t1 + t2) + tiny) @ q)
                else:
                    d1, d2 = np.diag(t1), np.diag(t2)
                    new.append(q - precond_lr * (d1 - d2).reshape(q.shape) * q / (np.max(np.abs(d1 + d2)) + tiny))
            factors = new
        q_full = full(factors)
        u = (q_full.T @ q_full @ m_hat.ravel()).reshape(g.shape)
        u = u / max(1.0, np.sqrt(np.mean(u * u)) / 1.1)
        return -schedule_value(learning_rate, t) * (u + weight_decay * params), {"m": m, "q": factors}

    return Reference(init, update)


# === soap ===
def _soap_merged_shape(shape, max_dim):
    """The official SOAP code's merge: a running product of dimensions is closed (kept as one dimension) when the
    next dimension would take it above ``max_dim``; a dimension above ``max_dim`` stands alone."""
    merged, running = [], 1
    for d in shape:
        if running * d <= max_dim:
            running *= d
        elif running > 1:
            merged.append(running)
            running = d
        else:
            merged.append(d)
    if running > 1 or not merged:
        merged.append(running)
    return tuple(merged)


def _soap_turn(x, bases, into):
    # x multiplied along each dimension i by Q_i^T (into the eigenbasis) or by Q_i (back); None: left alone.
    for i, q in enumerate(bases):
        if q is not None:
            x = np.moveaxis(np.tensordot(q.T if into else q, x, axes=(1, i)), 0, i)
    return x


def _soap_unfolded_square(x, i):
    rows = np.moveaxis(x, i, 0).reshape(x.shape[i], -1)
    return rows @ rows.T


def soap(learning_rate, b1=0.95, b2=0.95, shampoo_b2=None, eps=1e-8, weight_decay=0.0, precondition_frequency=10,
         max_precond_dim=10000, merge_dims=False, precondition_1d=False, correct_bias=True, normalize_grads=False,
         blocking=True, decay="chain"):
    """SOAP as the official code (github.com/nikhilvyas/SOAP, soap.py) runs it, plus Distributed Shampoo's blocks.

    Call 1 only accumulates L_i = (1 - bs) G_(i) G_(i)^T and sets Q_i to its eigenvectors (decreasing eigenvalues);
    the params do not move (decay="official": not even by the weight decay). Call t > 1 (Adam step k = t - 1):
    G~ = G x_i Q_i^T;  m = b1 m + (1 - b1) G~;  v = b2 v + (1 - b2) G~^2;
    d = (m / (sqrt(v) + eps)) x_i Q_i;  d /= 1e-30 + rms(d) (normalize_grads);
    p <- p - lr sqrt(1 - b2^k) / (1 - b1^k) d (the factor only with correct_bias); then, with m rotated back to
    the original space: L_i = bs L_i + (1 - bs) G_(i) G_(i)^T, and when k % precondition_frequency == 0, per
    dimension: columns of Q_i and entries of v (along i) sorted by diag(Q_i^T L_i Q_i) decreasing,
    Q_i = QR(L_i Q_i); m rotated into the (new) bases. Leaves: merged (merge_dims, leaves of 2+ dimensions) by the
    official rule; with blocking, each merged dimension cut into pieces of max_precond_dim and a remainder, each
    block with its own L, Q, in explicit loops; without, dimensions above max_precond_dim unrotated. 1-D leaves are
    rotated only with precondition_1d, scalars never. Weight decay: decay="chain" as chain(soap, add_decayed_weights,
    scale_by_learning_rate), -lr (u + wd p) on every call; decay="official": p <- p (1 - lr wd) after the step, from
    call 2 on.
    """
    beta_s = b2 if shampoo_b2 is None else shampoo_b2

    def layout(shape):
        rotate = len(shape) >= 2 or (len(shape) == 1 and precondition_1d)
        merged = _soap_merged_shape(shape, max_precond_dim) if merge_dims and len(shape) >= 2 else tuple(shape)
        cuts = [list(range(0, d, max_precond_dim)) + [d] if rotate and blocking else [0, d] for d in merged]
        blocks = []
        for index in np.ndindex(*[len(c) - 1 for c in cuts]):
            blocks.append(tuple(slice(c[j], c[j + 1]) for c, j in zip(cuts, index)))
        return rotate, merged, blocks

    def init(params):
        rotate, merged, blocks = layout(params.shape)
        state = {"blocks": [], "t": 0}
        for block in blocks:
            sizes = [s.stop - s.start for s in block]
            has = [rotate and d <= max_precond_dim for d in sizes]
            state["blocks"].append({
                "L": [np.zeros((d, d)) if h else None for d, h in zip(sizes, has)],
                "Q": [None] * len(sizes), "m": np.zeros(sizes), "v": np.zeros(sizes)})
        return state

    def update(g, state, params, t):
        lr = schedule_value(learning_rate, t)
        if g.size == 0:
            return np.zeros_like(g), state
        rotate, merged, blocks = layout(g.shape)
        g = g.reshape(merged)
        direction = np.zeros(merged)
        k = t - 1
        for block, s in zip(blocks, state["blocks"]):
            gb = g[block]
            if t > 1:
                turned = _soap_turn(gb, s["Q"], into=True)
                s["m"] = b1 * s["m"] + (1 - b1) * turned
                s["v"] = b2 * s["v"] + (1 - b2) * turned**2
                direction[block] = _soap_turn(s["m"] / (np.sqrt(s["v"]) + eps), s["Q"], into=False)
                s["m"] = _soap_turn(s["m"], s["Q"], into=False)  # back to the original space
            s["L"] = [None if L is None else beta_s * L + (1 - beta_s) * _soap_unfolded_square(gb, i)
                      for i, L in enumerate(s["L"])]
            if t == 1:
                s["Q"] = [None if L is None else np.linalg.eigh(L)[1][:, ::-1] for L in s["L"]]
            elif k % precondition_frequency == 0:
                for i, (L, Q) in enumerate(zip(s["L"], s["Q"])):
                    if L is None:
                        continue
                    order = np.argsort(-np.diag(Q.T @ L @ Q), kind="stable")
                    s["v"] = np.take(s["v"], order, axis=i)
                    s["Q"][i] = np.linalg.qr(L @ Q[:, order])[0]
            if t > 1:
                s["m"] = _soap_turn(s["m"], s["Q"], into=True)
        direction = direction.reshape(params.shape)
        if normalize_grads and t > 1:
            direction = direction / (1e-30 + np.sqrt(np.mean(direction**2)))
        if correct_bias and t > 1:
            direction = direction * np.sqrt(1 - b2**k) / (1 - b1**k)
        if decay == "official":
            stepped = params - lr * direction
            return (stepped * (1 - lr * weight_decay) if t > 1 else params) - params, state
        return -lr * (direction + weight_decay * params), state

    return Reference(init, update)


# === shampoo ===
def _shampoo_merged_shape(shape, max_dim):
    """Distributed Shampoo's merge of small dimensions: size-1 dimensions dropped, then, from the first dimension
    on, each joins the previous group while the group's product stays within max_dim."""
    groups = []
    for d in shape:
        if d == 1:
            continue
        if groups and groups[-1] * d <= max_dim:
            groups[-1] *= d
        else:
            groups.append(d)
    return tuple(groups) or (1,)


def _shampoo_block_indices(shape, max_dim):
    """Every block of an array of ``shape``: each dimension cut at multiples of max_dim (loops, no stacking)."""
    indices = [()]
    for d in shape:
        indices = [index + (slice(a, min(a + max_dim, d)),) for index in indices for a in range(0, d, max_dim)]
    return indices


def _shampoo_inverse_root(matrix, p, eps):
    """(A + eps I)^(-1/p) from the eigendecomposition of A + eps I, its eigenvalues shifted up to eps when rounding
    puts the smallest below it (Distributed Shampoo's matrix_inverse_root with its default perturbation)."""
    values, vectors = np.linalg.eigh(matrix + eps * np.eye(matrix.shape[0]))
    if values.min() < eps:
        values = values - values.min() + eps
    return (vectors * values ** (-1.0 / p)) @ vectors.T


def shampoo(learning_rate, b1=0.0, b2=1.0, eps=1e-12, weight_decay=0.0, grafting=None, grafting_b2=0.999,
            grafting_eps=1e-8, precondition_frequency=1, start_preconditioning_step=None, max_precond_dim=1024,
            merge_dims=True, exponent_override=None, precondition_1d=False, inverse_root=None, graft_per_block=True):
    """Shampoo (Gupta, Koren & Singer 2018, Algorithm 1 / 2 for tensors) as Distributed Shampoo runs it
    (Shi et al. 2023, the DistributedShampoo docstring and README), one param at a time.

    A param of order >= 2 (or a vector with precondition_1d) is reshaped to its merged shape (merge_dims) and cut
    into blocks of at most max_precond_dim per dimension. For each block G of order k and each dimension i:
    L_i <- b2 L_i + w G_(i) G_(i)^T (w = 1 if b2 = 1 else 1 - b2); at steps t = s, and t > s with t % f = 0,
    Q_i = (L_i / c_t + eps I)^(-1/p), c_t = 1 - b2^t (b2 < 1) or 1, p = exponent_override or 2k; before the first
    refresh Q_i = I. The filtered gradient M = m_t / (1 - b1^t), m_t = b1 m_{t-1} + (1 - b1) g (M = g if b1 = 0)
    is multiplied along each dimension i of each block by Q_i. Scalars, empty params, vectors (without
    precondition_1d) keep M. Grafting: the direction rescaled to the norm of the
    grafting step on M: adam M / (sqrt(v / (1 - gb2^t)) + geps), rmsprop M / (sqrt(v) + geps), adagrad
    M / (sqrt(sum g^2) + geps), sgd M, with v = gb2 v + (1 - gb2) g^2 of the raw gradients; before step s the
    grafting step itself. With graft_per_block (Distributed Shampoo's grafting) each block of the param's merged
    (merge_dims) shape cut at max_precond_dim gets its own ratio of norms, vectors included; else the param's norms
    are used. Then p <- p - lr (u + weight_decay p). inverse_root is ignored: the roots here are exact.
    """
    del inverse_root
    frequency = precondition_frequency
    start = frequency if start_preconditioning_step is None else start_preconditioning_step
    weight = 1.0 if b2 == 1 else 1.0 - b2

    def init(params):
        preconditioned = params.size > 0 and (params.ndim >= 2 or (params.ndim == 1 and precondition_1d))
        shape = (_shampoo_merged_shape(params.shape, max_precond_dim) if merge_dims else params.shape) if preconditioned else None
        blocks = _shampoo_block_indices(shape, max_precond_dim) if preconditioned else []
        sizes = [[s.stop - s.start for s in index] for index in blocks]
        return {
            "shape": shape, "blocks": blocks,
            "L": [[np.zeros((d, d)) for d in dims] for dims in sizes],
            "Q": [[np.eye(d) for d in dims] for dims in sizes],
            "m": np.zeros_like(params), "v": np.zeros_like(params),
        }

    def update(g, state, params, t):
        shape, blocks = state["shape"], state["blocks"]
        L = [[f.copy() for f in fs] for fs in state["L"]]
        Q = [list(qs) for qs in state["Q"]]
        refresh = t == start or (t > start and t % frequency == 0)
        correction = 1 - b2**t if b2 < 1 else 1.0
        for j, index in enumerate(blocks):
            block = g.reshape(shape)[index]
            k = block.ndim
            for i in range(k):
                others = [a for a in range(k) if a != i]
                L[j][i] = b2 * L[j][i] + weight * np.tensordot(block, block, axes=(others, others))
                if refresh:
                    Q[j][i] = _shampoo_inverse_root(L[j][i] / correction, exponent_override or 2 * k, eps)
        m = b1 * state["m"] + (1 - b1) * g
        filtered = m / (1 - b1**t) if b1 else g
        direction = filtered.copy()
        if blocks:
            out = filtered.reshape(shape).copy()
            for j, index in enumerate(blocks):
                block = out[index]
                for i in range(block.ndim):
                    block = np.moveaxis(np.tensordot(Q[j][i], block, axes=(1, i)), 0, i)
                out[index] = block
            direction = out.reshape(g.shape)
        v = state["v"]
        if grafting is not None:
            if grafting == "adagrad":
                v = v + g * g
            elif grafting in ("adam", "rmsprop"):
                v = grafting_b2 * v + (1 - grafting_b2) * g * g
            if grafting == "sgd":
                step = filtered
            else:
                v_hat = v / (1 - grafting_b2**t) if grafting == "adam" else v
                step = filtered / (np.sqrt(v_hat) + grafting_eps)
            if t < start:  # Distributed Shampoo's "grafting method": the grafting step itself
                direction = step
            elif graft_per_block and g.ndim >= 1 and g.size > 0:
                shape_g = _shampoo_merged_shape(g.shape, max_precond_dim) if merge_dims else g.shape
                out, steps = direction.reshape(shape_g).copy(), step.reshape(shape_g)
                for index in _shampoo_block_indices(shape_g, max_precond_dim):
                    d_norm = np.linalg.norm(out[index])
                    out[index] = out[index] * np.linalg.norm(steps[index]) / d_norm if d_norm > 0 else 0.0
                direction = out.reshape(g.shape)
            else:
                d_norm = np.linalg.norm(direction)
                direction = direction * np.linalg.norm(step) / d_norm if d_norm > 0 else np.zeros_like(direction)
        delta = -schedule_value(learning_rate, t) * (direction + weight_decay * params)
        return delta, {**state, "L": L, "Q": Q, "m": m, "v": v}

    return Reference(init, update)


def cyclic_lr(base_lr, max_lr, step_size_up, step_size_down=None, mode="triangular", gamma=1.0, scale_fn=None,
              scale_mode="cycle", base_momentum=0.8, max_momentum=0.9, steps=100):
    """torch.optim.lr_scheduler.CyclicLR's rates and momenta at the optimizer's first ``steps`` steps, from its
    documented policy: cycle = floor(1 + k / (U + D)), x = 1 + k / (U + D) - cycle, the height x / (U / (U + D))
    on the way up and (x - 1) / (U / (U + D) - 1) on the way down, times the scale: 1, 1 / 2^(cycle - 1) or
    gamma^k, or ``scale_fn`` of the cycle or of k. The momentum goes from max_momentum down by as much."""
    down = step_size_up if step_size_down is None else step_size_down
    total, ratio = float(step_size_up + down), step_size_up / (step_size_up + down)
    rates, momenta = [], []
    for k in range(steps):
        cycle = np.floor(1 + k / total)
        x = 1.0 + k / total - cycle
        height = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
        if scale_fn is None:
            scale = {"triangular": 1.0, "triangular2": 1 / 2.0 ** (cycle - 1), "exp_range": gamma**k}[mode]
        else:
            scale = scale_fn(cycle if scale_mode == "cycle" else k)
        rates.append(base_lr + (max_lr - base_lr) * height * scale)
        momenta.append(max_momentum - (max_momentum - base_momentum) * height * scale)
    return np.array(rates), np.array(momenta)

def swa_average(iterates, start, every):
    """torch.optim.swa_utils.AveragedModel's default (equal-weight) average of one array, ``update_parameters``
    called after each optimizer step ``t`` (``iterates[t - 1]`` the params after it) with ``t >= start`` and
    ``(t - start) % every == 0``: the first call copies the params, a later one moves the average by
    (p - average) / (n + 1) after n calls. Returns the average (``None`` before the first call) and n."""
    average, n = None, 0
    for t, p in enumerate(iterates, start=1):
        if t >= start and (t - start) % every == 0:
            average = np.array(p, np.float64) if n == 0 else average + (p - average) / (n + 1)
            n += 1
    return average, n


# Significant bits, smallest normal exponent and the magnitude that overflows, of the formats rounded stochastically.
_ROUNDED_FORMATS = {"bfloat16": (8, -126, 2.0**128), "float16": (11, -14, 2.0**16)}


def stochastic_rounding(x, u, dtype):
    """Stochastic rounding of float32 ``x`` to ``dtype`` ("bfloat16" or "float16") in float64, given uniform ``u``
    in [0, 1) per element (Gupta et al. 2015): the magnitude is cut to a multiple of the format's spacing
    (2**(e - bits + 1) in [2**e, 2**(e + 1)), fixed below the smallest normal number) and moved up one spacing when
    ``u`` is below the dropped fraction of a spacing, so with that probability; a magnitude moved up to the
    format's overflow threshold is infinite. Non-finite values stay as they are."""
    bits, min_exponent, overflow = _ROUNDED_FORMATS[dtype]
    x = np.asarray(x, np.float32).astype(np.float64)
    finite = np.isfinite(x)
    magnitude = np.where(finite, np.abs(x), 0.0)
    exponent = np.floor(np.log2(np.where(finite & (magnitude > 0), magnitude, 1.0)))
    spacing = np.exp2(np.maximum(exponent, min_exponent) - (bits - 1))
    low = np.floor(magnitude / spacing) * spacing
    rounded = np.where(np.asarray(u, np.float64) < (magnitude - low) / spacing, low + spacing, low)
    rounded = np.where(rounded >= overflow, np.inf, rounded)
    return np.where(finite, np.copysign(rounded, x), x)


def round_params_stochastically(params, updates, u, dtype):
    """The updates that make ``params + updates`` the stochastic rounding of ``params + updates`` summed in float32."""
    params = np.asarray(params, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # overflowing sums are infinite; inf - inf is not taken
        target = stochastic_rounding(params + np.asarray(updates, np.float32), u, dtype)
        return np.where(target == params, 0.0, target - params.astype(np.float64))


def compensated_params(params, updates, dtype, compensation_dtype=None, update_dtype="float32"):
    """Kahan-compensated params (compensate_params_rounding) in float64 with the roundings written out: each step
    ``y = f32(u + c)``, the update ``d = udtype(dtype(f32(theta + y)) - theta)`` (apply_updates' rounding, then the
    update's dtype; 0 where an infinite theta stays), ``theta' = dtype(f32(theta + d))``, ``c = cdtype(f32(y - (theta'
    - theta)))``, or 0 where theta' - theta is not finite. ``updates`` is a sequence of arrays of ``update_dtype``;
    returns the params and compensations after each step."""
    import ml_dtypes

    cast = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}
    as_dtype = lambda x, name: np.asarray(x, np.float64).astype(cast[name]).astype(np.float64)  # noqa: E731
    theta = as_dtype(params, dtype)
    c = np.zeros_like(theta)
    out = []
    for u in updates:
        y = as_dtype(np.asarray(u, np.float64) + c, "float32")
        with np.errstate(invalid="ignore"):  # inf - inf where an infinite param stays (taken as no step)
            stays = np.isinf(theta) & ~np.isnan(theta + y)
            d = np.where(stays, 0.0, as_dtype(as_dtype(as_dtype(theta + y, "float32"), dtype) - theta, update_dtype))
            new = as_dtype(as_dtype(theta + d, "float32"), dtype)
            landed = np.where(stays, 0.0, new - theta)
        # nothing is carried from a step that overflowed or went NaN
        c = as_dtype(np.where(np.isfinite(landed), as_dtype(y - landed, "float32"), 0.0), compensation_dtype or dtype)
        theta = new
        out.append((theta, c))
    return out
