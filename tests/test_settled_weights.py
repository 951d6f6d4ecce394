"""settled_weights: a layer's codes count as settled (cuda_mma.cu may load them before the PDL wait) only from its
second launch on, and never right after a write, a swap or a new storage."""

import gc

import torch

from lowbit.kernels.settled_weights import _last_seen, settled


def _layer():
    return torch.randint(0, 2**31 - 1, (32, 16), dtype=torch.int32), torch.rand(32, 1).half(), torch.rand(32, 1).half()


def test_second_call_of_an_unwritten_layer_is_settled():
    words, scale, zero = _layer()
    assert not settled(words, scale, zero)
    assert settled(words, scale, zero)
    assert settled(words.view(torch.uint8), scale, zero), "a dtype view of the same codes is the same layer"


def test_in_place_writes_and_swapped_qparams_unsettle():
    words, scale, zero = _layer()
    settled(words, scale, zero)
    words.view(torch.uint8)[0, 0] = 7  # through a view: the counter is shared
    assert not settled(words, scale, zero)
    assert settled(words, scale, zero)
    zero.mul_(2)
    assert not settled(words, scale, zero)
    settled(words, scale, zero)
    assert not settled(words, scale.clone(), zero), "a replaced tensor lives elsewhere"
    assert not settled(words, scale, None)


def test_the_record_goes_with_the_storage():
    words, scale, zero = _layer()
    settled(words, scale, zero)
    count = len(_last_seen)
    del words
    gc.collect()
    assert len(_last_seen) == count - 1


def test_inference_tensors_are_never_settled():
    with torch.inference_mode():
        words, scale, zero = _layer()
    assert not settled(words, scale, zero)
    assert not settled(words, scale, zero)


def test_whole_zeros_are_checked_once_a_version():
    """zero_points.whole_zeros: whole numbers in the code range (gptq's, awq's) qualify for W16, fractional or
    out-of-range zeros do not; the answer is remembered until the zeros are written."""
    from lowbit.kernels.zero_points import _checked, whole_zeros

    zero = torch.tensor([[0.0, 3.0], [15.0, 7.0]]).half()
    assert whole_zeros(zero, 4) and whole_zeros(None, 4)
    assert _checked.lookup(zero, ((zero.data_ptr(), zero._version), 4)) is True
    assert not whole_zeros(zero, 3), "15 lies outside 3-bit codes"
    zero[0, 0] = 0.5
    assert not whole_zeros(zero, 4), "a write is checked again"
    assert not whole_zeros(torch.rand(4, 2).half() * 15, 4)
    with torch.inference_mode():
        frozen = torch.zeros(2, 2).half()
    assert not whole_zeros(frozen, 4), "an inference tensor cannot be remembered: the fp32 path"
