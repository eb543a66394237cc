"""The pure-PyTorch reference of 4-bit block-scaled numerics (docs/numerics.md is the contract).

Every kernel, op, pass, benchmark and CLI command either calls these functions or is tested against them.
"""

from ufp4_compile.numerics.formats import (
    Q_MAX,
    VALID_BLOCKS,
    E8M0Rounding,
    Grid,
    OperandFormat,
    Rounding,
    ScaleFormat,
    parse_enum,
)
from ufp4_compile.numerics.grids import decode, decode_table, encode, grid_values, levels, q_max
from ufp4_compile.numerics.hadamard import hadamard_matrix, rht, rht_inverse, rht_signs
from ufp4_compile.numerics.mean_split import mean_correction, mean_split, sample_median
from ufp4_compile.numerics.metrics import effective_bucket_ratio, per_level_bias, shrinkage_alpha, sqnr_db
from ufp4_compile.numerics.packing import pack_codes, unpack_codes
from ufp4_compile.numerics.quantize import QuantizedTensor, dequantize, gemm_reference, quantize, quantize_dequantize
from ufp4_compile.numerics.rounding import philox

__all__ = [
    "Q_MAX", "VALID_BLOCKS", "E8M0Rounding", "Grid", "OperandFormat", "Rounding", "ScaleFormat", "parse_enum",
    "decode", "decode_table", "encode", "grid_values", "levels", "q_max",
    "hadamard_matrix", "rht", "rht_inverse", "rht_signs",
    "mean_correction", "mean_split", "sample_median",
    "effective_bucket_ratio", "per_level_bias", "shrinkage_alpha", "sqnr_db",
    "pack_codes", "unpack_codes",
    "QuantizedTensor", "dequantize", "gemm_reference", "quantize", "quantize_dequantize",
    "philox",
]
