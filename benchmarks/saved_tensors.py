"""What a training step keeps for the backward pass: the saved tensors of the partitioned forward graph.

Compiles the step benchmark's GPT (``bench`` preset, batch 8 x 1024 tokens, bf16 autocast) with
``backend="ufp4"`` for each recipe and stops after the partitioner: nothing is executed and no GPU is
needed. The forward graph's outputs after the loss are what autograd keeps until the backward; their
bytes, grouped by what produced them, are the activation memory of the step (the rest of the peak is
weights, gradients, optimizer state and transients).

    python benchmarks/saved_tensors.py [--recipes bf16,ufp4] [--batch-size 8] [--out benchmarks/results]

The partition is traced on the CPU (autocast to bf16 there): CPU and CUDA differ in SDPA's saved outputs
(the CPU flash kernel keeps the same (out, logsumexp) pair) and in a few autocast rules, so read the
result as the composition of the saved set, next to the GPU's measured peaks.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import RESULTS  # noqa: E402

from ufp4_compile.backend import make_backend  # noqa: E402
from ufp4_compile.models.gpt import GPT, get_config  # noqa: E402
from ufp4_compile.recipes import get_recipe  # noqa: E402


class _Stop(Exception):
    pass


class _Capture:
    """A backend sink: keeps the partitioned forward graph, then stops the compile before Inductor runs."""

    def __init__(self):
        self.forward: torch.fx.GraphModule | None = None

    def graph_before(self, graph_id, graph):
        pass

    def graph_after(self, graph_id, graph, rows):
        pass

    def compiled(self, graph_id, gm, is_backward):
        if not is_backward:
            self.forward = gm
            raise _Stop


def category(node: torch.fx.Node) -> str:
    """What produced a saved tensor, followed through views."""
    seen = node
    while seen.op == "call_function" and getattr(seen.target, "__name__", "").split(".")[0] in (
            "view", "_unsafe_view", "reshape", "permute", "t", "transpose", "expand", "alias", "clone",
            "unsqueeze", "squeeze", "slice", "select", "getitem") and seen.args:
        first = seen.args[0]
        if not isinstance(first, torch.fx.Node):
            break
        if seen.target.__name__ == "getitem":  # a multi-output op: name it after the op
            seen = first
            break
        seen = first
    if seen.op == "placeholder":
        return "inputs and parameters (no extra memory)"
    name = str(seen.target)
    if "ufp4.quantize" in name:
        return "4-bit codes, scales (ufp4.quantize)"
    if "scaled_dot_product" in name or "flash" in name or "attention" in name:
        return "attention outputs and statistics"
    if any(k in name for k in ("aten.mm", "aten.addmm", "aten.bmm", "ufp4.scaled_mm")):
        return "matmul outputs"
    if any(k in name for k in ("rsqrt", "mean", "pow")):
        return "norm statistics"
    if "embedding" in name:
        return "embedding output"
    return f"other ({name.replace('aten.', '').split('.')[0]})"


def saved_tensors(recipe: str, batch_size: int, preset: str = "bench") -> dict:
    torch._dynamo.reset()
    config = get_config(preset)
    with torch.device("meta"):
        model = GPT(config)
    model = model.to_empty(device="cpu")
    x = torch.zeros(batch_size, config.seq_len, dtype=torch.long)
    capture = _Capture()
    compiled = torch.compile(model, backend=make_backend({"recipe": recipe}, sinks=[capture]))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            compiled(x, x)
    except Exception as err:  # Dynamo wraps the sink's stop in its own error type
        if capture.forward is None:
            raise
        del err
    out_node = next(n for n in capture.forward.graph.nodes if n.op == "output")
    outputs = out_node.args[0]
    groups: dict[str, list] = {}
    for node in outputs[1:]:  # outputs[0] is the loss
        val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
        if not isinstance(val, torch.Tensor):
            continue
        entry = groups.setdefault(category(node), [0, 0])
        entry[0] += val.numel() * val.element_size()
        entry[1] += 1
    activations = sum(b for k, (b, _) in groups.items() if not k.startswith("inputs"))
    return {"recipe": recipe, "groups": {k: {"bytes": b, "tensors": n} for k, (b, n) in
                                         sorted(groups.items(), key=lambda kv: -kv[1][0])},
            "activation_bytes": activations}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="bf16,ufp4,nvfp4,ufp4-mean")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--preset", default="bench", help="model preset (default: bench, the step benchmark's GPT)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    try:
        recipes = [get_recipe(r.strip()).name for r in args.recipes.split(",") if r.strip()]
        config = get_config(args.preset)
    except ValueError as err:
        p.error(str(err))
    rows = [saved_tensors(r, args.batch_size, args.preset) for r in recipes]
    cats = sorted({c for r in rows for c in r["groups"]}, key=lambda c: (c.startswith("inputs"), c))
    gib = 2 ** 30
    lines = ["# Saved tensors of one training step (forward -> backward)", "",
             f"`{args.preset}` GPT (D={config.d_model}, {config.n_layers} layers, T={config.seq_len}, vocabulary "
             f"{config.vocab_size}), batch {args.batch_size}, bf16 autocast; "
             "the forward graph after the partitioner, traced on the CPU (nothing executed). GiB (tensors).", "",
             "| saved by | " + " | ".join(r["recipe"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for c in cats:
        cells = []
        for r in rows:
            g = r["groups"].get(c)
            cells.append(f"{g['bytes'] / gib:.3f} ({g['tensors']})" if g else "—")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines.append("| **activations (all but inputs and parameters)** | "
                 + " | ".join(f"**{r['activation_bytes'] / gib:.3f}**" for r in rows) + " |")
    lines += ["", f"Command: `python benchmarks/saved_tensors.py {' '.join(argv if argv is not None else sys.argv[1:])}`", ""]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"saved_tensors_{args.preset}.json").write_text(json.dumps({"batch_size": args.batch_size, "rows": rows}, indent=1)
                                                  + "\n")
    (out / f"saved_tensors_{args.preset}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
