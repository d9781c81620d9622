"""OWL layer sparsities and prune(..., layer_sparsity=...)."""
import pytest
import torch
from conftest import tiny_llama
from hypothesis import given, settings
from hypothesis import strategies as st

import sparselib
from sparselib.owl import (OWL_LAMBDA, check_layer_sparsity, layer_outlier_ratios, layer_sizes,
                           outlier_ratio, owl_sparsities)


def test_outlier_ratio_counts_scores_above_M_times_mean():
    s = torch.ones(100)
    s[:3] = 100.0  # mean = (97 + 300) / 100 = 3.97; threshold 19.85 → three outliers
    assert outlier_ratio(s, M=5) == pytest.approx(0.03)
    assert outlier_ratio([s[:50], s[50:]], M=5) == pytest.approx(0.03)  # a layer = its linears together
    assert outlier_ratio(torch.ones(10)) == 0.0


@settings(max_examples=60, deadline=None)
@given(ratios=st.lists(st.floats(0, 0.2), min_size=2, max_size=12),
       target=st.floats(0.3, 0.8), lam=st.floats(0.0, 0.15), rule=st.sampled_from(["paper", "code"]))
def test_owl_sparsities_mean_bound_and_order(ratios, target, lam, rule):
    S = owl_sparsities(ratios, target, lam=lam, rule=rule)
    assert sum(S) / len(S) == pytest.approx(target, abs=1e-9)           # mean is the target
    bound = lam if rule == "paper" else 2 * lam                           # paper: S_l ∈ [S-λ, S+λ]
    assert all(abs(s - target) <= bound + 1e-9 for s in S)
    assert max(S) - min(S) <= 2 * lam + 1e-9                              # span at most 2λ
    for a, b in zip(ratios, S):                                           # more outliers, less sparsity
        for c, d in zip(ratios, S):
            if a > c:
                assert b <= d + 1e-12


def test_owl_sparsities_weighted_mean_and_extremes():
    S = owl_sparsities([0.01, 0.02, 0.05], 0.7, lam=0.08, weights=[1, 1, 2])
    assert (S[0] + S[1] + 2 * S[2]) / 4 == pytest.approx(0.7)
    assert max(abs(s - 0.7) for s in S) == pytest.approx(0.08)  # the most extreme layer sits at ±λ
    assert S[0] > S[1] > S[2]
    assert owl_sparsities([0.02, 0.02], 0.6) == [0.6, 0.6]      # nothing stands out: uniform


def test_owl_sparsities_code_rule_differs_when_skewed():
    ratios = [0.0, 0.0, 0.0, 0.1]   # one outlier-heavy layer
    paper = owl_sparsities(ratios, 0.7, lam=0.08)
    code = owl_sparsities(ratios, 0.7, lam=0.08, rule="code")
    assert min(paper) == pytest.approx(0.62)             # held to S - λ
    assert min(code) == pytest.approx(0.7 - 0.12)        # 2λ·(1 - 1/4) below the target


def test_owl_sparsities_bad_input():
    with pytest.raises(ValueError, match="smaller lam"):
        owl_sparsities([0.0, 0.1], 0.95, lam=0.1)
    with pytest.raises(ValueError, match="rule"):
        owl_sparsities([0.0, 0.1], 0.5, rule="other")
    with pytest.raises(ValueError, match="weights"):
        owl_sparsities([0.0, 0.1], 0.5, weights=[1])


def test_layer_outlier_ratios_on_tiny_model_leave_it_unchanged(tiny_calib):
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ratios = layer_outlier_ratios(model, tiny_calib)
    assert len(ratios) == 2 and all(0 <= r < 1 for r in ratios)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_prune_with_layer_list(method, tiny_calib):
    model = tiny_llama()
    report = sparselib.prune(model, method, 0.5, tiny_calib, layer_sparsity=[0.3, 0.7], progress=False)
    got = report.layer_sparsity()
    assert got[0] == pytest.approx(0.3, abs=0.02) and got[1] == pytest.approx(0.7, abs=0.02)
    assert report.layer_targets == [0.3, 0.7]
    assert report.to_dict()["layer_targets"] == [0.3, 0.7]
    assert report.sparsity == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_prune_owl_matches_owl_sparsities(method, tiny_calib):
    model = tiny_llama()
    expected = owl_sparsities(layer_outlier_ratios(model, tiny_calib), 0.6, weights=layer_sizes(model))
    report = sparselib.prune(model, method, 0.6, tiny_calib, layer_sparsity="owl", progress=False)
    assert report.layer_targets == pytest.approx(expected)
    assert max(abs(s - 0.6) for s in expected) == pytest.approx(OWL_LAMBDA)
    for layer, s in report.layer_sparsity().items():
        assert s == pytest.approx(expected[layer], abs=0.02)


@pytest.mark.parametrize("bad, error, match", [
    ([0.5], ValueError, "2 decoder layers"),
    ([0.5, 0.5, 0.5], ValueError, "2 decoder layers"),
    ([-0.1, 1.1], ValueError, "outside"),
    ([0.0, 1.0], ValueError, "outside"),
    ([0.4, 0.4], ValueError, "mean"),
    ("uniform", ValueError, "'owl'"),
    (0.5, TypeError, "list"),
    ([0.5, "0.5"], TypeError, "number"),
])
def test_prune_bad_layer_sparsity_leaves_model_unchanged(bad, error, match, tiny_calib):
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        sparselib.prune(model, "wanda", 0.5, tiny_calib, layer_sparsity=bad, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_prune_refuses_nm_layer_sparsity_and_owl_without_calib(tiny_calib):
    model = tiny_llama()
    with pytest.raises(ValueError, match="N:M"):
        sparselib.prune(model, "wanda", "2:4", tiny_calib, layer_sparsity="owl", progress=False)
    with pytest.raises(ValueError, match="calibration"):
        sparselib.prune(model, "magnitude", 0.5, layer_sparsity="owl", progress=False)
    with pytest.raises(ValueError, match="cannot be combined"):
        sparselib.prune(model, "wanda", 0.5, tiny_calib, layers=[0], layer_sparsity=[0.5, 0.5], progress=False)
    assert sparselib.model_sparsity(model) == 0.0


def test_check_layer_sparsity_tolerance_is_one_weight_per_layer():
    sizes = [100, 100]
    assert check_layer_sparsity([0.505, 0.505], 0.5, sizes) == [0.505, 0.505]   # 1 weight per layer off
    with pytest.raises(ValueError, match="mean"):
        check_layer_sparsity([0.52, 0.52], 0.5, sizes)
