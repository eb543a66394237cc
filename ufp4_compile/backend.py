"""The ``ufp4`` torch.compile backend: Inductor with the ufp4 joint-graph pass.

``torch.compile(model, backend="ufp4", options={"recipe": "ufp4", ...})`` works after ``pip install`` with
no import (entry point ``torch_dynamo_backends``); ``backend=ufp4_backend`` (the function) or
``backend=make_backend({...})`` work too; :func:`register` names the backend in a checkout that is not
installed. Options (an unknown key raises ValueError listing these):

- ``recipe``: a preset name (``ufp4``, ``ufp4-nv``, ``ufp4-mean``, ``e2m1-ref``, ``nvfp4``, ``mxfp4``,
  ``bf16``) or a :class:`~ufp4_compile.recipes.Recipe`;
- layer policy: ``skip`` (fnmatch patterns on module names), ``keep_first``, ``keep_last``,
  ``min_features``, ``keep_output_head``, ``keep_attention``;
- seeds: ``sr_seed``, ``sr_seed_policy`` (``per_step`` / ``fixed``), ``rht_seed``, ``rht_seed_policy``
  (``shared`` / ``per_layer``); ``compute_dtype`` (``bf16`` / ``fp32``);
- ``dump_dir``: write readable graphs and reports there (see :mod:`ufp4_compile.debug`);
- ``dense_gemms``: ``"auto"`` (default: on a GPU without native 4-bit MMA for the formats, e.g. Hopper, a
  quantized GEMM is a bf16 GEMM of operands the quantize kernel writes dequantized), ``True`` (everywhere,
  also on CPU) or ``False`` (always the ``ufp4.scaled_mm`` op over codes); see :mod:`ufp4_compile.passes.dense_gemms`;
- any ``torch._inductor.config`` key (``max_autotune``, ``freezing``, ``triton.cudagraphs``...), forwarded to
  Inductor; ``mode=`` is expanded with ``torch._inductor.list_mode_options`` and forwarded too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import logging
import os
from collections.abc import Mapping

import torch

from ufp4_compile.defaults import with_defaults
from ufp4_compile.recipes import LayerPolicy, Recipe, SRSeedPolicy, get_recipe

log = logging.getLogger("ufp4_compile.backend")

LAYER_OPTIONS = tuple(f.name for f in dataclasses.fields(LayerPolicy))
RECIPE_OPTIONS = ("sr_seed", "sr_seed_policy", "rht_seed", "rht_seed_policy", "compute_dtype")
UFP4_OPTIONS = ("recipe",) + LAYER_OPTIONS + RECIPE_OPTIONS + ("dump_dir", "dense_gemms", "pair_launches")
DENSE_GEMMS = ("auto", True, False)
PAIR_LAUNCHES = (None, True, False, "same-axis", "all", "no-dual", "dual-last", "single-duals",
                 "dequantize-apart")  # docs/backend.md; None: the lowering's own setting


@dataclasses.dataclass(frozen=True)
class BackendOptions:
    recipe: Recipe
    dump_dir: str | None
    dense_gemms: bool | str  # one of DENSE_GEMMS
    inductor: dict  # forwarded to Inductor as config patches
    pair_launches: bool | str | None = None  # one of PAIR_LAUNCHES


def _inductor_keys() -> set[str]:
    import torch._inductor.config as inductor_config

    return set(inductor_config._config)


def options_dict(options) -> dict:
    """A copy of ``options`` (``None`` is no options); anything but a mapping is a ValueError. A string or a
    list of pairs is refused rather than read as a dict: ``options="nvfp4"`` means ``{"recipe": "nvfp4"}``."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(f"options must be a dict of option names to values, e.g. {{'recipe': 'ufp4'}}; "
                         f"got {type(options).__name__} {options!r}")
    return dict(options)


def _dump_dir(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)) and isinstance(os.fspath(value), str) and os.fspath(value):
        return os.fspath(value)
    raise ValueError(f"dump_dir={value!r} is not valid; valid values: a directory path (str or os.PathLike), "
                     f"or None for no dump")


def _mode_options(mode) -> dict:
    if mode in (None, "default"):
        return {}
    import torch._inductor

    try:
        return torch._inductor.list_mode_options(mode)
    except RuntimeError:
        modes = ", ".join(repr(m) for m in torch._inductor.list_mode_options())
        raise ValueError(f"mode={mode!r} is not valid; valid values: {modes}") from None


def resolve_options(options: Mapping | None, mode: str | None = None) -> BackendOptions:
    """Split ``options`` into the recipe (with layer and seed overrides), dump dir and Inductor patches.

    Every bad value is a ValueError naming the option and its valid values (docs/backend.md): the recipe,
    layer and seed fields are checked by the dataclasses of :mod:`ufp4_compile.recipes`, the rest here.
    ``sr_seed`` without ``sr_seed_policy="fixed"`` (given, or the recipe's) is an error: it would be ignored.
    """
    options = options_dict(options)
    recipe = get_recipe(options.pop("recipe", "ufp4"))
    layers = {k: options.pop(k) for k in LAYER_OPTIONS if k in options}
    overrides = {k: options.pop(k) for k in RECIPE_OPTIONS if k in options}
    dump_dir = _dump_dir(options.pop("dump_dir", None))
    dense = options.pop("dense_gemms", "auto")
    if not any(dense is v or (isinstance(v, str) and dense == v) for v in DENSE_GEMMS):
        raise ValueError(f"dense_gemms={dense!r} is not valid; valid values: 'auto', True, False")
    pairs = options.pop("pair_launches", None)
    if not any(pairs is v or (isinstance(v, str) and pairs == v) for v in PAIR_LAUNCHES):
        raise ValueError(f"pair_launches={pairs!r} is not valid; valid values: None (the default), True, False, "
                         f"'same-axis', 'all', 'no-dual', 'dual-last', 'single-duals', 'dequantize-apart'")
    unknown = sorted(set(options) - _inductor_keys(), key=repr) if options else []
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))}; valid ufp4 options: "
                         f"{', '.join(UFP4_OPTIONS)}; any torch._inductor.config key (e.g. 'max_autotune', "
                         f"'freezing') is forwarded to Inductor")
    if layers:
        recipe = dataclasses.replace(recipe, layers=dataclasses.replace(recipe.layers, **layers))
    if overrides:
        recipe = dataclasses.replace(recipe, **overrides)
    if "sr_seed" in overrides and recipe.sr_seed_policy is not SRSeedPolicy.FIXED:
        raise ValueError(f"sr_seed={overrides['sr_seed']!r} is only used with sr_seed_policy='fixed' (the "
                         f"policy is {recipe.sr_seed_policy.value!r}: every step draws its own seed); add "
                         f"'sr_seed_policy': 'fixed' to the options, or drop sr_seed")
    inductor = _mode_options(mode)
    inductor.update(options)
    return BackendOptions(recipe, dump_dir, dense, inductor, pairs)


# Inductor launches the Triton kernels it did not generate (ours: quantize, dequantize) through Triton's own
# Python launcher unless this is set, and through its static launcher (the C++ one it uses for its own kernels)
# if it is; a kernel the static launcher cannot take falls back to Triton's. A training step launches our
# kernels a few hundred times, and through Triton's launcher the default mode was host-bound: on the H200 the
# issue-6 step took 42.7 ms with Triton's launcher and 37.4 ms with the static one (same run,
# benchmarks/results/train_step_62c1777_nvidia-h200.md). The option covers every user-defined kernel of the
# graph, a user's own included; options={STATIC_LAUNCH: False} (or setting Inductor's config away from its
# default) turns it off.
STATIC_LAUNCH = "static_launch_user_defined_triton_kernels"


def inductor_patches(resolved: BackendOptions) -> dict:
    """The Inductor config patches of a compilation: the user's (and ``mode=``'s), plus the static launch of
    user-defined kernels where this torch has the option and the user set it neither in the options nor in
    Inductor's config."""
    import torch._inductor.config as inductor_config

    patches = dict(resolved.inductor)
    entry = inductor_config._config.get(STATIC_LAUNCH)
    if entry is not None and STATIC_LAUNCH not in patches and getattr(inductor_config, STATIC_LAUNCH) == entry.default:
        patches[STATIC_LAUNCH] = True
    return patches


def _lowering(name: str):
    """The function ``name`` of ``ufp4_compile.lowering`` where that package is installed, else None."""
    if importlib.util.find_spec("ufp4_compile.lowering") is None:
        return None
    fn = getattr(importlib.import_module("ufp4_compile.lowering"), name, None)
    return fn if callable(fn) else None


def register_lowering(example_inputs) -> bool:
    """Let ``ufp4_compile.lowering`` register its Inductor lowerings when CUDA tensors are compiled."""
    if not any(isinstance(t, torch.Tensor) and t.is_cuda for t in example_inputs):
        return False
    register = _lowering("register")
    if register is None:
        return False
    register()
    return True


def lowering_cache_key() -> str:
    """``ufp4_compile.lowering.cache_key()`` where the lowering is installed, else ``""``."""
    key = _lowering("cache_key")
    return key() if key is not None else ""


def _sinks(extra_sinks, dump_dir) -> list:
    from ufp4_compile.debug import DumpDir, default_dump_dir

    sinks = list(extra_sinks)
    path = default_dump_dir(dump_dir)
    if path is not None:
        sinks.append(DumpDir(path))
    return sinks


def _pairing(value):
    """A factory of the context that holds the ``pair_launches`` option while a graph is lowered (the
    forward's and the backward's, which AOTAutograd compiles later); a null context for None (the lowering's
    own setting) or where the lowering is not installed."""
    pairing = _lowering("pairing")
    if value is None or pairing is None:
        return contextlib.nullcontext
    return lambda: pairing(value)


def _inner_compile(joint, sinks, pairing=contextlib.nullcontext):
    from torch._inductor.compile_fx import compile_fx_inner

    from ufp4_compile.passes.hoist_seeds import hoist_seeds

    def inner(gm, example_inputs, **kwargs):
        hoist_seeds(gm)
        for sink in sinks:
            sink.compiled(joint.last_graph_id, gm, bool(kwargs.get("is_backward", False)))
        with pairing():
            return compile_fx_inner(gm, example_inputs, **kwargs)

    return inner


_MATMULS_KEPT_WHOLE = ("mm", "addmm", "bmm")


@contextlib.contextmanager
def _matmuls_kept_whole():
    """Inductor's decomposition tables without ``mm``, ``addmm`` and ``bmm`` while the backend compiles: they
    turn a matmul with a reduction of length 1 (a Wgrad over one token; on GPUs also matrix-vector products)
    into a pointwise product before any graph pass runs, out of the recipe's reach; the matmuls the pass keeps
    are lowered whole. The tables are edited in place and restored, not passed to ``compile_fx``: an explicit
    table holds C++ functions that Inductor's cache keys cannot pickle, which turned its caches off."""
    from torch._inductor import decomposition

    packets = [getattr(torch.ops.aten, name) for name in _MATMULS_KEPT_WHOLE]
    matmuls = {getattr(packet, overload) for packet in packets for overload in packet.overloads()}
    tables = [decomposition.decompositions]
    fast = getattr(decomposition, "fast_random_decomps", None)  # what select_decomp_table() returns
    if fast is not None:
        tables.append(fast())
    removed = [(table, op, table.pop(op)) for table in tables for op in list(table) if op in matmuls]
    try:
        yield
    finally:
        for table, op, fn in removed:
            table[op] = fn


class Ufp4Backend:
    """A configured backend: ``torch.compile(m, backend=make_backend({"recipe": "nvfp4"}))``.

    ``report`` accumulates the rows of every graph it compiled (what :func:`ufp4_compile.explain` shows).
    """

    def __init__(self, options: dict | None = None, mode: str | None = None, sinks=()):
        from ufp4_compile.passes.report import Report

        self.options, self.mode, self.sinks = options_dict(options), mode, tuple(sinks)
        self.resolved = resolve_options(with_defaults(self.options), mode)  # validate early
        self.report = Report(self.resolved.recipe.name)

    def __call__(self, gm: torch.fx.GraphModule, example_inputs, mode: str | None = None,
                 options: dict | None = None):
        from torch._inductor.compile_fx import compile_fx

        from ufp4_compile.passes.graph_inputs import graph_inputs
        from ufp4_compile.passes.joint_pass import Ufp4JointPass
        from ufp4_compile.passes.shared_graph import guard_shared_graph

        resolved = resolve_options(with_defaults({**self.options, **options_dict(options)}), mode or self.mode)
        patches = inductor_patches(resolved)
        sinks = _sinks(self.sinks, resolved.dump_dir)
        pairing = _pairing(resolved.pair_launches)
        with pairing():  # the setting the key must name
            key_extra = lowering_cache_key()
        joint = Ufp4JointPass(resolved.recipe, report=self.report, sinks=sinks, dense=resolved.dense_gemms,
                              extra=patches.pop("joint_custom_pre_pass", None), inputs=graph_inputs(gm),
                              key_extra=key_extra)
        patches["joint_custom_pre_pass"] = joint
        register_lowering(example_inputs)
        with _matmuls_kept_whole():
            compiled = compile_fx(gm, example_inputs, inner_compile=_inner_compile(joint, sinks, pairing),
                                  config_patches=patches)
        if joint.last_graph_id is None:
            # AOTAutograd's cache served the compiled (rewritten) graph: the pass did not run in this process.
            self.report.cached_graphs += 1
            log.info("a graph was served from Inductor's cache: the ufp4 report has no rows for it (set "
                     "torch._inductor.config.force_disable_caches=True to see them)")
        return guard_shared_graph(compiled, gm, example_inputs, resolved.recipe)


def make_backend(options: dict | None = None, *, mode: str | None = None, sinks=()) -> Ufp4Backend:
    return Ufp4Backend(options, mode, sinks)


def ufp4_backend(gm: torch.fx.GraphModule, example_inputs, *, mode: str | None = None,
                 options: dict | None = None):
    """The backend function behind ``backend="ufp4"`` (entry point ``torch_dynamo_backends``)."""
    return Ufp4Backend(options, mode)(gm, example_inputs)


def make_aot_backend(options: dict | None = None, *, sinks=(), dry_run: bool = False,
                     inductor_decompositions: bool = False, report=None):
    """The same pass under AOTAutograd with eager execution and no Inductor (``aot_eager``-style): fast
    tests of the rewrite, and :func:`ufp4_compile.explain` (``dry_run``, with Inductor's decompositions so
    that it sees the graphs Inductor would). Inductor options are accepted and ignored."""
    from functools import partial

    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    from ufp4_compile.passes.graph_inputs import graph_inputs
    from ufp4_compile.passes.joint_pass import Ufp4JointPass
    from ufp4_compile.passes.report import Report
    from ufp4_compile.passes.shared_graph import guard_shared_graph

    resolved = resolve_options(with_defaults(options))
    report = report if report is not None else Report(resolved.recipe.name)
    decompositions = None
    if inductor_decompositions:
        from torch._inductor.decomposition import select_decomp_table

        decompositions = select_decomp_table()

    def backend(gm, example_inputs, **_):
        all_sinks = _sinks(sinks, resolved.dump_dir)
        joint = Ufp4JointPass(resolved.recipe, report=report, sinks=all_sinks, dry_run=dry_run,
                              dense=resolved.dense_gemms, inputs=graph_inputs(gm))

        def compiled(gm, example_inputs, is_backward):
            for sink in all_sinks:
                sink.compiled(joint.last_graph_id, gm, is_backward)
            return make_boxed_func(gm.forward)

        def partition(joint_module, joint_inputs, **kwargs):
            joint(joint_module.graph)
            joint_module.recompile()
            return min_cut_rematerialization_partition(joint_module, joint_inputs, **kwargs)

        def inference(gm, example_inputs):
            joint(gm.graph)
            gm.recompile()
            return compiled(gm, example_inputs, False)

        run = aot_autograd(fw_compiler=partial(compiled, is_backward=False),
                           bw_compiler=partial(compiled, is_backward=True), inference_compiler=inference,
                           partition_fn=partition, decompositions=decompositions)(gm, example_inputs)
        return guard_shared_graph(run, gm, example_inputs, resolved.recipe)

    backend.report = report
    return backend


def explain(model, *args, recipe: str | Recipe | None = None, options: dict | None = None, **kwargs):
    """What ``torch.compile(model, backend="ufp4", options=options)`` would do to each matmul: a
    :class:`~ufp4_compile.passes.report.Report` (exported as ``ufp4_compile.explain``).

    The model's inputs are passed as the model takes them, ``explain(model, *args, **kwargs)`` runs
    ``model(*args, **kwargs)`` (``explain(hf_model, input_ids=ids)``); backend options go in ``options``,
    the dict ``torch.compile`` takes, and ``recipe`` is a shortcut for ``options["recipe"]``. A keyword named
    like a ufp4 option raises instead of reaching the model (a model taking ``**kwargs`` would ignore it).

    Runs the model once through Dynamo and AOTAutograd with Inductor's decompositions (so the graphs are the
    ones Inductor would see) and the pass in dry-run mode: nothing is quantized, the model runs in its
    original precision. Gradients are traced (not run) when parameters or inputs require them, so backward
    matmuls appear too. Inductor options are accepted and ignored; graph breaks give several graphs, all
    reported.
    """
    misplaced = sorted(set(kwargs) & set(UFP4_OPTIONS))
    if misplaced:
        fix = ", ".join(f"{k!r}: {kwargs[k]!r}" for k in misplaced)
        raise TypeError(f"explain() passes keyword arguments to the model; {', '.join(misplaced)} "
                        f"{'is a ufp4 option' if len(misplaced) == 1 else 'are ufp4 options'}: "
                        f"explain(model, ..., options={{{fix}}})")
    options = options_dict(options)
    if recipe is not None:
        if "recipe" in options:
            raise ValueError("explain() got recipe= and options['recipe']; give one")
        options["recipe"] = recipe
    backend = make_aot_backend(options, dry_run=True, inductor_decompositions=True)
    compiled = torch.compile(model, backend=backend)
    compiled(*args, **kwargs)
    return backend.report


def register(name: str = "ufp4") -> None:
    """Register ``backend=name`` in a checkout that is not pip-installed (idempotent)."""
    from torch._dynamo.backends.registry import _COMPILER_FNS, register_backend

    if name not in _COMPILER_FNS:
        register_backend(compiler_fn=ufp4_backend, name=name)
