import pytest
import torch

from ufp4_compile.numerics import dequantize, gemm_reference, mean_correction, mean_split, quantize


def test_split_reconstructs_and_residual_has_zero_mean():
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(0)) + torch.linspace(-3, 3, 32)
    mu, r = mean_split(x.bfloat16())
    assert mu.shape == (1, 32) and mu.dtype == torch.float32 and r.dtype == torch.float32
    torch.testing.assert_close(mu + r, x.bfloat16().float())
    torch.testing.assert_close(r.mean(0), torch.zeros(32), rtol=0, atol=1e-6)


def test_rank_one_term_restores_the_product():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(128, 64, generator=gen) + 4.0 * torch.randn(64, generator=gen)  # large channel means
    w = torch.randn(48, 64, generator=gen)
    mu, r = mean_split(x)
    exact = x.double() @ w.double().t()
    fmt = "int4/16/fp32/nearest"
    qw = quantize(w, 1, fmt, rht=16)
    split = gemm_reference(quantize(r, 1, fmt, rht=16), qw, torch.float32) + mean_correction(mu, w)
    plain = gemm_reference(quantize(x, 1, fmt, rht=16), qw, torch.float32)
    err_split = (split.double() - exact).norm() / exact.norm()
    err_plain = (plain.double() - exact).norm() / exact.norm()
    assert err_split < err_plain  # the split removes the mean from what is quantized
    torch.testing.assert_close((mu.double() @ w.double().t()).expand(128, -1),
                               (x.double() - r.double()) @ w.double().t(), rtol=1e-5, atol=1e-4)


def test_bad_input():
    with pytest.raises(ValueError, match="x.dtype=torch.int64"):
        mean_split(torch.arange(4).view(2, 2))
    with pytest.raises(ValueError, match="at least one token"):
        mean_split(torch.zeros(0, 4))
