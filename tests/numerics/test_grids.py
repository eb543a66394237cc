"""Golden tables: every code of both grids with its nibble, and every rounding tie."""

import pytest
import torch

from ufp4_compile.numerics import Grid, decode, encode, grid_values
from ufp4_compile.numerics import grids

# nibble -> value, written out by hand from the OCP E2M1 and 4-bit two's complement definitions.
E2M1_GOLDEN = {
    0b0000: 0.0, 0b0001: 0.5, 0b0010: 1.0, 0b0011: 1.5, 0b0100: 2.0, 0b0101: 3.0, 0b0110: 4.0, 0b0111: 6.0,
    0b1000: -0.0, 0b1001: -0.5, 0b1010: -1.0, 0b1011: -1.5, 0b1100: -2.0, 0b1101: -3.0, 0b1110: -4.0,
    0b1111: -6.0,
}
INT4_GOLDEN = {
    0b0000: 0, 0b0001: 1, 0b0010: 2, 0b0011: 3, 0b0100: 4, 0b0101: 5, 0b0110: 6, 0b0111: 7,
    0b1001: -7, 0b1010: -6, 0b1011: -5, 0b1100: -4, 0b1101: -3, 0b1110: -2, 0b1111: -1,
}


@pytest.mark.parametrize("grid,golden", [(Grid.E2M1, E2M1_GOLDEN), (Grid.INT4, INT4_GOLDEN)])
def test_every_code_decodes_and_encodes(grid, golden):
    nibbles = torch.tensor(list(golden), dtype=torch.uint8)
    values = torch.tensor(list(golden.values()), dtype=torch.float32)
    torch.testing.assert_close(decode(nibbles, grid), values, rtol=0, atol=0)
    encoded = encode(values, grid)
    # -0.0 is not < 0, so it encodes as 0x0; every other value round-trips to its own nibble.
    expected = torch.where(nibbles == 0b1000, 0, nibbles.to(torch.int64)).to(torch.uint8)
    assert encoded.tolist() == expected.tolist()
    assert torch.signbit(decode(torch.tensor([0b1000]), Grid.E2M1)).item()


def test_int4_0x8_decodes_to_minus_8_and_is_never_produced():
    assert decode(torch.tensor([0x8]), Grid.INT4).item() == -8.0
    assert 0x8 not in encode(torch.linspace(-100, 100, 2001), Grid.INT4).tolist()


@pytest.mark.parametrize("grid,expected", [
    (Grid.E2M1, [-6, -4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 4, 6]),
    (Grid.INT4, list(range(-7, 8))),
])
def test_grid_values(grid, expected):
    assert grid_values(grid).tolist() == [float(v) for v in expected]


# (input, E2M1 nibble): every midpoint goes to the level with an even index, plus points just beside.
E2M1_TIES = [
    (0.25, 0x0), (0.75, 0x2), (1.25, 0x2), (1.75, 0x4), (2.5, 0x4), (3.5, 0x6), (5.0, 0x6),
    (-0.25, 0x8), (-0.75, 0xA), (-1.25, 0xA), (-1.75, 0xC), (-2.5, 0xC), (-3.5, 0xE), (-5.0, 0xE),
    (0.2500001, 0x1), (0.7499999, 0x1), (4.9999995, 0x6), (5.0000005, 0x7),
    (-0.1, 0x8), (-0.0, 0x0), (0.0, 0x0), (100.0, 0x7), (-100.0, 0xF),
]
INT4_TIES = [
    (0.5, 0x0), (1.5, 0x2), (2.5, 0x2), (3.5, 0x4), (4.5, 0x4), (5.5, 0x6), (6.5, 0x6),
    (-0.5, 0x0), (-1.5, 0xE), (-2.5, 0xE), (-3.5, 0xC), (-6.5, 0xA), (0.5000001, 0x1), (-0.4, 0x0),
    (7.0, 0x7), (-7.0, 0x9), (9.0, 0x7), (-9.0, 0x9),
]


@pytest.mark.parametrize("grid,table", [(Grid.E2M1, E2M1_TIES), (Grid.INT4, INT4_TIES)])
def test_ties_to_even_and_saturation(grid, table):
    y = torch.tensor([v for v, _ in table], dtype=torch.float32)
    assert encode(y, grid).tolist() == [n for _, n in table]


@pytest.mark.parametrize("grid", list(Grid))
def test_stochastic_rounding_picks_neighbours(grid):
    y = torch.tensor([0.3, -0.3, 5.2, -5.2, 6.0, 7.0, 0.0], dtype=torch.float32).clamp(
        -grids.q_max(grid), grids.q_max(grid))
    down = grids.round_stochastic(y, grid, torch.zeros(y.shape, dtype=torch.int64))
    up = grids.round_stochastic(y, grid, torch.full(y.shape, 255, dtype=torch.int64))
    lv = grids.levels(grid)
    a = y.abs()
    assert (lv[down] <= a).all() and (lv[up] >= a).all()
    exact = torch.isin(a, lv)
    assert (down[exact] == up[exact]).all()
    assert (up[~exact] == down[~exact] + 1).all()


@pytest.mark.parametrize("grid", list(Grid))
def test_stochastic_rounding_mean_over_all_256_draws_is_within_a_512th_of_a_gap(grid):
    # Exhaustive over the 8 random bits, not sampled: for |y| on a fine grid through every gap (and the
    # levels themselves), the mean rounded value over r = 0..255 is |y| to within gap / 512, and levels stay
    # levels for every draw.
    a = torch.arange(0, int(grids.q_max(grid) * 1024) + 1, dtype=torch.float32) / 1024
    a = torch.cat([a, torch.tensor([1 - 2**-24, 1 + 2**-23, 3.999999], dtype=torch.float32)])
    a = a.clamp(max=grids.q_max(grid))
    lv = grids.levels(grid)
    r = torch.arange(256, dtype=torch.int64)
    levels = grids.round_stochastic(a[:, None].expand(-1, 256), grid, r[None, :].expand(a.numel(), -1))
    mean = lv[levels].double().mean(dim=1)
    lo = torch.searchsorted(lv, a, right=True) - 1
    gap = (lv[(lo + 1).clamp(max=7)] - lv[lo]).double()
    assert ((mean - a.double()).abs() <= gap / 512 + 1e-6).all()
    on_level = torch.isin(a, lv)
    assert (lv[levels[on_level]] == a[on_level, None]).all()
