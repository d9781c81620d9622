"""OWL's two settings, swept: λ and M at Wanda 70 % on SmolLM2-135M-Instruct, both rules.

Writes sparselib/results/owl_sweep_smollm2.json (the chapter "When 50 % is not enough" loads it).
OWL has two settings, the outlier threshold M (a score above M × its layer's mean score is an
outlier) and λ (how far a layer's sparsity may move from the target). The authors used M = 5,
λ = 0.08 for LLaMA-7B; nothing says those suit a 30-layer 135M model. Before concluding anything
about OWL on SmolLM2 this script measures the grid

* ``paper|M|λ``: sparselib's reading of the paper (``rule="paper"``: the centred ratios scaled so
  that the largest deviation is λ), λ ∈ LAMBDAS × M ∈ MS;
* ``code|M|λ``: the authors' code (``rule="code"``: min-max to [0, 2λ], minus the mean), at
  M = 5 over LAMBDAS and at λ = 0.08 over MS;

each point = prune with Wanda at a 70 % mean sparsity with those layer sparsities + perplexity,
with the sweep's protocol (Brown calibration 32 × 256, seed 0; the standard 16,384-token Brown test
slice), so uniform Wanda 70 % comes from sparselib/results/sweep_smollm2_brown.json. The outlier
ratios for every M are gathered in one dense calibration pass (they do not depend on λ, the rule or
the target). The point at the authors' setting with the paper rule is the one
benchmarks/recovery.py recorded with the same code, data and protocol; it is taken from there
(marked with its ``source``) unless ``--redo``. A point takes about a minute on 2 idle CPU cores
(prune ~25 s + perplexity ~35 s), the grid about half an hour. Each point is written as soon as it finishes and a rerun skips those
already there (``--redo`` re-measures them).

    .venv/bin/python benchmarks/owl_sweep.py [--redo] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import time
from datetime import datetime, timezone

import torch

import sparselib
from sparselib.calibration import layerwise
from sparselib.course.results import protocol_inputs, resume_result
from sparselib.models import weight_of
from sparselib.owl import layer_sizes, outlier_ratio, owl_sparsities
from sparselib.scores import wanda_scores

NAME = "owl_sweep_smollm2"
PROTOCOL = dict(model="smollm2-135m", calib="brown", nsamples=32, seqlen=256, seed=0,
                eval_tokens=sparselib.EVAL_TOKENS, eval_seqlen=sparselib.EVAL_SEQLEN)
METHOD, TARGET = "wanda", 0.7
LAMBDAS = [0.02, 0.05, 0.08, 0.12, 0.16]
MS = [3.0, 5.0, 7.0, 10.0]
AUTHORS = dict(M=5.0, lam=0.08)   # the OWL paper's LLaMA-7B setting (and sparselib's defaults)


def grid() -> list[tuple[str, float, float]]:
    """(rule, M, λ), the most telling first: the paper rule along λ at the authors' M, the code rule
    at the authors' setting, the paper rule along M at the authors' λ, the code rule along λ and
    along M, then the rest of the paper rule's grid."""
    M0, lam0 = AUTHORS["M"], AUTHORS["lam"]
    points = [("paper", M0, lam) for lam in LAMBDAS] + [("code", M0, lam0)]
    points += [("paper", M, lam0) for M in MS]
    points += [("code", M0, lam) for lam in LAMBDAS] + [("code", M, lam0) for M in MS]
    points += [("paper", M, lam) for M in MS for lam in LAMBDAS]
    return list(dict.fromkeys(points))   # in order, each once


def key(rule: str, M: float, lam: float) -> str:
    return f"{rule}|{M:g}|{lam:g}"


@torch.no_grad()
def outlier_ratios_for(model, calib, Ms) -> dict[str, list[float]]:
    """OWL's D_l of every layer for each M, from one dense pass (sparselib.owl.layer_outlier_ratios
    does the same for one M)."""
    ratios = {f"{M:g}": [] for M in Ms}
    for _, _, linears, stats in layerwise(model, calib, hessian=False):
        scores = [wanda_scores(weight_of(m), stats[name].norms) for name, m in linears.items()]
        for M in Ms:
            ratios[f"{M:g}"].append(outlier_ratio(scores, M))
    return ratios


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redo", action="store_true", help="re-measure points already in the file")
    parser.add_argument("--threads", type=int, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    sweep = sparselib.load_result("sweep_smollm2_brown")
    if sweep["provenance"]["protocol"] != PROTOCOL:
        raise SystemExit("the sweep's protocol differs from this one: its uniform point cannot be compared")
    model, tok, calib, test, dense = protocol_inputs(PROTOCOL)
    result = resume_result(NAME, PROTOCOL)
    result["provenance"] = sparselib.provenance("benchmarks/owl_sweep.py", **PROTOCOL)
    result.update(method=METHOD, target=TARGET, lambdas=LAMBDAS, Ms=MS, authors=AUTHORS,
                  uniform=sweep["points"][f"{METHOD}|{TARGET}|"]["perplexity"], dense=sweep["dense"],
                  uniform_source="sparselib/results/sweep_smollm2_brown.json (same protocol)",
                  layer_sizes=layer_sizes(model))
    save = lambda: sparselib.save_result(NAME, result)  # noqa: E731
    if sorted(result.get("outlier_ratios", {})) != sorted(f"{M:g}" for M in MS):
        t = time.perf_counter()
        result["outlier_ratios"] = outlier_ratios_for(model, calib, MS)
        print(f"outlier ratios for M = {MS} in {time.perf_counter() - t:.0f} s", flush=True)
        save()
    authors = key("paper", AUTHORS["M"], AUTHORS["lam"])
    rec = sparselib.load_result("recovery_smollm2")
    if (authors not in result["points"] and rec["provenance"]["protocol"] == PROTOCOL
            and rec["owl"]["rule"] == "paper" and (rec["owl"]["M"], rec["owl"]["lam"]) == tuple(AUTHORS.values())):
        # benchmarks/recovery.py measured this point with the same code, data and protocol: take it
        p = rec["points"][f"owl|{METHOD}|{TARGET}"]
        result["points"][authors] = dict(
            rule="paper", M=AUTHORS["M"], lam=AUTHORS["lam"], source="sparselib/results/recovery_smollm2.json",
            **{f: p[f] for f in ("date_utc", "load_average_before", "perplexity", "layer_targets",
                                  "achieved_sparsity", "prune_seconds", "eval_seconds")})
        save()
    for rule, M, lam in grid():
        k = key(rule, M, lam)
        if k in result["points"] and not args.redo:
            continue
        model.load_state_dict(dense)
        point = {"date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "load_average_before": os.getloadavg()[0], "rule": rule, "M": M, "lam": lam}
        targets = owl_sparsities(result["outlier_ratios"][f"{M:g}"], TARGET, lam=lam,
                                 weights=result["layer_sizes"], rule=rule)
        report = sparselib.prune(model, METHOD, TARGET, calib, layer_sparsity=targets, progress=False)
        t = time.perf_counter()
        ppl = sparselib.perplexity(model, test, seqlen=PROTOCOL["eval_seqlen"], progress=False)
        point.update(perplexity=ppl, layer_targets=targets, achieved_sparsity=report.sparsity,
                     prune_seconds=report.seconds, eval_seconds=time.perf_counter() - t)
        result["points"][k] = point
        save()  # after every point: an interrupted run keeps its work
        print(f"{k:18s} ppl {ppl:8.2f}  (uniform {result['uniform']:.2f}; layers "
              f"{100 * min(targets):.1f}-{100 * max(targets):.1f} %)", flush=True)


if __name__ == "__main__":
    main()
