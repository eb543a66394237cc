"""Tile sweep of the quantize kernel at the training step's shapes: which (B, num_warps, row-wise fold) is
fastest per variant, and how far the launcher's default is from it.

Each line: one variant (format, RHT, shape, axis, values or codes) under one config, its time under a CUDA
graph as a fraction of copy bandwidth, and whether its output equals the default config's bit for bit (the
default equals the reference: benchmarks/quantize_shapes.py checks that). The last line per variant names
the best config. The launcher's defaults (``kernels.quantize._tile``) are chosen from these runs.

    python benchmarks/quantize_sweep.py > quantize_sweep.log       # GPU; about 2 s per config
    python benchmarks/quantize_sweep.py --quick                     # fewer configs
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

VARIANTS = [  # (spec, rht, shape, axis, mode): the ufp4 recipe's launches first, then the E2M1 recipes'
    ("int4/16/fp32/nearest", 16, (8192, 1024), 1, "values"),
    ("int4/16/fp32/nearest", 16, (8192, 1024), 0, "codes"),
    ("int4/16/fp32/stochastic", 16, (8192, 1024), 1, "values"),
    ("int4/16/fp32/stochastic", 16, (8192, 1024), 0, "values"),
    ("e2m1/16/e4m3/nearest", 0, (8192, 1024), 1, "values"),
    ("e2m1/16/e4m3/stochastic", 16, (8192, 1024), 1, "values"),
    ("e2m1/16/e4m3/stochastic", 16, (8192, 1024), 0, "values"),
    ("e2m1/32/e8m0/stochastic", 16, (8192, 1024), 0, "values"),
]


# One tensor's row-wise and column-wise quantizations in the one-read dual launch (kernels.quantize_pair), which
# runs at the column-wise job's tile (B, num_warps, cols): X's row values + column codes in the forward, dY's
# values both ways (stochastic) in the backward; MXFP4's at its span of 32 and NVFP4's (two-level scales, with
# their global-amax pre-pass) with RHT-16 on the column-wise job only, Wgrad's. (spec, RHT size of each job, shape, jobs as quantize_pair takes them)
DUALS = [
    ("int4/16/fp32/nearest", (16, 16), (8192, 1024), ((1, 16, torch.bfloat16), (0, 16, None))),
    ("int4/16/fp32/nearest", (16, 16), (8192, 2816), ((1, 16, torch.bfloat16), (0, 16, None))),
    ("int4/16/fp32/stochastic", (16, 16), (8192, 1024), ((1, 16, torch.bfloat16), (0, 9, torch.bfloat16))),
    ("int4/16/fp32/stochastic", (16, 16), (8192, 2816), ((1, 16, torch.bfloat16), (0, 9, torch.bfloat16))),
    ("e2m1/32/e8m0/nearest", (0, 16), (8192, 1024), ((1, 16, torch.bfloat16), (0, 16, None))),
    ("e2m1/32/e8m0/nearest", (0, 16), (8192, 2752), ((1, 16, torch.bfloat16), (0, 16, None))),
    ("e2m1/32/e8m0/stochastic", (0, 16), (8192, 1024), ((1, 16, torch.bfloat16), (0, 9, torch.bfloat16))),
    ("e2m1/32/e8m0/stochastic", (0, 16), (8192, 2752), ((1, 16, torch.bfloat16), (0, 9, torch.bfloat16))),
    ("e2m1/16/e4m3/nearest", (0, 16), (8192, 1024), ((1, 16, torch.bfloat16), (0, 16, None))),
    ("e2m1/16/e4m3/stochastic", (0, 16), (8192, 1024), ((1, 16, torch.bfloat16), (0, 9, torch.bfloat16))),
]


def configs(axis: int, quick: bool):
    if axis == 1:
        bs, warps = ((64, 128, 256), (2, 4)) if quick else ((32, 64, 128, 256, 512), (1, 2, 4, 8))
        for fold, b, w in itertools.product((True, False), bs, warps):
            yield {"fold": fold, "B": b, "num_warps": w}
    else:
        bs, warps = ((128, 256, 512), (1, 2, 4)) if quick else ((64, 128, 256, 512, 1024), (1, 2, 4, 8))
        for b, w in itertools.product(bs, warps):
            yield {"B": b, "num_warps": w}
        # narrower vectors, fewer registers: on sm_90 two bf16 columns per thread take 90-119 registers where
        # four (the default) take 194-196
        for cols, b, w in itertools.product((2, 1), (64, 128, 256), (1, 2, 4)):
            if cols * 32 * w <= b:
                yield {"B": b, "num_warps": w, "cols": cols}


def pipeline_configs():
    """Several tiles a program at the default tile, their loads software-pipelined ``stages`` deep
    (``kernels.quantize._quantize_kernel``'s ``TILES`` / ``STAGES``; stages 1: the loop alone)."""
    for tiles, stages in itertools.product((2, 4, 8), (1, 2, 3)):
        yield {"tiles": tiles, "stages": stages}


def dual_configs(quick: bool, span: int = 16):
    """The dual launch's tiles, ``width`` columns (``B``, what pair_launch takes, is ``width * span / 16``)."""
    for cols, width, w in itertools.product((4, 2, 1), (32, 64, 128, 256, 512), (1, 2, 4) if quick else (1, 2, 4, 8)):
        if span <= width <= (256 if quick else 512) and cols * 32 * w <= width:
            yield {"B": width * span // 16, "num_warps": w, "cols": cols}


def sweep_duals(seed, copy_gbs: float, quick: bool, spec_filter: str | None = None) -> int:
    """The dual launch per config, against its default and against the two single launches (each at its
    default tile); bits against the default's. Returns the number of configs whose bits differ."""
    from ufp4_compile.kernels.quantize_pair_launchers import quantize_pair

    bad = 0
    for spec, rhts, shape, jobs in DUALS:
        if spec_filter and spec_filter not in spec:
            continue
        x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16) * 3
        nbytes = x.numel() * 2 + sum(x.numel() * 2 if dtype is not None else x.numel() // 2 + x.numel() // 16 * 4
                                     for _, _, dtype in jobs)  # one read, both jobs' writes

        def dual(config):
            return [t for out in quantize_pair(x, spec, rhts, 3, seed, jobs, config=config) for t in out[:-1]]

        def singles():
            return [run(x, spec, r, axis, "codes" if dtype is None else "values", seed, None)
                    for (axis, _, dtype), r in zip(jobs, rhts)]

        expect = torch.cat([t.reshape(-1).view(torch.uint8) for t in dual(None)])
        singles_ms = bench(singles)
        default_ms = bench(lambda: dual(None))
        name = f"dual {spec:24s} {str(shape):13s} {'+'.join('codes' if d is None else 'values' for _, _, d in jobs)}"
        print(f"{name} two single launches {singles_ms * 1e3:7.1f} us; dual default {default_ms * 1e3:7.1f} us "
              f"({nbytes / default_ms / 1e6 / copy_gbs:.2f} of copy, {default_ms / singles_ms:.2f} of two launches)",
              flush=True)
        best = (default_ms, "default")
        for config in dual_configs(quick, int(spec.split("/")[1])):
            try:
                same = torch.equal(torch.cat([t.reshape(-1).view(torch.uint8) for t in dual(config)]), expect)
                ms = bench(lambda: dual(config))
            except Exception as err:  # a tile the compiler refuses
                print(f"{name} {config} failed: {repr(err)[:120]}", flush=True)
                continue
            bad += not same
            print(f"{name} {config} {ms * 1e3:7.1f} us ({nbytes / ms / 1e6 / copy_gbs:.2f} of copy, "
                  f"{ms / singles_ms:.2f} of two launches) same {same}", flush=True)
            if same and ms < best[0]:
                best = (ms, config)
        print(f"{name} BEST {best[1]} {best[0] * 1e3:.1f} us ({best[0] / singles_ms:.2f} of two launches)",
              flush=True)
    return bad


def run(x, spec, rht, axis, mode, seed, config):
    """The launch that is timed: the dequantized operand, or (codes, scales, tensor scale)."""
    if mode == "values":
        return kq.quantize_dequantize(x, axis, spec, rht, 3, seed, 16, config=config)[0]
    return kq.quantize(x, axis, spec, rht, 3, seed, 16, config=config)


def output_bytes(out) -> torch.Tensor:
    """The launch's output as one byte tensor, for the bit comparison (outside the timed call)."""
    if isinstance(out, torch.Tensor):
        return out.view(torch.uint8)
    codes, scales, _ = out
    return torch.cat([codes.view(-1), scales.view(torch.uint8).view(-1)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("single", "dual"), help="sweep only the single or only the dual launches")
    parser.add_argument("--spec", help="only the variants whose format spec contains this (e2m1/32: MXFP4's)")
    parser.add_argument("--pipeline", action="store_true",
                        help="the single launches: several tiles a program, pipelined, instead of the tile sweep")
    parser.add_argument("--shape", type=int, nargs=2, help="the single launches' shape (default: each variant's)")
    args = parse_timed_args(parser)
    if not torch.cuda.is_available():
        print("no GPU: nothing to measure", file=sys.stderr)
        return 2
    seed = torch.tensor(7, device="cuda")
    x0 = torch.empty(16384, 4096, device="cuda", dtype=torch.bfloat16)
    copy_gbs = 2 * x0.numel() * 2 / bench(lambda: x0.clone()) / 1e6
    print(f"copy {copy_gbs:.0f} GB/s", flush=True)
    bad = 0
    for spec, rht, shape, axis, mode in (VARIANTS if args.only != "dual" else ()):
        if args.spec and args.spec not in spec:
            continue
        shape = tuple(args.shape) if args.shape else shape
        x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16) * 3
        nbytes = x.numel() * 4 if mode == "values" else x.numel() * 2 + x.numel() // 2 + x.numel() // 16 * 4
        expect = output_bytes(run(x, spec, rht, axis, mode, seed, None))
        default_ms = bench(lambda: run(x, spec, rht, axis, mode, seed, None))
        name = f"{spec:24s} rht{rht:<3d} {str(shape):13s} axis {axis} {mode:6s}"
        print(f"{name} default {default_ms * 1e3:7.1f} us ({nbytes / default_ms / 1e6 / copy_gbs:.2f} of copy)",
              flush=True)
        best = (default_ms, "default")
        for config in (pipeline_configs() if args.pipeline else configs(axis, args.quick)):
            try:
                same = torch.equal(output_bytes(run(x, spec, rht, axis, mode, seed, config)), expect)
                ms = bench(lambda: run(x, spec, rht, axis, mode, seed, config))
            except Exception as err:  # a tile the compiler refuses (too many registers, a bad layout)
                print(f"{name} {config} failed: {repr(err)[:120]}", flush=True)
                continue
            bad += not same
            print(f"{name} {config} {ms * 1e3:7.1f} us ({nbytes / ms / 1e6 / copy_gbs:.2f} of copy) same {same}",
                  flush=True)
            if same and ms < best[0]:
                best = (ms, config)
        print(f"{name} BEST {best[1]} {best[0] * 1e3:.1f} us ({nbytes / best[0] / 1e6 / copy_gbs:.2f} of copy)",
              flush=True)
    if args.only != "single":
        bad += sweep_duals(seed, copy_gbs, args.quick, args.spec)
    print("configs whose bits differ from the default:", bad)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
