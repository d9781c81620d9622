"""Perplexity follows the papers' protocol; forward_times measures every model it is given."""
import math

import pytest
import torch

import sparselib
from sparselib.eval import forward_times

from conftest import tiny_llama


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


@pytest.mark.parametrize("ids", [torch.full((1, 64), 128), torch.full((1, 64), -1)])
def test_perplexity_ids_outside_the_vocabulary(ids):
    with pytest.raises(ValueError, match=r"outside \[0, 128\).*tokenizer"):
        sparselib.perplexity(tiny_llama(), ids, seqlen=16, progress=False)


def test_perplexity_text_shorter_than_a_window():
    with pytest.raises(ValueError, match="fewer than one window"):
        sparselib.perplexity(tiny_llama(), torch.zeros(1, 10, dtype=torch.long), seqlen=16)


def test_forward_times_reports_every_model_and_restores_threads():
    models = {"a": tiny_llama(), "b": tiny_llama()}
    threads = torch.get_num_threads()
    t = forward_times(models, torch.zeros(1, 8, dtype=torch.long), repeats=2, threads=1)
    assert set(t) == {"wall_ms", "cpu_ms"} and all(set(v) == {"a", "b"} for v in t.values())
    assert all(ms > 0 for v in t.values() for ms in v.values())
    assert torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        forward_times(models, torch.zeros(1, 8, dtype=torch.long), repeats=0)


class _CharTokenizer:
    """A stand-in tokenizer: one token per byte of the text (ids < 128), no special tokens."""
    pad_token_id, eos_token_id = None, 0

    def __call__(self, text, return_tensors="pt"):
        from transformers import BatchEncoding
        ids = torch.tensor([[ord(c) % 128 for c in text]])
        return BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(int(i)) for i in ids)


def test_generate_text_is_the_greedy_continuation_and_leaves_the_mode():
    model, tok = tiny_llama(), _CharTokenizer()
    model.generation_config.eos_token_id = None  # never stop early: the hand loop below does not
    model.train()
    text = sparselib.generate_text(model, tok, "abc", max_new_tokens=5)
    assert model.training  # restored
    ids = tok("abc")["input_ids"]
    with torch.no_grad():  # greedy by hand: argmax of the last position, appended, 5 times
        model.eval()
        for _ in range(5):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert text == tok.decode(ids[0, 3:]) and len(text) == 5
    assert sparselib.generate_text(model, tok, "abc", max_new_tokens=5) == text


@pytest.mark.parametrize("prompt, tokens, error", [("", 5, TypeError), (3, 5, TypeError), ("a", 0, ValueError),
                                                   ("a", 1.5, TypeError)])
def test_generate_text_bad_input(prompt, tokens, error):
    with pytest.raises(error):
        sparselib.generate_text(tiny_llama(), _CharTokenizer(), prompt, max_new_tokens=tokens)
