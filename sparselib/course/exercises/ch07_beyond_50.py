"""Chapter "When 50 % is not enough": OWL's layer sparsities, a layer allocation picked by hand from
the measured layer sensitivity, a training step that keeps the mask, and a LoRA merge that keeps it."""
from __future__ import annotations

import math

import torch
from torch import nn

from ...masks import nm_mask
from ...owl import owl_sparsities
from ...recovery import merge_lora
from ..results import load_result
from ._answers import call, need_function, number
from .registry import checker

_CASES = [  # (ratios, target, lam): ordinary, skewed, one layer, all equal
    ([0.010, 0.020, 0.050, 0.015], 0.7, 0.08),
    ([0.0, 0.0, 0.0, 0.1], 0.6, 0.08),
    ([0.03, 0.01], 0.5, 0.05),
    ([0.02, 0.02, 0.02], 0.7, 0.08),
]


@checker("ex-owl-sparsities")
def check_owl_sparsities(fb, fn):
    """Your ``fn(ratios, target, lam)`` -> one sparsity per (equally sized) layer, by the paper's rule."""
    need_function(fn, "check_owl_sparsities(my_owl)")
    for ratios, target, lam in _CASES:
        got = call(fb, fn, list(ratios), target, lam)
        if got is None:
            return fb
        got = torch.as_tensor(got, dtype=torch.float64).reshape(-1)
        want = torch.tensor(owl_sparsities(ratios, target, lam=lam), dtype=torch.float64)
        if got.numel() != want.numel():
            return fb.fail(f"ratios {ratios}: {got.numel()} sparsities for {want.numel()} layers; one per layer")
        if torch.allclose(got, want, atol=1e-9):
            continue
        if abs(got.mean().item() - target) > 1e-6:
            return fb.fail(f"ratios {ratios}: your sparsities average {got.mean().item():.4f}, not the target "
                           f"{target}: centre the ratios on their mean before scaling")
        if torch.allclose(got, 2 * target - want, atol=1e-9):
            return fb.fail(f"ratios {ratios}: the signs are reversed: more outliers must get *less* sparsity")
        code_rule = torch.tensor(owl_sparsities(ratios, target, lam=lam, rule="code"), dtype=torch.float64)
        if torch.allclose(got, code_rule, atol=1e-9):
            return fb.fail(f"ratios {ratios}: this is the reference code's min-max rule (span 2λ around the "
                           f"mean); the paper's rule scales so that the largest deviation is λ")
        return fb.fail(f"ratios {ratios}, target {target}, λ={lam}: expected "
                       f"{[round(x, 4) for x in want.tolist()]}, got {[round(x, 4) for x in got.tolist()]}")
    fb.note("matches sparselib.owl_sparsities on ordinary, skewed and uniform ratios")


@checker("ex-masked-merge")
def check_masked_merge(fb, fn):
    """Your ``fn(W, A, B, scale)`` -> the merged weight, with every pruned zero of ``W`` kept."""
    need_function(fn, "check_masked_merge(my_masked_merge)")
    g = torch.Generator().manual_seed(0)
    W = torch.randn(8, 16, generator=g)
    W24 = W * nm_mask(W.abs(), 2, 4)
    Wun = W * (torch.rand(8, 16, generator=g) > 0.7)
    A, B = torch.randn(4, 16, generator=g), torch.randn(8, 4, generator=g)
    for name, Wp in (("2:4", W24), ("70 % unstructured", Wun)):
        W0 = Wp.clone()
        got = call(fb, fn, Wp, A, B, 0.5)
        if got is None:
            return fb
        if not torch.equal(Wp, W0):
            return fb.fail("your function changed W in place; return a new tensor")
        if not isinstance(got, torch.Tensor) or got.shape != Wp.shape:
            return fb.fail(f"return a tensor shaped like W {tuple(Wp.shape)}")
        keep = Wp != 0
        revived = int((got[~keep] != 0).sum())
        if revived:
            plain = torch.allclose(got, merge_lora(Wp, A, B, 0.5))
            return fb.fail(f"{name}: {revived} pruned weights became non-zero"
                           + (" — this is the plain merge W + s·BA; multiply the update by the mask" if plain else ""))
        if not torch.allclose(got, merge_lora(Wp, A, B, 0.5, keep), atol=1e-6):
            return fb.fail(f"{name}: the zeros are kept but the surviving weights differ from W + s·(BA) there")
    fb.note("every zero kept, survivors updated by s·BA, for 2:4 and unstructured masks")


def _ranks(values) -> torch.Tensor:
    """Ranks 0..n-1 of ``values``, ties sharing their mean rank (what a rank correlation needs)."""
    v = torch.as_tensor(values, dtype=torch.float64)
    order = v.argsort(stable=True)
    ranks = torch.empty_like(v)
    ranks[order] = torch.arange(len(v), dtype=torch.float64)
    for x in v.unique():
        tied = v == x
        ranks[tied] = ranks[tied].mean()
    return ranks


def rank_correlation(a, b) -> float:
    """Spearman's rank correlation of two equally long sequences (nan if one is constant)."""
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return torch.corrcoef(torch.stack([ra, rb]))[0, 1].item()


@checker("ex-layer-allocation")
def check_layer_allocation(fb, sparsities, target: float = 0.7, lam: float = 0.08):
    """Your hand-picked sparsity for each decoder layer of SmolLM2: size-weighted mean ``target``,
    every layer within ``lam`` of it, sensitive layers pruned less. Compared with the recorded
    layer-sensitivity scan and with OWL (both rules) at the same target and ``lam``."""
    target, lam = number(target, "target"), number(lam, "lam")
    if not 0 < target < 1 or not 0 < lam < min(target, 1 - target):
        raise ValueError(f"target must be a fraction in (0, 1) and lam in (0, {min(target, 1 - target):g}), "
                         f"got target={target}, lam={lam}")
    if isinstance(sparsities, (str, bytes)) or not hasattr(sparsities, "__len__"):
        raise TypeError(f"pass your list with one sparsity per decoder layer, not {type(sparsities).__name__}")
    rec = load_result("recovery_smollm2")            # the outlier ratios and layer sizes of SmolLM2
    sens = load_result("layer_sensitivity_smollm2")  # perplexity with one layer at a time pruned to 70 %
    sizes, layers = rec["layer_sizes"], sens["layers"]
    try:
        S = torch.as_tensor([float(x) for x in sparsities], dtype=torch.float64)
    except (TypeError, ValueError):
        return fb.fail("every entry must be a number (a fraction such as 0.65)")
    if len(S) != len(sizes):
        return fb.fail(f"{len(S)} sparsities for {len(sizes)} decoder layers: give one per layer")
    if not torch.isfinite(S).all():
        return fb.fail("some sparsities are not finite numbers")
    if S.max() > 1 and S.max() <= 100:
        return fb.fail(f"these look like percentages (up to {S.max().item():g}); give fractions: 0.65, not 65")
    if S.min() < 0 or S.max() >= 1:
        return fb.fail(f"sparsities run from {S.min().item():.3f} to {S.max().item():.3f}; each must lie in [0, 1)")
    w = torch.tensor(sizes, dtype=torch.float64)
    mean = (S * w).sum().item() / w.sum().item()
    if abs(mean - target) > 1e-3:
        return fb.fail(f"the size-weighted mean of your sparsities is {mean:.4f}, not the target {target}: "
                       f"the model would lose {'more' if mean > target else 'fewer'} weights than uniform "
                       f"pruning; subtract {mean - target:+.4f} from every layer (the layers hold the same "
                       f"number of weights here, so that keeps your shape)")
    out = [i for i, s in enumerate(S.tolist()) if abs(s - target) > lam + 1e-9]
    if out:
        return fb.fail(f"layers {out} lie more than lam = {lam} from {target} (e.g. layer {out[0]} at "
                       f"{S[out[0]].item():.3f}); move them in and re-centre the rest")
    if S.max() - S.min() < 1e-9:
        return fb.fail("every layer has the same sparsity: that is uniform pruning; use the scan to give the "
                       "sensitive layers less")
    rho = rank_correlation(S.tolist(), layers)
    worst = max(range(len(layers)), key=layers.__getitem__)
    if rho > 0:
        return fb.fail(f"your sparsities rise with the measured sensitivity (rank correlation {rho:+.2f}): "
                       f"the layers that hurt most when pruned must keep more of their weights, not fewer")
    if S[worst] >= target:
        return fb.fail(f"layer {worst} is by far the most sensitive (perplexity {layers[worst]:.0f} when it "
                       f"alone is pruned to 70 %, dense {sens['dense']:.1f}) but gets {S[worst].item():.3f}, "
                       f"not less than the target")
    fb.note(f"mean {mean:.4f}, every layer within {lam} of {target}; rank correlation with the measured "
            f"sensitivity {rho:+.2f}; layer {worst} (the most sensitive) at {S[worst].item():.3f}")
    for rule in ("paper", "code"):
        owl = owl_sparsities(rec["outlier_ratios"], target, lam=lam, weights=sizes, rule=rule)
        outside = sum(abs(s - target) > lam + 1e-9 for s in owl)
        fb.note(f"OWL, {rule} rule, same target and lam: rank correlation {rank_correlation(owl, layers):+.2f}, "
                f"layer {worst} at {owl[worst]:.3f}, layers from {min(owl):.3f} to {max(owl):.3f}"
                + (f" ({outside} outside your interval: this rule spans 2·lam, not ±lam around the target)"
                   if outside else "")
                + f"; {sum(abs(a - b) for a, b in zip(S.tolist(), owl)) / len(owl):.3f} from yours on average")
    fb.note("now prune with your list and with both OWL lists (layer_sparsity=...) and compare perplexities")


def _step_case(prior_steps: int):
    """A small pruned linear, its keep-mask, an AdamW that ran ``prior_steps`` steps on the layer while
    it was dense (0: a fresh optimizer), and one batch."""
    g = torch.Generator().manual_seed(prior_steps)
    layer = nn.Linear(32, 16, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(16, 32, generator=g) / 32 ** 0.5)
    x, y = torch.randn(64, 32, generator=g), torch.randn(64, 16, generator=g)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(prior_steps):   # training before the pruning: the moments fill up
        opt.zero_grad()
        ((layer(x) - y) ** 2).mean().backward()
        opt.step()
    keep = layer.weight.detach().abs() > layer.weight.detach().abs().median()
    with torch.no_grad():
        layer.weight.mul_(keep)
    return layer, keep, opt, x, y


def _reference_step(layer, keep, opt, x, y) -> None:
    """sparselib.recover's recipe: the gradient masked, the mask re-applied after the step."""
    opt.zero_grad()
    ((layer(x) - y) ** 2).mean().backward()
    layer.weight.grad.mul_(keep)
    opt.step()
    with torch.no_grad():
        layer.weight.mul_(keep)


@checker("ex-mask-after-step")
def check_masked_step(fb, fn, steps: int = 3):
    """Your ``fn(layer, keep, opt, x, y)``: one AdamW step of ``((layer(x) - y)**2).mean()`` after which
    every pruned weight of ``layer.weight`` is still exactly zero; checked with a fresh optimizer and
    with one that trained the layer before it was pruned."""
    need_function(fn, "check_masked_step(my_step)")
    grad_left = False
    for prior, what in ((0, "a fresh AdamW"), (3, "an AdamW that trained the layer for 3 steps before it was pruned")):
        mine, ref = _step_case(prior), _step_case(prior)
        layer, keep, opt, x, y = mine
        weight = layer.weight
        for step in range(1, steps + 1):
            if call(fb, fn, layer, keep, opt, x, y) is None and not fb.passed:
                return fb
            _reference_step(*ref)
            if layer.weight is not weight:
                return fb.fail("your function replaced layer.weight; change it in place (the optimizer holds "
                               "the original parameter)")
            revived = int((weight.detach()[~keep] != 0).sum())
            if revived and prior == 0:
                return fb.fail(f"with {what}: {revived} of {int((~keep).sum())} pruned weights are non-zero after "
                               f"step {step}: a pruned weight's gradient is not zero, so AdamW moves it; mask the "
                               f"gradient or re-apply the mask after opt.step()")
            if revived:
                moment = opt.state[weight]["exp_avg"][~keep].abs().max().item()
                return fb.fail(f"with {what}: {revived} of {int((~keep).sum())} pruned weights came back after "
                               f"step {step}, though their gradients are masked (with a fresh optimizer they "
                               f"stay zero): AdamW's first moment still holds the gradients from before the "
                               f"pruning (up to {moment:.2e}) and moves them. Weight decay cannot revive an exact zero (it "
                               f"scales w by 1 - lr·wd); the moments can. Re-apply the mask after every opt.step()")
            if not torch.allclose(weight.detach(), ref[0].weight.detach(), atol=1e-6):
                return fb.fail(f"with {what}: the zeros are kept but the surviving weights after step {step} "
                               f"differ from one AdamW step on ((layer(x) - y)**2).mean(): call opt.zero_grad() "
                               f"first, backward once and opt.step() once")
        if prior == 0 and opt.state and (opt.state[weight]["exp_avg"][~keep] != 0).any():
            grad_left = True
    fb.note("every pruned weight stays exactly zero, also when AdamW carries moments from before the pruning")
    if grad_left:
        fb.note("you re-apply the mask but leave the pruned weights' gradients in: the zeros hold and the "
                "survivors get the same steps (AdamW works weight by weight), but the optimizer keeps moments "
                "for weights that no longer exist, and clipping the gradient by its global norm would count "
                "them and shrink the survivors' steps; sparselib.recover masks the gradient as well")
