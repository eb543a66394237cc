"""Fused RHT + quantize throughput (GB/s) per operand format of the recipes vs a device-to-device copy.

    python benchmarks/quantize.py                   # bf16 8192 x 8192, every preset format, both axes
    python benchmarks/quantize.py --rows 16384 --cols 4096
    python benchmarks/quantize.py --profile-one int4/16/fp32/nearest   # one launch (for ncu)

Bytes counted: input read once + what is written: codes + scales (``codes`` mode, what is saved for the
backward) or the dequantized bf16 operand (``values`` mode, what a bf16 GEMM reads on Hopper); the E4M3
formats' amax pre-pass reads the input a second time, not counted, so their GB/s shows its cost. The
dequantize rows read codes + scales and write bf16. The copy moves the input once (read + write), torch's
``Tensor.copy_``. Targets (issue 11): quantize >= 0.7 of copy with RHT-16 and round-to-nearest, >= 0.5 with
stochastic rounding; dequantize >= 0.8.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_launch  # noqa: E402
from common import environment, header, markdown_table, parse_timed_args, timing_note, write_results  # noqa: E402

from ufp4_compile import recipes  # noqa: E402
from ufp4_compile.numerics.formats import OperandFormat  # noqa: E402


def preset_formats(every: bool = False) -> list[tuple[str, int, str]]:
    """(spec, rht, presets using it) for the quantizations of the presets.

    By default each format once, with the largest RHT the presets use with it, plus ``ufp4``'s format
    without RHT (the RHT's cost); ``every=True`` lists every (format, RHT) pair.
    """
    seen: dict[tuple[str, int], set] = {}
    for recipe in recipes.PRESETS.values():
        for role in recipe.quantized_roles:
            g = recipe.gemm(role)
            for fmt in (g.a, g.b):
                seen.setdefault((fmt.spec, g.rht), set()).add(recipe.name)
    if not every:
        largest = {}
        for spec, rht in seen:
            largest[spec] = max(rht, largest.get(spec, 0))
        seen = {(spec, rht): names for (spec, rht), names in seen.items() if rht == largest[spec]
                or (spec, rht) == ("int4/16/fp32/nearest", 0)}
        seen.setdefault(("int4/16/fp32/nearest", 0), {"(no RHT)"})
    return [(spec, rht, ",".join(sorted(names))) for (spec, rht), names in sorted(seen.items())]


# Tiles (B columns per program, warps) tried per axis after the launcher's own plan (axis 1: the quantized axis
# is contiguous). The plan's time is the figure reported (what a step runs); a faster tile is named beside it.
TILE_CONFIGS = {
    1: [{"B": 128, "num_warps": 4}, {"B": 256, "num_warps": 4}, {"B": 64, "num_warps": 2}, {"B": 256, "num_warps": 8}],
    0: [{"B": 512, "num_warps": 2}, {"B": 256, "num_warps": 1}, {"B": 1024, "num_warps": 4},
        {"B": 256, "num_warps": 2}],
}
# Dequantize tiles tried beside the launcher's plan (kernels.dequantize.launch_plan at its defaults), by axis
# of the codes: values a program, the most code bytes a program's row holds, warps. The first of each axis is
# the plan before 37dda39 (4096 values, 64 code bytes a row row-wise, 32 column-wise, four warps).
DEQUANTIZE_TILE_CONFIGS = {
    1: [{"elements": 4096, "max_l2": 64, "num_warps": 4},
        {"elements": 8192, "max_l2": 64, "num_warps": 4}, {"elements": 8192, "max_l2": 128, "num_warps": 4},
        {"elements": 8192, "max_l2": 64, "num_warps": 8}, {"elements": 16384, "max_l2": 128, "num_warps": 8},
        {"elements": 4096, "max_l2": 128, "num_warps": 4}, {"elements": 16384, "max_l2": 64, "num_warps": 4}],
    0: [{"elements": 4096, "max_l2": 32, "num_warps": 4},
        {"elements": 8192, "max_l2": 32, "num_warps": 4}, {"elements": 4096, "max_l2": 16, "num_warps": 4},
        {"elements": 8192, "max_l2": 16, "num_warps": 4}, {"elements": 16384, "max_l2": 32, "num_warps": 8},
        {"elements": 8192, "max_l2": 32, "num_warps": 8}, {"elements": 16384, "max_l2": 16, "num_warps": 4}],
}


def _dequantize_plan_tile(axis: int) -> dict:
    """The tile ``kernels.dequantize`` plans for an 8192-wide operand along ``axis`` (its defaults)."""
    from ufp4_compile.kernels import dequantize as dq

    return {"elements": dq.PLAN_ELEMENTS, "max_l2": dq.PLAN_MAX_L2[axis == 1], "num_warps": dq.PLAN_WARPS}


# What each mode moves per element of x (bf16 in): the codes + scales, or the dequantized bf16 operand.
MODES = ("codes", "values")


def _tile(cfg: dict) -> str:
    if "elements" in cfg:  # a dequantize tile
        return f"E{cfg['elements']}/L{cfg['max_l2']}/w{cfg['num_warps']}"
    return f"B{cfg['B']}/w{cfg['num_warps']}"


def _time_plan_and_tiles(fn, plan_tile: str, configs):
    """(the launcher's plan's ms, the fastest tile's (ms, name), {name: ms}): ``fn(None)`` runs the plan."""
    timed = {f"plan {plan_tile}": bench_launch(lambda: fn(None))}
    for cfg in configs:
        if _tile(cfg) != plan_tile:
            timed[_tile(cfg)] = bench_launch(lambda: fn(cfg))
    best = min(timed, key=timed.get)
    return timed[f"plan {plan_tile}"], (timed[best], best), timed


def _prepass_ms(x, plan) -> float:
    """Milliseconds of the E4M3 global-amax pre-pass of ``plan`` alone (the first of the quantization's two
    launches, included in its ``ms``), timed as the rows are."""
    from ufp4_compile.kernels.quantize import AMAX_PROGRAMS, amax_launch, rht_key

    gamax = torch.empty(AMAX_PROGRAMS, dtype=torch.int32, device=x.device)
    kernel, grid, num_warps, tensors, scalars = amax_launch(plan, x, gamax, rht_key(plan, 5))
    return bench_launch(lambda: kernel[grid](**tensors, **scalars, num_warps=num_warps))


def run(rows: int, cols: int, every: bool = False, specs=None) -> list[dict]:
    from ufp4_compile.kernels.dequantize import dequantize
    from ufp4_compile.kernels.quantize import plan_for, quantize, quantize_dequantize

    x = torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(x)
    copy_ms = bench_launch(lambda: dst.copy_(x))
    copy_gbs = 2 * x.numel() * x.element_size() / copy_ms / 1e6
    seed = torch.tensor(1234, device="cuda")
    results = []
    for spec, rht, presets in preset_formats(every):
        if specs and spec not in specs:
            continue
        fmt = OperandFormat.from_spec(spec)
        scale_bytes = {"fp32": 4}.get(fmt.scale.value, 1)
        code_bytes = 0.5 + scale_bytes / fmt.block
        for axis in (1, 0):
            for mode in MODES:
                if mode == "codes":
                    def fn(cfg):
                        return quantize(x, axis, fmt, rht, 5, seed, 0, config=cfg)
                    moved = x.numel() * (x.element_size() + code_bytes)
                else:
                    def fn(cfg):
                        return quantize_dequantize(x, axis, fmt, rht, 5, seed, 0, torch.bfloat16, config=cfg)
                    moved = x.numel() * 2 * x.element_size()
                plan = plan_for(x, axis, fmt, rht, codes=mode == "codes", values=mode == "values")
                plan_tile = _tile(dict(B=plan.constexprs["B"], num_warps=plan.num_warps))
                ms, (best_ms, best), timed = _time_plan_and_tiles(fn, plan_tile, TILE_CONFIGS[axis])
                gbs = moved / ms / 1e6
                prepass_ms = _prepass_ms(x, plan) if plan.amax_constexprs is not None else None
                row = {"kernel": f"quantize ({mode})", "spec": spec, "rht": rht, "axis": axis, "presets": presets,
                       "ms": ms, "prepass_ms": prepass_ms, "GB/s": gbs, "copy_GB/s": copy_gbs,
                       "fraction_of_copy": gbs / copy_gbs,
                       "tile": f"plan {plan_tile}", "best_tile": best,
                       "best_fraction_of_copy": moved / best_ms / 1e6 / copy_gbs,
                       "per_tile_GB/s": {name: moved / t / 1e6 for name, t in timed.items()}}
                results.append(row)
                print(f"{mode:6s} {spec:32s} rht {rht:3d} axis {axis}: {ms:7.3f} ms {gbs:7.0f} GB/s "
                      f"({row['fraction_of_copy']:.2f} of copy {copy_gbs:.0f}), plan {plan_tile}; fastest {best} "
                      f"({row['best_fraction_of_copy']:.2f})", flush=True)
            if rht == 0 or fmt.rounding.value == "stochastic":
                continue
            codes, scales, ts = quantize(x, axis, fmt, rht, 5, seed, 0)
            plain = dequantize(codes, scales, ts, axis, fmt, torch.bfloat16, apply_tensor_scale=False)

            def deq(cfg):
                return dequantize(codes, scales, ts, axis, fmt, torch.bfloat16, apply_tensor_scale=False, config=cfg)

            for cfg in DEQUANTIZE_TILE_CONFIGS[axis]:  # any tile gives the plan's bits
                if not torch.equal(deq(cfg).view(torch.int16), plain.view(torch.int16)):
                    raise AssertionError(f"dequantize {spec} axis {axis}: tile {_tile(cfg)} changed the bits")
            moved = x.numel() * (code_bytes + x.element_size())
            ms, (best_ms, best), timed = _time_plan_and_tiles(deq, _tile(_dequantize_plan_tile(axis)),
                                                             DEQUANTIZE_TILE_CONFIGS[axis])
            gbs = moved / ms / 1e6
            results.append({"kernel": "dequantize", "spec": spec, "rht": 0, "axis": axis, "presets": presets, "ms": ms,
                            "GB/s": gbs, "copy_GB/s": copy_gbs, "fraction_of_copy": gbs / copy_gbs,
                            "tile": f"plan {_tile(_dequantize_plan_tile(axis))}", "best_tile": best,
                            "best_fraction_of_copy": moved / best_ms / 1e6 / copy_gbs,
                            "per_tile_GB/s": {name: moved / t / 1e6 for name, t in timed.items()}})
            print(f"dequantize {spec:28s} axis {axis}: {ms:7.3f} ms {gbs:7.0f} GB/s "
                  f"({gbs / copy_gbs:.2f} of copy); fastest {best} ({results[-1]['best_fraction_of_copy']:.2f})",
                  flush=True)
    return results


def plot(results: list[dict]):
    def draw(path):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(12, 5))
        labels = [f"{r['kernel']} {r['spec']}\nrht{r['rht']} ax{r['axis']}" for r in results]
        ax.bar(range(len(results)), [r["GB/s"] for r in results])
        ax.axhline(results[0]["copy_GB/s"], color="k", ls="--", label="device copy")
        ax.axhline(0.7 * results[0]["copy_GB/s"], color="k", ls=":", label="70% of copy (target)")
        ax.set_xticks(range(len(results)), labels, rotation=90, fontsize=6)
        ax.set_ylabel("GB/s")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)

    return draw


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--cols", type=int, default=8192)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--profile-one", metavar="SPEC", default=None)
    parser.add_argument("--every", action="store_true", help="every (format, RHT) pair of the presets")
    parser.add_argument("--specs", default=None, help="comma-separated format specs to measure (default: all)")
    parser.add_argument("--configs", type=int, default=None,
                        help="besides the launcher's plan, try only the first N other tiles per axis "
                             "(0: the plan alone)")
    parser.add_argument("--dequantize-configs", type=int, default=None,
                        help="the same for the dequantize rows (default: --configs)")
    parser.add_argument("--rht", type=int, default=16)
    parser.add_argument("--axis", type=int, default=1)
    args = parse_timed_args(parser, argv)
    if not torch.cuda.is_available():
        print("benchmarks/quantize.py needs a CUDA GPU")
        return 2
    if args.profile_one:
        from ufp4_compile.kernels.quantize import quantize

        x = torch.randn(args.rows, args.cols, device="cuda", dtype=torch.bfloat16)
        for _ in range(2):
            quantize(x, args.axis, args.profile_one, args.rht, 5, torch.tensor(1, device="cuda"), 0)
        torch.cuda.synchronize()
        return 0
    env = environment()
    for configs, n in ((TILE_CONFIGS, args.configs), (DEQUANTIZE_TILE_CONFIGS,
                                                      args.configs if args.dequantize_configs is None
                                                      else args.dequantize_configs)):
        if n is not None:
            for axis in configs:
                configs[axis] = configs[axis][:n]
    results = run(args.rows, args.cols, args.every, args.specs.split(",") if args.specs else None)
    columns = [("kernel", "kernel"), ("spec", "format"), ("rht", "RHT"), ("axis", "axis"), ("presets", "presets"), ("ms", "ms"),
               ("prepass_ms", "of it pre-pass ms"),
               ("GB/s", "GB/s"), ("fraction_of_copy", "of copy"), ("tile", "tile"), ("best_tile", "fastest tile"),
               ("best_fraction_of_copy", "its fraction")]
    md = header(env, f"ufp4 fused RHT + quantize, bf16 {args.rows} x {args.cols}") + (
        f"\nDevice copy: {results[0]['copy_GB/s']:.0f} GB/s (read + write). {timing_note()}. "
        f"Command: `python benchmarks/quantize.py {' '.join(argv or sys.argv[1:])}`\n\n") + markdown_table(results, columns)
    paths = write_results("quantize", env, results, md, args.out, plot(results))
    print(md)
    print("wrote", *map(str, paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
