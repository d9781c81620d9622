"""Perplexity, with the protocol the SparseGPT / Wanda / SliceGPT papers use.

The test text is one token stream, cut into non-overlapping windows of ``seqlen`` tokens; the
remainder is dropped. Perplexity is ``exp`` of the mean next-token cross-entropy over all
predicted tokens of all windows (each window predicts its ``seqlen - 1`` last tokens).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .models import model_device

#: The course's standard evaluation slice: the first 16,384 tokens of the Brown test split
#: (64 windows of 256), so a CPU evaluation takes about 40 s. Benchmarks and chapters all use it.
EVAL_TOKENS = 16384
#: The course's standard evaluation window length.
EVAL_SEQLEN = 256


def max_positions(model) -> int | None:
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def check_seqlen(model, seqlen) -> None:
    if isinstance(seqlen, bool) or not isinstance(seqlen, int):
        raise TypeError(f"seqlen must be an int, not {type(seqlen).__name__}")
    if seqlen < 2:
        raise ValueError(f"seqlen must be at least 2 (one token to predict from another), got {seqlen}")
    limit = max_positions(model)
    if limit is not None and seqlen > limit:
        raise ValueError(f"seqlen={seqlen} is above the model's maximum of {limit} positions; "
                         f"use seqlen <= {limit}")


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, seqlen: int = 256, batch_size: int = 4,
               progress: bool = True) -> float:
    """Perplexity of ``model`` on token ids ``[1, N]`` (or ``[N]``), in windows of ``seqlen`` tokens."""
    if not isinstance(ids, torch.Tensor) or ids.dtype != torch.long:
        raise TypeError("ids must be a LongTensor of token ids, e.g. sparselib.test_data(tokenizer)")
    check_seqlen(model, seqlen)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    ids = ids.reshape(-1)
    nwindows = ids.numel() // seqlen
    if nwindows == 0:
        raise ValueError(f"the text has {ids.numel()} tokens, fewer than one window of seqlen={seqlen}; "
                         f"use more text or a smaller seqlen")
    windows = ids[: nwindows * seqlen].view(nwindows, seqlen)
    device = model_device(model)
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for start in tqdm(range(0, nwindows, batch_size), desc="perplexity", disable=not progress,
                      leave=False):
        batch = windows[start:start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                              reduction="sum")
        total_nll += nll.item()
        total_tokens += batch[:, 1:].numel()
    model.train(was_training)
    return math.exp(total_nll / total_tokens)
