"""SparseGPT (Frantar & Alistarh, 2023): prune, and let the surviving weights absorb the error.

Problem, per linear layer with inputs ``X [tokens, in]`` and ``H = 2XᵀX``:
    minimise  ‖(W - Ŵ)Xᵀ‖²  =  Σ_rows (w - ŵ) H (w - ŵ)ᵀ / 2   subject to Ŵ having the mask's zeros.
Rows are independent and share ``H``. Optimal Brain Surgeon for one weight ``q`` of a row says:
    cost of zeroing it  = w_q² / [H⁻¹]_qq,   best fix of the others  δ = -(w_q / [H⁻¹]_qq) · H⁻¹[:, q].
SparseGPT visits the columns left to right and, once a column is fixed, drops it from the problem.
The inverse Hessian of the *remaining* columns after fixing columns < i is the trailing block of
``H⁻¹`` after i steps of Gaussian elimination — i.e. row ``i`` of the upper Cholesky factor ``U`` of
``H⁻¹`` (scaled by ``U_ii``) gives the update direction, and ``U_ii²`` plays ``[H⁻¹]_ii``. One Cholesky
factor therefore serves every step. Updates inside a block of columns are applied at once to the
columns after the block ("lazy batch"), which turns many thin updates into one matrix product.

This follows the reference implementation's rules (IST-DASLab/sparsegpt), on any device.
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)


def _check(W, H, sparsity, n, m, blocksize, percdamp):
    if not isinstance(W, torch.Tensor) or W.dim() != 2:
        raise ValueError("W must be a 2-D tensor [out_features, in_features]")
    if not torch.isfinite(W).all():
        raise ValueError("W contains NaN or Inf; fix the weights before pruning")
    cols = W.shape[1]
    if not isinstance(H, torch.Tensor) or H.shape != (cols, cols):
        raise ValueError(f"H must be [in_features, in_features] = [{cols}, {cols}], got "
                         f"{tuple(H.shape) if isinstance(H, torch.Tensor) else type(H).__name__}")
    if not torch.isfinite(H).all():
        raise ValueError("H contains NaN or Inf; check the calibration activations")
    if not torch.allclose(H, H.t(), rtol=1e-4, atol=1e-6 * float(H.abs().max().clamp_min(1e-30))):
        raise ValueError("H must be symmetric (H = 2XᵀX); got a non-symmetric matrix")
    if (sparsity is None) == (n is None and m is None):
        raise ValueError("give either sparsity=<fraction> (unstructured) or n=, m= (N:M), not both "
                         "and not neither")
    if sparsity is not None and not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if sparsity is None:
        if n is None or m is None or not 0 < n < m:
            raise ValueError(f"N:M needs 0 < n < m, got n={n}, m={m}")
        if cols % m:
            raise ValueError(f"{n}:{m} needs in_features to be a multiple of {m}; got {cols}")
        if blocksize % m:
            raise ValueError(f"blocksize ({blocksize}) must be a multiple of m ({m}) so that "
                             f"no group of {m} columns straddles two blocks")
    if not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive int, got {blocksize!r}")
    if not percdamp > 0:
        raise ValueError(f"percdamp must be positive, got {percdamp}")


def inverse_hessian_factor(H: torch.Tensor, percdamp: float = 0.01, retries: int = 6) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``(H + λI)⁻¹``, with ``λ = percdamp · mean(diag H)``.

    If ``H + λI`` is not positive definite in floating point, ``λ`` grows tenfold (with a warning)
    up to ``retries`` times; then a ValueError. Never a silent identity fallback.
    """
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    damp = percdamp * torch.diag(H).mean()
    for attempt in range(retries + 1):
        L, info = torch.linalg.cholesky_ex(H + damp * eye)
        if info == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if info == 0:
                return U
        if attempt < retries:
            warnings.warn(f"SparseGPT: H + λI is not positive definite at λ = {float(damp):.3g}; "
                          f"retrying with 10× the damping", RuntimeWarning, stacklevel=3)
            damp = damp * 10
    raise ValueError(f"H is not positive definite even with damping {float(damp):.3g}; check the "
                     f"calibration data (too few tokens?) or raise percdamp")


def _k_smallest(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the ``k`` smallest entries of the 1-D ``x``; ties at the threshold go to the lower
    index (what a stable sort gives), in linear time (``kthvalue``, no full sort)."""
    t = torch.kthvalue(x, k).values
    mask = x < t
    tied = (x == t).nonzero().flatten()[: k - int(mask.sum())]
    mask[tied] = True
    return mask


@contextmanager
def _one_thread(T: torch.Tensor):
    """CPU only: run the per-column steps on one thread. Each step touches at most blocksize × out
    numbers; forking a second thread for it cost more than it saved (and much more on a busy machine)."""
    threads = torch.get_num_threads()
    if T.device.type == "cpu" and threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _column_loop(WT: torch.Tensor, U: torch.Tensor, groups: list[int], sparsity, n, m,
                 blocksize: int) -> torch.Tensor:
    """SparseGPT's column sweep, in place on ``WT = Wᵀ [in, out]`` (columns of W are contiguous rows
    here, so each step touches contiguous memory). ``groups``: row counts of the weight matrices
    stacked in ``W`` — they share ``H`` and hence ``U``; unstructured masks are chosen per matrix.
    Returns the prune mask, transposed like ``WT``."""
    cols = WT.shape[0]
    pruneT = torch.zeros_like(WT, dtype=torch.bool)
    edges = [0]
    for g in groups:
        edges.append(edges[-1] + g)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, P1, U1 = WT[i1:i2], pruneT[i1:i2], U[i1:i2, i1:i2]  # views: [B, out], [B, out], [B, B]
        d = U1.diagonal()
        if sparsity is not None:  # adaptive mask of the whole block, one threshold per matrix
            scores = W1.pow(2) / d.pow(2)[:, None]
            for r0, r1 in zip(edges, edges[1:]):
                k = int((r1 - r0) * (i2 - i1) * sparsity)
                if k:
                    P1[:, r0:r1] = _k_smallest(scores[:, r0:r1].t().flatten(), k).view(r1 - r0, i2 - i1).t()
        scale = P1 / d[:, None]           # 1/U_ii where pruned, 0 where kept
        E1 = torch.empty_like(W1)         # OBS errors of the block, one row per column of W
        with _one_thread(WT):             # thin steps: a second thread costs more than it gives
            for i in range(i2 - i1):
                if sparsity is None and i % m == 0:  # N:M mask of the next m columns, per row of W
                    s = W1[i:i + m].pow(2) / d[i:i + m, None].pow(2)
                    P1[i:i + m].scatter_(0, torch.topk(s, n, dim=0, largest=False).indices, True)
                    scale[i:i + m] = P1[i:i + m] / d[i:i + m, None]
                # OBS for column i: err = (w - q) / U_ii with q = w with its pruned entries zeroed; the
                # rest of the block moves by -U[i, i:] ⊗ err (which also turns w into q at column i).
                torch.mul(W1[i], scale[i], out=E1[i])
                W1[i:].addr_(U1[i, i:], E1[i], alpha=-1)
        WT[i2:].addmm_(U[i1:i2, i2:].t(), E1, alpha=-1)  # lazy batch update of all later columns
    return pruneT


def _prepare(W, H, percdamp):
    """Float32 copies (inputs stay untouched), dead inputs handled, ``U`` factorised."""
    H = H.detach().float().clone()
    dead = torch.diag(H) == 0  # inputs that never fire: nothing to reconstruct
    H[dead, dead] = 1
    return dead, inverse_hessian_factor(H, percdamp)


@torch.no_grad()
def sparsegpt_prune(W: torch.Tensor, H: torch.Tensor, sparsity: float | None = None,
                    n: int | None = None, m: int | None = None, blocksize: int = 128,
                    percdamp: float = 0.01):
    """Prune ``W [out, in]`` given ``H = 2XᵀX [in, in]``; returns ``(W_pruned, keep)``.

    Unstructured (``sparsity``): each block of ``blocksize`` columns prunes exactly
    ``int(out·blocksize·sparsity)`` weights with the lowest ``w²/U_ii²`` — one threshold over all rows
    of the block, scored on weights already updated by earlier blocks (per-row sparsity varies).
    N:M (``n``, ``m``): at every m-th column, each row prunes the n lowest scores of the next m.
    Inputs are not modified; the result has ``W``'s dtype and device.
    """
    return sparsegpt_prune_shared([W], H, sparsity, n, m, blocksize, percdamp)[0]


@torch.no_grad()
def sparsegpt_prune_shared(Ws: list[torch.Tensor], H: torch.Tensor, sparsity: float | None = None,
                           n: int | None = None, m: int | None = None, blocksize: int = 128,
                           percdamp: float = 0.01) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`sparsegpt_prune` for several matrices that read the same input (q/k/v, gate/up).

    Rows are independent and share ``H``, so the matrices are stacked row-wise and swept together:
    one factorisation, one column loop. Each matrix keeps its own unstructured threshold, so the
    result equals separate calls (up to float rounding). Returns ``[(W_pruned, keep), ...]``.
    """
    if not isinstance(Ws, (list, tuple)) or not Ws:
        raise ValueError("Ws must be a non-empty list of weight matrices that read the same input")
    for W in Ws:
        _check(W, H, sparsity, n, m, blocksize, percdamp)
    dead, U = _prepare(Ws[0], H, percdamp)
    WT = torch.cat([W.detach().float().t() for W in Ws], dim=1).contiguous()  # [in, Σ out], a copy
    WT[dead] = 0
    pruneT = _column_loop(WT, U, [W.shape[0] for W in Ws], sparsity, n, m, blocksize)
    WT[pruneT] = 0
    out, r0 = [], 0
    for W in Ws:
        r1 = r0 + W.shape[0]
        out.append((WT[:, r0:r1].t().contiguous().to(W.dtype), ~pruneT[:, r0:r1].t().contiguous()))
        r0 = r1
    return out
