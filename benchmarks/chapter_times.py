"""Execute each chapter and print its wall time against the budget (3 min each, 15 min in all).

    .venv/bin/python benchmarks/chapter_times.py [--record] [chapters/02-magnitude.ipynb ...]

Notebooks are executed in memory; the files are not modified. With ``--record`` the times go to
``sparselib/results/chapter_times_<cpu|gpu>.json`` (with provenance), which the instructor guide shows.
Record on an idle machine: the figures are what a learner should plan for.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient

import sparselib

BUDGET_EACH, BUDGET_ALL = 180, 900


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", help="notebooks (default: every one in chapters/)")
    parser.add_argument("--record", action="store_true", help="write sparselib/results/chapter_times_*.json")
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parents[1] / "chapters"
    paths = [Path(p) for p in args.paths] or sorted(root.glob("*.ipynb"))
    times, load = {}, {}
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        load[path.stem] = round(os.getloadavg()[0], 2)
        start = time.perf_counter()
        NotebookClient(nb, timeout=900, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        times[path.stem] = round(time.perf_counter() - start, 1)
        flag = "ok" if times[path.stem] <= BUDGET_EACH else "OVER BUDGET"
        print(f"{path.name:<32} {times[path.stem]:6.1f} s  {flag}  (load average {load[path.stem]})", flush=True)
    total = sum(times.values())
    print(f"{'all chapters':<32} {total:6.1f} s  {'ok' if total <= BUDGET_ALL else 'OVER BUDGET'}")
    if args.record:
        kind = "gpu" if torch.cuda.is_available() else "cpu"
        result = {"provenance": sparselib.provenance("benchmarks/chapter_times.py --record",
                                                     what="wall time to execute each notebook, in a fresh kernel, "
                                                          "model already cached"),
                  "seconds": times, "load_average_before": load, "budget_each_s": BUDGET_EACH}
        print("wrote", sparselib.save_result(f"chapter_times_{kind}", result))


if __name__ == "__main__":
    main()
