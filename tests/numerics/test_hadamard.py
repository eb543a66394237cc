import pytest
import torch

from ufp4_compile.numerics import hadamard_matrix, rht, rht_inverse, rht_signs
from ufp4_compile.numerics.hadamard import VALID_RHT_SIZES


@pytest.mark.parametrize("n", VALID_RHT_SIZES)
def test_hadamard_matrix_is_orthogonal_sylvester(n):
    h = hadamard_matrix(n)
    assert set(h.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(h @ h.t(), n * torch.eye(n))
    # Sylvester's closed form: H[i, j] = (-1)^popcount(i & j).
    idx = torch.arange(n)
    parity = torch.zeros(n, n, dtype=torch.int64)
    for bit in range(8):
        parity ^= ((idx[:, None] & idx[None, :]) >> bit) & 1
    assert torch.equal(h, (1 - 2 * parity).float())


def test_signs_are_seeded_and_mixed():
    s = rht_signs(256, seed=3)
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(s, rht_signs(256, seed=3))
    assert not torch.equal(s, rht_signs(256, seed=4))
    assert torch.equal(rht_signs(16, seed=3), s[:16])


@pytest.mark.parametrize("n", [16, 64, 256])
def test_butterfly_is_exact_for_integer_inputs(n):
    # With integer inputs every butterfly sum is exact and 1/sqrt(n) is a power of two, so the fast
    # transform equals the matrix product exactly.
    x = torch.randint(-50, 50, (3, 2 * n), generator=torch.Generator().manual_seed(n)).float()
    s = rht_signs(n, 11)
    expected = ((x.view(3, 2, n) * s) @ hadamard_matrix(n).t() / n**0.5).view(3, 2 * n)
    assert torch.equal(rht(x, 1, n, 11), expected)


@pytest.mark.parametrize("n", VALID_RHT_SIZES)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_inverse_round_trip_and_norm(n, axis):
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    y = rht(x, axis, n, 5)
    torch.testing.assert_close(rht_inverse(y, axis, n, 5), x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y.norm(dim=axis), x.norm(dim=axis), rtol=1e-5, atol=0)


@pytest.mark.parametrize("n", VALID_RHT_SIZES)
def test_rotating_both_operands_preserves_the_product(n):
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(48, 512, generator=gen), torch.randn(40, 512, generator=gen)
    exact = a.double() @ b.double().t()
    rotated = rht(a, 1, n, 9).double() @ rht(b, 1, n, 9).double().t()
    # FP32 rotation error: ~log2(n) roundings of O(|v|) per element -> relative 1e-6 of sqrt(K)-sized sums.
    torch.testing.assert_close(rotated, exact, rtol=0, atol=1e-4 * exact.abs().max().item())


def test_bad_sizes():
    with pytest.raises(ValueError, match="valid values"):
        rht(torch.randn(4, 24), 1, 24, 0)


@pytest.mark.parametrize("axis", [0, 1])
def test_a_trailing_partial_group_is_not_rotated(axis):
    x = torch.randn(40, 40, generator=torch.Generator().manual_seed(2))
    y = rht(x, axis, 32, 7)
    head, tail = y.split([32, 8], dim=axis)
    torch.testing.assert_close(head, rht(x.narrow(axis, 0, 32), axis, 32, 7), rtol=0, atol=0)
    torch.testing.assert_close(tail, x.narrow(axis, 32, 8), rtol=0, atol=0)
    torch.testing.assert_close(rht_inverse(y, axis, 32, 7), x, rtol=1e-6, atol=1e-6)
    short = torch.randn(3, 5)
    assert torch.equal(rht(short, 1, 16, 0), short)  # shorter than one group: nothing rotated


def test_empty_tensors():
    for shape, axis in (((0, 32), 1), ((0, 32), 0), ((4, 0), 1), ((2, 0, 16), 2)):
        assert rht(torch.zeros(shape), axis, 16, 1).shape == shape
        assert rht_inverse(torch.zeros(shape), axis, 16, 1).shape == shape


@pytest.mark.parametrize("n", [16, 32, 256])
def test_values_near_the_fp32_limit_do_not_overflow_in_the_butterfly(n):
    """The butterfly's partial sums reach n * max|v|: a group of 1e38 overflowed to Inf and Inf - Inf = NaN
    although the rotated values fit. Groups with amax >= 2**64 are rotated through 2**-64 (exact)."""
    x = torch.full((2, n), 1e38)
    x[1] = torch.linspace(-1e38, 1e38, n)
    y = rht(x, 1, n, 5)
    expected = (x.double() * rht_signs(n, 5).double()) @ hadamard_matrix(n).double().t() / n**0.5
    fits = expected.abs() <= torch.finfo(torch.float32).max
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double()[fits], expected[fits], rtol=1e-6, atol=1e-6 * 1e38)
    # A rotated value beyond FP32's range saturates at +-FP32_MAX (it cannot be stored), never Inf or NaN.
    assert (y.double()[~fits].abs() == torch.finfo(torch.float32).max).all()
    # The scaling is a power of two: a large group keeps the bits of an unscaled rotation of x * 2**-64.
    big = torch.randn(3, n, generator=torch.Generator().manual_seed(n)) * 2.0**70
    assert torch.equal(rht(big, 1, n, 5), rht(big * 2.0**-64, 1, n, 5) * 2.0**64)


def test_non_finite_groups_stay_non_finite():
    x = torch.randn(3, 32)
    x[0, 3], x[1, 20], x[2, 0] = float("inf"), float("-inf"), float("nan")
    y = rht(x, 1, 16, 3)
    assert not torch.isfinite(y[0, :16]).any() and torch.isfinite(y[0, 16:]).all()
    assert torch.isfinite(y[1, :16]).all() and not torch.isfinite(y[1, 16:]).any()
    assert torch.isnan(y[2, :16]).all()
