"""Recorded measurements: JSON files in ``sparselib/results/``, each with its provenance.

Long sweeps are produced by scripts in ``benchmarks/``; chapters load them here and re-run one
point live to check that the file still agrees with the code.
"""
from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..io import write_atomically

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(script: str, **protocol) -> dict:
    """Where, when and on what a measurement was made."""
    import transformers

    from ..version import __version__

    info = {
        "script": script,
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sparselib": __version__,
        "protocol": protocol,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def save_result(name: str, data: dict, directory: Path | None = None) -> Path:
    """Write ``data`` to ``<directory>/<name>.json`` atomically (:func:`sparselib.io.write_atomically`)."""
    path = Path(directory or RESULTS_DIR) / f"{name}.json"
    return write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n"), overwrite=True)


def protocol_inputs(protocol: dict):
    """What a benchmark under the course's protocol starts from: ``(model, tokenizer, calib, test,
    dense_state)``, with ``protocol``'s model, calibration windows (text, nsamples, seqlen, seed) and
    test tokens; ``dense_state`` (a copy of the weights) puts the model back between points."""
    import sparselib

    model, tok = sparselib.load_model(protocol["model"])
    calib = sparselib.calibration_data(tok, protocol["calib"], protocol["nsamples"], protocol["seqlen"],
                                       protocol["seed"])
    test = sparselib.test_data(tok, max_tokens=protocol["eval_tokens"])
    return model, tok, calib, test, {k: v.clone() for k, v in model.state_dict().items()}


def resume_result(name: str, protocol: dict) -> dict:
    """The recorded result ``name`` to resume, if it was measured under ``protocol``; else a fresh
    ``{"points": {}}`` (a sweep whose protocol changed starts again)."""
    try:
        result = load_result(name)
    except ValueError:  # none recorded yet
        return {"points": {}}
    return result if result.get("provenance", {}).get("protocol") == protocol else {"points": {}}


def load_result(name: str) -> dict:
    """A recorded result by name (file stem in ``sparselib/results/``)."""
    path = RESULTS_DIR / f"{name}.json"
    if not path.exists():
        available = ", ".join(sorted(p.stem for p in RESULTS_DIR.glob("*.json"))) or "none"
        raise ValueError(f"no recorded result {name!r}; available: {available}. "
                         f"The scripts in benchmarks/ produce them.")
    return json.loads(path.read_text())


SWEEP = "sweep_smollm2_brown"


def sweep_point(method: str, sparsity, name: str = SWEEP, **options) -> dict:
    """One recorded point of ``benchmarks/sweep.py`` (method, sparsity and options as in ``prune``)."""
    points = load_result(name)["points"]
    key = f"{method}|{sparsity}|{','.join(f'{k}={v}' for k, v in sorted(options.items()))}"
    if key not in points:
        raise ValueError(f"{name} has no point {key!r}; run benchmarks/sweep.py to record it")
    return points[key]


def check_agreement(recorded: float, measured: float, rtol: float, what: str = "perplexity") -> str:
    """Assert that a live re-run agrees with the recorded value; return a sentence saying how well."""
    rel = abs(measured - recorded) / abs(recorded)
    if not rel <= rtol:
        raise AssertionError(f"live {what} {measured:.4g} differs from the recorded {recorded:.4g} by "
                             f"{rel:.1%} (> {rtol:.0%}): the result file is stale; re-run its benchmark script")
    return (f"Live re-run: {what} {measured:.2f}; recorded: {recorded:.2f}; {rel:.2%} apart "
            f"(tolerance {rtol:.0%}).")


def recorded(method: str, sparsities, name: str = SWEEP, **options) -> dict:
    """``{sparsity: perplexity}`` for those of ``sparsities`` that the sweep has recorded.

    A sweep is resumable and may be partial; chapters plot what is recorded and say what is not.
    """
    out = {}
    for s in sparsities:
        try:
            out[s] = sweep_point(method, s, name, **options)["perplexity"]
        except ValueError:
            pass
    return out


def missing(method: str, sparsities, name: str = SWEEP, **options) -> list:
    """The sparsities of ``method`` not recorded yet (for a chapter to say so plainly)."""
    have = recorded(method, sparsities, name, **options)
    return [s for s in sparsities if s not in have]


GPU_RUN_PREFIX = "semi_structured_gpu_"


_INT_COLUMNS = ("out_features", "in_features", "tokens")
_FLOAT_COLUMNS = ("dense_ms", "sparse_ms", "speedup", "max_abs_diff")


def _typed(row: dict) -> dict:
    return {k: int(v) if k in _INT_COLUMNS else float(v) if k in _FLOAT_COLUMNS else v for k, v in row.items()}


def gpu_runs() -> list[dict]:
    """Every recorded 2:4 GPU run in ``sparselib/results/``, oldest first (a newer run never hides an older).

    A run is one ``semi_structured_gpu_<date>_<gpu>.json`` (written by ``benchmarks/semi_structured.py``,
    or a note transcribed from a run's logs beside the CSV that run wrote). Each is returned as a dict:

    - ``name``: the file stem; ``provenance``: GPU, ``capability``, ``torch``, ``cuda``, ``cusparselt``,
      ``backend``, ``date_utc``, ``script``, ``protocol``...;
    - ``linear``: one linear, dense vs 2:4 fp16, rows of ``out_features, in_features, tokens, dense_ms,
      sparse_ms, speedup, backend, path`` (``path``: "eager" or "cuda_graph");
    - ``end_to_end``: whole models, rows of ``model, weights`` ("real" or "random"), ``phase``
      ("prefill", "decode", "forward"...), ``path``, ``batch``, ``seqlen`` or ``new_tokens``, dense and
      2:4 figures (``*_tok_s`` or ``*_ms``) and ``speedup`` (dense time / 2:4 time);
    - ``data``: the whole file (profiles, checks, failures), for anything else.
    """
    import csv

    runs = []
    for path in sorted(RESULTS_DIR.glob(f"{GPU_RUN_PREFIX}*.json")):
        data = json.loads(path.read_text())
        if "linear_csv" in data:  # the first run: its grid is the CSV the script wrote then
            with open(RESULTS_DIR / data["linear_csv"], newline="") as f:
                linear = [{**_typed(row), "path": "eager"} for row in csv.DictReader(f)]
            for r in data.get("kernel_overhead", {}).get("rows", []):
                linear.append({"out_features": r["out_features"], "in_features": r["in_features"],
                               "tokens": r["tokens"], "dense_ms": r["graph_dense_ms"],
                               "sparse_ms": r["graph_sparse_ms"], "speedup": r["graph_speedup"],
                               "backend": data["provenance"].get("backend"), "path": "cuda_graph"})
        else:
            linear = data.get("linear", [])
        e2e = data.get("end_to_end", [])
        runs.append({"name": path.stem, "provenance": data["provenance"], "linear": linear,
                     "end_to_end": e2e["rows"] if isinstance(e2e, dict) else e2e, "data": data})
    return sorted(runs, key=lambda run: run["provenance"].get("date_utc", ""))


# --------------------------------------------------------------------------------------------
# Noise: one measurement repeated over calibration seeds
# --------------------------------------------------------------------------------------------
def spread(values) -> dict:
    """``mean``, ``std`` (sample standard deviation, n − 1; 0 for one value), ``min``, ``max`` and
    ``n`` of a list of numbers: the error bar of a point measured over several seeds."""
    import statistics

    values = [float(v) for v in values]
    if not values:
        raise ValueError("spread needs at least one value")
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def over_seeds(measure, seeds, runs: dict | None = None, after_each=None) -> dict:
    """Run ``measure(seed)`` for every seed of ``seeds`` and summarise: the spread of each number.

    measure:    ``seed -> {name: number}`` (e.g. prune with ``calibration_data(..., seed=seed)``
                and return ``{"perplexity": ...}``), or ``seed -> number`` (recorded as ``"value"``).
    runs:       ``{str(seed): {name: number}}`` already measured (a resumed sweep); those seeds are
                not run again.
    after_each: called with the summary so far after every new seed (to save it: a sweep that is
                stopped keeps its work).

    Returns ``{"seeds": [...], "runs": {str(seed): {...}}, name: spread(...) for each name}`` over
    the seeds of ``seeds`` (:func:`spread`: mean, std, min, max, n).
    """
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    runs = dict(runs or {})

    def summary() -> dict:
        done = [s for s in seeds if str(s) in runs]
        out = {"seeds": done, "runs": {str(s): runs[str(s)] for s in done}}
        names = {n for s in done for n, v in runs[str(s)].items() if isinstance(v, (int, float))}
        for n in sorted(names):
            out[n] = spread([runs[str(s)][n] for s in done if n in runs[str(s)]])
        return out

    for seed in seeds:
        if str(seed) in runs:
            continue
        value = measure(seed)
        runs[str(seed)] = value if isinstance(value, dict) else {"value": value}
        if after_each is not None:
            after_each(summary())
    return summary()


SEED_SPREAD = "seed_spread_smollm2"


def seed_point(method: str, sparsity, name: str = SEED_SPREAD, **options) -> dict:
    """One recorded point of ``benchmarks/seed_spread.py``: ``{"perplexity": spread, "short_perplexity":
    spread, "runs": {seed: ...}, ...}``. ``options``: ``nsamples=8`` or ``layer_sparsity="owl"``."""
    points = load_result(name)["points"]
    key = f"{method}|{sparsity}|{','.join(f'{k}={v}' for k, v in sorted(options.items()))}"
    if key not in points:
        raise ValueError(f"{name} has no point {key!r}; run benchmarks/seed_spread.py to record it")
    return points[key]


def compare(a: dict, b: dict) -> dict:
    """Is ``a`` lower or higher than ``b`` beyond the noise of either, or within it?

    ``a`` and ``b`` are spreads (:func:`spread`, e.g. ``seed_point(...)["perplexity"]``). The rule is
    the one a reader applies to two error bars: the gap between the means must exceed the sum of the
    two standard deviations (the bars mean ± std do not overlap). Otherwise the two are "within
    noise". A point measured without calibration (std 0, e.g. magnitude) still has the other's bar.

    Returns ``{"gap": mean_a − mean_b, "noise": std_a + std_b, "verdict": "lower" | "higher" |
    "within noise"}`` (the verdict reads "a is ... than b").
    """
    for s, label in ((a, "a"), (b, "b")):
        if not isinstance(s, dict) or not {"mean", "std"} <= set(s):
            raise TypeError(f"{label} must be a spread with 'mean' and 'std' (sparselib.results.spread, "
                            f"or seed_point(...)['perplexity']), got {s!r}")
    gap, noise = a["mean"] - b["mean"], a["std"] + b["std"]
    verdict = "within noise" if abs(gap) <= noise else ("lower" if gap < 0 else "higher")
    return {"gap": gap, "noise": noise, "verdict": verdict}


# --------------------------------------------------------------------------------------------
# Words for a comparison, decided by the spread (for the chapters' glued conclusions)
# --------------------------------------------------------------------------------------------
def _check_spread(s, label: str = "spread") -> None:
    if not isinstance(s, dict) or not {"mean", "std"} <= set(s):
        raise TypeError(f"{label} must be a spread with 'mean' and 'std' (sparselib.results.spread, "
                        f"or seed_point(...)['perplexity']), got {s!r}")


def relative_std(s: dict) -> float:
    """The standard deviation of a spread as a fraction of its mean (0.03: the bar is ±3 % of the value)."""
    _check_spread(s)
    return s["std"] / abs(s["mean"])


def largest_relative_std(name: str = SEED_SPREAD) -> float:
    """The widest error bar, relative to its value, among the calibrated points of the main protocol
    (no ``nsamples`` option) in the recorded seed spread: the allowance :func:`borrowed_spread` gives a
    point that was measured from one calibration draw only."""
    points = [p for p in load_result(name)["points"].values()
              if p.get("calibration") and "nsamples" not in p.get("options", {}) and p["perplexity"]["n"] > 1]
    if not points:
        raise ValueError(f"{name} holds no calibrated point measured over several seeds; "
                         f"run benchmarks/seed_spread.py")
    return max(relative_std(p["perplexity"]) for p in points)


def borrowed_spread(value: float, relative: float) -> dict:
    """A spread for a value measured from one calibration draw: ``value`` ± ``relative · value``,
    marked ``"borrowed": True`` (the bar is an allowance taken from other points, not a measurement
    of this one; e.g. ``relative = largest_relative_std()``)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"value must be a number, got {value!r}")
    if not isinstance(relative, (int, float)) or isinstance(relative, bool) or relative < 0:
        raise ValueError(f"relative must be a fraction ≥ 0 (e.g. largest_relative_std()), got {relative!r}")
    value = float(value)
    return {"mean": value, "std": abs(value) * relative, "min": value, "max": value, "n": 1, "borrowed": True}


def ratio(a: dict, b: dict) -> dict:
    """The spread of ``a / b`` from two spreads (e.g. Wanda's perplexity over SparseGPT's).

    mean ``a_mean / b_mean``; std ``mean · (std_a / a_mean + std_b / b_mean)``: the relative bars
    added, the same worst case as :func:`compare`, which adds the two bars. ``n`` is the smaller of
    the two; ``"ratio": True`` marks a derived spread."""
    _check_spread(a, "a")
    _check_spread(b, "b")
    if b["mean"] == 0:
        raise ValueError("ratio: b has mean 0")
    mean = a["mean"] / b["mean"]
    std = abs(mean) * (relative_std(a) + relative_std(b))
    return {"mean": mean, "std": std, "min": mean - std, "max": mean + std,
            "n": min(a.get("n", 1), b.get("n", 1)), "ratio": True}


def plus_minus(s: dict, fmt: str = ".1f", unit: str = "") -> str:
    """``"95.1 ± 2.3"``: a spread as a reader writes an error bar (mean ± sample std), ``unit`` after
    it (``" %"``: ``"29.9 ± 3.6 %"``)."""
    _check_spread(s)
    return f"{s['mean']:{fmt}} ± {s['std']:{fmt}}{unit}"


def verdict_words(a: dict, b: dict, a_name: str, b_name: str, *, better: str | None = "lower",
                  fmt: str = ".1f", unit: str = "") -> str:
    """A conclusion about two spreads in words, decided by :func:`compare` (Markdown, to glue).

    better: ``"lower"`` (perplexity: the lower one is ahead), ``"higher"`` (an accuracy), or ``None``
            (no side is better: the words say which is larger).
    fmt, unit: how the two values are written (:func:`plus_minus`).

    - the bars do not overlap: ``"**SparseGPT is ahead** by more than the noise (Wanda 95.1 ± 2.3,
      SparseGPT 83.8 ± 1.1)"``, or with ``better=None`` ``"**the gain at 2:4 is higher** than the
      gain at 50 % by more than the noise (...)"``;
    - they overlap: ``"**Wanda and SparseGPT are within noise** of each other (...)"``.

    When both bars are zero (neither value depends on a calibration draw, e.g. two magnitude points)
    the gap is exact and the words say so instead of naming a noise.
    """
    if better not in ("lower", "higher", None):
        raise ValueError(f"better must be 'lower', 'higher' or None, got {better!r}")
    c = compare(a, b)
    values = f"{a_name} {plus_minus(a, fmt, unit)}, {b_name} {plus_minus(b, fmt, unit)}"
    if c["noise"] == 0:
        values = (f"{a_name} {a['mean']:{fmt}}{unit}, {b_name} {b['mean']:{fmt}}{unit}; "
                  f"neither depends on a calibration draw")
    if c["verdict"] == "within noise":
        return f"**{a_name} and {b_name} are within noise** of each other ({values})"
    beyond = "" if c["noise"] == 0 else " by more than the noise"
    if better is None:
        return f"**{a_name} is {c['verdict']}** than {b_name}{beyond} ({values})"
    a_ahead = (c["verdict"] == "lower") == (better == "lower")
    return f"**{a_name if a_ahead else b_name} is ahead**{beyond} ({values})"


def paired_items(a_items: str, b_items: str) -> dict:
    """Two models scored on the same items (strings of ``"0"``/``"1"`` in item order, as the task
    benchmark records them): how many items ``only_a`` gets right, ``only_b``, ``both`` and
    ``neither``, and ``p``: the exact two-sided sign test on the items where they disagree (McNemar's
    exact test), the chance of a split at least this lopsided if both models were equally good."""
    import math

    if not isinstance(a_items, str) or not isinstance(b_items, str):
        raise TypeError("a_items and b_items must be strings of '0' and '1' (the recorded 'items')")
    if len(a_items) != len(b_items) or set(a_items + b_items) - {"0", "1"}:
        raise ValueError(f"a_items and b_items must be '0'/'1' strings of one length, got lengths "
                         f"{len(a_items)} and {len(b_items)}")
    pairs = list(zip(a_items, b_items))
    only_a, only_b = pairs.count(("1", "0")), pairs.count(("0", "1"))
    n, k = only_a + only_b, min(only_a, only_b)
    p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    return {"only_a": only_a, "only_b": only_b, "both": pairs.count(("1", "1")),
            "neither": pairs.count(("0", "0")), "p": p}
