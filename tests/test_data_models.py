"""Loading, data and perplexity: the real offline model, and clear errors for bad input."""
import math

import pytest
import torch

import sparselib
from sparselib.models import cache_dir

from conftest import tiny_llama


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


def test_perplexity_protocol_matches_a_direct_computation():
    model = tiny_llama()
    ids = torch.randint(0, 128, (1, 50), generator=torch.Generator().manual_seed(0))
    ppl = sparselib.perplexity(model, ids, seqlen=16, batch_size=2, progress=False)
    nll = []
    for w in ids[0, :48].view(3, 16):  # remainder of 2 tokens dropped
        logp = torch.log_softmax(model(w[None]).logits[0, :-1].double(), -1)
        nll += (-logp[torch.arange(15), w[1:]]).tolist()
    assert math.isclose(ppl, math.exp(sum(nll) / len(nll)), rel_tol=1e-4)


@pytest.mark.parametrize("seqlen, match", [(1, "at least 2"), (65, "maximum of 64")])
def test_perplexity_bad_seqlen(seqlen, match):
    with pytest.raises(ValueError, match=match):
        sparselib.perplexity(tiny_llama(), torch.zeros(1, 200, dtype=torch.long), seqlen=seqlen)


def test_perplexity_text_shorter_than_a_window():
    with pytest.raises(ValueError, match="fewer than one window"):
        sparselib.perplexity(tiny_llama(), torch.zeros(1, 10, dtype=torch.long), seqlen=16)


def test_unknown_model_offline_names_the_offline_choice(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    with pytest.raises(ValueError, match="smollm2-135m"):
        sparselib.load_model("no-such-org/no-such-model-xyz")


def test_a_path_that_is_not_a_model(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        sparselib.load_model(str(tmp_path))


def test_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        sparselib.load_model(device="cuda")


@pytest.mark.slow
def test_offline_model_continues_sensibly_and_is_cached(smollm2):
    model, tok = smollm2
    assert (cache_dir() / "smollm2-135m-instruct" / "model.safetensors").exists()
    assert not hasattr(model.config, "quantization_config")
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576


@pytest.mark.slow
def test_offline_model_perplexity_on_brown_is_plausible(smollm2):
    model, tok = smollm2
    ppl = sparselib.perplexity(model, sparselib.test_data(tok, max_tokens=2048), seqlen=256, progress=False)
    assert 10 < ppl < 150  # a 135M model on edited American English; random weights give ~50,000
