"""Tables and figures of ``ufp4 analyze --model`` (:mod:`ufp4_compile.training.mechanism`).

``mechanism.md``: the paper's directions, the operand summary (mean over layers), the forward and backward
depth tables and the per-layer operand table. PNGs: ``operands.png`` (alpha and SQNR per layer, role and
operand for the four grid x RHT formats), ``depth.png`` (every recipe's alpha_h per block, forward and
backward) and ``recipe-<name>.png`` per recipe (its forward and backward ratios per block and per layer).
"""

from __future__ import annotations

import json
import math
import pathlib

FORMATS = (("e2m1", 0), ("e2m1", 16), ("int4", 0), ("int4", 16))


def _label(grid: str, size: int) -> str:
    return f"{grid.upper()}{' +RHT16' if size else ''}"


def _num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _checks(checks: list[dict]) -> list[str]:
    lines = ["| the paper's direction | measured | holds |", "|---|---|---|"]
    for c in checks:
        value = c["value"]
        shown = " → ".join(_num(v) for v in value) if isinstance(value, list) else _num(value)
        lines.append(f"| {c['claim']} | {shown} | {'yes' if c['holds'] else '**no**'} |")
    return lines


def _operand_summary(summary: list[dict]) -> list[str]:
    head = " | ".join(f"{_label(g, s)} α (median) | SQNR" for g, s in FORMATS)
    lines = [f"| role | operand | {head} |", "|---|---|" + "---|---|" * len(FORMATS)]
    keys = list(dict.fromkeys((s["role"], s["operand"]) for s in summary))
    for role, operand in keys:
        cells = []
        for grid, size in FORMATS:
            (s,) = [s for s in summary if (s["role"], s["operand"], s["grid"], s["rht"]) == (role, operand, grid, size)]
            cells.append(f"{_num(s['alpha'], 5)} ({_num(s['alpha_median'], 5)}) | {_num(s['sqnr_db'], 2)}")
        lines.append(f"| {role} | {operand} | {' | '.join(cells)} |")
    return lines


def _operand_rows(rows: list[dict]) -> list[str]:
    head = " | ".join(f"{_label(g, s)} α | SQNR" for g, s in FORMATS)
    lines = [f"| layer | role | operand | {head} |", "|---|---|---|" + "---|---|" * len(FORMATS)]
    index = {(r["layer"], r["role"], r["operand"], r["grid"], r["rht"]): r for r in rows}
    for layer, role, operand in dict.fromkeys((r["layer"], r["role"], r["operand"]) for r in rows):
        found = [index[layer, role, operand, g, s] for g, s in FORMATS]
        cells = [f"{_num(r['alpha'], 5)} | {_num(r['sqnr_db'], 2)}" for r in found]
        lines.append(f"| {layer} | {role} | {operand} | {' | '.join(cells)} |")
    return lines


def _depth(results: dict, what: str) -> list[str]:
    names = list(results)
    blocks = len(next(iter(results.values()))["blocks"]) if results else 0
    extra = ["logits"] if what == "forward" else []
    cols = [f"block {i}" for i in range(blocks)] + extra + ["α_h at the end, per block"]
    if what == "backward":
        cols.append("α_h at block 0 over the seeds (min–max)")
    lines = [f"| recipe | {' | '.join(cols)} |", "|---|" + "---|" * len(cols)]
    for name in names:
        r = results[name]
        cells = [f"{_num(b['alpha'])} / {_num(b['norm_ratio'])} / {_num(b['cosine'])}" for b in r["blocks"]]
        if extra:
            cells.append(f"{_num(r['logits']['alpha'])} / {_num(r['logits']['norm_ratio'])} / "
                         f"{_num(r['logits']['cosine'])}")
        cells.append(f"{_num(r['alpha_end'])}, {_num(r['alpha_per_block'])}")
        if what == "backward":
            cells.append(f"{_num(min(r['alpha_end_draws']))}–{_num(max(r['alpha_end_draws']))}")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def _layer_table(results: dict, keys: tuple[str, ...]) -> list[str]:
    """One row per layer, one column per recipe: alpha of each of ``keys`` (Y and eta; or dX, dW and the etas
    of Dgrad and Wgrad); an eta is a plain number, the others are comparisons."""
    names, shown = list(results), " / ".join(keys)
    lines = [f"| layer | {' | '.join(f'{n} {shown}' for n in names)} |", "|---|" + "---|" * len(names)]
    layers = list(dict.fromkeys(layer for r in results.values() for layer in r["layers"]))
    for layer in layers:
        cells = []
        for n in names:
            g = results[n]["layers"].get(layer)
            values = [] if g is None else [g.get(k) for k in keys]
            cells.append("n/a" if g is None else " / ".join(
                _num(v["alpha"] if isinstance(v, dict) else v) for v in values))
        lines.append(f"| {layer} | {' | '.join(cells)} |")
    return lines


def write_markdown(path: pathlib.Path, payload: dict) -> None:
    meta, m = payload["meta"], payload["mechanism"]
    loss_rows = ["| recipe (Fprop only) | loss | Δ loss vs exact |", "|---|---|---|"]
    for name, r in m["forward"].items():
        loss_rows.append(f"| {name} | {_num(r['loss'])} | {r['loss'] - r['loss_exact']:+.4f} |")
    lines = [
        "# The UFP4 paper's mechanism per layer", "",
        f"Model: {meta['model_desc']}; {meta['model_source']}. Batch: the first validation batch "
        f"({m['batch']['sequences']} × {m['batch']['seq_len']} tokens), exact loss {_num(m['loss_exact'])}. "
        f"Device {meta['device']}, {meta['precision']}. Kept in high precision: "
        f"{', '.join(f'{k} ({v})' for k, v in m['kept'].items()) or 'none'}.", "",
        "## The paper's directions", "", *_checks(m["checks"]), "",
        "## Operands (1×16 blocks, FP32 scales, round to nearest; mean over layers)", "",
        "α = ⟨Q(A), A⟩/‖A‖², SQNR in dB against the unquantized operand; RHT undone before comparing.", "",
        *_operand_summary(m["operand_summary"]), "",
        "## Forward: Fprop quantized, hidden states against the exact model", "",
        "Cells: α_h = ⟨h_q, h⟩/‖h‖² / norm ratio ‖h_q‖/‖h‖ / cosine. Dgrad and Wgrad exact.", "",
        *_depth(m["forward"], "forward"), "", *loss_rows, "",
        "Per layer: α of the Linear's output Y (its inputs carry the error of the layers before it) / "
        "η = α_X·α_W of the recipe's Fprop on the exact operands (what this GEMM alone predicts).", "",
        *_layer_table(m["forward"], ("Y", "eta")), "",
        "## Backward: Dgrad and Wgrad quantized, exact forward", "",
        "Residual-stream gradient at each block's input (α / norm ratio / cosine); the gradient flows from the "
        "last block to the first, so 'at the end' is block 0. Each figure is the mean over "
        f"{next(iter(m['backward'].values()), {}).get('draws', 0)} fixed stochastic-rounding seeds of dY.", "",
        *_depth(m["backward"], "backward"), "",
        "Per layer: α of dX (the Linear input's gradient) / α of dW / η of the recipe's Dgrad / η of its Wgrad "
        "(on the exact operands).", "",
        *_layer_table(m["backward"], ("dX", "dW", "eta_dgrad", "eta_wgrad")), "",
        "## Operands per layer", "", *_operand_rows(m["operands"]), "",
    ]
    path.write_text("\n".join(lines))


def write_json(path: pathlib.Path, payload: dict) -> None:
    def clean(value):  # JSON has no NaN or infinity
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    path.write_text(json.dumps(clean(payload), indent=1))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_operands_png(path: pathlib.Path, rows: list[dict]) -> None:
    plt = _plt()
    keys = list(dict.fromkeys((r["layer"], r["role"], r["operand"]) for r in rows))
    index = {(r["layer"], r["role"], r["operand"], r["grid"], r["rht"]): r for r in rows}
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.28 * len(keys) + 2), 7.5), sharex=True)
    for grid, size in FORMATS:
        style = {"marker": "o" if grid == "e2m1" else "s", "linestyle": "-" if size else ":", "markersize": 3}
        for ax, metric in zip(axes, ("alpha", "sqnr_db")):
            ax.plot(range(len(keys)), [index[(*k, grid, size)][metric] for k in keys], label=_label(grid, size),
                    **style)
    axes[0].axhline(1.0, color="black", linewidth=0.8)
    axes[0].set_ylabel("α = ⟨Q(A),A⟩/‖A‖²")
    axes[1].set_ylabel("SQNR (dB)")
    axes[1].set_xticks(range(len(keys)), [f"{lay.removeprefix('layers.')} {role} {op}" for lay, role, op in keys],
                       rotation=90, fontsize=6)
    axes[0].legend(ncol=4, fontsize=8)
    axes[0].set_title("operands per layer, GEMM role and operand (1×16 blocks, FP32 scales, round to nearest)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_depth_png(path: pathlib.Path, forward: dict, backward: dict) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, results, title in ((axes[0], forward, "forward: Fprop quantized, hidden state after block i"),
                               (axes[1], backward, "backward: Dgrad+Wgrad quantized, gradient at block i's input")):
        for name, r in results.items():
            ax.plot([b["block"] for b in r["blocks"]], [b["alpha"] for b in r["blocks"]], marker="o", label=name)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xlabel("block")
        ax.set_ylabel("α_h = ⟨h_q, h⟩/‖h‖²")
        ax.set_title(title, fontsize=10)
    axes[1].invert_xaxis()  # the gradient flows from the last block to the first
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_recipe_png(path: pathlib.Path, name: str, forward: dict, backward: dict) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, blocks, title in ((axes[0], forward["blocks"], "forward: hidden state after block i"),
                              (axes[1], backward["blocks"], "backward: gradient at block i's input")):
        xs = [b["block"] for b in blocks]
        for metric, label in (("alpha", "α_h (projection)"), ("norm_ratio", "norm ratio"), ("cosine", "cosine")):
            ax.plot(xs, [b[metric] for b in blocks], marker="o", label=label)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xlabel("block")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    axes[1].invert_xaxis()
    layers = list(backward["layers"])
    for key, source in (("Y", forward), ("dX", backward), ("dW", backward)):
        values = [source["layers"][n][key]["alpha"] if n in source["layers"] else math.nan for n in layers]
        axes[2].plot(range(len(layers)), values, marker="o", label=f"{key} α")
    axes[2].axhline(1.0, color="black", linewidth=0.8)
    axes[2].set_xticks(range(len(layers)), [n.removeprefix("layers.") for n in layers], rotation=90, fontsize=7)
    axes[2].set_title("per layer: forward Y, backward dX and dW", fontsize=10)
    axes[2].legend(fontsize=8)
    fig.suptitle(f"{name}: quantized against exact")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_pngs(out_dir: pathlib.Path, mechanism: dict) -> list[pathlib.Path]:
    paths = [out_dir / "operands.png", out_dir / "depth.png"]
    write_operands_png(paths[0], mechanism["operands"])
    write_depth_png(paths[1], mechanism["forward"], mechanism["backward"])
    for name in mechanism["forward"]:
        path = out_dir / f"recipe-{name}.png"
        write_recipe_png(path, name, mechanism["forward"][name], mechanism["backward"][name])
        paths.append(path)
    return paths
