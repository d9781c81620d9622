"""Importance scores ``S [out, in]``: higher means more important to keep.

Magnitude: ``S_ij = |W_ij|``.
Wanda:     ``S_ij = |W_ij| · ‖X_j‖₂`` where ``X [tokens, in]`` are the layer's calibration inputs.

Where Wanda comes from: the output error of removing weight ``W_ij`` alone is
``‖W_ij X_j‖² = W_ij² ‖X_j‖²`` (the diagonal of ``H = 2XᵀX`` up to the factor 2), whose square root
is the Wanda score. It ignores the off-diagonal terms of ``H`` — that is SparseGPT's extra.
"""
from __future__ import annotations

import torch

from .checks import check_matrix


def magnitude_scores(W: torch.Tensor) -> torch.Tensor:
    """``|W|``."""
    check_matrix(W)
    return W.abs()


def input_norms(X: torch.Tensor) -> torch.Tensor:
    """``‖X_j‖₂`` for every input channel ``j`` of ``X [tokens, in]`` (any leading dims are tokens)."""
    if not isinstance(X, torch.Tensor) or X.dim() < 2 or X.shape[0] == 0:
        raise ValueError("X must be a non-empty tensor [tokens, in_features]")
    return X.reshape(-1, X.shape[-1]).float().pow(2).sum(0).sqrt()


def wanda_scores(W: torch.Tensor, x_norm: torch.Tensor) -> torch.Tensor:
    """``|W_ij| · ‖X_j‖₂``; ``x_norm [in]`` from :func:`input_norms` (or the calibration pipeline).

    The reference keeps sqrt of the running *mean* of squares instead of the sum: a constant factor,
    so the ranking within a row — all that pruning uses — is the same.
    """
    check_matrix(W)
    if x_norm.shape != (W.shape[1],):
        raise ValueError(f"x_norm must have one entry per input channel ({W.shape[1]}), "
                         f"got shape {tuple(x_norm.shape)}")
    return W.abs() * x_norm.to(W.device, W.dtype).unsqueeze(0)


def relative_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """The layer's relative reconstruction error ``‖(W − Ŵ)X‖² / ‖WX‖²`` on its calibration inputs,
    from ``H = 2XᵀX`` (the factor 2 cancels): ``tr(D H Dᵀ) / tr(W H Wᵀ)`` with ``D = W − Ŵ``, in
    float64. It is what SparseGPT minimises layer by layer; 0 = the pruned layer's outputs are exact."""
    check_matrix(W)
    check_matrix(W_hat, "W_hat")
    if W_hat.shape != W.shape or not isinstance(H, torch.Tensor) or H.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"need W_hat shaped like W {tuple(W.shape)} and H [in, in] = [{W.shape[1]}, {W.shape[1]}]")
    H = H.double().to(W.device)
    D, W = (W - W_hat).double(), W.double()
    return float(torch.einsum("ij,jk,ik->", D, H, D) / torch.einsum("ij,jk,ik->", W, H, W))
