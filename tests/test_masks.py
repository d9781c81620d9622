"""Masks keep exact counts, whatever the shape and pattern."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparselib.masks import (is_nm, mask_for, nm_mask, nm_violations, parse_sparsity, sparsity,
                             structured_mask, unstructured_mask)


def scores(rows, cols, seed):
    return torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 20), cols=st.integers(1, 40), s=st.floats(0, 0.99), seed=st.integers(0, 99))
def test_unstructured_per_row_keeps_exact_count(rows, cols, s, seed):
    keep = unstructured_mask(scores(rows, cols, seed), s, per="row")
    assert (keep.sum(1) == cols - int(cols * s)).all()


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 20), cols=st.integers(1, 40), s=st.floats(0, 0.99), seed=st.integers(0, 99))
def test_unstructured_per_matrix_keeps_exact_count_and_lowest_go(rows, cols, s, seed):
    S = scores(rows, cols, seed)
    keep = unstructured_mask(S, s, per="matrix")
    assert keep.sum() == S.numel() - int(S.numel() * s)
    if (~keep).any() and keep.any():
        assert S[~keep].max() <= S[keep].min()


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 12), groups=st.integers(1, 8), m=st.integers(2, 8), seed=st.integers(0, 99),
       data=st.data())
def test_nm_mask_prunes_exactly_n_lowest_per_group(rows, groups, m, seed, data):
    n = data.draw(st.integers(1, m - 1))
    S = scores(rows, groups * m, seed)
    keep = nm_mask(S, n, m)
    per_group = keep.reshape(rows, groups, m)
    assert (per_group.sum(-1) == m - n).all()
    g = S.reshape(rows, groups, m)
    pruned_max = torch.where(~per_group, g, torch.full_like(g, -1)).amax(-1)
    kept_min = torch.where(per_group, g, torch.full_like(g, 2)).amin(-1)
    assert (pruned_max <= kept_min).all()
    assert is_nm(S * keep, n, m)


def test_nm_on_a_real_shape_is_half_sparse():
    keep = nm_mask(torch.rand(64, 576) + 0.1, 2, 4)
    W = (torch.rand(64, 576) + 0.1) * keep
    assert sparsity(W) == 0.5 and is_nm(W, 2, 4) and nm_violations(W, 2, 4) == 0


def test_violations_are_counted():
    W = torch.ones(2, 8)
    W[0, :2] = 0  # one good group; the other three groups have no zeros
    assert nm_violations(W, 2, 4) == 3
    assert not is_nm(W, 2, 4)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 20), cols=st.integers(1, 20), s=st.floats(0, 0.99), seed=st.integers(0, 99))
def test_structured_drops_whole_rows_or_columns(rows, cols, s, seed):
    S = scores(rows, cols, seed)
    keep = structured_mask(S, s, dim="rows")
    assert (keep.all(1) | ~keep.any(1)).all()
    assert (~keep.any(1)).sum() == int(rows * s)
    keep = structured_mask(S, s, dim="cols")
    assert (~keep.any(0)).sum() == int(cols * s)


def test_parse_sparsity():
    assert parse_sparsity(0.5).sparsity == 0.5 and not parse_sparsity(0.5).is_nm
    p = parse_sparsity("2:4")
    assert (p.n, p.m, p.sparsity, str(p)) == (2, 4, 0.5, "2:4")
    assert parse_sparsity("4:8").sparsity == 0.5


@pytest.mark.parametrize("bad", [1.0, 1.2, -0.1, math.nan, "3:2", "0:4", "4:4", "a:b", "half"])
def test_bad_sparsity_is_a_value_error(bad):
    with pytest.raises(ValueError):
        parse_sparsity(bad)


@pytest.mark.parametrize("bad", [None, [0.5], True])
def test_wrong_type_is_a_type_error(bad):
    with pytest.raises(TypeError):
        parse_sparsity(bad)


def test_nm_needs_divisible_inputs():
    with pytest.raises(ValueError, match="multiple of 3"):
        mask_for(torch.rand(4, 10), "2:3")
