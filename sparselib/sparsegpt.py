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

import numpy as np
import torch

log = logging.getLogger(__name__)


def _check(Ws, H, sparsity, n, m, blocksize, percdamp, tensors: bool = True):
    """Bad input -> ValueError. ``tensors=False`` (the pipeline, whose weights were checked before
    the first layer and whose ``H`` is symmetric by construction) skips the passes over ``W`` and
    the symmetry test, and keeps the cheap ones."""
    for W in Ws:
        if not isinstance(W, torch.Tensor) or W.dim() != 2:
            raise ValueError("W must be a 2-D tensor [out_features, in_features]")
        if tensors and not torch.isfinite(W).all():
            raise ValueError("W contains NaN or Inf; fix the weights before pruning")
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
    """Upper Cholesky factor ``U`` of ``(H + λI)⁻¹`` (``UᵀU = (H + λI)⁻¹``), ``λ = percdamp · mean(diag H)``.

    The reference computes it as ``chol(H) → cholesky_inverse → chol(·, upper)``. The same ``U``
    (a Cholesky factor is unique) costs half as much: factor ``H = R Rᵀ`` with ``R`` upper
    triangular — the Cholesky factor of ``H`` with rows and columns reversed, reversed back — then
    ``H⁻¹ = R⁻ᵀ R⁻¹``, so ``U = R⁻¹``: one Cholesky and one triangular inverse.

    If ``H + λI`` is not positive definite in floating point, ``λ`` grows tenfold (with a warning)
    up to ``retries`` times; then a ValueError. Never a silent identity fallback.
    """
    damp = percdamp * torch.diag(H).mean()
    A = H.flip(0, 1)  # J H J (a copy: H is not modified)
    A.diagonal().add_(damp)
    for attempt in range(retries + 1):
        L, info = torch.linalg.cholesky_ex(A)
        if info == 0:
            U = _upper_inverse(L.flip(0, 1))  # R = J·chol(J H J)·J is upper triangular, H = R Rᵀ
            if torch.isfinite(U).all():
                return U
        if attempt < retries:
            warnings.warn(f"SparseGPT: H + λI is not positive definite at λ = {float(damp):.3g}; "
                          f"retrying with 10× the damping", RuntimeWarning, stacklevel=3)
            A.diagonal().add_(9 * damp)
            damp = damp * 10
    raise ValueError(f"H is not positive definite even with damping {float(damp):.3g}; check the "
                     f"calibration data (too few tokens?) or raise percdamp")


def _upper_inverse(R: torch.Tensor, leaf: int = 128) -> torch.Tensor:
    """``R⁻¹`` for upper-triangular ``R``, by halves: ``[[A, B], [0, C]]⁻¹ = [[A⁻¹, -A⁻¹BC⁻¹], [0, C⁻¹]]``
    (matrix products instead of one wide triangular solve against the identity)."""
    d = R.shape[0]
    if d <= leaf:
        return torch.linalg.solve_triangular(R, torch.eye(d, dtype=R.dtype, device=R.device), upper=True)
    h = d // 2
    Ai, Ci = _upper_inverse(R[:h, :h], leaf), _upper_inverse(R[h:, h:], leaf)
    out = torch.zeros_like(R)
    out[:h, :h], out[h:, h:] = Ai, Ci
    out[:h, h:] = -(Ai @ R[:h, h:]) @ Ci
    return out


def _k_smallest(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the ``k`` smallest entries of ``x`` (any shape, any strides); ties at the threshold go
    to the entries that come first in ``x``'s row-major order (what a stable sort of ``x.flatten()``
    gives), in linear time: a selection for the threshold, no full sort."""
    flat = x.mT.reshape(-1) if x.dim() == 2 and x.mT.is_contiguous() else x.reshape(-1)  # no copy
    t = _kth_value(flat, k) if flat.device.type == "cpu" else torch.kthvalue(flat, k).values
    mask = x <= t
    extra = int(mask.sum()) - k  # entries tied at t beyond the k-th: the last ones stay
    if extra:
        mask[tuple((x == t).nonzero()[-extra:].t())] = False  # nonzero lists them in row-major order
    return mask


def _kth_value(flat: torch.Tensor, k: int, samples: int = 4096) -> float:
    """The exact ``k``-th smallest entry of a 1-D CPU tensor. A sample taken at a prime stride (so
    that it does not follow the rows and columns the scores come from) brackets it, a few standard
    errors around the sample quantile; counting what lies below the bracket gives its rank among
    the few entries inside, where numpy's introselect finds it. If the bracket misses, select over
    everything. Same value either way; three to five times faster on a block of a real layer."""
    a = flat.numpy()
    N = a.size
    if N > 8 * samples:
        S = np.sort(a[:: _prime_at_least(N // samples)])
        q, n = k / N, S.size
        pad = 4 * (q * (1 - q) / n) ** 0.5 + 1 / n
        lo, hi = S[max(0, int((q - pad) * n))], S[min(n - 1, int((q + pad) * n))]
        rank = k - np.count_nonzero(a < lo)  # rank of the answer among the entries in [lo, hi]
        inside = a[(a >= lo) & (a <= hi)]
        if 0 < rank <= inside.size:
            return float(np.partition(inside, rank - 1)[rank - 1])
    return float(np.partition(a, k - 1)[k - 1])


def _prime_at_least(x: int) -> int:
    x = max(x, 2)
    while any(x % p == 0 for p in range(2, int(x ** 0.5) + 1)):
        x += 1
    return x


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
                 blocksize: int, sub: int = 32) -> torch.Tensor:
    """SparseGPT's column sweep, in place on ``WT = Wᵀ [in, out]`` (columns of W are contiguous rows
    here, so each step touches contiguous memory). ``groups``: row counts of the weight matrices
    stacked in ``W`` — they share ``H`` and hence ``U``; unstructured masks are chosen per matrix.
    Inside a block, the lazy batch update is applied once more at a finer grain: each column updates
    only the rest of its ``sub``-column slice, and each slice updates the rest of the block with one
    matrix product (the same arithmetic, regrouped). Returns the prune mask, transposed like ``WT``."""
    cols = WT.shape[0]
    pruneT = torch.zeros_like(WT, dtype=torch.bool)
    edges = [0]
    for g in groups:
        edges.append(edges[-1] + g)
    if sparsity is None:
        sub = m * max(1, sub // m)  # an N:M group must not straddle two slices
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, P1, U1 = WT[i1:i2], pruneT[i1:i2], U[i1:i2, i1:i2]  # views: [B, out], [B, out], [B, B]
        d = U1.diagonal()
        if sparsity is not None:  # adaptive mask of the whole block, one threshold per matrix
            scores = W1.pow(2) / d.pow(2)[:, None]
            for r0, r1 in zip(edges, edges[1:]):
                k = int((r1 - r0) * (i2 - i1) * sparsity)
                if k:
                    P1[:, r0:r1] = _k_smallest(scores[:, r0:r1].t(), k).t()  # W's row-major order
        inv_d = d.reciprocal()[:, None]
        scale = P1 * inv_d                # 1/U_ii where pruned, 0 where kept
        E1 = torch.empty_like(W1)         # OBS errors of the block, one row per column of W
        w, e, c = W1.unbind(0), E1.unbind(0), scale.unbind(0)  # row views, made once per block
        with _one_thread(WT):             # thin steps: a second thread costs more than it gives
            for s1 in range(0, i2 - i1, sub):
                s2 = min(s1 + sub, i2 - i1)
                for i in range(s1, s2):
                    if sparsity is None and i % m == 0:  # N:M mask of the next m columns, per row of W
                        s = W1[i:i + m].mul(inv_d[i:i + m]).pow_(2)  # w² / U_ii²
                        P1[i:i + m].scatter_(0, torch.topk(s, n, dim=0, largest=False).indices, True)
                        torch.mul(P1[i:i + m], inv_d[i:i + m], out=scale[i:i + m])
                    # OBS for column i: err = (w - q) / U_ii with q = w with its pruned entries zeroed;
                    # the later columns of the slice move by -U[i, j] · err (column i itself becomes q
                    # when the pruned entries are zeroed at the end).
                    torch.mul(w[i], c[i], out=e[i])
                    if i + 1 < s2:
                        W1[i + 1:s2].addr_(U1[i, i + 1:s2], e[i], alpha=-1)
                W1[s2:].addmm_(U1[s1:s2, s2:].t(), E1[s1:s2], alpha=-1)  # the rest of the block
        WT[i2:].addmm_(U[i1:i2, i2:].t(), E1, alpha=-1)  # lazy batch update of all later columns
    return pruneT


def _prepare(H, percdamp):
    """Dead inputs found (and set to ``H_ii = 1`` in a copy: the input stays untouched), ``U`` factorised."""
    H = H.detach().float()
    dead = torch.diag(H) == 0  # inputs that never fire: nothing to reconstruct
    if dead.any():
        H = H.clone()
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
                           percdamp: float = 0.01, *, _check_tensors: bool = True
                           ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`sparsegpt_prune` for several matrices that read the same input (q/k/v, gate/up).

    Rows are independent and share ``H``, so the matrices are stacked row-wise and swept together:
    one factorisation, one column loop. Each matrix keeps its own unstructured threshold, so the
    result equals separate calls (up to float rounding). Returns ``[(W_pruned, keep), ...]``.
    """
    if not isinstance(Ws, (list, tuple)) or not Ws:
        raise ValueError("Ws must be a non-empty list of weight matrices that read the same input")
    _check(Ws, H, sparsity, n, m, blocksize, percdamp, tensors=_check_tensors)
    dead, U = _prepare(H, percdamp)
    WT = torch.cat([W.detach().float().t() for W in Ws], dim=1).contiguous()  # [in, Σ out], a copy
    WT.masked_fill_(dead[:, None], 0)
    pruneT = _column_loop(WT, U, [W.shape[0] for W in Ws], sparsity, n, m, blocksize)
    WT.masked_fill_(pruneT, 0)
    out, r0 = [], 0
    for W in Ws:
        r1 = r0 + W.shape[0]
        out.append((WT[:, r0:r1].t().contiguous().to(W.dtype), ~pruneT[:, r0:r1].t().contiguous()))
        r0 = r1
    return out
