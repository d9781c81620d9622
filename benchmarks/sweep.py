"""Perplexity of SmolLM2-135M-Instruct on the Brown test slice, for every method × sparsity.

Writes sparselib/results/sweep_smollm2_brown.json (the chapters on magnitude, Wanda, SparseGPT and
the comparison chapter load it, and each re-runs one point live to check the file still holds).
On 2 CPU cores the full sweep takes about 45 minutes. It resumes: points already in the file are
skipped unless ``--redo``; ``--only METHOD`` runs one method.

    .venv/bin/python benchmarks/sweep.py [--only wanda] [--quick]
"""
from __future__ import annotations

import argparse
import os
import time
from datetime import datetime, timezone

import sparselib
from sparselib.course.results import protocol_inputs, resume_result

NAME = "sweep_smollm2_brown"
FRACTIONS = [0.1, 0.3, 0.5, 0.6, 0.7]
ESSENTIAL = [("magnitude", s, {}) for s in (0.5, "2:4", "4:8")] + \
    [("wanda", s, {}) for s in (0.5, "2:4", "4:8")] + \
    [("sparsegpt", s, {}) for s in (0.5, 0.6, 0.7, "2:4", "4:8")]
CURVES = (
    [("magnitude", s, {}) for s in FRACTIONS]
    + [("magnitude", s, {"per": "row"}) for s in [0.3, 0.5, 0.7]]
    + [("wanda", s, {}) for s in FRACTIONS]
    + [("wanda", s, {"per": "matrix"}) for s in [0.3, 0.5, 0.7]]
    + [("sparsegpt", s, {}) for s in FRACTIONS]
)
# the points the chapters quote come first, so an interrupted sweep is still useful
POINTS = ESSENTIAL + [p for p in CURVES if p not in ESSENTIAL]
PROTOCOL = dict(model="smollm2-135m", calib="brown", nsamples=32, seqlen=256, seed=0,
                eval_tokens=sparselib.EVAL_TOKENS, eval_seqlen=sparselib.EVAL_SEQLEN)


def key(method, sparsity, options):
    return f"{method}|{sparsity}|{','.join(f'{k}={v}' for k, v in sorted(options.items()))}"


def run_point(model, dense_state, calib, test, method, sparsity, options):
    model.load_state_dict(dense_state)
    load = os.getloadavg()[0]  # timings are wall-clock: say how busy the machine was
    report = sparselib.prune(model, method, sparsity, calib, progress=False, **options)
    t = time.perf_counter()
    ppl = sparselib.perplexity(model, test, seqlen=PROTOCOL["eval_seqlen"], progress=False)
    return {"method": method, "sparsity": sparsity, "options": options, "perplexity": ppl,
            "achieved_sparsity": report.sparsity, "prune_seconds": report.seconds,
            "eval_seconds": time.perf_counter() - t, "load_average_before": load,
            "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(sparselib.METHODS), help="run one method and merge")
    parser.add_argument("--redo", action="store_true", help="re-measure points already in the file")
    args = parser.parse_args()

    model, tok, calib, test, dense_state = protocol_inputs(PROTOCOL)
    result = resume_result(NAME, PROTOCOL)
    # provenance of this run; each point also keeps its own date and load average (the sweep resumes)
    result["provenance"] = sparselib.provenance("benchmarks/sweep.py", **PROTOCOL)
    if "dense" not in result:
        result["dense"] = sparselib.perplexity(model, test, seqlen=PROTOCOL["eval_seqlen"], progress=False)
        print(f"dense: {result['dense']:.2f}", flush=True)
    for method, sparsity, options in POINTS:
        if args.only and method != args.only:
            continue
        if key(method, sparsity, options) in result["points"] and not args.redo:
            continue
        point = run_point(model, dense_state, calib, test, method, sparsity, options)
        result["points"][key(method, sparsity, options)] = point
        sparselib.save_result(NAME, result)  # after every point: an interrupted sweep keeps its work
        print(f"{method:>9} {str(sparsity):>4} {options or ''}  ppl {point['perplexity']:9.2f}  "
              f"prune {point['prune_seconds']:5.1f}s", flush=True)


if __name__ == "__main__":
    main()
