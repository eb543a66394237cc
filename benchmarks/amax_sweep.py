"""The global-amax pre-passes of two-level (E4M3) scales at the training step's shapes: one tensor's row-wise and
column-wise pre-passes as two jobs of one launch (each reading the tensor: ``kernels.prepass._amax_pair_kernel``)
against one read of it (``_dual_amax_kernel``) at a sweep of tiles, and a single pre-pass for scale.

Each line: variant, shape, tile, time under a CUDA graph, the tensor's bytes over the time as a fraction of the
device's read bandwidth (a sum over the same tensor, measured first), and whether each job's global maximum
equals its own pre-pass's. The dual pre-pass's default tile (``DUAL_AMAX_TILE``) is chosen from these runs.

    python benchmarks/amax_sweep.py > amax_sweep.log      # GPU; about a second per line
    python benchmarks/amax_sweep.py --quick               # the default tile and a few others
"""
import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_launch as bench  # noqa: E402
from common import parse_timed_args  # noqa: E402

from ufp4_compile.kernels import quantize as kq  # noqa: E402
from ufp4_compile.kernels import prepass as kp  # noqa: E402
from ufp4_compile.numerics.formats import OperandFormat  # noqa: E402

# (spec, row-wise RHT, column-wise RHT): ufp4-nv rotates both; nvfp4 Fprop/Dgrad unrotated, Wgrad rotated
JOBS = [("int4/16/e4m3/nearest", 16, 16), ("e2m1/16/e4m3/nearest", 0, 16)]
SHAPES = [(8192, 1024), (8192, 2752), (8192, 3072), (8192, 5504)]


def tiles(quick: bool):
    if quick:  # the default tile at each pipelining depth, and a few others
        for stages in (1, 2, 3, 4):
            yield {"B": 256, "num_warps": 4, "cols": 2, "stages": stages}
        yield from ({"B": 128, "num_warps": 2, "cols": 2, "stages": 3}, {"B": 128, "num_warps": 4, "cols": 1,
                                                                         "stages": 3})
        return
    for b, w, c, stages in itertools.product((64, 128, 256, 512), (1, 2, 4, 8), (1, 2, 4), (1, 2, 3, 4)):
        if c * 32 * w <= b:
            yield {"B": b, "num_warps": w, "cols": c, "stages": stages}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parse_timed_args(parser)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    big = torch.randn(16384, 4096, device="cuda", dtype=torch.bfloat16)
    read_ms = bench(lambda: big.sum(dtype=torch.float32))
    read_gbs = big.numel() * 2 / read_ms / 1e6
    print(f"device {torch.cuda.get_device_name()}; read (sum) {read_gbs:.0f} GB/s", flush=True)
    n = kq.AMAX_PROGRAMS
    bad = 0
    for (spec, ra, rb), shape in itertools.product(JOBS, SHAPES):
        x = torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 3
        fmt = OperandFormat.from_spec(spec)
        plans = [kq.plan_for(x, 1, fmt, ra, codes=False, values=True), kq.plan_for(x, 0, fmt, rb, codes=True,
                                                                                   values=False)]
        keys = [kq.rht_key(plan, 3) for plan in plans]
        partials = [torch.empty(n, dtype=torch.int32, device="cuda") for _ in plans]
        want = []
        for plan, key in zip(plans, keys):
            g = torch.empty(n, dtype=torch.int32, device="cuda")
            kernel, grid, warps, tensors, scalars = kq.amax_launch(plan, x, g, key)
            kernel[grid](**tensors, **scalars, num_warps=warps)
            want.append(int(g.max()))
        label = f"{spec} rht{ra}+{rb} {shape[0]}x{shape[1]}"

        def run(launches):
            def go():
                for kernel, grid, warps, tensors, scalars in launches:
                    kernel[grid](**tensors, **scalars, num_warps=warps)
            return go

        def report(name, launches, reads):
            ms = bench(run(launches))
            run(launches)()
            same = [int(p.max()) for p in partials] == want
            frac = reads * x.numel() * 2 / ms / 1e6 / read_gbs
            print(f"{label} {name}: {ms * 1e3:.1f} us, {frac:.2f} of read bandwidth ({reads} read(s)), "
                  f"maxima {'equal' if same else 'DIFFER'}", flush=True)
            return same, ms

        ok, _ = report("pair pre-pass", kp.amax_launches(plans, [x, x], partials, keys), 2)
        bad += not ok
        best = None
        for tile in tiles(args.quick):
            ok, ms = report(f"dual {tile}", [kp.dual_amax_launch(shape, plans, [x, x], partials, keys, tile)], 1)
            bad += not ok
            if best is None or ms < best[0]:
                best = (ms, tile)
        print(f"{label} best dual tile: {best[1]} ({best[0] * 1e3:.1f} us); default {kp.DUAL_AMAX_TILE} (stages "
              f"{kp.DUAL_AMAX_STAGES_UNROTATED} where the row-wise job does not rotate)", flush=True)
    print(f"{bad} line(s) whose maxima differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
