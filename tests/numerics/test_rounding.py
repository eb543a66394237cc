"""Philox bits (Random123 known answers, Triton's own generator) and stochastic rounding."""

import pytest
import torch

from ufp4_compile.numerics import Grid, OperandFormat, Rounding, dequantize, philox, quantize
from ufp4_compile.numerics.rounding import philox4x32


# Known-answer vectors of Philox4x32-10 from Random123 (kat_vectors): (key, counter) -> output.
@pytest.mark.parametrize("key,counter,expected", [
    ((0, 0), (0, 0, 0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF,) * 4, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0xA4093822, 0x299F31D0), (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(key, counter, expected):
    seed = key[0] | (key[1] << 32)
    out = philox4x32(seed, *(torch.tensor([c], dtype=torch.int64) for c in counter))
    assert [int(o) for o in out] == list(expected)


def test_philox_matches_triton_randint():
    triton = pytest.importorskip("triton")
    import triton.language as tl

    @triton.jit
    def _bits_kernel(out_ptr, seed, base, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        counters = offs.to(tl.int64) + base
        tl.store(out_ptr + offs, tl.randint(seed, counters), mask=offs < n)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = 4096
    # The base straddles 2**32, so the high counter word is exercised too; the seed uses both key words.
    for seed, base in ((0, 0), (12345678901234, 2**32 - 2000), (2**63 - 1, 7 * 2**40)):
        out = torch.zeros(n, dtype=torch.int32, device=device)
        _bits_kernel[(n // 512,)](out, seed, base, n, BLOCK=512)
        ref = philox(seed, torch.arange(n, dtype=torch.int64) + base)
        assert torch.equal(out.cpu().to(torch.int64) & 0xFFFFFFFF, ref)


def test_philox_rejects_bad_counters_and_seed():
    with pytest.raises(ValueError, match="int64"):
        philox(0, torch.arange(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="seed"):
        philox(1.5, torch.arange(4))


def _fmt(grid, scale="fp32"):
    return OperandFormat(grid, 16, scale, Rounding.STOCHASTIC)


@pytest.mark.parametrize("grid", list(Grid))
def test_stochastic_rounding_is_unbiased(grid):
    # One block (fixed scale) repeated over many rows: per element the mean over rows of Q(x) must tend to x.
    gen = torch.Generator().manual_seed(0)
    row = torch.randn(16, generator=gen)
    rows = 1 << 14
    q = quantize(row.expand(rows, 16).contiguous(), 1, _fmt(grid), seed=1234)
    mean = dequantize(q).double().mean(0)
    # A stochastic rounding between levels gap*s apart has variance <= (gap*s)^2/4, so the std of a mean of
    # `rows` samples is <= gap*s/(2 sqrt(rows)); allow 5 of those (false alarm < 1e-6 per element).
    scale = q.scales[0].double().item()
    max_gap = 2.0 if grid is Grid.E2M1 else 1.0
    tol = 5 * max_gap * scale / (2 * rows ** 0.5)
    torch.testing.assert_close(mean, row.double(), rtol=0, atol=tol)
    # Nearest rounding is visibly biased on the same data, so the check above has teeth.
    nearest = dequantize(quantize(row[None], 1, OperandFormat(grid, 16))).double()[0]
    assert (nearest - row.double()).abs().max() > 10 * tol


def test_stochastic_rounding_reproducible_and_offset_driven():
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(1))
    fmt = _fmt(Grid.INT4)
    a = quantize(x, 1, fmt, seed=7, offset=100)
    assert torch.equal(a.codes, quantize(x, 1, fmt, seed=torch.tensor(7), offset=100).codes)
    assert not torch.equal(a.codes, quantize(x, 1, fmt, seed=7, offset=101).codes)
    assert not torch.equal(a.codes, quantize(x, 1, fmt, seed=8, offset=100).codes)


@pytest.mark.parametrize("axis", [0, 1])
def test_counter_is_offset_plus_axis_last_index_over_sixteen(axis):
    # Sixteen elements share one Philox call, counted in the axis-last order (along the quantized axis): the
    # second copy of x inside cat([x, x]) along the other axis sees counters (numel(x) + i) // 16 =
    # numel(x) // 16 + i // 16, exactly offset=numel(x) // 16.
    x = torch.randn(32, 48, generator=torch.Generator().manual_seed(2))
    fmt = _fmt(Grid.E2M1)
    other = 1 - axis
    both = quantize(torch.cat([x, x], dim=other), axis, fmt, seed=5)
    second = quantize(x, axis, fmt, seed=5, offset=x.numel() // 16)
    half = both.codes.shape[other] // 2
    assert torch.equal(both.codes.narrow(other, half, half), second.codes)
    assert not torch.equal(both.codes.narrow(other, 0, half), second.codes)


def test_element_bits_use_every_byte_of_every_word_of_a_philox_call():
    from ufp4_compile.numerics.rounding import element_bits, philox4x32

    bits = element_bits(11, 5, (3, 7))  # 21 elements: two calls, the second one partly used
    counters = torch.arange(2, dtype=torch.int64) + 5
    zero = torch.zeros_like(counters)
    words = torch.stack(philox4x32(11, counters, zero, zero, zero), dim=-1).reshape(-1)  # (call, word)
    expected = [int(w) >> (8 * byte) & 0xFF for w in words.tolist() for byte in range(4)][:21]
    assert bits.reshape(-1).tolist() == expected


def test_seed_required_for_stochastic():
    with pytest.raises(ValueError, match="seed is required"):
        quantize(torch.randn(2, 16), 1, _fmt(Grid.INT4))
