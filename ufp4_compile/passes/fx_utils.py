"""Small FX helpers for the ufp4 passes: reading node metadata and inserting nodes with fake values."""

from __future__ import annotations

import operator
import re

import torch
import torch.fx as fx

aten = torch.ops.aten

MATMUL_TARGETS = (aten.mm.default, aten.addmm.default, aten.bmm.default)
# Metadata an inserted node inherits from the node it stands for: the partitioner reads the tags and the
# activation-checkpointing marks, seq_nr links backward to forward, the rest keeps dumps readable.
INHERITED_META = ("seq_nr", "partitioner_tag", "nn_module_stack", "fwd_nn_module_stack", "source_fn_stack",
                  "stack_trace", "recompute", "ac_graph_id", "autograd_backward", "custom")
GENERATED = "ufp4_generated"  # meta key on every node the pass inserts
# Ops that only move or relabel data: followed when looking for where an operand comes from.
_PASS_THROUGH = {aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.permute.default,
                 aten.t.default, aten.transpose.int, aten.expand.default, aten.clone.default,
                 aten.alias.default, aten.detach.default, aten.unsqueeze.default, aten.squeeze.dim,
                 aten._to_copy.default, torch.ops.prims.convert_element_type.default}


def is_matmul(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in MATMUL_TARGETS and not node.meta.get(GENERATED)


def value(node) -> torch.Tensor | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val if isinstance(val, torch.Tensor) else None


def transpose_source(node: fx.Node) -> fx.Node | None:
    """The input of ``node`` if it swaps the last two dimensions and nothing else, else None."""
    if node.op != "call_function":
        return None
    val = value(node)
    if val is None or val.dim() < 2:
        return None
    rank = val.dim()
    if node.target is aten.t.default:
        return node.args[0]
    if node.target is aten.permute.default:
        perm = [d % rank for d in node.args[1]]
        if perm == list(range(rank - 2)) + [rank - 1, rank - 2]:
            return node.args[0]
    if node.target is aten.transpose.int:
        dims = sorted(d % rank for d in node.args[1:3])
        if dims == [rank - 2, rank - 1]:
            return node.args[0]
    return None


def root_placeholder(node: fx.Node) -> fx.Node | None:
    """The placeholder ``node`` is a view, cast or copy of, if any."""
    seen = 0
    while node.op == "call_function" and node.target in _PASS_THROUGH and seen < 32:
        node = node.args[0]
        seen += 1
    return node if node.op in ("placeholder", "get_attr") else None


# Dynamo names a module by the source expression that reached it (``Source.name``): the compiled
# function's argument, then attribute steps. Module children always appear as ``.name`` (ModuleList and
# ModuleDict items included: ``.layers.0``, ``.experts.a-b``), or ``getattr(base, 'name')`` for a name that
# is not an identifier. What comes before the first module step is how the function reached the model:
# ``L['self']`` (a module's own forward), ``L['args'][0]`` (a forward wrapped by a ``*args`` decorator, as
# transformers does), ``L['kwargs']['model']``, ``L['fn'].__self__`` (a bound method),
# ``L['f'].__closure__[0].cell_contents`` (a closure), ``L['fn'].args[0]`` (functools.partial),
# ``G['net']`` (a global). That root is dropped, so names are the ones ``model.named_modules()`` gives.
_GETATTR = re.compile(r"getattr\(([^(),]+), '([^']*)'\)")
_ROOT = re.compile(r"""^(?:[LG]\[(['"])[^'"]*\1\]|L__[A-Za-z0-9]+___?)"""  # L['x'], G['x'], or a mangled L__x__
                   r"""(?:\[[^\]]*\]|\.__\w+__|\.cell_contents|\.(?:args|keywords)(?=\[))*""")
_STEPS = [
    (re.compile(r"\.__dict__\['_modules'\]\['([^']*)'\]"), r".\1"),  # a wrapper's child (checkpoint_wrapper)
    (re.compile(r"\._modules\['([^']*)'\]"), r".\1"),
    (re.compile(r"\['([^']*)'\]"), r".\1"),
    (re.compile(r"\[(\d+)\]"), r".\1"),
]


def normalize_module_path(path: str) -> str:
    """``"L['args'][0].model.layers[0]._modules['fc']"`` -> ``"model.layers.0.fc"`` (the name
    ``named_modules`` uses), whatever the compiled function's argument is called."""
    while True:  # innermost getattr first: getattr(getattr(L['self'], 'a-b'), 'c') -> L['self'].a-b.c
        unwrapped = _GETATTR.sub(r"\1.\2", path)
        if unwrapped == path:
            break
        path = unwrapped
    path = _ROOT.sub("", path)
    for pattern, repl in _STEPS:
        path = pattern.sub(repl, path)
    return path.strip(".")


def module_name(node: fx.Node) -> str:
    """Qualified name of the innermost module a (forward) node was traced in; ``""`` for the top level."""
    stack = node.meta.get("nn_module_stack") or node.meta.get("fwd_nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return normalize_module_path(str(path))


def detect_fake_mode(graph: fx.Graph):
    from torch._guards import detect_fake_mode as detect

    vals = [n.meta.get("val") for n in graph.nodes if n.op == "placeholder"]
    return detect([v for v in vals if isinstance(v, torch.Tensor)])


class NodeBuilder:
    """Inserts call_function nodes before ``anchor``; each gets a fake ``val`` and the tags of ``template``
    (a node whose metadata is inherited, or a metadata dict)."""

    def __init__(self, graph: fx.Graph, fake_mode, anchor: fx.Node, template: fx.Node | dict):
        self.graph, self.fake_mode, self.anchor = graph, fake_mode, anchor
        self.position: int | None = None  # the anchor's index in the graph, when the caller tracks it
        self.meta = template.meta if isinstance(template, fx.Node) else template

    def _finish(self, node: fx.Node, val) -> fx.Node:
        for key in INHERITED_META:
            if key in self.meta:
                node.meta[key] = self.meta[key]
        node.meta["val"] = val
        node.meta[GENERATED] = True
        return node

    def call(self, target, *args, **kwargs) -> fx.Node:
        def to_val(a):
            return a.meta["val"] if isinstance(a, fx.Node) else a

        fake_args = fx.node.map_aggregate(args, to_val)
        fake_kwargs = fx.node.map_aggregate(kwargs, to_val)
        with self.fake_mode:
            val = target(*fake_args, **fake_kwargs)
        with self.graph.inserting_before(self.anchor):
            node = self.graph.call_function(target, tuple(args), dict(kwargs))
        return self._finish(node, val)

    def call_multi(self, target, *args, **kwargs) -> list[fx.Node]:
        node = self.call(target, *args, **kwargs)
        outs = []
        for i, val in enumerate(node.meta["val"]):
            with self.graph.inserting_before(self.anchor):
                item = self.graph.call_function(operator.getitem, (node, i))
            outs.append(self._finish(item, val))
        return outs

    def transpose(self, node: fx.Node) -> fx.Node:
        return self.call(aten.permute.default, node, [1, 0])

    def inline(self, fn, *args: fx.Node) -> tuple[fx.Node, ...]:
        """Trace ``fn`` (plain PyTorch on tensors) over the fake values of ``args`` and insert its ops.

        The trace uses Inductor's decompositions: the joint graph this runs on is already decomposed, and
        Inductor has no lowering for ops such as ``aten._to_copy`` (``x.float()`` of a bf16 tensor) that
        only its decompositions remove."""
        from torch._inductor.decomposition import select_decomp_table
        from torch.fx.experimental.proxy_tensor import make_fx

        with self.fake_mode:
            traced = make_fx(fn, decomposition_table=select_decomp_table())(*[a.meta["val"] for a in args])
        placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
        val_map = dict(zip(placeholders, args))
        before = set(val_map.values())
        with self.graph.inserting_before(self.anchor):
            outs = self.graph.graph_copy(traced.graph, val_map)
        for new in val_map.values():
            if new not in before:
                self._finish(new, new.meta.get("val"))
        return tuple(outs) if isinstance(outs, (tuple, list)) else (outs,)
