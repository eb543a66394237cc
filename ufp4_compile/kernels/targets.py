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
import importlib
import multiprocessing
import os
import re
import tempfile
import time
from typing import Any, Callable, Iterable

from ufp4_compile.dispatch import GemmPath, Target, gemm_paths
from ufp4_compile.numerics.formats import OperandFormat
from ufp4_compile.recipes import PRESETS, Role

KERNEL_MODULES = ("ufp4_compile.kernels.quantize", "ufp4_compile.kernels.dequantize", "ufp4_compile.kernels.gemm",
                  "ufp4_compile.kernels.native_gemm")

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
        """A variant whose signature is ``types`` plus ``"constexpr"`` for every key of ``constexprs``."""
        arg_names = list(fn.arg_names)
        signature = {}
        for arg in arg_names:
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


def _worker_init(modules: tuple[str, ...]) -> None:
    global _worker_variants
    _worker_variants = collect_variants(modules)[0]


def _worker_compile(job: tuple[int, str, Target]) -> CompileResult:
    index, name, target = job
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
    context = multiprocessing.get_context("spawn")
    with context.Pool(jobs, initializer=_worker_init, initargs=(modules,)) as pool:
        results = pool.map(_worker_compile, [(i, v.name, t) for i, v, t in work], chunksize=1)
    return results, missing
