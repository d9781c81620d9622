"""The checkers of chapter 11, prune your own (ch11_prune_your_own): right answers pass, the usual
wrong answers fail with the note that names the mistake, bad arguments raise. The sliced checkpoint
here is written by sparselib.save_sliced beside the two report.json fields the checker reads
(tests/test_cli.py checks that `sparselib prune` writes them)."""
import json

import pytest
import torch

import sparselib
from sparselib import exercises as ex

from conftest import tiny_llama


@pytest.fixture(scope="module")
def sliced_run(tmp_path_factory):
    """A directory as `sparselib prune --method slicegpt --out DIR` leaves it, and its two counts."""
    out = tmp_path_factory.mktemp("run") / "sliced"
    model = tiny_llama()
    calib = torch.randint(0, model.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    report = sparselib.slice_model(model, calib, 0.25, progress=False)
    sparselib.save_sliced(model, out)
    counts = {"parameters_before": report.params_before, "parameters_after": report.params_after}
    (out / "report.json").write_text(json.dumps({"method": "slicegpt", "model": counts}))
    return out, report.params_before, report.params_after


def test_sliced_checkpoint(sliced_run, tmp_path):
    out, dense, sliced = sliced_run
    fb = ex.check_sliced_checkpoint(out, dense, sliced)
    assert fb and f"{sliced:,} parameters, {abs(sliced - dense):,} {'more' if sliced > dense else 'fewer'}" in str(fb)
    head = tiny_llama().get_output_embeddings().weight.numel()
    wrong = {(sliced, dense): "swapped", (dense + head, sliced): "count it once",
             (dense, int(0.75 * dense)): "not a quarter of the parameters", (dense, sliced + 1): "params_sliced"}
    for answer, words in wrong.items():
        verdict = ex.check_sliced_checkpoint(out, *answer)
        assert not verdict and words in str(verdict), (answer, str(verdict))
    with pytest.raises(ValueError, match="report.json"):
        ex.check_sliced_checkpoint(tmp_path, dense, sliced)
    (tmp_path / "report.json").write_text(json.dumps({"method": "wanda"}))
    with pytest.raises(ValueError, match="--method slicegpt"):
        ex.check_sliced_checkpoint(tmp_path, dense, sliced)


def test_sweep_table():
    recorded = {p: sparselib.sweep_point("wanda", p)["perplexity"] for p in ("2:4", "4:8", "0.5")}
    cheapest, dearest = min(recorded, key=recorded.get), max(recorded, key=recorded.get)
    assert ex.check_sweep_table(recorded, cheapest)
    before = sparselib.load_result("sweep_smollm2_brown")["dense"]
    mistakes = [({**recorded, "2:4": before}, cheapest, "before"),
                ({**recorded, "2:4": recorded["0.5"]}, cheapest, "another pattern"),
                ({**recorded, "4:8": 1.5 * recorded["4:8"]}, cheapest, "--nsamples"),
                (recorded, dearest, "highest perplexity")]
    for table, least, words in mistakes:
        verdict = ex.check_sweep_table(table, least)
        assert not verdict and words in str(verdict), (table, least, str(verdict))
    with pytest.raises(TypeError, match="2:4"):
        ex.check_sweep_table({"2:4": 1.0}, "2:4")
