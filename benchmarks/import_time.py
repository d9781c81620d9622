"""How long `import sparselib` takes in a fresh interpreter, against `import torch` alone (its floor).

    .venv/bin/python benchmarks/import_time.py [--runs 7]

Prints the fastest and the median wall time of each, over fresh processes (the fastest is the least
disturbed by other load on the machine). Target (issue #16): `import sparselib` <= 1.5 s cold, which
needs it to import no transformers: the line "imports transformers" must say no.
"""
import argparse
import statistics
import subprocess
import sys
import time


def wall_times(code: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    for label, code in (("python -c pass", "pass"), ("import torch", "import torch"),
                        ("import sparselib", "import sparselib")):
        t = wall_times(code, runs)
        print(f"{label:18s} fastest {min(t):.2f} s, median {statistics.median(t):.2f} s ({runs} runs)")
    probe = "import sys, sparselib; print('yes' if 'transformers' in sys.modules else 'no')"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    print(f"imports transformers: {out.strip()}")


if __name__ == "__main__":
    main()
