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
