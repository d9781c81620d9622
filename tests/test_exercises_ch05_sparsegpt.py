"""The checkers of chapter 4, SparseGPT (ch05_sparsegpt): right answers pass, the usual
wrong answers fail with the note that names the mistake, bad arguments raise."""
import pytest
import torch

import sparselib
from sparselib import exercises as ex


def notes(fb):
    return " ".join(fb.notes)


def _problem():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(512, 64, generator=g) @ (torch.randn(64, 64, generator=g) / 8 + torch.eye(64))
    return torch.randn(16, 64, generator=g), 2 * X.T @ X, X


def relative_error(W, W_hat, X):
    """‖(W − Ŵ)Xᵀ‖² / ‖WXᵀ‖², from the inputs themselves rather than from H."""
    W, W_hat, X = W.double(), W_hat.double(), X.double()
    return float(((W - W_hat) @ X.T).pow(2).sum() / (W @ X.T).pow(2).sum())


def test_damping_errors():
    W, H, X = _problem()
    ps = (0.001, 0.01, 0.1)
    errs = {p: relative_error(W, sparselib.sparsegpt_prune(W, H, sparsity=0.5, percdamp=p)[0], X) for p in ps}
    fb = ex.check_damping_errors(W, H, errs)
    assert fb and "lowest at percdamp" in notes(fb)
    assert not ex.check_damping_errors(W, H, {p: 2 * e for p, e in errs.items()})
    with pytest.raises(TypeError, match="dict"):
        ex.check_damping_errors(W, H, [0.1])


def test_blocksize_claim():
    W, H, _ = _problem()
    d24 = (sparselib.sparsegpt_prune(W, H, n=2, m=4, blocksize=16)[1]
           != sparselib.sparsegpt_prune(W, H, n=2, m=4, blocksize=128)[1]).any().item()
    dun = (sparselib.sparsegpt_prune(W, H, sparsity=0.5, blocksize=16)[1]
           != sparselib.sparsegpt_prune(W, H, sparsity=0.5, blocksize=128)[1]).any().item()
    assert ex.check_blocksize_claim(W, H, not d24, not dun)
    assert not ex.check_blocksize_claim(W, H, d24, dun)
    with pytest.raises(TypeError):
        ex.check_blocksize_claim(W, H, "yes", False)
