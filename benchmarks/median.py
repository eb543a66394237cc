"""ufp4-mean's median (``numerics.mean_split``) compiled by Inductor at the training step's operand shapes: the
sort-and-gather formulation (a generated bitonic-sort kernel over the sampled tokens) against the selection it
replaced (``aten.nanmedian``, an Inductor fallback, over the same sample laid out tokens-last).

Each line: shape, both formulations' time per call (``--timing``: a cold L2 by default) and launches, and
whether ``mu`` and the residual are the same bits (they are, but for the sign of a zero median: the sort
takes +0.0).

    python benchmarks/median.py          # GPU; a few seconds per shape
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_launch, parse_timed_args, timing_note  # noqa: E402

from ufp4_compile.numerics.mean_split import mean_split, sample_stride  # noqa: E402

SHAPES = [(8192, 1024), (8192, 2752), (8192, 3072), (8192, 5504)]


def selection_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The formulation before the sort: the same sample, masked, tokens last, ``nanmedian`` over them."""
    xf = x.float()
    sample = xf[::sample_stride(x.shape[0])]
    finite_or_nan = torch.where(torch.isfinite(sample), sample, float("nan")).movedim(0, -1).contiguous()
    median = finite_or_nan.nanmedian(dim=-1).values.unsqueeze(0)
    mu = torch.where(torch.isfinite(median), median, 0.0)
    return mu, xf - mu


def launches(fn, x) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn(x)
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = parse_timed_args(parser, argv)
    del args
    if not torch.cuda.is_available():
        print("no GPU: nothing to measure", file=sys.stderr)
        return 2
    sort_fn, select_fn = torch.compile(mean_split), torch.compile(selection_split)
    print(f"device {torch.cuda.get_device_name()}; {timing_note()}", flush=True)
    differ = 0
    for shape in SHAPES:
        x = (torch.randn(shape, device="cuda") + torch.linspace(-2, 2, shape[1], device="cuda")).bfloat16()
        x[3, 7] = float("nan")
        got, want = sort_fn(x), select_fn(x)
        same = all(torch.equal(g.view(torch.int32), w.view(torch.int32)) for g, w in zip(got, want))
        differ += not same
        sort_ms, select_ms = bench_launch(lambda: sort_fn(x)), bench_launch(lambda: select_fn(x))
        print(f"{str(shape):13s} sort + gather {sort_ms * 1e3:7.1f} us ({launches(sort_fn, x)} launches); "
              f"nanmedian {select_ms * 1e3:7.1f} us ({launches(select_fn, x)} launches); "
              f"{sort_ms / select_ms:.2f} of its time; same bits {same}", flush=True)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
