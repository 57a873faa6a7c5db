"""numba kernels, one file per layer: `<layer>_forward` / `<layer>_backward` pairs with a slow,
obvious numpy reference (`<layer>_forward_reference`, ...) beside each, used by the tests.

Conventions (llm.c): outputs first, then inputs and weights, then integer dims. Forward writes
with `=`. Parameter gradients (dweight, dbias, dwte...) accumulate with `+=`, so micro-steps add
up; each kernel's docstring says whether its activation gradient is overwritten or accumulated.
Every kernel is single-threaded and releases the GIL: the parallelism is the worker pool's.

Not layers: activation.py (the MLP activation's loops, for gelu.py and relu2.py), heads.py (the
fused q, k, v buffer's layout, for attention.py, rope.py and qknorm.py) and fastmath.py hold
`inline="always"` helpers that several layers' kernels compile in.
"""

# LLVM fast-math flags that allow vectorised reductions but keep NaN and inf semantics, so a
# diverging loss is still detected.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

# Options of every kernel. error_model="numpy" drops Python's ZeroDivisionError check on each
# division, a branch that stops LLVM from vectorising a loop (GELU: 6.1 -> 0.7 ns per element).
KERNEL = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
