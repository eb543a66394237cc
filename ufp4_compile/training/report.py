"""The report of ``ufp4 train``: results.json, results.md (tables) and results.png (curves)."""

from __future__ import annotations

import json
import math
import os
import pathlib

from ufp4_compile.training.analysis import BASELINE


def json_safe(value):
    """Non-finite floats become ``None`` (strict JSON); tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_atomic(path: pathlib.Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``: a reader (or
    ``--resume`` after a crash) sees the old file or the new one, never a truncated one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: pathlib.Path, payload: dict) -> None:
    write_atomic(path, json.dumps(json_safe(payload), indent=1, allow_nan=False) + "\n")


def _pct(value, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.{digits}f}%"


def _num(value, fmt: str = ".4f") -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, fmt)


def _spread(s: dict, fmt: str = ".4f", pct: bool = False) -> str:
    def show(value) -> str:
        return _pct(value) if pct else _num(value, fmt)

    if not s or s["n"] == 0:
        return "n/a"
    if s["n"] == 1:
        return show(s["mean"])
    return f"{show(s['mean'])} ± {show(s['std'])} [{show(s['min'])}, {show(s['max'])}]"


def _memory(summary: dict) -> str:
    s = summary["peak_memory_bytes"]
    if s["n"] == 0:
        return "n/a"
    return f"{s['max'] / 2**30:.2f} GiB"


def recipe_table(analysis: dict) -> list[str]:
    n = analysis["last_n"]
    lines = [f"| recipe | seeds | loss, last {n} steps | val loss | gap |L−L_bf16|/L_bf16 | signed gap | "
             f"val gap (signed) | tokens/s | peak memory | compile s | flags |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in analysis["recipes"].items():
        gap = _spread(s.get("gap_abs"), pct=True) if name != BASELINE else "—"
        signed = _spread(s.get("gap_signed"), pct=True) if name != BASELINE else "—"
        val_gap = _spread(s.get("val_gap"), pct=True) if name != BASELINE else "—"
        if name != BASELINE and analysis["noise_floor"]["floor"] is not None and not s["gap_exceeds_floor"]:
            gap += " (within floor)"
        flags = "; ".join(s["flags"]) or "—"
        lines.append(f"| {name} | {len(s['seeds'])} | {_spread(s['last_n_mean'])} | {_spread(s['val_loss'])} | "
                     f"{gap} | {signed} | {val_gap} | {_num(s['tokens_per_s']['mean'], ',.0f')} | {_memory(s)} | "
                     f"{_num(s['compile_time_s']['mean'], '.1f')} | {flags} |")
    return lines


def comparison_table(rows: list[dict], title: str) -> list[str]:
    if not rows:
        return []
    lines = [f"**{title}**", "", "| A | B | seeds | Δ = (A − B) / bf16 | floor | beyond floor | lower |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lower = row["lower_loss"] or "— (within noise)"
        lines.append(f"| {row['a']} | {row['b']} | {len(row['seeds'])} | {_pct(row['delta'])} | "
                     f"{_pct(row['floor'])} | {'yes' if row['resolved'] else 'no'} | {lower} |")
    return lines + [""]


def _ranks(meta: dict) -> str:
    """How the runs were spread over processes, for the header line."""
    mode, world = meta.get("parallel", "none"), meta.get("world_size", 1)
    if mode == "none":
        return "one process"
    ranks = f"{world} rank" + ("s" if world > 1 else "")
    return f"data parallel `{mode}` over {ranks} ({meta['batch_size'] // world} sequences each)"


def markdown(meta: dict, analysis: dict) -> str:
    floor = analysis["noise_floor"]
    memory = meta["memory_label"] + (" on rank 0 (every rank's in results.json)" if meta.get("world_size", 1) > 1
                                     else "")
    lines = [f"# ufp4 train: preset `{meta['preset']}`", "",
             f"{meta['steps']} steps × batch {meta['batch_size']} × {meta['seq_len']} tokens; "
             f"{meta['num_params']:,} parameters; seeds {', '.join(map(str, meta['seeds']))}; "
             f"device {meta['device']} ({meta['precision']}); backend `{meta['backend']}`; {_ranks(meta)}; "
             f"data: {meta['corpus']['source']} ({meta['corpus']['train_tokens']:,} train / "
             f"{meta['corpus']['val_tokens']:,} validation tokens).", "",
             f"Loss and gaps over the last {analysis['last_n']} steps; gaps are relative to bf16 with the same "
             f"seed (same initialization and batches). Peak memory: {memory}. Compile s: "
             f"runs that compiled (a recipe's later seeds reuse its compiled graphs). "
             f"Cells with several seeds read mean ± std [min, max].", ""]
    lines += recipe_table(analysis) + [""]
    lines += [f"**Noise floor** (bf16 against itself, same metric): same seed run twice "
              f"{_pct(floor['same_seed'])}, different seeds {_pct(floor['different_seeds'])} "
              f"({floor['different_seed_pairs']} pairs) → floor {_pct(floor['floor'])}; validation loss floor "
              f"{_pct(floor['val_floor'])}. A difference counts only beyond the floor.", ""]
    lines += comparison_table(analysis["comparisons"], f"Recipe pairs, training loss (last {analysis['last_n']} "
                                                       f"steps, seed-paired)")
    lines += comparison_table(analysis["val_comparisons"], "Recipe pairs, validation loss (seed-paired)")
    lines += [f"Command: `{meta['command']}`", ""]
    return "\n".join(lines)


def write_markdown(path: pathlib.Path, meta: dict, analysis: dict) -> None:
    write_atomic(path, markdown(meta, analysis))
