"""The checkers of chapter 4, the visualizer (ch04_visualizer): right answers pass, the usual
wrong answers fail with the note that names the mistake, bad arguments raise."""
import pytest

import sparselib
from sparselib import exercises as ex


def notes(fb):
    return " ".join(fb.notes)


def test_outlier_threshold():
    W, x_norm = sparselib.toy_layer()
    data = sparselib.visualizer_data(W, x_norm)
    first = {m: next(s for s, st in zip(data["sparsities"], data["states"][m]) if st["pruned_on_outliers"])
             for m in ("magnitude", "wanda")}
    assert ex.check_outlier_threshold(first["wanda"])
    assert "magnitude" in notes(ex.check_outlier_threshold(first["magnitude"]))
    assert "fraction" in notes(ex.check_outlier_threshold(int(W.shape[1] * first["wanda"])))
    previous = max(s for s in data["sparsities"] if s < first["wanda"])
    assert "still keeps" in notes(ex.check_outlier_threshold(previous))
    with pytest.raises(TypeError):
        ex.check_outlier_threshold("87.5%")


def test_row_errors():
    def right(W, keep, x_norm):
        return ((W * ~keep).pow(2) * x_norm.pow(2)).sum(1).sqrt()

    assert ex.check_row_errors(right)
    assert "square root" in notes(ex.check_row_errors(lambda W, k, n: right(W, k, n) ** 2))
    assert "kept weights" in notes(ex.check_row_errors(lambda W, k, n: right(W, ~k, n)))
    assert "square the norms" in notes(ex.check_row_errors(lambda W, k, n: ((W * ~k).pow(2) * n).sum(1).sqrt()))
    assert "norms are missing" in notes(ex.check_row_errors(lambda W, k, n: (W * ~k).pow(2).sum(1).sqrt()))
    assert "one number per output row" in notes(ex.check_row_errors(lambda W, k, n: (W * ~k).pow(2) * n.pow(2)))

    def in_place(W, keep, x_norm):
        W.mul_(keep)
        return right(W, keep, x_norm)

    assert "in place" in notes(ex.check_row_errors(in_place))
    with pytest.raises(TypeError, match="your function itself"):
        ex.check_row_errors(1.0)
