"""The peer of benchmarks/train_step.py: a recipe written by hand as plain-PyTorch fake quantization.

What a user would write without the backend: a ``torch.autograd.Function`` that quantizes and dequantizes
the operands of each GEMM of a linear layer in plain PyTorch and leaves the rest to Inductor. It reads the
recipe's grid, block, RHT per GEMM and rounding per operand. Kept simple on purpose: every block scale is
an FP32 amax / q_max (E4M3 two-level and E8M0 scales are approximated by it), NVFP4's 16x16 weight blocks
are 1x16 blocks, the RHT signs come from torch's generator and the rounding noise from ``torch.rand_like``
(not Philox). A recipe with the mean-residual split (``ufp4-mean``) gets it as Averis writes it: the
per-channel mean over the tokens (where the backend takes the median of a sample of them), the residual and
the mean each fake-quantized, and the rank-one product added. Its numerics are close to the backend's; its
cost is what the benchmark compares against.
"""

import torch
from torch import nn

from ufp4_compile.recipes import Grid, MeanSplit, Rounding, get_recipe


def rht_matrix(seed: int) -> torch.Tensor:
    """``diag(s) H / 4``: the 16x16 Sylvester Hadamard with random row signs, orthogonal, so rotating both
    operands of a GEMM along its reduction axis leaves the product unchanged."""
    h = torch.ones(1, 1)
    while h.shape[0] < 16:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    signs = torch.randint(0, 2, (16,), generator=torch.Generator().manual_seed(seed)) * 2.0 - 1.0
    return signs[:, None] * h / 4


def fake_quant(x, dim, grid, rht=None, stochastic=False, block=16):
    """Quantize-dequantize ``x`` in blocks of ``block`` along ``dim`` (rotated first by ``rht``, 16x16, if
    given; the result stays in the rotated domain), in ``x``'s dtype."""
    v = x.float().movedim(dim, -1)
    if rht is not None:
        v = (v.unflatten(-1, (-1, 16)) @ rht.float()).flatten(-2)
    v = v.unflatten(-1, (-1, block))
    q_max = 7.0 if grid is Grid.INT4 else 6.0
    scale = v.abs().amax(-1, keepdim=True) / q_max
    y = (v / torch.where(scale > 0, scale, 1.0)).clamp(-q_max, q_max)
    a = y.abs()  # E2M1's grid points are 0.5 apart below 2, 1 apart up to 4, then 4 and 6
    step = 1.0 if grid is Grid.INT4 else torch.where(a < 2, 0.5, torch.where(a < 4, 1.0, 2.0))
    level = torch.floor(a / step + torch.rand_like(a)) if stochastic else torch.round(a / step)
    return (torch.sign(y) * level * step * scale).flatten(-2).movedim(-1, dim).to(x.dtype)


def fake_quant_operand(t, dim, gemm, fmt, rht):
    """One operand of a GEMM (``fmt``: its ``OperandFormat`` in ``gemm``) along its reduction dim."""
    if gemm.rht not in (0, 16):
        raise ValueError(f"rht={gemm.rht}: this peer implements RHT-16 only; valid values: 0, 16")
    return fake_quant(t, dim, fmt.grid, rht if gemm.rht else None, fmt.rounding is Rounding.STOCHASTIC, fmt.block)


def fake_quant_pair(a, a_dim, b, b_dim, gemm, rht):
    """Both operands of one GEMM (a ``GemmRecipe``, ``None`` = high precision), along their reduction dims."""
    if gemm is None:
        return a, b
    return fake_quant_operand(a, a_dim, gemm, gemm.a, rht), fake_quant_operand(b, b_dim, gemm, gemm.b, rht)


def split_product(a, b, gemm, rht):
    """``a @ b`` for a GEMM whose first operand ``a`` (tokens, reduction) is fake-quantized by ``gemm`` and
    whose second ``b`` (reduction, out) is already: with the recipe's mean-residual split, Averis's
    ``q(a - mu) @ b + q(mu) @ b`` (``mu`` the per-channel mean over the tokens; left unquantized where the
    split keeps it in high precision), else ``q(a) @ b``."""
    if gemm is None:
        return a @ b
    if gemm.mean_split is MeanSplit.OFF:
        return fake_quant_operand(a, 1, gemm, gemm.a, rht) @ b
    mu = a.float().mean(0, keepdim=True)
    residual = fake_quant_operand((a.float() - mu).to(a.dtype), 1, gemm, gemm.a, rht)
    if gemm.mean_split is MeanSplit.FP4:
        mu = fake_quant_operand(mu, 1, gemm, gemm.a, rht)
    return residual @ b + mu.to(a.dtype) @ b  # GEMMs in the operands' dtype, as the unsplit product


class QDQLinearFn(torch.autograd.Function):
    """``Y = X W^T`` for X (M, K), W (N, K), with the recipe's fake quantization in all three GEMMs."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.bfloat16)
    def forward(ctx, x, w, rht, recipe):
        ctx.save_for_backward(x, w, rht)  # the unquantized inputs (bf16 under autocast)
        ctx.recipe = recipe
        fprop = recipe.fprop
        wq = w if fprop is None else fake_quant_operand(w, 1, fprop, fprop.b, rht)
        return split_product(x, wq.t(), fprop, rht)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dy):
        x, w, rht = ctx.saved_tensors
        dgrad = ctx.recipe.dgrad
        wq = w if dgrad is None else fake_quant_operand(w, 0, dgrad, dgrad.b, rht)  # dX = dY W, reduced over N
        dx = split_product(dy, wq, dgrad, rht)
        dyq, xq = fake_quant_pair(dy, 0, x, 0, ctx.recipe.wgrad, rht)  # dW = dY^T X, reduced over M
        return dx, dyq.t() @ xq, None, None


class QDQLinear(nn.Module):
    """An ``nn.Linear`` (its parameters shared) whose matmuls go through :class:`QDQLinearFn`."""

    def __init__(self, linear: nn.Linear, recipe):
        super().__init__()
        self.weight, self.bias, self.recipe = linear.weight, linear.bias, recipe
        self.register_buffer("rht", rht_matrix(recipe.rht_seed).to(linear.weight.device), persistent=False)

    def forward(self, x):
        y = QDQLinearFn.apply(x.flatten(0, -2), self.weight, self.rht, self.recipe).unflatten(0, x.shape[:-1])
        return y if self.bias is None else y + self.bias.to(y.dtype)


def swap_linears(model: nn.Module, recipe, head: str = "lm_head") -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` in place by a :class:`QDQLinear`, except the output head
    (named ``head``, tied to the embedding or not) when the recipe keeps it, as the backend does."""
    recipe = get_recipe(recipe)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and not (name == head and recipe.layers.keep_output_head):
                setattr(parent, name, QDQLinear(child, recipe))
    return model
