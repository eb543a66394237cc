"""The pair kernels' launchers (``kernels.quantize_pair``): eager launches on real tensors and compile-only variants.

- :func:`quantize_pair`, :func:`quantize_two_duals`, :func:`quantize_dual_shared` and
  :func:`quantize_dual_dequantize` run the one-launch forms on tensors, each result bit for bit its single call's
  (``kernels.quantize.quantize``, ``quantize_dequantize``, ``kernels.dequantize.dequantize``), falling back to
  those calls where a launch refuses: what the kernel tests compare and the benchmarks time. Inductor's
  generated code launches the same kernels itself (``lowering.kernel_calls``), with the plans and pointers of
  ``kernels.quantize_pair``.
- :func:`compile_variants`: the presets' pair and dual launches for ``kernels.targets`` (compiled for sm_90,
  sm_100 and gfx950 without a GPU).
"""

from __future__ import annotations

import math

import torch

from ufp4_compile.kernels.common import format_constants
from ufp4_compile.kernels.prepass import prepass_launches
from ufp4_compile.kernels.quantize import (_SCALE_POINTERS, _VALUE_DTYPES, _VARIANT_SIZE, AMAX_PROGRAMS, _launch,
                                           _seed_tensor, eager_outputs, kernel_takes_shift, launch_plan, plan_for,
                                           quantize, quantize_dequantize, rht_key, rounding_constexprs,
                                           unused_pointers)
from ufp4_compile.kernels.quantize_pair import (PairLaunch, _quantize_dual_dequantize_kernel, _quantize_dual_kernel,
                                                _quantize_dual_single_kernel, _quantize_pair_kernel,
                                                _quantize_two_duals_kernel, dual_dequantize_elements,
                                                dual_dequantize_launch, dual_dequantize_refusal, dual_refusal,
                                                dual_single_launch, dual_single_refusal, dual_single_tile,
                                                job_pointers, one_read_shapes, pair_launch, pair_refusal,
                                                same_values_refusal, two_duals_launch, two_duals_refusal)
from ufp4_compile.numerics.formats import OperandFormat
from ufp4_compile.numerics.quantize import as_format, check_quantize_inputs, check_shift

# ---- eager launches -------------------------------------------------------------------------------------

def shared_values_launch(x, fmt: OperandFormat, codes_axis: int, rht_seed, seed, offset, values_dtype) -> tuple:
    """The one launch of two quantizations :func:`same_values_refusal` accepts: the codes job's launch, writing
    the values job's values too. ``(codes, scales, tensor scale)`` and ``(values, tensor scale)``, one tensor
    scale for both (the same global amax)."""
    plan = plan_for(x, codes_axis, fmt, 0, codes=True, values=True)
    codes = torch.empty(plan.codes_shape, dtype=torch.uint8, device=x.device)
    scales = torch.empty(plan.scales_shape, dtype=plan.scale_dtype, device=x.device)
    values = torch.empty(x.shape, dtype=values_dtype, device=x.device)
    ts = _launch(x, plan, rht_seed, seed, offset, codes, scales, values)
    return (codes, scales.view(plan.result_scale_dtype), ts), (values, ts)


def quantize_pair(x: torch.Tensor, fmt: OperandFormat | str, rht: int | tuple, rht_seed: int, seed, jobs, *,
                  other: tuple | None = None, dual: bool = True, config: dict | None = None,
                  shifts: tuple | None = None) -> list[tuple]:
    """Two quantizations (one format) in one launch where :func:`pair_refusal` allows, else two: ``jobs`` is
    two ``(axis, offset, dtype)``, ``dtype`` None for codes (``quantize``'s result) or the values' dtype
    (``quantize_dequantize``'s); ``rht`` the RHT size of both, or of each as a pair. Both quantize ``x`` with
    ``rht_seed`` and ``seed``, or the second quantizes ``other = (tensor, rht_seed, seed)``. Each result is bit
    for bit the single call's. ``dual``: ``x``'s row-wise and column-wise quantizations read it once where
    :func:`dual_refusal` allows. ``config`` (benchmarks): both jobs' tile, as ``quantize``'s, and the dual
    launch's ``B``, ``num_warps`` and ``cols`` (:func:`pair_launch`). ``shifts``: each job's ``shift`` (None, or
    ``quantize``'s): shifted jobs share the pair kernel only (one-level scales), else run as single calls."""
    fmt = as_format(fmt)
    if len(jobs) != 2:
        raise ValueError(f"jobs={jobs!r} is not valid: two (axis, offset, dtype) triples")
    rhts = tuple(rht) if isinstance(rht, (tuple, list)) else (rht, rht)
    if len(rhts) != 2:
        raise ValueError(f"rht={rht!r} is not valid: an RHT size, or a pair of them (one per job)")
    if other is not None and (not isinstance(other, tuple) or len(other) != 3):
        raise ValueError(f"other={other!r} is not valid: a (tensor, rht_seed, seed) triple, or None")
    inputs = [(x, rht_seed, seed), other if other is not None else (x, rht_seed, seed)]
    axes = [check_quantize_inputs(t, axis, fmt, r, s) for (t, _, s), (axis, _, _), r in zip(inputs, jobs, rhts)]
    for _, _, dtype in jobs:
        if dtype is not None and dtype not in _VALUE_DTYPES:
            raise ValueError(f"dtype={dtype} is not valid; valid values: None (codes), "
                             f"{', '.join(map(str, _VALUE_DTYPES))}")
    inputs = [(t.contiguous(), r, s) for t, r, s in inputs]
    shifts = _checked_shifts(shifts, 2, [t for t, _, _ in inputs], axes)
    shifted = any(shift is not None for shift in shifts)
    if not _kernel_shifts(shifts, fmt):
        return [quantize(t, axis, fmt, size, r, s, offset, shift) if dtype is None else
                quantize_dequantize(t, axis, fmt, size, r, s, offset, dtype, shift)
                for (t, r, s), axis, (_, offset, dtype), size, shift in zip(inputs, axes, jobs, rhts, shifts)]
    same_jobs = [(axis, size, dtype) for axis, size, (_, _, dtype) in zip(axes, rhts, jobs)]
    if not shifted and other is None and x.numel() and same_values_refusal(tuple(x.shape), fmt, same_jobs) is None:
        codes_job = 0 if jobs[0][2] is None else 1
        shared = shared_values_launch(inputs[0][0], fmt, axes[codes_job], rht_seed, seed, jobs[codes_job][1],
                                      jobs[1 - codes_job][2])
        return list(shared) if codes_job == 0 else list(shared[::-1])
    plans = [plan_for(t, axis, fmt, size, codes=dtype is None, values=dtype is not None, config=config,
                      shift=shift is not None)
             for (t, _, _), axis, (_, _, dtype), size, shift in zip(inputs, axes, jobs, rhts, shifts)]
    shape = tuple(x.shape)
    empty = any(t.numel() == 0 for t, _, _ in inputs)
    one_read = not empty and dual and other is None and dual_refusal(shape, *plans) is None
    if empty or (not one_read and pair_refusal(*plans) is not None):
        return [quantize(t, axis, fmt, size, r, s, offset, shift) if dtype is None else
                quantize_dequantize(t, axis, fmt, size, r, s, offset, dtype, shift)
                for (t, r, s), axis, (_, offset, dtype), size, shift in zip(inputs, axes, jobs, rhts, shifts)]
    launch = pair_launch(*plans, dual_shape=shape if one_read else None, tile=config)
    return _run(launch, plans, inputs, jobs, shifts=shifts)


def _run(launch: PairLaunch, plans, inputs, jobs, extra: dict | None = None, shifts: tuple | None = None,
         rounded: tuple = ()) -> list[tuple]:
    """Allocate the jobs' outputs, run their global-amax pre-passes (two-level scales, two a launch) and
    ``launch`` (with ``extra`` arguments: other jobs' tensors); each job's result (``quantize``'s or
    ``quantize_dequantize``'s), in the order of ``plans``. ``rounded``: FP32 inputs that the launches round to
    bf16 as they load them (``kernels.quantize.rounding_constexprs``; the plans, bf16 ones)."""
    shifts = shifts or (None,) * len(plans)  # each job's shift, contiguous (_checked_shifts)
    partials = [torch.empty(AMAX_PROGRAMS, dtype=torch.int32, device=t.device)  # every program writes its slot
                if plan.amax_constexprs is not None else None for plan, (t, _, _) in zip(plans, inputs)]
    keys = [rht_key(plan, r) for plan, (_, r, _) in zip(plans, inputs)]
    for kernel, grid, num_warps, tensors, scalars in prepass_launches(one_read_shapes(launch), plans,
                                                                      [t for t, _, _ in inputs], partials, keys):
        kernel[grid](**tensors, **scalars, **rounding_constexprs(kernel, tensors, rounded), num_warps=num_warps)
    outputs, kwargs = [], {}
    for p, plan, (t, _, s), (_, offset, dtype), gamax, key, shift in zip(launch.prefixes, plans, inputs, jobs,
                                                                          partials, keys, shifts):
        written, result = eager_outputs(plan, t.shape, dtype, t.device)
        outputs.append(result)
        seed_t = _seed_tensor(s, t.device) if plan.constexprs["STOCHASTIC"] else None  # no tensor for nothing
        kwargs.update(job_pointers(launch, p, plan, t, written, gamax, seed_t, shift),
                      **{f"{p}_offset": int(offset), f"{p}_rht_key": key})
    launch.kernel[launch.grid](**{**kwargs, **(extra or {})}, **launch.scalars, **launch.constexprs,
                               **rounding_constexprs(launch.kernel, kwargs, rounded),
                               num_warps=launch.num_warps)  # extra may fill a pointer the job left None
    return outputs


def _checked_shifts(shifts, n: int, tensors, axes) -> tuple:
    """``shifts`` (None, or one ``shift`` or None per job) checked against each job's input and axis."""
    shifts = tuple(shifts) if shifts is not None else (None,) * n
    if len(shifts) != n:
        raise ValueError(f"shifts has {len(shifts)} entries; valid: None, or one shift (or None) per job ({n})")
    for t, axis, shift in zip(tensors, axes, shifts):
        check_shift(t, axis, shift)
    return tuple(None if shift is None else shift.contiguous() for shift in shifts)


def _kernel_shifts(shifts, fmt) -> bool:
    """Whether the one-launch forms can take ``shifts``: none, or a format whose kernels subtract them (one-level
    scales; for the others ``quantize_pair`` quantizes the differences in single calls)."""
    return all(shift is None for shift in shifts) or kernel_takes_shift(fmt)


def quantize_two_duals(fmt: OperandFormat | str, first: tuple, second: tuple, *,
                       config: dict | None = None, shifts: tuple | None = None) -> list[tuple]:
    """Two 2-D tensors' row-wise and column-wise quantizations (X's and W's in the forward; one format) in one
    launch of :func:`_quantize_two_duals_kernel` where :func:`two_duals_refusal` allows, else each tensor's two
    by :func:`quantize_pair`. ``first`` and ``second``: ``(tensor, rht_seed, seed, rhts, jobs)``, ``rhts`` the
    two jobs' RHT sizes and ``jobs`` two ``(axis, offset, dtype)`` as :func:`quantize_pair` takes them.
    ``shifts``: the four jobs' (None, or ``quantize``'s ``shift``; the dual kernel subtracts a row-wise job's).
    The four results, the first tensor's two first; each bit for bit its single call's."""
    fmt = as_format(fmt)
    groups = []
    for t, r, s, rhts, jobs in (first, second):
        if len(jobs) != 2 or len(rhts) != 2:
            raise ValueError(f"jobs={jobs!r}, rhts={rhts!r} are not valid: two (axis, offset, dtype) triples and "
                             "two RHT sizes per tensor")
        axes = [check_quantize_inputs(t, axis, fmt, rht, s) for (axis, _, _), rht in zip(jobs, rhts)]
        groups.append((t.contiguous(), r, s, rhts, jobs, axes))
    shifts = _checked_shifts(shifts, 4, [g[0] for g in groups for _ in range(2)], [a for g in groups for a in g[5]])
    duals, plans = [], []
    for i, (t, r, s, rhts, jobs, axes) in enumerate(groups if _kernel_shifts(shifts, fmt) else ()):
        own = [plan_for(t, axis, fmt, rht, codes=dtype is None, values=dtype is not None, config=config,
                        shift=shift is not None)
               for axis, (_, _, dtype), rht, shift in zip(axes, jobs, rhts, shifts[2 * i:2 * i + 2])]
        ok = t.numel() > 0 and dual_refusal(tuple(t.shape), *own) is None
        duals.append(pair_launch(*own, dual_shape=tuple(t.shape), tile=config) if ok else None)
        plans += own
    if len(duals) != 2 or any(d is None for d in duals) or two_duals_refusal(*duals) is not None:
        return [out for i, (t, r, s, rhts, jobs, _) in enumerate(groups)
                for out in quantize_pair(t, fmt, rhts, r, s, jobs, config=config, shifts=shifts[2 * i:2 * i + 2])]
    launch = two_duals_launch(*duals)
    return _run(launch, plans, [(g[0], g[1], g[2]) for g in groups for _ in range(2)],
                [j for g in groups for j in g[4]], shifts=shifts)


def quantize_dual_shared(fmt: OperandFormat | str, first: tuple, second: tuple, *,
                         config: dict | None = None) -> list[tuple]:
    """A 2-D tensor's row-wise and column-wise quantizations and a second tensor's two that one launch writes
    (:func:`same_values_refusal`: NVFP4's W in 16 x 16 blocks, its codes along one axis and its values along the
    other) in one launch of :func:`_quantize_dual_single_kernel` where :func:`dual_refusal`,
    :func:`same_values_refusal` and :func:`dual_single_refusal` allow, else by :func:`quantize_pair` for each
    tensor. ``first``: ``(tensor, rht_seed, seed, rhts, jobs)`` as :func:`quantize_two_duals` takes it, in
    ``fmt``; ``second``: ``(tensor, format, rht_seed, jobs)``, two ``(axis, offset, dtype)`` jobs without RHT.
    The four results, the first tensor's two first; each bit for bit its single call's."""
    fmt = as_format(fmt)
    x, rs, seed, rhts, jobs = first
    w, w_fmt, w_rs, w_jobs = second
    w_fmt = as_format(w_fmt)
    if len(jobs) != 2 or len(rhts) != 2 or len(w_jobs) != 2:
        raise ValueError(f"jobs={jobs!r}, rhts={rhts!r}, second jobs={w_jobs!r} are not valid: two (axis, offset, "
                         "dtype) triples per tensor and two RHT sizes for the first")
    axes = [check_quantize_inputs(x, axis, fmt, rht, seed) for (axis, _, _), rht in zip(jobs, rhts)]
    w_axes = [check_quantize_inputs(w, axis, w_fmt, 0, None) for axis, _, _ in w_jobs]
    x, w = x.contiguous(), w.contiguous()
    plans = [plan_for(x, axis, fmt, rht, codes=dtype is None, values=dtype is not None, config=config)
             for axis, (_, _, dtype), rht in zip(axes, jobs, rhts)]
    dual = (pair_launch(*plans, dual_shape=tuple(x.shape), tile=config)
            if x.numel() and dual_refusal(tuple(x.shape), *plans) is None else None)
    codes_job = 0 if w_jobs[0][2] is None else 1
    same = [(axis, 0, dtype) for axis, (_, _, dtype) in zip(w_axes, w_jobs)]
    single = (plan_for(w, w_axes[codes_job], w_fmt, 0, codes=True, values=True, config=dual_single_tile(dual))
              if dual is not None and w.numel() and same_values_refusal(tuple(w.shape), w_fmt, same) is None
              else None)
    if dual is None or single is None or dual_single_refusal(dual, single) is not None:
        return [*quantize_pair(x, fmt, rhts, rs, seed, jobs, config=config),
                *quantize_pair(w, w_fmt, 0, w_rs, None, w_jobs)]
    values = torch.empty(w.shape, dtype=w_jobs[1 - codes_job][2], device=w.device)
    results = _run(dual_single_launch(dual, single), [*plans, single], [(x, rs, seed)] * 2 + [(w, w_rs, None)],
                   [*jobs, (w_axes[codes_job], w_jobs[codes_job][1], None)], extra={"c_values_ptr": values})
    codes, shared = results[2], (values, results[2][2])  # one tensor scale for both
    return [*results[:2], *((codes, shared) if codes_job == 0 else (shared, codes))]


def quantize_dual_dequantize(x: torch.Tensor, fmt: OperandFormat | str, rhts: tuple, rht_seed: int, seed, jobs,
                             dequantizations, *, config: dict | None = None, shifts: tuple | None = None) -> list:
    """A 2-D tensor's row-wise and column-wise quantizations and two dequantizations in one launch of
    :func:`_quantize_dual_dequantize_kernel` (dY's dual and the saved codes of W and X in a linear layer's
    backward) where :func:`dual_refusal` and :func:`dual_dequantize_refusal` allow, else by
    :func:`quantize_pair` and ``kernels.dequantize.dequantize_pair``. ``rhts`` and ``jobs``: the two
    quantizations' RHT sizes and ``(axis, offset, dtype)`` as :func:`quantize_pair` takes them;
    ``dequantizations``: two ``(codes, scales, tensor_scale, axis, fmt, dtype)``; ``shifts``: the two
    quantizations' (as :func:`quantize_two_duals` takes them). The two quantizations' results, then the two
    dequantized tensors; each bit for bit its single call's."""
    from ufp4_compile.kernels import dequantize as dq

    fmt = as_format(fmt)
    if len(jobs) != 2 or len(rhts) != 2 or len(dequantizations) != 2:
        raise ValueError(f"jobs={jobs!r}, rhts={rhts!r} and {len(dequantizations)} dequantizations are not valid: "
                         "two (axis, offset, dtype) triples, two RHT sizes, two dequantize calls")
    axes = [check_quantize_inputs(x, axis, fmt, rht, seed) for (axis, _, _), rht in zip(jobs, rhts)]
    checked = [dq._checked(codes, scales, axis, f) for codes, scales, _, axis, f, _ in dequantizations]
    x = x.contiguous()
    shifts = _checked_shifts(shifts, 2, (x, x), axes)
    if not _kernel_shifts(shifts, fmt):
        return [*quantize_pair(x, fmt, rhts, rht_seed, seed, jobs, config=config, shifts=shifts),
                *dq.dequantize_pair(dequantizations)]
    plans = [plan_for(x, axis, fmt, rht, codes=dtype is None, values=dtype is not None, config=config,
                      shift=shift is not None)
             for axis, (_, _, dtype), rht, shift in zip(axes, jobs, rhts, shifts)]
    empty = x.numel() == 0 or any(math.prod(shape) == 0 for _, _, shape in checked)
    dual = (pair_launch(*plans, dual_shape=tuple(x.shape), tile=config)
            if not empty and dual_refusal(tuple(x.shape), *plans) is None else None)
    prepared = ([dq.prepare(job, check, dual_dequantize_elements(dual)) for job, check in zip(dequantizations, checked)]
                if dual is not None else [])
    if dual is None or dual_dequantize_refusal(dual, [plan for plan, _, _ in prepared]) is not None:
        return [*quantize_pair(x, fmt, rhts, rht_seed, seed, jobs, config=config, shifts=shifts),
                *dq.dequantize_pair(dequantizations)]
    launch = dual_dequantize_launch(dual, [plan for plan, _, _ in prepared])
    extra = {f"{p}_{k}": v for p, (_, tensors, _) in zip("cd", prepared) for k, v in tensors.items()}
    return [*_run(launch, plans, [(x, rht_seed, seed)] * 2, jobs, extra, shifts=shifts),
            *(out for _, _, out in prepared)]


# ---- compile-only variants (ufp4_compile.kernels.targets protocol) --------------------------------------

def compile_variants():
    """The pair and dual launches of the presets' quantizations (bf16 input, 4096 x 4096): per format, the row-wise
    values and column-wise codes of one tensor, two tensors' row-wise values, their column-wise codes, for every
    pair of the RHT sizes the format is used with; and the dual launch of one tensor's row-wise values with its
    column-wise codes or values."""
    from ufp4_compile.kernels.dequantize import variant_tile
    from ufp4_compile.kernels.targets import KernelVariant, preset_quantize_calls

    variants = []
    by_format: dict = {}
    calls = preset_quantize_calls()
    for (fmt, rht, rowwise), presets in calls.items():
        by_format.setdefault(fmt, {}).setdefault(rht, set()).update(presets.split(", "))
    # each job has its own RHT: every pair of the RHT sizes a format is used with (e2m1-ref rotates Wgrad's
    # operands only, so its X and dY go through 0 and 16)
    pairs = {(fmt, (ra, rb)): sizes[ra] | sizes[rb] for fmt, sizes in by_format.items() for ra in sizes for rb in sizes}
    # the row-wise values and column-wise codes of one tensor; two tensors' row-wise values (X and W for
    # Fprop) and their column-wise codes (for Wgrad and Dgrad)
    jobs = dict(row=(1, "row-wise values"), col=(0, "column-wise codes"))
    shape = (_VARIANT_SIZE, _VARIANT_SIZE)
    for (fmt, (ra, rb)), names in pairs.items():
        c = format_constants(fmt)
        rht = f"rht{ra}" if ra == rb else f"rht{ra}+{rb}"
        for kinds in (("row", "col"), ("row", "row"), ("col", "col")):
            plans = [launch_plan(shape, 2, jobs[k][0], fmt, r, k == "col", k == "row", False)
                     for k, r in zip(kinds, (ra, rb))]
            if pair_refusal(*plans) is not None:
                continue
            launch = pair_launch(*plans)
            types, unit = {}, {}
            for p, k, plan in zip("ab", kinds, plans):  # the pointers a job does not use are None (constants)
                unit.update(unused_pointers(c, values=k == "row", prefix=f"{p}_"))
                types.update({f"{p}_x_ptr": "*bf16", f"{p}_seed_ptr": "*i64", f"{p}_gamax_ptr": "*i32",
                              f"{p}_rht_key": "i32", f"{p}_codes_ptr": "*u8", f"{p}_scales_ptr": _SCALE_POINTERS[c.scale],
                              f"{p}_values_ptr": "*bf16", f"{p}_ts_ptr": "*fp32", f"{p}_O": "i32",
                              f"{p}_L": "i32", f"{p}_s_page": "i32", f"{p}_offset": "i64", f"{p}_g0": "i32",
                              f"{p}_g1": "i32"})
                unit.update({f"{p}_s_o": plan.args["s_o"], f"{p}_s_l": 1} if k == "row" else
                            {f"{p}_s_o": 1, f"{p}_s_l": _VARIANT_SIZE})
                unit.update({f"{p}_shift_ptr": None, f"{p}_shift_period": 1})  # no shift (the presets')
            types = {k: v for k, v in types.items() if k not in unit}
            types["a_g2"] = "i32"
            written = [name for p, k in zip("ab", kinds)
                       for name in ((f"{p}_values_ptr",) if k == "row" else (f"{p}_codes_ptr", f"{p}_scales_ptr"))]
            variants.append(KernelVariant.build(
                f"quantize_pair[{fmt.spec} {rht} {jobs[kinds[0]][1]} + {jobs[kinds[1]][1]}]",
                ", ".join(sorted(names)), _quantize_pair_kernel, types, unit | launch.constexprs,
                aligned=("a_x_ptr", "b_x_ptr", *written, "a_O", "a_L", "b_O", "b_L"),
                options=dict(num_warps=launch.num_warps)))
        # one tensor's two quantizations from one read: row-wise values with column-wise codes (X in the
        # forward) or column-wise values (dY in the backward, for a bf16 Wgrad)
        for col_values in (False, True):
            plans = [launch_plan(shape, 2, 1, fmt, ra, False, True, False),
                     launch_plan(shape, 2, 0, fmt, rb, not col_values, col_values, False)]
            if dual_refusal(shape, *plans) is not None:
                continue
            launch = pair_launch(*plans, dual_shape=shape)
            # the pointers a job does not use are None (constants), and so is b_x_ptr (the dual reads a_x_ptr)
            nones = {"b_x_ptr": None, "a_shift_ptr": None, **unused_pointers(c, values=True, prefix="a_"),
                     **unused_pointers(c, values=col_values, prefix="b_")}  # no shift (the presets')
            types = dict(a_x_ptr="*bf16", a_rht_key="i32", b_rht_key="i32", a_gamax_ptr="*i32", b_gamax_ptr="*i32",
                         a_values_ptr="*bf16", a_ts_ptr="*fp32", b_codes_ptr="*u8",
                         b_scales_ptr=_SCALE_POINTERS[c.scale], b_values_ptr="*bf16", b_ts_ptr="*fp32", M="i32",
                         N="i32", a_offset="i64", b_offset="i64", a_seed_ptr="*i64", b_seed_ptr="*i64")
            types = {k: v for k, v in types.items() if k not in nones}
            written = ["a_values_ptr"] + (["b_values_ptr"] if col_values else ["b_codes_ptr", "b_scales_ptr"])
            variants.append(KernelVariant.build(
                f"quantize_dual[{fmt.spec} {rht} row-wise values + column-wise "
                f"{'values' if col_values else 'codes'}]",
                ", ".join(sorted(names)), _quantize_dual_kernel, types, launch.constexprs | nones,
                aligned=("a_x_ptr", *written, "M", "N"), options=dict(num_warps=launch.num_warps)))
            if col_values and c.stochastic and rb == 16:  # dY's dual (stochastic, Wgrad's job rotated) with the
                # dequantizations of two saved column-wise codes of the format (a linear layer's backward), at
                # the dequantize tile of the dual launch's warps (kernels.dequantize.launch_plan)
                side = dict(GRID=c.grid, SCALE=c.scale, BLOCK=fmt.block, APPLY_TS=True, ROWWISE=False,
                            **variant_tile(fmt, False, dual_dequantize_elements(launch)))
                deq_types, deq_unit = {}, {}
                for p in "cd":
                    deq_types.update({f"{p}_codes_ptr": "*u8", f"{p}_scales_ptr": _SCALE_POINTERS[c.scale],
                                      f"{p}_ts_ptr": "*fp32", f"{p}_out_ptr": "*bf16", f"{p}_O": "i32",
                                      f"{p}_L2": "i32", f"{p}_s_page": "i32", f"{p}_s_l": "i32",
                                      f"{p}_ss_page": "i32", f"{p}_ss_l": "i32", f"{p}_g0": "i32", f"{p}_g1": "i32"})
                    deq_unit.update({f"{p}_s_o": 1, f"{p}_ss_o": 1, **{f"{p.upper()}_{k}": v for k, v in side.items()}})
                variants.append(KernelVariant.build(
                    f"quantize_dual_dequantize[{fmt.spec} {rht} row-wise + column-wise values, two column-wise "
                    "dequantizations]", ", ".join(sorted(names)), _quantize_dual_dequantize_kernel,
                    types | deq_types | dict(n_dual="i32", g_dual="i32", n_c="i32"),
                    launch.constexprs | deq_unit | {k: v for k, v in nones.items() if k != "b_x_ptr"},
                    aligned=("a_x_ptr", *written, "M", "N", "c_codes_ptr", "d_codes_ptr", "c_out_ptr", "d_out_ptr",
                             "c_O", "d_O"), options=dict(num_warps=launch.num_warps)))
            if not col_values:  # X's and W's duals in one launch (the forward), each its row-wise values and
                # column-wise codes
                two = two_duals_launch(launch, launch)
                second = lambda k: k.replace("b_", "d_", 1) if k.startswith("b_") else k.replace("a_", "c_", 1)
                types.update({second(k): v for k, v in types.items() if k[:2] in ("a_", "b_")})
                two_nones = {n: None for k in nones if k != "b_x_ptr" for n in (k, second(k))}
                types.update(P="i32", Q="i32", n_first="i32", g_first="i32", g_second="i32")
                variants.append(KernelVariant.build(
                    f"quantize_two_duals[{fmt.spec} {rht} row-wise values + column-wise codes, twice]",
                    ", ".join(sorted(names)), _quantize_two_duals_kernel, types, two.constexprs | two_nones,
                    aligned=("a_x_ptr", "c_x_ptr", *written, *(w.replace("a_", "c_").replace("b_", "d_")
                                                                for w in written), "M", "N", "P", "Q"),
                    options=dict(num_warps=two.num_warps)))
                # W's FP32 master copy rounded to bf16 as it is loaded (the lowering's folded weight casts)
                variants.append(KernelVariant.build(
                    f"quantize_two_duals[{fmt.spec} {rht} row-wise values + column-wise codes, twice, the second "
                    "from FP32 rounded to bf16]", ", ".join(sorted(names)), _quantize_two_duals_kernel,
                    types | {"c_x_ptr": "*fp32"}, two.constexprs | two_nones | {"C_ROUND": True},
                    aligned=("a_x_ptr", "c_x_ptr", *written, *(w.replace("a_", "c_").replace("b_", "d_")
                                                                for w in written), "M", "N", "P", "Q"),
                    options=dict(num_warps=two.num_warps)))
                square = fmt.square()
                blocks = by_format.get(square, {})
                used = 0 in blocks and (fmt, ra, True) in calls and (fmt, rb, False) in calls  # X's RHT sizes
                single = (launch_plan(shape, 2, 0, square, 0, True, True, False,
                                      tuple(sorted(dual_single_tile(launch).items()))) if used else None)
                if single is not None and dual_single_refusal(launch, single) is None:  # X's dual and W's one
                    # launch of its square blocks' column-wise codes and row-wise values (NVFP4's forward)
                    one = dual_single_launch(launch, single)
                    c_nones = {k: v for k, v in unused_pointers(c, values=True, prefix="c_").items()
                               if k not in ("c_codes_ptr", "c_scales_ptr")}
                    c_types = {f"c_{k}": v for k, v in dict(
                        x_ptr="*bf16", gamax_ptr="*i32", seed_ptr="*i64", rht_key="i32", codes_ptr="*u8",
                        scales_ptr=_SCALE_POINTERS[c.scale], values_ptr="*bf16", ts_ptr="*fp32", offset="i64",
                        O="i32", L="i32", s_page="i32", g0="i32", g1="i32").items() if f"c_{k}" not in c_nones}
                    own = {k: v for k, v in types.items() if k[:2] in ("a_", "b_") or k in ("M", "N")}
                    variants.append(KernelVariant.build(
                        f"quantize_dual_single[{fmt.spec} {rht} row-wise values + column-wise codes, "
                        f"{square.spec} column-wise codes and row-wise values]",
                        ", ".join(sorted(names & blocks[0])), _quantize_dual_single_kernel,
                        own | c_types | dict(n_first="i32", g_first="i32"),
                        one.constexprs | {k: v for k, v in nones.items() if k != "b_x_ptr"} | c_nones
                        | dict(c_s_o=1, c_s_l=_VARIANT_SIZE),
                        aligned=("a_x_ptr", "c_x_ptr", *written, "c_codes_ptr", "c_values_ptr", "M", "N", "c_O", "c_L"),
                        options=dict(num_warps=one.num_warps)))
    return variants
