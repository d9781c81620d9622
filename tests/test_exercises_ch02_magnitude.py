"""The checkers of chapter 2, magnitude pruning (ch02_magnitude): right answers pass, the usual
wrong answers fail with the note that names the mistake, bad arguments raise."""
import torch

import sparselib
from sparselib import exercises as ex

from conftest import tiny_llama


def notes(fb):
    return " ".join(fb.notes)


def test_magnitude_mask():
    def right(W, s):
        k = int(W.shape[1] * s)
        keep = torch.ones_like(W, dtype=torch.bool)
        keep.scatter_(1, W.abs().argsort(dim=1, stable=True)[:, :k], False)
        return keep

    assert ex.check_magnitude_mask(right)
    per_matrix = lambda W, s: sparselib.unstructured_mask(W.abs(), s, per="matrix")
    assert "per matrix" in notes(ex.check_magnitude_mask(per_matrix))
    signed = lambda W, s: sparselib.unstructured_mask(W, s, per="row")
    assert "|w|" in notes(ex.check_magnitude_mask(signed))
    inverted = lambda W, s: ~right(W, s) if s else right(W, s)
    assert "drops" in notes(ex.check_magnitude_mask(inverted)) or "smallest" in notes(ex.check_magnitude_mask(inverted))

    def in_place(W, s):
        keep = right(W, s)
        W.mul_(keep)
        return keep

    assert "in place" in notes(ex.check_magnitude_mask(in_place))
    assert "shape" in notes(ex.check_magnitude_mask(lambda W, s: right(W, s).T))


def test_magnitude_types():
    model = tiny_llama()
    attn = mlp = 0
    for layer in sparselib.decoder_layers(model):
        for name, lin in sparselib.layer_linears(layer).items():
            out, inp = sparselib.weight_of(lin).shape
            if name in ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):   # a Llama layer's MLP
                mlp += out * (inp // 2)
            else:
                attn += out * (inp // 2)
    fb = ex.check_magnitude_types(model, attn, mlp, 40.0, 55.0, 50.0)
    assert fb and "per million" in notes(fb)
    assert "vice versa" in notes(ex.check_magnitude_types(model, attn + mlp, mlp, 40.0, 55.0, 50.0))
    assert "reload" in notes(ex.check_magnitude_types(model, attn, mlp, 40.0, 39.0, 50.0))
