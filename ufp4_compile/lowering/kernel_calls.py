"""Inductor lowerings that launch the quantize / dequantize kernels from Inductor's generated code.

For ``ufp4::quantize``, ``ufp4::quantize_dequantize`` and ``ufp4::dequantize`` on CUDA tensors with static
shapes, the lowering allocates the outputs as Inductor buffers and emits each Triton kernel as a
user-defined kernel (``ir.UserDefinedTritonKernel``, through the lowering Inductor registers for
``triton_kernel_wrapper_mutation``, as if the graph had called the kernel through ``wrap_triton``). The
generated wrapper then launches the kernel itself, with no Python launcher and no dispatcher round trip per
call, and CUDA graphs capture it. The launch geometry is the eager launcher's (``kernels.quantize.launch_plan``,
``kernels.dequantize.launch_plan``), so both give the same bits.

Anything else (CPU tensors, symbolic sizes) goes to the op's own implementation as an extern fallback call.
Which quantizations share a launch is ``lowering/partners.py``'s choice; this module emits the launch.
"""

from __future__ import annotations

import copy
import functools
import operator

import torch
from torch._inductor import ir
from torch._inductor.lowering import empty_strided, fallback_handler, lowerings

from ufp4_compile.lowering import partners
from ufp4_compile.lowering.folded_casts import fold_casts, folded_cast  # noqa: F401  (fold_casts: this API too)
from ufp4_compile.lowering.partners import (_can_dual, _can_share_values, _dequantize_call, _dequantize_sibling,
                                           _pairs_shift, _plan, _quantize_call, _siblings, shared_values_plan)
from ufp4_compile.lowering.partners import pair_launches, state_key  # noqa: F401  (this module's API before)
from ufp4_compile.numerics.quantize import as_format


@functools.lru_cache(maxsize=None)
def _with_warps(kernel, num_warps: int):
    """``kernel`` with its launch configuration (how Inductor takes ``num_warps`` of a user kernel)."""
    import triton

    return triton.autotune(configs=[triton.Config({}, num_warps=num_warps)], key=[])(kernel)


# Two things Inductor does for a user kernel at every launch site, done once per kernel variant for ours: its
# analysis of which pointer arguments the kernel writes compiles the kernel to TTIR each time (0.1-0.2 s for
# the quantize kernel), and its wrapper codegen walks the bytecode of every jit function the kernel calls
# (about 0.03 s). A training step's graphs launch our kernels a few hundred times, mostly the same variants.
_ACCESSES: dict = {}
VERIFY_ACCESSES = False  # tests: on a memo hit, analyse anyway and fail if the answers differ
ACCESS_STATS = {"hits": 0, "misses": 0}


def _ours(kernel) -> bool:
    """Whether ``kernel`` (a ``triton.jit`` function) is one of ``ufp4_compile.kernels``'."""
    return getattr(getattr(kernel, "fn", None), "__module__", "").startswith("ufp4_compile.kernels.")


def _access_summary(accesses) -> tuple:
    """Comparable form of an analysis result: torch >= 2.12's accesses object (reads, writes, whether an
    epilogue can fuse) or torch 2.11's list of mutated argument names."""
    rw = getattr(accesses, "read_writes", None)
    if rw is None:
        return (sorted(accesses),)
    return (sorted(d.name for d in rw.reads), sorted(d.name for d in rw.writes), accesses.can_fuse_epilogue)


def _scalar_class(value):
    """What of an integer argument can change the kernel's TTIR: Triton's specializations (== 1, a multiple
    of 16) and whether it needs 64 bits; any other scalar as it is."""
    import sympy

    if isinstance(value, bool) or not isinstance(value, (int, sympy.Integer)):
        return ("value", repr(value))
    value = int(value)
    return ("int", value == 1, value % 16 == 0, value.bit_length() > 31)


def access_key(kernel, kwargs: dict) -> tuple:
    """The memo key of the access analysis of ``kernel`` launched with ``kwargs``: the kernel, every constexpr
    value, each tensor argument's name and dtype, each other scalar's specialization class. The writes of our
    kernels depend on their constexprs only (WRITE_CODES, WRITE_VALUES, SCALE, ...), which the key holds in
    full; tests/lowering/test_kernel_calls_codegen.py checks that other scalar values give the same answer."""
    from torch._inductor.ir import TensorBox

    constexprs = {p.name for p in kernel.params if p.is_constexpr}
    parts = []
    for name, v in sorted(kwargs.items()):
        if isinstance(v, (TensorBox, torch.Tensor)):
            parts.append((name, "tensor", str(v.get_dtype() if isinstance(v, TensorBox) else v.dtype)))
        elif name in constexprs:
            parts.append((name, "constexpr", repr(v)))
        else:
            parts.append((name, _scalar_class(v)))
    return (kernel, tuple(parts))


# The analysis Inductor runs for a user kernel at each launch site: identify_accessed_tensors (torch >= 2.12:
# reads, writes, epilogue fusibility) or identify_mutated_tensors (torch 2.11: the written argument names).
# Both take (kernel, kwargs, tma_descriptor_metadata); UserDefinedTritonKernel imports them at each launch.
ANALYSES = ("identify_accessed_tensors", "identify_mutated_tensors")


def memoize_access_analysis(wrap) -> str | None:
    """Replace ``wrap``'s access analysis (the first of ``ANALYSES`` it has) by one that serves our kernels from
    a memo; the name replaced, or None when it has neither (then every launch site runs Inductor's)."""
    name = next((n for n in ANALYSES if hasattr(wrap, n)), None)
    if name is None or getattr(getattr(wrap, name), "_ufp4_memoized", False):
        return name
    analyse = getattr(wrap, name)

    def accesses(kernel, kwargs, tma_descriptor_metadata=None, *rest):
        args = (kernel, kwargs, tma_descriptor_metadata, *rest)
        if not _ours(kernel) or tma_descriptor_metadata or rest:
            return analyse(*args)
        key = access_key(kernel, kwargs)
        ACCESS_STATS["hits" if key in _ACCESSES else "misses"] += 1
        if key not in _ACCESSES:
            _ACCESSES[key] = analyse(*args)
        elif VERIFY_ACCESSES:
            fresh, memo = (_access_summary(a) for a in (analyse(*args), _ACCESSES[key]))
            if fresh != memo:
                raise AssertionError(f"memoized access analysis {memo} differs from a fresh one {fresh} for {key}")
        return copy.deepcopy(_ACCESSES[key])

    accesses._ufp4_memoized = True
    accesses.original = analyse
    setattr(wrap, name, accesses)
    return name


def memoize_closure_source(wrapper) -> bool:
    """Serve the kernel source closure of our kernels (no epilogue fused in) from a memo; False when
    ``wrapper`` has no such function."""
    closure_of = getattr(wrapper, "user_defined_triton_kernel_transitive_closure_source_code", None)
    if closure_of is None or getattr(closure_of, "_ufp4_memoized", False):
        return closure_of is not None
    sources: dict = {}

    def closure(kernel, *rest, **kwargs):  # torch >= 2.12 passes epilogue_fusion; torch 2.11 the kernel only
        if any(v is not None for v in (*rest, *kwargs.values())) or not _ours(kernel):
            return closure_of(kernel, *rest, **kwargs)
        if kernel not in sources:
            sources[kernel] = closure_of(kernel)
        return sources[kernel]

    closure._ufp4_memoized = True
    closure.original = closure_of
    wrapper.user_defined_triton_kernel_transitive_closure_source_code = closure
    return True


_INT32_MAX = 2**31 - 1
SHARE_DEFINITIONS = True  # tests: False defines our kernels once per distinct scalar value, as Inductor does


def _representative(value):
    """An integer of ``value``'s class for Inductor's signature of a user kernel (the only things it derives
    from an integer argument: equal to 1, a multiple of 16, at most INT32_MAX, i.e. i32 or i64); any other
    value as it is. The i32 rule is Inductor's (``expr_fits_within_32bit``: an upper bound only), not
    :func:`_scalar_class`'s bit length, which keys what Triton itself specializes in the access analysis."""
    import sympy

    if isinstance(value, bool) or not isinstance(value, (int, sympy.Integer)):
        return value
    value = int(value)
    if value == 1:
        return sympy.Integer(1)
    base = 16 if value % 16 == 0 else 17
    return sympy.Integer(base if value <= _INT32_MAX else 2**32 + base - 16)


def define_once_per_variant(wrapper_cls) -> bool:
    """Let a graph define each of our kernel variants once, whatever its launches' scalar values.

    Inductor keys the definition (``async_compile.triton``: one compile of the kernel in its worker pool) of a
    user kernel with a launch configuration (``triton.autotune``, which is how a user kernel takes
    ``num_warps``, :func:`_with_warps`) on every scalar argument's value, for the autotuner's sake, so a step
    whose launches differ only in a seed or a Philox offset (dY's stochastic rounding in each layer)
    defined the same kernel once per launch site and handed each definition to the pool to compile: 40
    definitions of the dual-dequantize kernel in a 12-layer backward. With one config there is nothing to
    autotune, and the compiled kernel depends on an integer only through the signature Inductor derives from
    it (:func:`_representative`), so our kernels are defined with each non-constexpr integer replaced by a
    representative of its class; the launches still pass their own values.
    tests/lowering/test_kernel_calls_codegen.py checks that every definition it keeps has exactly the source
    Inductor would have compiled for each launch it serves. False when ``wrapper_cls`` has no such method."""
    define = getattr(wrapper_cls, "define_user_defined_triton_kernel", None)
    if define is None or getattr(define, "_ufp4_shared", False):
        return define is not None

    def define_shared(self, kernel, configs, kwargs, *rest, **kw):
        if SHARE_DEFINITIONS and _ours(kernel) and len(configs) == 1:
            constexprs = {p.name for p in kernel.params if p.is_constexpr}
            kwargs = {k: v if k in constexprs else _representative(v) for k, v in kwargs.items()}
        return define(self, kernel, configs, kwargs, *rest, **kw)

    define_shared._ufp4_shared = True
    define_shared.original = define
    wrapper_cls.define_user_defined_triton_kernel = define_shared
    return True


def install_memos() -> None:
    """Serve Inductor's per-launch-site access analysis and kernel source closure of our kernels from
    memos (once per process), and define each of our kernel variants once per graph; any other kernel, and
    a kernel with an epilogue fused in, goes to Inductor's."""
    import torch._higher_order_ops.triton_kernel_wrap as wrap
    from torch._inductor.codegen import wrapper

    memoize_access_analysis(wrap)
    memoize_closure_source(wrapper)
    define_once_per_variant(wrapper.PythonWrapperCodegen)


def kernel_launch(kernel, grid: tuple, num_warps: int, tensors: dict, scalars: dict) -> None:
    """Emit ``kernel[grid](**tensors, **scalars)`` into the graph being lowered (tensors: TensorBoxes)."""
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table, triton_kernel_wrapper_mutation

    import sympy

    # Integer arguments as sympy integers, as traced graphs hand them over: Inductor decides each one's
    # Triton type (i32 or i64) from its value through sympy (torch 2.11 fails on a plain int there).
    constexprs = {p.name for p in kernel.params if p.is_constexpr}
    scalars = {name: sympy.Integer(v) if isinstance(v, int) and not isinstance(v, bool) and name not in constexprs
               else v for name, v in scalars.items()}
    # a pointer the launch does not use is None: a constant of the call, which Triton specializes away
    scalars.update({name: None for name, t in tensors.items() if t is None})
    tensors = {name: t for name, t in tensors.items() if t is not None}
    kernel_idx = kernel_side_table.add_kernel(_with_warps(kernel, num_warps))
    constant_args_idx = kernel_side_table.add_constant_args(scalars)
    lowerings[triton_kernel_wrapper_mutation](kernel_idx=kernel_idx, constant_args_idx=constant_args_idx,
                                              grid=[tuple(grid)], tma_descriptor_metadata={}, kwargs=dict(tensors))


def _static_sizes(*nodes) -> list[tuple[int, ...]] | None:
    sizes = []
    for node in nodes:
        try:
            sizes.append(tuple(int(s) for s in node.get_size()))
        except TypeError:  # a symbolic size: the launch geometry is computed on the host
            return None
    return sizes


def _contiguous(x) -> ir.TensorBox:
    x = ir.ExternKernel.require_contiguous(x)
    return x if isinstance(x, ir.TensorBox) else ir.TensorBox(x)


def _empty(shape, dtype: torch.dtype, device) -> ir.TensorBox:
    stride, running = [], 1
    for d in reversed(shape):
        stride.append(running)
        running *= d
    return empty_strided(list(shape), list(reversed(stride)), dtype=dtype, device=device)


def _on_cuda(x) -> bool:
    device = x.get_device()
    return device is not None and device.type == "cuda"


def _outputs(plan, values_dtype, shape, device, node=None) -> tuple:
    """(codes, scales, values, tensor scale) buffers of one quantization: codes and scales, or values; the tensor
    scale None for one-level scales (UFP4, MXFP4, the E2M1 baseline), whose tensor scale is the constant 1
    (:func:`_result` hands out the graph's :func:`unit_tensor_scale`): the launch writes none and the graph
    allocates no buffer for it, an allocation and a pointer fewer for the host per quantization. Not under CUDA
    graphs (:func:`_recorded_in_cuda_graphs`), nor where the quantization's FX ``node`` (None: unknown) hands its
    tensor scale to the user (:func:`_tensor_scale_returned`)."""
    codes_buf = scales_buf = values_buf = None
    if values_dtype is None:
        codes_buf = _empty(plan.codes_shape, torch.uint8, device)
        scales_buf = _empty(plan.scales_shape, plan.result_scale_dtype, device)
    else:
        values_buf = _empty(shape, values_dtype, device)
    if plan.amax_constexprs is None and not _recorded_in_cuda_graphs() and not _tensor_scale_returned(node):
        return codes_buf, scales_buf, values_buf, None
    # The tensor scale as a (1,) buffer viewed as 0-d (_result): Inductor lowers an empty 0-d buffer to a fill
    # kernel (an empty buffer is a pointwise fill with zero ranges, and a 0-d one has no range to zero), one
    # more launch per quantization; a (1,) one costs nothing.
    return codes_buf, scales_buf, values_buf, _empty((1,), torch.float32, device)


UNIT_TENSOR_SCALE = "ufp4_unit_tensor_scale"


def _tensor_scale_returned(node) -> bool:
    """Whether the quantization ``node`` (an FX node of ``quantize`` / ``quantize_dequantize``; None: unknown) may
    hand its tensor scale to the user: as an output the graph marks user-visible (every output where the graph
    does not say; tensors saved for the backward are not), or through a view. The user then owns a tensor of its
    own, which the graph's constant would not be (an in-place change would reach later calls)."""
    ops = (torch.ops.ufp4.quantize.default, torch.ops.ufp4.quantize_dequantize.default)
    if node is None or node.target not in ops or not isinstance(node.meta.get("val"), (tuple, list)):
        return True
    value = node.meta["val"]
    last = len(value) - 1  # quantize: (codes, scales, ts); quantize_dequantize: (values, ts)
    for item in node.users:
        if item.target is not operator.getitem or not isinstance(item.args[1], int):
            return True
        if item.args[1] % len(value) != last:
            continue
        for user in item.users:
            if user.op == "output":
                outputs = user.args[0] if isinstance(user.args[0], (tuple, list)) else [user.args[0]]
                visible = user.meta.get("user_visible_output_idxs")
                if visible is None or any(o is item and i in visible for i, o in enumerate(outputs)):
                    return True
            elif isinstance(user.target, torch._ops.OpOverload) and user.target.is_view:
                return True
    return False


def _recorded_in_cuda_graphs() -> bool:
    """Whether the graph being compiled runs under Inductor's CUDA graphs (``mode="reduce-overhead"``). Its
    outputs then keep a (1,) buffer each as their tensor scale: CUDA-graph trees take an output that is no input
    for memory of their own pool, which a graph constant is not; and a recorded graph costs the host nothing
    per allocation."""
    from torch._inductor import config

    return bool(config.triton.cudagraphs)


def device_constant(value: float, device) -> torch.Tensor:
    """A 0-d FP32 tensor of ``value`` on ``device``, made outside any fake mode (a graph constant holds real
    data); testing/fake_cuda.py makes a fake one where there is no GPU."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():
        return torch.full((), value, dtype=torch.float32, device=device)


def unit_tensor_scale(device) -> ir.TensorBox:
    """The tensor scale of every one-level-scale quantization of the graph being lowered: one 0-d graph constant
    1 on ``device`` (a module attribute of the compiled graph, so no allocation or kernel per call). Saved for
    the backward, it is one tensor however many quantizations return it."""
    from torch._inductor.virtualized import V

    constants = V.graph.__dict__.setdefault("_ufp4_unit_tensor_scales", {})
    if device not in constants:
        constants[device] = device_constant(1.0, device)
    return V.graph.add_tensor_constant(constants[device], UNIT_TENSOR_SCALE)  # the same name for the same tensor


def _unit_fills(graph) -> list:
    """The FX nodes of ``graph`` that make a 0-d FP32 constant 1 (``full([], 1.0)``: the dense-GEMM pass's
    tensor scale of dequantized operands), once per graph."""
    found = graph.__dict__.get("_ufp4_unit_fills")
    if found is None:
        full = torch.ops.aten.full.default
        found = graph.__dict__["_ufp4_unit_fills"] = [
            n for n in graph.graph.nodes if n.op == "call_function" and n.target is full
            and len(n.args) >= 2 and list(n.args[0]) == [] and n.args[1] == 1.0
            and n.kwargs.get("dtype") == torch.float32]
    return found


def _is_unit_tensor_scale(tensor_scale) -> bool:
    """Whether ``tensor_scale`` (a lowered op input) is the constant 1: this graph's :func:`unit_tensor_scale`,
    or a ``full([], 1.0)`` of the graph as lowered. A dequantize launch then leaves it out (multiplying by 1
    changes no value, NaN and infinities included), and a fill no one else reads is never launched."""
    from torch._inductor.virtualized import V

    if any(V.graph.env.get(n) is tensor_scale for n in _unit_fills(V.graph)):
        return True
    units = V.graph.__dict__.get("_ufp4_unit_tensor_scales", {}).values()
    get_name = getattr(tensor_scale, "get_name", None)
    if not units or get_name is None:
        return False
    try:
        name = get_name()
    except (AttributeError, NotImplementedError):
        return False
    return any(V.graph.constants.get(name) is unit for unit in units)


def _result(outputs, values_dtype, device) -> tuple:
    """The op's result: ``quantize``'s (codes, scales, tensor scale) or ``quantize_dequantize``'s (values, ts);
    a tensor scale that was not written (None in ``outputs``: one-level scales) is the graph's constant 1."""
    codes_buf, scales_buf, values_buf, tensor_scale = outputs
    if tensor_scale is None:
        tensor_scale = unit_tensor_scale(device)
    else:
        tensor_scale = lowerings[torch.ops.aten.reshape.default](tensor_scale, [])
    return (codes_buf, scales_buf, tensor_scale) if values_dtype is None else (values_buf, tensor_scale)


def _emit_single(x, plan, outputs: tuple, rht_seed, seed, offset, shift=None, rounded: bool = False) -> None:
    """Emit one ``_quantize_kernel`` launch of ``plan`` on ``x`` into ``outputs`` (codes, scales, values, tensor
    scale; None for one it does not write), after its global-amax pre-pass for two-level scales (its partial
    maxima: every pre-pass program writes its slot, so no zero fill, a kernel launch, is needed). ``rounded``:
    ``x`` is a folded cast's FP32 source (``lowering.folded_casts.folded_cast``), rounded to bf16 as it is loaded."""
    from ufp4_compile.kernels.quantize import (AMAX_PROGRAMS, PLAN_SCALARS, _quantize_kernel, amax_launch,
                                               output_pointers, rht_key)

    key = rht_key(plan, rht_seed)
    gamax = None
    round_flag = {"ROUND": rounded}  # every constexpr of the kernel: Inductor's analysis of a launch takes all
    if plan.amax_constexprs is not None:
        gamax = _empty((AMAX_PROGRAMS,), torch.int32, x.get_device())
        kernel, grid, warps, tensors, scalars = amax_launch(plan, x, gamax, key)
        kernel_launch(kernel, grid, warps, tensors, {**scalars, **round_flag})
    tensors = dict(x_ptr=x, **output_pointers(*outputs[:3]), ts_ptr=outputs[3], gamax_ptr=gamax,
                   seed_ptr=seed if plan.constexprs["STOCHASTIC"] else None,
                   shift_ptr=shift if plan.constexprs["SHIFT"] else None)
    kernel_launch(_quantize_kernel, plan.grid, plan.num_warps, tensors,
                  {**{k: plan.args[k] for k in PLAN_SCALARS}, "rht_key": key, "offset": int(offset),
                   "shift_period": plan.args["shift_period"], **plan.constexprs, **round_flag})


def _quantize_launch(x, axis, fmt, rht, rht_seed, seed, offset, values_dtype=None, shift=None):
    """Lower one quantize launch (codes for ``values_dtype=None``, else values) of ``x`` less ``shift`` (one the
    kernel takes: :func:`_shifted_input` first); the op's result, or None when the launch cannot be planned
    here."""
    from torch._inductor.virtualized import V

    sizes = _static_sizes(x)
    if sizes is None or not _on_cuda(x) or 0 in sizes[0]:
        return None
    shape = sizes[0]
    plan = _plan(shape, x.get_dtype().itemsize, axis, fmt, rht, values_dtype, shift is not None)
    source = folded_cast(partners._quantize_call(V.graph.current_node)) if shift is None else None
    x = _contiguous(x) if source is None else source
    outputs = _outputs(plan, values_dtype, shape, x.get_device(), V.graph.current_node)
    _emit_single(x, plan, outputs, rht_seed, seed, offset, None if shift is None else _contiguous(shift),
                 rounded=source is not None)
    return _result(outputs, values_dtype, x.get_device())


def _shifted_input(x, fmt, shift):
    """``(x, shift)`` as a launch takes them: as they are where the kernel subtracts the shift (one-level
    scales), else ``(x - shift in FP32, None)``, the difference as an Inductor node (a two-level format's
    global-amax pre-pass reads its input as it is)."""
    from ufp4_compile.kernels.quantize import kernel_takes_shift

    if shift is None or kernel_takes_shift(fmt):
        return x, shift
    upcast = lowerings[torch.ops.prims.convert_element_type.default](x, torch.float32)
    return lowerings[torch.ops.aten.sub.Tensor](upcast, shift), None


# ---- two launches in one (which ones: lowering/partners.py) -----------------------------------------------

def pairing_state() -> dict:
    """The graph being lowered's pairing state: its FX nodes' order, and the results lowered ahead for their
    nodes (``ahead``: a node found there returns that result when its turn comes)."""
    from torch._inductor.virtualized import V

    graph = V.graph
    state = getattr(graph, "_ufp4_pairs", None)
    if state is None:
        state = graph._ufp4_pairs = {"order": {n: i for i, n in enumerate(graph.graph.nodes)}, "ahead": {}}
    return state


def _lower_paired(find_siblings, lower_all):
    """The result of the node being lowered when pairing lowered it ahead with an earlier one, or when it
    shares a launch with ``find_siblings(node, order, taken)`` now (``lower_all(node, siblings)``: the node's
    result and those of the first siblings the launch took, or None where none can share it; the siblings'
    results are kept for their turns); else None."""
    if not partners._pairing:
        return None
    from torch._inductor.virtualized import V

    state = pairing_state()
    node = V.graph.current_node
    if node in state["ahead"]:
        return state["ahead"].pop(node)
    siblings = find_siblings(node, state["order"], state["ahead"]) if node is not None else []
    results = lower_all(node, siblings) if siblings else None
    if results is None:
        return None
    for sibling, result in zip(siblings, results[1:]):
        state["ahead"][sibling] = result
    return results[0]


def _quantize_pair(x, seed, shift=None):
    """``lower_all`` of quantizations sharing a launch (``x``, ``seed`` and ``shift``: this one's inputs as
    lowered): two tensors' duals (four siblings' worth) where the launch takes them, else the first two."""
    def lower_all(node, siblings):
        from torch._inductor.virtualized import V

        from ufp4_compile.kernels.quantize_pair import (dual_refusal, pair_launch, pair_refusal, two_duals_launch,
                                                        two_duals_refusal)

        quantizations = [_quantize_call(n) for n in (node, *siblings)]
        calls = [c for c in quantizations if c is not None]  # the dequantizations come last (_siblings)
        nodes = [n for n, c in zip((node, *siblings), quantizations) if c is not None]
        dequantizations = [_dequantize_call(n) for n, c in zip(siblings, quantizations[1:]) if c is None]
        try:  # the siblings' inputs, seeds and shifts as lowered (they exist: the siblings were chosen so)
            lowered = [(x, seed, shift)] + [tuple(V.graph.env[a] if hasattr(a, "op") else a for a in (c[0], c[5], c[8]))
                                            for c in calls[1:]]
        except KeyError:
            return None
        sizes = [_static_sizes(t) for t, _, _ in lowered]
        if any(s is None or not _on_cuda(t) or 0 in s[0] for s, (t, _, _) in zip(sizes, lowered)):
            return None
        if any(t.get_device() != x.get_device() for t, _, _ in lowered[1:]):
            return None
        if not all(_pairs_shift(c) for c in calls):  # a difference computed first launches alone
            return None
        if len(calls) == 2 and not dequantizations and _can_share_values(*calls):
            source = folded_cast(calls[0])
            return _emit_shared_values(calls, _contiguous(x) if source is None else source, sizes[0][0],
                                       x.get_device(), rounded=source is not None)
        plans = [_plan(size[0], t.get_dtype().itemsize, call[1], call[2], call[3], call[7], call[8] is not None)
                 for size, (t, _, _), call in zip(sizes, lowered, calls)]
        one_read = [_can_dual(*calls[i:i + 2]) and dual_refusal(sizes[i][0], *plans[i:i + 2]) is None
                    for i in range(0, len(calls) - 1, 2)]
        duals = [pair_launch(*plans[i:i + 2], dual_shape=sizes[i][0]) for i in (0, 2) if i < len(calls) - 1
                 and one_read[i // 2]]
        if len(calls) == 4 and len(duals) == 2 and two_duals_refusal(*duals) is None:
            launch = two_duals_launch(*duals)
        elif len(calls) == 4 and len(duals) == 1 and one_read[0] and _can_share_values(*calls[2:]):
            return _emit_dual_shared(duals[0], calls, lowered, sizes, plans, x.get_device(), nodes)
        elif dequantizations and len(duals) == 1:
            return _emit_dual_dequantize(duals[0], calls, lowered, sizes, plans, dequantizations, x.get_device(),
                                         nodes)
        else:
            calls, lowered, sizes, plans, nodes = calls[:2], lowered[:2], sizes[:2], plans[:2], nodes[:2]
            if not one_read[0] and pair_refusal(*plans) is not None:
                return None
            launch = pair_launch(*plans, dual_shape=sizes[0][0] if one_read[0] else None)
        return _emit_quantize_launch(launch, calls, lowered, sizes, plans, x.get_device(), nodes=nodes)

    return _lower_paired(_siblings, lower_all) if _on_cuda(x) else None


def _emit_shared_values(calls, x, shape: tuple, device, rounded: bool = False) -> tuple:
    """Emit the one launch of two quantizations of ``x`` that :func:`_can_share_values` accepts: the codes job's
    launch writing the values job's values too, one tensor scale for both; the two op results in ``calls``'
    order. ``rounded``: ``x`` is a folded cast's FP32 source (``lowering.folded_casts.folded_cast``)."""
    codes_job = 0 if calls[0][7] is None else 1
    mine, theirs = calls[codes_job], calls[1 - codes_job]
    plan = shared_values_plan(*calls)
    codes, scales, _, ts = _outputs(plan, None, shape, device)
    values = _empty(shape, theirs[7], device)
    _emit_single(x, plan, (codes, scales, values, ts), mine[4], None, mine[6],  # round to nearest: no seed
                 rounded=rounded)
    results = (_result((codes, scales, None, ts), None, device),
               _result((None, None, values, ts), theirs[7], device))
    return results if codes_job == 0 else results[::-1]


def _emit_dual_shared(dual, calls, lowered, sizes, plans, device, nodes) -> tuple:
    """Emit ``dual`` (``calls[:2]``, one tensor's two quantizations) with the one launch of a second tensor's two
    that :func:`_can_share_values` accepts (``calls[2:]``, NVFP4's W) as one launch where
    ``kernels.quantize_pair.dual_single_refusal`` accepts them: the four op results; else the dual launch alone:
    its two (the other two lower on their own)."""
    from ufp4_compile.kernels.quantize_pair import dual_single_launch, dual_single_refusal, dual_single_tile

    single = shared_values_plan(*calls[2:], dual_single_tile(dual))
    if single is None or dual_single_refusal(dual, single) is not None:
        return _emit_quantize_launch(dual, calls[:2], lowered[:2], sizes[:2], plans[:2], device, nodes=nodes[:2])
    codes_job = 2 if calls[2][7] is None else 3
    values = _empty(sizes[codes_job][0], calls[5 - codes_job][7], device)
    jobs = [0, 1, codes_job]
    results = _emit_quantize_launch(dual_single_launch(dual, single), [calls[i] for i in jobs],
                                    [lowered[i] for i in jobs], [sizes[i] for i in jobs], [*plans[:2], single],
                                    device, {"c_values_ptr": values}, [*nodes[:2], None])
    codes, shared = results[2], (values, results[2][2])  # one tensor scale for both
    return (*results[:2], *((codes, shared) if codes_job == 2 else (shared, codes)))


def _emit_dual_dequantize(dual, calls, lowered, sizes, plans, dequantizations, device, nodes=None) -> tuple:
    """Emit ``dual`` (two quantizations of one tensor) with the two ``dequantizations`` (their FX calls) as one
    launch where ``kernels.quantize_pair.dual_dequantize_refusal`` accepts them: the four op results; else the
    dual launch alone: its two (the dequantizations lower on their own)."""
    from torch._inductor.virtualized import V

    from ufp4_compile.kernels.quantize_pair import dual_dequantize_elements, dual_dequantize_launch, dual_dequantize_refusal

    try:
        planned = [_dequantize_plan(*(V.graph.env[a] for a in call[:3]), *call[3:],
                                    elements=dual_dequantize_elements(dual)) for call in dequantizations]
    except KeyError:
        planned = [None]
    if any(p is None for p in planned) or dual_dequantize_refusal(dual, [p[0] for p in planned]) is not None:
        return _emit_quantize_launch(dual, calls, lowered, sizes, plans, device, nodes=nodes)
    extra = {f"{p}_{k}": v for p, (_, tensors, _) in zip("cd", planned) for k, v in tensors.items()}
    results = _emit_quantize_launch(dual_dequantize_launch(dual, [p[0] for p in planned]), calls, lowered, sizes,
                                    plans, device, extra, nodes)
    return (*results, *(out for _, _, out in planned))


def _emit_quantize_launch(launch, calls, lowered, sizes, plans, device, extra: dict | None = None,
                          nodes=None) -> tuple:
    """Emit the jobs' outputs, their global-amax pre-passes (two a launch) and ``launch`` (a pair, dual or
    two-duals launch, its jobs under ``launch.prefixes``; ``extra``: other jobs' buffers); each quantize job's op
    result. ``nodes``: the jobs' FX nodes (for :func:`_tensor_scale_returned`), or None."""
    from ufp4_compile.kernels.prepass import prepass_launches
    from ufp4_compile.kernels.quantize import AMAX_PROGRAMS, rht_key, rounding_constexprs
    from ufp4_compile.kernels.quantize_pair import job_pointers, one_read_shapes

    outputs = [_outputs(plan, call[7], size[0], device, node)
               for plan, call, size, node in zip(plans, calls, sizes, nodes or [None] * len(calls))]
    sources = {}  # a folded cast's source, once per cast (its jobs' pointers, one object: rounding_constexprs)
    for call in calls:
        if call[0] not in sources:
            sources[call[0]] = folded_cast(call)
    inputs = [_contiguous(t) if sources[call[0]] is None else sources[call[0]]
              for (t, _, _), call in zip(lowered, calls)]
    rounded = [source for source in sources.values() if source is not None]
    keys = [rht_key(plan, call[4]) for plan, call in zip(plans, calls)]
    partials = [_empty((AMAX_PROGRAMS,), torch.int32, device) if plan.amax_constexprs is not None else None
                for plan in plans]  # every pre-pass program writes its slot: no zero fill
    for kernel, grid, warps, prepass_tensors, prepass_scalars in prepass_launches(one_read_shapes(launch), plans,
                                                                                inputs, partials, keys):
        kernel_launch(kernel, grid, warps, prepass_tensors,
                      {**prepass_scalars, **rounding_constexprs(kernel, prepass_tensors, rounded)})
    tensors, scalars = {}, dict(launch.scalars)
    for p, out, call, plan, (_, s, shift), t, key, gamax in zip(launch.prefixes, outputs, calls, plans, lowered,
                                                                 inputs, keys, partials):
        tensors.update(job_pointers(launch, p, plan, t, out, gamax, s, None if shift is None else _contiguous(shift)))
        scalars.update({f"{p}_offset": int(call[6]), f"{p}_rht_key": key})
    kernel_launch(launch.kernel, launch.grid, launch.num_warps, {**tensors, **(extra or {})},
                  {**scalars, **launch.constexprs, **rounding_constexprs(launch.kernel, tensors, rounded)})
    return tuple(_result(out, call[7], device) for out, call in zip(outputs, calls))


def lower_quantize(x, axis, fmt, rht, rht_seed, seed, offset, shift=None):
    launched, launch_shift = _shifted_input(x, fmt, shift) if _on_cuda(x) else (x, shift)
    out = (_quantize_pair(launched, seed, launch_shift)
           or _quantize_launch(launched, axis, fmt, rht, rht_seed, seed, offset, None, launch_shift))
    if out is None:
        return fallback_handler(torch.ops.ufp4.quantize.default, add_to_fallback_set=False)(
            x, axis, fmt, rht, rht_seed, seed, offset, shift)
    return out


def lower_quantize_dequantize(x, axis, fmt, rht, rht_seed, seed, offset, dtype, shift=None):
    launched, launch_shift = _shifted_input(x, fmt, shift) if _on_cuda(x) else (x, shift)
    out = (_quantize_pair(launched, seed, launch_shift)
           or _quantize_launch(launched, axis, fmt, rht, rht_seed, seed, offset, dtype, launch_shift))
    if out is None:
        return fallback_handler(torch.ops.ufp4.quantize_dequantize.default, add_to_fallback_set=False)(
            x, axis, fmt, rht, rht_seed, seed, offset, dtype, shift)
    return out


def _view3(shape: tuple, axis: int) -> tuple[tuple, tuple, bool]:
    """A contiguous tensor of ``shape`` as the dequantize kernel's 3-D view (shape, strides, row-wise)."""
    if axis == len(shape) - 1:
        rows = 1
        for d in shape[:-1]:
            rows *= d
        return (1, rows, shape[-1]), (rows * shape[-1], shape[-1], 1), True
    pages, inner = 1, 1
    for d in shape[:axis]:
        pages *= d
    for d in shape[axis + 1:]:
        inner *= d
    return (pages, shape[axis], inner), (shape[axis] * inner, inner, 1), False


def _dequantize_plan(codes, scales, tensor_scale, axis, fmt, dtype, elements: int | None = None):
    """(launch plan, tensors, output buffer) of one dequantize launch (``elements`` values a program; the
    single launch's ``PLAN_ELEMENTS`` unless given), or None when it cannot be planned here."""
    from ufp4_compile.kernels.dequantize import PLAN_ELEMENTS, launch_plan

    if elements is None:
        elements = PLAN_ELEMENTS

    sizes = _static_sizes(codes, scales)
    if sizes is None or not _on_cuda(codes) or 0 in sizes[0]:
        return None
    shape, scale_shape = sizes
    axis %= len(shape)
    codes, scales = _contiguous(codes), _contiguous(scales)
    shape3, stride3, rowwise = _view3(shape, axis)
    _, scale_stride3, _ = _view3(scale_shape, axis)
    unit = _is_unit_tensor_scale(tensor_scale)  # the graph's constant 1: no pointer, no multiply
    plan = launch_plan(shape3, stride3, scale_stride3, rowwise, as_format(fmt), not unit, elements)
    out_shape = list(shape)
    out_shape[axis] *= 2
    out = _empty(tuple(out_shape), dtype, codes.get_device())
    return plan, dict(codes_ptr=codes, scales_ptr=scales, ts_ptr=None if unit else tensor_scale, out_ptr=out), out


def _dequantize_pair(codes, scales, tensor_scale, axis, fmt, dtype):
    """``lower_both`` of this dequantize and the next one (its inputs as already lowered)."""
    def lower_both(node, siblings):
        from torch._inductor.virtualized import V

        from ufp4_compile.kernels.dequantize import PLAN_WARPS, _dequantize_pair_kernel, pair_launch

        theirs = _dequantize_call(siblings[0])
        try:
            lowered = [V.graph.env[a] for a in theirs[:3]]
        except KeyError:
            return None
        planned = [_dequantize_plan(codes, scales, tensor_scale, axis, fmt, dtype),
                   _dequantize_plan(*lowered, *theirs[3:])]
        if any(p is None for p in planned):
            return None
        grid, scalars, constexprs = pair_launch(planned[0][0], planned[1][0])
        tensors = {f"{j}_{k}": v for j, p in zip("ab", planned) for k, v in p[1].items()}
        kernel_launch(_dequantize_pair_kernel, grid, PLAN_WARPS, tensors, {**scalars, **constexprs})
        return planned[0][2], planned[1][2]

    def find(node, order, taken):
        sibling = _dequantize_sibling(node, order, taken)
        return [] if sibling is None else [sibling]

    return _lower_paired(find, lower_both) if _on_cuda(codes) else None


def lower_dequantize(codes, scales, tensor_scale, axis, fmt, dtype):
    from ufp4_compile.kernels.dequantize import PLAN_ARGS, PLAN_WARPS, _dequantize_kernel

    paired = _dequantize_pair(codes, scales, tensor_scale, axis, fmt, dtype)
    if paired is not None:
        return paired
    planned = _dequantize_plan(codes, scales, tensor_scale, axis, fmt, dtype)
    if planned is None:
        return fallback_handler(torch.ops.ufp4.dequantize.default, add_to_fallback_set=False)(
            codes, scales, tensor_scale, axis, fmt, dtype)
    (grid, args, constexprs), tensors, out = planned
    kernel_launch(_dequantize_kernel, grid, PLAN_WARPS, tensors, {**dict(zip(PLAN_ARGS, args)), **constexprs})
    return out


LOWERINGS = {
    "quantize": lower_quantize,
    "quantize_dequantize": lower_quantize_dequantize,
    "dequantize": lower_dequantize,
}
