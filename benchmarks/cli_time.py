"""End-to-end time and peak memory of `sparselib prune` on SmolLM2-135M, one method at a time.

Each run is a fresh process (`python -m sparselib prune ...`), so the wall time includes what a user
waits for: importing torch and transformers, loading the model, tokenising the calibration text,
pruning, and writing the checkpoint. The stage times and the peak memory (CPU RSS; peak CUDA memory
when --device cuda) come from the run's own report.json.

    .venv/bin/python benchmarks/cli_time.py                      # all four methods, CPU
    .venv/bin/python benchmarks/cli_time.py --methods wanda      # one method
    .venv/bin/python benchmarks/cli_time.py --device cuda --eval # on a GPU, with perplexity

Run it on an otherwise idle machine: the figures are wall-clock seconds. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RUNS = {"magnitude": "2:4", "wanda": "2:4", "sparsegpt": "2:4", "slicegpt": "0.25"}


def run_one(method: str, sparsity: str, out: Path, extra: list[str]) -> dict:
    argv = [sys.executable, "-m", "sparselib", "prune", "--model", "smollm2-135m", "--method", method,
            "--sparsity", sparsity, "--out", str(out), "--quiet", *extra]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{method} failed ({done.returncode}): {done.stderr.strip()}")
    report = json.loads((out / "report.json").read_text())
    return {"method": method, "sparsity": sparsity, "wall_s": wall, "seconds": report["seconds"],
            "peak_memory": report["peak_memory"], "perplexity": report["perplexity"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--eval", action="store_true", help="also measure perplexity before and after")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f}, device {args.device}")
    extra = ["--device", args.device] + (["--eval"] if args.eval else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="sparselib-cli-time-") as tmp:
        for method in args.methods:
            row = run_one(method, RUNS[method], Path(tmp) / method, extra)
            rows.append(row)
            s, m = row["seconds"], row["peak_memory"]
            cuda = f", peak CUDA {m['cuda_prune_bytes'] / 2**20:.0f} MiB while pruning" if m.get("cuda_prune_bytes") else ""
            ppl = (f", perplexity {row['perplexity']['before']:.1f} -> {row['perplexity']['after']:.1f}"
                   if row["perplexity"] else "")
            print(f"{method:>9} {row['sparsity']:>4}: {row['wall_s']:6.1f} s end to end (load {s['load']:.1f}, "
                  f"calibration text {s['calibration_data']:.1f}, prune {s['prune']:.1f}, save {s['save']:.1f}; "
                  f"the rest is Python start-up and imports), peak RSS {m['cpu_rss_bytes'] / 2**30:.2f} GiB{cuda}{ppl}",
                  flush=True)
            for path in (Path(tmp) / method).iterdir():  # keep the disk use to one checkpoint
                path.unlink()
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "load_average": load, "runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
