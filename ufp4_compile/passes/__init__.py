"""FX passes of the ufp4 backend: find and classify matmuls, decide per the recipe, rewrite them.

``rewrite_matmuls(graph, recipe)`` is the pass; ``joint_pass.Ufp4JointPass`` wraps it for Inductor's
``joint_custom_pre_pass`` hook (imported on demand: it needs torch._inductor).
"""

from ufp4_compile.passes.classify import Gemm, Operand, Site, classify
from ufp4_compile.passes.report import MatmulRow, Report
from ufp4_compile.passes.rewrite_matmuls import rewrite_matmuls

__all__ = ["Gemm", "MatmulRow", "Operand", "Report", "Site", "classify", "rewrite_matmuls"]
