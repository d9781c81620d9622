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
