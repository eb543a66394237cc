"""One launch of each of the training step's heaviest quantize launches, at a step shape, for a profiler.

The launches (``kernels.quantize_pair``'s dual launches and their pre-passes) are compiled and run once
outside the profiled range, then once each between ``cudaProfilerStart`` and ``cudaProfilerStop``, so

    ncu --clock-control none --profile-from-start off --set detailed python benchmarks/step_launches.py

reports exactly one launch per case (names in ``CASES``). Without a GPU it says so and exits 2.
"""
from __future__ import annotations

import argparse
import sys

import torch

# (name, format spec, RHT of each job, jobs as quantize_pair takes them): X's row values + column codes in the
# forward (nearest), dY's values both ways in the backward (stochastic), for ufp4 and for nvfp4 (with the
# global-amax pre-pass of its two-level scales)
CASES = [
    ("ufp4 X", "int4/16/fp32/nearest", (16, 16), ((1, 16, torch.bfloat16), (0, 16, None))),
    ("ufp4 dY", "int4/16/fp32/stochastic", (16, 16), ((1, 16, torch.bfloat16), (0, 9, torch.bfloat16))),
    ("nvfp4 X", "e2m1/16/e4m3/nearest", (0, 16), ((1, 16, torch.bfloat16), (0, 16, None))),
    ("nvfp4 dY", "e2m1/16/e4m3/stochastic", (0, 16), ((1, 16, torch.bfloat16), (0, 9, torch.bfloat16))),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--cols", type=int, default=3072)
    parser.add_argument("--only", default=None, help="only the cases whose name contains this")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no GPU: nothing to profile", file=sys.stderr)
        return 2
    from ufp4_compile.kernels.quantize_pair_launchers import quantize_pair

    seed = torch.tensor(7, device="cuda")
    x = torch.randn(args.rows, args.cols, device="cuda", dtype=torch.bfloat16) * 3
    cases = [c for c in CASES if args.only is None or args.only in c[0]]
    for _, spec, rhts, jobs in cases:  # compile outside the profiled range
        quantize_pair(x, spec, rhts, 3, seed, jobs)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for name, spec, rhts, jobs in cases:
        torch.cuda.nvtx.range_push(name)
        quantize_pair(x, spec, rhts, 3, seed, jobs)
        torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print("profiled:", ", ".join(c[0] for c in cases), f"at {args.rows}x{args.cols}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
