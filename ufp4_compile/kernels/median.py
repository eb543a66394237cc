"""The mean split's ``mu`` (``numerics.sample_median``): per channel, the median of the finite values of a
sample of the tokens, selected by bisection on the values' bits. One launch, no copy of the sample.

A program holds ``BLOCK_C`` channels of every sampled token (at most 1023 of them: ``sample_stride``) in
registers as order keys: the value's bits with the magnitude bits of negatives flipped, so that integer order
is float order; a zero of either sign is key 0 (the reference returns +0.0 for a zero median), a non-finite
value the largest key (``KEY_MAX``, above every finite key; never selected, as fewer than ``n`` values lie
below it). With ``n`` finite values in a channel, the answer is the ``k = (n - 1) // 2``-th smallest key: the
least ``v`` with at least ``k + 1`` keys ``<= v``, found by halving an interval of the key range once per key
bit (16 for bfloat16 and float16: the values' own bits; 32 for FP32). The selected key maps back to an
element of ``x``, converted to FP32 exactly, so eager calls, Inductor's launches and the reference agree bit
for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ufp4_compile.numerics.mean_split import sample_stride

# bits of the stored value, and the magnitude at which the exponent field is all ones (Inf / NaN)
_KEYS = {torch.bfloat16: (16, 0x7F80), torch.float16: (16, 0x7C00), torch.float32: (32, 0x7F800000)}
DTYPES = tuple(_KEYS)
BLOCK_C = 16  # channels a program: 32 contiguous bytes of a bfloat16 token row


@triton.jit
def _sample_median_kernel(x_ptr, mu_ptr, C, stride_t, stride_c, token_step, n_tokens,
                          BITS: tl.constexpr, INF_BITS: tl.constexpr, HALF: tl.constexpr,
                          BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    rows = tl.arange(0, BLOCK_S)
    mask = (rows < n_tokens)[:, None] & (cols < C)[None, :]
    offs = (rows.to(tl.int64) * token_step * stride_t)[:, None] + (cols.to(tl.int64) * stride_c)[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0)
    if BITS == 16:
        bits = x.to(tl.int16, bitcast=True).to(tl.int32)  # sign-extended: negative values stay negative
        flip = 0x7FFF
    else:
        bits = x.to(tl.int32, bitcast=True)
        flip = 0x7FFFFFFF
    magnitude = bits & flip
    finite = mask & (magnitude < INF_BITS)
    key = tl.where(bits < 0, bits ^ flip, bits)  # integer order == float order (-0.0 just below +0.0)
    key = tl.where(magnitude == 0, 0, key)  # a zero of either sign is +0.0
    key = tl.where(finite, key, flip)  # KEY_MAX: above every finite key
    n = tl.sum(finite.to(tl.int32), axis=0)
    want = (n - 1) // 2 + 1  # keys that must lie at or below the answer
    # The answer as ``key + HALF`` in [0, 2**BITS): halve [lo, hi] once per key bit.
    lo = tl.zeros((BLOCK_C,), tl.int64)
    hi = tl.full((BLOCK_C,), 2 * HALF - 1, tl.int64)
    for _ in range(BITS):
        mid = (lo + hi) >> 1
        below = tl.sum((key <= (mid - HALF).to(tl.int32)[None, :]).to(tl.int32), axis=0)
        enough = below >= want
        hi = tl.where(enough, mid, hi)
        lo = tl.where(enough, lo, mid + 1)
    chosen = (lo - HALF).to(tl.int32)
    chosen = tl.where(chosen < 0, chosen ^ flip, chosen)  # back to the value's bits
    if BITS == 16:
        if INF_BITS == 0x7F80:  # bfloat16: the upper half of an FP32 pattern
            value = (chosen << 16).to(tl.float32, bitcast=True)
        else:
            value = chosen.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    else:
        value = chosen.to(tl.float32, bitcast=True)
    tl.store(mu_ptr + cols, tl.where(n > 0, value, 0.0), mask=cols < C)


def launch_plan(tokens: int, channels: int, dtype: torch.dtype) -> tuple[tuple, int, dict, dict]:
    """``(grid, num_warps, scalars, constexprs)`` of one launch on a ``(tokens, channels)`` tensor of
    ``dtype`` (one of :data:`DTYPES`); the strides are the caller's."""
    bits, inf_bits = _KEYS[dtype]
    step = sample_stride(tokens)
    n_tokens = -(-tokens // step)
    block_s = max(16, triton.next_power_of_2(n_tokens))
    num_warps = max(1, min(8, block_s * BLOCK_C // 2048))  # about 64 keys a thread
    scalars = dict(C=channels, token_step=step, n_tokens=n_tokens)
    constexprs = dict(BITS=bits, INF_BITS=inf_bits, HALF=1 << (bits - 1), BLOCK_S=block_s, BLOCK_C=BLOCK_C)
    return (triton.cdiv(channels, BLOCK_C), 1, 1), num_warps, scalars, constexprs


def refusal(x: torch.Tensor) -> str | None:
    """Why the kernel does not take ``x`` (the op's reference does), or None."""
    if x.dtype not in DTYPES:
        return f"x.dtype={x.dtype} (the kernel takes {', '.join(map(str, DTYPES))})"
    if x.dim() != 2:
        return f"a {x.dim()}-d tensor (the kernel takes (tokens, channels))"
    if x.shape[1] == 0:
        return "no channels"
    return None


def sample_median(x: torch.Tensor) -> torch.Tensor:
    """``numerics.sample_median(x)`` for a 2-D bfloat16, float16 or FP32 tensor (any strides) on a GPU:
    FP32 of shape ``(1, channels)``."""
    reason = refusal(x)
    if reason is not None:
        raise ValueError(f"sample_median kernel: {reason}")
    grid, num_warps, scalars, constexprs = launch_plan(x.shape[0], x.shape[1], x.dtype)
    mu = torch.empty((1, x.shape[1]), dtype=torch.float32, device=x.device)
    _sample_median_kernel[grid](x, mu, stride_t=x.stride(0), stride_c=x.stride(1), **scalars, **constexprs,
                                num_warps=num_warps)
    return mu
