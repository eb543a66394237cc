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
    with pytest.raises(ValueError, match="not a multiple of the rht size 32"):
        rht(torch.randn(4, 48), 1, 32, 0)
