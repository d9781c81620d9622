"""Keep-masks: which weights survive. ``keep`` is boolean, True = the weight survives.

All functions take a score matrix ``S [out, in]`` (higher = more important; ``|W|`` for magnitude,
``|W|·‖X_j‖`` for Wanda) and work on whatever device ``S`` is on.

Patterns, written as strings in the API:
  * ``0.5`` — unstructured: prune that fraction, per output row or per whole matrix;
  * ``"2:4"`` — N:M: in every group of M consecutive inputs of a row, prune the N lowest scores
    (so N < M; "2:4" and "4:8" are 50% sparse). Hardware 2:4 is this with N=2, M=4.
Structured masks drop whole rows (output channels) or columns (input channels).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from numbers import Real

import torch

from .checks import check_choice, check_fraction, check_matrix, check_nm_fits


@dataclass(frozen=True)
class Pattern:
    """A sparsity pattern: ``sparsity`` fraction (unstructured) or ``n`` pruned of every ``m`` (N:M)."""

    sparsity: float
    n: int | None = None
    m: int | None = None

    @property
    def is_nm(self) -> bool:
        return self.m is not None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"{self.sparsity:.0%}"


def parse_sparsity(sparsity) -> Pattern:
    """``0.5`` → unstructured 50%; ``"2:4"`` → N:M with N=2 pruned of M=4. Raises ValueError/TypeError."""
    if isinstance(sparsity, Pattern):
        return sparsity
    if isinstance(sparsity, str):
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", sparsity)
        if not match:
            try:
                sparsity = float(sparsity)
            except ValueError:
                raise ValueError(f"sparsity {sparsity!r} is neither a fraction like 0.5 nor an N:M "
                                 f"pattern like '2:4'") from None
        else:
            n, m = int(match[1]), int(match[2])
            if not 0 < n < m:
                raise ValueError(f"N:M pattern {sparsity!r} needs 0 < N < M (N pruned of every M), "
                                 f"e.g. '2:4' or '4:8'")
            return Pattern(n / m, n, m)
    if getattr(sparsity, "ndim", None) == 0 and hasattr(sparsity, "item"):  # a 0-d NumPy array or tensor
        sparsity = sparsity.item()
    if isinstance(sparsity, bool) or not isinstance(sparsity, Real):  # NumPy scalars are Real
        raise TypeError(f"sparsity must be a fraction like 0.5 or a pattern string like '2:4', "
                        f"not {type(sparsity).__name__}")
    return Pattern(check_fraction(sparsity))


def unstructured_mask(S: torch.Tensor, sparsity: float, per: str = "row") -> torch.Tensor:
    """Prune the lowest scores: ``per="row"`` drops exactly ``int(in·s)`` in every row (Wanda's
    comparison group); ``per="matrix"`` drops exactly ``int(numel·s)`` over the whole matrix
    (magnitude pruning's reference). Ties are broken by a stable sort (lower index pruned first)."""
    check_matrix(S, "scores S")
    sparsity = parse_sparsity(sparsity).sparsity
    keep = torch.ones(S.shape, dtype=torch.bool, device=S.device)  # contiguous even for a transposed S (GPT-2)
    if per == "row":
        k = int(S.shape[1] * sparsity)
        if k:
            idx = torch.sort(S, dim=1, stable=True).indices[:, :k]
            keep.scatter_(1, idx, False)
    elif per == "matrix":
        k = int(S.numel() * sparsity)
        if k:
            idx = torch.sort(S.flatten(), stable=True).indices[:k]
            keep.view(-1)[idx] = False
    else:
        check_choice(per, ("row", "matrix"), "per")
    return keep


def nm_mask(S: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every group of ``m`` consecutive inputs of each row, prune the ``n`` lowest scores."""
    check_matrix(S, "scores S")
    parse_sparsity(f"{n}:{m}")
    rows, cols = S.shape
    check_nm_fits(cols, m, f"an {n}:{m} pattern")
    groups = S.reshape(rows, cols // m, m)
    idx = torch.sort(groups, dim=-1, stable=True).indices[..., :n]
    keep = torch.ones_like(groups, dtype=torch.bool)
    keep.scatter_(-1, idx, False)
    return keep.reshape(rows, cols)


def structured_mask(S: torch.Tensor, sparsity: float, dim: str = "rows") -> torch.Tensor:
    """Drop whole rows (output channels, ``dim="rows"``) or columns (input channels) with the lowest
    summed score; exactly ``int(count·s)`` of them."""
    check_matrix(S, "scores S")
    sparsity = parse_sparsity(sparsity).sparsity
    check_choice(dim, ("rows", "cols"), "dim")
    axis_sum = S.sum(dim=1) if dim == "rows" else S.sum(dim=0)
    k = int(axis_sum.numel() * sparsity)
    alive = torch.ones_like(axis_sum, dtype=torch.bool)
    alive[torch.sort(axis_sum, stable=True).indices[:k]] = False
    keep = alive[:, None] if dim == "rows" else alive[None, :]
    return keep.expand_as(S).clone()


def mask_for(S: torch.Tensor, pattern, per: str = "row") -> torch.Tensor:
    """The keep-mask of ``pattern`` (a fraction or ``"N:M"``) for scores ``S``."""
    pattern = parse_sparsity(pattern)
    if pattern.is_nm:
        return nm_mask(S, pattern.n, pattern.m)
    return unstructured_mask(S, pattern.sparsity, per=per)


def sparsity(W: torch.Tensor) -> float:
    """Fraction of exact zeros in ``W``."""
    return (W == 0).sum().item() / W.numel()


def is_nm(W: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` consecutive inputs of every row of ``W`` has at least ``n`` zeros."""
    return nm_violations(W, n, m) == 0


def nm_violations(W: torch.Tensor, n: int, m: int) -> int:
    """How many groups of ``m`` consecutive inputs hold fewer than ``n`` zeros."""
    check_matrix(W, finite=False)  # NaN is a nonzero like any other here
    check_nm_fits(W.shape[1], m, f"{n}:{m}")
    zeros = (W == 0).reshape(W.shape[0], -1, m).to(torch.uint8).sum(-1, dtype=torch.int16)
    return int((zeros < n).sum().item())
