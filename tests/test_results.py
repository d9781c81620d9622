"""Recorded results carry their provenance, and a stale one is caught."""
import json

import pytest

import sparselib
from conftest import load_benchmark
from sparselib import results


def test_every_committed_result_says_where_when_and_how():
    for path in results.RESULTS_DIR.glob("*.json"):
        prov = json.loads(path.read_text())["provenance"]
        for key in ("script", "date_utc", "torch", "protocol"):
            assert prov.get(key), f"{path.name}: provenance lacks {key}"
        assert prov.get("cpu") or prov.get("gpu"), f"{path.name}: provenance names no hardware"


def test_save_is_atomic_and_round_trips(tmp_path):
    data = {"provenance": {"script": "x"}, "value": 1.5}
    path = results.save_result("demo", data, tmp_path)
    assert json.loads(path.read_text()) == data
    assert [p.name for p in tmp_path.iterdir()] == ["demo.json"]  # no temp file left behind


def test_check_agreement():
    assert "0.50% apart" in sparselib.check_agreement(100.0, 100.5, rtol=0.02)
    with pytest.raises(AssertionError, match="stale"):
        sparselib.check_agreement(100.0, 110.0, rtol=0.02)


def test_unknown_result_lists_the_available_ones():
    with pytest.raises(ValueError, match="benchmarks/"):
        sparselib.load_result("no-such-result")


def test_recovery_results_hold_every_point_of_the_benchmark_at_its_budget():
    bench = load_benchmark("recovery")
    rec = sparselib.load_result("recovery_smollm2")
    assert rec["budget"] == bench.BUDGET and rec["provenance"]["protocol"] == bench.PROTOCOL
    sizes = rec["layer_sizes"]
    for point in bench.POINTS:
        p = rec["points"][bench.key(point)]
        assert bench.is_current(p), f"{bench.key(point)} is partial or from another budget: rerun the benchmark"
        if point[0] == "owl":
            targets = p["layer_targets"]
            mean = sum(s * n for s, n in zip(targets, sizes)) / sum(sizes)
            assert abs(mean - point[2]) < 1e-9 and max(abs(s - point[2]) for s in targets) <= rec["owl"]["lam"] + 1e-9
            assert abs(p["achieved_sparsity"] - point[2]) < 1e-3
        else:
            assert [c["step"] for c in p["curve"]] == bench.BUDGET["eval_steps"]
            assert p["achieved_sparsity"] == p["pruned_sparsity"]   # the masks held through training
            assert len(p["losses"]) == bench.BUDGET["steps"]
    first = rec["points"]["owl|wanda|0.7"]["first_steps"]
    assert first["budget"] == bench.BUDGET and len(first["losses"]) == bench.BUDGET["live_steps"]


# --- noise over calibration seeds ---------------------------------------------------------------
def test_spread_is_the_sample_mean_std_min_max():
    s = sparselib.spread([1.0, 2.0, 4.0])
    assert s["mean"] == pytest.approx(7 / 3) and s["n"] == 3 and (s["min"], s["max"]) == (1.0, 4.0)
    assert s["std"] == pytest.approx(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) ** 0.5 / 2 ** 0.5)
    assert sparselib.spread([5.0])["std"] == 0.0   # one run (e.g. magnitude: no calibration) has no spread
    with pytest.raises(ValueError):
        sparselib.spread([])


def test_over_seeds_runs_each_seed_once_and_resumes():
    calls, saved = [], []

    def measure(seed):
        calls.append(seed)
        return {"perplexity": 10.0 + seed, "note": "text is kept, not summarised"}

    first = sparselib.over_seeds(measure, [0, 1], after_each=saved.append)
    assert calls == [0, 1] and len(saved) == 2 and saved[0]["seeds"] == [0]
    assert first["perplexity"]["mean"] == 10.5 and "note" not in first and first["runs"]["1"]["perplexity"] == 11.0
    again = sparselib.over_seeds(measure, [0, 1, 2], runs=first["runs"])  # resumed: only seed 2 runs
    assert calls == [0, 1, 2] and again["seeds"] == [0, 1, 2] and again["perplexity"]["n"] == 3
    assert sparselib.over_seeds(lambda s: 2.0 * s, [1, 2])["value"]["mean"] == 3.0   # a bare number
    with pytest.raises(ValueError, match="distinct"):
        sparselib.over_seeds(measure, [0, 0])


def test_compare_needs_a_gap_larger_than_both_error_bars():
    a, b = sparselib.spread([10.0, 11.0, 12.0]), sparselib.spread([13.5, 14.5, 15.5])  # std 1 each, gap 3.5
    assert sparselib.compare(a, b) == {"gap": -3.5, "noise": 2.0, "verdict": "lower"}
    assert sparselib.compare(b, a)["verdict"] == "higher"
    c = sparselib.spread([11.5, 12.5, 13.5])  # gap 1.5 < 2: the bars overlap
    assert sparselib.compare(a, c)["verdict"] == "within noise"
    with pytest.raises(TypeError, match="spread"):
        sparselib.compare(10.0, a)


def test_seed_spread_records_are_consistent_and_seed_0_is_the_sweeps_draw():
    bench = load_benchmark("seed_spread")
    rec = sparselib.load_result(bench.NAME)
    assert rec["provenance"]["protocol"] == bench.PROTOCOL and rec["seeds"] == bench.SEEDS
    sweep = sparselib.load_result("sweep_smollm2_brown")
    for key, p in rec["points"].items():
        if not p["calibration"]:  # magnitude: one run, no spread by construction
            assert p["perplexity"]["n"] == 1 and p["perplexity"]["std"] == 0.0
            assert p["perplexity"]["mean"] == pytest.approx(sweep["points"][key]["perplexity"], rel=2e-3)
            continue
        seeds = [int(s) for s in p["runs"]]
        assert seeds == bench.SEEDS[:len(seeds)], f"{key}: seeds {seeds} are not the first of SEEDS"
        for name in ("perplexity", "short_perplexity"):  # the summary is the spread of the runs
            assert p[name] == sparselib.spread([p["runs"][str(s)][name] for s in seeds])
        if key in sweep["points"] and seeds:  # the same protocol, draw and thread count: the same model
            run = p["runs"]["0"]  # (its perplexity joins two slices' in log space: equal up to rounding)
            assert run["perplexity"] == pytest.approx(sweep["points"][key]["perplexity"], rel=1e-12), \
                f"{key}: seed 0 ran on {run.get('threads')} threads, the sweep on " \
                f"{sweep['provenance']['cpu_threads']}; SparseGPT's masks depend on the summation order"


def test_seed_spread_holds_the_first_points_of_its_order_over_the_first_seeds():
    """The file holds the script's points in its order (a resumed run adds the next ones; the README
    says which are recorded), each calibrated one over at least MINIMUM_SEEDS draws."""
    bench = load_benchmark("seed_spread")
    points = sparselib.load_result(bench.NAME)["points"]
    for method, sparsity, options in bench.UNCALIBRATED:
        if bench.key(method, sparsity, options) in points:
            assert not sparselib.seed_point(method, sparsity, **options)["calibration"]
    recorded = [p for p in bench.CALIBRATED if bench.key(*p) in points]
    assert recorded == bench.CALIBRATED[:len(recorded)], "a gap in the script's order"
    assert set(points) <= {bench.key(*p) for p in bench.CALIBRATED + bench.UNCALIBRATED}
    assert ("wanda", 0.7, {"layer_sparsity": "owl"}) in recorded   # OWL against uniform: the study's first question
    for method, sparsity, options in recorded:
        n = len(sparselib.seed_point(method, sparsity, **options)["runs"])
        assert n >= bench.MINIMUM_SEEDS, \
            f"{bench.key(method, sparsity, options)}: {n} seeds; run benchmarks/seed_spread.py (it resumes)"


def test_task_accuracy_records_are_consistent():
    bench = load_benchmark("task_accuracy")
    rec = sparselib.load_result(bench.NAME)
    assert rec["provenance"]["protocol"] == bench.PROTOCOL
    n = len(sparselib.lastword_items())
    for k, p in rec["points"].items():
        assert len(p["items"]) == p["n"] == n and p["items"].count("1") == p["correct"]
        assert p["lastword_accuracy"] == p["correct"] / n


def test_task_accuracy_holds_every_point():
    bench = load_benchmark("task_accuracy")
    points = sparselib.load_result(bench.NAME)["points"]
    missing = [k for k in ["dense"] + [bench.key(m, s) for m, s in bench.PRUNED + bench.SLICED] if k not in points]
    assert not missing, f"{missing}: run benchmarks/task_accuracy.py (it resumes)"


def test_peer_comparison_holds_the_runs_of_its_script():
    """benchmarks/peer_llmcompressor.py (llm-compressor runs in its own venv, not here): every run in the
    committed file is a run of the script, under its protocol and settings; the file lists the runs not
    yet measured; the gaps and the explanation agree with the recorded figures."""
    bench = load_benchmark("peer_llmcompressor")   # stdlib-only at import: no llm-compressor needed
    rec = sparselib.load_result(bench.NAME)
    assert rec["provenance"]["protocol"] == bench.PROTOCOL and "load" in rec["provenance"]["timing_note"]
    runs = {r["name"]: r for r in bench.RUNS}
    measured = [n for n, r in rec["runs"].items() if "perplexity" in r]
    assert set(rec["runs"]) <= set(runs)
    assert rec["not_yet_measured"] == [n for n in bench.run_names() if n not in measured]
    for name in measured:
        r, run = rec["runs"][name], runs[name]
        assert (r["settings"], r["library"], r["sparsity"]) == (run["settings"], run["library"], run["sparsity"])
        assert len(r["layer_sparsity"]) == 30 and 0 < r["achieved_sparsity"] < 1
        assert r["seconds"] > 0 and r["load_average_before"] >= 0
        if run["pair"] in measured:
            pair = rec["runs"][run["pair"]]
            assert r["gap_to_pair"] == pytest.approx(bench.relative_gap(r["perplexity"], pair["perplexity"]))
    assert rec["explanation"] == bench.explain(rec)
    # the finding the explanation states: ignore=["lm_head"] leaves lm_head (tied to the embedding) hooked
    hooked = rec["hooked_modules"]
    assert hooked["new-user"]["not_in_decoder_layers"] == ["lm_head."]
    assert hooked["regex"]["not_in_decoder_layers"] == [] and hooked["new-user"]["count"] == hooked["regex"]["count"] + 1
    ours = rec["runs"]["sparselib/sparsegpt/2:4"]
    assert ours["embedding_sparsity"] < 0.05 and ours["lm_head_tied"]
    with_head = rec["runs"].get("sparselib/sparsegpt/2:4/+lm_head")
    if with_head and "perplexity" in with_head:
        assert with_head["embedding_sparsity"] >= 0.5 and with_head["perplexity"] > 1.2 * ours["perplexity"]
    new_user = rec["runs"].get("llmcompressor/sparsegpt/2:4/new-user")
    if new_user and "perplexity" in new_user:
        assert new_user["lm_head_sparsified"] and new_user["embedding_sparsity"] >= 0.5


def test_relative_gap():
    bench = load_benchmark("peer_llmcompressor")
    assert bench.relative_gap(110.0, 100.0) == pytest.approx(0.10)
    assert bench.relative_gap(95.0, 100.0) == pytest.approx(-0.05)
    with pytest.raises(ValueError, match="positive"):
        bench.relative_gap(1.0, 0.0)


def test_the_dense_control_is_the_dense_model_trained_like_the_recovery_curves():
    rec = sparselib.load_result("recovery_smollm2")
    control, curve = rec["points"]["control|dense|full"], rec["points"]["recovery|wanda|2:4|full"]
    assert control["curve"][0]["perplexity"] == rec["dense_curve"]["perplexity"]   # it starts from the dense model
    assert control["pruned_sparsity"] < 1e-3 and control["achieved_sparsity"] == control["pruned_sparsity"]
    for field in ("budget", "lrs", "tokens_per_step", "trained_parameters"):  # the same training, step for step
        assert control[field] == curve[field], field


def test_owl_sweep_holds_its_grid_with_the_targets_each_rule_gives():
    from sparselib.owl import owl_sparsities
    bench = load_benchmark("owl_sweep")
    sweep = sparselib.load_result("owl_sweep_smollm2")
    assert sweep["provenance"]["protocol"] == bench.PROTOCOL
    assert (sweep["lambdas"], sweep["Ms"], sweep["target"]) == (bench.LAMBDAS, bench.MS, bench.TARGET)
    sizes = sweep["layer_sizes"]
    # the file holds the grid's first points, in the script's order (a resumed run adds the next ones)
    grid = bench.grid()
    recorded = set(sweep["points"])
    assert recorded == {bench.key(*g) for g in grid[:len(recorded)]}, "points outside the grid, or a gap in its order"
    # the chapter's lines through the authors' setting come first: they are in the file
    M0, lam0 = bench.AUTHORS["M"], bench.AUTHORS["lam"]
    assert {bench.key("paper", M0, lam) for lam in bench.LAMBDAS} <= recorded
    assert {bench.key("paper", M, lam0) for M in bench.MS} <= recorded
    assert {bench.key("code", M0, lam) for lam in bench.LAMBDAS} <= recorded
    rec = sparselib.load_result("recovery_smollm2")
    for rule, M, lam in grid[:len(recorded)]:
        p = sweep["points"][bench.key(rule, M, lam)]
        targets = p["layer_targets"]
        # the authors' point was measured by benchmarks/recovery.py, from that script's own pass's ratios
        ratios = rec["outlier_ratios"] if p.get("source") else sweep["outlier_ratios"][f"{M:g}"]
        assert targets == owl_sparsities(ratios, bench.TARGET, lam=lam, weights=sizes, rule=rule)
        assert abs(sum(s * n for s, n in zip(targets, sizes)) / sum(sizes) - bench.TARGET) < 1e-9
        spread = max(targets) - min(targets)
        if rule == "paper":   # within ±λ, the spread between λ and 2λ
            assert max(abs(s - bench.TARGET) for s in targets) <= lam + 1e-9 and lam - 1e-9 <= spread <= 2 * lam + 1e-9
        else:                 # the authors' code: a spread of exactly 2λ
            assert abs(spread - 2 * lam) < 1e-9
        assert abs(p["achieved_sparsity"] - bench.TARGET) < 1e-3
    # the authors' setting is the point benchmarks/recovery.py recorded (same code, data and protocol)
    # two separate dense passes over the same data agree to about one score per layer (layer 25 differs
    # by 2e-5 relative): a last-bit difference in a norm can move one score across M × the mean
    assert sweep["outlier_ratios"]["5"] == pytest.approx(rec["outlier_ratios"], rel=1e-4)
    sparselib.check_agreement(rec["points"]["owl|wanda|0.7"]["perplexity"],
                              sweep["points"][bench.key("paper", 5.0, 0.08)]["perplexity"], rtol=0.02)


# --- words for a comparison, decided by the spread -----------------------------------------------
def test_verdict_words_follow_compare_and_name_the_side_that_is_ahead():
    from sparselib.course.results import verdict_words

    a, b = sparselib.spread([10.0, 11.0, 12.0]), sparselib.spread([13.5, 14.5, 15.5])   # gap 3.5 > 2
    assert verdict_words(a, b, "A", "B") == "**A is ahead** by more than the noise (A 11.0 ± 1.0, B 14.5 ± 1.0)"
    assert verdict_words(b, a, "B", "A").startswith("**A is ahead**")             # lower perplexity wins
    assert verdict_words(a, b, "A", "B", better="higher", unit=" %") == \
        "**B is ahead** by more than the noise (A 11.0 ± 1.0 %, B 14.5 ± 1.0 %)"           # an accuracy
    assert verdict_words(b, a, "B", "A", better=None).startswith("**B is higher** than A by more than")
    c = sparselib.spread([11.5, 12.5, 13.5])                                           # gap 1.5 < 2
    for better in ("lower", "higher", None):
        words = verdict_words(a, c, "A", "C", better=better)
        assert words.startswith("**A and C are within noise**") and "ahead" not in words
    with pytest.raises(ValueError, match="better"):
        verdict_words(a, b, "A", "B", better="smaller")


def test_verdict_words_call_a_gap_between_two_exact_values_exact():
    from sparselib.course.results import verdict_words

    words = verdict_words(sparselib.spread([466.0]), sparselib.spread([636.6]), "per row", "per matrix")
    assert words == "**per row is ahead** (per row 466.0, per matrix 636.6; neither depends on a calibration draw)"
    # one bar is enough to make a small gap noise: magnitude (exact) against a calibrated point
    assert "within noise" in verdict_words(sparselib.spread([100.0]), sparselib.spread([98.0, 101.0, 104.0]), "m", "w")


def test_ratio_adds_the_relative_bars_and_borrowed_spread_scales_one():
    from sparselib.course.results import borrowed_spread, ratio, relative_std

    a, b = {"mean": 200.0, "std": 10.0, "n": 3}, {"mean": 100.0, "std": 2.0, "n": 5}
    r = ratio(a, b)
    assert r["mean"] == 2.0 and r["std"] == pytest.approx(2.0 * (0.05 + 0.02)) and r["n"] == 3 and r["ratio"]
    assert relative_std(r) == pytest.approx(0.07)
    s = borrowed_spread(150.0, 0.04)
    assert (s["mean"], s["std"], s["n"], s["borrowed"]) == (150.0, pytest.approx(6.0), 1, True)
    with pytest.raises(ValueError, match="relative"):
        borrowed_spread(150.0, -0.1)
    with pytest.raises(TypeError, match="spread"):
        ratio(2.0, b)


def test_largest_relative_std_is_the_widest_bar_of_the_main_protocol():
    from sparselib.course.results import largest_relative_std, relative_std

    points = sparselib.load_result("seed_spread_smollm2")["points"].values()
    main = [relative_std(p["perplexity"]) for p in points
            if p["calibration"] and "nsamples" not in p["options"] and p["perplexity"]["n"] > 1]
    assert main and largest_relative_std() == max(main) > 0


def test_paired_items_count_disagreements_and_sign_test_them():
    from sparselib.course.results import paired_items

    got = paired_items("1110000", "1000110")
    assert {k: got[k] for k in ("only_a", "only_b", "both", "neither")} == {"only_a": 2, "only_b": 2, "both": 1,
                                                                            "neither": 2}
    assert got["p"] == 1.0                                     # 2 against 2: no evidence either way
    lopsided = paired_items("1" * 10 + "0" * 10, "0" * 20)     # 10 against 0: p = 2 / 2^10
    assert lopsided["p"] == pytest.approx(2 / 2 ** 10)
    assert paired_items("01", "01")["p"] == 1.0                # no disagreement at all
    with pytest.raises(ValueError, match="one length"):
        paired_items("0101", "010")
