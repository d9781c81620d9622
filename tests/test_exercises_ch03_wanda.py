"""The checkers of chapter 3, Wanda (ch03_wanda): right answers pass, the usual
wrong answers fail with the note that names the mistake, bad arguments raise."""
import pytest
import torch

import sparselib
from sparselib import exercises as ex


def notes(fb):
    return " ".join(fb.notes)


def test_wanda_24():
    def right(W, X):
        S = W.abs() * X.pow(2).sum(0).sqrt()
        groups = S.reshape(W.shape[0], -1, 4)
        drop = groups.topk(2, dim=-1, largest=False).indices
        return torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False).reshape(W.shape)

    assert ex.check_wanda_24(right)
    assert "magnitude mask" in notes(ex.check_wanda_24(lambda W, X: sparselib.nm_mask(W.abs(), 2, 4)))
    assert "keeps 4 of 4" in notes(ex.check_wanda_24(lambda W, X: torch.ones_like(W, dtype=torch.bool)))
    lowest = lambda W, X: ~right(W, X)
    assert "2 highest" in notes(ex.check_wanda_24(lowest))


def test_outlier_fractions():
    g = torch.Generator().manual_seed(0)
    W, X = torch.randn(16, 32, generator=g), torch.randn(100, 32, generator=g)
    X[:, 5] *= 30
    j = 5
    fm = float((~sparselib.unstructured_mask(W.abs(), 0.5))[:, j].float().mean())
    wanda = sparselib.wanda_scores(W, sparselib.input_norms(X))
    fw = float((~sparselib.unstructured_mask(wanda, 0.5))[:, j].float().mean())
    fb = ex.check_outlier_fractions(W, X, fm, fw)
    assert fb and "channel 5" in notes(fb)
    assert fw < fm
    assert "kept fractions" in notes(ex.check_outlier_fractions(W, X, 1 - fm, fw))
    with pytest.raises(ValueError, match=r"X must be \[tokens, 32\]"):
        ex.check_outlier_fractions(W, X[:, :8], fm, fw)
    with pytest.raises(ValueError, match="NaN"):
        ex.check_outlier_fractions(W * float("nan"), X, fm, fw)
