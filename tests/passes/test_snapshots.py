"""Snapshots of rewritten graphs: the forward and backward graphs Inductor compiles (after the partitioner),
CPU, fp32, fixed stochastic-rounding seed, normalized (``ufp4_compile.testing.normalized``). Each snapshot is
paired with semantic asserts so the test keeps its meaning without reading it.

Refresh with ``EXPECTTEST_ACCEPT=1 python -m pytest tests/passes/test_snapshots.py``.
"""

import torch
from expecttest import TestCase
from torch import nn

from ufp4_compile.testing import compile_and_run, eligible_matmuls, normalized, ufp4_gemms
from ufp4_compile.testing.models import MLP, Attention, SwiGLU, TiedHead

FIXED = {"sr_seed_policy": "fixed"}
# Inductor's decompositions of SiLU's and the embedding's backward differ between torch 2.11 and 2.13 (the
# ufp4 nodes do not): those two snapshots are recorded on this version.
SNAPSHOT_TORCH = "2.13."
SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default


def _run(model, x, backward=True, **options):
    torch.manual_seed(0)
    with torch.no_grad() if not backward else torch.enable_grad():
        return compile_and_run(model, x, options={**FIXED, **options}, backward=backward)


class TestSnapshots(TestCase):
    def require_snapshot_torch(self):
        if not torch.__version__.startswith(SNAPSHOT_TORCH):
            self.skipTest(f"snapshot text recorded on torch {SNAPSHOT_TORCH}x, running {torch.__version__}; "
                          f"the semantic asserts above ran")

    def assert_lines(self, text, low=10, high=40):
        count = len(text.splitlines())
        self.assertTrue(low <= count <= high, f"snapshot has {count} lines")

    def test_linear_with_bias(self):
        torch.manual_seed(0)
        run = _run(nn.Linear(32, 64), torch.randn(16, 32, requires_grad=True))
        self.assertEqual((ufp4_gemms(run.forward), ufp4_gemms(run.backward)), (1, 2))
        self.assertEqual(eligible_matmuls(run.forward) + eligible_matmuls(run.backward), [])
        fw, bw = normalized(run.forward), normalized(run.backward)
        self.assertExpectedInline(fw, """\
class GraphModule(torch.nn.Module):
    def forward(self, primals_1: "f32[64, 32]", primals_2: "f32[64]", primals_3: "f32[16, 32]"):
        getitem, getitem_1, getitem_2 = torch.ops.ufp4.quantize.default(primals_3, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[16, 16], f32[16, 2], f32[]
        getitem_3, getitem_4, getitem_5 = torch.ops.ufp4.quantize.default(primals_1, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[64, 16], f32[64, 2], f32[]
        scaled_mm_default: "f32[16, 64]" = torch.ops.ufp4.scaled_mm.default(getitem, getitem_1, getitem_2, getitem_3, getitem_4, getitem_5, 'int4/16/fp32/nearest', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        add_tensor: "f32[16, 64]" = torch.ops.aten.add.Tensor(scaled_mm_default, primals_2)
        getitem_15, getitem_16, getitem_17 = torch.ops.ufp4.quantize.default(primals_3, 0, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[8, 32], f32[1, 32], f32[]
        permute_default_4: "u8[32, 8]" = torch.ops.aten.permute.default(getitem_15, [1, 0])
        permute_default_5: "f32[32, 1]" = torch.ops.aten.permute.default(getitem_16, [1, 0])
        return (add_tensor, primals_1, getitem_17, permute_default_4, permute_default_5)
""")
        self.assertExpectedInline(bw, """\
class GraphModule(torch.nn.Module):
    def forward(self, primals_1: "f32[64, 32]", getitem_17: "f32[]", permute_default_4: "u8[32, 8]", permute_default_5: "f32[32, 1]", tangents_1: "f32[16, 64]"):
        full_default: "i64[]" = torch.ops.aten.full.default([], 0, dtype = torch.int64, layout = torch.strided, device = device(type='cpu'), pin_memory = False)
        getitem_6, getitem_7, getitem_8 = torch.ops.ufp4.quantize.default(tangents_1, 1, 'int4/16/fp32/stochastic', 16, 0, full_default, 3550901822996611072)  # u8[16, 32], f32[16, 4], f32[]
        getitem_9, getitem_10, getitem_11 = torch.ops.ufp4.quantize.default(primals_1, 0, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[32, 32], f32[4, 32], f32[]
        permute_default: "u8[32, 32]" = torch.ops.aten.permute.default(getitem_9, [1, 0])
        permute_default_1: "f32[32, 4]" = torch.ops.aten.permute.default(getitem_10, [1, 0])
        scaled_mm_default_1: "f32[16, 32]" = torch.ops.ufp4.scaled_mm.default(getitem_6, getitem_7, getitem_8, permute_default, permute_default_1, getitem_11, 'int4/16/fp32/stochastic', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        getitem_12, getitem_13, getitem_14 = torch.ops.ufp4.quantize.default(tangents_1, 0, 'int4/16/fp32/stochastic', 16, 0, full_default, 9070690991773581312)  # u8[8, 64], f32[1, 64], f32[]
        permute_default_2: "u8[64, 8]" = torch.ops.aten.permute.default(getitem_12, [1, 0])
        permute_default_3: "f32[64, 1]" = torch.ops.aten.permute.default(getitem_13, [1, 0])
        scaled_mm_default_2: "f32[64, 32]" = torch.ops.ufp4.scaled_mm.default(permute_default_2, permute_default_3, getitem_14, permute_default_4, permute_default_5, getitem_17, 'int4/16/fp32/stochastic', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        sum_1: "f32[1, 64]" = torch.ops.aten.sum.dim_IntList(tangents_1, [0], True)
        view: "f32[64]" = torch.ops.aten.reshape.default(sum_1, [64])
        return (scaled_mm_default_2, view, scaled_mm_default_1)
""")
        self.assert_lines(fw)
        self.assert_lines(bw)

    def test_mlp_3d_input(self):
        run = _run(MLP(32, 64), torch.randn(2, 8, 32))
        self.assertEqual((ufp4_gemms(run.forward), ufp4_gemms(run.backward)), (2, 3))  # no Dgrad for fc1
        self.assertEqual(eligible_matmuls(run.forward) + eligible_matmuls(run.backward), [])
        fw, bw = normalized(run.forward), normalized(run.backward)
        self.assertExpectedInline(fw, """\
class GraphModule(torch.nn.Module):
    def forward(self, primals_1: "f32[64, 32]", primals_2: "f32[64]", primals_3: "f32[2, 8, 32]", primals_4: "f32[32, 64]", primals_5: "f32[32]"):
        view: "f32[16, 32]" = torch.ops.aten.reshape.default(primals_3, [16, 32])
        getitem, getitem_1, getitem_2 = torch.ops.ufp4.quantize.default(view, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[16, 16], f32[16, 2], f32[]
        getitem_3, getitem_4, getitem_5 = torch.ops.ufp4.quantize.default(primals_1, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[64, 16], f32[64, 2], f32[]
        scaled_mm_default: "f32[16, 64]" = torch.ops.ufp4.scaled_mm.default(getitem, getitem_1, getitem_2, getitem_3, getitem_4, getitem_5, 'int4/16/fp32/nearest', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        getitem_15, getitem_16, getitem_17 = torch.ops.ufp4.quantize.default(view, 0, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[8, 32], f32[1, 32], f32[]
        permute_default_2: "u8[32, 8]" = torch.ops.aten.permute.default(getitem_15, [1, 0])
        permute_default_3: "f32[32, 1]" = torch.ops.aten.permute.default(getitem_16, [1, 0])
        add_tensor: "f32[16, 64]" = torch.ops.aten.add.Tensor(scaled_mm_default, primals_2)
        view_1: "f32[2, 8, 64]" = torch.ops.aten.reshape.default(add_tensor, [2, 8, 64])
        relu: "f32[2, 8, 64]" = torch.ops.aten.relu.default(view_1)
        view_2: "f32[16, 64]" = torch.ops.aten.reshape.default(relu, [16, 64])
        getitem_6, getitem_7, getitem_8 = torch.ops.ufp4.quantize.default(view_2, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[16, 32], f32[16, 4], f32[]
        getitem_9, getitem_10, getitem_11 = torch.ops.ufp4.quantize.default(primals_4, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[32, 32], f32[32, 4], f32[]
        scaled_mm_default_1: "f32[16, 32]" = torch.ops.ufp4.scaled_mm.default(getitem_6, getitem_7, getitem_8, getitem_9, getitem_10, getitem_11, 'int4/16/fp32/nearest', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        getitem_27, getitem_28, getitem_29 = torch.ops.ufp4.quantize.default(view_2, 0, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[8, 64], f32[1, 64], f32[]
        permute_default_8: "u8[64, 8]" = torch.ops.aten.permute.default(getitem_27, [1, 0])
        permute_default_9: "f32[64, 1]" = torch.ops.aten.permute.default(getitem_28, [1, 0])
        add_tensor_1: "f32[16, 32]" = torch.ops.aten.add.Tensor(scaled_mm_default_1, primals_5)
        view_3: "f32[2, 8, 32]" = torch.ops.aten.reshape.default(add_tensor_1, [2, 8, 32])
        le: "b8[2, 8, 64]" = torch.ops.aten.le.Scalar(relu, 0)
        return (view_3, primals_4, getitem_17, permute_default_2, permute_default_3, getitem_29, permute_default_8, permute_default_9, le)
""")
        self.assertExpectedInline(bw, """\
class GraphModule(torch.nn.Module):
    def forward(self, primals_4: "f32[32, 64]", getitem_17: "f32[]", permute_default_2: "u8[32, 8]", permute_default_3: "f32[32, 1]", getitem_29: "f32[]", permute_default_8: "u8[64, 8]", permute_default_9: "f32[64, 1]", le: "b8[2, 8, 64]", tangents_1: "f32[2, 8, 32]"):
        full_default: "i64[]" = torch.ops.aten.full.default([], 0, dtype = torch.int64, layout = torch.strided, device = device(type='cpu'), pin_memory = False)
        view_4: "f32[16, 32]" = torch.ops.aten.reshape.default(tangents_1, [16, 32])
        getitem_18, getitem_19, getitem_20 = torch.ops.ufp4.quantize.default(view_4, 1, 'int4/16/fp32/stochastic', 16, 0, full_default, 742084032791052288)  # u8[16, 16], f32[16, 2], f32[]
        getitem_21, getitem_22, getitem_23 = torch.ops.ufp4.quantize.default(primals_4, 0, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[16, 64], f32[2, 64], f32[]
        permute_default_4: "u8[64, 16]" = torch.ops.aten.permute.default(getitem_21, [1, 0])
        permute_default_5: "f32[64, 2]" = torch.ops.aten.permute.default(getitem_22, [1, 0])
        scaled_mm_default_3: "f32[16, 64]" = torch.ops.ufp4.scaled_mm.default(getitem_18, getitem_19, getitem_20, permute_default_4, permute_default_5, getitem_23, 'int4/16/fp32/stochastic', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        getitem_24, getitem_25, getitem_26 = torch.ops.ufp4.quantize.default(view_4, 0, 'int4/16/fp32/stochastic', 16, 0, full_default, 8616474066800345088)  # u8[8, 32], f32[1, 32], f32[]
        permute_default_6: "u8[32, 8]" = torch.ops.aten.permute.default(getitem_24, [1, 0])
        permute_default_7: "f32[32, 1]" = torch.ops.aten.permute.default(getitem_25, [1, 0])
        scaled_mm_default_4: "f32[32, 64]" = torch.ops.ufp4.scaled_mm.default(permute_default_6, permute_default_7, getitem_26, permute_default_8, permute_default_9, getitem_29, 'int4/16/fp32/stochastic', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        sum_1: "f32[1, 32]" = torch.ops.aten.sum.dim_IntList(view_4, [0], True)
        view_5: "f32[32]" = torch.ops.aten.reshape.default(sum_1, [32])
        view_6: "f32[2, 8, 64]" = torch.ops.aten.reshape.default(scaled_mm_default_3, [2, 8, 64])
        full_default_1: "f32[]" = torch.ops.aten.full.default([], 0.0, dtype = torch.float32, layout = torch.strided, device = device(type='cpu'), pin_memory = False)
        where: "f32[2, 8, 64]" = torch.ops.aten.where.self(le, full_default_1, view_6)
        view_7: "f32[16, 64]" = torch.ops.aten.reshape.default(where, [16, 64])
        getitem_12, getitem_13, getitem_14 = torch.ops.ufp4.quantize.default(view_7, 0, 'int4/16/fp32/stochastic', 16, 0, full_default, 2053607426824863744)  # u8[8, 64], f32[1, 64], f32[]
        permute_default: "u8[64, 8]" = torch.ops.aten.permute.default(getitem_12, [1, 0])
        permute_default_1: "f32[64, 1]" = torch.ops.aten.permute.default(getitem_13, [1, 0])
        scaled_mm_default_2: "f32[64, 32]" = torch.ops.ufp4.scaled_mm.default(permute_default, permute_default_1, getitem_14, permute_default_2, permute_default_3, getitem_17, 'int4/16/fp32/stochastic', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        sum_2: "f32[1, 64]" = torch.ops.aten.sum.dim_IntList(view_7, [0], True)
        view_8: "f32[64]" = torch.ops.aten.reshape.default(sum_2, [64])
        return (scaled_mm_default_2, view_8, None, scaled_mm_default_4, view_5)
""")
        self.assert_lines(fw)
        self.assert_lines(bw)

    def test_swiglu_mlp(self):
        run = _run(SwiGLU(32, 64), torch.randn(2, 8, 32))
        self.assertEqual((ufp4_gemms(run.forward), ufp4_gemms(run.backward)), (3, 4))
        self.assertEqual(eligible_matmuls(run.forward) + eligible_matmuls(run.backward), [])
        fw, bw = normalized(run.forward), normalized(run.backward)
        self.assert_lines(fw)
        self.assert_lines(bw)
        self.require_snapshot_torch()
        self.assertExpectedInline(fw, """\
class GraphModule(torch.nn.Module):
    def forward(self, primals_1: "f32[64, 32]", primals_2: "f32[2, 8, 32]", primals_3: "f32[64, 32]", primals_4: "f32[32, 64]"):
        view: "f32[16, 32]" = torch.ops.aten.reshape.default(primals_2, [16, 32])
        getitem, getitem_1, getitem_2 = torch.ops.ufp4.quantize.default(view, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[16, 16], f32[16, 2], f32[]
        getitem_3, getitem_4, getitem_5 = torch.ops.ufp4.quantize.default(primals_1, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[64, 16], f32[64, 2], f32[]
        getitem_21, getitem_22, getitem_23 = torch.ops.ufp4.quantize.default(view, 0, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[8, 32], f32[1, 32], f32[]
        permute_default_2: "u8[32, 8]" = torch.ops.aten.permute.default(getitem_21, [1, 0])
        permute_default_3: "f32[32, 1]" = torch.ops.aten.permute.default(getitem_22, [1, 0])
        scaled_mm_default: "f32[16, 64]" = torch.ops.ufp4.scaled_mm.default(getitem, getitem_1, getitem_2, getitem_3, getitem_4, getitem_5, 'int4/16/fp32/nearest', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        view_1: "f32[2, 8, 64]" = torch.ops.aten.reshape.default(scaled_mm_default, [2, 8, 64])
        neg: "f32[2, 8, 64]" = torch.ops.aten.neg.default(view_1)
        exp: "f32[2, 8, 64]" = torch.ops.aten.exp.default(neg)
        add: "f32[2, 8, 64]" = torch.ops.aten.add.Tensor(exp, 1)
        div: "f32[2, 8, 64]" = torch.ops.aten.div.Tensor(view_1, add)
        getitem_9, getitem_10, getitem_11 = torch.ops.ufp4.quantize.default(primals_3, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[64, 16], f32[64, 2], f32[]
        scaled_mm_default_1: "f32[16, 64]" = torch.ops.ufp4.scaled_mm.default(getitem, getitem_1, getitem_2, getitem_9, getitem_10, getitem_11, 'int4/16/fp32/nearest', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        view_3: "f32[2, 8, 64]" = torch.ops.aten.reshape.default(scaled_mm_default_1, [2, 8, 64])
        mul: "f32[2, 8, 64]" = torch.ops.aten.mul.Tensor(div, view_3)
        view_4: "f32[16, 64]" = torch.ops.aten.reshape.default(mul, [16, 64])
        getitem_12, getitem_13, getitem_14 = torch.ops.ufp4.quantize.default(view_4, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[16, 32], f32[16, 4], f32[]
        getitem_15, getitem_16, getitem_17 = torch.ops.ufp4.quantize.default(primals_4, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[32, 32], f32[32, 4], f32[]
        getitem_39, getitem_40, getitem_41 = torch.ops.ufp4.quantize.default(view_4, 0, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[8, 64], f32[1, 64], f32[]
        permute_default_12: "u8[64, 8]" = torch.ops.aten.permute.default(getitem_39, [1, 0])
        permute_default_13: "f32[64, 1]" = torch.ops.aten.permute.default(getitem_40, [1, 0])
        scaled_mm_default_2: "f32[16, 32]" = torch.ops.ufp4.scaled_mm.default(getitem_12, getitem_13, getitem_14, getitem_15, getitem_16, getitem_17, 'int4/16/fp32/nearest', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        view_5: "f32[2, 8, 32]" = torch.ops.aten.reshape.default(scaled_mm_default_2, [2, 8, 32])
        return (view_5, primals_4, getitem_23, permute_default_2, permute_default_3, scaled_mm_default, scaled_mm_default_1, getitem_41, permute_default_12, permute_default_13)
""")
        self.assertExpectedInline(bw, """\
class GraphModule(torch.nn.Module):
    def forward(self, primals_4: "f32[32, 64]", getitem_23: "f32[]", permute_default_2: "u8[32, 8]", permute_default_3: "f32[32, 1]", scaled_mm_default: "f32[16, 64]", scaled_mm_default_1: "f32[16, 64]", getitem_41: "f32[]", permute_default_12: "u8[64, 8]", permute_default_13: "f32[64, 1]", tangents_1: "f32[2, 8, 32]"):
        full_default: "i64[]" = torch.ops.aten.full.default([], 0, dtype = torch.int64, layout = torch.strided, device = device(type='cpu'), pin_memory = False)
        view_6: "f32[16, 32]" = torch.ops.aten.reshape.default(tangents_1, [16, 32])
        getitem_36, getitem_37, getitem_38 = torch.ops.ufp4.quantize.default(view_6, 0, 'int4/16/fp32/stochastic', 16, 0, full_default, 7189976378232537088)  # u8[8, 32], f32[1, 32], f32[]
        permute_default_10: "u8[32, 8]" = torch.ops.aten.permute.default(getitem_36, [1, 0])
        permute_default_11: "f32[32, 1]" = torch.ops.aten.permute.default(getitem_37, [1, 0])
        scaled_mm_default_6: "f32[32, 64]" = torch.ops.ufp4.scaled_mm.default(permute_default_10, permute_default_11, getitem_38, permute_default_12, permute_default_13, getitem_41, 'int4/16/fp32/stochastic', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        getitem_30, getitem_31, getitem_32 = torch.ops.ufp4.quantize.default(view_6, 1, 'int4/16/fp32/stochastic', 16, 0, full_default, 5742746684958441472)  # u8[16, 16], f32[16, 2], f32[]
        getitem_33, getitem_34, getitem_35 = torch.ops.ufp4.quantize.default(primals_4, 0, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[16, 64], f32[2, 64], f32[]
        permute_default_8: "u8[64, 16]" = torch.ops.aten.permute.default(getitem_33, [1, 0])
        permute_default_9: "f32[64, 2]" = torch.ops.aten.permute.default(getitem_34, [1, 0])
        scaled_mm_default_5: "f32[16, 64]" = torch.ops.ufp4.scaled_mm.default(getitem_30, getitem_31, getitem_32, permute_default_8, permute_default_9, getitem_35, 'int4/16/fp32/stochastic', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        view_7: "f32[2, 8, 64]" = torch.ops.aten.reshape.default(scaled_mm_default_5, [2, 8, 64])
        view_1: "f32[2, 8, 64]" = torch.ops.aten.reshape.default(scaled_mm_default, [2, 8, 64])
        neg: "f32[2, 8, 64]" = torch.ops.aten.neg.default(view_1)
        exp: "f32[2, 8, 64]" = torch.ops.aten.exp.default(neg)
        add: "f32[2, 8, 64]" = torch.ops.aten.add.Tensor(exp, 1)
        div: "f32[2, 8, 64]" = torch.ops.aten.div.Tensor(view_1, add)
        mul_1: "f32[2, 8, 64]" = torch.ops.aten.mul.Tensor(view_7, div)
        view_3: "f32[2, 8, 64]" = torch.ops.aten.reshape.default(scaled_mm_default_1, [2, 8, 64])
        mul_2: "f32[2, 8, 64]" = torch.ops.aten.mul.Tensor(view_7, view_3)
        view_8: "f32[16, 64]" = torch.ops.aten.reshape.default(mul_1, [16, 64])
        getitem_24, getitem_25, getitem_26 = torch.ops.ufp4.quantize.default(view_8, 0, 'int4/16/fp32/stochastic', 16, 0, full_default, 282453632253689856)  # u8[8, 64], f32[1, 64], f32[]
        permute_default_4: "u8[64, 8]" = torch.ops.aten.permute.default(getitem_24, [1, 0])
        permute_default_5: "f32[64, 1]" = torch.ops.aten.permute.default(getitem_25, [1, 0])
        scaled_mm_default_4: "f32[64, 32]" = torch.ops.ufp4.scaled_mm.default(permute_default_4, permute_default_5, getitem_26, permute_default_2, permute_default_3, getitem_23, 'int4/16/fp32/stochastic', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        sigmoid: "f32[2, 8, 64]" = torch.ops.aten.sigmoid.default(view_1)
        mul_3: "f32[2, 8, 64]" = torch.ops.aten.mul.Tensor(mul_2, sigmoid)
        sub: "f32[2, 8, 64]" = torch.ops.aten.sub.Tensor(1, sigmoid)
        mul_4: "f32[2, 8, 64]" = torch.ops.aten.mul.Tensor(view_1, sub)
        add_1: "f32[2, 8, 64]" = torch.ops.aten.add.Tensor(mul_4, 1)
        mul_5: "f32[2, 8, 64]" = torch.ops.aten.mul.Tensor(mul_3, add_1)
        view_9: "f32[16, 64]" = torch.ops.aten.reshape.default(mul_5, [16, 64])
        getitem_18, getitem_19, getitem_20 = torch.ops.ufp4.quantize.default(view_9, 0, 'int4/16/fp32/stochastic', 16, 0, full_default, 1501574580190314496)  # u8[8, 64], f32[1, 64], f32[]
        permute_default: "u8[64, 8]" = torch.ops.aten.permute.default(getitem_18, [1, 0])
        permute_default_1: "f32[64, 1]" = torch.ops.aten.permute.default(getitem_19, [1, 0])
        scaled_mm_default_3: "f32[64, 32]" = torch.ops.ufp4.scaled_mm.default(permute_default, permute_default_1, getitem_20, permute_default_2, permute_default_3, getitem_23, 'int4/16/fp32/stochastic', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        return (scaled_mm_default_3, None, scaled_mm_default_4, scaled_mm_default_6)
""")

    def test_attention_block(self):
        """QKV and output projections rewritten; SDPA stays one untouched op."""
        run = _run(Attention(32, 2), torch.randn(2, 16, 32))
        self.assertEqual((ufp4_gemms(run.forward), ufp4_gemms(run.backward)), (2, 3))
        self.assertEqual(sum(n.target is SDPA for n in run.forward.graph.nodes), 1)
        self.assertEqual(eligible_matmuls(run.forward) + eligible_matmuls(run.backward), [])
        fw, bw = normalized(run.forward), normalized(run.backward)
        self.assertExpectedInline(fw, """\
class GraphModule(torch.nn.Module):
    def forward(self, primals_1: "f32[2, 16, 32]", primals_2: "f32[96, 32]", primals_3: "f32[32, 32]"):
        view: "f32[32, 32]" = torch.ops.aten.reshape.default(primals_1, [32, 32])
        getitem_5, getitem_6, getitem_7 = torch.ops.ufp4.quantize.default(view, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[32, 16], f32[32, 2], f32[]
        getitem_8, getitem_9, getitem_10 = torch.ops.ufp4.quantize.default(primals_2, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[96, 16], f32[96, 2], f32[]
        getitem_20, getitem_21, getitem_22 = torch.ops.ufp4.quantize.default(view, 0, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[16, 32], f32[2, 32], f32[]
        permute_default_2: "u8[32, 16]" = torch.ops.aten.permute.default(getitem_20, [1, 0])
        permute_default_3: "f32[32, 2]" = torch.ops.aten.permute.default(getitem_21, [1, 0])
        scaled_mm_default: "f32[32, 96]" = torch.ops.ufp4.scaled_mm.default(getitem_5, getitem_6, getitem_7, getitem_8, getitem_9, getitem_10, 'int4/16/fp32/nearest', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        view_1: "f32[2, 16, 96]" = torch.ops.aten.reshape.default(scaled_mm_default, [2, 16, 96])
        view_2: "f32[2, 16, 3, 2, 16]" = torch.ops.aten.reshape.default(view_1, [2, 16, 3, 2, 16])
        permute_1: "f32[3, 2, 2, 16, 16]" = torch.ops.aten.permute.default(view_2, [2, 0, 3, 1, 4])
        select: "f32[2, 2, 16, 16]" = torch.ops.aten.select.int(permute_1, 0, 0)
        select_1: "f32[2, 2, 16, 16]" = torch.ops.aten.select.int(permute_1, 0, 1)
        select_2: "f32[2, 2, 16, 16]" = torch.ops.aten.select.int(permute_1, 0, 2)
        getitem, getitem_1 = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default(select, select_1, select_2, 0.0, True)  # f32[2, 2, 16, 16], f32[2, 2, 16]
        permute_2: "f32[2, 16, 2, 16]" = torch.ops.aten.permute.default(getitem, [0, 2, 1, 3])
        view_3: "f32[2, 16, 32]" = torch.ops.aten.reshape.default(permute_2, [2, 16, 32])
        view_4: "f32[32, 32]" = torch.ops.aten.reshape.default(view_3, [32, 32])
        getitem_11, getitem_12, getitem_13 = torch.ops.ufp4.quantize.default(view_4, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[32, 16], f32[32, 2], f32[]
        getitem_14, getitem_15, getitem_16 = torch.ops.ufp4.quantize.default(primals_3, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[32, 16], f32[32, 2], f32[]
        scaled_mm_default_1: "f32[32, 32]" = torch.ops.ufp4.scaled_mm.default(getitem_11, getitem_12, getitem_13, getitem_14, getitem_15, getitem_16, 'int4/16/fp32/nearest', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        view_5: "f32[2, 16, 32]" = torch.ops.aten.reshape.default(scaled_mm_default_1, [2, 16, 32])
        return (view_5, primals_3, getitem_22, permute_default_2, permute_default_3, select, select_1, select_2, getitem, getitem_1)
""")
        self.assertExpectedInline(bw, """\
class GraphModule(torch.nn.Module):
    def forward(self, primals_3: "f32[32, 32]", getitem_22: "f32[]", permute_default_2: "u8[32, 16]", permute_default_3: "f32[32, 2]", select: "f32[2, 2, 16, 16]", select_1: "f32[2, 2, 16, 16]", select_2: "f32[2, 2, 16, 16]", getitem: "f32[2, 2, 16, 16]", getitem_1: "f32[2, 2, 16]", tangents_1: "f32[2, 16, 32]"):
        full_default: "i64[]" = torch.ops.aten.full.default([], 0, dtype = torch.int64, layout = torch.strided, device = device(type='cpu'), pin_memory = False)
        view_6: "f32[32, 32]" = torch.ops.aten.reshape.default(tangents_1, [32, 32])
        getitem_29, getitem_30, getitem_31 = torch.ops.ufp4.quantize.default(view_6, 0, 'int4/16/fp32/stochastic', 16, 0, full_default, 8589448839788756992)  # u8[16, 32], f32[2, 32], f32[]
        permute_default_6: "u8[32, 16]" = torch.ops.aten.permute.default(getitem_29, [1, 0])
        permute_default_7: "f32[32, 2]" = torch.ops.aten.permute.default(getitem_30, [1, 0])
        permute_2: "f32[2, 16, 2, 16]" = torch.ops.aten.permute.default(getitem, [0, 2, 1, 3])
        view_3: "f32[2, 16, 32]" = torch.ops.aten.reshape.default(permute_2, [2, 16, 32])
        view_4: "f32[32, 32]" = torch.ops.aten.reshape.default(view_3, [32, 32])
        getitem_32, getitem_33, getitem_34 = torch.ops.ufp4.quantize.default(view_4, 0, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[16, 32], f32[2, 32], f32[]
        permute_default_8: "u8[32, 16]" = torch.ops.aten.permute.default(getitem_32, [1, 0])
        permute_default_9: "f32[32, 2]" = torch.ops.aten.permute.default(getitem_33, [1, 0])
        scaled_mm_default_4: "f32[32, 32]" = torch.ops.ufp4.scaled_mm.default(permute_default_6, permute_default_7, getitem_31, permute_default_8, permute_default_9, getitem_34, 'int4/16/fp32/stochastic', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        getitem_23, getitem_24, getitem_25 = torch.ops.ufp4.quantize.default(view_6, 1, 'int4/16/fp32/stochastic', 16, 0, full_default, 8860838769431937024)  # u8[32, 16], f32[32, 2], f32[]
        getitem_26, getitem_27, getitem_28 = torch.ops.ufp4.quantize.default(primals_3, 0, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[16, 32], f32[2, 32], f32[]
        permute_default_4: "u8[32, 16]" = torch.ops.aten.permute.default(getitem_26, [1, 0])
        permute_default_5: "f32[32, 2]" = torch.ops.aten.permute.default(getitem_27, [1, 0])
        scaled_mm_default_3: "f32[32, 32]" = torch.ops.ufp4.scaled_mm.default(getitem_23, getitem_24, getitem_25, permute_default_4, permute_default_5, getitem_28, 'int4/16/fp32/stochastic', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        view_7: "f32[2, 16, 32]" = torch.ops.aten.reshape.default(scaled_mm_default_3, [2, 16, 32])
        view_8: "f32[2, 16, 2, 16]" = torch.ops.aten.reshape.default(view_7, [2, 16, 2, 16])
        permute_8: "f32[2, 2, 16, 16]" = torch.ops.aten.permute.default(view_8, [0, 2, 1, 3])
        getitem_2, getitem_3, getitem_4 = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default(permute_8, select, select_1, select_2, getitem, getitem_1, 0.0, True)  # f32[2, 2, 16, 16], f32[2, 2, 16, 16], f32[2, 2, 16, 16]
        full_default_1: "f32[3, 2, 2, 16, 16]" = torch.ops.aten.full.default([3, 2, 2, 16, 16], 0, dtype = torch.float32, layout = torch.strided, device = device(type='cpu'), pin_memory = False)
        select_scatter_default: "f32[3, 2, 2, 16, 16]" = torch.ops.aten.select_scatter.default(full_default_1, getitem_4, 0, 2)
        select_scatter_default_1: "f32[3, 2, 2, 16, 16]" = torch.ops.aten.select_scatter.default(full_default_1, getitem_3, 0, 1)
        add: "f32[3, 2, 2, 16, 16]" = torch.ops.aten.add.Tensor(select_scatter_default, select_scatter_default_1)
        select_scatter_default_2: "f32[3, 2, 2, 16, 16]" = torch.ops.aten.select_scatter.default(full_default_1, getitem_2, 0, 0)
        add_1: "f32[3, 2, 2, 16, 16]" = torch.ops.aten.add.Tensor(add, select_scatter_default_2)
        permute_9: "f32[2, 16, 3, 2, 16]" = torch.ops.aten.permute.default(add_1, [1, 3, 0, 2, 4])
        clone: "f32[2, 16, 3, 2, 16]" = torch.ops.aten.clone.default(permute_9, memory_format = torch.contiguous_format)
        view_9: "f32[2, 16, 96]" = torch.ops.aten.reshape.default(clone, [2, 16, 96])
        view_10: "f32[32, 96]" = torch.ops.aten.reshape.default(view_9, [32, 96])
        getitem_17, getitem_18, getitem_19 = torch.ops.ufp4.quantize.default(view_10, 0, 'int4/16/fp32/stochastic', 16, 0, full_default, 9078047119700393984)  # u8[16, 96], f32[2, 96], f32[]
        permute_default: "u8[96, 16]" = torch.ops.aten.permute.default(getitem_17, [1, 0])
        permute_default_1: "f32[96, 2]" = torch.ops.aten.permute.default(getitem_18, [1, 0])
        scaled_mm_default_2: "f32[96, 32]" = torch.ops.ufp4.scaled_mm.default(permute_default, permute_default_1, getitem_19, permute_default_2, permute_default_3, getitem_22, 'int4/16/fp32/stochastic', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        return (None, scaled_mm_default_2, scaled_mm_default_4)
""")
        self.assert_lines(fw)
        self.assert_lines(bw)

    def test_tied_embedding_head_kept(self):
        run = _run(TiedHead(64, 32), torch.randint(0, 64, (2, 8)))
        kept = [r for r in run.report.rows if not r.rewritten]
        self.assertEqual({r.module for r in kept}, {"unembed"})
        self.assertEqual(len(eligible_matmuls(run.forward) + eligible_matmuls(run.backward)), len(kept))
        self.assertEqual((ufp4_gemms(run.forward), ufp4_gemms(run.backward)), (1, 2))
        fw, bw = normalized(run.forward), normalized(run.backward)
        self.assert_lines(fw)
        self.assert_lines(bw)
        self.require_snapshot_torch()
        self.assertExpectedInline(fw, """\
class GraphModule(torch.nn.Module):
    def forward(self, primals_1: "f32[64, 32]", primals_2: "i64[2, 8]", primals_3: "f32[32, 32]"):
        embedding: "f32[2, 8, 32]" = torch.ops.aten.embedding.default(primals_1, primals_2)
        view: "f32[16, 32]" = torch.ops.aten.reshape.default(embedding, [16, 32])
        getitem, getitem_1, getitem_2 = torch.ops.ufp4.quantize.default(view, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[16, 16], f32[16, 2], f32[]
        getitem_3, getitem_4, getitem_5 = torch.ops.ufp4.quantize.default(primals_3, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[32, 16], f32[32, 2], f32[]
        getitem_15, getitem_16, getitem_17 = torch.ops.ufp4.quantize.default(view, 0, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[8, 32], f32[1, 32], f32[]
        permute_default_4: "u8[32, 8]" = torch.ops.aten.permute.default(getitem_15, [1, 0])
        permute_default_5: "f32[32, 1]" = torch.ops.aten.permute.default(getitem_16, [1, 0])
        scaled_mm_default: "f32[16, 32]" = torch.ops.ufp4.scaled_mm.default(getitem, getitem_1, getitem_2, getitem_3, getitem_4, getitem_5, 'int4/16/fp32/nearest', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        view_1: "f32[2, 8, 32]" = torch.ops.aten.reshape.default(scaled_mm_default, [2, 8, 32])
        relu: "f32[2, 8, 32]" = torch.ops.aten.relu.default(view_1)
        permute_1: "f32[32, 64]" = torch.ops.aten.permute.default(primals_1, [1, 0])
        view_2: "f32[16, 32]" = torch.ops.aten.reshape.default(relu, [16, 32])
        mm_1: "f32[16, 64]" = torch.ops.aten.mm.default(view_2, permute_1)
        view_3: "f32[2, 8, 64]" = torch.ops.aten.reshape.default(mm_1, [2, 8, 64])
        le: "b8[2, 8, 32]" = torch.ops.aten.le.Scalar(relu, 0)
        return (view_3, primals_1, primals_2, primals_3, getitem_17, permute_default_4, permute_default_5, view_2, le)
""")
        self.assertExpectedInline(bw, """\
class GraphModule(torch.nn.Module):
    def forward(self, primals_1: "f32[64, 32]", primals_2: "i64[2, 8]", primals_3: "f32[32, 32]", getitem_17: "f32[]", permute_default_4: "u8[32, 8]", permute_default_5: "f32[32, 1]", view_2: "f32[16, 32]", le: "b8[2, 8, 32]", tangents_1: "f32[2, 8, 64]"):
        full_default: "i64[]" = torch.ops.aten.full.default([], 0, dtype = torch.int64, layout = torch.strided, device = device(type='cpu'), pin_memory = False)
        view_4: "f32[16, 64]" = torch.ops.aten.reshape.default(tangents_1, [16, 64])
        permute_2: "f32[64, 16]" = torch.ops.aten.permute.default(view_4, [1, 0])
        permute_1: "f32[32, 64]" = torch.ops.aten.permute.default(primals_1, [1, 0])
        permute_4: "f32[64, 32]" = torch.ops.aten.permute.default(permute_1, [1, 0])
        mm_3: "f32[16, 32]" = torch.ops.aten.mm.default(view_4, permute_4)
        view_5: "f32[2, 8, 32]" = torch.ops.aten.reshape.default(mm_3, [2, 8, 32])
        full_default_1: "f32[]" = torch.ops.aten.full.default([], 0.0, dtype = torch.float32, layout = torch.strided, device = device(type='cpu'), pin_memory = False)
        where: "f32[2, 8, 32]" = torch.ops.aten.where.self(le, full_default_1, view_5)
        view_6: "f32[16, 32]" = torch.ops.aten.reshape.default(where, [16, 32])
        getitem_12, getitem_13, getitem_14 = torch.ops.ufp4.quantize.default(view_6, 0, 'int4/16/fp32/stochastic', 16, 0, full_default, 3239240600653922304)  # u8[8, 32], f32[1, 32], f32[]
        permute_default_2: "u8[32, 8]" = torch.ops.aten.permute.default(getitem_12, [1, 0])
        permute_default_3: "f32[32, 1]" = torch.ops.aten.permute.default(getitem_13, [1, 0])
        scaled_mm_default_2: "f32[32, 32]" = torch.ops.ufp4.scaled_mm.default(permute_default_2, permute_default_3, getitem_14, permute_default_4, permute_default_5, getitem_17, 'int4/16/fp32/stochastic', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        getitem_6, getitem_7, getitem_8 = torch.ops.ufp4.quantize.default(view_6, 1, 'int4/16/fp32/stochastic', 16, 0, full_default, 1078694063026208768)  # u8[16, 16], f32[16, 2], f32[]
        getitem_9, getitem_10, getitem_11 = torch.ops.ufp4.quantize.default(primals_3, 0, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[16, 32], f32[2, 32], f32[]
        permute_default: "u8[32, 16]" = torch.ops.aten.permute.default(getitem_9, [1, 0])
        permute_default_1: "f32[32, 2]" = torch.ops.aten.permute.default(getitem_10, [1, 0])
        scaled_mm_default_1: "f32[16, 32]" = torch.ops.ufp4.scaled_mm.default(getitem_6, getitem_7, getitem_8, permute_default, permute_default_1, getitem_11, 'int4/16/fp32/stochastic', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        view_7: "f32[2, 8, 32]" = torch.ops.aten.reshape.default(scaled_mm_default_1, [2, 8, 32])
        ge: "b8[2, 8]" = torch.ops.aten.ge.Scalar(primals_2, 0)
        lt: "b8[2, 8]" = torch.ops.aten.lt.Scalar(primals_2, 64)
        bitwise_and: "b8[2, 8]" = torch.ops.aten.bitwise_and.Tensor(ge, lt)
        ne: "b8[2, 8]" = torch.ops.aten.ne.Scalar(primals_2, -1)
        bitwise_and_1: "b8[2, 8]" = torch.ops.aten.bitwise_and.Tensor(bitwise_and, ne)
        unsqueeze: "b8[2, 8, 1]" = torch.ops.aten.unsqueeze.default(bitwise_and_1, -1)
        full_default_2: "f32[64, 32]" = torch.ops.aten.full.default([64, 32], 0, dtype = torch.float32, layout = torch.strided, device = device(type='cpu'), pin_memory = False)
        _unsafe_masked_index_put_accumulate: "f32[64, 32]" = torch.ops.aten._unsafe_masked_index_put_accumulate.default(full_default_2, unsqueeze, [primals_2], view_7)
        addmm_default: "f32[64, 32]" = torch.ops.aten.addmm.default(_unsafe_masked_index_put_accumulate, permute_2, view_2)
        return (addmm_default, None, scaled_mm_default_2)
""")

    def test_inference_only_graph(self):
        run = _run(MLP(32, 64), torch.randn(2, 8, 32), backward=False)
        self.assertEqual(run.capture.backward, [])
        self.assertEqual(ufp4_gemms(run.forward), 2)
        self.assertEqual(eligible_matmuls(run.forward), [])
        fw = normalized(run.forward)
        self.assertExpectedInline(fw, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[64, 32]", arg1_1: "f32[64]", arg2_1: "f32[2, 8, 32]", arg3_1: "f32[32, 64]", arg4_1: "f32[32]"):
        view: "f32[16, 32]" = torch.ops.aten.reshape.default(arg2_1, [16, 32])
        getitem, getitem_1, getitem_2 = torch.ops.ufp4.quantize.default(view, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[16, 16], f32[16, 2], f32[]
        getitem_3, getitem_4, getitem_5 = torch.ops.ufp4.quantize.default(arg0_1, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[64, 16], f32[64, 2], f32[]
        scaled_mm_default: "f32[16, 64]" = torch.ops.ufp4.scaled_mm.default(getitem, getitem_1, getitem_2, getitem_3, getitem_4, getitem_5, 'int4/16/fp32/nearest', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        add_tensor: "f32[16, 64]" = torch.ops.aten.add.Tensor(scaled_mm_default, arg1_1)
        view_1: "f32[2, 8, 64]" = torch.ops.aten.reshape.default(add_tensor, [2, 8, 64])
        relu: "f32[2, 8, 64]" = torch.ops.aten.relu.default(view_1)
        view_2: "f32[16, 64]" = torch.ops.aten.reshape.default(relu, [16, 64])
        getitem_6, getitem_7, getitem_8 = torch.ops.ufp4.quantize.default(view_2, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[16, 32], f32[16, 4], f32[]
        getitem_9, getitem_10, getitem_11 = torch.ops.ufp4.quantize.default(arg3_1, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[32, 32], f32[32, 4], f32[]
        scaled_mm_default_1: "f32[16, 32]" = torch.ops.ufp4.scaled_mm.default(getitem_6, getitem_7, getitem_8, getitem_9, getitem_10, getitem_11, 'int4/16/fp32/nearest', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        add_tensor_1: "f32[16, 32]" = torch.ops.aten.add.Tensor(scaled_mm_default_1, arg4_1)
        view_3: "f32[2, 8, 32]" = torch.ops.aten.reshape.default(add_tensor_1, [2, 8, 32])
        return (view_3,)
""")
        self.assert_lines(fw)

    def test_ufp4_vs_nvfp4(self):
        """Same model: ufp4 rotates (RHT 16) every GEMM's operands with FP32 scales; nvfp4 rotates only
        Wgrad, uses E4M3 scales with a tensor scale and 16x16 weight blocks. Both round dY stochastically."""
        graphs = {}
        for recipe in ("ufp4", "nvfp4"):
            torch.manual_seed(0)
            run = _run(nn.Linear(32, 32), torch.randn(16, 32, requires_grad=True), recipe=recipe)
            self.assertEqual((ufp4_gemms(run.forward), ufp4_gemms(run.backward)), (1, 2))
            graphs[recipe] = (normalized(run.forward), normalized(run.backward))
        for fw, bw in graphs.values():
            self.assert_lines(fw)
            self.assert_lines(bw)
        self.assertIn("'int4/16/fp32/nearest', 16,", graphs["ufp4"][0])
        self.assertIn("'e2m1/16x16/e4m3/nearest', 0,", graphs["nvfp4"][0])
        self.assertExpectedInline(graphs["ufp4"][0], """\
class GraphModule(torch.nn.Module):
    def forward(self, primals_1: "f32[32, 32]", primals_2: "f32[32]", primals_3: "f32[16, 32]"):
        getitem, getitem_1, getitem_2 = torch.ops.ufp4.quantize.default(primals_3, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[16, 16], f32[16, 2], f32[]
        getitem_3, getitem_4, getitem_5 = torch.ops.ufp4.quantize.default(primals_1, 1, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[32, 16], f32[32, 2], f32[]
        scaled_mm_default: "f32[16, 32]" = torch.ops.ufp4.scaled_mm.default(getitem, getitem_1, getitem_2, getitem_3, getitem_4, getitem_5, 'int4/16/fp32/nearest', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        add_tensor: "f32[16, 32]" = torch.ops.aten.add.Tensor(scaled_mm_default, primals_2)
        getitem_15, getitem_16, getitem_17 = torch.ops.ufp4.quantize.default(primals_3, 0, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[8, 32], f32[1, 32], f32[]
        permute_default_4: "u8[32, 8]" = torch.ops.aten.permute.default(getitem_15, [1, 0])
        permute_default_5: "f32[32, 1]" = torch.ops.aten.permute.default(getitem_16, [1, 0])
        return (add_tensor, primals_1, getitem_17, permute_default_4, permute_default_5)
""")
        self.assertExpectedInline(graphs["ufp4"][1], """\
class GraphModule(torch.nn.Module):
    def forward(self, primals_1: "f32[32, 32]", getitem_17: "f32[]", permute_default_4: "u8[32, 8]", permute_default_5: "f32[32, 1]", tangents_1: "f32[16, 32]"):
        full_default: "i64[]" = torch.ops.aten.full.default([], 0, dtype = torch.int64, layout = torch.strided, device = device(type='cpu'), pin_memory = False)
        getitem_6, getitem_7, getitem_8 = torch.ops.ufp4.quantize.default(tangents_1, 1, 'int4/16/fp32/stochastic', 16, 0, full_default, 3550901822996611072)  # u8[16, 16], f32[16, 2], f32[]
        getitem_9, getitem_10, getitem_11 = torch.ops.ufp4.quantize.default(primals_1, 0, 'int4/16/fp32/nearest', 16, 0, None, 0)  # u8[16, 32], f32[2, 32], f32[]
        permute_default: "u8[32, 16]" = torch.ops.aten.permute.default(getitem_9, [1, 0])
        permute_default_1: "f32[32, 2]" = torch.ops.aten.permute.default(getitem_10, [1, 0])
        scaled_mm_default_1: "f32[16, 32]" = torch.ops.ufp4.scaled_mm.default(getitem_6, getitem_7, getitem_8, permute_default, permute_default_1, getitem_11, 'int4/16/fp32/stochastic', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        getitem_12, getitem_13, getitem_14 = torch.ops.ufp4.quantize.default(tangents_1, 0, 'int4/16/fp32/stochastic', 16, 0, full_default, 9070690991773581312)  # u8[8, 32], f32[1, 32], f32[]
        permute_default_2: "u8[32, 8]" = torch.ops.aten.permute.default(getitem_12, [1, 0])
        permute_default_3: "f32[32, 1]" = torch.ops.aten.permute.default(getitem_13, [1, 0])
        scaled_mm_default_2: "f32[32, 32]" = torch.ops.ufp4.scaled_mm.default(permute_default_2, permute_default_3, getitem_14, permute_default_4, permute_default_5, getitem_17, 'int4/16/fp32/stochastic', 'int4/16/fp32/nearest', 'bf16', torch.float32)
        sum_1: "f32[1, 32]" = torch.ops.aten.sum.dim_IntList(tangents_1, [0], True)
        view: "f32[32]" = torch.ops.aten.reshape.default(sum_1, [32])
        return (scaled_mm_default_2, view, scaled_mm_default_1)
""")
        self.assertExpectedInline(graphs["nvfp4"][0], """\
class GraphModule(torch.nn.Module):
    def forward(self, primals_1: "f32[32, 32]", primals_2: "f32[32]", primals_3: "f32[16, 32]"):
        getitem, getitem_1, getitem_2 = torch.ops.ufp4.quantize.default(primals_3, 1, 'e2m1/16/e4m3/nearest', 0, 0, None, 0)  # u8[16, 16], f8e4m3fn[16, 2], f32[]
        getitem_3, getitem_4, getitem_5 = torch.ops.ufp4.quantize.default(primals_1, 1, 'e2m1/16x16/e4m3/nearest', 0, 0, None, 0)  # u8[32, 16], f8e4m3fn[32, 2], f32[]
        scaled_mm_default: "f32[16, 32]" = torch.ops.ufp4.scaled_mm.default(getitem, getitem_1, getitem_2, getitem_3, getitem_4, getitem_5, 'e2m1/16/e4m3/nearest', 'e2m1/16x16/e4m3/nearest', 'bf16', torch.float32)
        add_tensor: "f32[16, 32]" = torch.ops.aten.add.Tensor(scaled_mm_default, primals_2)
        getitem_15, getitem_16, getitem_17 = torch.ops.ufp4.quantize.default(primals_3, 0, 'e2m1/16/e4m3/nearest', 16, 0, None, 0)  # u8[8, 32], f8e4m3fn[1, 32], f32[]
        permute_default_4: "u8[32, 8]" = torch.ops.aten.permute.default(getitem_15, [1, 0])
        permute_default_5: "f8e4m3fn[32, 1]" = torch.ops.aten.permute.default(getitem_16, [1, 0])
        return (add_tensor, primals_1, getitem_17, permute_default_4, permute_default_5)
""")
        self.assertExpectedInline(graphs["nvfp4"][1], """\
class GraphModule(torch.nn.Module):
    def forward(self, primals_1: "f32[32, 32]", getitem_17: "f32[]", permute_default_4: "u8[32, 8]", permute_default_5: "f8e4m3fn[32, 1]", tangents_1: "f32[16, 32]"):
        full_default: "i64[]" = torch.ops.aten.full.default([], 0, dtype = torch.int64, layout = torch.strided, device = device(type='cpu'), pin_memory = False)
        getitem_6, getitem_7, getitem_8 = torch.ops.ufp4.quantize.default(tangents_1, 1, 'e2m1/16/e4m3/stochastic', 0, 0, full_default, 3550901822996611072)  # u8[16, 16], f8e4m3fn[16, 2], f32[]
        getitem_9, getitem_10, getitem_11 = torch.ops.ufp4.quantize.default(primals_1, 0, 'e2m1/16x16/e4m3/nearest', 0, 0, None, 0)  # u8[16, 32], f8e4m3fn[2, 32], f32[]
        permute_default: "u8[32, 16]" = torch.ops.aten.permute.default(getitem_9, [1, 0])
        permute_default_1: "f8e4m3fn[32, 2]" = torch.ops.aten.permute.default(getitem_10, [1, 0])
        scaled_mm_default_1: "f32[16, 32]" = torch.ops.ufp4.scaled_mm.default(getitem_6, getitem_7, getitem_8, permute_default, permute_default_1, getitem_11, 'e2m1/16/e4m3/stochastic', 'e2m1/16x16/e4m3/nearest', 'bf16', torch.float32)
        getitem_12, getitem_13, getitem_14 = torch.ops.ufp4.quantize.default(tangents_1, 0, 'e2m1/16/e4m3/stochastic', 16, 0, full_default, 9070690991773581312)  # u8[8, 32], f8e4m3fn[1, 32], f32[]
        permute_default_2: "u8[32, 8]" = torch.ops.aten.permute.default(getitem_12, [1, 0])
        permute_default_3: "f8e4m3fn[32, 1]" = torch.ops.aten.permute.default(getitem_13, [1, 0])
        scaled_mm_default_2: "f32[32, 32]" = torch.ops.ufp4.scaled_mm.default(permute_default_2, permute_default_3, getitem_14, permute_default_4, permute_default_5, getitem_17, 'e2m1/16/e4m3/stochastic', 'e2m1/16/e4m3/nearest', 'bf16', torch.float32)
        sum_1: "f32[1, 32]" = torch.ops.aten.sum.dim_IntList(tangents_1, [0], True)
        view: "f32[32]" = torch.ops.aten.reshape.default(sum_1, [32])
        return (scaled_mm_default_2, view, scaled_mm_default_1)
""")
