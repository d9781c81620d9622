"""The 2:4 compressed format: exact round trip, and byte counts that match the 2-bits-per-kept-value rule."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparselib import Compressed24, compress_24, decompress_24, nm_mask, storage_bytes
from sparselib.format24 import nm_storage_bytes

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8]


def random_24(rows: int, groups: int, dtype: torch.dtype, zeros_per_group: torch.Tensor | None,
              seed: int) -> torch.Tensor:
    """A 2:4-sparse matrix; each group gets 2, 3 or 4 zeros (``zeros_per_group [rows, groups]``)."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.int8:
        W = torch.randint(1, 128, (rows, groups * 4), generator=g, dtype=torch.int8)
        W = W * torch.where(torch.rand(rows, groups * 4, generator=g) < 0.5, -1, 1).to(torch.int8)
    else:
        W = (torch.randn(rows, groups * 4, generator=g) + 0.01).to(dtype)
        W[W == 0] = 1
    scores = torch.rand(rows, groups, 4, generator=g)
    ranks = scores.argsort(-1).argsort(-1)               # a random order of the 4 positions
    zeros = zeros_per_group if zeros_per_group is not None else torch.full((rows, groups), 2)
    drop = ranks < zeros.unsqueeze(-1)                   # the `zeros` lowest-ranked positions
    W = W.reshape(rows, groups, 4).masked_fill(drop, 0).reshape(rows, groups * 4)
    return W


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 33), groups=st.integers(1, 16), dtype=st.sampled_from(DTYPES),
       extra=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_round_trip_is_exact(rows, groups, dtype, extra, seed):
    g = torch.Generator().manual_seed(seed + 1)
    # `extra` = 0: every group has exactly 2 zeros; otherwise a mix of 2, 3 and 4 zeros per group
    zeros = 2 + torch.randint(0, extra + 1, (rows, groups), generator=g)
    W = random_24(rows, groups, dtype, zeros, seed)
    c = compress_24(W)
    assert c.values.dtype == dtype and c.meta.dtype == torch.uint8
    assert c.values.shape == (rows, groups * 2)
    assert c.meta.shape == (rows, (groups + 1) // 2)
    back = decompress_24(c)
    assert back.dtype == dtype and back.shape == W.shape
    assert torch.equal(back, W)
    # bit-exact too (W holds no -0.0, the one value whose bits a dropped position would not restore)
    assert torch.equal(back.view(torch.uint8), W.view(torch.uint8))


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 33), groups=st.integers(1, 16), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**16))
def test_nbytes_matches_formula_and_tensors(rows, groups, dtype, seed):
    c = compress_24(random_24(rows, groups, dtype, None, seed))
    held = c.values.element_size() * c.values.numel() + c.meta.numel()
    assert c.nbytes == held == storage_bytes(rows, groups * 4, dtype)["total"]


def test_all_zero_groups_keep_lowest_positions():
    W = torch.zeros(2, 8)
    W[1, 7] = 3.0                                        # one nonzero at position 3 of group 2
    c = compress_24(W)
    # group with 4 zeros keeps positions 0 and 1 -> nibble 0b0100; [0, 3] -> 0b1100
    assert c.meta.tolist() == [[0x44], [0xC4]]
    assert torch.equal(decompress_24(c), W)


@pytest.mark.parametrize("dtype,saving", [(torch.float16, 0.4375), (torch.bfloat16, 0.4375),
                                          (torch.int8, 0.375), (torch.float32, 0.46875)])
def test_saving_fractions(dtype, saving):
    # per group of 4: 2 kept values + 2 × 2 bits of positions; cols a multiple of 8 (whole bytes)
    assert storage_bytes(576, 1536, dtype)["saving"] == saving
    s = storage_bytes(1, 8, dtype)
    assert s["metadata"] == 1 and s["values"] == 4 * s["dense"] // 8


def test_compressed_is_smaller_than_dense_from_real_pruning():
    torch.manual_seed(0)
    W = torch.randn(64, 128).half()
    W = W * nm_mask(W.float().abs(), 2, 4)
    c = compress_24(W)
    assert c.nbytes / (W.numel() * W.element_size()) == 1 - 0.4375


def test_errors():
    with pytest.raises(TypeError):
        compress_24([[0, 0, 1, 1]])
    with pytest.raises(TypeError):
        decompress_24(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="2-D"):
        compress_24(torch.zeros(4))
    with pytest.raises(ValueError, match="multiple of 4"):
        compress_24(torch.zeros(2, 6))
    W = torch.ones(3, 8)
    W[0, :2] = 0                                         # one good group, five bad ones
    with pytest.raises(ValueError, match="5 of 6 groups"):
        compress_24(W)
    with pytest.raises(ValueError, match="float32, float16, bfloat16, int8"):
        compress_24(torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="supports"):
        storage_bytes(2, 4, torch.int32)
    with pytest.raises(ValueError, match="multiple of 4"):
        storage_bytes(2, 6, torch.float16)
    with pytest.raises(ValueError, match="positive int"):
        storage_bytes(0, 8, torch.float16)
    assert isinstance(compress_24(torch.zeros(1, 4)), Compressed24)


@pytest.mark.parametrize("n, m, bits", [(2, 4, 2), (4, 8, 3), (1, 4, 2), (8, 16, 4), (1, 2, 1)])
def test_nm_storage_counts_each_kept_value_and_its_position(n, m, bits):
    rows, cols = 3, 4 * m
    s = nm_storage_bytes(rows, cols, torch.float16, n, m)
    kept = cols // m * (m - n)  # per row
    assert s["values"] == rows * kept * 2
    assert s["metadata"] == rows * -(-kept * bits // 8)  # ceil(log2 m) bits per kept value, whole bytes a row
    assert s["dense"] == rows * cols * 2 and s["total"] == s["values"] + s["metadata"]
    if (n, m) == (2, 4):
        assert s == storage_bytes(rows, cols, torch.float16)
    with pytest.raises(ValueError, match=f"multiple of {m}"):
        nm_storage_bytes(rows, cols + 1, torch.float16, n, m)


def test_nm_storage_of_a_large_matrix_approaches_the_per_group_fraction():
    # 4:8 in fp16: each group of 8 (16 bytes) keeps 4 values (8 bytes) and 4 positions of 3 bits
    assert nm_storage_bytes(576, 1536, torch.float16, 4, 8)["saving"] == 1 - (8 + 4 * 3 / 8) / 16
    with pytest.raises(ValueError, match="0 < n < m"):
        nm_storage_bytes(4, 8, torch.float16, 4, 4)
