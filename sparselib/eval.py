"""Perplexity, with the protocol the SparseGPT / Wanda / SliceGPT papers use.

The test text is one token stream, cut into non-overlapping windows of ``seqlen`` tokens; the
remainder is dropped. Perplexity is ``exp`` of the mean next-token cross-entropy over all
predicted tokens of all windows (each window predicts its ``seqlen - 1`` last tokens).
"""
from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checks import (check_batch_size, check_enough_tokens, check_id_range, check_int, check_seqlen,
                     max_positions)
from .models import model_device

#: The course's standard evaluation slice: the first 16,384 tokens of the Brown test split
#: (64 windows of 256), so a CPU evaluation takes about 40 s. Benchmarks and chapters all use it.
EVAL_TOKENS = 16384
#: The course's standard evaluation window length.
EVAL_SEQLEN = 256


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, seqlen: int = 256, batch_size: int = 4,
               progress: bool = True) -> float:
    """Perplexity of ``model`` on token ids ``[1, N]`` (or ``[N]``), in windows of ``seqlen`` tokens."""
    if not isinstance(ids, torch.Tensor) or ids.dtype != torch.long:
        raise TypeError("ids must be a LongTensor of token ids, e.g. sparselib.test_data(tokenizer)")
    check_seqlen(seqlen, max_positions(model.config))
    check_batch_size(batch_size)
    check_id_range(ids, getattr(model.config, "vocab_size", None))
    ids = ids.reshape(-1)
    nwindows = ids.numel() // seqlen
    check_enough_tokens(ids.numel(), seqlen, "the text", "use more text or a smaller seqlen")
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


def forward_times(models: dict, ids: torch.Tensor, repeats: int = 5, threads: int = 1) -> dict[str, dict[str, float]]:
    """Median wall and CPU time (ms) of one forward pass over ``ids`` for each of ``models`` (a dict
    name -> model), with ``threads`` intra-op threads. The models take turns, so a change in the
    machine's load falls on all of them alike; one warm-up pass each is not counted."""
    check_int(repeats, "repeats", 1)
    check_int(threads, "threads", 1)
    wall, cpu = {name: [] for name in models}, {name: [] for name in models}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for model in models.values():
                model(input_ids=ids, use_cache=False)
            for _ in range(repeats):
                for name, model in models.items():
                    w, c = time.perf_counter(), time.process_time()
                    model(input_ids=ids, use_cache=False)
                    wall[name].append(1000 * (time.perf_counter() - w))
                    cpu[name].append(1000 * (time.process_time() - c))
    finally:
        torch.set_num_threads(before)
    return {"wall_ms": {n: statistics.median(v) for n, v in wall.items()},
            "cpu_ms": {n: statistics.median(v) for n, v in cpu.items()}}


#: The prompt chapter 0 lets the model complete; the pruning chapters complete it again after pruning.
PROMPT = "The capital of France is"


@torch.no_grad()
def generate_text(model, tokenizer, prompt: str = PROMPT, max_new_tokens: int = 15) -> str:
    """The greedy continuation of ``prompt`` (the new text only, special tokens dropped).

    Greedy decoding with a fixed token budget, so the same model gives the same text every time and
    two models (dense and pruned) can be compared token for token."""
    if not isinstance(prompt, str) or not prompt:
        raise TypeError("prompt must be a non-empty str, e.g. sparselib.PROMPT")
    check_int(max_new_tokens, "max_new_tokens", 1)
    inputs = tokenizer(prompt, return_tensors="pt").to(model_device(model))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    try:
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    finally:
        model.train(was_training)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
