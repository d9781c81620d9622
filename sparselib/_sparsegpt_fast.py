"""Speed helpers for :mod:`sparselib.sparsegpt`. Each gives the numbers the plain way gives, faster on
CPU; the algorithm file calls them by name so that it can read like the paper's Algorithm 1.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch


def stacked_column_major(Ws: list[torch.Tensor]) -> torch.Tensor:
    """The matrices ``Ws [out_i, in]`` stacked row-wise into one float32 ``W [Σ out_i, in]`` (a copy)
    whose columns are contiguous in memory.
    Why: every column step of the sweep then reads and writes one run of memory, not a strided one."""
    return torch.cat([W.detach().float().t() for W in Ws], dim=1).contiguous().t()


def column_slices(W: torch.Tensor, E: torch.Tensor, U: torch.Tensor, width: int = 32, group: int = 1):
    """Yield ``(j, end)`` for the columns ``j`` of one block ``W [rows, B]`` in order. The caller's
    step for column ``j`` updates only ``W[:, j+1:end]``, the rest of its ``width``-column slice;
    after each slice this applies the slice's errors to the rest of the block in one product,
    ``W[:, end:] -= E[:, slice] @ U[slice, end:]``.
    Why: the lazy batch update once more at a finer grain — the same arithmetic, regrouped, so that
    each thin per-column update touches at most ``width`` columns. ``width`` is rounded to a multiple
    of ``group`` (N:M's ``m``: a group is scored at once, so all of it must be up to date)."""
    width = group * max(1, width // group)
    cols = W.shape[1]
    with one_thread(W):
        for s1 in range(0, cols, width):
            s2 = min(s1 + width, cols)
            for j in range(s1, s2):
                yield j, s2
            W[:, s2:].addmm_(E[:, s1:s2], U[s1:s2, s2:], alpha=-1)


@contextmanager
def one_thread(T: torch.Tensor):
    """CPU only: run the per-column steps on one thread.
    Why: each step touches at most blocksize × rows numbers; forking a second thread for it cost more
    than it saved (and much more on a busy machine)."""
    threads = torch.get_num_threads()
    if T.device.type == "cpu" and threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def upper_cholesky_of_inverse(H: torch.Tensor, damp: torch.Tensor) -> torch.Tensor | None:
    """Upper-triangular ``U`` with ``UᵀU = (H + damp·I)⁻¹``, or None if ``H + damp·I`` is not positive
    definite in floating point. ``H`` is not modified.
    Why: the reference's ``chol → cholesky_inverse → chol(upper)`` costs three factorisations; this is
    one Cholesky and one triangular inverse for the same ``U`` (a Cholesky factor is unique). With
    ``J`` the reversal, ``R = J·chol(J(H + λI)J)·J`` is upper triangular with ``H + λI = R Rᵀ``, so
    ``(H + λI)⁻¹ = R⁻ᵀ R⁻¹`` and ``U = R⁻¹``."""
    A = H.flip(0, 1)  # J H J (a copy)
    A.diagonal().add_(damp)
    L, info = torch.linalg.cholesky_ex(A)
    if info != 0:
        return None
    U = upper_triangular_inverse(L.flip(0, 1))
    return U if torch.isfinite(U).all() else None


def upper_triangular_inverse(R: torch.Tensor, leaf: int = 128) -> torch.Tensor:
    """``R⁻¹`` for upper-triangular ``R``, by halves: ``[[A, B], [0, C]]⁻¹ = [[A⁻¹, -A⁻¹BC⁻¹], [0, C⁻¹]]``.
    Why: matrix products instead of one wide triangular solve against the identity."""
    d = R.shape[0]
    if d <= leaf:
        return torch.linalg.solve_triangular(R, torch.eye(d, dtype=R.dtype, device=R.device), upper=True)
    h = d // 2
    Ai, Ci = upper_triangular_inverse(R[:h, :h], leaf), upper_triangular_inverse(R[h:, h:], leaf)
    out = torch.zeros_like(R)
    out[:h, :h], out[h:, h:] = Ai, Ci
    out[:h, h:] = -(Ai @ R[:h, h:]) @ Ci
    return out


def drop_k_smallest(x: torch.Tensor, k: int) -> torch.Tensor:
    """Keep mask (True = survives) of ``x`` (any shape, any strides) with its ``k`` smallest entries
    dropped; ties at the threshold drop the entries that come first in ``x``'s row-major order (what a
    stable sort of ``x.flatten()`` gives). Why: linear time — a selection for the threshold, no sort."""
    flat = x.mT.reshape(-1) if x.dim() == 2 and x.mT.is_contiguous() else x.reshape(-1)  # no copy
    t = kth_value(flat, k) if flat.device.type == "cpu" else torch.kthvalue(flat, k).values
    keep = x > t
    extra = x.numel() - k - int(keep.sum())  # entries tied at t beyond the k-th: the last ones stay
    if extra:
        keep[tuple((x == t).nonzero()[-extra:].t())] = True  # nonzero lists them in row-major order
    return keep


def kth_value(flat: torch.Tensor, k: int, samples: int = 4096) -> float:
    """The exact ``k``-th smallest entry of a 1-D CPU tensor. A sample taken at a prime stride (so
    that it does not follow the rows and columns the scores come from) brackets it, a few standard
    errors around the sample quantile; counting what lies below the bracket gives its rank among
    the few entries inside, where numpy's introselect finds it. If the bracket misses, select over
    everything. Why: the same value, three to five times faster on a block of a real layer."""
    a = flat.numpy()
    N = a.size
    if N > 8 * samples:
        S = np.sort(a[:: prime_at_least(N // samples)])
        q, n = k / N, S.size
        pad = 4 * (q * (1 - q) / n) ** 0.5 + 1 / n
        lo, hi = S[max(0, int((q - pad) * n))], S[min(n - 1, int((q + pad) * n))]
        rank = k - np.count_nonzero(a < lo)  # rank of the answer among the entries in [lo, hi]
        inside = a[(a >= lo) & (a <= hi)]
        if 0 < rank <= inside.size:
            return float(np.partition(inside, rank - 1)[rank - 1])
    return float(np.partition(a, k - 1)[k - 1])


def prime_at_least(x: int) -> int:
    x = max(x, 2)
    while any(x % p == 0 for p in range(2, int(x ** 0.5) + 1)):
        x += 1
    return x
