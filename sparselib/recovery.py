"""Recovery fine-tuning: train a pruned model's surviving weights while its masks stay fixed.

    data = sparselib.calibration_data(tokenizer, nsamples=steps * 4, seqlen=256, seed=1)  # Brown train
    report = sparselib.recover(model, data, steps=50)                 # full masked fine-tuning
    report = sparselib.recover(model, data, steps=50, lora_rank=16)   # masked LoRA, merged at the end

The mask of every decoder-layer linear is read off its zeros before the first step
(``keep = W != 0``) and never changes:

* full fine-tuning trains every linear weight; a gradient hook zeroes the gradient of pruned weights
  and the mask is re-applied after every optimizer step, so AdamW's moments and weight decay cannot
  revive a pruned weight, not even by rounding;
* masked LoRA freezes ``W`` and trains ``A [r, in]``, ``B [out, r]`` with the forward weight
  ``W + (s·B A) ⊙ keep``; merging ``ΔW ⊙ keep`` keeps the pattern (:func:`merge_lora` without the
  mask fills the zeros in: ``B A`` is dense).

Embeddings, norms and ``lm_head`` stay frozen. AdamW, linear warm-up then a cosine schedule to zero.
Deterministic for a given ``seed`` on a given machine (batches are taken in order).

Memory (``benchmarks/recovery_memory.py --record`` → ``sparselib/results/recovery_memory_smollm2.json``;
2026-12-02, 2-thread AMD EPYC, torch 2.13.0+cpu): SmolLM2-135M in fp32, batches of 4 × 256 tokens,
each mode in a fresh process. Full fine-tuning peaked at 5.8 GB resident (1.4 GB after loading and
pruning): gradients and AdamW's two moments of the ~106 M decoder-linear weights (3 × 0.42 GB),
activations, and the logits over the 49k-token vocabulary. Masked LoRA of rank 16 trains ~4.9 M
parameters, yet peaked at 5.9 GB resident. Counted tensor by tensor (``--tensors`` →
``recovery_memory_tensors_smollm2.json``, 2 steps) masked LoRA does need less: its tensors peaked
0.59 GB below full fine-tuning's (2.62 vs 3.21 GB beyond the loaded model). The mask makes the update
``(s·B A) ⊙ keep`` full-rank, so each linear's full-size merged weight is formed in every forward
and kept for the backward pass (what autograd keeps grows from 1.43 to 1.98 GB); a plain LoRA never
forms ``B A``. The resident peak includes memory the allocator has freed but kept.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from .models import decoder_layers, layer_linears

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    steps: int
    tokens_per_step: int
    lora_rank: int | None
    lr: float
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    seconds: float = 0.0
    trained_parameters: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """``keep`` (True = survives) of every decoder-layer linear's weight, in the module's own layout,
    by its name in ``model``."""
    names = {id(m): n for n, m in model.named_modules()}
    return {names[id(m)]: m.weight.detach() != 0
            for layer in decoder_layers(model) for m in layer_linears(layer).values()}


def merge_lora(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: float = 1.0,
               keep: torch.Tensor | None = None) -> torch.Tensor:
    """``W + scale · B A`` (plain LoRA merge, dense), or ``W + (scale · B A) ⊙ keep`` with a mask.

    ``W [out, in]``, ``A [r, in]``, ``B [out, r]``, ``keep`` boolean like ``W``. Returns a new tensor.
    """
    delta = scale * (B @ A)
    return W + (delta if keep is None else delta * keep)


class _MaskedLoRA(nn.Module):
    """Parametrization ``W ↦ W + (s · B A) ⊙ keep`` (in the module's own weight layout)."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float, keep: torch.Tensor):
        super().__init__()
        rows, cols = weight.shape
        self.A = nn.Parameter(torch.randn(rank, cols, dtype=weight.dtype) / math.sqrt(cols))
        self.B = nn.Parameter(torch.zeros(rows, rank, dtype=weight.dtype))  # ΔW = 0 at the start
        self.scale = alpha / rank
        self.register_buffer("keep", keep)

    def forward(self, W):
        return merge_lora(W, self.A, self.B, self.scale, self.keep)


def _check(model, data, steps, batch_size, lr, lora_rank):
    if not isinstance(data, torch.Tensor) or data.dtype != torch.long or data.dim() != 2:
        raise TypeError("data must be a LongTensor [nsamples, seqlen] of token ids, e.g. "
                        "sparselib.calibration_data(tokenizer, nsamples=steps * batch_size, seed=1)")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if data.shape[0] < batch_size or data.shape[1] < 2:
        raise ValueError(f"data has shape {tuple(data.shape)}; it needs at least batch_size={batch_size} "
                         f"rows of at least 2 tokens")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and (int(data.max()) >= vocab or int(data.min()) < 0):
        raise ValueError(f"data holds token ids outside the model's vocabulary of {vocab}; tokenize "
                         f"with this model's tokenizer")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if lora_rank is not None and (isinstance(lora_rank, bool) or not isinstance(lora_rank, int)
                                  or lora_rank < 1):
        raise ValueError(f"lora_rank must be a positive int or None (full fine-tuning), got {lora_rank!r}")


def cosine_lr(step: int, steps: int, warmup: int) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based): linear warm-up, then cosine to 0."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress))


def recover(model: nn.Module, data: torch.Tensor, steps: int, *, batch_size: int = 4, lr: float | None = None,
            lora_rank: int | None = None, lora_alpha: float | None = None, weight_decay: float = 0.0,
            warmup: int | None = None, seed: int = 0, progress: bool = True, callback=None) -> RecoveryReport:
    """Fine-tune ``model`` in place for ``steps`` AdamW steps with every pruning mask held fixed.

    data:       LongTensor ``[nsamples, seqlen]`` of training windows (Brown train:
                ``sparselib.calibration_data(tok, nsamples=..., seed=1)``); step ``t`` reads rows
                ``t·batch_size ...`` (wrapping around).
    lr:         default 1e-4 for full fine-tuning, 1e-3 for LoRA; ``warmup`` steps default to 10 %.
    lora_rank:  None = full masked fine-tuning; an int = masked LoRA of that rank on every
                decoder-layer linear (``lora_alpha`` defaults to the rank), merged as ``ΔW ⊙ keep``.
    callback:   ``callback(step, model, loss)`` after each step (1-based step), e.g. to evaluate.
    Returns a :class:`RecoveryReport` with the loss of every step.
    """
    lr = (1e-3 if lora_rank else 1e-4) if lr is None else lr
    _check(model, data, steps, batch_size, lr, lora_rank)
    warmup = max(0, steps // 10) if warmup is None else warmup
    keeps = masks_of(model)
    modules = dict(model.named_modules())
    frozen = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(seed)
    params, handles = _trainable(modules, keeps, lora_rank, lora_alpha, torch.Generator().manual_seed(seed))
    device = params[0].device
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: cosine_lr(t, steps, warmup))
    report = RecoveryReport(steps, batch_size * (data.shape[1] - 1), lora_rank, lr,
                            trained_parameters=sum(p.numel() for p in params))
    was_training = model.training
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(steps), desc="recover" + (f" (LoRA r={lora_rank})" if lora_rank else ""),
               disable=not progress)
    try:
        for step in bar:
            rows = (torch.arange(batch_size) + step * batch_size) % data.shape[0]
            loss = _step(model, data[rows].to(device), opt, sched, report)
            if lora_rank is None:  # masked gradients leave them at 0; re-applying keeps it exact whatever the optimiser does
                with torch.no_grad():
                    for name, keep in keeps.items():
                        modules[name].weight.mul_(keep)
            report.losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if callback is not None:
                model.eval()
                callback(step + 1, model, loss.item())
                model.train()
    finally:
        _restore(model, modules, keeps, handles, lora_rank, frozen, was_training)
    report.seconds = time.perf_counter() - start
    log.info("recovered %d steps in %.1f s, loss %.3f -> %.3f", steps, report.seconds,
             report.losses[0], report.losses[-1])
    return report


def _trainable(modules: dict, keeps: dict, lora_rank, lora_alpha, gen: torch.Generator):
    """What the optimiser trains: each pruned weight with its gradient masked (full fine-tuning), or a
    masked LoRA pair per pruned linear. Returns ``(params, hook handles)``."""
    params, handles = [], []
    if lora_rank is None:
        for name, keep in keeps.items():
            weight = modules[name].weight
            weight.requires_grad_(True)
            handles.append(weight.register_hook(lambda g, keep=keep: g * keep))
            params.append(weight)
        return params, handles
    alpha = float(lora_rank if lora_alpha is None else lora_alpha)
    for name, keep in keeps.items():
        module = modules[name]
        lora = _MaskedLoRA(module.weight, lora_rank, alpha, keep)
        with torch.no_grad():  # A from the seeded generator, so runs repeat exactly
            lora.A.copy_(torch.randn(lora.A.shape, generator=gen) / math.sqrt(lora.A.shape[1]))
        parametrize.register_parametrization(module, "weight", lora)
        params += [lora.A, lora.B]
    return params, handles


def _step(model: nn.Module, batch: torch.Tensor, opt, sched, report: RecoveryReport) -> torch.Tensor:
    """One AdamW step of next-token cross-entropy on ``batch [batch_size, seqlen]``."""
    logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    report.lrs.append(sched.get_last_lr()[0])
    opt.step()
    sched.step()
    return loss


def _restore(model, modules, keeps, handles, lora_rank, frozen: dict, was_training: bool) -> None:
    """Undo the training set-up: hooks off, LoRA merged as ``ΔW ⊙ keep`` into W (the parametrization
    computes exactly that), ``requires_grad`` and train/eval mode as they were."""
    for h in handles:
        h.remove()
    if lora_rank is not None:
        for name in keeps:
            if parametrize.is_parametrized(modules[name], "weight"):
                parametrize.remove_parametrizations(modules[name], "weight", leave_parametrized=True)
    for n, p in model.named_parameters():
        p.requires_grad_(frozen.get(n, False))
    model.train(was_training)
