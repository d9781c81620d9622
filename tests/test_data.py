"""Calibration and test text: seeded windows of the train stream, disjoint splits, clear errors."""
import pytest
import torch

import sparselib


class CharTokenizer:
    """A stand-in tokenizer for argument checks (no model needed)."""
    model_max_length = 64

    def __call__(self, text, **kwargs):
        return {"input_ids": [ord(c) % 128 for c in text]}


def test_calibration_windows_are_seeded_slices_of_the_train_stream():
    tok = CharTokenizer()
    a = sparselib.calibration_data(tok, nsamples=4, seqlen=16, seed=3)
    b = sparselib.calibration_data(tok, nsamples=4, seqlen=16, seed=3)
    c = sparselib.calibration_data(tok, nsamples=4, seqlen=16, seed=4)
    assert a.shape == (4, 16) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    stream = "".join(chr(t) for t in tok(sparselib.load_text("brown", "train"))["input_ids"])
    assert all("".join(chr(t) for t in row.tolist()) in stream for row in a)


def test_train_and_test_splits_share_no_document():
    train, test = sparselib.load_text("brown", "train"), sparselib.load_text("brown", "test")
    train_paragraphs = set(train.split("\n"))
    test_paragraphs = [p for p in test.split("\n") if len(p) > 200]
    assert len(test_paragraphs) > 100
    assert sum(p in train_paragraphs for p in test_paragraphs) == 0


@pytest.mark.parametrize("kwargs, error, match", [
    ({"nsamples": 0}, ValueError, "nsamples must be at least 1"),
    ({"seqlen": 1}, ValueError, "seqlen must be at least 2"),
    ({"seqlen": 65}, ValueError, "maximum of 64"),
    ({"dataset": "c4"}, ValueError, "brown"),
    ({"nsamples": 2.5}, TypeError, "int"),
])
def test_calibration_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        sparselib.calibration_data(CharTokenizer(), **kwargs)


def test_test_data_bad_dataset():
    with pytest.raises(ValueError, match="unknown dataset"):
        sparselib.test_data(CharTokenizer(), dataset="wikitext")
