"""Checkers of the chapter "When 50 % is not enough": right answers pass, the usual mistakes are named."""
import pytest
import torch

from sparselib import exercises as ex


def owl_right(ratios, target, lam=0.08):
    D = torch.tensor(ratios, dtype=torch.float64)
    z = D - D.mean()
    if z.abs().max() == 0:
        return [target] * len(ratios)
    return (target - lam * z / z.abs().max()).tolist()


def owl_code_rule(ratios, target, lam=0.08):  # the authors' code: min-max to [0, 2λ], minus the mean
    D = torch.tensor(ratios, dtype=torch.float64)
    if D.max() == D.min():
        return [target] * len(ratios)
    r = (D - D.min()) / (D.max() - D.min()) * 2 * lam
    return (target - (r - r.mean())).tolist()


def test_owl_sparsities_checker():
    assert ex.check_owl_sparsities(owl_right)
    fb = ex.check_owl_sparsities(lambda r, t, lam: [2 * t - s for s in owl_right(r, t, lam)])
    assert not fb and "reversed" in str(fb)
    fb = ex.check_owl_sparsities(owl_code_rule)
    assert not fb and "min-max" in str(fb)
    fb = ex.check_owl_sparsities(lambda r, t, lam: [t - lam * x for x in r])   # not centred
    assert not fb and "centre" in str(fb)
    fb = ex.check_owl_sparsities(lambda r, t, lam: [t])
    assert not fb and "one per layer" in str(fb)
    fb = ex.check_owl_sparsities(lambda r, t, lam: 1 / 0)
    assert not fb and "ZeroDivisionError" in str(fb)
    with pytest.raises(TypeError):
        ex.check_owl_sparsities(0.7)


def test_masked_merge_checker():
    assert ex.check_masked_merge(lambda W, A, B, s: W + s * (B @ A) * (W != 0))
    fb = ex.check_masked_merge(lambda W, A, B, s: W + s * (B @ A))
    assert not fb and "plain merge" in str(fb)
    fb = ex.check_masked_merge(lambda W, A, B, s: W + (B @ A) * (W != 0))       # scale forgotten
    assert not fb and "survivors" in str(fb) or "surviving" in str(fb)

    def in_place(W, A, B, s):
        W += s * (B @ A) * (W != 0)
        return W
    fb = ex.check_masked_merge(in_place)
    assert not fb and "in place" in str(fb)


def test_registered_under_the_chapters_labels():
    assert ex.CHECKERS["ex-owl-sparsities"] is ex.check_owl_sparsities
    assert ex.CHECKERS["ex-masked-merge"] is ex.check_masked_merge
