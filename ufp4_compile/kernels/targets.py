"""Compile kernels for GPUs we do not have (sm_100, gfx950) and read which matrix instructions they use.

Triton compiles for any target on any machine: ``triton.compile(ASTSource(fn, signature, constexprs),
target=GPUTarget("cuda", 100, 32))`` or ``GPUTarget("hip", "gfx950", 64)``; the PTX / AMDGCN text then shows
the MMA instructions (``tcgen05.mma ... kind::mxf4``, ``v_mfma_scale_f32_32x32x64_f8f6f4``, ``wgmma``).

**The protocol.** A kernel module takes part by defining a module-level ``compile_variants()`` that
returns a list of :class:`KernelVariant`: one per kernel and format (constexpr) combination it launches.
``KernelVariant.build(...)`` fills in the signature from the kernel's argument names. The modules listed
in :data:`KERNEL_MODULES` are imported defensively: a missing module or a module without
``compile_variants()`` is reported as "not available", not as an error.

Which instances to compile follows the presets: :func:`preset_gemms` lists the distinct GEMM format pairs
(plus :data:`EXTRA_FORMAT_PAIRS`), :func:`preset_quantize_calls` the distinct quantize launches.

The kernels must be real ``@triton.jit`` functions: with ``TRITON_INTERPRET=1`` set before Triton was
imported they are interpreter objects and cannot be compiled (run ``ufp4 kernels`` without it).
:func:`compile_all` compiles in parallel worker processes (spawned, so no Triton state is shared).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import importlib
import inspect
import multiprocessing
import os
import re
import tempfile
import time
from typing import Any, Callable, Iterable

from ufp4_compile.dispatch import GemmPath, Target, gemm_paths
from ufp4_compile.numerics.formats import OperandFormat
from ufp4_compile.recipes import PRESETS, Role

KERNEL_MODULES = ("ufp4_compile.kernels.quantize", "ufp4_compile.kernels.quantize_pair_launchers",
                  "ufp4_compile.kernels.prepass",
                  "ufp4_compile.kernels.dequantize", "ufp4_compile.kernels.gemm", "ufp4_compile.kernels.native_gemm",
                  "ufp4_compile.kernels.median")

# Matrix instructions, as they are spelled in PTX and AMDGCN.
_MATRIX_INSTRUCTION = re.compile(
    r"\b(tcgen05\.mma(?:\.[\w:]+)*|wgmma\.mma_async(?:\.[\w:]+)*|mma\.sync(?:\.[\w:]+)*"
    r"|v_mfma_scale_\w+|v_mfma_\w+|v_wmma_\w+|v_smfmac_\w+)")


@dataclasses.dataclass(frozen=True)
class KernelVariant:
    """One compilable instance of a Triton kernel.

    ``signature`` maps every argument to a Triton type (``"*u8"``, ``"*fp32"``, ``"i32"``, ``"fp32"``) or
    ``"constexpr"``; ``constexprs`` gives the constexpr values (an ``int`` argument that is 1 at run time,
    like a unit stride, may be given here too: Triton's launcher specializes it the same way).
    ``aligned`` names arguments known to be multiples of 16 (pointers: 16-byte aligned), as Triton's
    launcher specializes them. ``options`` are compile options (``num_warps``, ``num_stages``...).
    ``formats`` (a GEMM's operand formats) and ``path`` (the dispatch path the kernel implements) let the
    report say whether the lowering uses this kernel on a target; a quantize kernel leaves them None.
    """

    name: str
    recipe: str
    fn: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    aligned: tuple[str, ...] = ()
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    formats: tuple[OperandFormat, OperandFormat] | None = None
    path: GemmPath | None = None
    module: str = ""  # filled in by collect_variants

    @classmethod
    def build(cls, name: str, recipe: str, fn, types: dict[str, str], constexprs: dict[str, Any], **kwargs):
        """A variant whose signature is ``types`` plus ``"constexpr"`` for every key of ``constexprs`` (and for
        an argument with a default that neither names: its default, as an eager launch takes it)."""
        arg_names = list(fn.arg_names)
        python_fn = getattr(fn, "fn", None)  # a JITFunction's (or the interpreter's) function
        defaults = ({name: p.default for name, p in inspect.signature(python_fn).parameters.items()
                     if p.default is not inspect.Parameter.empty} if callable(python_fn) else {})
        signature, constexprs = {}, dict(constexprs)
        for arg in arg_names:
            if arg not in constexprs and arg not in types and arg in defaults:
                constexprs[arg] = defaults[arg]
            if arg in constexprs:
                signature[arg] = "constexpr"
            elif arg in types:
                signature[arg] = types[arg]
            else:
                raise ValueError(f"{name}: argument {arg!r} of {fn.__name__} has neither a type nor a constexpr value")
        unknown = (set(types) | set(constexprs)) - set(arg_names)
        if unknown:
            raise ValueError(f"{name}: {sorted(unknown)} are not arguments of {fn.__name__}")
        return cls(name, recipe, fn, signature, dict(constexprs), **kwargs)

    def used_on(self, target: Target) -> bool:
        """Whether the lowering runs this kernel on ``target`` (per ``ufp4_compile.dispatch``)."""
        if target.backend == "cpu":
            return False
        if self.formats is None or self.path is None:
            return True
        return any(d.path is self.path for d in gemm_paths(*self.formats, "bf16", target))

    def expected_instruction(self, target: Target) -> str | None:
        """The matrix instruction dispatch promises for this kernel on ``target`` (native paths only)."""
        if self.formats is None or self.path is not GemmPath.NATIVE:
            return None
        first = gemm_paths(*self.formats, "bf16", target)[0]
        return first.instruction if first.path is GemmPath.NATIVE else None


@dataclasses.dataclass(frozen=True)
class CompileResult:
    module: str
    kernel: str
    recipe: str
    target: str
    status: str  # "ok", "FAIL" (used here but broken), "unused" (failed where dispatch never uses it), "n/a"
    compiled: bool
    error: str | None
    instructions: tuple[str, ...]
    expected: str | None
    used: bool
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- which instances the presets launch -----------------------------------------------------------------

# Format pairs no preset uses but the dispatch treats specially: (short name, label, a spec, b spec).
EXTRA_FORMAT_PAIRS = (("int4-e8m0", "custom: INT4 + MX scales", "int4/32/e8m0/nearest", "int4/32/e8m0/nearest"),)

# Whether each quantize call of a GEMM reads its tensor row-wise (along the last axis), per role, for the
# (a, b) operands (docs/pipeline.md: Dgrad's W and both Wgrad operands are quantized along axis 0).
ROLE_ROWWISE = {Role.FPROP: (True, True), Role.DGRAD: (True, False), Role.WGRAD: (False, False)}


@dataclasses.dataclass(frozen=True)
class PresetGemm:
    """One GEMM kernel instance: operand formats and compute dtype, with the presets that run it."""

    name: str  # the first preset's name (or the extra pair's short name)
    label: str  # every preset that runs it, comma-separated
    a: OperandFormat
    b: OperandFormat
    compute_dtype: str


def _gemm_key(fmt: OperandFormat) -> tuple:
    return fmt.grid, fmt.scale, fmt.block  # what a GEMM kernel sees (rounding and 2-D blocks are gone)


def preset_gemms() -> list[PresetGemm]:
    """The distinct (a, b, compute dtype) GEMM instances of every preset's quantized roles, then the extras."""
    found: dict[tuple, PresetGemm] = {}
    for name, recipe in PRESETS.items():
        for role in recipe.quantized_roles:
            gemm = recipe.gemm(role)
            compute = recipe.compute_dtype.value
            key = (_gemm_key(gemm.a), _gemm_key(gemm.b), compute)
            if key not in found:
                found[key] = PresetGemm(name, name, gemm.a, gemm.b, compute)
            elif name not in found[key].label.split(", "):
                found[key] = dataclasses.replace(found[key], label=f"{found[key].label}, {name}")
    extras = [PresetGemm(short, label, OperandFormat.from_spec(a), OperandFormat.from_spec(b), "bf16")
              for short, label, a, b in EXTRA_FORMAT_PAIRS]
    return list(found.values()) + extras


def preset_quantize_calls() -> dict[tuple[OperandFormat, int, bool], str]:
    """``{(format, rht, rowwise): presets}`` for every distinct quantize launch of the presets."""
    found: dict[tuple[OperandFormat, int, bool], list[str]] = {}
    for name, recipe in PRESETS.items():
        for role in recipe.quantized_roles:
            gemm = recipe.gemm(role)
            for fmt, rowwise in zip((gemm.a, gemm.b), ROLE_ROWWISE[role]):
                names = found.setdefault((fmt, gemm.rht, rowwise), [])
                if name not in names:
                    names.append(name)
    return {key: ", ".join(names) for key, names in found.items()}


# ---- which targets the installed Triton compiles for ------------------------------------------------------

# Triton supports NVIDIA GPUs of compute capability 8.0 and later (Triton's README, "Compatibility").
MIN_CUDA_CAPABILITY = 80

# Triton's HIP backend compiles only for the ISA families its TargetInfo knows (``deduceISAFamily`` in
# third_party/amd/lib/TritonAMDGPUToLLVM/TargetUtils.cpp; any other name fails every kernel with
# "unsupported target"). Python cannot ask for that list, so it is kept here, as of Triton 3.6: CDNA1-4,
# RDNA1-4 and gfx1250. Checked by compiling a dequantize kernel for each name (and for gfx803, gfx906, gfx940,
# gfx1251: refused); gfx1250 compiles slowly (over two minutes for one GEMM kernel).
HIP_ARCHS = ("gfx908", "gfx90a", "gfx942", "gfx950", "gfx1010", "gfx1011", "gfx1012", "gfx1013", "gfx1030",
             "gfx1031", "gfx1032", "gfx1033", "gfx1034", "gfx1035", "gfx1036", "gfx1100", "gfx1101", "gfx1102",
             "gfx1103", "gfx1150", "gfx1151", "gfx1152", "gfx1153", "gfx1200", "gfx1201", "gfx1250")


@functools.lru_cache(maxsize=None)
def cuda_capabilities() -> tuple[int, ...]:
    """The compute capabilities the installed Triton compiles for, asked of the ptxas it uses.

    From :data:`MIN_CUDA_CAPABILITY` up, those whose architecture as Triton names it (``sm_90a`` from 9.0
    on) is accepted by the ptxas Triton picks for it (``ptxas --help`` lists them). A name LLVM does not
    know aborts the whole process (``sm_200``), so targets are checked against this before compiling.
    Empty when ptxas cannot be run (then nothing compiles for CUDA anyway).
    """
    import subprocess

    from triton.backends.nvidia import compiler as nvidia

    accepted: dict[str, set[str]] = {}
    for probe in (MIN_CUDA_CAPABILITY, 100):  # Triton uses a second ptxas from 10.0 on
        try:
            path = nvidia.get_ptxas(probe).path
            if path not in accepted:
                text = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60).stdout
                accepted[path] = set(re.findall(r"'(sm_\w+)'", text))
        except (OSError, RuntimeError, subprocess.SubprocessError):
            continue
    listed = {int(m.group(1)) for names in accepted.values() for name in names
              if (m := re.fullmatch(r"sm_(\d+)[a-z]?", name))}
    return tuple(sorted(c for c in listed if c >= MIN_CUDA_CAPABILITY
                        and nvidia.sm_arch_from_capability(c) in accepted.get(nvidia.get_ptxas(c).path, ())))


def _triton_version() -> str:
    import triton

    return triton.__version__


def check_compilable(target: Target) -> None:
    """ValueError, listing the valid names, unless the installed Triton compiles for ``target``."""
    if target.backend == "cuda":
        valid = cuda_capabilities()
        if target.arch not in valid:
            names = ", ".join(f"sm_{c}" for c in valid) or "none (Triton's ptxas could not be run)"
            raise ValueError(f"target {target.name!r} is not supported by the installed Triton "
                             f"{_triton_version()}; valid CUDA targets: {names}")
    elif target.backend == "hip":
        if target.arch not in HIP_ARCHS:
            raise ValueError(f"target {target.name!r} is not supported by the installed Triton "
                             f"{_triton_version()}; valid HIP targets: {', '.join(HIP_ARCHS)}")
    else:
        raise ValueError(f"target {target.name!r} has no Triton GPU compiler; use sm_<capability> or gfx<name>")


def find_matrix_instructions(asm: str) -> tuple[str, ...]:
    """The distinct MMA instructions in PTX or AMDGCN text, in order of first appearance."""
    return tuple(dict.fromkeys(_MATRIX_INSTRUCTION.findall(asm)))


def instruction_matches(expected: str, found: Iterable[str]) -> bool:
    """``expected`` as dispatch spells it (``"tcgen05.mma kind::mxf4"``, ``"v_mfma_scale_f32_*_f8f6f4"``)."""
    if expected.startswith("tcgen05.mma kind::"):
        kind = expected.split("kind::", 1)[1]
        return any(f.startswith("tcgen05.mma") and re.search(rf"\.kind::{re.escape(kind)}(\.|$)", f) for f in found)
    return any(fnmatch.fnmatchcase(f, expected) for f in found)


def short_instruction(instruction: str) -> str:
    """``tcgen05.mma.cta_group::1.kind::mxf4.block_scale.scale_vec::2X`` -> ``tcgen05.mma kind::mxf4 2X``."""
    match = re.match(r"tcgen05\.mma.*?\.kind::(\w+)(?:.*scale_vec::(\w+))?", instruction)
    if match:
        return f"tcgen05.mma kind::{match.group(1)}" + (f" {match.group(2)}" if match.group(2) else "")
    match = re.match(r"wgmma\.mma_async\.sync\.aligned\.(\w+)\.(.+)", instruction)
    if match:
        return f"wgmma {match.group(1)} {match.group(2)}"
    return instruction


class _CapturedStderr:
    """Collects what MLIR and the assemblers print on file descriptor 2 while compiling."""

    def __enter__(self):
        self._file = tempfile.TemporaryFile(mode="w+b")
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode(errors="replace")
        self._file.close()
        return False


def _error_line(exc: Exception, stderr: str) -> str:
    """The most telling line of a compile failure: MLIR's first ``error:`` line, else the exception."""
    for line in stderr.splitlines():
        if "error:" in line and "Failures have been detected" not in line:
            return f"{type(exc).__name__}: {line.split('error:', 1)[1].strip()}"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    failed_pass = re.search(r"Pipeline failed while executing \[`(\w+)`", stderr)
    if failed_pass:
        first += f" (in the {failed_pass.group(1)} pass)"
    return f"{type(exc).__name__}: {first}"


def _attrs(variant: KernelVariant) -> dict:
    names = list(variant.fn.arg_names)
    return {(names.index(arg),): [["tt.divisibility", 16]] for arg in variant.aligned}


def compile_variant(variant: KernelVariant, target: Target, compile_fn: Callable | None = None) -> CompileResult:
    """Compile one variant for one target; never raises for a compile failure (it is reported)."""
    import triton
    from triton.compiler import ASTSource

    compile_fn = compile_fn or triton.compile
    used = variant.used_on(target)
    expected = variant.expected_instruction(target)
    start = time.perf_counter()
    error, instructions, compiled_ok = None, (), False
    capture = _CapturedStderr()
    try:
        if not hasattr(variant.fn, "arg_names") or type(variant.fn).__name__ == "InterpretedFunction":
            raise TypeError("kernel is not a compilable @triton.jit function (TRITON_INTERPRET=1 was set "
                            "when Triton was imported; run without it)")
        source = ASTSource(fn=variant.fn, signature=variant.signature, constexprs=variant.constexprs,
                           attrs=_attrs(variant))
        with capture:
            compiled = compile_fn(source, target=target.gpu_target(), options=dict(variant.options))
        asm = compiled.asm.get("ptx") or compiled.asm.get("amdgcn") or ""
        instructions, compiled_ok = find_matrix_instructions(asm), True
    except Exception as exc:  # noqa: BLE001 (every failure becomes a row of the report)
        error = _error_line(exc, getattr(capture, "text", ""))
    seconds = time.perf_counter() - start
    if error is not None:
        status = "FAIL" if used else "unused"
    elif expected is not None and not instruction_matches(expected, instructions):
        status = "FAIL"
        error = f"expected {expected}, found {', '.join(instructions) or 'no matrix instruction'}"
    else:
        status = "ok"
    return CompileResult(variant.module, variant.name, variant.recipe, target.name, status, compiled_ok, error, instructions,
                         expected, used, round(seconds, 3))


def collect_variants(modules: Iterable[str] = KERNEL_MODULES) -> tuple[list[KernelVariant], dict[str, str]]:
    """Every module's ``compile_variants()``, and for each module that offers none, why."""
    variants, missing = [], {}
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 (a module still being written must not stop the report)
            missing[module_name] = f"not available: import failed ({type(exc).__name__}: {exc})"
            continue
        provider = getattr(module, "compile_variants", None)
        if provider is None:
            missing[module_name] = "not available: the module defines no compile_variants()"
            continue
        try:
            provided = list(provider())
        except Exception as exc:  # noqa: BLE001 (reported like a missing module)
            missing[module_name] = f"not available: compile_variants() failed ({type(exc).__name__}: {exc})"
            continue
        variants.extend(dataclasses.replace(v, module=module_name) for v in provided)
    return variants, missing


# ---- parallel compilation (worker processes collect the same variants, in the same order) ----------------

_worker_variants: list[KernelVariant] = []
_worker_started = None  # shared with the parent: flag k is set when a worker takes up job k


def _worker_init(modules: tuple[str, ...], started=None) -> None:
    global _worker_variants, _worker_started
    _worker_variants = collect_variants(modules)[0]
    _worker_started = started


def _worker_compile(job: tuple[int, int, str, Target]) -> CompileResult:
    key, index, name, target = job
    if _worker_started is not None:
        _worker_started[key] = 1
    variant = _worker_variants[index]
    if variant.name != name:  # the variant lists of parent and worker differ: a bug, not a compile error
        raise RuntimeError(f"variant {index} is {variant.name!r} in the worker, {name!r} in the parent")
    return compile_variant(variant, target)


def compile_all(targets: Iterable[Target], pattern: str = "*", modules: Iterable[str] = KERNEL_MODULES,
                jobs: int | None = None):
    """Compile every variant whose name matches ``pattern`` for every target: (results, missing modules).

    ``pattern`` is a glob whose ``*`` and ``?`` are wildcards; brackets are literal (names contain them).

    ``jobs`` worker processes (default: the CPU count; 1 compiles in this process). Results keep the
    order variant by variant, target by target.
    """
    modules = tuple(modules)
    targets = list(targets)
    variants, missing = collect_variants(modules)
    glob = pattern.replace("[", "[[]")
    work = [(i, v, t) for i, v in enumerate(variants) if fnmatch.fnmatchcase(v.name, glob) for t in targets]
    jobs = min(jobs or os.cpu_count() or 1, len(work))
    if jobs <= 1:
        return [compile_variant(v, t) for _, v, t in work], missing
    return _compile_in_workers(work, modules, jobs), missing


def crashed_result(variant: KernelVariant, target: Target, why: str) -> CompileResult:
    """The report of a compile that killed its process (an abort in MLIR or LLVM raises nothing to catch)."""
    used = variant.used_on(target)
    return CompileResult(variant.module, variant.name, variant.recipe, target.name, "FAIL" if used else "unused",
                         False, why, (), variant.expected_instruction(target), used, 0.0)


def _compile_in_workers(work: list[tuple[int, KernelVariant, Target]], modules: tuple[str, ...],
                        jobs: int) -> list[CompileResult]:
    """Compile ``work`` in ``jobs`` spawned worker processes; a worker that dies is reported, never awaited.

    When a compiler abort kills a worker, the pool fails every job not done yet. Jobs no worker had taken
    up are submitted again to a fresh pool; those that were running are compiled again one per pool, and a
    job that kills a worker on its own is reported as crashed.
    """
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")
    started = context.Array("b", len(work), lock=False)
    results: dict[int, CompileResult] = {}
    queued, suspects = list(range(len(work))), []
    while queued or suspects:
        alone = not queued
        batch = [suspects.pop()] if alone else queued
        for key in batch:
            started[key] = 0
        width = 1 if alone else min(jobs, len(batch))
        with ProcessPoolExecutor(width, mp_context=context, initializer=_worker_init,
                                 initargs=(modules, started)) as pool:
            futures = {key: pool.submit(_worker_compile, (key, work[key][0], work[key][1].name, work[key][2]))
                       for key in batch}
            for key, future in futures.items():
                try:
                    results[key] = future.result()
                except BrokenProcessPool:
                    pass
        lost = [key for key in batch if key not in results]
        if alone:
            why = "the compiler crashed its worker process (an abort in MLIR or LLVM)"
        elif len(lost) == len(batch) and not any(started[key] for key in lost):
            why, queued = "the worker processes died before compiling anything", []
        else:
            queued = [key for key in lost if not started[key]]
            suspects += [key for key in lost if started[key]]
            continue
        results.update({key: crashed_result(work[key][1], work[key][2], why) for key in lost})
    return [results[key] for key in range(len(work))]
