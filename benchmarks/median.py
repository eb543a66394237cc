"""ufp4-mean's median (``numerics.mean_split``: ``aten.nanmedian`` over the sampled tokens laid out tokens-last,
an Inductor fallback) compiled by Inductor at the training step's operand shapes, against a sort-and-gather
formulation of the same median that Inductor generates itself (a bitonic-sort kernel over up to 512 sampled
tokens, the masking and the gather fused around it).

Each line: shape, both formulations' time per call (``--timing``: a cold L2 by default) and launches, and
whether ``mu`` and the residual are the same bits. On the H200 (3f54e0c, ``median_3f54e0c_nvidia-h200.log``)
the sort took 1.46-1.59 times the selection's time at every shape, so ``mean_split`` keeps the selection.

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


def sort_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same split with the median as a sort and a gather: non-finite values as NaN (sorted last), either
    zero as +0.0 (equal keys, equal bits), the value at rank ``(n - 1) // 2`` of a channel's ``n`` finite ones
    (a zero median is +0.0 here, where ``nanmedian`` may give -0.0)."""
    xf = x.float()
    sample = xf[::sample_stride(x.shape[0])]
    finite = torch.isfinite(sample)
    keys = torch.where(finite, torch.where(sample == 0, 0.0, sample), float("nan"))
    ordered = keys.movedim(0, -1).sort(dim=-1).values
    rank = (finite.sum(dim=0) - 1).clamp_min(0) // 2
    median = ordered.gather(-1, rank.unsqueeze(-1)).squeeze(-1).unsqueeze(0)
    mu = torch.where(torch.isfinite(median), median, 0.0)
    return mu, xf - mu


def launches(fn, x) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn(x)
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parse_timed_args(parser, argv)
    if not torch.cuda.is_available():
        print("no GPU: nothing to measure", file=sys.stderr)
        return 2
    sort_fn, select_fn = torch.compile(sort_split), torch.compile(mean_split)
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
