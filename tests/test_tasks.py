"""Task accuracy: the last-word task's scoring rule, its committed data, and lm-eval's plumbing offline."""
import json
import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import sparselib
from sparselib.tasks import LASTWORD_FILE

from conftest import tiny_llama

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "lm_eval"


# --- the last-word task ---------------------------------------------------------------------------
class _LetterTokenizer:
    """A stand-in tokenizer: one token per character (ids < 128), spaces dropped, no special tokens."""
    pad_token_id, eos_token_id = None, 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 128 for c in text if c != " "]}


class _Rigged(nn.Module):
    """A causal LM whose most likely next token is chosen by ``rule(ids, t)`` for each position t."""

    def __init__(self, rule):
        super().__init__()
        self.rule, self.config = rule, SimpleNamespace(max_position_embeddings=512)
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, input_ids, use_cache=False):
        logits = torch.zeros(*input_ids.shape, 128)
        for b in range(input_ids.shape[0]):
            for t in range(input_ids.shape[1]):
                logits[b, t, self.rule(input_ids[b], t)] = 1.0
        return SimpleNamespace(logits=logits)


class _AllLogits(nn.Module):
    """The same model without ``logits_to_keep``: the scorer takes its every-position path."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, input_ids, use_cache=False):
        return self.model(input_ids=input_ids, use_cache=use_cache)


ITEMS = [{"context": "the jury said the", "target": "jury"},
         {"context": "a much longer passage about Atlanta and its mayor, then", "target": "Atlanta"},
         {"context": "x", "target": "yz"},
         {"context": "bonds were sold; more", "target": "bonds"},
         {"context": "short", "target": "Q"}]


def _peek(ids, t):  # the true next token: a model that knows the answer
    return int(ids[t + 1]) if t + 1 < len(ids) else 0


def test_a_model_that_knows_every_next_token_gets_all_right_in_any_batch():
    for batch_size in (1, 2, 5):  # padding and the length-sorted order must not matter
        assert sparselib.lastword_correct(_Rigged(_peek), _LetterTokenizer(), ITEMS, batch_size) == [True] * 5
    assert sparselib.lastword_accuracy(_Rigged(_peek), _LetterTokenizer(), ITEMS) == 1.0


def test_every_token_of_the_word_must_be_right_and_the_verdicts_stay_in_item_order():
    tok = _LetterTokenizer()
    lengths = {len(tok(i["context"])["input_ids"]): i for i in ITEMS}

    def first_token_only(ids, t):  # right on the word's first token, wrong after it
        n = int((ids != 0).sum())  # the real length (pad is 0 here)
        context = next(L for L in sorted(lengths, reverse=True) if L < n)
        return _peek(ids, t) if t == context - 1 else 1
    got = sparselib.lastword_correct(_Rigged(first_token_only), tok, ITEMS, batch_size=2)
    assert got == [len(tok(i["target"])["input_ids"]) == 1 for i in ITEMS] == [False, False, False, False, True]

    def wrong_on_capitals(ids, t):  # knows the answer, except for words that start with a capital
        return 1 if any(65 <= int(c) <= 90 for c in ids) and t + 1 < len(ids) and 65 <= int(ids[t + 1]) <= 90 \
            else _peek(ids, t)
    got = sparselib.lastword_correct(_Rigged(wrong_on_capitals), tok, ITEMS, batch_size=3)
    assert got == [True, False, True, True, False]
    assert sparselib.lastword_accuracy(_Rigged(wrong_on_capitals), tok, ITEMS, batch_size=3) == 3 / 5


def test_the_greedy_words_of_a_real_architecture_are_counted_right_and_a_changed_letter_wrong():
    model, tok = tiny_llama(), _LetterTokenizer()
    g = torch.Generator().manual_seed(0)
    items = []
    while len(items) < 6:  # targets = the model's own greedy 3 letters after a random passage
        context = "".join(chr(c) for c in torch.randint(97, 123, (int(torch.randint(3, 40, (1,), generator=g)),),
                                                        generator=g).tolist())
        ids = torch.tensor([tok(context)["input_ids"]])
        with torch.no_grad():
            for _ in range(3):
                ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        word = "".join(chr(i) for i in ids[0, -3:].tolist())
        if all(33 <= i < 127 for i in ids[0, -3:].tolist()):  # printable, no space: the tokenizer gives them back
            items.append({"context": context, "target": word})
    assert sparselib.lastword_correct(model, tok, items, batch_size=4) == [True] * 6
    assert sparselib.lastword_correct(_AllLogits(model), tok, items, batch_size=4) == [True] * 6
    changed = [{**i, "target": i["target"][:2] + chr(33 + (ord(i["target"][2]) - 32) % 94)} for i in items]
    assert sparselib.lastword_correct(model, tok, changed, batch_size=4) == [False] * 6


@pytest.mark.parametrize("items, error, match", [([], TypeError, "non-empty list"),
                                                 ([{"context": "a"}], TypeError, "target"),
                                                 ([{"context": "a", "target": " "}], TypeError, "non-empty str")])
def test_lastword_bad_items(items, error, match):
    with pytest.raises(error, match=match):
        sparselib.lastword_accuracy(_Rigged(_peek), _LetterTokenizer(), items)


def test_lastword_passage_longer_than_the_model_allows():
    with pytest.raises(ValueError, match="longest passage"):
        sparselib.lastword_accuracy(tiny_llama(), _LetterTokenizer(), [{"context": "a" * 80, "target": "b"}])


def test_the_committed_items_follow_the_selection_rule_and_rebuild_identically():
    data = json.loads(LASTWORD_FILE.read_text())
    rule, items = data["rule"], sparselib.lastword_items()
    assert len(items) == len(data["items"]) >= 100
    for item in items:
        words = re.findall(r"[A-Za-z]+", item["context"])
        assert item["target"] in words and item["target"] not in words[-rule["not_in_last_words"]:]
        assert item["target"].isalpha() and len(item["target"]) >= rule["min_word_letters"]
        assert len(item["context"].split()) <= rule["context_words"]
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import make_lastword
    finally:
        sys.path.pop(0)
    assert make_lastword.build(make_lastword.SOURCE.read_text(encoding="utf-8")) == data["items"]
    # held out: no passage is in the calibration text
    train = (ROOT / "sparselib" / "data" / "brown_train.txt").read_text(encoding="utf-8")
    assert not any(item["context"][:80] in train for item in items)


# --- lm-eval --------------------------------------------------------------------------------------
def test_evaluate_tasks_offline_says_why_before_running(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="cannot be reached.*lastword_accuracy"):
        sparselib.evaluate_tasks(tiny_llama(), None, ["boolq", "arc_easy"])


@pytest.mark.parametrize("kwargs, error, match", [(dict(tasks=[]), TypeError, "task name"),
                                                  (dict(tasks=[3]), TypeError, "task name"),
                                                  (dict(num_fewshot=-1), ValueError, "num_fewshot"),
                                                  (dict(limit=0), ValueError, "limit"),
                                                  (dict(task_dir="/no/such/dir"), ValueError, "not a directory")])
def test_evaluate_tasks_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        sparselib.evaluate_tasks(tiny_llama(), None, **{"tasks": ["boolq"], **kwargs})


def _word_tokenizer():
    """A real (fast) Hugging Face tokenizer with one token per word of the fixture, ids < 128."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    docs = [json.loads(line) for line in (FIXTURES / "sparselib_tiny_choice.jsonl").read_text().splitlines()]
    words = sorted({w for d in docs for w in (d["question"] + " " + " ".join(d["choices"])).split()})
    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>"] + words)}
    assert len(vocab) < 128
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")
    return tok, docs


def test_evaluate_tasks_runs_lm_eval_offline_on_a_local_task(monkeypatch):
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'sparselib[tasks]'); "
                                          "evaluate_tasks' plumbing is tested where it is")
    monkeypatch.chdir(ROOT)  # the task's data_files are relative to the repository root
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model, (tok, docs) = tiny_llama(), _word_tokenizer()
    model.train()
    out = sparselib.evaluate_tasks(model, tok, ["sparselib_tiny_choice"], task_dir=FIXTURES, batch_size=2)
    assert model.training  # the mode is given back
    # the harness's accuracy equals the rule by hand: the choice with the highest log-likelihood
    right = right_norm = 0
    model.eval()
    for doc in docs:
        context = tok(doc["question"], add_special_tokens=False)["input_ids"]
        lls = []
        for choice in doc["choices"]:
            cont = tok(" " + choice, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([context + cont])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            lls.append(sum(logp[len(context) - 1 + j, c].item() for j, c in enumerate(cont)))
        right += max(range(len(lls)), key=lls.__getitem__) == doc["answer"]
        norm = [ll / len(" " + c) for ll, c in zip(lls, doc["choices"])]
        right_norm += max(range(len(norm)), key=norm.__getitem__) == doc["answer"]
    metrics = out["sparselib_tiny_choice"]
    assert math.isclose(metrics["acc"], right / len(docs)) and math.isclose(metrics["acc_norm"], right_norm / len(docs))
    p, n = metrics["acc"], len(docs)  # the harness's standard error of a mean of 0/1 scores
    assert math.isclose(metrics["acc_stderr"], math.sqrt(p * (1 - p) / (n - 1)), abs_tol=1e-12)
