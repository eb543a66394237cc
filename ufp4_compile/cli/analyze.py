"""``ufp4 analyze``: the shrinkage-bias lab (UFP4 paper, arXiv 2606.20381).

For grids {E2M1, INT4} x {no RHT, RHT-16} x scale formats {fp32, e4m3, e8m0} it measures, on synthetic
activations and optionally on a user's tensor, the shrinkage alpha = <Q(x), x>/||x||^2, the SQNR and the
effective bucket ratio, and prints the analytic per-level rounding bias of each grid. Blocks run along the
last axis (the channel axis of an activation, as in the paper). Metrics are taken in the rotated domain,
which equals the original domain up to FP32 rounding since the RHT is orthogonal.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import torch

from ufp4_compile.cli.args import check_output_dir, int_at_least, output_file, plot_suffixes
from ufp4_compile.numerics import (Grid, OperandFormat, ScaleFormat, dequantize, effective_bucket_ratio,
                                   per_level_bias, quantize, rht, shrinkage_alpha, sqnr_db, unpack_codes)

RHT_SIZES = (0, 16)
OUTLIER_GAIN = 20.0  # "one channel 20x larger" (UFP4 paper's outlier-channel setting)
STUDENT_T_DF = 3
MAX_ELEMENTS = 1 << 24  # a user tensor beyond this is cut to its first rows (reported)
# --model: E2M1 and INT4 recipes, each also with the RHT switched (the paper: RHT hurts E2M1, helps INT4).
MODEL_RECIPES = "e2m1-ref,e2m1-ref+rht16,ufp4,ufp4-rht0,nvfp4,ufp4-mean"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("analyze", help="shrinkage-bias lab: alpha, SQNR, bucket ratio per format",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tensor", metavar="FILE", type=pathlib.Path,
                   help="also analyze this tensor (.npy or .pt; loaded without executing pickled code); "
                        "blocks run along its last axis")
    p.add_argument("--key", help="entry to use when the .pt file holds a dict of tensors")
    p.add_argument("--tokens", type=int, default=4096, help="rows of each synthetic tensor (default 4096)")
    p.add_argument("--channels", type=int, default=256, help="columns of each synthetic tensor (default 256)")
    p.add_argument("--block", type=int, default=16, choices=(16, 32), help="block size (default 16)")
    p.add_argument("--seed", type=int, default=0, help="torch seed of the synthetic data (default 0)")
    p.add_argument("--rht-seed", type=int, default=0, help="seed of the Hadamard signs (default 0)")
    p.add_argument("--json", metavar="FILE", type=output_file("--json"), help="write every figure as JSON")
    p.add_argument("--plot", metavar="PNG", type=output_file("--plot", plot_suffixes),
                   help="write a bar chart of SQNR and alpha (.png, .pdf, .svg...)")
    p.add_argument("--check", action="store_true",
                   help="exit with status 1 if one of the paper's directions does not hold")
    g = p.add_argument_group("--model: the paper's mechanism per layer on a trained GPT (docs/train.md)")
    g.add_argument("--model", action="store_true",
                   help="measure alpha/SQNR per layer and GEMM role, and the forward/backward decay over depth, "
                        "on a trained GPT instead of synthetic data")
    g.add_argument("--preset", default="tiny", help="model preset trained in-process (default: tiny)")
    g.add_argument("--checkpoint", metavar="FILE", type=pathlib.Path,
                   help="analyze this ufp4 train checkpoint (checkpoints/<run>.pt) instead of training")
    g.add_argument("--train-steps", type=int_at_least(1), help="in-process training steps (preset default)")
    g.add_argument("--batch-size", type=int_at_least(1), help="sequences in the analyzed batch (preset default)")
    g.add_argument("--recipes", default=MODEL_RECIPES,
                   help="recipes to run, each optionally with +rht16 or -rht0 (RHT-16 on/off in Fprop and Dgrad); "
                        "default: %(default)s")
    g.add_argument("--data", help="corpus (as ufp4 train --data; default: the preset's)")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    g.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="bf16 autocast (auto on CUDA) or fp32 (auto on CPU)")
    g.add_argument("--out", help="output directory for mechanism.json/.md and the PNGs "
                                 "(default: ufp4-analyze-<preset>)")
    p.set_defaults(command="analyze")
    return p


# ---- data ------------------------------------------------------------------------------------------------

def synthetic_tensors(tokens: int, channels: int, seed: int) -> dict[str, torch.Tensor]:
    """Gaussian, Student-t (df=3) and Gaussian with one outlier channel (20x), tokens x channels."""
    gen = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(tokens, channels, generator=gen)
    # Student-t(df) = N(0,1) / sqrt(chi2(df) / df), chi2 from df squared normals (stays on `gen`).
    chi2 = torch.randn(STUDENT_T_DF, tokens, channels, generator=gen).square().sum(0)
    student_t = torch.randn(tokens, channels, generator=gen) / (chi2 / STUDENT_T_DF).sqrt()
    outlier = torch.randn(tokens, channels, generator=gen)
    outlier[:, channels // 3] *= OUTLIER_GAIN
    return {"gaussian": gaussian, "student_t3": student_t, "outlier_channel": outlier}


def load_tensor(path: pathlib.Path, key: str | None = None) -> torch.Tensor:
    """A float tensor from .npy (allow_pickle=False) or .pt (weights_only=True); ValueError otherwise."""
    if not path.is_file():
        raise ValueError(f"--tensor {path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        import numpy as np

        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as exc:
            raise ValueError(f"--tensor {path}: cannot read it as a plain .npy array ({exc})") from None
        try:
            t = torch.from_numpy(array)
        except TypeError:  # float128, structured records, strings...: no torch dtype
            raise ValueError(f"--tensor {path}: dtype {array.dtype} is not valid; valid dtypes: float16, "
                             f"float32, float64") from None
    elif suffix in (".pt", ".pth"):
        try:
            t = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for bad or unsafe files
            raise ValueError(f"--tensor {path}: cannot load it with weights_only=True ({exc})") from None
        t = _pick(t, key, path)
    else:
        raise ValueError(f"--tensor {path}: unknown extension {suffix!r}; valid values: .npy, .pt, .pth")
    if not t.dtype.is_floating_point:
        raise ValueError(f"--tensor {path}: dtype {t.dtype} is not floating point")
    if t.ndim == 0:
        raise ValueError(f"--tensor {path}: a 0-d tensor has no axis to quantize along")
    if t.numel() == 0:
        raise ValueError(f"--tensor {path}: the tensor is empty (shape {tuple(t.shape)})")
    return t.float().reshape(-1, t.shape[-1])


def _pick(obj, key: str | None, path) -> torch.Tensor:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if key in tensors:
            return tensors[key]
        if key is None and len(tensors) == 1:
            return next(iter(tensors.values()))
        raise ValueError(f"--tensor {path}: holds a dict; choose one with --key, valid values: "
                         f"{', '.join(map(str, tensors)) or '(no tensors)'}")
    raise ValueError(f"--tensor {path}: holds a {type(obj).__name__}, not a tensor")


# ---- measurement ------------------------------------------------------------------------------------------

def analyze_tensor(name: str, x: torch.Tensor, block: int, rht_seed: int) -> list[dict]:
    """One row per (grid, rht, scale format) with alpha, SQNR (dB) and bucket ratio."""
    rows = []
    for size in RHT_SIZES:
        reference = rht(x, 1, size, rht_seed) if size else x.float()
        for grid in Grid:
            for scale in ScaleFormat:
                q = quantize(x, 1, OperandFormat(grid, block, scale), rht=size, rht_seed=rht_seed)
                xq = dequantize(q)
                rows.append(dict(data=name, grid=grid.value, rht=size, scale=scale.value,
                                 alpha=shrinkage_alpha(reference, xq), sqnr_db=sqnr_db(reference, xq),
                                 bucket_ratio=effective_bucket_ratio(unpack_codes(q.codes, 1), grid)))
    return rows


def _find(rows, data, grid, rht_size, scale="fp32"):
    for r in rows:
        if (r["data"], r["grid"], r["rht"], r["scale"]) == (data, grid, rht_size, scale):
            return r
    raise KeyError((data, grid, rht_size, scale))


def paper_checks(rows: list[dict]) -> list[dict]:
    """The UFP4 paper's directions, on the FP32-scale rows: E2M1 shrinks Gaussian blocks while INT4 does not;
    on outlier-channel data the RHT lowers E2M1's SQNR and raises INT4's."""
    e2m1_g, int4_g = _find(rows, "gaussian", "e2m1", 0), _find(rows, "gaussian", "int4", 0)
    out = {(g, s): _find(rows, "outlier_channel", g, s)["sqnr_db"] for g in ("e2m1", "int4") for s in RHT_SIZES}
    return [
        dict(claim="gaussian: E2M1 alpha < 1", value=e2m1_g["alpha"], holds=e2m1_g["alpha"] < 1),
        dict(claim="gaussian: INT4 |alpha - 1| < 2e-3", value=int4_g["alpha"],
             holds=abs(int4_g["alpha"] - 1) < 2e-3),
        dict(claim="outlier channel: RHT lowers E2M1 SQNR", value=[out["e2m1", 0], out["e2m1", 16]],
             holds=out["e2m1", 16] < out["e2m1", 0]),
        dict(claim="outlier channel: RHT raises INT4 SQNR", value=[out["int4", 0], out["int4", 16]],
             holds=out["int4", 16] > out["int4", 0]),
    ]


# ---- reporting ---------------------------------------------------------------------------------------------

def format_table(rows: list[dict]) -> str:
    """Per data set: one line per (grid, RHT), alpha / SQNR / bucket ratio for each scale format."""
    scales = [s.value for s in ScaleFormat]
    head = f"{'grid':<5} {'rht':>3} " + " ".join(f"{s + ': alpha   SQNR  bucket':>28}" for s in scales)
    lines = []
    for data in dict.fromkeys(r["data"] for r in rows):
        lines += ["", f"[{data}]", head]
        for size in RHT_SIZES:
            for grid in Grid:
                cells = []
                for s in scales:
                    r = _find(rows, data, grid.value, size, s)
                    cells.append(f"{r['alpha']:>13.5f} {r['sqnr_db']:>6.2f} {r['bucket_ratio']:>7.3f}")
                lines.append(f"{grid.value:<5} {size:>3} " + " ".join(cells))
    return "\n".join(lines[1:])


def format_bias() -> str:
    lines = ["per-level mean rounding error (2q_i - q_{i-1} - q_{i+1})/4, in units of the grid:"]
    for grid in Grid:
        cells = ", ".join(f"{q:g}: {b:+.3f}" for q, b in per_level_bias(grid))
        lines.append(f"  {grid.value:<5} {cells}")
    return "\n".join(lines)


def format_checks(checks: list[dict]) -> str:
    lines = ["UFP4 paper directions (FP32 scales):"]
    for c in checks:
        value = c["value"]
        shown = " -> ".join(f"{v:.2f} dB" for v in value) if isinstance(value, list) else f"{value:.5f}"
        lines.append(f"  [{'holds' if c['holds'] else 'FAILS'}] {c['claim']}: {shown}")
    return "\n".join(lines)


def write_plot(rows: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["data"] for r in rows))
    combos = [(g.value, s) for g in Grid for s in RHT_SIZES]
    fig, axes = plt.subplots(2, len(datasets), figsize=(4.5 * len(datasets), 6.5), squeeze=False)
    width = 0.8 / len(combos)
    for col, data in enumerate(datasets):
        for row, metric in enumerate(("sqnr_db", "alpha")):
            ax = axes[row][col]
            for i, (grid, size) in enumerate(combos):
                vals = [_find(rows, data, grid, size, s.value)[metric] for s in ScaleFormat]
                xs = [j + (i - (len(combos) - 1) / 2) * width for j in range(len(vals))]
                ax.bar(xs, vals, width, label=f"{grid}{' +RHT16' if size else ''}")
            ax.set_xticks(range(len(ScaleFormat)), [s.value for s in ScaleFormat])
            ax.set_title(f"{data}: {'SQNR (dB)' if metric == 'sqnr_db' else 'alpha'}")
            values = [r[metric] for r in rows if r["data"] == data]
            if metric == "alpha":
                ax.axhline(1.0, color="black", linewidth=0.8)
                ax.set_ylim(min(min(values), 0.995) - 0.002, max(max(values), 1.0) + 0.002)
            else:
                ax.set_ylim(min(values) - 2.0, max(values) + 1.0)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(combos), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args) -> int:
    if args.model:
        return run_model(args)
    start = time.perf_counter()
    for name in ("tokens", "channels"):
        value = getattr(args, name)
        if value < 1 or (name == "channels" and value % max(args.block, 16)):
            print(f"ufp4 analyze: error: --{name}={value} is not valid; it must be a positive"
                  f"{' multiple of the block and of 16' if name == 'channels' else ' integer'}", file=sys.stderr)
            return 2
    tensors = synthetic_tensors(args.tokens, args.channels, args.seed)
    notes = []
    if args.tensor is not None:
        try:
            user = load_tensor(args.tensor, args.key)
            if user.shape[-1] % max(args.block, 16):
                raise ValueError(f"--tensor {args.tensor}: last axis has length {user.shape[-1]}, which is not "
                                 f"a multiple of the block {args.block} and of the RHT size 16")
        except ValueError as exc:
            print(f"ufp4 analyze: error: {exc}", file=sys.stderr)
            return 2
        if user.numel() > MAX_ELEMENTS:
            rows_kept = max(1, MAX_ELEMENTS // user.shape[-1])
            notes.append(f"{args.tensor.name}: using the first {rows_kept} of {user.shape[0]} rows")
            user = user[:rows_kept]
        tensors[args.tensor.stem] = user
    rows = [r for name, x in tensors.items() for r in analyze_tensor(name, x, args.block, args.rht_seed)]
    checks = paper_checks(rows)
    print(f"ufp4 analyze: block {args.block}, blocks along the last axis; synthetic data "
          f"{args.tokens}x{args.channels} (seed {args.seed}); alpha = <Q(x),x>/|x|^2\n")
    print(format_table(rows), format_bias(), format_checks(checks), sep="\n\n")
    for note in notes:
        print(f"note: {note}")
    if args.json is not None:
        config = {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()}
        payload = dict(config=config, rows=rows, checks=checks, notes=notes,
                       per_level_bias={g.value: per_level_bias(g) for g in Grid})
        args.json.write_text(json.dumps(payload, indent=1))
    if args.plot is not None:
        write_plot(rows, args.plot)
    print(f"\n({time.perf_counter() - start:.1f} s)")
    return 1 if args.check and not all(c["holds"] for c in checks) else 0


# ---- --model ----------------------------------------------------------------------------------------------

def run_model(args) -> int:
    """``--model``: train (or load) a GPT, measure the mechanism, write mechanism.json/.md and PNGs under --out."""
    if resolve_device_quietly(args.device) == "cpu":
        # Hundreds of small reference ops: on a shared 2-core CPU one thread took 18 s where torch's default
        # two took 90-270 s (synchronization, not arithmetic).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _run_model(args)
        finally:
            torch.set_num_threads(threads)
    return _run_model(args)


def resolve_device_quietly(name: str) -> str | None:
    from ufp4_compile.cli.train import resolve_device

    try:
        return resolve_device(name)
    except ValueError:
        return None  # reported by _run_model


def _run_model(args) -> int:
    from ufp4_compile.cli.train import TRAIN_DEFAULTS, resolve_device
    from ufp4_compile.data.corpus import load_corpus
    from ufp4_compile.models.gpt import get_config, preset_names
    from ufp4_compile.training import mechanism, mechanism_report
    from ufp4_compile.training.experiment import command_line, device_name, git_sha

    start = time.perf_counter()
    try:
        if args.tensor is not None or args.plot is not None:
            raise ValueError("--tensor and --plot belong to the synthetic lab; with --model the figures go under --out")
        if args.preset not in TRAIN_DEFAULTS:
            raise ValueError(f"--preset={args.preset!r} is not a known preset; valid names: "
                             f"{', '.join(preset_names())}")
        recipes = mechanism.parse_recipes(args.recipes)
        device = resolve_device(args.device)
        name = args.preset if args.checkpoint is None else args.checkpoint.stem
        out = pathlib.Path(args.out or f"ufp4-analyze-{name}")
        check_output_dir(out, "--out")
        defaults = TRAIN_DEFAULTS[args.preset]
        corpus = load_corpus(args.data or defaults.get("data"), "uint16")
        bf16 = args.precision == "bf16" or (args.precision == "auto" and device.startswith("cuda"))
        batch_size = args.batch_size or defaults["batch_size"]
        if args.checkpoint is not None:
            model, source = mechanism.load_model(args.checkpoint, device)
        else:
            config = get_config(args.preset)
            config = get_config(args.preset, vocab_size=max(config.vocab_size, 64 * -(-corpus.vocab_size // 64)))
            steps = args.train_steps or defaults["steps"]
            print(f"training {args.preset} for {steps} steps (bf16 recipe, eager) on {device}")
            model, source = mechanism.train_model(config, corpus, steps, defaults["batch_size"], defaults["lr"],
                                                  args.seed, device, bf16)
    except ValueError as exc:
        print(f"ufp4 analyze: error: {exc}", file=sys.stderr)
        return 2
    notes = []
    if source.get("corpus_sha256") not in (None, corpus.info.get("sha256")):
        notes.append("the checkpoint was trained on another corpus than the one analyzed; pass its --data")
    result = mechanism.analyze_model(model, corpus, recipes, batch_size, device, bf16)
    c = model.config
    meta = {"command": command_line(), "git": git_sha(), "torch": torch.__version__,
            "device": device_name(torch.device(device)), "precision": "bf16 autocast" if bf16 else "fp32",
            "model": dataclasses.asdict(c), "num_params": model.num_params(),
            "model_desc": f"{c.n_layers} layers, d_model {c.d_model}, {model.num_params() / 1e6:.2f} M parameters",
            "model_source": (f"trained in-process for {source['steps']} steps (val loss {source['val_loss']:.4f})"
                             if args.checkpoint is None else f"checkpoint {args.checkpoint} at step {source['steps']}"),
            "source": source, "corpus": corpus.info, "notes": notes}
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "mechanism": result}
    meta["wall_s"] = time.perf_counter() - start
    mechanism_report.write_json(out / "mechanism.json", payload)
    if args.json is not None:
        mechanism_report.write_json(args.json, payload)
    mechanism_report.write_markdown(out / "mechanism.md", payload)
    pngs = mechanism_report.write_pngs(out, result)
    print((out / "mechanism.md").read_text().split("\n## Operands per layer")[0])
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {out / 'mechanism.json'}, {out / 'mechanism.md'} and {len(pngs)} PNGs "
          f"({time.perf_counter() - start:.1f} s)")
    return 1 if args.check and not all(c["holds"] for c in result["checks"]) else 0
