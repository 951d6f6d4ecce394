"""Bit-packing: bit-exact round trips, exact byte counts, and the documented word layout."""

import pytest
import torch

from lowbit.formats.bitpack import pack_bits, unpack_bits, words_per_row

from conftest import seeded


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [1, 7, 32, 33, 172, 576])
def test_round_trip_is_bit_exact(bits, n):
    codes = torch.randint(0, 2**bits, (5, n), generator=seeded(bits * 1000 + n), dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.int32
    assert packed.shape == (5, words_per_row(n, bits))
    assert torch.equal(unpack_bits(packed, bits, n), codes)


@pytest.mark.parametrize(("bits", "n", "words"), [(4, 576, 72), (2, 576, 36), (8, 172, 43), (3, 576, 54), (3, 172, 18)])
def test_words_per_row_is_exact(bits, n, words):
    assert words_per_row(n, bits) == words


def test_four_bit_layout_is_low_nibble_first():
    codes = torch.arange(8, dtype=torch.uint8).view(1, 8)  # c_i = i
    assert pack_bits(codes, 4).item() == 0x76543210


def test_three_bit_codes_straddle_words():
    codes = torch.zeros(1, 32, dtype=torch.uint8)
    codes[0, 10] = 0b111  # bits 30, 31 of word 0 and bit 0 of word 1
    packed = pack_bits(codes, 3)
    assert packed[0, 0].item() & 0xFFFFFFFF == 0b11 << 30
    assert packed[0, 1].item() == 1
