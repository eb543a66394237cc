"""``ufp4 kernels``: compile every kernel for sm_90 / sm_100 / gfx950 and report the matrix instructions.

No GPU needed: Triton compiles for any target it supports on any machine (``ufp4_compile.kernels.targets``).
One row per kernel variant and target: compiled or the error, the matrix instructions found, and whether
the GEMM dispatch (``ufp4_compile.dispatch``) uses the kernel there. The exit status is 1 when a kernel the
dispatch relies on fails to compile or lacks the instruction dispatch promises; 2, before compiling, for a
target the installed Triton does not support, a ``--kernels`` glob that matches nothing or a bad ``--json``. ``--matrix`` prints the
recipe x hardware support matrix that the dispatch implies (instant, nothing compiled).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from ufp4_compile.cli.args import int_at_least, output_file

DEFAULT_TARGETS = "sm_90,sm_100,gfx950"
MATRIX_TARGETS = ("sm_90", "sm_100", "gfx950", "cpu")
TARGET_NAMES = {"sm_90": "sm_90 (H100/H200)", "sm_100": "sm_100 (B200/GB200)", "gfx950": "gfx950 (MI350/MI355)",
                "cpu": "CPU"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("kernels", help="compile every kernel for sm_90 / sm_100 / gfx950; report MMA",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=DEFAULT_TARGETS,
                        help=f"comma-separated targets: sm_<capability> (sm_80 and up, as far as the installed "
                             f"Triton's ptxas goes), gfx<name> (the AMD families Triton knows); default "
                             f"{DEFAULT_TARGETS}")
    parser.add_argument("--kernels", default="*", metavar="GLOB",
                        help="only variants whose name matches this glob (* and ? wildcards, brackets literal), "
                             "e.g. 'scaled_mm[* dequant-bf16]' or 'quantize*'")
    parser.add_argument("--json", metavar="FILE", type=output_file("--json"),
                        help="also write the results as JSON to FILE")
    parser.add_argument("--markdown", action="store_true",
                        help="print markdown, one column per target (the tables of docs/support.md)")
    parser.add_argument("--matrix", action="store_true",
                        help="print only the recipe x hardware support matrix from the dispatch (no compiling)")
    parser.add_argument("--jobs", type=int_at_least(0), default=0, metavar="N",
                        help="compile in N worker processes (default: one per CPU; 1: in this process)")
    return parser


def _parse_targets(text: str):
    """The targets of ``--targets``, each one the installed Triton compiles for (an unknown architecture
    can abort the compiler's process, so it is refused before any work)."""
    from ufp4_compile.dispatch import Target
    from ufp4_compile.kernels.targets import check_compilable

    targets = [Target.parse(part) for part in text.split(",") if part.strip()]
    if not targets or any(t.backend == "cpu" for t in targets):
        raise ValueError(f"--targets={text!r} is not valid; give GPU targets such as {DEFAULT_TARGETS}")
    for target in targets:
        check_compilable(target)
    return targets


# ---- support matrix (dispatch only) ---------------------------------------------------------------------

def _cell(decisions_by_role) -> str:
    from ufp4_compile.dispatch import GemmPath

    def label(decision):
        if decision.path is GemmPath.NATIVE:
            return f"native (`{decision.instruction.replace('tcgen05.mma ', '')}`)"
        return {GemmPath.EMULATED: "emulated (Triton)", GemmPath.DEQUANT_MM: "dequant + matmul"}[decision.path]

    labels = {role.value: label(decisions[0]) for role, decisions in decisions_by_role.items()}
    if len(set(labels.values())) == 1:
        return next(iter(labels.values()))
    return ", ".join(f"{role}: {text}" for role, text in labels.items())


def support_matrix() -> tuple[list[str], list[list[str]]]:
    """Header and rows: for each preset, the first path of its GEMMs on each target."""
    from ufp4_compile.kernels.targets import EXTRA_FORMAT_PAIRS
    from ufp4_compile.dispatch import Target, gemm_paths, recipe_paths
    from ufp4_compile.numerics.formats import OperandFormat
    from ufp4_compile.recipes import PRESETS, Role

    header = ["recipe", "formats (a x b)"] + [TARGET_NAMES[t] for t in MATRIX_TARGETS]
    rows = []
    for name, recipe in PRESETS.items():
        if not recipe.quantized_roles:
            rows.append([name, "none (bf16)"] + ["bf16 matmul"] * len(MATRIX_TARGETS))
            continue
        fprop = recipe.gemm(Role.FPROP) or recipe.gemm(recipe.quantized_roles[0])
        formats = f"{fprop.a.spec.rsplit('/', 1)[0]} x {fprop.b.spec.rsplit('/', 1)[0]}"
        rows.append([name, formats] + [_cell(recipe_paths(recipe, Target.parse(t))) for t in MATRIX_TARGETS])
    for _, label, a_spec, b_spec in EXTRA_FORMAT_PAIRS:
        a, b = OperandFormat.from_spec(a_spec), OperandFormat.from_spec(b_spec)
        cells = [_cell({Role.FPROP: gemm_paths(a, b, "bf16", Target.parse(t))}) for t in MATRIX_TARGETS]
        rows.append([label, f"{a_spec.rsplit('/', 1)[0]} x {b_spec.rsplit('/', 1)[0]}"] + cells)
    return header, rows


# ---- tables ---------------------------------------------------------------------------------------------

def _result_rows(results, missing) -> tuple[list[str], list[list[str]]]:
    from ufp4_compile.kernels.targets import short_instruction

    header = ["kernel", "recipe / formats", "target", "compiled", "matrix instruction", "used by dispatch",
              "status"]
    rows = []
    for r in results:
        compiled = "yes" if r.compiled else f"no: {r.error}"
        instructions = ", ".join(short_instruction(i) for i in r.instructions) or "-"
        status = r.status if r.status != "FAIL" or r.compiled is False else f"FAIL: {r.error}"
        rows.append([r.kernel, r.recipe, r.target, compiled, instructions, "yes" if r.used else "no", status])
    for module, why in missing.items():
        rows.append([module.rsplit(".", 1)[-1], "-", "all", why, "-", "-", "n/a"])
    return header, rows


def _pivot_rows(results, missing, targets) -> tuple[list[str], list[list[str]]]:
    """One row per kernel variant, one column per target (the form docs/support.md shows)."""
    from ufp4_compile.kernels.targets import short_instruction

    header = ["kernel", "recipe / formats"] + [t.name for t in targets]
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for r in results:
        if r.compiled:
            text = ", ".join(f"`{short_instruction(i)}`" for i in r.instructions) or "compiled (no matrix instruction)"
        else:
            text = f"does not compile ({r.error})"
        if r.status == "FAIL":
            text = f"FAIL: {r.error}" if r.compiled else f"FAIL: {text}"
        elif not r.used:
            text += " (not used)"
        cells.setdefault((r.kernel, r.recipe), {})[r.target] = text
    rows = [[kernel, recipe] + [by_target.get(t.name, "-") for t in targets]
            for (kernel, recipe), by_target in cells.items()]
    rows += [[module.rsplit(".", 1)[-1], "-"] + [why] * len(targets) for module, why in missing.items()]
    return header, rows


def format_table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        escape = lambda text: str(text).replace("|", "\\|")  # noqa: E731
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    fmt = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(row) for row in rows])


def _versions() -> dict:
    import torch
    import triton

    return {"triton": triton.__version__, "torch": torch.__version__}


def _rerun_without_interpreter(args) -> int:
    """Kernels imported under TRITON_INTERPRET=1 cannot be compiled: run the command in a fresh process."""
    argv = [sys.executable, "-m", "ufp4_compile", "kernels", "--targets", args.targets, "--kernels", args.kernels]
    argv += (["--json", str(args.json)] if args.json else []) + (["--markdown"] if args.markdown else [])
    argv += ["--jobs", str(args.jobs)] if args.jobs else []
    env = dict(os.environ, TRITON_INTERPRET="0")
    return subprocess.call(argv, env=env)


def run(args) -> int:
    try:
        targets = _parse_targets(args.targets)
    except ValueError as exc:
        print(f"ufp4 kernels: error: {exc}", file=sys.stderr)
        return 2
    if args.matrix:
        print(format_table(*support_matrix(), markdown=args.markdown))
        return 0
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return _rerun_without_interpreter(args)
    from ufp4_compile.kernels.targets import compile_all

    start = time.perf_counter()
    results, missing = compile_all(targets, args.kernels, jobs=args.jobs or None)
    wall = time.perf_counter() - start
    if not results:
        print(f"ufp4 kernels: error: --kernels={args.kernels!r} matches no kernel variant"
              f"{' (some kernel modules are not available)' if missing else ''}; names look like "
              f"'quantize[int4/16/fp32/nearest rht16 row-wise]' or 'scaled_mm[ufp4 dequant-bf16]', and the glob's "
              f"* and ? are wildcards", file=sys.stderr)
        return 2
    rows = _pivot_rows(results, missing, targets) if args.markdown else _result_rows(results, missing)
    print(format_table(*rows, markdown=args.markdown))
    failures = [r for r in results if r.status == "FAIL"]
    compiled = sum(r.compiled for r in results)
    versions = _versions()
    print(f"\n{compiled}/{len(results)} compiled, {len(failures)} failing, "
          f"{sum(r.seconds for r in results):.1f} s compiling ({wall:.1f} s wall); triton {versions['triton']}, "
          f"torch {versions['torch']}; targets {', '.join(t.name for t in targets)}")
    if args.json:
        payload = {"versions": versions, "targets": [t.name for t in targets],
                   "results": [r.to_dict() for r in results], "not_available": missing}
        with open(args.json, "w") as handle:
            json.dump(payload, handle, indent=2)
    return 1 if failures else 0
