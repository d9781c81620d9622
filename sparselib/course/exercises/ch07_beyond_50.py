"""Chapter "When 50 % is not enough": OWL's layer sparsities, and a LoRA merge that keeps the mask."""
from __future__ import annotations

import torch

from ...masks import nm_mask
from ...owl import owl_sparsities
from ...recovery import merge_lora
from ._answers import call, need_function
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
