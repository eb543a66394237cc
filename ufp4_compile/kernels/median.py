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

from ufp4_compile.kernels.quantize import _quantize_at, launch_plan as quantize_launch_plan
from ufp4_compile.numerics.formats import OperandFormat, ScaleFormat
from ufp4_compile.numerics.mean_split import sample_stride

# bits of the stored value, and the magnitude at which the exponent field is all ones (Inf / NaN)
_KEYS = {torch.bfloat16: (16, 0x7F80), torch.float16: (16, 0x7C00), torch.float32: (32, 0x7F800000)}
DTYPES = tuple(_KEYS)
BLOCK_C = 16  # channels a program: 32 contiguous bytes of a bfloat16 token row
_Q_ROWS = tl.constexpr(2)  # the rows of the fused quantization's tile (mu has one; the tile code takes at least two)
# the format constexprs of a quantize plan that the fused quantization takes (its tile is the kernel's own)
_Q_KEYS = ("GRID", "SCALE", "BLOCK", "STOCHASTIC", "SR_GROUPED", "E8M0_FLOOR", "Q_MAX", "RHT", "INV_SQRT",
           "SIGN_MASK", "WRITE_CODES", "WRITE_VALUES", "ASM")


@triton.jit
def _sample_median_kernel(x_ptr, mu_ptr, C, stride_t, stride_c, token_step, n_tokens,
                          BITS: tl.constexpr, INF_BITS: tl.constexpr, HALF: tl.constexpr,
                          BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
                          q_codes_ptr=None, q_scales_ptr=None, q_values_ptr=None, q_ts_ptr=None, q_seed_ptr=None,
                          q_offset=0, q_rht_key=0, QUANTIZE: tl.constexpr = False, GRID: tl.constexpr = 0,
                          SCALE: tl.constexpr = 0, BLOCK: tl.constexpr = 16, STOCHASTIC: tl.constexpr = False,
                          SR_GROUPED: tl.constexpr = True, E8M0_FLOOR: tl.constexpr = False,
                          Q_MAX: tl.constexpr = 7.0, RHT: tl.constexpr = 0, INV_SQRT: tl.constexpr = 0.25,
                          SIGN_MASK: tl.constexpr = 0, WRITE_CODES: tl.constexpr = False,
                          WRITE_VALUES: tl.constexpr = False, ASM: tl.constexpr = False):
    """``mu`` of ``BLOCK_C`` channels a program; ``QUANTIZE``: then ``mu``'s row-wise quantization too, those
    ``BLOCK_C`` (one block and RHT group of 16) channels a program, through the single quantize launch's own
    code (``quantize._quantize_at``; the format's constexprs are its plan's): the split's quantized ``mu``
    without a launch of its own."""
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
    if QUANTIZE:
        tl.debug_barrier()  # the program's mu, stored by its threads, is read back by others
        pid = tl.program_id(0)
        _quantize_at(mu_ptr, q_codes_ptr, q_scales_ptr, q_values_ptr, q_ts_ptr, None, q_seed_ptr, 1, C, 0, C, 1,
                     q_offset, q_rht_key, pid * BLOCK_C, 0, tl.arange(0, _Q_ROWS), pid * 0, pid == 0, GRID, SCALE,
                     BLOCK, False, STOCHASTIC, SR_GROUPED, E8M0_FLOOR, Q_MAX, RHT, INV_SQRT, SIGN_MASK, True, 1,
                     WRITE_CODES, WRITE_VALUES, ASM, BLOCK_C, _Q_ROWS, False)


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


def quantize_refusal(channels: int, fmt: OperandFormat, rht: int) -> str | None:
    """Why the selection launch cannot also quantize ``mu`` (``(1, channels)``, row-wise) in ``fmt`` with an
    RHT of ``rht``, or None: a program's ``BLOCK_C`` channels must be whole blocks and RHT groups of one-level
    scales (two-level ones need a global maximum first)."""
    if fmt.block_2d or fmt.block != BLOCK_C:
        return f"blocks of {fmt.block}{' x 16' if fmt.block_2d else ''} (a program holds {BLOCK_C} channels)"
    if fmt.scale is not ScaleFormat.FP32:
        return f"{fmt.scale.value} scales (the fused quantization takes FP32 ones)"
    if rht not in (0, BLOCK_C):
        return f"an RHT of {rht}"
    if channels % BLOCK_C:
        return f"{channels} channels (not a multiple of {BLOCK_C})"
    return None


# the fused quantization's constexprs where the launch only selects (the lowering passes every argument of
# the kernel, these included, rather than count on its defaults)
NO_QUANTIZE = dict(QUANTIZE=False, GRID=0, SCALE=0, BLOCK=16, STOCHASTIC=False, SR_GROUPED=True, E8M0_FLOOR=False,
                   Q_MAX=7.0, RHT=0, INV_SQRT=0.25, SIGN_MASK=0, WRITE_CODES=False, WRITE_VALUES=False, ASM=False)


def quantize_constexprs(plan) -> dict:
    """The fused quantization's constexprs (``quantize_refusal`` is None): the format's, from ``plan``, the
    single launch's plan of ``mu`` (``kernels.quantize.launch_plan``), so each value goes through the same
    code with the same constants."""
    return {"QUANTIZE": True, **{k: plan.constexprs[k] for k in _Q_KEYS}}


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


def sample_median_quantized(x: torch.Tensor, fmt, rht: int, rht_seed: int, seed, offset: int,
                            dtype: torch.dtype | None) -> tuple:
    """``mu = sample_median(x)`` and ``mu``'s row-wise quantization (``kernels.quantize.quantize`` for
    ``dtype=None``, else ``quantize_dequantize``'s values) from one launch, where :func:`quantize_refusal`
    allows: ``(mu, result)``, each bit for bit its own call's."""
    from ufp4_compile.kernels.quantize import _seed_tensor, eager_outputs, plan_for, rht_key
    from ufp4_compile.numerics.quantize import as_format, check_quantize_inputs

    fmt = as_format(fmt)
    reason = refusal(x) or quantize_refusal(x.shape[1], fmt, rht)
    if reason is not None:
        raise ValueError(f"sample_median_quantized: {reason}")
    mu = torch.empty((1, x.shape[1]), dtype=torch.float32, device=x.device)
    check_quantize_inputs(mu, 1, fmt, rht, seed)
    plan = plan_for(mu, 1, fmt, rht, codes=dtype is None, values=dtype is not None)
    grid, num_warps, scalars, constexprs = launch_plan(x.shape[0], x.shape[1], x.dtype)
    q = quantize_constexprs(plan)
    (codes, scales, values, ts), result = eager_outputs(plan, mu.shape, dtype, x.device)
    seed_t = _seed_tensor(seed, x.device) if q["STOCHASTIC"] else None
    _sample_median_kernel[grid](x, mu, stride_t=x.stride(0), stride_c=x.stride(1), q_codes_ptr=codes,
                                q_scales_ptr=scales, q_values_ptr=values, q_ts_ptr=ts, q_seed_ptr=seed_t,
                                q_offset=int(offset), q_rht_key=rht_key(plan, rht_seed), **scalars, **constexprs,
                                **q, num_warps=num_warps)
    return mu, result


# ---- compile-only variants (ufp4_compile.kernels.targets protocol) --------------------------------------

def compile_variants():
    """The selection launch of a bfloat16 (8192, 4096) operand (the step's sample of 482 tokens), alone and with
    ufp4-mean's quantizations of mu: its forward's values (round to nearest) and its backward's (stochastic)."""
    from ufp4_compile.kernels.targets import KernelVariant

    grid, num_warps, scalars, constexprs = launch_plan(8192, 4096, torch.bfloat16)
    types = dict(x_ptr="*bf16", mu_ptr="*fp32", C="i32", stride_t="i32", token_step="i32", n_tokens="i32")
    nones = dict(q_codes_ptr=None, q_scales_ptr=None, q_values_ptr=None, q_ts_ptr=None, q_seed_ptr=None)
    variants = [KernelVariant.build("sample_median[bf16]", "ufp4-mean", _sample_median_kernel, types,
                                    {"stride_c": 1, "q_offset": 0, "q_rht_key": 0, **constexprs, **nones,
                                     **NO_QUANTIZE}, aligned=("x_ptr", "mu_ptr", "C"),
                                    options=dict(num_warps=num_warps))]
    for spec in ("int4/16/fp32/nearest", "int4/16/fp32/stochastic"):
        plan = quantize_launch_plan((1, 4096), 4, 1, OperandFormat.from_spec(spec), 16, False, True, False)
        q = quantize_constexprs(plan)  # values, no inline PTX
        q_types = dict(q_values_ptr="*bf16", q_ts_ptr="*fp32", q_offset="i64", q_rht_key="i32")
        unused = dict(q_codes_ptr=None, q_scales_ptr=None)
        if q["STOCHASTIC"]:
            q_types["q_seed_ptr"] = "*i64"
        else:
            unused["q_seed_ptr"] = None
        variants.append(KernelVariant.build(
            f"sample_median[bf16, mu's {spec} values]", "ufp4-mean", _sample_median_kernel, types | q_types,
            {"stride_c": 1, **constexprs, **unused, **q}, aligned=("x_ptr", "mu_ptr", "C", "q_values_ptr"),
            options=dict(num_warps=num_warps)))
    return variants
