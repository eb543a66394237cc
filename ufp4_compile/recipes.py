"""FP4 training recipes as plain data.

A :class:`Recipe` says, for each of the three GEMMs of a linear layer, how each operand is transformed and
rounded. For ``Y = X W^T`` (X: tokens x in, W: out x in, dY: tokens x out):

============  ===============  ================  =============================
role          product          reduction axis    operands (a, b)
============  ===============  ================  =============================
``FPROP``     ``Y = X W^T``    in-features       a = X,  b = W
``DGRAD``     ``dX = dY W``    out-features      a = dY, b = W
``WGRAD``     ``dW = dY^T X``  tokens            a = dY, b = X
============  ===============  ================  =============================

Blocks always run along the GEMM's reduction axis. No pass or kernel looks at a recipe's *name*; adding a
recipe is data plus tests. Derive your own with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import numbers
from dataclasses import dataclass, field

from ufp4_compile.numerics.formats import (  # noqa: F401  (re-exported: recipes are built from these)
    E8M0Rounding,
    Grid,
    OperandFormat,
    Rounding,
    ScaleFormat,
    parse_enum,
)

VALID_RHT_SIZES = (0, 16, 32, 64, 128, 256)  # 0 = no RHT
SEED_LIMIT = 1 << 63  # seeds are int64 op arguments (``int rht_seed``, an int64 seed tensor)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value, high: int | None = None) -> int:
    """``value`` (any integer type, not a bool) as an ``int`` >= 0 and below ``high``; else a ValueError that
    names the field and the valid values."""
    if _is_int(value) and value >= 0 and (high is None or value < high):
        return int(value)
    valid = "an integer >= 0" if high is None else f"an integer in [0, 2**{high.bit_length() - 1})"
    raise ValueError(f"{name}={value!r} is not valid; valid values: {valid}")


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not valid; valid values: True, False")
    return value


def check_patterns(name: str, value) -> tuple[str, ...]:
    """One fnmatch pattern, or a list or tuple of them, as a tuple of strings."""
    patterns = (value,) if isinstance(value, str) else value
    if isinstance(patterns, (list, tuple)) and all(isinstance(p, str) for p in patterns):
        return tuple(patterns)
    raise ValueError(f"{name}={value!r} is not valid; valid values: a module-name pattern or a list of them "
                     f"(fnmatch, e.g. ['*.mlp.*', 'layers.0.*'])")


class Role(enum.Enum):
    FPROP = "fprop"
    DGRAD = "dgrad"
    WGRAD = "wgrad"


class MeanSplit(enum.Enum):
    """Mean-residual split of operand ``a`` (X in Fprop, dY in Dgrad); Averis, arXiv 2603.10444."""

    OFF = "off"
    FP4 = "fp4"  # the paper: the per-channel mean mu is quantized to FP4 too
    HIGH = "high"  # the rank-one term 1 (mu W^T) stays in the GEMM's high precision


class SeedPolicy(enum.Enum):
    """Where the random Hadamard signs come from."""

    SHARED = "shared"  # one sign vector (from rht_seed) for every layer for the whole run (NVIDIA)
    PER_LAYER = "per_layer"  # rht_seed mixed with a hash of the module name (stable across graph breaks)


class SRSeedPolicy(enum.Enum):
    """Where stochastic-rounding seeds come from."""

    PER_STEP = "per_step"  # a fresh seed drawn from torch's generator at every call (training default)
    FIXED = "fixed"  # sr_seed at every call: bit-reproducible, for parity tests and debugging


class ComputeDtype(enum.Enum):
    """Dtype the dequantized operands are rounded to before the FP32-accumulating GEMM (DESIGN §2)."""

    BF16 = "bf16"
    FP32 = "fp32"  # exact for FP32 block scales; slower path


@dataclass(frozen=True)
class GemmRecipe:
    """How one GEMM (one role) is quantized: its two operands, the RHT and the mean split."""

    a: OperandFormat
    b: OperandFormat
    rht: int = 0  # Hadamard size along the reduction axis, 0 = off
    mean_split: MeanSplit = MeanSplit.OFF

    def __post_init__(self):
        object.__setattr__(self, "mean_split", parse_enum(MeanSplit, self.mean_split, "mean_split"))
        for name in ("a", "b"):
            if not isinstance(getattr(self, name), OperandFormat):
                raise ValueError(f"{name}={getattr(self, name)!r} is not valid; valid values: an OperandFormat, "
                                 f"e.g. OperandFormat('int4', 16, 'fp32') or OperandFormat.from_spec(spec)")
        if not _is_int(self.rht) or self.rht not in VALID_RHT_SIZES:
            raise ValueError(f"rht={self.rht!r} is not valid; valid values: {VALID_RHT_SIZES}")
        object.__setattr__(self, "rht", int(self.rht))
        if self.a.block != self.b.block:
            raise ValueError(f"operands of one GEMM need the same block size, got a.block={self.a.block}, "
                             f"b.block={self.b.block}")
        if self.a.block_2d:
            raise ValueError("block_2d is for weights only; operand a (X or dY) cannot use it")


@dataclass(frozen=True)
class LayerPolicy:
    """Which matmuls stay in their original precision (NVIDIA's practice by default)."""

    keep_output_head: bool = True  # the LM head, tied to the embedding or not
    keep_attention: bool = True  # attention's score/value batched matmuls
    keep_first: int = 0  # first N numbered blocks (``layers.0``, ``h.1``...) kept
    keep_last: int = 0  # last N numbered blocks kept
    skip: tuple[str, ...] = ()  # fnmatch patterns on module names, e.g. ``("*.mlp.*",)``
    min_features: int = 0  # a matmul with K or N below this stays
    # MoE routers and gates (``mlp.gate``, ``router``, ``shared_expert_gate``) with at most this many outputs
    # N, and fewer than their inputs K, stay; 0 quantizes them (rule in passes/policy.py, docs/backend.md).
    keep_routers: int = 256

    def __post_init__(self):
        for name in ("keep_output_head", "keep_attention"):
            check_bool(name, getattr(self, name))
        object.__setattr__(self, "skip", check_patterns("skip", self.skip))
        for name in ("keep_first", "keep_last", "min_features", "keep_routers"):
            object.__setattr__(self, name, check_int(name, getattr(self, name)))


@dataclass(frozen=True)
class Recipe:
    """A whole FP4 training recipe. ``None`` for a role keeps that GEMM in high precision."""

    name: str
    fprop: GemmRecipe | None
    dgrad: GemmRecipe | None
    wgrad: GemmRecipe | None
    rht_seed: int = 0
    rht_seed_policy: SeedPolicy = SeedPolicy.SHARED
    sr_seed: int = 0
    sr_seed_policy: SRSeedPolicy = SRSeedPolicy.PER_STEP
    compute_dtype: ComputeDtype = ComputeDtype.BF16
    layers: LayerPolicy = field(default_factory=LayerPolicy)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name={self.name!r} is not valid; valid values: a non-empty string")
        for role in Role:
            if not isinstance(self.gemm(role), (GemmRecipe, type(None))):
                raise ValueError(f"{role.value}={self.gemm(role)!r} is not valid; valid values: a GemmRecipe or "
                                 f"None (kept in high precision), e.g. dataclasses.replace(UFP4.{role.value}, rht=0)")
        if not isinstance(self.layers, LayerPolicy):
            raise ValueError(f"layers={self.layers!r} is not valid; valid values: a LayerPolicy, "
                             f"e.g. LayerPolicy(keep_first=1)")
        for name in ("rht_seed", "sr_seed"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), SEED_LIMIT))
        object.__setattr__(self, "rht_seed_policy", parse_enum(SeedPolicy, self.rht_seed_policy, "rht_seed_policy"))
        object.__setattr__(self, "sr_seed_policy", parse_enum(SRSeedPolicy, self.sr_seed_policy, "sr_seed_policy"))
        object.__setattr__(self, "compute_dtype", parse_enum(ComputeDtype, self.compute_dtype, "compute_dtype"))
        if self.wgrad is not None and self.wgrad.mean_split is not MeanSplit.OFF:
            raise ValueError("mean_split applies to Fprop (X) and Dgrad (dY) only; set wgrad.mean_split='off'")
        for role in Role:
            gemm = self.gemm(role)
            if gemm is not None and gemm.b.block_2d and role is Role.WGRAD:
                raise ValueError("block_2d is for weights only; Wgrad's operand b is X")

    def gemm(self, role: Role) -> GemmRecipe | None:
        return getattr(self, role.value)

    @property
    def quantized_roles(self) -> tuple[Role, ...]:
        return tuple(role for role in Role if self.gemm(role) is not None)

    def to_dict(self) -> dict:
        """JSON-ready dict (enums as their values); stable, so it can key caches."""

        def convert(value):
            if isinstance(value, enum.Enum):
                return value.value
            if dataclasses.is_dataclass(value):
                return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
            if isinstance(value, (tuple, list)):
                return [convert(v) for v in value]
            return value

        return convert(self)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


# ---- presets (DESIGN.md §1) -------------------------------------------------------------------------

# UFP4 paper (arXiv 2606.20381), Table 1: uniform grid, 1x16 blocks, FP32 scale amax/7, RHT-16 on all
# three GEMMs, stochastic rounding on dY only.
_INT4_FP32 = OperandFormat(Grid.INT4, 16, ScaleFormat.FP32)
_INT4_FP32_SR = dataclasses.replace(_INT4_FP32, rounding=Rounding.STOCHASTIC)
UFP4 = Recipe(
    name="ufp4",
    fprop=GemmRecipe(a=_INT4_FP32, b=_INT4_FP32, rht=16),
    dgrad=GemmRecipe(a=_INT4_FP32_SR, b=_INT4_FP32, rht=16),
    wgrad=GemmRecipe(a=_INT4_FP32_SR, b=_INT4_FP32, rht=16),
)

# The UFP4 paper's E2M1 baseline: same scales (amax/6), RHT on Wgrad only, SR on dY only.
_E2M1_FP32 = OperandFormat(Grid.E2M1, 16, ScaleFormat.FP32)
_E2M1_FP32_SR = dataclasses.replace(_E2M1_FP32, rounding=Rounding.STOCHASTIC)
E2M1_REF = Recipe(
    name="e2m1-ref",
    fprop=GemmRecipe(a=_E2M1_FP32, b=_E2M1_FP32),
    dgrad=GemmRecipe(a=_E2M1_FP32_SR, b=_E2M1_FP32),
    wgrad=GemmRecipe(a=_E2M1_FP32_SR, b=_E2M1_FP32, rht=16),
)

# NVIDIA NVFP4 (arXiv 2509.25149): E2M1, 1x16 E4M3 block scales x FP32 tensor scale, weights in 16x16
# 2-D blocks, RHT-16 on Wgrad only, stochastic rounding on gradients.
_NV = OperandFormat(Grid.E2M1, 16, ScaleFormat.E4M3)
_NV_W = dataclasses.replace(_NV, block_2d=True)
_NV_SR = dataclasses.replace(_NV, rounding=Rounding.STOCHASTIC)
NVFP4 = Recipe(
    name="nvfp4",
    fprop=GemmRecipe(a=_NV, b=_NV_W),
    dgrad=GemmRecipe(a=_NV_SR, b=_NV_W),
    wgrad=GemmRecipe(a=_NV_SR, b=_NV, rht=16),
)

# OCP MXFP4 with NVIDIA's recipe placements: E2M1, 1x32 blocks, E8M0 scales.
_MX = OperandFormat(Grid.E2M1, 32, ScaleFormat.E8M0)
_MX_SR = dataclasses.replace(_MX, rounding=Rounding.STOCHASTIC)
MXFP4 = Recipe(
    name="mxfp4",
    fprop=GemmRecipe(a=_MX, b=_MX),
    dgrad=GemmRecipe(a=_MX_SR, b=_MX),
    wgrad=GemmRecipe(a=_MX_SR, b=_MX, rht=16),
)

# Ours: the UFP4 recipe with hardware-friendly NVFP4-style two-level scales (1x16 blocks, no 2-D weights).
_INT4_NV = OperandFormat(Grid.INT4, 16, ScaleFormat.E4M3)
_INT4_NV_SR = dataclasses.replace(_INT4_NV, rounding=Rounding.STOCHASTIC)
UFP4_NV = Recipe(
    name="ufp4-nv",
    fprop=GemmRecipe(a=_INT4_NV, b=_INT4_NV, rht=16),
    dgrad=GemmRecipe(a=_INT4_NV_SR, b=_INT4_NV, rht=16),
    wgrad=GemmRecipe(a=_INT4_NV_SR, b=_INT4_NV, rht=16),
)

# Ours: ufp4 plus the mean-residual split of Averis (arXiv 2603.10444) on X (Fprop) and dY (Dgrad),
# the mean quantized to FP4 as in the paper.
UFP4_MEAN = Recipe(
    name="ufp4-mean",
    fprop=dataclasses.replace(UFP4.fprop, mean_split=MeanSplit.FP4),
    dgrad=dataclasses.replace(UFP4.dgrad, mean_split=MeanSplit.FP4),
    wgrad=UFP4.wgrad,
)

# Baseline through the same backend: nothing quantized.
BF16 = Recipe(name="bf16", fprop=None, dgrad=None, wgrad=None)

PRESETS: dict[str, Recipe] = {r.name: r for r in (UFP4, UFP4_NV, UFP4_MEAN, E2M1_REF, NVFP4, MXFP4, BF16)}


def recipe_names() -> tuple[str, ...]:
    return tuple(PRESETS)


def get_recipe(recipe: str | Recipe) -> Recipe:
    """A preset by name (or a Recipe passed through); ValueError lists the valid names."""
    if isinstance(recipe, Recipe):
        return recipe
    try:
        return PRESETS[recipe]
    except (KeyError, TypeError):
        raise ValueError(f"recipe={recipe!r} is not a known recipe; valid names: {', '.join(PRESETS)}") from None
