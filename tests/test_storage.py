"""The storage model counts every byte a format stores, by hand-checkable rules."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparselib.format24 import nm_storage_bytes
from sparselib.storage import SCHEMES, Storage, matrix_bytes, model_bytes

import torch


def test_hand_counts_for_a_4096_square_matrix():
    n = 4096 * 4096
    assert matrix_bytes(4096, 4096, SCHEMES["fp16"])["total"] == 2 * n
    # int4 g64 symmetric: half a byte per weight + one 2-byte scale per 64 weights
    assert matrix_bytes(4096, 4096, SCHEMES["int4 g64"])["total"] == n / 2 + n / 64 * 2
    # asymmetric adds one 4-bit zero point per group
    assert matrix_bytes(4096, 4096, SCHEMES["int4 g32 asym"])["total"] == n / 2 + n / 32 * 2 + n / 32 / 2
    # 2:4 fp16: half the values (1 byte per weight) + 2 bits per kept value (1/8 byte per weight)
    assert matrix_bytes(4096, 4096, SCHEMES["2:4 fp16"])["total"] == n * (1 + 1 / 8)
    # 2:4 + int4 g64: 2 bits of value and 1 of position per weight, + scales
    assert matrix_bytes(4096, 4096, SCHEMES["2:4 + int4 g64"])["total"] == n * 3 / 8 + n / 64 * 2
    # 50 % + int4 with a bitmask: 2 bits of value, 1 bit of mask per weight, + scales
    assert matrix_bytes(4096, 4096, SCHEMES["50% + int4 g64 (bitmask)"])["total"] == n * 3 / 8 + n / 64 * 2
    # int8 per channel: a byte per weight and one scale per row
    assert matrix_bytes(4096, 4096, SCHEMES["int8"])["total"] == n + 4096 * 2


def test_the_43_75_percent_saving_of_2_4_fp16_agrees_with_format24():
    for rows, cols in [(576, 576), (1536, 576), (4096, 11008)]:
        ours = matrix_bytes(rows, cols, SCHEMES["2:4 fp16"])["total"]
        assert ours == nm_storage_bytes(rows, cols, torch.float16)["total"]
        assert 1 - ours / matrix_bytes(rows, cols, SCHEMES["fp16"])["total"] == pytest.approx(0.4375)


@given(rows=st.integers(1, 64), groups=st.integers(1, 16), bits=st.sampled_from([2, 3, 4, 8]),
       sym=st.booleans(), g=st.sampled_from([8, 32, 64]))
def test_bits_per_weight_is_value_bits_plus_the_metadata_share(rows, groups, bits, sym, g):
    cols = groups * g
    s = Storage("q", bits=bits, group_size=g, symmetric=sym)
    expected = bits + 16 / g + (0 if sym else bits / g)
    got = matrix_bytes(rows, cols, s)["bits_per_weight"]
    assert got == pytest.approx(expected, abs=8 / cols + 1e-9)  # a row's codes round up to whole bytes


def test_model_bytes_counts_the_rest_at_16_bits_and_divides_by_the_dense_weights():
    shapes = [(8, 16), (16, 8)]
    out = model_bytes(shapes, other_params=100, s=SCHEMES["fp16"])
    assert out == {"linears": 512, "model": 712, "bytes_per_weight": 2.0, "model_bytes_per_weight": 2.0}
    sliced = model_bytes([(8, 12), (12, 8)], other_params=100, s=SCHEMES["fp16"], dense_weights=256)
    assert sliced["bytes_per_weight"] == 2 * 192 / 256


@pytest.mark.parametrize("kw, match", [(dict(bits=5), "one of"), (dict(sparsity="3:4"), "unknown sparsity"),
                                       (dict(sparsity="2:4", density=0.3), "exactly half"),
                                       (dict(density=0), "density")])
def test_bad_storage(kw, match):
    with pytest.raises(ValueError, match=match):
        Storage("x", **kw)


def test_group_size_must_divide_the_inputs():
    with pytest.raises(ValueError, match="does not divide"):
        matrix_bytes(576, 576, Storage("int4 g128", bits=4, group_size=128))
