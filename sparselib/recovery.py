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

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from .checks import check_batch_size, check_int, check_number, check_token_ids, max_positions
from .models import decoder_layers, is_conv1d, layer_linears

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


class _MaskedLoRALinear(torch.autograd.Function):
    """``y = x W'ᵀ + b`` with ``W' = W + (s · B A) ⊙ keep`` (:func:`merge_lora`), forming ``W'`` in the
    forward pass and again in the backward pass instead of keeping it: autograd saves only ``x`` and
    references to tensors that exist anyway. ``conv1d``: GPT-2's layout, ``y = x W' + b``."""

    @staticmethod
    def forward(ctx, x, W, bias, A, B, keep, scale: float, conv1d: bool):
        ctx.save_for_backward(x, W, A, B, keep)
        ctx.scale, ctx.conv1d = scale, conv1d
        Wp = merge_lora(W, A, B, scale, keep)
        return F.linear(x, Wp.t() if conv1d else Wp, bias)

    @staticmethod
    def backward(ctx, g):
        x, W, A, B, keep = ctx.saved_tensors
        Wp = merge_lora(W, A, B, ctx.scale, keep)      # W' again: one linear's worth, freed at once
        Wl = Wp.t() if ctx.conv1d else Wp               # [out, in]
        grad_x = g @ Wl if ctx.needs_input_grad[0] else None
        gW = g.reshape(-1, g.shape[-1]).t() @ x.reshape(-1, x.shape[-1])  # dL/dW' [out, in]
        if ctx.conv1d:
            gW = gW.t()
        g_delta = (gW * keep) * ctx.scale               # through ⊙ keep, then s·
        return grad_x, None, None, B.t() @ g_delta, g_delta @ A.t(), None, None, None


class _Recomputed:
    """A linear whose forward is :class:`_MaskedLoRALinear` for the time of training (``recompute=True``);
    ``remove(merge)`` writes ``W + (s · B A) ⊙ keep`` into its weight (or leaves W) and puts back its forward."""

    def __init__(self, module: nn.Module, lora: _MaskedLoRA):
        self.module, self.lora = module, lora
        conv1d = is_conv1d(module)

        def forward(x):
            return _MaskedLoRALinear.apply(x, module.weight, module.bias, lora.A, lora.B, lora.keep, lora.scale,
                                           conv1d)
        module.forward = forward  # an instance attribute: nn.Module.__call__ finds it first

    def remove(self, merge: bool = False) -> None:
        if merge:
            with torch.no_grad():
                self.module.weight.copy_(self.lora(self.module.weight))
        del self.module.forward


@contextlib.contextmanager
def saved_tensor_bytes(model: nn.Module):
    """Count the bytes autograd keeps for the backward pass while the block runs (each storage once),
    leaving out ``model``'s parameters and buffers, which exist anyway::

        with saved_tensor_bytes(model) as saved:
            recover(model, data, steps=1, ...)
        saved["bytes"]

    A tensor-level figure, independent of the allocator and of the machine's load."""
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen, saved = set(), {"bytes": 0}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in own and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            saved["bytes"] += storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved


def _check(model, data, steps, batch_size, lr, lora_rank, lora_alpha, weight_decay, warmup, seed,
           callback, recompute=False) -> dict[str, torch.Tensor]:
    """Every argument, before anything changes (:mod:`sparselib.checks`); returns the masks."""
    check_token_ids(data, getattr(model.config, "vocab_size", None), max_positions(model.config), "data")
    check_int(steps, "steps", 1)
    check_batch_size(batch_size)
    if data.shape[0] < batch_size:
        raise ValueError(f"data has {data.shape[0]} rows, fewer than batch_size={batch_size}; give more "
                         f"windows (nsamples=steps * batch_size) or a smaller batch_size")
    check_number(lr, "lr", fix="e.g. 1e-4 for full fine-tuning, 1e-3 for LoRA")
    check_number(weight_decay, "weight_decay", above=False)
    if warmup is not None:
        check_int(warmup, "warmup", 0)
    check_int(seed, "seed", 0)
    if not isinstance(recompute, bool):
        raise TypeError(f"recompute must be True or False, not {recompute!r}")
    if recompute and lora_rank is None:
        raise TypeError("recompute applies to masked LoRA only; pass lora_rank too (or drop recompute)")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a function callback(step, model, loss), not {type(callback).__name__}")
    keeps = masks_of(model)
    dims = {name: m.weight.shape for name, m in model.named_modules() if name in keeps}
    if lora_rank is not None:
        check_int(lora_rank, "lora_rank", 1)
        name, shape = min(dims.items(), key=lambda kv: min(kv[1]))
        if lora_rank > min(shape):
            raise ValueError(f"lora_rank={lora_rank} is above min(out, in) = {min(shape)} of {name} "
                             f"{tuple(shape)}; use lora_rank <= {min(shape)}")
        if lora_alpha is not None:
            check_number(lora_alpha, "lora_alpha", fix="the LoRA scale is lora_alpha / lora_rank")
    elif lora_alpha is not None:
        raise TypeError("lora_alpha applies to LoRA only; pass lora_rank too (or drop lora_alpha)")
    low = sorted({str(m.weight.dtype) for name, m in model.named_modules()
                  if name in keeps and m.weight.dtype not in (torch.float32, torch.float64)})
    if low:
        raise TypeError(f"recover trains in float32, and this model's linears are {', '.join(low)} (AdamW's "
                        f"updates underflow there and the weights become NaN); call model.float() first, "
                        f"and cast back afterwards (model.half() / model.bfloat16())")
    if all(bool(keep.all()) for keep in keeps.values()):
        raise ValueError("no decoder-layer linear of this model has a pruned (zero) weight: recover trains a "
                         "pruned model's surviving weights; prune it first (sparselib.prune)")
    return keeps


def cosine_lr(step: int, steps: int, warmup: int) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based): linear warm-up, then cosine to 0."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress))


def recover(model: nn.Module, data: torch.Tensor, steps: int, *, batch_size: int = 4, lr: float | None = None,
            lora_rank: int | None = None, lora_alpha: float | None = None, weight_decay: float = 0.0,
            warmup: int | None = None, seed: int = 0, recompute: bool = False, progress: bool = True,
            callback=None) -> RecoveryReport:
    """Fine-tune ``model`` in place for ``steps`` AdamW steps with every pruning mask held fixed.

    data:       LongTensor ``[nsamples, seqlen]`` of training windows (Brown train:
                ``sparselib.calibration_data(tok, nsamples=..., seed=1)``); step ``t`` reads rows
                ``t·batch_size ...`` (wrapping around).
    lr:         default 1e-4 for full fine-tuning, 1e-3 for LoRA; ``warmup`` steps default to 10 %.
    lora_rank:  None = full masked fine-tuning; an int = masked LoRA of that rank on every
                decoder-layer linear (``lora_alpha`` defaults to the rank), merged as ``ΔW ⊙ keep``.
    recompute:  masked LoRA only: form each linear's ``W + (s·B A) ⊙ keep`` again in the backward
                pass instead of keeping it from the forward pass (the same numbers, to float rounding;
                about a linear's weight less memory per linear, one more product each). While it
                trains, a linear's ``weight`` is its frozen ``W`` (the update is merged at the end).
    callback:   ``callback(step, model, loss)`` after each step (1-based step), e.g. to evaluate.
    Returns a :class:`RecoveryReport` with the loss of every step.

    Bad input (an unpruned or float16 model, ids outside the vocabulary, a non-finite ``lr``, ...)
    raises ValueError/TypeError before anything changes. If training fails part-way (a non-finite
    loss raises ``FloatingPointError``; an error in ``callback``; Ctrl-C), the model is put back
    exactly as it was: weights, ``requires_grad`` and train/eval mode.
    """
    lr = (1e-3 if lora_rank else 1e-4) if lr is None else lr
    keeps = _check(model, data, steps, batch_size, lr, lora_rank, lora_alpha, weight_decay, warmup, seed,
                   callback, recompute)
    warmup = max(0, steps // 10) if warmup is None else warmup
    modules = dict(model.named_modules())
    frozen = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    # full fine-tuning changes W in place: a copy to put back if anything fails (LoRA leaves W alone)
    backup = {name: modules[name].weight.detach().clone() for name in keeps} if lora_rank is None else {}
    handles, done = [], False
    report = RecoveryReport(steps, batch_size * (data.shape[1] - 1), lora_rank, lr)
    start = time.perf_counter()
    try:  # from the first change on: whatever fails (or Ctrl-C), the model is put back as it was
        for p in model.parameters():
            p.requires_grad_(False)
        torch.manual_seed(seed)
        params = _trainable(modules, keeps, lora_rank, lora_alpha, torch.Generator().manual_seed(seed), handles,
                            recompute)
        report.trained_parameters = sum(p.numel() for p in params)
        device = params[0].device
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: cosine_lr(t, steps, warmup))
        model.train()
        bar = tqdm(range(steps), desc="recover" + (f" (LoRA r={lora_rank})" if lora_rank else ""),
                   disable=not progress)
        for step in bar:
            rows = (torch.arange(batch_size) + step * batch_size) % data.shape[0]
            loss = _step(model, data[rows].to(device), opt, sched, report, step)
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
        _check_finite(model, data[:batch_size].to(device), steps, lr)  # the last step's update too
        done = True
    finally:
        _restore(model, [modules[name] for name in keeps], handles, frozen, was_training, None if done else backup)
    report.seconds = time.perf_counter() - start
    log.info("recovered %d steps in %.1f s, loss %.3f -> %.3f", steps, report.seconds,
             report.losses[0], report.losses[-1])
    return report


def _trainable(modules: dict, keeps: dict, lora_rank, lora_alpha, gen: torch.Generator, handles: list,
               recompute: bool = False):
    """What the optimiser trains: each pruned weight with its gradient masked (full fine-tuning), or a
    masked LoRA pair per pruned linear. Returns the parameters; the hooks' handles go into ``handles``
    as they are made (so that a failure half-way can remove them)."""
    params = []
    if lora_rank is None:
        for name, keep in keeps.items():
            weight = modules[name].weight
            weight.requires_grad_(True)
            handles.append(weight.register_hook(lambda g, keep=keep: g * keep))
            params.append(weight)
        return params
    alpha = float(lora_rank if lora_alpha is None else lora_alpha)
    for name, keep in keeps.items():
        module = modules[name]
        lora = _MaskedLoRA(module.weight, lora_rank, alpha, keep)
        with torch.no_grad():  # A from the seeded generator, so runs repeat exactly
            lora.A.copy_(torch.randn(lora.A.shape, generator=gen) / math.sqrt(lora.A.shape[1]))
        if recompute:
            handles.append(_Recomputed(module, lora))
        else:
            parametrize.register_parametrization(module, "weight", lora)
        params += [lora.A, lora.B]
    return params


def _step(model: nn.Module, batch: torch.Tensor, opt, sched, report: RecoveryReport, step: int) -> torch.Tensor:
    """One AdamW step of next-token cross-entropy on ``batch [batch_size, seqlen]``; a non-finite
    loss stops before the update."""
    loss = _loss(model, batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the training loss became {loss.item()} at step {step + 1} (lr={report.lr:g} too "
                                 f"high?); the model is as it was before recover")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    report.lrs.append(sched.get_last_lr()[0])
    opt.step()
    sched.step()
    return loss


def _loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


@torch.no_grad()
def _check_finite(model: nn.Module, batch: torch.Tensor, steps: int, lr: float) -> None:
    """The model after the last update still gives a finite loss (each step checks the one before)."""
    loss = _loss(model, batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"after {steps} steps the loss is {loss.item()} (lr={lr:g} too high?); the "
                                 f"model is as it was before recover")


def _restore(model, linears: list, handles: list, frozen: dict, was_training: bool, backup: dict | None) -> None:
    """Undo the training set-up: hooks off; LoRA merged as ``ΔW ⊙ keep`` into W (the parametrization
    computes exactly that), or, with ``backup`` (a failure), every weight as it was before; then
    ``requires_grad`` and train/eval mode as they were."""
    for h in handles:
        h.remove(merge=backup is None) if isinstance(h, _Recomputed) else h.remove()
    for module in linears:
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=backup is None)
    with torch.no_grad():
        for module, W in zip(linears, (backup or {}).values()):
            module.weight.copy_(W)
    for n, p in model.named_parameters():
        p.requires_grad_(frozen.get(n, False))
    model.train(was_training)
