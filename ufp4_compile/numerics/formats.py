"""The vocabulary of 4-bit block-scaled formats: grids, scale formats, rounding modes.

Plain enums, shared by the reference numerics, the recipes, the ops, the kernels and the CLI.
"""

from __future__ import annotations

import dataclasses
import enum
import numbers


class Grid(enum.Enum):
    """The 4-bit value grid (before scaling)."""

    # Uniform grid, codes -7..7 (the UFP4 paper's E1M2 is this grid divided by 4: same grid up to scale).
    INT4 = "int4"
    # OCP E2M1: +-{0, 0.5, 1, 1.5, 2, 3, 4, 6}.
    E2M1 = "e2m1"


class ScaleFormat(enum.Enum):
    """How the per-block scale is stored."""

    # One FP32 scale per block = amax / q_max (UFP4 paper, Table 1).
    FP32 = "fp32"
    # NVFP4 two-level scale: E4M3 block scale x FP32 tensor scale amax / (q_max * 448).
    E4M3 = "e4m3"
    # OCP MX power-of-two scale (E8M0, stored as the biased exponent in a uint8).
    E8M0 = "e8m0"


class E8M0Rounding(enum.Enum):
    """How an E8M0 scale is chosen from the block amax."""

    # 2**ceil(log2(amax / q_max)): no element saturates (default).
    UP = "up"
    # OCP MX spec: 2**(floor(log2(amax)) - floor(log2(q_max))); the largest elements may saturate.
    FLOOR = "floor"


class Rounding(enum.Enum):
    """Rounding onto the grid."""

    NEAREST = "nearest"  # round to nearest, ties to the even code
    STOCHASTIC = "stochastic"  # unbiased, Philox(seed, offset) driven


def parse_enum(enum_cls: type[enum.Enum], value, field: str):
    """Turn ``value`` (an enum member or its string value) into ``enum_cls``; ValueError lists valid values."""
    if isinstance(value, enum_cls):
        return value
    for member in enum_cls:
        if value == member.value or (isinstance(value, str) and value.upper() == member.name):
            return member
    valid = ", ".join(repr(m.value) for m in enum_cls)
    raise ValueError(f"{field}={value!r} is not valid; valid values: {valid}")


VALID_BLOCKS = (16, 32)
Q_MAX = {Grid.INT4: 7.0, Grid.E2M1: 6.0}


@dataclasses.dataclass(frozen=True)
class OperandFormat:
    """How one tensor is quantized: grid, block, scale and rounding.

    ``spec`` is a canonical string (``"int4/16/fp32/nearest"``, ``"e2m1/16x16/e4m3/stochastic"``) used in
    op schemas, graph dumps and reports; ``OperandFormat.from_spec`` reads it back.
    """

    grid: Grid
    block: int = 16
    scale: ScaleFormat = ScaleFormat.FP32
    rounding: Rounding = Rounding.NEAREST
    block_2d: bool = False  # 16x16 blocks (weights only, NVFP4)
    e8m0_rounding: E8M0Rounding = E8M0Rounding.UP

    def __post_init__(self):
        object.__setattr__(self, "grid", parse_enum(Grid, self.grid, "grid"))
        object.__setattr__(self, "scale", parse_enum(ScaleFormat, self.scale, "scale"))
        object.__setattr__(self, "rounding", parse_enum(Rounding, self.rounding, "rounding"))
        object.__setattr__(self, "e8m0_rounding", parse_enum(E8M0Rounding, self.e8m0_rounding, "e8m0_rounding"))
        integer = isinstance(self.block, numbers.Integral) and not isinstance(self.block, bool)
        if not integer or self.block not in VALID_BLOCKS:
            raise ValueError(f"block={self.block!r} is not valid; valid values: {VALID_BLOCKS}")
        object.__setattr__(self, "block", int(self.block))
        if not isinstance(self.block_2d, bool):
            raise ValueError(f"block_2d={self.block_2d!r} is not valid; valid values: True, False")
        if self.block_2d and self.block != 16:
            raise ValueError(f"block_2d=True needs block=16, got block={self.block}")

    @property
    def q_max(self) -> float:
        return Q_MAX[self.grid]

    def square(self) -> "OperandFormat | None":
        """This format in 16 x 16 blocks (NVFP4's weights beside its activations' 1 x 16), or None where it has
        them already or its blocks are not 16 long."""
        return dataclasses.replace(self, block_2d=True) if self.block == 16 and not self.block_2d else None

    @property
    def spec(self) -> str:
        block = f"{self.block}x{self.block}" if self.block_2d else str(self.block)
        scale = self.scale.value
        if self.scale is ScaleFormat.E8M0 and self.e8m0_rounding is not E8M0Rounding.UP:
            scale += f"-{self.e8m0_rounding.value}"
        return f"{self.grid.value}/{block}/{scale}/{self.rounding.value}"

    @classmethod
    def from_spec(cls, spec: str) -> "OperandFormat":
        try:
            grid, block, scale, rounding = spec.split("/")
        except ValueError:
            raise ValueError(f"format spec {spec!r} is not 'grid/block/scale/rounding', "
                             f"e.g. 'int4/16/fp32/nearest'") from None
        block_2d = "x" in block
        e8m0 = E8M0Rounding.UP
        if "-" in scale:
            scale, e8m0 = scale.split("-", 1)
        try:
            block_int = int(block.split("x")[0])
        except ValueError:
            raise ValueError(f"format spec {spec!r}: block {block!r} is not an integer") from None
        return cls(grid=grid, block=block_int, scale=scale, rounding=rounding, block_2d=block_2d,
                   e8m0_rounding=e8m0)
