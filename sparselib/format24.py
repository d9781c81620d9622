"""The 2:4 compressed format: keep 2 values of every group of 4, plus where they sat.

``W [out, in]`` is 2:4 sparse along its inputs when every group of 4 consecutive inputs of a row has
at least 2 zeros. Stored compressed it becomes
  * ``values [out, in/2]`` — the 2 kept values of each group, in the dtype of ``W``;
  * ``meta`` (uint8)     — a 2-bit position (0..3) per kept value: 4 bits per group, two groups a byte.
So the metadata costs 2 bits per kept value: for fp16 a group of 4 (8 bytes) becomes 4 + 0.5 bytes.
Sparse Tensor Cores store the same number of bits in an interleaved layout; this one is for reading.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .checks import check_matrix
from .masks import nm_violations

#: Bytes per element of the dtypes the format supports.
DTYPE_BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2, torch.int8: 1}


@dataclass(frozen=True)
class Compressed24:
    """A 2:4 sparse ``[out, in]`` matrix: ``values [out, in/2]``, ``meta`` uint8 ``[out, ceil(in/8)]``."""

    values: torch.Tensor
    meta: torch.Tensor
    shape: tuple[int, int]

    @property
    def nbytes(self) -> int:
        """Bytes actually held: kept values plus metadata."""
        return self.values.numel() * self.values.element_size() + self.meta.numel()


def _check_dtype(dtype) -> None:
    if dtype not in DTYPE_BYTES:
        names = ", ".join(str(d).replace("torch.", "") for d in DTYPE_BYTES)
        raise ValueError(f"the 2:4 format supports {names}; got {dtype}. Convert first, e.g. W.half()")


def nm_storage_bytes(rows: int, cols: int, dtype: torch.dtype, n: int = 2, m: int = 4) -> dict:
    """Bytes of a ``[rows, cols]`` matrix stored dense and stored N:M-compressed (``n`` of every ``m``
    pruned, as in ``"2:4"``).

    Each group of ``m`` keeps ``m - n`` values (``size`` bytes each) and, for each kept value, its
    position in the group: ``ceil(log2 m)`` bits. For 2:4 that is 2 bits per kept value, the count
    cuSPARSELt and CUTLASS store (4 bits a group). A row's metadata is padded to whole bytes, exactly as
    :func:`compress_24` pads it.
    """
    for name, value in (("rows", rows), ("cols", cols)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise ValueError(f"need 0 < n < m ({n} pruned of every {m}), e.g. n=2, m=4")
    if cols % m:
        raise ValueError(f"{n}:{m} storage needs cols to be a multiple of {m}, got {cols}")
    _check_dtype(dtype)
    size, kept = DTYPE_BYTES[dtype], cols // m * (m - n)    # kept values per row
    dense = rows * cols * size
    values = rows * kept * size
    metadata = rows * -(-kept * math.ceil(math.log2(m)) // 8)  # position bits per row, whole bytes
    total = values + metadata
    return {"dense": dense, "values": values, "metadata": metadata, "total": total,
            "saving": 1 - total / dense}


def storage_bytes(rows: int, cols: int, dtype: torch.dtype) -> dict:
    """:func:`nm_storage_bytes` for 2:4: each group of 4 keeps 2 values (``2·size`` bytes) and 2
    positions of 2 bits (half a byte)."""
    return nm_storage_bytes(rows, cols, dtype, 2, 4)


def compress_24(W: torch.Tensor) -> Compressed24:
    """Compress a 2:4-sparse ``W [out, in]`` (see the module docstring); exact inverse: :func:`decompress_24`.

    Where a group has 3 or 4 zeros, the nonzeros are kept first, then the lowest-index zeros.
    (A ``-0.0`` that is not kept comes back as ``+0.0``; the two compare equal.)
    """
    check_matrix(W, finite=False)  # the format stores any value, NaN included
    rows, cols = W.shape
    if cols % 4:
        raise ValueError(f"2:4 needs in_features to be a multiple of 4, got {cols}; pad the inputs")
    _check_dtype(W.dtype)
    bad = nm_violations(W, 2, 4)
    if bad:
        raise ValueError(f"W is not 2:4 sparse: {bad} of {rows * cols // 4} groups of 4 have fewer "
                         f"than 2 zeros; prune it first, e.g. W * sparselib.nm_mask(W.abs(), 2, 4)")
    groups = W.reshape(rows, cols // 4, 4)
    # Stable sort on "is zero": nonzeros first, then zeros, each in index order; keep the first two.
    order = torch.sort((groups == 0).to(torch.uint8), dim=-1, stable=True).indices[..., :2]
    idx = order.sort(dim=-1).values                              # [rows, groups, 2], ascending
    values = groups.gather(-1, idx).reshape(rows, cols // 2)
    nibble = (idx[..., 0] | (idx[..., 1] << 2)).to(torch.uint8)  # [rows, groups], 4 bits each
    if nibble.shape[1] % 2:                                      # pad to whole bytes
        nibble = torch.cat([nibble, nibble.new_zeros(rows, 1)], dim=1)
    meta = nibble[:, 0::2] | (nibble[:, 1::2] << 4)
    return Compressed24(values.contiguous(), meta.contiguous(), (rows, cols))


def decompress_24(c: Compressed24) -> torch.Tensor:
    """The dense ``[out, in]`` matrix of ``c``: kept values back at their positions, zeros elsewhere."""
    if not isinstance(c, Compressed24):
        raise TypeError(f"expected a Compressed24 from sparselib.compress_24, not {type(c).__name__}")
    rows, cols = c.shape
    ngroups = cols // 4
    nibble = torch.stack([c.meta & 0xF, c.meta >> 4], dim=-1).reshape(rows, -1)[:, :ngroups]
    idx = torch.stack([nibble & 0b11, (nibble >> 2) & 0b11], dim=-1).long()  # [rows, groups, 2]
    W = c.values.new_zeros(rows, ngroups, 4)
    W.scatter_(-1, idx, c.values.reshape(rows, ngroups, 2))
    return W.reshape(rows, cols)
