"""Chapter 4, the visualizer: when Wanda first reaches an outlier channel, and each row's output error."""
from __future__ import annotations

import torch

from ...masks import unstructured_mask
from ...scores import wanda_scores
from ..viz import row_errors, toy_layer, visualizer_data
from ._answers import call, close, need_function, number
from .registry import checker


@checker("ex-viz-threshold")
def check_outlier_threshold(fb, sparsity):
    """The first slider sparsity at which Wanda prunes a weight on an outlier channel of the toy layer
    (``sparselib.toy_layer()``)."""
    got = number(sparsity, "sparsity")
    W, x_norm = toy_layer()
    data = visualizer_data(W, x_norm)
    first = {mode: next((s for s, st in zip(data["sparsities"], data["states"][mode]) if st["pruned_on_outliers"]),
                        None) for mode in ("magnitude", "wanda")}
    want = first["wanda"]
    cols = W.shape[1]
    ordinary = int((~torch.tensor(data["outliers"])).sum())
    if close(got, want):
        return fb.note(f"at {want:.1%} a row loses {int(cols * want)} of its {cols} weights, more than its "
                       f"{ordinary} ordinary channels, so an outlier weight must go")
    if close(got, int(cols * want)):
        return fb.fail(f"that is the number of weights pruned per row; give the fraction, the slider value "
                       f"({int(cols * want)} of {cols})")
    if first["magnitude"] is not None and close(got, first["magnitude"]):
        return fb.fail("that is where *magnitude* first prunes an outlier weight; select Wanda")
    earlier = [s for s in data["sparsities"] if s < want]
    if earlier and close(got, earlier[-1]):
        return fb.fail("at that step Wanda still keeps every outlier weight; the question asks for the first "
                       "step that prunes one")
    return fb.fail(f"you have {got}, but Wanda first prunes an outlier weight at {want}: compare, per row, "
                   f"the number of weights pruned with the number of ordinary channels")


def _row_error_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``W``, a Wanda 50 % ``keep`` with one untouched and one fully pruned row, and uneven ``x_norm``
    with a dead channel."""
    g = torch.Generator().manual_seed(7)
    W = torch.randn(6, 16, generator=g)
    x_norm = torch.rand(16, generator=g) * torch.exp(2 * torch.randn(16, generator=g))
    x_norm[3] = 0.0
    keep = unstructured_mask(wanda_scores(W, x_norm), 0.5, per="row")
    keep[0] = True
    keep[1] = False
    return W, keep, x_norm


def _row_error_mistake(got: torch.Tensor, W, keep, x_norm) -> str:
    """What a per-row error that is not ``row_errors(W, keep, x_norm)`` most likely computed."""
    want = row_errors(W, keep, x_norm)
    close_to = lambda x: torch.allclose(got, x.float(), rtol=1e-4, atol=1e-6)  # noqa: E731
    pruned = W * ~keep
    dense = row_errors(W, torch.zeros_like(keep), x_norm)
    if close_to(want ** 2):
        return "that is e_i²: take the square root of the sum"
    if close_to(row_errors(W, ~keep, x_norm)):
        return "you summed over the kept weights; the error comes from the pruned ones, W − Ŵ = W·(1 − keep)"
    if close_to((pruned.pow(2) * x_norm).sum(1).sqrt()):
        return "square the norms too: each pruned weight costs (|W_ij|·‖X_j‖)² = W_ij²·‖X_j‖²"
    if close_to((pruned.abs() * x_norm).sum(1)):
        return "that is the sum of the pruned Wanda scores; e_i is the root of the sum of their squares"
    if close_to(torch.where(dense > 0, want / dense.clamp_min(1e-30), torch.zeros_like(want))):
        return "that is the relative error the bars show; the exercise asks for e_i itself"
    if close_to(pruned.pow(2).sum(1).sqrt()):
        return "the norms are missing: every pruned weight is weighed by its input's norm ‖X_j‖"
    worst = int((got - want.float()).abs().argmax())
    return (f"row {worst}: you have {float(got[worst]):.4g}, expected {float(want[worst]):.4g}; "
            f"sum (W_ij − Ŵ_ij)²·‖X_j‖² over the inputs j, then take the square root")


@checker("ex-viz-row-error")
def check_row_errors(fb, fn):
    """Your ``fn(W, keep, x_norm)`` -> ``e_i = sqrt(Σ_j (W_ij − Ŵ_ij)² ‖X_j‖²)`` per output row, with
    ``Ŵ = W·keep``."""
    need_function(fn, "check_row_errors(my_row_errors)")
    W, keep, x_norm = _row_error_case()
    W0, keep0, x0 = W.clone(), keep.clone(), x_norm.clone()
    got = call(fb, fn, W, keep, x_norm)
    if got is None:
        return fb
    if not (torch.equal(W, W0) and torch.equal(keep, keep0) and torch.equal(x_norm, x0)):
        return fb.fail("your function changed W, keep or x_norm in place")
    if not isinstance(got, torch.Tensor):
        return fb.fail(f"return a torch.Tensor with one error per output row, not {type(got).__name__}")
    got = got.detach().float().reshape(-1) if got.numel() == W.shape[0] else got
    if got.shape != (W.shape[0],):
        return fb.fail(f"the result has shape {tuple(got.shape)}; return one number per output row "
                       f"({W.shape[0]}), summing over the inputs j")
    if torch.allclose(got, row_errors(W, keep, x_norm).float(), rtol=1e-4, atol=1e-6):
        return fb.note("matches sparselib.row_errors, including a row with nothing pruned and one with everything")
    return fb.fail(_row_error_mistake(got, W, keep, x_norm))
