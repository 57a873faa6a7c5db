"""AdamW (Loshchilov & Hutter 2019) as one loop over a segment of the flat parameter buffer.

Matches torch.optim.AdamW: decoupled weight decay p -= lr * wd * p on the parameters the decay
mask selects, bias-corrected moments, update lr * m_hat / (sqrt(v_hat) + eps). The gradient is
scaled by the clipping factor on the fly and zeroed after use, so the buffer is ready for the
next step's accumulation without a separate pass.
"""

import math

import numpy as np
from numba import njit

from .kernels import KERNEL


@njit(**KERNEL)
def adamw_update(params, grads, m, v, decay, start, stop, lr, beta1, beta2, eps, weight_decay, t, grad_scale):
    """Update params[start:stop] in place from grads (scaled by grad_scale), m and v; zero the
    gradient segment. t is the 1-based step number used for bias correction."""
    bc1 = 1.0 - beta1**t
    bc2 = 1.0 - beta2**t
    b1 = np.float32(beta1)
    b2 = np.float32(beta2)
    step_size = np.float32(lr / bc1)
    inv_sqrt_bc2 = np.float32(1.0 / math.sqrt(bc2))
    decay_rate = np.float32(lr * weight_decay)
    e = np.float32(eps)
    s = np.float32(grad_scale)
    for i in range(start, stop):
        g = grads[i] * s
        mi = b1 * m[i] + (np.float32(1.0) - b1) * g
        vi = b2 * v[i] + (np.float32(1.0) - b2) * g * g
        m[i] = mi
        v[i] = vi
        p = params[i] - decay_rate * decay[i] * params[i]
        params[i] = p - step_size * mi / (np.sqrt(vi) * inv_sqrt_bc2 + e)
        grads[i] = np.float32(0.0)


def adamw_reference(params, grads, m, v, decay, lr, beta1, beta2, eps, weight_decay, t):
    """The same update in plain numpy (float64), returning new (params, m, v)."""
    m = beta1 * m + (1 - beta1) * grads
    v = beta2 * v + (1 - beta2) * grads**2
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    params = params * (1 - lr * weight_decay * decay) - lr * m_hat / (np.sqrt(v_hat) + eps)
    return params, m, v
