"""Loading: the real offline model, and clear errors (at once, offline) for names that are not models."""
import pytest
import torch

import sparselib
from sparselib.models import load_config, model_source, offline_model_dir


def test_unknown_model_offline_names_the_offline_choice(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    with pytest.raises(ValueError, match="smollm2-135m"):
        sparselib.load_model("no-such-org/no-such-model-xyz")


def test_a_path_that_is_not_a_model(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        sparselib.load_model(str(tmp_path))


@pytest.mark.parametrize("keep", [0.5, 0.0001])
def test_a_truncated_weights_file_is_one_line(keep, tmp_path):
    """Issue 27: a truncated model.safetensors gave a 28-line traceback."""
    from conftest import tiny_llama
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tiny_llama().save_pretrained(tmp_path)
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"a": 0}, unk_token="a")),
                            unk_token="a").save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: int(weights.stat().st_size * keep)])
    with pytest.raises(ValueError, match="damaged or incomplete") as err:
        sparselib.load_model(str(tmp_path))
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


def test_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        sparselib.load_model(device="cuda")


@pytest.mark.slow
def test_offline_model_continues_sensibly_and_is_cached(smollm2):
    model, tok = smollm2
    assert (offline_model_dir() / "model.safetensors").exists()
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


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "no connection"])
def test_an_unknown_hub_id_fails_at_once_without_the_network(monkeypatch, how):
    """Without a network, a mistyped Hub id is refused by sparselib's own check, before transformers
    is asked (which would retry for ~50 s): under HF_HUB_OFFLINE, or when a connection attempt fails."""
    import socket

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", how == "HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(ValueError, match="cannot be reached.*smollm2-135m"):
        model_source("no-such-org/no-such-model-xyz")
    with pytest.raises(ValueError, match="cannot be reached"):
        sparselib.load_model("no-such-org/no-such-model-xyz")
    assert len(attempts) == (0 if how == "HF_HUB_OFFLINE" else 2)  # one quick probe per call


def test_model_source_checks_local_directories(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        model_source(str(tmp_path / "a-file"))
    with pytest.raises(ValueError, match="no such file"):
        model_source(str(tmp_path / "missing"))
    tiny = tmp_path / "tiny"
    from conftest import tiny_llama

    tiny_llama().config.save_pretrained(tiny)
    with pytest.raises(ValueError, match="only safetensors"):
        model_source(str(tiny))
    tiny_llama().save_pretrained(tiny)
    assert model_source(str(tiny)) == str(tiny)
    assert load_config(str(tiny)).model_type == "llama"
