"""When 50 % is not enough: OWL layer sparsities and recovery fine-tuning, SmolLM2-135M-Instruct on Brown.

Writes sparselib/results/recovery_smollm2.json (the chapter "When 50 % is not enough" loads it and
re-runs one OWL point and the first recovery steps live). Two kinds of points:

* ``owl|METHOD|SPARSITY``: prune with OWL's per-layer sparsities (paper rule, M = 5, λ = 0.08) and
  measure perplexity with the sweep's protocol (Brown calibration 32 × 256, seed 0; the standard
  16,384-token Brown test slice). The uniform points are read from
  sparselib/results/sweep_smollm2_brown.json, whose protocol is the same (checked below).
* ``recovery|METHOD|PATTERN|full`` or ``|lora``: prune uniformly, then ``sparselib.recover`` for
  BUDGET["steps"] steps of BUDGET["batch_size"] × 256 Brown-train tokens, perplexity at
  BUDGET["eval_steps"] on the first BUDGET["eval_tokens"] test tokens.
* ``control|dense|full``: the same training of the *dense* model (no pruning; the call is
  ``sparselib.recover(model, data, 40, batch_size=4, lr=BUDGET["lr_full"], warmup=4)``, exactly the
  call of a full recovery curve). The model is instruction-tuned and the training text is Brown
  train, the test text Brown test, so part of what a recovery curve wins is adaptation to Brown,
  which the dense model gets too; this curve measures that part. ``recover`` holds every weight
  that is exactly zero at zero, so the dense model's own zeros (few; counted in the point) stay.

The budget is one for every curve: 40 AdamW steps × 4 windows × 256 Brown-train tokens = 40,960
training tokens, perplexity on the first 4,096 test tokens at steps 0, 5, 10, 20 and 40. On 2 idle
CPU cores a step of full fine-tuning takes about 10 s and one of masked LoRA about 8 s, so the whole
file takes about 40 minutes. Each point is written to the file as soon as it finishes (a recovery
curve after each evaluation), and a rerun skips the points already there that were measured with
this budget (``--redo`` re-measures them all). Every recovery point, and the recorded first steps of
the OWL point the chapter re-runs, stores the budget it was measured with.

    .venv/bin/python benchmarks/recovery.py [--only owl|recovery|control] [--redo]
"""
from __future__ import annotations

import argparse
import os
import resource
import time
from datetime import datetime, timezone

import torch

import sparselib
from sparselib.owl import OWL_LAMBDA, OWL_M, layer_outlier_ratios, layer_sizes, owl_sparsities

NAME = "recovery_smollm2"
PROTOCOL = dict(model="smollm2-135m", calib="brown", nsamples=32, seqlen=256, seed=0,
                eval_tokens=sparselib.EVAL_TOKENS, eval_seqlen=sparselib.EVAL_SEQLEN)
OWL = dict(M=OWL_M, lam=OWL_LAMBDA, rule="paper", statistics="Wanda scores of the dense model, same calib")
BUDGET = dict(steps=40, batch_size=4, train_seqlen=256, train_seed=1, lr_full=2e-4, lr_lora=2e-3,
              lora_rank=16, warmup=4, eval_steps=[0, 5, 10, 20, 40], eval_tokens=4096, live_steps=3)
POINTS = [  # the cheap OWL points first (about a minute each), then the curves (about 8 minutes each)
    ("owl", "wanda", 0.7),
    ("owl", "sparsegpt", 0.7),
    ("owl", "wanda", 0.6),
    ("owl", "sparsegpt", 0.6),
    ("owl", "wanda", 0.5),
    ("owl", "sparsegpt", 0.5),
    ("recovery", "wanda", "2:4", "full"),
    ("recovery", "wanda", "2:4", "lora"),
    ("recovery", "sparsegpt", "2:4", "full"),
    ("recovery", "wanda", 0.7, "full"),
    ("control", "dense", "full"),   # the dense model, trained with the same budget
]


def key(point) -> str:
    return "|".join(str(p) for p in point)


def is_current(point) -> bool:
    """A recorded point a rerun keeps: complete, and measured with this BUDGET where it used one."""
    if point is None or not point.get("complete", True):
        return False
    budget = point.get("budget", point.get("first_steps", {}).get("budget", BUDGET))
    return budget == BUDGET


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kilobytes


def stamp() -> dict:
    return {"date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "load_average_before": os.getloadavg()[0]}


def train_data(tok):
    return sparselib.calibration_data(tok, PROTOCOL["calib"], BUDGET["steps"] * BUDGET["batch_size"],
                                      BUDGET["train_seqlen"], BUDGET["train_seed"])


def run_owl(model, dense, calib, test, tok, ratios, method, sparsity):
    model.load_state_dict(dense)
    point = stamp()
    targets = owl_sparsities(ratios, sparsity, lam=OWL["lam"], weights=layer_sizes(model), rule=OWL["rule"])
    report = sparselib.prune(model, method, sparsity, calib, layer_sparsity=targets, progress=False)
    t = time.perf_counter()
    ppl = sparselib.perplexity(model, test, seqlen=PROTOCOL["eval_seqlen"], progress=False)
    point.update(method=method, sparsity=sparsity, perplexity=ppl, layer_targets=targets,
                 layer_achieved=list(report.layer_sparsity().values()), achieved_sparsity=report.sparsity,
                 prune_seconds=report.seconds, eval_seconds=time.perf_counter() - t)
    if (method, sparsity) == ("wanda", 0.7):  # the chapter's live check: the first steps from here
        live = sparselib.recover(model, train_data(tok), BUDGET["live_steps"], batch_size=BUDGET["batch_size"],
                                 lr=BUDGET["lr_full"], warmup=BUDGET["warmup"], progress=False)
        point["first_steps"] = dict(steps=BUDGET["live_steps"], mode="full", losses=live.losses, budget=BUDGET)
    return point


def run_recovery(model, dense, calib, tok, result, method, pattern, mode, save, kind="recovery"):
    if dense is not None:
        model.load_state_dict(dense)
    point = stamp()
    if method == "dense":   # the control: no pruning
        report = None
        name = key((kind, method, mode))
    else:
        report = sparselib.prune(model, method, pattern, calib, progress=False)
        name = key((kind, method, pattern, mode))
    pruned_sparsity = sparselib.model_sparsity(model) if report is None else report.sparsity
    curve_test = sparselib.test_data(tok, max_tokens=BUDGET["eval_tokens"])
    evals = []

    def evaluate(step):
        t = time.perf_counter()
        ppl = sparselib.perplexity(model, curve_test, seqlen=PROTOCOL["eval_seqlen"], progress=False)
        evals.append(dict(step=step, tokens=step * BUDGET["batch_size"] * BUDGET["train_seqlen"],
                          perplexity=ppl, eval_seconds=time.perf_counter() - t))
        print(f"    step {step:3d}  ppl {ppl:9.2f}", flush=True)

    def callback(step, m, loss):
        if step in BUDGET["eval_steps"]:
            evaluate(step)
            point.update(curve=evals, budget=BUDGET, complete=False)
            result["points"][name] = point
            save()  # a partial curve is kept for inspection; a rerun redoes it

    evaluate(0)
    lora = mode == "lora"
    rec = sparselib.recover(model, train_data(tok), BUDGET["steps"], batch_size=BUDGET["batch_size"],
                            lr=BUDGET["lr_lora"] if lora else BUDGET["lr_full"], warmup=BUDGET["warmup"],
                            lora_rank=BUDGET["lora_rank"] if lora else None, progress=False, callback=callback)
    point.update(method=method, pattern=pattern, mode=mode, curve=evals, losses=rec.losses, lrs=rec.lrs,
                 tokens_per_step=BUDGET["batch_size"] * BUDGET["train_seqlen"],
                 trained_parameters=rec.trained_parameters, train_seconds=rec.seconds,
                 achieved_sparsity=sparselib.model_sparsity(model), pruned_sparsity=pruned_sparsity,
                 peak_rss_gb=peak_rss_gb(), budget=BUDGET, complete=True)
    return point


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["owl", "recovery", "control"], help="run one kind of point and merge")
    parser.add_argument("--redo", action="store_true", help="re-measure points already in the file")
    parser.add_argument("--threads", type=int, help="torch threads (1 is faster on a crowded machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    sweep = sparselib.load_result("sweep_smollm2_brown")
    if sweep["provenance"]["protocol"] != PROTOCOL:
        raise SystemExit("the sweep's protocol differs from this one: its uniform points cannot be compared")
    model, tok = sparselib.load_model(PROTOCOL["model"])
    calib = sparselib.calibration_data(tok, PROTOCOL["calib"], PROTOCOL["nsamples"], PROTOCOL["seqlen"],
                                       PROTOCOL["seed"])
    test = sparselib.test_data(tok, max_tokens=PROTOCOL["eval_tokens"])
    # the dense weights, to restore before each point (a run of the control alone needs no copy: the
    # model is dense, and 0.5 GB less keeps it under the memory of a crowded machine)
    dense = None if args.only == "control" else {k: v.clone() for k, v in model.state_dict().items()}
    try:
        result = sparselib.load_result(NAME)
        if result["provenance"]["protocol"] != PROTOCOL:
            raise ValueError("protocol changed")
    except ValueError:
        result = {"points": {}}
    result["provenance"] = sparselib.provenance("benchmarks/recovery.py", **PROTOCOL)
    result.update(budget=BUDGET, owl=OWL,
                  uniform_source="sparselib/results/sweep_smollm2_brown.json (same protocol)",
                  uniform={f"{m}|{s}": sweep["points"][f"{m}|{s}|"]["perplexity"]
                           for m in ("wanda", "sparsegpt") for s in (0.5, 0.6, 0.7, "2:4")
                           if f"{m}|{s}|" in sweep["points"]},
                  dense=sweep["dense"])
    save = lambda: sparselib.save_result(NAME, result)  # noqa: E731
    if result.get("dense_curve", {}).get("eval_tokens") != BUDGET["eval_tokens"]:
        curve_test = sparselib.test_data(tok, max_tokens=BUDGET["eval_tokens"])
        result["dense_curve"] = dict(eval_tokens=BUDGET["eval_tokens"], perplexity=sparselib.perplexity(
            model, curve_test, seqlen=PROTOCOL["eval_seqlen"], progress=False))
        save()
    if "outlier_ratios" not in result:
        t = time.perf_counter()
        result["outlier_ratios"] = layer_outlier_ratios(model, calib, M=OWL["M"])
        result["layer_sizes"] = layer_sizes(model)
        print(f"outlier ratios in {time.perf_counter() - t:.0f} s", flush=True)
        save()
    for point in POINTS:
        if args.only and point[0] != args.only:
            continue
        if is_current(result["points"].get(key(point))) and not args.redo:
            continue
        print(key(point), flush=True)
        if point[0] == "owl":
            data = run_owl(model, dense, calib, test, tok, result["outlier_ratios"], *point[1:])
            print(f"    ppl {data['perplexity']:9.2f} (uniform {result['uniform'].get(f'{point[1]}|{point[2]}')})",
                  flush=True)
        elif point[0] == "control":
            data = run_recovery(model, dense, calib, tok, result, point[1], None, point[2], save=save,
                                kind="control")
        else:
            data = run_recovery(model, dense, calib, tok, result, *point[1:], save=save)
        result["points"][key(point)] = data
        result["peak_rss_gb"] = peak_rss_gb()
        save()  # after every point: an interrupted run keeps its work


if __name__ == "__main__":
    main()
