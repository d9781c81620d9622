"""How much does a perplexity move when only the calibration draw changes? SmolLM2-135M-Instruct on Brown.

Every point of the course's sweeps uses one calibration draw (32 random Brown-train windows of 256
tokens, seed 0). This script prunes the same model with the same method and sparsity from several
draws (seeds 0..4; seed 0 is the sweep's draw) and records each run and the spread (mean, sample
std, min, max) over them, with ``sparselib.results.over_seeds``:

* Wanda and SparseGPT at 50 %, 2:4 and 70 %;
* OWL's per-layer sparsities at 70 % (``prune(..., layer_sparsity="owl")``), Wanda and SparseGPT, to
  set beside the uniform 70 % points above;
* ``nsamples`` 8 and 128 (the 32 of the points above is the middle of the study) for Wanda and
  SparseGPT at 50 %: the Wanda paper's robustness study on the number of calibration samples;
* magnitude at 50 %, 2:4 and 70 %, once: it reads no calibration data, so its spread over seeds is
  zero by construction (recorded with ``"calibration": false`` and ``n`` = 1).

Perplexity is recorded twice per run, from one pass of ``sparselib.perplexity`` over the standard
slice (the first ``sparselib.EVAL_TOKENS`` = 16,384 Brown-test tokens, windows of 256): on all of it
and on its first 4,096 tokens (``short_perplexity``), the cheap value a chapter re-runs live (prune
with one seed, then 16 windows).

The order makes a stopped run useful: each main point over seeds 0, 1, 2 (``MINIMUM_SEEDS``), the
comparisons the chapters draw first (OWL vs uniform at 70 %, then Wanda vs SparseGPT at 50 % and
2:4); then the nsamples study; magnitude; then seeds 3 and 4 of everything. It resumes: runs already
in the file are skipped (``--redo`` re-measures them). On 2 idle CPU cores a run takes about 1–1.5
minutes (nsamples 128: about 2.5), so seeds 0–2 take about 45 minutes and all 5 about 1.5 hours.

Threads: SparseGPT's masks depend on the order in which floats are summed (H = 2XᵀX, the layer
inputs), and that order depends on the number of CPU threads: at 2:4, seed 0 gives 150.54 on 2
threads and 152.10 on 1 (Wanda gives the same bits on both). So every run uses the sweep's thread
count (``cpu_threads`` in the sweep's provenance, 2), recorded in each run as ``threads``; seed 0
then reproduces the sweep's point exactly.

    nice -n 5 .venv/bin/python benchmarks/seed_spread.py [--seeds 3] [--redo]
"""
from __future__ import annotations

import argparse
import math
import os
import time
from datetime import datetime, timezone

import torch

import sparselib
from sparselib.course.results import over_seeds, resume_result, spread

NAME = "seed_spread_smollm2"
SEEDS = [0, 1, 2, 3, 4]
SHORT_TOKENS = 4096
PROTOCOL = dict(model="smollm2-135m", calib="brown", nsamples=32, seqlen=256,
                eval_tokens=sparselib.EVAL_TOKENS, eval_seqlen=sparselib.EVAL_SEQLEN,
                short_eval_tokens=SHORT_TOKENS)
MINIMUM_SEEDS = 3  # every point gets these first; the rest of SEEDS after that
MAIN = [(m, s, o) for m in ("wanda", "sparsegpt") for s, o in ((0.7, {}), (0.7, {"layer_sparsity": "owl"}))] + \
    [(m, s, {}) for s in (0.5, "2:4") for m in ("wanda", "sparsegpt")]
NSAMPLES = [(m, 0.5, {"nsamples": n}) for n in (8, 128) for m in ("wanda", "sparsegpt")]
CALIBRATED = MAIN + NSAMPLES
UNCALIBRATED = [("magnitude", s, {}) for s in (0.5, "2:4", 0.7)]


def key(method, sparsity, options) -> str:
    return f"{method}|{sparsity}|{','.join(f'{k}={v}' for k, v in sorted(options.items()))}"


def perplexities(model, test) -> tuple[float, float]:
    """Perplexity on the standard slice and on its first SHORT_TOKENS, in one pass over the slice.

    ``sparselib.perplexity`` of the first SHORT_TOKENS and of the rest: the same windows in the same
    batches as one call on the whole slice, so the whole slice's value is their token-weighted mean
    in log space (equal to a single call up to float rounding)."""
    seqlen = PROTOCOL["eval_seqlen"]
    short = sparselib.perplexity(model, test[:, :SHORT_TOKENS], seqlen=seqlen, progress=False)
    rest = sparselib.perplexity(model, test[:, SHORT_TOKENS:], seqlen=seqlen, progress=False)
    n_short, n_rest = SHORT_TOKENS // seqlen, (test.shape[1] - SHORT_TOKENS) // seqlen
    return math.exp((n_short * math.log(short) + n_rest * math.log(rest)) / (n_short + n_rest)), short


def run(model, tok, dense_state, test, method, sparsity, options, seed) -> dict:
    """Prune the dense model from calibration draw ``seed``; perplexity on both slices."""
    model.load_state_dict(dense_state)
    load = os.getloadavg()[0]  # the times are wall-clock: say how busy the machine was
    prune_options = {k: v for k, v in options.items() if k != "nsamples"}
    calib = None
    if sparselib.METHODS[method].calibration:
        calib = sparselib.calibration_data(tok, PROTOCOL["calib"], options.get("nsamples", PROTOCOL["nsamples"]),
                                           PROTOCOL["seqlen"], seed)
    report = sparselib.prune(model, method, sparsity, calib, progress=False, **prune_options)
    t = time.perf_counter()
    ppl, short_ppl = perplexities(model, test)
    eval_seconds = time.perf_counter() - t
    return {"perplexity": ppl, "short_perplexity": short_ppl, "achieved_sparsity": report.sparsity,
            "threads": torch.get_num_threads(),
            "timing": {"prune_seconds": report.seconds, "eval_seconds": eval_seconds,
                       "load_average_before": load,
                       "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}}


def measure_point(result, model, tok, dense_state, test, method, sparsity, options, seeds) -> None:
    """Bring one calibrated point up to ``seeds`` (the runs it lacks), saving after each run."""
    k = key(method, sparsity, options)
    point = result["points"].setdefault(k, {"method": method, "sparsity": sparsity, "options": options,
                                            "calibration": True, "runs": {}})
    if all(str(seed) in point["runs"] for seed in seeds):
        return

    def save(summary):
        point.update(summary)
        sparselib.save_result(NAME, result)  # after every run: a stopped sweep keeps its work

    summary = over_seeds(lambda seed: run(model, tok, dense_state, test, method, sparsity, options, seed),
                         seeds, runs=point["runs"], after_each=save)
    r, p = summary["runs"][str(seeds[-1])], summary["perplexity"]
    print(f"{k:<28} seed {seeds[-1]}  ppl {r['perplexity']:9.2f}  short {r['short_perplexity']:9.2f}  "
          f"over {p['n']} seeds {p['mean']:.2f} ± {p['std']:.2f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=len(SEEDS), choices=range(1, len(SEEDS) + 1),
                        help="run only the first N seeds of SEEDS (default: all)")
    parser.add_argument("--redo", action="store_true", help="re-measure runs already in the file")
    args = parser.parse_args()

    model, tok = sparselib.load_model(PROTOCOL["model"])
    test = sparselib.test_data(tok, max_tokens=PROTOCOL["eval_tokens"])
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    result = {"points": {}} if args.redo else resume_result(NAME, PROTOCOL)
    result["provenance"] = sparselib.provenance("benchmarks/seed_spread.py", **PROTOCOL)
    result["seeds"] = SEEDS
    result["rule"] = ("mean ± sample std (n − 1) over calibration seeds; two points differ when their "
                      "means are further apart than the sum of their stds (sparselib.results.compare)")
    if "dense" not in result:
        ppl, short_ppl = perplexities(model, test)
        result["dense"] = {"perplexity": ppl, "short_perplexity": short_ppl}
        sparselib.save_result(NAME, result)
    print(f"dense: {result['dense']['perplexity']:.2f} (short slice {result['dense']['short_perplexity']:.2f})",
          flush=True)

    # The order makes a stopped run useful: each main point over the first MINIMUM_SEEDS seeds, the
    # comparisons the chapters draw first (OWL vs uniform at 70 %, then Wanda vs SparseGPT), then the
    # nsamples study, magnitude (one run each), and the remaining seeds of everything.
    first = SEEDS[:min(MINIMUM_SEEDS, args.seeds)]
    for method, sparsity, options in MAIN + NSAMPLES:
        measure_point(result, model, tok, dense_state, test, method, sparsity, options, first)
    for method, sparsity, options in UNCALIBRATED:
        k = key(method, sparsity, options)
        if k in result["points"]:
            continue
        r = run(model, tok, dense_state, test, method, sparsity, options, seed=None)
        result["points"][k] = {"method": method, "sparsity": sparsity, "options": options, "calibration": False,
                               "seeds": [], "runs": {"none": r}, "perplexity": spread([r["perplexity"]]),
                               "short_perplexity": spread([r["short_perplexity"]])}
        sparselib.save_result(NAME, result)
        print(f"{k:<28} no calibration  ppl {r['perplexity']:10.2f}", flush=True)
    for i in range(len(first), args.seeds):
        for method, sparsity, options in CALIBRATED:
            measure_point(result, model, tok, dense_state, test, method, sparsity, options, SEEDS[:i + 1])
    sparselib.save_result(NAME, result)


if __name__ == "__main__":
    main()
