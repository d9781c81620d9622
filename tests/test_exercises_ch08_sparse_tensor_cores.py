"""The checkers of chapter 8, 2:4 on the hardware (ch08_sparse_tensor_cores): right answers pass, the usual
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


def _placer(weight_share=4.5 / 8, activations=True, sparse_flops=1.0, value_bytes=2, seconds_per_ms=1e-3):
    """A learner's place(out, in, T, ms, sparse) -> (FLOPs per byte, TFLOP/s), right by default; each
    argument makes one of the usual mistakes."""
    def place(o, i, t, ms, sparse):
        weight = value_bytes * o * i * (weight_share if sparse else 1)
        nbytes = weight + (value_bytes * t * (i + o) if activations else 0)
        flops = 2 * t * i * o * (sparse_flops if sparse else 1)
        return flops / nbytes, flops / (ms * seconds_per_ms) / 1e12
    return place


def test_roofline_right_answer_passes_and_reports_the_recorded_findings():
    fb = ex.check_roofline(_placer())
    assert fb, notes(fb)
    assert "136 recorded points" in notes(fb)
    assert "4.11 TB/s (86% of the bandwidth), 2:4 1.55 TB/s (32%)" in notes(fb)   # the 28672x8192, T=16
    assert "predicts 1.77x" in notes(fb) and "measured 0.67x" in notes(fb)


@pytest.mark.parametrize("mistake, note", [
    (dict(activations=False), "count the activations too"),
    (dict(weight_share=0.5), "4.5 of every 8 bytes (values plus 2-bit positions), not half"),
    (dict(weight_share=1.0), "stored compressed"),
    (dict(sparse_flops=0.5), "dense product, 2·T·in·out, for 2:4 too"),
    (dict(value_bytes=4), "2 bytes per value, not 4"),
    (dict(seconds_per_ms=1.0), "seconds = ms × 1e-3"),
])
def test_roofline_names_the_usual_mistakes(mistake, note):
    fb = ex.check_roofline(_placer(**mistake))
    assert not fb and note in notes(fb), notes(fb)
    assert "from a CUDA graph" in notes(fb)      # the first wrong point shown is a kernel's own time


def test_roofline_forgotten_multiply_add_and_bad_returns():
    def one_flop(o, i, t, ms, sparse):
        intensity, tflop_s = _placer()(o, i, t, ms, sparse)
        return intensity / 2, tflop_s / 2
    assert "a multiply-add is 2 FLOPs" in notes(ex.check_roofline(one_flop))
    assert "return two numbers" in notes(ex.check_roofline(lambda *a: 3.0))
    assert "raised" in notes(ex.check_roofline(lambda *a: a[9]))
    with pytest.raises(TypeError, match="pass your function"):
        ex.check_roofline(3)
