"""The sparsity visualizer shows sparselib's own masks, and its picture tells the outlier story."""
import html
import json
import math
import re
from itertools import combinations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparselib
from sparselib import magnitude_scores, nm_mask, unstructured_mask, wanda_scores
from sparselib.course.viz import MODES, SPARSITIES


def embedded(page: str) -> list[dict]:
    """Every visualizer's JSON payload in an HTML page."""
    found = re.findall(r'<script type="application/json" class="sv-data">(.*?)</script>', page, re.S)
    return [json.loads(text.replace("<\\/", "</")) for text in found]


#: The keep-mask of each view, straight from sparselib's mask and score functions.
LIBRARY_MASKS = {
    "dense": lambda W, x_norm, s: torch.ones_like(W, dtype=torch.bool),
    "magnitude": lambda W, x_norm, s: unstructured_mask(magnitude_scores(W), s, per="row"),
    "wanda": lambda W, x_norm, s: unstructured_mask(wanda_scores(W, x_norm), s, per="row"),
    "2:4": lambda W, x_norm, s: nm_mask(wanda_scores(W, x_norm), 2, 4),
}


def library_mask(W, x_norm, mode, s):
    return LIBRARY_MASKS[mode](W, x_norm, s)


def shown(state) -> torch.Tensor:
    return torch.tensor(state["keep"], dtype=torch.bool)


def steps(data, mode):
    """(sparsity, state) for each view of ``mode``; dense and 2:4 have a single view."""
    return zip(data["sparsities"] if mode in ("magnitude", "wanda") else [0.5], data["states"][mode])


def assert_views_are_library_masks(W, x_norm, data):
    for mode in data["states"]:
        for s, state in steps(data, mode):
            assert torch.equal(shown(state), library_mask(W, x_norm, mode, s)), (mode, s)


def test_html_embeds_the_library_masks_for_every_mode_and_sparsity():
    W, x_norm = sparselib.toy_layer()
    page = sparselib.visualizer_html(W, x_norm)
    (data,) = embedded(page)
    assert [m["key"] for m in data["modes"]] == list(MODES)
    assert data["sparsities"] == list(SPARSITIES)
    assert len(data["states"]["magnitude"]) == len(data["states"]["wanda"]) == len(SPARSITIES)
    assert_views_are_library_masks(W, x_norm, data)


def test_the_initial_grid_shows_the_requested_view():
    W, x_norm = sparselib.toy_layer()
    page = sparselib.visualizer_html(W, x_norm, mode="wanda", sparsity=0.5, element_id="t1")
    kept = [int(k) for k in re.findall(r'<td class="sv-cell"[^>]*data-kept="(\d)"', page)]
    assert torch.equal(torch.tensor(kept, dtype=torch.bool).reshape(W.shape),
                       library_mask(W, x_norm, "wanda", 0.5))
    assert 'id="t1" data-mode="wanda"' in page
    assert "<script src" not in page and "http" not in page   # self-contained


def test_magnitude_cuts_the_outlier_pathways_and_wanda_keeps_them():
    W, x_norm = sparselib.toy_layer()
    outliers = sparselib.outlier_channels(x_norm)
    median = x_norm.quantile(0.5)
    assert outliers.any() and (x_norm[outliers] > 10 * median).all() and (x_norm[~outliers] <= 10 * median).all()
    data = sparselib.visualizer_data(W, x_norm)
    k_ordinary = int((~outliers).sum())
    S = wanda_scores(W, x_norm)
    # every outlier weight outscores every ordinary weight of its row, so Wanda reaches them only
    # once a row prunes more weights than it has ordinary channels
    assert (S[:, outliers].min(1).values > S[:, ~outliers].max(1).values).all()
    for s, state in steps(data, "wanda"):
        pruned = (~shown(state)[:, outliers]).sum().item()
        assert state["pruned_on_outliers"] == pruned
        if int(W.shape[1] * s) <= k_ordinary:
            assert pruned == 0, s
    # magnitude prunes an outlier weight whenever |W| ranks it among the row's lowest
    for s, state in steps(data, "magnitude"):
        k = int(W.shape[1] * s)
        expected = sum(sorted(range(W.shape[1]), key=lambda j: (abs(W[i, j].item()), j)).index(j) < k
                       for i in range(W.shape[0]) for j in outliers.nonzero().flatten().tolist())
        assert state["pruned_on_outliers"] == expected
    half = data["sparsities"].index(0.5)
    mag, wan = data["states"]["magnitude"][half], data["states"]["wanda"][half]
    assert mag["pruned_on_outliers"] > 0 == wan["pruned_on_outliers"]
    assert max(mag["row_error_rel"]) > 5 * max(wan["row_error_rel"])


def test_two_four_view_prunes_exactly_two_of_every_four():
    W, x_norm = sparselib.toy_layer()
    (state,) = sparselib.visualizer_data(W, x_norm)["states"]["2:4"]
    groups = shown(state).reshape(W.shape[0], -1, 4)
    assert (groups.sum(-1) == 2).all()
    assert sparselib.is_nm(W * shown(state), 2, 4)


def test_row_error_is_the_sum_of_pruned_wanda_scores_squared():
    W, x_norm = sparselib.toy_layer()
    data = sparselib.visualizer_data(W, x_norm)
    S = wanda_scores(W, x_norm)
    dense = (S ** 2).sum(1).sqrt()
    for mode in data["states"]:
        for _, state in steps(data, mode):
            expected = (S ** 2 * ~shown(state)).sum(1).sqrt()
            assert torch.allclose(torch.tensor(state["row_error"]), expected, rtol=1e-5, atol=1e-6)
            assert torch.allclose(torch.tensor(state["row_error_rel"]), expected / dense, rtol=1e-5, atol=1e-6)


def test_row_error_equals_measured_output_error_for_uncorrelated_inputs():
    W, x_norm = sparselib.toy_layer()
    X = torch.eye(8, dtype=torch.float64) * x_norm.double()     # orthogonal channels with these norms
    keep = library_mask(W, x_norm, "magnitude", 0.5)
    measured = (X @ (W.double() * ~keep).t()).norm(dim=0)
    assert torch.allclose(sparselib.row_errors(W, keep, x_norm).double(), measured, rtol=1e-5)


def test_ipywidgets_version_redraws_the_library_mask():
    W, x_norm = sparselib.toy_layer()
    box = sparselib.visualizer_widget(W, x_norm)
    buttons, slider, view = box.children
    assert buttons.options == tuple((m["label"], m["key"]) for m in box.visualizer_data["modes"])
    for mode in ("magnitude", "wanda", "2:4"):
        buttons.value = mode
        for step, s in enumerate(SPARSITIES):
            slider.value = step
            kept = [int(k) for k in re.findall(r'<td class="sv-cell"[^>]*data-kept="(\d)"', view.value)]
            want = library_mask(W, x_norm, mode, 0.5 if mode == "2:4" else s)
            assert torch.equal(torch.tensor(kept, dtype=torch.bool).reshape(W.shape), want), (mode, s)
        assert slider.disabled == (mode == "2:4")


def test_the_legend_says_how_outliers_were_chosen():
    W, x_norm = sparselib.toy_layer()
    assert "median" in sparselib.visualizer_data(W, x_norm)["outlier_rule"]
    mine = sparselib.visualizer_html(W, x_norm, outliers=x_norm > 30, outlier_rule="norm above 30")
    assert "(norm above 30)" in mine and embedded(mine)[0]["outliers"] == (x_norm > 30).tolist()


def test_labels_are_escaped():
    W, x_norm = sparselib.toy_layer()
    page = sparselib.visualizer_html(W, x_norm, title="<b>x</b>", row_names=["<i>"] * 4)
    assert "<b>x</b>" not in page and html.escape("<b>x</b>") in page and "<i>" not in page.split("<script")[0]


@pytest.mark.parametrize("W, x_norm, kwargs, error, words", [
    (torch.ones(4), torch.ones(4), {}, ValueError, "2-D"),
    (torch.ones(2, 8), torch.ones(7), {}, ValueError, "one norm per input channel"),
    (torch.ones(2, 8), -torch.ones(8), {}, ValueError, "non-negative"),
    (torch.ones(2, 8), torch.full((8,), math.nan), {}, ValueError, "non-negative"),
    (torch.full((2, 8), math.inf), torch.ones(8), {}, ValueError, "NaN or Inf"),
    (torch.ones(2, 8), torch.ones(8), {"sparsities": [0.5, 1.0]}, ValueError, "[0, 1)"),
    (torch.ones(2, 8), torch.ones(8), {"sparsities": [-0.1]}, ValueError, "[0, 1)"),
    (torch.ones(2, 8), torch.ones(8), {"sparsities": ["2:4"]}, ValueError, "mode of its own"),
    (torch.ones(2, 8), torch.ones(8), {"sparsities": 0.5}, TypeError, "sequence"),
    (torch.ones(2, 6), torch.ones(6), {}, ValueError, "multiple of 4"),
    (torch.ones(2, 8), torch.ones(8), {"modes": ["random"]}, ValueError, "choose from"),
    (torch.ones(100, 100), torch.ones(100), {}, ValueError, "W[:8, :32]"),
    ("weights", torch.ones(8), {}, TypeError, "real numbers"),
    (torch.ones(2, 8, dtype=torch.complex64), torch.ones(8), {}, TypeError, "real numbers"),
    (torch.ones(2, 8), torch.ones(8), {"outliers": torch.ones(8)}, ValueError, "boolean"),
    (torch.ones(2, 8), torch.ones(8), {"col_names": ["a"]}, ValueError, "8 labels"),
])
def test_bad_input_says_how_to_fix_it(W, x_norm, kwargs, error, words):
    with pytest.raises(error, match=re.escape(words)):
        sparselib.visualizer_html(W, x_norm, **kwargs)


def test_six_columns_work_without_the_two_four_view():
    data = sparselib.visualizer_data(torch.rand(3, 6), torch.rand(6), modes=("dense", "magnitude", "wanda"))
    assert set(data["states"]) == {"dense", "magnitude", "wanda"}
    with pytest.raises(ValueError, match="not among"):
        sparselib.visualizer_html(torch.rand(3, 6), torch.rand(6), modes=("dense", "wanda"), mode="2:4")


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), groups=st.integers(1, 4), seed=st.integers(0, 10_000),
       spread=st.floats(0, 3), data=st.data())
def test_every_view_is_the_library_mask_and_wanda_minimises_the_row_error(rows, groups, seed, spread, data):
    g = torch.Generator().manual_seed(seed)
    cols = 4 * groups
    W = torch.randn(rows, cols, generator=g)
    x_norm = torch.rand(cols, generator=g) * 10 ** (spread * torch.rand(cols, generator=g))
    sparsities = data.draw(st.lists(st.floats(0, 0.99), min_size=1, max_size=4))
    view = sparselib.visualizer_data(W, x_norm, sparsities=sparsities)
    assert view["sparsities"] == sorted(set(sparsities))
    assert_views_are_library_masks(W, x_norm, view)
    (two_four,) = view["states"]["2:4"]
    assert (shown(two_four).reshape(rows, groups, 4).sum(-1) == 2).all()
    S2 = wanda_scores(W, x_norm) ** 2
    for (s, mag), (_, wan) in zip(steps(view, "magnitude"), steps(view, "wanda")):
        k = int(cols * s)
        assert (shown(wan).sum(1) == cols - k).all() and (shown(mag).sum(1) == cols - k).all()
        # Wanda's row error is the smallest any mask pruning k weights of the row can have
        e_w, e_m = torch.tensor(wan["row_error"]), torch.tensor(mag["row_error"])
        assert (e_w <= e_m * (1 + 1e-5) + 1e-6).all()
        if cols <= 8 and k:
            best = torch.stack([min(S2[i, list(c)].sum() for c in combinations(range(cols), k))
                                for i in range(rows)]).sqrt()
            assert torch.allclose(e_w, best, rtol=1e-4, atol=1e-6)


def test_the_page_inlines_the_package_front_end_and_has_every_hook_its_script_uses():
    from importlib import resources

    static = resources.files("sparselib.course") / "static"
    css, js = (static / "visualizer.css").read_text(), (static / "visualizer.js").read_text()
    W, x_norm = sparselib.toy_layer()
    page = sparselib.visualizer_html(W, x_norm, element_id="hooks")
    assert css in page and js in page and 'sparsityVisualizer(document.getElementById("hooks"))' in page
    assert css in sparselib.visualizer_widget(W, x_norm).children[2].value
    # every element the script looks up, by the selector it uses, exists in the markup Python wrote
    selectors = set(re.findall(r'querySelector(?:All)?\("([^"]+)"\)', js))
    assert {"td.sv-cell", "input.sv-slider", "script.sv-data", ".sv-summary"} <= selectors
    for selector in selectors:
        tag, _, cls = selector.rpartition(".")
        assert re.search(rf'<{tag or "[a-z]+"}\b[^>]*class="[^"]*\b{re.escape(cls)}\b', page), selector


def test_the_old_name_of_the_toy_layer_warns_and_returns_the_same_tensors():
    W, x_norm = sparselib.toy_layer()
    with pytest.warns(DeprecationWarning, match="toy_layer"):
        W_old, x_old = sparselib.seed_example()
    assert torch.equal(W_old, W) and torch.equal(x_old, x_norm)
    assert "toy_layer" in dir(sparselib)
