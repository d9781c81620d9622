"""The checkers of chapter 0, how to use the course (ch00_how_to_use): right answers pass, the usual
wrong answers fail with the note that names the mistake, bad arguments raise."""
import pytest

from sparselib import exercises as ex

from conftest import tiny_llama


def notes(fb):
    return " ".join(fb.notes)


def test_seqlen_effect():
    assert ex.check_seqlen_effect("up", 60.0, 45.0)
    assert "less context" in notes(ex.check_seqlen_effect("down", 60.0, 45.0))
    assert "same token ids" in notes(ex.check_seqlen_effect("up", 40.0, 45.0))
    with pytest.raises(ValueError, match='"up" or "down"'):
        ex.check_seqlen_effect("higher", 60, 45)
    with pytest.raises(ValueError, match="finite"):
        ex.check_seqlen_effect("up", float("nan"), 45)


def test_embedding_share():
    model = tiny_llama()
    embed = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    V, d = model.config.vocab_size, 4096
    big = 2 * V * d / (2 * V * d + 32 * (4 * d * d + 3 * d * 11008))
    assert ex.check_embedding_share(model, embed / total, big)
    assert "count it once" in notes(ex.check_embedding_share(model, 2 * embed / (total + embed), big))
    once = V * d / (V * d + 32 * (4 * d * d + 3 * d * 11008))
    assert "untied" in notes(ex.check_embedding_share(model, embed / total, once))
    assert "percentages" in notes(ex.check_embedding_share(model, 100 * embed / total, big))
    with pytest.raises(TypeError, match="loaded Hugging Face model"):
        ex.check_embedding_share("smollm2", 0.1, 0.1)
