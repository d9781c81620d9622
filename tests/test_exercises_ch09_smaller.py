"""The checkers of chapter 9, sparsity meets quantization (ch09_smaller): right answers pass, the usual
wrong answers fail with the note that names the mistake, bad arguments raise."""
import pytest
import torch

from sparselib import exercises as ex


def notes(fb):
    return " ".join(fb.notes)


def test_bits_24_int4():
    assert ex.check_bits_24_int4(2 + 1 + 16 / 64)
    assert ex.check_bits_24_int4(2 + 1 + 16 / 128, group_size=128)
    assert ex.check_bits_24_int4(4 + 1 + 16 / 64, bits=8)
    assert "positions" in notes(ex.check_bits_24_int4(2 + 16 / 64))
    assert "scales are missing" in notes(ex.check_bits_24_int4(3))
    assert "37.5 %" in notes(ex.check_bits_24_int4(2 + 2 + 16 / 64))
    assert "bytes per weight" in notes(ex.check_bits_24_int4((2 + 1 + 16 / 64) / 8))
    with pytest.raises(TypeError):
        ex.check_bits_24_int4("3.25")


def right_rtn(W, bits, group_size):
    maxq = 2 ** bits - 1
    X = W.reshape(W.shape[0], -1, group_size)
    xmax = X.abs().amax(-1, keepdim=True)
    xmax = torch.where(xmax == 0, torch.ones_like(xmax), xmax)  # an all-zero group: any grid holds 0
    scale = 2 * xmax / maxq
    zero = (maxq + 1) / 2
    q = torch.clamp(torch.round(X / scale) + zero, 0, maxq)
    return (scale * (q - zero)).reshape(W.shape)


def test_rtn_groups():
    assert ex.check_rtn_groups(right_rtn)
    seven = lambda W, b, g: (lambda X, s: (torch.clamp(torch.round(X / s), 1 - 2 ** (b - 1), 2 ** (b - 1) - 1) * s)
                             .reshape(W.shape))(W.reshape(W.shape[0], -1, g),
                                                W.reshape(W.shape[0], -1, g).abs().amax(-1, keepdim=True)
                                                .clamp_min(1e-30) / (2 ** (b - 1) - 1))
    assert "max|w| / 7" in notes(ex.check_rtn_groups(seven))
    per_row = lambda W, b, g: right_rtn(W, b, W.shape[1])
    assert "one grid per row" in notes(ex.check_rtn_groups(per_row))
    assert "shape" in notes(ex.check_rtn_groups(lambda W, b, g: W[:, :8]))
    assert "raised" in notes(ex.check_rtn_groups(lambda W, b, g: 1 / 0))
    with pytest.raises(TypeError):
        ex.check_rtn_groups(3)
