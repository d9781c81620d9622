"""SliceGPT on SmolLM2-135M: slicing time, and forward speed dense vs sliced at 25%, on this CPU.

    python benchmarks/slicegpt.py                 # speed only, printed (~4 min on 2 idle cores)
    python benchmarks/slicegpt.py --sweep         # + perplexity dense, 10/20/25/30% and Wanda 2:4 (~12 min),
                                                  #   written to sparselib/results/slicegpt_smollm2.json
    python benchmarks/slicegpt.py --record-speed  # re-measure speed only, into that file's "speed" entry

Forward speed: the same token batch through the dense and the sliced models, alternating them so
that a busy machine slows all alike; median of the repeats, as wall time and as process CPU time.
Timed with all cores and with one thread, with the load average recorded for each run. On a shared
machine, OpenMP threads that spin while they wait for each other can make two threads slower than
one (measured here: 3-5 s against 1.9 s for the same pass); run with OMP_WAIT_POLICY=PASSIVE there.
The "ideal" ratio counts the weights each token is multiplied by (every Linear and shortcut). The
reference leaves the head unsliced; "sliced+head" also slices the last layer's output and lm_head.
"""
from __future__ import annotations

import argparse
import datetime
import os

import torch

import sparselib
from sparselib.eval import forward_times
from sparselib.slicegpt import matmul_weights

RESULT = "slicegpt_smollm2"  # sparselib/results/slicegpt_smollm2.json
LEVELS = (0.1, 0.2, 0.25, 0.3)
SPEED_LEVEL = 0.25


def _rounded(times: dict) -> dict:
    return {kind: {name: round(ms, 1) for name, ms in by_model.items()} for kind, by_model in times.items()}


def measure_speed(dense, calib, ids, repeats: int, threads: list[int]) -> tuple[dict, dict]:
    """Slice two copies at 25% (head kept / head sliced) and time all three models at each thread
    count. Returns the result file's speed entry, and the models with their reports."""
    models, reports = {"dense": dense}, {}
    for name, slice_head in (("sliced", False), ("sliced+head", True)):
        models[name], _ = sparselib.load_model()
        reports[name] = sparselib.slice_model(models[name], calib, SPEED_LEVEL, slice_head=slice_head,
                                              progress=False)
        print(f"{name:<12} {reports[name]}")
    speed = {"level": SPEED_LEVEL, "tokens_per_pass": int(ids.numel()), "repeats": repeats,
             "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "naive_ratio": round(1 / (1 - SPEED_LEVEL), 3),
             "ideal_matmul_ratio": {n: round(matmul_weights(dense) / matmul_weights(models[n]), 3) for n in reports},
             "slice_seconds": {n: round(r.seconds, 1) for n, r in reports.items()},
             "params": {n: r.params_after for n, r in reports.items()},
             "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "runs": []}
    for n in threads:
        load = os.getloadavg()[0]
        run = {"threads": n, "load_average": round(load, 2), **_rounded(forward_times(models, ids, repeats, n))}
        for kind in ("wall", "cpu"):
            run[f"speedup_{kind}"] = {m: round(run[f"{kind}_ms"]["dense"] / run[f"{kind}_ms"][m], 3) for m in reports}
        speed["runs"].append(run)
        print(f"{n} thread(s), load average {load:.1f}, {ids.numel()} tokens, median of {repeats}: dense "
              f"{run['wall_ms']['dense']:.0f} ms; speedup (wall / CPU time): " + ", ".join(
                  f"{m} {run['speedup_wall'][m]:.2f}x / {run['speedup_cpu'][m]:.2f}x" for m in reports))
    print(f"ideal, from the weights a token meets: " + ", ".join(
        f"{m} {r:.2f}x" for m, r in speed["ideal_matmul_ratio"].items()) + f"; 1/(1-s) = {speed['naive_ratio']:.2f}x")
    return speed, {**models, "reports": reports}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", action="store_true", help="also measure perplexity and write the result file")
    parser.add_argument("--record-speed", action="store_true", help="update the result file's speed entry")
    parser.add_argument("--repeats", type=int, default=7, help="timed forward passes per model")
    parser.add_argument("--batch", type=int, default=2, help="windows of 256 tokens per forward pass")
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads(), 1],
                        help="intra-op thread counts to time (default: all cores, then 1)")
    args = parser.parse_args()

    dense, tok = sparselib.load_model()
    calib = sparselib.calibration_data(tok)  # 32 × 256 Brown windows, seed 0
    test = sparselib.test_data(tok, max_tokens=sparselib.EVAL_TOKENS)
    ids = test[0, : args.batch * sparselib.EVAL_SEQLEN].view(args.batch, sparselib.EVAL_SEQLEN)
    speed, models = measure_speed(dense, calib, ids, args.repeats, args.threads)
    ppl = lambda m: sparselib.perplexity(m, test, seqlen=sparselib.EVAL_SEQLEN, progress=False)  # noqa: E731

    if args.record_speed:
        result = sparselib.load_result(RESULT)
        speed["ppl_sliced+head"] = result["speed"]["ppl_sliced+head"]  # the same model: unchanged
        result["speed"] = speed
        sparselib.save_result(RESULT, result)
        print(f"updated the speed entry of sparselib/results/{RESULT}.json")
    if not args.sweep:
        return

    speed["ppl_sliced+head"] = ppl(models.pop("sliced+head"))
    dense_row = {"ppl": ppl(dense), "params": sum(p.numel() for p in dense.parameters()),
                 "matmul_weights": matmul_weights(dense)}
    print(f"dense: ppl {dense_row['ppl']:.2f}; 25% with the head sliced too: {speed['ppl_sliced+head']:.2f}")
    rows = []
    for level in LEVELS:
        if level == SPEED_LEVEL:  # already sliced for the speed measurement
            model, r = models.pop("sliced"), models["reports"]["sliced"]
        else:
            model, _ = sparselib.load_model()
            r = sparselib.slice_model(model, calib, level, progress=False)
        rows.append({"sparsity": level, "dim": r.dim, "ppl": ppl(model), "params": r.params_after,
                     "matmul_weights": matmul_weights(model), "slice_seconds": round(r.seconds, 1)})
        print(f"SliceGPT {level:.0%} (d={r.dim}): ppl {rows[-1]['ppl']:.2f}, {r.seconds:.0f} s to slice")
        del model
    sparselib.prune(dense, "wanda", "2:4", calib, progress=False)
    wanda = {"ppl": ppl(dense), "note": "same calibration and eval tokens; on CPU it runs at dense speed"}
    print(f"Wanda 2:4: ppl {wanda['ppl']:.2f}")

    result = {
        "provenance": sparselib.provenance(
            "benchmarks/slicegpt.py --sweep", model="smollm2-135m", calib="brown", nsamples=32, seqlen=256,
            seed=0, eval_tokens=sparselib.EVAL_TOKENS, eval_seqlen=sparselib.EVAL_SEQLEN,
            slicegpt="PCA orientation; d = int((1-s)D) rounded down to a multiple of 8; lm_head rotated, "
                     "not sliced (in speed, 'sliced+head' slices it too); batch_size 8",
            speed="median forward time (wall and process CPU) over the same tokens, models alternated; "
                  "re-measured alone by --record-speed, with its own date and load average"),
        "dense": dense_row, "slicegpt": rows, "speed": speed, "wanda_2:4": wanda,
    }
    sparselib.save_result(RESULT, result)
    print(f"wrote sparselib/results/{RESULT}.json")


if __name__ == "__main__":
    main()
