"""Recorded results carry their provenance, and a stale one is caught."""
import json

import pytest

import sparselib
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


def _recovery_benchmark():
    import importlib.util
    path = results.RESULTS_DIR.parents[1] / "benchmarks" / "recovery.py"
    spec = importlib.util.spec_from_file_location("recovery_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recovery_results_hold_every_point_of_the_benchmark_at_its_budget():
    bench = _recovery_benchmark()
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


def _benchmark(name):
    import importlib.util
    path = results.RESULTS_DIR.parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peer_comparison_holds_the_runs_of_its_script():
    """benchmarks/peer_llmcompressor.py (llm-compressor runs in its own venv, not here): every run in the
    committed file is a run of the script, under its protocol and settings; the file lists the runs not
    yet measured; the gaps and the explanation agree with the recorded figures."""
    bench = _benchmark("peer_llmcompressor")   # stdlib-only at import: no llm-compressor needed
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
    bench = _benchmark("peer_llmcompressor")
    assert bench.relative_gap(110.0, 100.0) == pytest.approx(0.10)
    assert bench.relative_gap(95.0, 100.0) == pytest.approx(-0.05)
    with pytest.raises(ValueError, match="positive"):
        bench.relative_gap(1.0, 0.0)
