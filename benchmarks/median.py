"""ufp4-mean's median at the training step's operand shapes, both compiled by Inductor: the mean split as the
rewrite pass computes it (``mu`` from the ``ufp4::sample_median`` op: one launch of our selection kernel,
``kernels/median.py``) against the reference traced as it is (``numerics.mean_split``: ``aten.nanmedian`` over
the sampled tokens laid out tokens-last, an Inductor fallback, with the copy of the sample and the masking).

Each line: shape, both formulations' time per call (``--timing``: a cold L2 by default) and launches, and
whether ``mu`` and the residual are the same bits. (At 3f54e0c this script compared a sort-and-gather
formulation with ``nanmedian``: 1.46-1.59 times its time, ``median_3f54e0c_nvidia-h200.log``.)

    python benchmarks/median.py          # GPU; a few seconds per shape
    python benchmarks/median.py --warps 1,2,4,8,16   # the selection launch alone at each warp count
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_launch, parse_timed_args, timing_note  # noqa: E402

from ufp4_compile import lowering, ops  # noqa: E402
from ufp4_compile.numerics.mean_split import mean_split  # noqa: E402


def kernel_split(x):
    """The split with ``mu`` from the ``ufp4::sample_median`` op (our selection kernel) and the residual
    written, as ``mean_split`` writes it (the training step's quantize subtracts ``mu`` itself instead)."""
    mu = ops.sample_median(x)
    return mu, x.float() - mu

SHAPES = [(8192, 1024), (8192, 2752), (8192, 3072), (8192, 5504)]


def launches(fn, x) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn(x)
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def warps_sweep(warps: list[int]) -> int:
    """The selection launch alone (``kernels.median._sample_median_kernel``, no quantization) at each shape and
    warp count against the warp count ``launch_plan`` picks; every count's ``mu`` must be the plan's bits (a
    selection counts keys, so the layout cannot change the answer)."""
    from ufp4_compile.kernels.median import NO_QUANTIZE, _sample_median_kernel, launch_plan

    differ = 0
    for shape in SHAPES:
        x = (torch.randn(shape, device="cuda") + torch.linspace(-2, 2, shape[1], device="cuda")).bfloat16()
        grid, planned, scalars, constexprs = launch_plan(*shape, x.dtype)

        def run(num_warps):
            mu = torch.empty((1, shape[1]), dtype=torch.float32, device="cuda")
            _sample_median_kernel[grid](x, mu, stride_t=x.stride(0), stride_c=x.stride(1), **scalars, **constexprs,
                                        **NO_QUANTIZE, num_warps=num_warps)
            return mu

        want = run(planned)
        cells = []
        for w in warps:
            same = torch.equal(run(w).view(torch.int32), want.view(torch.int32))
            differ += not same
            cells.append(f"{w} warps {bench_launch(lambda: run(w)) * 1e3:6.1f} us{'' if same else ' (DIFFERENT BITS)'}")
        print(f"{str(shape):13s} planned {planned} warps, {grid[0]} programs: " + "; ".join(cells), flush=True)
    return 1 if differ else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warps", default=None, help="comma-separated warp counts: sweep the selection launch alone")
    args = parse_timed_args(parser, argv)
    if not torch.cuda.is_available():
        print("no GPU: nothing to measure", file=sys.stderr)
        return 2
    lowering.register()
    if args.warps:
        print(f"device {torch.cuda.get_device_name()}; {timing_note()}", flush=True)
        return warps_sweep([int(w) for w in args.warps.split(",")])
    kernel_fn, select_fn = torch.compile(kernel_split), torch.compile(mean_split)
    print(f"device {torch.cuda.get_device_name()}; {timing_note()}", flush=True)
    differ = 0
    for shape in SHAPES:
        x = (torch.randn(shape, device="cuda") + torch.linspace(-2, 2, shape[1], device="cuda")).bfloat16()
        x[3, 7] = float("nan")
        got, want = kernel_fn(x), select_fn(x)
        same = all(torch.equal(g.view(torch.int32), w.view(torch.int32)) for g, w in zip(got, want))
        differ += not same
        kernel_ms, select_ms = bench_launch(lambda: kernel_fn(x)), bench_launch(lambda: select_fn(x))
        print(f"{str(shape):13s} selection kernel {kernel_ms * 1e3:7.1f} us ({launches(kernel_fn, x)} launches); "
              f"nanmedian {select_ms * 1e3:7.1f} us ({launches(select_fn, x)} launches); "
              f"{kernel_ms / select_ms:.2f} of its time; same bits {same}", flush=True)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
