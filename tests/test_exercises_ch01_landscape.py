"""The checkers of chapter 1, the landscape (ch01_landscape): right answers pass, the usual
wrong answers fail with the note that names the mistake, bad arguments raise."""
import math

import pytest

from sparselib import exercises as ex


def notes(fb):
    return " ".join(fb.notes)


def test_nm_saving():
    def right(n, m, b):
        kept = m - n
        return 1 - (kept * b + kept * math.ceil(math.log2(m)) / 8) / (m * b)

    assert ex.check_nm_saving(right)
    seed_error = lambda n, m, b: 1 - (m - n) * (b + 0.5) / (m * b)  # 4 bits per kept value
    assert "2 bits per kept value" in notes(ex.check_nm_saving(seed_error))
    assert "ignores the metadata" in notes(ex.check_nm_saving(lambda n, m, b: n / m))
    assert "percentage" in notes(ex.check_nm_saving(lambda n, m, b: 100 * right(n, m, b)))
    assert "raised ZeroDivisionError" in notes(ex.check_nm_saving(lambda n, m, b: 1 / 0))
    with pytest.raises(TypeError, match="your function itself"):
        ex.check_nm_saving(0.4375)


def test_group_code_saving():
    assert ex.check_group_code_saving(1 - 4.375 / 8)
    assert "3-bit code" in notes(ex.check_group_code_saving(0.4375))
    assert "metadata" in notes(ex.check_group_code_saving(0.5))
    with pytest.raises(TypeError):
        ex.check_group_code_saving("45%")


def test_breakeven():
    k = 8.0
    speedups = {s: 1 / (k * (1 - s)) for s in (0.8, 0.85, 0.9)}
    assert ex.check_breakeven(speedups, 1 - 1 / k)
    assert "far from" in notes(ex.check_breakeven(speedups, 0.5))
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        ex.check_breakeven({80: 0.5, 90: 1.2}, 0.87)
