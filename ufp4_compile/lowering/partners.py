"""Which quantizations and dequantizations of a graph share a kernel launch: a walk over the FX graph that
``kernel_calls`` lowers, with the settings of :func:`pair_launches` (docs/kernels.md, "Two launches in one").

The finder reads only FX nodes and their example values and asks ``kernels.quantize_pair`` and
``kernels.prepass`` which launches take a pair; ``kernel_calls`` emits the launch it chose.
"""

from __future__ import annotations

import contextlib

import torch

from ufp4_compile.numerics.quantize import as_format


def _asm() -> bool:
    """Whether the kernels may use inline PTX (``ASM``): on CUDA, not on ROCm."""
    return torch.version.hip is None


def _plan(shape: tuple, itemsize: int, axis: int, fmt, rht: int, values_dtype, shift: bool = False):
    """The quantize launch plan of a contiguous input of ``shape``: codes for ``values_dtype=None``, else
    values; ``shift``: of the input less a shift the kernel subtracts."""
    from ufp4_compile.kernels.quantize import launch_plan

    return launch_plan(shape, itemsize, axis % len(shape), as_format(fmt), rht, values_dtype is None,
                       values_dtype is not None, _asm(), None, shift)


def kernel_shift(call) -> bool:
    """Whether a quantize call (:func:`_quantize_call`) has a shift that its kernel subtracts itself."""
    from ufp4_compile.kernels.quantize import kernel_takes_shift

    return call[8] is not None and kernel_takes_shift(call[2])


def _pairs_shift(call) -> bool:
    """Whether a quantize call may share a launch as far as its shift goes: none, or one the kernel takes (a
    two-level format's shifted input is a difference the lowering computes first: that call launches alone)."""
    return call[8] is None or kernel_shift(call)


# A training step quantizes most tensors twice in one graph: X row-wise for Fprop and column-wise (codes for
# Wgrad) in the forward, W likewise, dY row-wise for Dgrad and column-wise for Wgrad in the backward; and the
# backward dequantizes the saved codes of X and W next to each other. With pairing on (the default), a
# quantization lowers to one launch with a partner and the partner returns its half: first its own tensor's
# quantization along the other axis, in kernels.quantize_pair._quantize_dual_kernel, which reads the tensor
# once for both (X's two, W's two, dY's two), where the dual kernel takes them; else the next quantization
# within _PAIR_REACH nodes of the same format (each with its own RHT) along the same kind of axis whose inputs
# already exist, in kernels.quantize_pair._quantize_pair_kernel; else, where other-axis pairs are on, the next
# one along the other axis. A dequantize lowers to one launch of kernels.dequantize._dequantize_pair_kernel
# with the next dequantize within reach whose inputs already exist. One launch fewer per pair, the same bits
# (each element goes through the code of its own launch). :func:`pair_launches` (False) turns pairing off
# while compiling.

_pairing = True
# A quantization with no partner of its own tensor and none along its kind of axis pairs along the other axis
# (the pair kernel): True, False, or None (the default) for "without CUDA graphs only": a row-wise tile beside a
# column-wise one runs at the larger one's registers, which a launch fewer repays only where the step waits on
# the host (docs/kernels.md, "Two launches in one").
_other_axis = None
# One 2-D tensor's row-wise and column-wise quantizations in the dual kernel:
#   "first" (the default): before any other partner, with or without CUDA graphs;
#   "last":  only for a quantization with no same-axis partner, where other-axis pairs are on (dY's two
#            without CUDA graphs: the policy before the dual kernel had its own tile);
#   False:   never (one tensor's two axes, where they pair, take the pair kernel's two reads).
# On the H200 (docs/kernels.md) "first" took the step's quantize kernel time from 5.98 to 5.58 ms without CUDA
# graphs and from 6.25 to 5.71 ms with them (same-axis pairs and dY's two single launches).
_dual = "first"
_DUAL_KEYS = {"first": "F", "last": "L", False: "0"}
# With the dual kernel first, two tensors' duals in one launch (kernels.quantize_pair._quantize_two_duals_kernel)
# where a second tensor's two quantizations follow within reach with their inputs already there (X's and W's in
# the forward): a launch fewer per linear layer's forward. NVFP4's W, whose 16 x 16 blocks give one launch for
# both its quantizations, joins X's dual the same way (_quantize_dual_single_kernel, and one pre-pass launch for
# the three jobs).
_two_duals = True
# A dual launch with no second tensor's dual takes the next two dequantizations within reach whose inputs exist
# before it (kernels.quantize_pair._quantize_dual_dequantize_kernel): in a linear layer's backward, dY's two
# quantizations and the dequantizations of W's and X's saved codes, a launch fewer per layer.
_dual_dequantize = True
_PAIR_REACH = 64  # graph nodes: an op pairs with one this close, so the partner's result is not held long


def state_key() -> str:
    """The pairing setting, for the compile caches' keys (it changes the code a graph lowers to)."""
    return (f"pairs{int(_pairing)}{_other_axis}{_DUAL_KEYS[_dual]}{'' if _two_duals else 'S'}"
            f"{'' if _dual_dequantize else 'D'}")


@contextlib.contextmanager
def pair_launches(enabled: bool = True, *, other_axis: bool | None = None, dual: bool | str = "first",
                  two_duals: bool = True, dual_dequantize: bool = True):
    """Lower two quantizations, and two neighbouring dequantizations, to one kernel launch each while compiling
    (the default; ``enabled=False`` turns it off). ``other_axis``: whether a quantization with no partner
    pairs along the other axis; None (the default): only without CUDA graphs (Inductor's
    ``triton.cudagraphs``). ``dual``: when one 2-D tensor's row-wise and column-wise quantizations share the
    launch that reads the tensor once (the dual kernel): ``"first"`` (the default) before any other partner,
    ``"last"`` only where a quantization found no same-axis partner and other-axis pairs are on, False never.
    ``two_duals``: with the dual kernel first, two tensors' duals in one launch where they can, or a dual and
    NVFP4's one launch of W's two (the default).
    ``dual_dequantize``: a dual launch with no second dual takes the next two dequantizations whose inputs
    exist (dY's and the saved codes' in a linear layer's backward; the default). Keep the setting for the
    first backward too: the backward compiles then."""
    flags = dict(enabled=enabled, two_duals=two_duals, dual_dequantize=dual_dequantize)
    if (not any(other_axis is v for v in (None, True, False)) or not (dual is False or dual in ("first", "last"))
            or not all(any(v is b for b in (True, False)) for v in flags.values())):
        raise ValueError(f"enabled={enabled!r}, other_axis={other_axis!r}, dual={dual!r}, two_duals={two_duals!r}, "
                         f"dual_dequantize={dual_dequantize!r} are not valid: enabled, two_duals and dual_dequantize "
                         "are True or False, other_axis True, False or None, dual 'first', 'last' or False")
    global _pairing, _other_axis, _dual, _two_duals, _dual_dequantize
    previous = (_pairing, _other_axis, _dual, _two_duals, _dual_dequantize)
    _pairing, _other_axis, _dual, _two_duals, _dual_dequantize = enabled, other_axis, dual, two_duals, dual_dequantize
    try:
        yield
    finally:
        _pairing, _other_axis, _dual, _two_duals, _dual_dequantize = previous


def _ufp4_call(node, *ops: str) -> tuple | None:
    """The arguments of an FX node calling one of the ufp4 ``ops`` positionally, else None."""
    name = getattr(getattr(getattr(node, "target", None), "_schema", None), "name", "")
    if node.op != "call_function" or node.kwargs or name not in tuple(f"ufp4::{op}" for op in ops):
        return None
    return tuple(node.args)


def _quantize_call(node) -> tuple | None:
    """(x, axis, fmt, rht, rht_seed, seed, offset, dtype or None, shift or None) of a quantize /
    quantize_dequantize node."""
    args = _ufp4_call(node, "quantize", "quantize_dequantize")
    if args is None:
        return None
    if node.target._schema.name == "ufp4::quantize":
        args = args[:7] + (None,) + args[7:]
    return args + (None,) * (9 - len(args))


def _dequantize_call(node) -> tuple | None:
    """(codes, scales, tensor_scale, axis, fmt, dtype) of a dequantize node."""
    return _ufp4_call(node, "dequantize")


def _pair_other_axis() -> bool:
    if _other_axis is not None:
        return _other_axis
    from torch._inductor import config

    return not config.triton.cudagraphs


def _rowwise(call) -> bool | None:
    """Whether a quantize call runs along its input's last axis (None where the rank is not known)."""
    val = getattr(call[0], "meta", {}).get("val")
    return None if val is None else call[1] % max(val.dim(), 1) == max(val.dim(), 1) - 1


def _can_pair(mine, other) -> bool:
    """Whether two quantize calls can share a launch, judged from their inputs' example values: static shapes,
    shifts the kernel takes, and launch plans (each at its input's dtype: a mean split's bf16 ``x`` pairs with
    its FP32 ``mu``) that :func:`kernels.quantize_pair.pair_refusal` accepts (the lowering checks again on the
    lowered buffers)."""
    from ufp4_compile.kernels.quantize_pair import pair_refusal

    vals = [getattr(call[0], "meta", {}).get("val") for call in (mine, other)]
    if any(v is None for v in vals) or not (_pairs_shift(mine) and _pairs_shift(other)):
        return False
    if not all(type(d) is int for v in vals for d in v.shape):  # a symbolic size: launched alone (int() on
        return False  # a SymInt would guard on its value and specialize the graph)
    shapes = [tuple(v.shape) for v in vals]
    if any(0 in shape or not shape for shape in shapes):
        return False
    return pair_refusal(*(_plan(shape, val.dtype.itemsize, call[1], call[2], call[3], call[7], kernel_shift(call))
                           for shape, val, call in zip(shapes, vals, (mine, other)))) is None


def _can_dual(mine, other) -> bool:
    """Whether two quantize calls that pair are one 2-D tensor's two axes that one launch takes from one read
    (:func:`kernels.quantize_pair.dual_refusal`), with dual launches on."""
    return _dual_launch(mine, other) is not None


def _dual_launch(mine, other):
    """The dual launch of two quantize calls (one 2-D tensor's two axes, judged from its example value), or
    None where dual launches are off or the dual kernel refuses them."""
    from ufp4_compile.kernels.quantize_pair import dual_refusal, pair_launch

    val = getattr(mine[0], "meta", {}).get("val")
    if (_dual is False or other[0] is not mine[0] or val is None or not all(type(d) is int for d in val.shape)
            or not (_pairs_shift(mine) and _pairs_shift(other))):  # a shift the kernel takes (dual_refusal:
        return None  # on the row-wise job only)
    shape = tuple(val.shape)
    if len(shape) != 2 or 0 in shape:
        return None
    plans = [_plan(shape, val.dtype.itemsize, call[1], call[2], call[3], call[7], kernel_shift(call))
             for call in (mine, other)]
    return pair_launch(*plans, dual_shape=shape) if dual_refusal(shape, *plans) is None else None


def _can_share_values(mine, other) -> bool:
    """Whether two quantize calls of one tensor (judged from its example value) quantize every element to the
    same value, so one launch writes one's codes and the other's values
    (:func:`kernels.quantize_pair.same_values_refusal`: NVFP4's weights)."""
    from ufp4_compile.kernels.quantize_pair import same_values_refusal

    val = getattr(mine[0], "meta", {}).get("val")
    if (other[0] is not mine[0] or other[2] != mine[2] or val is None or not all(type(d) is int for d in val.shape)
            or mine[8] is not None or other[8] is not None):
        return False
    jobs = [(c[1], c[3], c[7]) for c in (mine, other)]
    return same_values_refusal(tuple(val.shape), as_format(mine[2]), jobs) is None


def shared_values_plan(mine, other, tile: dict | None = None):
    """The launch plan of two quantize calls that :func:`_can_share_values` accepts: the codes job's launch,
    writing the values job's values too, at its own tile or ``tile`` (a launch config: beside a dual launch,
    ``kernels.quantize_pair.dual_single_tile``); None where the input's shape is not known."""
    from ufp4_compile.kernels.quantize import launch_plan

    val = getattr(mine[0], "meta", {}).get("val")
    if val is None:
        return None
    codes = mine if mine[7] is None else other
    shape = tuple(val.shape)
    return launch_plan(shape, val.dtype.itemsize, codes[1] % len(shape), as_format(codes[2]), 0, True, True, _asm(),
                       tuple(sorted(tile.items())) if tile else None)


def _sibling(node, order: dict, taken=()):
    """The quantization that shares ``node``'s launch, not one in ``taken``: with the dual kernel first (the
    default), the first later quantization of ``node``'s own input along the other axis that the dual kernel
    takes with it; else the next one within reach with its format (each job keeps its own RHT) along the same
    kind of axis (both row-wise or both column-wise: their tiles take alike registers, so the pair keeps a
    single launch's occupancy) whose inputs all exist before ``node``; else, where other-axis pairs are on
    (:func:`pair_launches`), the next one within reach along the other axis whose inputs exist (in an MoE's
    backward, the padded copy of an expert's dY), or the next quantization of ``node``'s own input further on."""
    mine = _quantize_call(node)
    if mine is None:
        return None
    here, rowwise = order[node], _rowwise(mine)
    if "x16/" in mine[2]:  # 16 x 16 blocks: the same values along either axis
        partner = _own_partner(node, mine, order, taken, _can_share_values)
        if partner is not None:
            return partner
    if _dual == "first":
        partner = _own_partner(node, mine, order, taken, _can_dual)
        if partner is not None:
            return partner
    other_axis = _pair_other_axis()
    fallback, later = None, node.next
    for _ in range(_PAIR_REACH if rowwise is not None else 0):
        if later.op == "root":
            break
        other = _quantize_call(later) if later not in taken else None
        if (other is not None and other[2] == mine[2]
                and (_rowwise(other) == rowwise or (other_axis and fallback is None))
                and all(order.get(a, here) < here for a in (other[0], other[5], other[8]) if hasattr(a, "op"))
                and _can_pair(mine, other)):
            if _rowwise(other) == rowwise:
                return later
            fallback = later
        later = later.next
    if fallback is not None or not other_axis:
        return fallback
    return _own_partner(node, mine, order, taken, _can_pair)


def _siblings(node, order: dict, taken=()) -> list:
    """The quantizations that share ``node``'s launch: its partner (:func:`_sibling`), and where that is the dual
    launch of ``node``'s tensor and two tensors' duals are on, a second tensor's two quantizations (the first
    later quantization within reach whose input and seed exist before ``node``, of the format with its own
    dual partner, or of the format in 16 x 16 blocks with the partner it shares a launch with) that one launch
    takes with them (``kernels.quantize_pair.two_duals_refusal``, ``dual_single_refusal``)."""
    partner = _sibling(node, order, taken)
    if partner is None:
        return []
    mine, theirs = _quantize_call(node), _quantize_call(partner)
    first = _dual_launch(mine, theirs) if (_two_duals or _dual_dequantize) and _dual == "first" else None
    if first is None:
        return [partner]
    from ufp4_compile.kernels.quantize_pair import dual_single_refusal, dual_single_tile, two_duals_refusal

    here, busy = order[node], {*taken, node, partner}
    exists = lambda call: all(order.get(a, here) < here for a in (call[0], call[5], call[8]) if hasattr(a, "op"))
    later = node.next
    for _ in range(_PAIR_REACH if _two_duals else 0):
        if later.op == "root":
            break
        other = _quantize_call(later) if later not in busy else None
        if other is not None and other[0] is not mine[0] and exists(other):
            if other[2] == mine[2]:
                second = _own_partner(later, other, order, busy, _can_dual)
                if second is not None and exists(_quantize_call(second)):
                    if two_duals_refusal(first, _dual_launch(other, _quantize_call(second))) is None:
                        return [partner, later, second]
            elif "x16/" in other[2]:  # NVFP4's W: its two quantizations in one launch, beside X's dual
                second = _own_partner(later, other, order, busy, _can_share_values)
                if second is not None and exists(_quantize_call(second)):
                    single = shared_values_plan(other, _quantize_call(second), dual_single_tile(first))
                    if single is not None and dual_single_refusal(first, single) is None:
                        return [partner, later, second]
        later = later.next
    dequantizations = _dequantize_siblings(node, order, busy, 2) if _dual_dequantize else []
    return [partner, *dequantizations] if len(dequantizations) == 2 else [partner]


def _own_partner(node, mine, order: dict, taken, accept):
    """The first later quantization of ``node``'s own input, of its format, not in ``taken``, whose seed exists
    before ``node`` and that ``accept(mine, other)`` takes (:func:`_can_dual`: the dual launch; :func:`_can_pair`:
    the pair launch), else None."""
    here, best = order[node], None
    for user in mine[0].users:
        other = _quantize_call(user) if user is not node and user not in taken else None
        if (other is not None and order.get(user, -1) > here and other[2] == mine[2]
                and (best is None or order[user] < order[best])
                and all(order.get(a, here) < here for a in (other[5], other[8]) if hasattr(a, "op"))
                and accept(mine, other)):
            best = user
    return best


def _dequantize_siblings(node, order: dict, taken=(), count: int = 1) -> list:
    """The next ``count`` dequantizations within reach whose inputs all exist before ``node`` (so they can run
    there), none in ``taken``; fewer where reach ends first."""
    here, found = order[node], []
    later = node.next
    for _ in range(_PAIR_REACH):
        if later.op == "root" or len(found) == count:
            break
        call = _dequantize_call(later) if later not in taken else None
        if call is not None and all(order.get(a, here) < here for a in call[:3] if hasattr(a, "op")):
            found.append(later)
        later = later.next
    return found


def _dequantize_sibling(node, order: dict, taken=()):
    """The next dequantize within reach whose inputs all exist before ``node`` (so it can run there), not one
    in ``taken``."""
    if _dequantize_call(node) is None:
        return None
    found = _dequantize_siblings(node, order, taken)
    return found[0] if found else None
