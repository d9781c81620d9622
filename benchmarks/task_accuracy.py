"""Task accuracy of SmolLM2-135M-Instruct, dense and pruned: the offline last-word task (and lm-eval online).

Writes sparselib/results/task_accuracy_smollm2.json. For the dense model and each pruned one
(magnitude, Wanda and SparseGPT at 50 %, 2:4 and 70 %; SliceGPT slicing 25 %), with the sweep's
protocol (Brown calibration 32 × 256, seed 0), it records ``sparselib.lastword_accuracy``: greedy
last-word prediction on the 164 committed Brown-test passages (``sparselib/data/lastword_brown.json``,
built by ``tools/make_lastword.py``), with the per-item verdicts (a string of 0/1 in item order, for
paired comparisons and for a live re-run to match item by item) and the binomial standard error
sqrt(p(1 − p)/n).

With ``--lm-eval`` (needs the network: the datasets are on the Hugging Face Hub, e.g. on Colab) it
also runs ``sparselib.evaluate_tasks`` on the papers' zero-shot tasks (``sparselib.PAPER_TASKS``) for
every point, ``--limit`` examples per task (default: all; a CPU needs hours for all of HellaSwag).

It resumes: points already in the file are skipped unless ``--redo``. On 2 idle CPU cores a point
takes about a minute (prune, then about 20 s of scoring); SliceGPT comes last (it changes the
model's shapes, so the dense model is loaded again afterwards only if needed).

    nice -n 5 .venv/bin/python benchmarks/task_accuracy.py [--redo] [--lm-eval [--limit 500]]
"""
from __future__ import annotations

import argparse
import math
import os
import time
from datetime import datetime, timezone

import sparselib
from sparselib.course.results import resume_result

NAME = "task_accuracy_smollm2"
PROTOCOL = dict(model="smollm2-135m", calib="brown", nsamples=32, seqlen=256, seed=0,
                task="lastword_brown (sparselib/data/lastword_brown.json), greedy, exact tokens")
PRUNED = [(m, s) for m in ("magnitude", "wanda", "sparsegpt") for s in (0.5, "2:4", 0.7)]
SLICED = [("slicegpt", 0.25)]


def key(method, sparsity) -> str:
    return f"{method}|{sparsity}"


def score(model, tok, args) -> dict:
    t = time.perf_counter()
    correct = sparselib.lastword_correct(model, tok)
    seconds = time.perf_counter() - t
    n, right = len(correct), sum(correct)
    p = right / n
    out = {"lastword_accuracy": p, "correct": right, "n": n, "stderr": math.sqrt(p * (1 - p) / n),
           "items": "".join("1" if c else "0" for c in correct), "score_seconds": seconds}
    if args.lm_eval:
        out["lm_eval"] = {"limit": args.limit, "tasks": sparselib.evaluate_tasks(
            model, tok, sparselib.PAPER_TASKS, limit=args.limit)}
    return out


def stamp() -> dict:
    return {"date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "load_average_before": os.getloadavg()[0]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redo", action="store_true", help="re-measure points already in the file")
    parser.add_argument("--lm-eval", action="store_true", help="also the papers' zero-shot tasks (network)")
    parser.add_argument("--limit", type=int, default=None, help="with --lm-eval: examples per task")
    args = parser.parse_args()

    model, tok = sparselib.load_model(PROTOCOL["model"])
    calib = sparselib.calibration_data(tok, PROTOCOL["calib"], PROTOCOL["nsamples"], PROTOCOL["seqlen"],
                                       PROTOCOL["seed"])
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    result = {"points": {}} if args.redo else resume_result(NAME, PROTOCOL)
    result["provenance"] = sparselib.provenance("benchmarks/task_accuracy.py", **PROTOCOL)
    if "dense" not in result["points"]:
        result["points"]["dense"] = {"method": "dense", "sparsity": 0, **stamp(), **score(model, tok, args)}
        sparselib.save_result(NAME, result)
    print(f"dense: {result['points']['dense']['lastword_accuracy']:.1%}", flush=True)
    for method, sparsity in PRUNED + SLICED:
        k = key(method, sparsity)
        if k in result["points"]:
            continue
        model.load_state_dict(dense_state)
        point = {"method": method, "sparsity": sparsity, **stamp()}
        if method == "slicegpt":
            report = sparselib.slice_model(model, calib, sparsity, progress=False)
            point["prune_seconds"] = report.seconds
        else:
            report = sparselib.prune(model, method, sparsity, calib, progress=False)
            point.update(achieved_sparsity=report.sparsity, prune_seconds=report.seconds)
        point.update(score(model, tok, args))
        result["points"][k] = point
        sparselib.save_result(NAME, result)  # after every point: a stopped run keeps its work
        print(f"{k:<16} {point['lastword_accuracy']:6.1%} ± {point['stderr']:.1%}", flush=True)


if __name__ == "__main__":
    main()
