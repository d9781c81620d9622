"""The checkers of chapter 6, SliceGPT (ch06_slicegpt): right answers pass, the usual
wrong answers fail with the note that names the mistake, bad arguments raise."""
import pytest
import torch

import sparselib
from sparselib import exercises as ex
from sparselib.slicegpt import matmul_weights

from conftest import tiny_llama


def notes(fb):
    return " ".join(fb.notes)


def test_fold():
    def right(ln, lin):
        b = lin.bias if lin.bias is not None else torch.zeros(lin.out_features)
        return lin.weight * ln.weight, b + lin.weight @ ln.bias

    assert ex.check_fold(right)
    assert "β is missing" in notes(ex.check_fold(lambda ln, lin: (lin.weight * ln.weight, lin.bias)))
    assert "pair" in notes(ex.check_fold(lambda ln, lin: lin.weight * ln.weight))


def test_sliced_params():
    def right(D, d, F, Dkv, V, L):
        total = V * d + V * D
        for i in range(L):
            d_out = D if i == L - 1 else d
            total += (D + 2 * Dkv) * d + d * D + 2 * F * d + F * d_out + d * d + d * d_out
        return total

    assert ex.check_sliced_params(right)
    assert "untied head" in notes(ex.check_sliced_params(lambda *a: right(*a) - a[4] * a[0]))
    assert "shortcut" in notes(ex.check_sliced_params(
        lambda D, d, F, Dkv, V, L: right(D, d, F, Dkv, V, L) - L * d * d - (L - 1) * d * d - d * D))


def test_slice_head():
    model = tiny_llama()
    dense_w = matmul_weights(tiny_llama())  # tied head counts as a matmul once
    calib = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    report = sparselib.slice_model(model, calib, 0.25, slice_head=True, progress=False)
    fb = ex.check_slice_head(model, report.params_after, dense_w / matmul_weights(model))
    assert fb, str(fb)
    assert "params_after" in notes(ex.check_slice_head(model, report.params_after + 1, dense_w / matmul_weights(model)))
    with pytest.raises(TypeError, match="sliced model"):
        ex.check_slice_head(tiny_llama(), 1, 1.0)
