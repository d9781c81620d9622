"""The checkers of chapter 6, Sparse Tensor Cores (ch08_sparse_tensor_cores): right answers pass, the usual
wrong answers fail with the note that names the mistake, bad arguments raise."""
import pytest

from sparselib import exercises as ex


def notes(fb):
    return " ".join(fb.notes)


def test_meta_byte():
    assert ex.check_meta_byte((0, 1), (1, 3))
    assert "low nibble" in notes(ex.check_meta_byte((1, 3), (0, 1)))
    assert not ex.check_meta_byte((0, 2), (1, 3))
    with pytest.raises(TypeError, match="two positions"):
        ex.check_meta_byte((0, 4), (1, 3))


def test_roofline():
    out_f, in_f, R = 4096, 11008, 150.0

    def right(T):
        dense = max(2 * T * in_f * out_f / R, 2 * (in_f * out_f + T * in_f + T * out_f))
        sparse = max(T * in_f * out_f / R, 2 * (in_f * out_f * 4.5 / 8 + T * in_f + T * out_f))
        return dense / sparse

    assert ex.check_roofline(right)

    def half_bytes(T):
        dense = max(2 * T * in_f * out_f / R, 2 * (in_f * out_f + T * in_f + T * out_f))
        sparse = max(T * in_f * out_f / R, 2 * (in_f * out_f * 0.5 + T * in_f + T * out_f))
        return dense / sparse

    assert "4.5 of 8 bytes" in notes(ex.check_roofline(half_bytes))
    assert "raised" in notes(ex.check_roofline(lambda T: T["x"]))

