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

:func:`column_sweep` is Algorithm 1 of the paper, with the reference implementation's rules
(IST-DASLab/sparsegpt), on any device. Its speed helpers live in :mod:`sparselib._sparsegpt_fast`.
Algorithm 1 also rounds each kept weight when asked (the paper's joint sparsification and
quantization): the error fed forward is then ``(w − Q(w·keep)) / U_jj``. With nothing pruned that is
GPTQ, which :mod:`sparselib.quantize` runs through the same sweep.
"""
from __future__ import annotations

import warnings

import torch

from ._sparsegpt_fast import column_slices, drop_k_smallest, stacked_column_major, upper_cholesky_of_inverse
from .checks import check_fraction, check_matrix, check_nm_fits
from .quantize import SweepGrid, check_group_size


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
    _check(Ws, H, sparsity, n, m, blocksize, percdamp)
    return [(W, keep) for W, keep, _ in column_sweep(Ws, H, sparsity, n, m, blocksize, percdamp)]


@torch.no_grad()
def _prune_shared_prechecked(Ws, H, sparsity=None, n=None, m=None, blocksize=128, percdamp=0.01, quant=None):
    """:func:`sparsegpt_prune_shared` for :func:`sparselib.prune`, which checked every weight before
    the first layer and whose ``H`` is symmetric by construction: the passes over ``W`` and the
    symmetry test are skipped, the cheap checks kept. Returns ``[(W, keep, QuantState or None), ...]``."""
    _check(Ws, H, sparsity, n, m, blocksize, percdamp, tensors=False, quant=quant)
    return column_sweep(Ws, H, sparsity, n, m, blocksize, percdamp, quant=quant)


def column_sweep(Ws, H, sparsity=None, n=None, m=None, blocksize=128, percdamp=0.01, quant=None, keep=None):
    """Algorithm 1 on ``W [rows, in]``, the matrices of ``Ws`` stacked (they share ``H``); returns
    ``[(W_new, keep, QuantState or None), ...]``. The mask comes from ``sparsity`` (per block), from
    ``n``:``m`` (per group of m columns) or is the fixed ``keep`` (a list of boolean masks, one per
    matrix; all True when None). With ``quant`` (a :class:`~sparselib.quantize.QuantSpec`) every kept
    weight is rounded to its grid in its column's step and the rounding error is fed forward too: the
    SparseGPT paper's joint mode, and GPTQ when nothing is pruned. Callers check the arguments."""
    rows = [len(W) for W in Ws]
    W = stacked_column_major(Ws)                 # [Σ rows, in], a float32 copy
    keep = torch.ones_like(W, dtype=torch.bool) if keep is None else torch.cat(keep).clone()
    grid = None if quant is None else SweepGrid(quant, W)  # per-channel grids: from W as given
    H, dead = _without_dead_inputs(H)
    W.masked_fill_(dead, 0)
    if grid is not None:
        grid.before_sweep(W)                     # static groups
    order = None
    if quant is not None and quant.act_order:    # GPTQ's heuristic: large diag(H) first
        order = torch.argsort(torch.diag(H), descending=True)
        W, keep, H = W[:, order].t().contiguous().t(), keep[:, order], H[order][:, order]
    U = inverse_hessian_factor(H, percdamp)      # upper triangular, UᵀU = (H + λI)⁻¹
    for i1 in range(0, W.shape[1], blocksize):
        i2 = min(i1 + blocksize, W.shape[1])
        Wb, Kb, Ub = W[:, i1:i2], keep[:, i1:i2], U[i1:i2, i1:i2]  # the block (views)
        d = Ub.diagonal()
        inv_d = d.reciprocal()
        if sparsity is not None:                 # the block's mask, on the weights updated so far
            _choose_block_mask(Kb, Wb.pow(2) / d.pow(2), rows, sparsity)
        if grid is not None:                     # groups starting in this block, from W as it is now
            grid.at_block(W, i1, i2)
        scale = ~Kb * inv_d                      # (1 - keep) / U_jj: err = (w - q) / U_jj = w · scale
        E = torch.empty_like(Wb)                 # the block's errors, one column per column of W
        for j, end in column_slices(Wb, E, Ub, group=m or 1):  # end: the block's end, or sooner
            if n is not None and j % m == 0:     # N:M: per row, the n lowest (w / U_jj)² of m
                low = torch.topk((Wb[:, j:j + m] * inv_d[j:j + m]).pow(2), n, dim=1, largest=False)
                Kb[:, j:j + m].scatter_(1, low.indices, False)
                scale[:, j:j + m] = ~Kb[:, j:j + m] * inv_d[j:j + m]
            if grid is None:
                err = torch.mul(Wb[:, j], scale[:, j], out=E[:, j])  # (w - q) / U_jj, written into E
            else:                                # q = Q(w · keep): masked, then rounded
                col = i1 + j if order is None else int(order[i1 + j])
                q = grid.round(torch.where(Kb[:, j], Wb[:, j], 0), col)
                err = torch.sub(Wb[:, j], q, out=E[:, j]).mul_(inv_d[j])
                Wb[:, j] = q
            Wb[:, j + 1:end].addr_(err, Ub[j, j + 1:end], alpha=-1)  # W -= err ⊗ U[j, j+1:end]
        W[:, i2:].addmm_(E, U[i1:i2, i2:], alpha=-1)  # lazy batch update: W[:, i2:] -= E U[block, i2:]
    if order is not None:
        back = torch.argsort(order)
        W, keep = W[:, back], keep[:, back]
    states = grid.states(rows) if grid is not None else [None] * len(Ws)
    return [(torch.where(keep_, W_, 0).contiguous().to(W0.dtype), keep_.contiguous(), state)  # W ← W · keep
            for W0, W_, keep_, state in zip(Ws, W.split(rows), keep.split(rows), states)]


def _without_dead_inputs(H: torch.Tensor):
    """``(H, dead)``: inputs that never fire (``H_jj = 0``) have nothing to reconstruct; their
    ``H_jj`` is set to 1 in a copy (the caller's ``H`` stays untouched) and their weights are zeroed."""
    H = H.detach().float()
    dead = torch.diag(H) == 0
    if dead.any():
        H = H.clone()
        H[dead, dead] = 1
    return H, dead


def _choose_block_mask(keep: torch.Tensor, scores: torch.Tensor, rows: list[int], sparsity: float):
    """Unstructured mask of one block, into ``keep`` (all True on entry): in each stacked matrix
    (``rows`` of them each), exactly ``int(rows·B·sparsity)`` lowest scores dropped, one threshold
    over all of its rows."""
    r0 = 0
    for r in rows:
        k = int(r * scores.shape[1] * sparsity)
        if k:
            keep[r0:r0 + r] = drop_k_smallest(scores[r0:r0 + r], k)
        r0 += r


def inverse_hessian_factor(H: torch.Tensor, percdamp: float = 0.01, retries: int = 6) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``(H + λI)⁻¹`` (``UᵀU = (H + λI)⁻¹``), ``λ = percdamp · mean(diag H)``.

    The reference computes it as ``chol(H) → cholesky_inverse → chol(·, upper)``; the same ``U`` comes
    from one Cholesky and one triangular inverse (:func:`~sparselib._sparsegpt_fast.upper_cholesky_of_inverse`).
    If ``H + λI`` is not positive definite in floating point, ``λ`` grows tenfold (with a warning)
    up to ``retries`` times; then a ValueError. Never a silent identity fallback.
    """
    damp = percdamp * torch.diag(H).mean()
    for attempt in range(retries + 1):
        U = upper_cholesky_of_inverse(H, damp)
        if U is not None:
            return U
        if attempt < retries:
            warnings.warn(f"SparseGPT: H + λI is not positive definite at λ = {float(damp):.3g}; "
                          f"retrying with 10× the damping", RuntimeWarning, stacklevel=2)
            damp = damp * 10
    raise ValueError(f"H is not positive definite even with damping {float(damp):.3g}; check the "
                     f"calibration data (too few tokens?) or raise percdamp")


def _check(Ws, H, sparsity, n, m, blocksize, percdamp, tensors: bool = True, quant=None, prune: bool = True):
    """Bad input -> ValueError (TypeError for a wrong type). ``tensors=False`` skips the passes over
    ``W`` and the symmetry test. ``prune=False``: no pattern (GPTQ)."""
    if not isinstance(Ws, (list, tuple)) or not Ws:
        raise ValueError("Ws must be a non-empty list of weight matrices that read the same input")
    for W in Ws:
        check_matrix(W, "W", finite=tensors)
    cols = Ws[0].shape[1]
    if any(W.shape[1] != cols for W in Ws) or not isinstance(H, torch.Tensor) or H.shape != (cols, cols):
        got = tuple(H.shape) if isinstance(H, torch.Tensor) else type(H).__name__
        raise ValueError(f"H must be [in_features, in_features] = [{cols}, {cols}] for every W, got "
                         f"H {got} and W {', '.join(str(tuple(W.shape)) for W in Ws)}")
    if not torch.isfinite(H).all():
        raise ValueError("H contains NaN or Inf; check the calibration activations")
    # symmetric up to float rounding: the largest asymmetry against the largest entry (one pass,
    # where an elementwise allclose on a wide H costs as much as a Cholesky)
    if tensors and float((H - H.t()).abs().max()) > 1e-4 * float(H.abs().max()):
        raise ValueError("H must be symmetric (H = 2XᵀX); got a non-symmetric matrix")
    if quant is not None:
        check_group_size(cols, quant)
        if quant.act_order and (sparsity is not None or n is not None):
            raise ValueError("act_order reorders the columns, which breaks the pruning pattern's blocks and "
                             "groups; use it for quantization alone (sparselib.quantize)")
    if not prune:
        if sparsity is not None or n is not None or m is not None:
            raise ValueError("quantization alone takes no sparsity pattern")
    elif (sparsity is None) == (n is None and m is None):
        raise ValueError("give either sparsity=<fraction> (unstructured) or n=, m= (N:M), not both "
                         "and not neither")
    if sparsity is not None:
        check_fraction(sparsity)
    if prune and sparsity is None:
        if n is None or m is None or not 0 < n < m:
            raise ValueError(f"N:M needs 0 < n < m, got n={n}, m={m}")
        check_nm_fits(cols, m, f"{n}:{m}", "W")
        if blocksize % m:
            raise ValueError(f"blocksize ({blocksize}) must be a multiple of m ({m}) so that "
                             f"no group of {m} columns straddles two blocks")
    if not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive int, got {blocksize!r}")
    if not percdamp > 0:
        raise ValueError(f"percdamp must be positive, got {percdamp}")
