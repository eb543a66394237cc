import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ufp4_compile.numerics import pack_codes, unpack_codes


def test_low_nibble_first():
    packed = pack_codes(torch.tensor([[0x1, 0xA, 0xF, 0x0]]), axis=1)
    assert packed.dtype == torch.uint8
    assert packed.tolist() == [[0xA1, 0x0F]]


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), axis_seed=st.integers(0, 100),
       seed=st.integers(0, 2**31))
def test_round_trip_any_axis(shape, axis_seed, seed):
    axis = axis_seed % len(shape)
    shape[axis] *= 2
    gen = torch.Generator().manual_seed(seed)
    nibbles = torch.randint(0, 16, shape, generator=gen, dtype=torch.uint8)
    packed = pack_codes(nibbles, axis)
    expected_shape = list(shape)
    expected_shape[axis] //= 2
    assert list(packed.shape) == expected_shape
    assert torch.equal(unpack_codes(packed, axis), nibbles)
    assert torch.equal(pack_codes(unpack_codes(packed, axis), axis), packed)


def test_odd_length_and_wrong_dtype():
    with pytest.raises(ValueError, match="odd length 3"):
        pack_codes(torch.zeros(2, 3, dtype=torch.uint8), axis=1)
    with pytest.raises(ValueError, match="uint8"):
        unpack_codes(torch.zeros(2, 3, dtype=torch.int32), axis=1)
