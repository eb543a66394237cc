"""Graphs that serve several blocks: detected at run time, never decided on silently.

Compiling each block on its own (torchtitan's ``torch.compile(block)`` per block), or a block's forward
compiled once after a graph break (FSDP2 with a whole-model compile), gives one graph that Dynamo reuses for
every block: parameters are graph inputs and nothing in the graph says which block it is running. Its
module names are block-local (``attn.qkv``), so a decision that needs the block's place in the model cannot
be taken when compiling:

- ``keep_first`` / ``keep_last``: one graph cannot keep block 0 and rewrite block 1. Error.
- ``rht_seed_policy="per_layer"``: the Hadamard signs are compile-time constants of the graph, so every block
  sharing it gets the same ones. Error.
- ``skip``: patterns are matched against the block-local names; a pattern that matches none of them (such as
  ``"layers.0.*"``) is reported. Warning.
- ``sr_seed_policy="fixed"``: every call of the graph uses ``sr_seed`` and the same block-local offsets, so the
  blocks repeat each other's stochastic-rounding bits. Warning. (Under the default ``per_step`` every call of
  the graph draws its own seed: the streams never repeat across blocks.)

:func:`guard_shared_graph` wraps the compiled function of a graph whose recipe has such a decision. It
watches the identity of the parameters the graph is called with; a second set of live parameters means the
graph serves several blocks. Then the errors are raised (on every call) and the warnings given once.
Without such a decision the compiled function is returned unchanged: no cost per call.
"""

from __future__ import annotations

import fnmatch
import functools
import warnings
import weakref

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensor

from ufp4_compile.numerics.formats import Rounding
from ufp4_compile.passes.fx_utils import module_name
from ufp4_compile.recipes import Recipe, SeedPolicy, SRSeedPolicy

_MATMULS = {"linear", "matmul", "__matmul__", "mm", "bmm", "addmm", "baddbmm", "einsum"}


class SharedGraphError(RuntimeError):
    """A layer option needs the block's identity, and the compiled graph is shared by several blocks."""


def _is_matmul(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function":
        return getattr(node.target, "__name__", None) in _MATMULS
    if node.op == "call_method":
        return node.target in _MATMULS
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), torch.nn.Linear)
    return False


def matmul_modules(gm: fx.GraphModule) -> list[str]:
    """Module names of the matmuls of a Dynamo graph (torch-level ops), in graph order, without repeats."""
    names = [module_name(n) or "<top level>" for n in gm.graph.nodes if _is_matmul(gm, n)]
    return list(dict.fromkeys(names))


def _stochastic(recipe: Recipe) -> bool:
    gemms = [recipe.gemm(role) for role in recipe.quantized_roles]
    return any(fmt.rounding is Rounding.STOCHASTIC for g in gemms for fmt in (g.a, g.b))


def shared_graph_problems(recipe: Recipe, names: list[str]) -> tuple[list[str], list[str]]:
    """(errors, warnings) for a graph with matmuls in modules ``names`` that serves several blocks."""
    layers, shown = recipe.layers, ", ".join(repr(n) for n in names[:6]) + (", ..." if len(names) > 6 else "")
    where = (f"this compiled graph runs for several blocks (each block compiled on its own, as torchtitan does, "
             f"or a block's forward compiled once after a graph break, as under FSDP2): Dynamo reuses it for "
             f"every block and its module names are block-local ({shown})")
    errors, notes = [], []
    if layers.keep_first or layers.keep_last:
        given = ", ".join(f"{k}={getattr(layers, k)}" for k in ("keep_first", "keep_last") if getattr(layers, k))
        errors.append(f"{given} needs the block number of each matmul, but {where}, so one decision would hold "
                      f"for every block. Compile the whole model as one graph (torch.compile(model, "
                      f"backend='ufp4', fullgraph=True)); or, compiling per block, compile the blocks to keep "
                      f"with options={{'recipe': 'bf16'}} (or leave them uncompiled): a different options dict "
                      f"makes Dynamo compile them apart")
    if recipe.rht_seed_policy is SeedPolicy.PER_LAYER and any(recipe.gemm(r).rht for r in recipe.quantized_roles):
        errors.append(f"rht_seed_policy='per_layer' would give every block the same Hadamard signs: {where}, "
                      f"and the signs are constants of the graph. Use rht_seed_policy='shared' (the default), "
                      f"or compile the whole model as one graph")
    for pattern in layers.skip:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            notes.append(f"skip pattern {pattern!r} matches no matmul of this graph: {where}; skip patterns "
                         f"are matched against those names (e.g. 'mlp.*' keeps every block's MLP)")
    if recipe.sr_seed_policy is SRSeedPolicy.FIXED and _stochastic(recipe):
        notes.append(f"sr_seed_policy='fixed': every block that shares this graph repeats the same "
                     f"stochastic-rounding bits ({where}). Use sr_seed_policy='per_step' (the default: each "
                     f"call of the graph draws its own seed) for training")
    return errors, notes


def _depends_on_block(recipe: Recipe) -> bool:
    layers = recipe.layers
    return bool(layers.keep_first or layers.keep_last or layers.skip
                or recipe.rht_seed_policy is SeedPolicy.PER_LAYER or recipe.sr_seed_policy is SRSeedPolicy.FIXED)


def guard_shared_graph(compiled, gm: fx.GraphModule, example_inputs, recipe: Recipe):
    """``compiled`` (the backend's result for the Dynamo graph ``gm``), wrapped to raise or warn once it runs
    for a second block when ``recipe`` has a decision that needs the block's identity; else unchanged."""
    if not _depends_on_block(recipe):
        return compiled
    positions = [i for i, t in enumerate(example_inputs) if isinstance(t, torch.nn.Parameter)]
    names = matmul_modules(gm)
    if not positions or not names:
        return compiled
    errors, notes = shared_graph_problems(recipe, names)
    if not errors and not notes:
        return compiled
    state = {"params": None, "shared": False}

    def check(inputs) -> None:
        params = [inputs[i] for i in positions]
        if any(isinstance(p, FakeTensor) for p in params):  # DDPOptimizer runs each split once on fakes
            return
        if state["params"] is not None and not all(r() is p for r, p in zip(state["params"], params)):
            if any(r() is not None for r in state["params"]):  # two live parameter sets: a shared graph
                state["shared"] = True
                for note in notes:
                    warnings.warn(f"ufp4: {note}", stacklevel=3)
            else:  # the first set is gone (parameters replaced, e.g. load_state_dict(assign=True))
                state["params"] = None
        if state["params"] is None:
            state["params"] = [weakref.ref(p) for p in params]

    @functools.wraps(compiled)
    def run(*args):
        if not state["shared"]:
            check(args[0] if len(args) == 1 and isinstance(args[0], list) else args)
        if state["shared"] and errors:
            raise SharedGraphError("ufp4: " + "\nufp4: ".join(errors))
        return compiled(*args)

    return run
