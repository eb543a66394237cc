"""Host cost of one call of each ufp4 op on CUDA: what bounds a training step whose kernels are small.

Each op is called back to back on a small operand (its GPU time is a few microseconds), so the wall time per
call is the host's: op dispatch, our launcher, Triton's launcher, allocations. A ``cProfile`` of the same
calls splits it by module (Triton runtime, torch, ufp4_compile, other). For comparison it times a bare Triton
launch of a trivial kernel and ``torch.mm`` of the same size.

    python benchmarks/host_overhead.py [--calls 400] [--out benchmarks/results]

Writes host_overhead_<device>.json and .md. GPU only.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pathlib
import pstats
import re
import statistics
import sys
import time

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import RESULTS, device_slug, environment, header  # noqa: E402

import ufp4_compile.ops  # noqa: E402,F401  (defines torch.ops.ufp4)
from ufp4_compile.lowering.cuda_impls import register_cuda_impls  # noqa: E402


@triton.jit
def _touch(x_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(x_ptr + offs, tl.load(x_ptr + offs) + 1)


def per_call_us(fn, calls: int) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


def split_by_module(fn, calls: int) -> dict[str, float]:
    """Microseconds per call spent in each group of functions (cProfile's own time, so it sums to the total
    under the profiler, which inflates every figure by about the same factor)."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    groups: dict[str, float] = {}
    for (path, _, _), (_, _, tottime, _, _) in pstats.Stats(prof).stats.items():
        if "triton" in path:
            group = "triton runtime"
        elif "ufp4_compile" in path:
            group = "ufp4_compile"
        elif "torch" in path or path == "~":  # "~": built-ins (torch C++ calls: empty, reshape, dispatcher)
            group = "torch and built-ins"
        else:
            group = "other python"
        groups[group] = groups.get(group, 0.0) + tottime / calls * 1e6
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]))


def graph_host_us(fn, inputs, reps: int = 7) -> tuple[float, int]:
    """(host µs to issue one call of ``fn`` compiled by Inductor, launches in its generated code): the GPU is
    held busy by a sleep kernel queued first, so the time is the host's alone (Inductor's wrapper, the
    launchers, allocations), as in a training step's graph."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True):
        compiled = torch.compile(fn, fullgraph=True)
        _, code = run_and_get_code(compiled, *inputs)
    launches = len(re.findall(r"\w+\.run\(", "\n".join(code)))
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        torch.cuda._sleep(200_000_000)
        t0 = time.perf_counter()
        compiled(*inputs)
        times.append(time.perf_counter() - t0)
        torch.cuda.synchronize()
    return statistics.median(times) * 1e6, launches


def graph_cases(n_tensors: int = 48) -> list[dict]:
    """Host µs per launch inside compiled graphs: ``n_tensors`` tensors each through an Inductor pointwise
    kernel, through one row-wise quantization, through the two quantizations of a training step's X (row-wise
    values, column-wise codes) with pairing off and on (the dual launch), and the same for an E4M3 two-level
    format (each quantization with its global-amax pre-pass; paired: the dual launch and one pre-pass launch
    for both)."""
    from ufp4_compile import lowering
    from ufp4_compile.lowering import kernel_calls

    lowering.register()
    xs = [torch.randn(512, 1024, device="cuda", dtype=torch.bfloat16) for _ in range(n_tensors)]
    seed = torch.tensor(7, device="cuda", dtype=torch.int64)

    def pointwise(xs):
        return [t * 2 for t in xs]

    def rowwise(spec):
        def f(xs, seed):
            return [torch.ops.ufp4.quantize_dequantize(t, 1, spec, 16, 3, seed, 16 * i, torch.bfloat16)
                    for i, t in enumerate(xs)]
        return f

    def both(spec):
        def f(xs, seed):
            outs = []
            for i, t in enumerate(xs):
                outs += torch.ops.ufp4.quantize_dequantize(t, 1, spec, 16, 3, seed, 16 * i, torch.bfloat16)
                outs += torch.ops.ufp4.quantize(t, 0, spec, 16, 3, seed, (1 << 32) + 16 * i)
            return outs
        return f

    cases = [("Inductor pointwise kernel (t * 2)", pointwise, (xs,), True)]
    for spec in ("int4/16/fp32/nearest", "int4/16/e4m3/nearest"):
        cases += [(f"{spec} row-wise values", rowwise(spec), (xs, seed), False),
                  (f"{spec} X's two, unpaired", both(spec), (xs, seed), False),
                  (f"{spec} X's two, paired (dual launch)", both(spec), (xs, seed), True)]
    rows = []
    for name, fn, inputs, paired in cases:
        with kernel_calls.pair_launches(paired):
            us, launches = graph_host_us(fn, inputs)
        rows.append({"case": name, "tensors": n_tensors, "launches": launches, "host_us": us,
                     "us_per_launch": us / max(launches, 1), "us_per_tensor": us / n_tensors})
        print(f"{name}: {us:.0f} us, {launches} launches, {rows[-1]['us_per_launch']:.1f} us/launch, "
              f"{rows[-1]['us_per_tensor']:.1f} us/tensor", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=400)
    p.add_argument("--size", type=int, default=1024, help="operand is size x size bf16")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("no CUDA device: this benchmark measures the host cost of CUDA launches")
    register_cuda_impls()
    env = environment()
    n = args.size
    x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    seed = torch.tensor(7, device="cuda", dtype=torch.int64)
    q = torch.ops.ufp4.quantize
    sr, near = "int4/16/fp32/stochastic", "int4/16/fp32/nearest"
    codes, scales, ts = q(x, 1, near, 16, 3, None, 0)
    nv = "int4/16/e4m3/nearest"
    nv_codes, nv_scales, nv_ts = q(x, 1, nv, 16, 3, None, 0)
    small = torch.zeros(128, device="cuda")
    y = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    from ufp4_compile.lowering.templates import ufp4_dequant_mm
    cases = {
        "triton launch of a trivial kernel": lambda: _touch[(1,)](small, N=128),
        "torch.mm (bf16)": lambda: torch.mm(x, y),
        "ufp4.quantize row-wise, RHT-16, nearest (fp32 scales)": lambda: q(x, 1, near, 16, 3, None, 0),
        "ufp4.quantize column-wise, RHT-16, stochastic": lambda: q(x, 0, sr, 16, 3, seed, 5),
        "ufp4.quantize row-wise, RHT-16, E4M3 two-level": lambda: q(x, 1, nv, 16, 3, None, 0),
        "ufp4.dequantize": lambda: torch.ops.ufp4.dequantize(codes, scales, ts, 1, near, torch.bfloat16),
        # The extern choice Inductor's generated code calls for every ufp4 GEMM on the H100.
        "ufp4_dequant_mm (2 dequantize + cuBLAS)": lambda: ufp4_dequant_mm(
            codes, scales, ts, codes, scales, ts, a_fmt=near, b_fmt=near, compute_dtype="bf16", out=out),
        "ufp4_dequant_mm, E4M3 tensor scales": lambda: ufp4_dequant_mm(
            nv_codes, nv_scales, nv_ts, nv_codes, nv_scales, nv_ts, a_fmt=nv, b_fmt=nv, compute_dtype="bf16",
            out=out),
    }
    rows = []
    for name, fn in cases.items():
        rows.append({"case": name, "us_per_call": per_call_us(fn, args.calls),
                     "profile_us_per_call": split_by_module(fn, max(50, args.calls // 4))})
        print(f"{name}: {rows[-1]['us_per_call']:.1f} us/call  {rows[-1]['profile_us_per_call']}", flush=True)
    graphs = graph_cases()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = device_slug(env["device"])
    (out / f"host_overhead_{slug}.json").write_text(json.dumps({"env": env, "size": n, "calls": args.calls,
                                                               "rows": rows, "graphs": graphs}, indent=1) + "\n")
    groups = sorted({g for r in rows for g in r["profile_us_per_call"]})
    lines = [header(env, "Host cost per call of the ufp4 ops"), "",
             f"{n}x{n} bf16 operands, {args.calls} calls back to back, then one synchronize; the GPU work per call "
             "is a few microseconds, so the wall time per call is the host's. The split (cProfile, own time per "
             "function, grouped by module) is inflated by the profiler; read it as proportions.", "",
             "| call | µs/call | " + " | ".join(f"{g} (profiled µs)" for g in groups) + " |",
             "|---|---|" + "---|" * len(groups)]
    for r in rows:
        lines.append(f"| {r['case']} | {r['us_per_call']:.1f} | "
                     + " | ".join(f"{r['profile_us_per_call'].get(g, 0.0):.1f}" for g in groups) + " |")
    lines += ["", "Inside compiled graphs (what a training step runs): host time to issue one call of a graph of "
              f"{graphs[0]['tensors']} tensors (512 x 1024 bf16) while the GPU is held busy by a sleep kernel "
              "queued first, median of 7 calls; launches counted in the generated code.", "",
              "| graph | launches | host µs | µs/launch | µs/tensor |", "|---|---|---|---|---|"]
    lines += [f"| {g['case']} | {g['launches']} | {g['host_us']:.0f} | {g['us_per_launch']:.1f} | "
              f"{g['us_per_tensor']:.1f} |" for g in graphs]
    lines += ["", f"Command: `python benchmarks/host_overhead.py {' '.join(argv or sys.argv[1:])}`", ""]
    (out / f"host_overhead_{slug}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
