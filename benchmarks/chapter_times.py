"""Execute each chapter and print its wall time against the budget (3 min each, 15 min in all).

    .venv/bin/python benchmarks/chapter_times.py [chapters/02-magnitude.ipynb ...]
Notebooks are executed in memory; the files are not modified.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

BUDGET_EACH, BUDGET_ALL = 180, 900


def main(paths):
    root = Path(__file__).resolve().parents[1] / "chapters"
    paths = [Path(p) for p in paths] or sorted(root.glob("*.ipynb"))
    total = 0.0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        NotebookClient(nb, timeout=900, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        seconds = time.perf_counter() - start
        total += seconds
        flag = "ok" if seconds <= BUDGET_EACH else "OVER BUDGET"
        print(f"{path.name:<32} {seconds:6.1f} s  {flag}", flush=True)
    print(f"{'all chapters':<32} {total:6.1f} s  {'ok' if total <= BUDGET_ALL else 'OVER BUDGET'}")


if __name__ == "__main__":
    main(sys.argv[1:])
