"""What the Dynamo graph knows about its inputs that the joint graph does not: parameter names, which
inputs are embedding weights, and the modules of the whole traced frame.

The joint graph's placeholders are ``primals_N``; each carries ``meta["desc"]``, an AOT input descriptor
whose ``idx`` is the position of the Dynamo graph input it came from. The Dynamo graph's placeholders carry
``meta["grapharg"]``: the source expression that reached the tensor (``L['self']._modules['embed']
._parameters['weight']``) and a weak reference to the real tensor. Graph splits keep that metadata
(DDPOptimizer hands each bucket's subgraph to the backend with the original placeholders' metadata), so a
subgraph that holds the output head but not the embedding still sees its weight as ``embed.weight``, the
very parameter object an earlier graph of the process embedded with.

Embedding weights are remembered per process by identity (the real parameters, weakly held), filled by
every graph the backend compiles: the embedding's graph comes first in forward order, under DDP graph splits
and graph breaks alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import torch
import torch.fx as fx
from torch.utils.weak import WeakIdKeyDictionary

from ufp4_compile.passes.fx_utils import normalize_module_path

# Weights some graph of this process passed to an embedding: the real tensors, weakly held, by identity.
_EMBEDDING_WEIGHTS = WeakIdKeyDictionary()
# Dynamo-level embedding calls: F.embedding(input, weight), torch.embedding(weight, input).
_STORE = re.compile(r"\.(?:_parameters|_buffers|__dict__\['_parameters'\]|__dict__\['_buffers'\])\['([^']*)'\]")
_EMBEDDING_WEIGHT_ARG = {torch.nn.functional.embedding: 1, torch.embedding: 0, torch.ops.aten.embedding.default: 0}


@dataclasses.dataclass(frozen=True)
class GraphInputs:
    """Facts about the inputs of one compiled Dynamo graph, indexed like its placeholders."""

    names: tuple  # the parameter's name as ``named_parameters`` gives it ("embed.weight"), or None
    embedding: tuple  # True where the input is a weight some embedding of this process reads
    modules: tuple = ()  # modules owning the parameters of the whole traced frame (a split graph sees a part)

    def fingerprint(self) -> str:
        """Stable digest of the facts a rewrite depends on (for the pass's cache key)."""
        text = repr((self.embedding, tuple(sorted(self.modules))))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def is_embedding(self, index: int | None) -> bool:
        return index is not None and 0 <= index < len(self.embedding) and self.embedding[index]

    def name(self, index: int | None) -> str | None:
        return self.names[index] if index is not None and 0 <= index < len(self.names) else None


def parameter_name(source_name: str) -> str:
    """``"L['self']._modules['embed']._parameters['weight']"`` -> ``"embed.weight"``."""
    return normalize_module_path(_STORE.sub(r".\1", source_name))


def _real_tensor(node: fx.Node):
    grapharg = node.meta.get("grapharg")
    ref = getattr(grapharg, "_example", None)
    try:
        tensor = ref() if callable(ref) else None
    except Exception:  # a dead or unusual reference: no identity
        return None
    return tensor if isinstance(tensor, torch.Tensor) else None


def _register_embeddings(gm: fx.GraphModule, placeholders: list[fx.Node]) -> None:
    for node in gm.graph.nodes:
        position = _EMBEDDING_WEIGHT_ARG.get(node.target) if node.op == "call_function" else None
        if position is None or len(node.args) <= position:
            continue
        weight = node.args[position]
        if isinstance(weight, fx.Node) and weight in placeholders:
            tensor = _real_tensor(weight)
            if tensor is not None:
                _EMBEDDING_WEIGHTS[tensor] = True


def graph_inputs(gm: fx.GraphModule) -> GraphInputs:
    """The facts of ``gm``'s inputs (a Dynamo graph, or a split of one), after remembering its embeddings."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    _register_embeddings(gm, placeholders)
    names, embedding = [], []
    for node in placeholders:
        source = getattr(node.meta.get("grapharg"), "source", None)
        names.append(parameter_name(source.name) if source is not None and hasattr(source, "name") else None)
        tensor = _real_tensor(node)
        embedding.append(tensor is not None and tensor in _EMBEDDING_WEIGHTS)
    fqns = (getattr(gm, "meta", None) or {}).get("dynamo_flat_name_to_original_fqn") or {}
    modules = tuple(sorted({fqn.rpartition(".")[0] for fqn in fqns.values() if isinstance(fqn, str)}))
    return GraphInputs(tuple(names), tuple(embedding), modules)


def input_index(node: fx.Node) -> int | None:
    """The Dynamo graph input a placeholder of the joint (or inference) graph stands for."""
    desc = node.meta.get("desc")
    while desc is not None and not hasattr(desc, "idx") and hasattr(desc, "base"):
        desc = desc.base  # a tensor subclass's inner tensor: the index of the subclass input
    index = getattr(desc, "idx", None)
    if isinstance(index, int):
        return index
    if desc is not None or node.op != "placeholder":
        return None
    # No descriptor (an older torch): the forward inputs come first, in order, then the tangents.
    inputs = [n for n in node.graph.nodes if n.op == "placeholder" and not n.name.startswith("tangents")]
    return inputs.index(node) if node in inputs else None
