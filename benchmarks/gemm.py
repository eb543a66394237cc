"""Block-scaled 4-bit GEMM per recipe vs cuBLAS bf16 and cuBLAS FP8 (row-wise scaled), same run.

    python benchmarks/gemm.py                      # 8192^3 + Llama-3-8B Fprop/Dgrad/Wgrad, T = 8192
    python benchmarks/gemm.py --shapes square --presets ufp4 mxfp4
    python benchmarks/gemm.py --profile-one ufp4   # one launch of the default template config (for ncu)

Each recipe GEMM is timed through every choice the lowering offers (lowering/scaled_mm.py): the template's
main loop (standalone launch of the same kernel, each tile config; best reported), the per-block-scaling
variant where exact, and dequantize + cuBLAS. "ours" is the fastest of them, i.e. what the autotuner
picks. Operands are laid out per role as the pass produces them (Dgrad: b a transposed view; Wgrad:
both). TFLOP/s = 2MNK / median time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_ms, environment, header, markdown_table, write_results  # noqa: E402

from ufp4_compile import recipes  # noqa: E402
from ufp4_compile.recipes import Role  # noqa: E402

TOKENS = 8192
# Llama-3-8B linear layers (in_features, out_features): fused q/k/v (4096 + 2 x 1024), o, up (= gate), down.
LLAMA3_8B = {"qkv": (4096, 6144), "o": (4096, 4096), "up": (4096, 14336), "down": (14336, 4096)}
PRESETS = ("ufp4", "ufp4-nv", "nvfp4", "mxfp4", "e2m1-ref")  # ufp4-mean runs ufp4's GEMMs


def role_shape(role: Role, in_f: int, out_f: int, tokens: int = TOKENS) -> tuple[int, int, int]:
    """(M, N, K) of ``role`` for a linear layer ``in_f -> out_f``."""
    return {Role.FPROP: (tokens, out_f, in_f), Role.DGRAD: (tokens, in_f, out_f),
            Role.WGRAD: (out_f, in_f, tokens)}[role]


def shapes(kind: str) -> list[tuple[str, Role, tuple[int, int, int]]]:
    out = []
    if kind in ("all", "square"):
        out.append(("8192^3", Role.FPROP, (8192, 8192, 8192)))
    if kind in ("all", "llama"):
        for name, (in_f, out_f) in LLAMA3_8B.items():
            for role in Role:
                out.append((f"llama3-8b.{name}", role, role_shape(role, in_f, out_f)))
    return out


def operands(gemm_recipe, role: Role, M: int, N: int, K: int):
    """Quantized (a, b) tuples (codes, scales, tensor_scale, spec) laid out as the pass produces them."""
    from ufp4_compile.kernels.quantize import quantize

    a_fmt, b_fmt = gemm_recipe.a, gemm_recipe.b
    seed = torch.tensor(7, device="cuda")

    def q(rows, cols, fmt, transposed):
        x = torch.randn(cols, rows, device="cuda", dtype=torch.bfloat16) if transposed else \
            torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16)
        codes, scales, ts = quantize(x, 0 if transposed else 1, fmt, gemm_recipe.rht, 0, seed, 0)
        if transposed:
            codes, scales = codes.t(), scales.t()
        return codes, scales, ts, fmt.spec

    a = q(M, K, a_fmt, role is Role.WGRAD)
    b = q(N, K, b_fmt, role is not Role.FPROP)
    return a, b


def time_choices(a, b, compute: str, configs: dict, sweep: bool) -> list[dict]:
    """Median ms of every choice of the lowering for these operands."""
    from ufp4_compile.kernels import gemm
    from ufp4_compile.lowering.scaled_mm import BLOCKSCALE_CONFIGS, DEQUANT_CONFIGS
    from ufp4_compile.lowering.templates import ufp4_dequant_mm
    from ufp4_compile.numerics.formats import OperandFormat

    fa, fb = OperandFormat.from_spec(a[3]), OperandFormat.from_spec(b[3])
    M, N = a[0].shape[0], b[0].shape[0]
    out = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
    rows = []
    plans = [("template", gemm.MODE_DEQUANT, compute, DEQUANT_CONFIGS if sweep else configs.get("template", DEQUANT_CONFIGS[:2]))]
    for dot in ("fp8", "bf16", "fp32"):
        if gemm.mode_allowed(gemm.MODE_BLOCKSCALE, dot, fa, fb, compute):
            plans.append((f"blockscale-{dot}", gemm.MODE_BLOCKSCALE, dot,
                          BLOCKSCALE_CONFIGS if sweep else configs.get("blockscale", BLOCKSCALE_CONFIGS[:1])))
            break
    for name, mode, dot, cfgs in plans:
        for bm, bn, bk, group_m, warps, stages in cfgs:
            cfg = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk or fa.block, GROUP_M=group_m, num_warps=warps,
                       num_stages=stages)
            try:
                ms = bench_ms(lambda: gemm.scaled_mm(*a[:3], *b[:3], a[3], b[3], compute, torch.bfloat16,
                                                     mode=mode, dot=dot, config=cfg, out=out))
            except Exception as exc:  # noqa: BLE001 (a config that does not compile is reported)
                rows.append({"choice": name, "config": (bm, bn, bk, group_m, warps, stages), "error": repr(exc)[:200]})
                continue
            rows.append({"choice": name, "config": (bm, bn, bk, group_m, warps, stages), "ms": ms})
    try:
        ms = bench_ms(lambda: ufp4_dequant_mm(*a[:3], *b[:3], a_fmt=a[3], b_fmt=b[3], compute_dtype=compute,
                                              out=out))
        rows.append({"choice": "extern", "config": None, "ms": ms})
    except Exception as exc:  # noqa: BLE001
        rows.append({"choice": "extern", "config": None, "error": repr(exc)[:200]})
    return rows


def baselines(M: int, N: int, K: int) -> dict:
    a = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
    bf16 = bench_ms(lambda: torch.mm(a, b.t()))
    a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
    sa = torch.rand(M, 1, device="cuda") + 0.5
    sb = torch.rand(1, N, device="cuda") + 0.5
    fp8 = bench_ms(lambda: torch._scaled_mm(a8, b8.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16))
    return {"cublas_bf16_ms": bf16, "cublas_fp8_ms": fp8}


def _kernel_format(spec: str) -> str:
    """The part of a spec the GEMM kernel depends on (rounding and 2-D blocks do not change it)."""
    grid, block, scale, _ = spec.split("/")
    return f"{grid}/{block.split('x')[0]}/{scale}"


def best_configs(rows: list[dict]) -> dict:
    """The two fastest template configs and the fastest per-block config of a sweep."""
    out = {}
    for key, n in (("template", 2), ("blockscale", 1)):
        timed = sorted((r for r in rows if r["choice"].startswith(key) and "ms" in r), key=lambda r: r["ms"])
        if timed:
            out[key] = [tuple(r["config"]) for r in timed[:n]]
    return out


def run(args) -> list[dict]:
    results, tuned = [], {}
    for label, role, (M, N, K) in shapes(args.shapes):
        base = baselines(M, N, K)
        flops = 2.0 * M * N * K
        for preset in args.presets:
            recipe = recipes.get_recipe(preset)
            gemm_recipe = recipe.gemm(role)
            a, b = operands(gemm_recipe, role, M, N, K)
            # Tile configs are swept at 8192^3 and reused for the other shapes of the same kernel formats.
            combo = tuple(_kernel_format(s) for s in (a[3], b[3]))
            sweep = label == "8192^3" or (args.sweep_all and combo not in tuned)
            rows = time_choices(a, b, recipe.compute_dtype.value, tuned.get(combo, {}), sweep)
            if sweep:
                tuned[combo] = best_configs(rows)
            timed = [r for r in rows if "ms" in r]
            best = min(timed, key=lambda r: r["ms"])
            per_choice = {}
            for r in timed:
                if r["choice"] not in per_choice or r["ms"] < per_choice[r["choice"]]["ms"]:
                    per_choice[r["choice"]] = r
            row = {"shape": label, "role": role.value, "M": M, "N": N, "K": K, "preset": preset,
                   "a_fmt": a[3], "b_fmt": b[3], "best_choice": best["choice"], "best_config": best["config"],
                   "ours_tflops": flops / best["ms"] / 1e9,
                   "cublas_bf16_tflops": flops / base["cublas_bf16_ms"] / 1e9,
                   "cublas_fp8_tflops": flops / base["cublas_fp8_ms"] / 1e9,
                   "errors": [r for r in rows if "error" in r],
                   "timings": [{"choice": r["choice"], "config": r["config"], "ms": r["ms"]} for r in timed]}
            for name, r in per_choice.items():
                row[f"{name}_tflops"] = flops / r["ms"] / 1e9
            row["ratio_vs_bf16"] = row["ours_tflops"] / row["cublas_bf16_tflops"]
            results.append(row)
            print(f"{label:18s} {role.value:5s} {preset:8s} ours {row['ours_tflops']:6.0f} ({best['choice']}) "
                  f"bf16 {row['cublas_bf16_tflops']:6.0f} fp8 {row['cublas_fp8_tflops']:6.0f} "
                  f"ratio {row['ratio_vs_bf16']:.2f}", flush=True)
    return results


def plot(results: list[dict]):
    def draw(path):
        import matplotlib.pyplot as plt

        square = [r for r in results if r["shape"] == "8192^3"]
        llama = [r for r in results if r["shape"] != "8192^3"]
        fig, axes = plt.subplots(1, 2, figsize=(15, 5), gridspec_kw={"width_ratios": [1, 2]})
        if square:
            names = [r["preset"] for r in square]
            keys = [k for k in ("template_tflops", "blockscale-fp8_tflops", "blockscale-bf16_tflops",
                                "extern_tflops") if any(k in r for r in square)]
            width = 0.8 / len(keys)
            for i, k in enumerate(keys):
                axes[0].bar([j + i * width for j in range(len(names))], [r.get(k, 0) for r in square], width,
                            label=k.replace("_tflops", ""))
            axes[0].axhline(square[0]["cublas_bf16_tflops"], color="k", ls="--", label="cuBLAS bf16")
            axes[0].axhline(0.9 * square[0]["cublas_bf16_tflops"], color="k", ls=":", label="0.9x bf16 target")
            axes[0].axhline(square[0]["cublas_fp8_tflops"], color="r", ls="--", label="cuBLAS FP8 row-wise")
            axes[0].set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names)
            axes[0].set_ylabel("TFLOP/s")
            axes[0].set_title("8192^3")
            axes[0].legend(fontsize=7)
        if llama:
            labels = sorted({(r["shape"].split(".")[-1], r["role"]) for r in llama})
            presets = sorted({r["preset"] for r in llama})
            width = 0.8 / len(presets)
            for i, p in enumerate(presets):
                vals = [next((r["ratio_vs_bf16"] for r in llama if (r["shape"].split(".")[-1], r["role"]) == lab
                              and r["preset"] == p), 0) for lab in labels]
                axes[1].bar([j + i * width for j in range(len(labels))], vals, width, label=p)
            axes[1].axhline(1.0, color="k", ls="--")
            axes[1].axhline(0.9, color="k", ls=":")
            axes[1].set_xticks([j + 0.4 - width / 2 for j in range(len(labels))],
                               [f"{a}\n{b}" for a, b in labels], fontsize=7)
            axes[1].set_ylabel("ours / cuBLAS bf16")
            axes[1].set_title(f"Llama-3-8B linears, {TOKENS} tokens")
            axes[1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)

    return draw


def profile_one(preset: str) -> None:
    """One warm-up and one launch of the default template config at 8192^3 (run under ncu)."""
    from ufp4_compile.kernels import gemm

    recipe = recipes.get_recipe(preset)
    a, b = operands(recipe.fprop, Role.FPROP, 8192, 8192, 8192)
    for _ in range(2):
        gemm.scaled_mm(*a[:3], *b[:3], a[3], b[3], recipe.compute_dtype.value, torch.bfloat16)
    torch.cuda.synchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", choices=("all", "square", "llama"), default="all")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(recipes.PRESETS))
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--profile-one", metavar="PRESET", default=None)
    parser.add_argument("--sweep-all", action="store_true", help="sweep tile configs at every new format pair")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/gemm.py needs a CUDA GPU")
        return 2
    if args.profile_one:
        profile_one(args.profile_one)
        return 0
    env = environment()
    results = run(args)
    columns = [("shape", "shape"), ("role", "role"), ("M", "M"), ("N", "N"), ("K", "K"), ("preset", "preset"),
               ("ours_tflops", "ours TFLOP/s"), ("best_choice", "chosen"), ("template_tflops", "template"),
               ("blockscale-fp8_tflops", "blockscale fp8"), ("blockscale-bf16_tflops", "blockscale bf16"),
               ("extern_tflops", "dequant+cuBLAS"), ("cublas_bf16_tflops", "cuBLAS bf16"),
               ("cublas_fp8_tflops", "cuBLAS FP8"), ("ratio_vs_bf16", "ours / bf16")]
    md = header(env, "ufp4 block-scaled GEMM vs cuBLAS") + (
        "\nMedian of triton.testing.do_bench after warm-up; TFLOP/s = 2MNK / time; bf16 output. Command: "
        f"`python benchmarks/gemm.py {' '.join(argv or sys.argv[1:])}`\n\n") + markdown_table(results, columns)
    paths = write_results("gemm", env, results, md, args.out, plot(results))
    print(md)
    print("wrote", *map(str, paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
