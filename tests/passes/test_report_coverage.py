"""Every matrix product gets a report row, with the right reason (issue 16 item 9)."""

import torch
from torch import nn

from ufp4_compile.testing import compile_and_run

FIXED = {"sr_seed_policy": "fixed"}


def _rows(model, *inputs, **kwargs):
    return compile_and_run(model, *inputs, options=FIXED, backend="aot", **kwargs).report.rows


class _BertLike(nn.Module):
    """Blocks with an ``output`` projection each (BERT's naming) and a top-level ``output`` head."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleDict({"inner": nn.Linear(32, 64), "output": nn.Linear(64, 32)})
                                    for _ in range(2))
        self.output = nn.Linear(32, 48)

    def forward(self, x):
        for layer in self.layers:
            x = x + layer["output"](torch.relu(layer["inner"](x)))
        return self.output(x)


def test_block_output_projections_are_not_the_head():
    rows = _rows(_BertLike(), torch.randn(64, 32, requires_grad=True))
    for row in rows:
        if row.module.startswith("layers."):
            assert row.rewritten, (row.module, row.reason)
        else:
            assert row.module == "output" and not row.rewritten and "output head" in row.reason


class _Baddbmm(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(2, 32, 32))

    def forward(self, x):
        return torch.baddbmm(x, x, self.w)


def test_baddbmm_forward_and_backward_rows_share_one_reason():
    rows = _rows(_Baddbmm(), torch.randn(2, 16, 32, requires_grad=True))
    assert any(r.kind == "baddbmm" and r.role == "fprop" for r in rows)
    assert rows and all(not r.rewritten and r.reason.startswith("baddbmm is not rewritten") for r in rows)


def test_bilinear_has_a_row():
    rows = _rows(nn.Bilinear(32, 32, 16), torch.randn(8, 32, requires_grad=True), torch.randn(8, 32))
    assert any(r.kind == "_trilinear" and "bilinear" in r.reason for r in rows)


def test_complex_matmul_reason_names_complex():
    class Complex(nn.Module):
        def forward(self, a, b):
            return a @ b

    a = torch.randn(16, 32, dtype=torch.complex64)
    rows = _rows(Complex(), a, a.t().contiguous(), backward=False)
    assert rows and all("complex dtype" in r.reason for r in rows)


def test_a_symint_fixed_to_a_number_is_a_static_dim():
    """A size the guards fixed prints as a number ("K=64") but is a SymInt: it must not read as dynamic."""
    import sympy
    from torch.fx.experimental.sym_node import SymNode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    from ufp4_compile.passes.policy import LayerPolicy, SiteFacts, site_keep_reason

    fixed = torch.SymInt(SymNode(sympy.Integer(64), ShapeEnv(), int, hint=64))
    facts = SiteFacts("fc", "mm", torch.float32, None, 48, fixed, fixed)
    assert site_keep_reason(facts, LayerPolicy(), {}) is None


def test_dynamic_compile_keeps_no_constant_feature_dims_as_dynamic():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    rows = _rows(model, torch.randn(48, 64, requires_grad=True), dynamic=True)
    assert rows
    assert not [r for r in rows if r.reason and r.reason.startswith("dynamic shape")], \
        [(r.module, r.role, r.reason) for r in rows]
