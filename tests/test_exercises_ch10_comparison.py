"""The checkers of chapter 10, the comparison (ch10_comparison): right answers pass, the usual
wrong answers fail with the note that names the mistake, bad arguments raise."""
import pytest

import sparselib
from sparselib import exercises as ex

from conftest import tiny_llama


def notes(fb):
    return " ".join(fb.notes)


def test_stored_size_24():
    model = tiny_llama()
    linears = [sparselib.weight_of(l) for layer in sparselib.decoder_layers(model)
               for l in sparselib.layer_linears(layer).values()]
    in_linears = sum(W.numel() for W in linears)
    other = sum(p.numel() for p in model.parameters()) - in_linears
    right = 2 * other + sum(W.shape[0] * (W.shape[1] + W.shape[1] // 8) for W in linears)
    assert ex.check_stored_size_24(model, right)
    assert "metadata" in notes(ex.check_stored_size_24(model, 2 * other + in_linears))
    assert "2 bits per kept value" in notes(ex.check_stored_size_24(model, 2 * other + 1.5 * in_linears))


def test_within_budget():
    dense = sparselib.load_result("sweep_smollm2_brown")["dense"]
    answers = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        curve = sparselib.recorded(method, [0.1, 0.3, 0.5, 0.6, 0.7])
        within = [s for s, p in curve.items() if p <= 2 * dense]
        answers[method] = max(within) if within else 0.0
    assert ex.check_within_budget(answers)
    assert not ex.check_within_budget({"wanda": 0.7 if answers["wanda"] != 0.7 else 0.1})
    with pytest.raises(ValueError, match="unknown method"):
        ex.check_within_budget({"slicegpt": 0.25})
