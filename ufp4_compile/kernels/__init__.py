"""Triton kernels: fused RHT + quantize (``quantize``), dequantize, and the block-scaled GEMM (``gemm``).

Kernels are ``_name_kernel`` with a launcher ``name(...)``; the reference each one reproduces lives in
``ufp4_compile.numerics``. Importing this package imports Triton.
"""

from ufp4_compile.kernels import interpreter_workaround

interpreter_workaround.apply()
