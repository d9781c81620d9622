"""Chapter 3, Wanda: a 2:4 mask from Wanda scores, and what each rule does to an outlier channel."""
from __future__ import annotations

import torch

from ...checks import check_matrix
from ...masks import nm_mask, unstructured_mask
from ...scores import input_norms, magnitude_scores, wanda_scores
from ._answers import call, mask_shape_ok, need_function, number
from .registry import checker


def _wanda_24_mistake(keep: torch.Tensor, W: torch.Tensor, X: torch.Tensor) -> str:
    """What a 2:4 mask that is not Wanda's most likely got wrong."""
    if torch.equal(keep, nm_mask(magnitude_scores(W), 2, 4)):
        return "this is the magnitude mask: multiply |W| by each input channel's norm ‖X_j‖"
    if torch.equal(keep, nm_mask(W.abs() * X.norm(dim=1)[: W.shape[1]], 2, 4)):
        return "wrong axis: ‖X_j‖ is over the tokens (dim 0 of X [tokens, in]), one norm per input channel"
    if torch.equal(keep, nm_mask(W * input_norms(X), 2, 4)):
        return "use |W|: a large negative weight matters as much as a positive one"
    S = wanda_scores(W, input_norms(X))
    want = nm_mask(S, 2, 4)
    if torch.equal(keep, ~want) or S[keep].mean() < S[~keep].mean():
        return "you keep the 2 lowest scores of each group; keep the 2 highest"
    return (f"{int((keep != want).sum())} of {W.numel()} entries differ from the Wanda 2:4 mask; "
            f"check the score |W_ij|·‖X_j‖₂ and that groups are consecutive inputs of a row")


@checker("ex-wanda-score")
def check_wanda_24(fb, fn):
    """Your ``fn(W, X)`` -> 2:4 keep-mask from Wanda scores ``|W_ij|·‖X_j‖``."""
    need_function(fn, "check_wanda_24(my_wanda_24)")
    g = torch.Generator().manual_seed(5)
    W = torch.randn(8, 32, generator=g)
    X = torch.randn(64, 32, generator=g) * torch.exp(2 * torch.randn(32, generator=g))  # uneven channels
    W0, X0 = W.clone(), X.clone()
    keep = call(fb, fn, W, X)
    if keep is None or not mask_shape_ok(fb, keep, W):
        return fb
    keep = keep.bool()
    if not (torch.equal(W, W0) and torch.equal(X, X0)):
        return fb.fail("your function changed W or X in place")
    groups = keep.reshape(W.shape[0], -1, 4).sum(-1)
    if not (groups == 2).all():
        r, grp = (groups != 2).nonzero()[0].tolist()
        return fb.fail(f"row {r}, group {grp} (inputs {4 * grp}..{4 * grp + 3}) keeps {int(groups[r, grp])} "
                       f"of 4; 2:4 keeps exactly 2 of every 4 consecutive inputs of a row")
    if torch.equal(keep, nm_mask(wanda_scores(W, input_norms(X)), 2, 4)):
        return fb.note("matches sparselib's Wanda 2:4 mask")
    return fb.fail(_wanda_24_mistake(keep, W, X))


@checker("ex-wanda-outlier")
def check_outlier_fractions(fb, W, X, magnitude_fraction, wanda_fraction):
    """For the ``W`` and ``X`` you used, the fraction of the strongest input channel's weights that
    magnitude 50 % and Wanda 50 % prune (per row)."""
    W, X = check_matrix(W, "W"), check_matrix(X, "X", "[tokens, in_features]")
    if X.shape[-1] != W.shape[1]:
        raise ValueError(f"X must be [tokens, {W.shape[1]}] (the inputs W reads), got {tuple(X.shape)}")
    fm, fw = number(magnitude_fraction, "magnitude_fraction"), number(wanda_fraction, "wanda_fraction")
    norms = input_norms(X)
    j = int(norms.argmax())
    want_m = float((~unstructured_mask(magnitude_scores(W), 0.5, per="row"))[:, j].float().mean())
    want_w = float((~unstructured_mask(wanda_scores(W, norms), 0.5, per="row"))[:, j].float().mean())
    for got, want, name in ((fm, want_m, "magnitude"), (fw, want_w, "Wanda")):
        if abs(got - want) > 1e-6:
            hint = (" — those are the kept fractions; the question asks for the pruned ones"
                    if abs(got - (1 - want)) < 1e-6 else
                    f"; the outlier channel is input {j} (largest ‖X_j‖ = {float(norms[j]):.1f}), a column of W")
            fb.fail(f"{name}: you have {got:.3f}, expected {want:.3f}{hint}")
    if fb.passed:
        fb.note(f"channel {j}: magnitude prunes {want_m:.0%} of its weights, Wanda {want_w:.0%}")
