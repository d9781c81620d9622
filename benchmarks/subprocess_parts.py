"""Run a benchmark as parts, each in its own subprocess with its own time limit, keeping every result.

``benchmarks/semi_structured.py`` is built on this: GPU time comes rarely and briefly, so one hung or
crashed measurement must not lose the others. A part is a function ``part(rec, context)`` in some
file; it runs in a fresh Python process (``python subprocess_parts.py --target file.py:function``)
and hands back its rows through ``rec``, a :class:`Recorder` that saves after every row. The parent
(:func:`run_parts`) starts the parts in order while the budget lasts, kills a part at its limit
(its process group: SIGTERM, then SIGKILL) and records how each ended: ``ok``, ``failed`` (with its
error and the tail of its stderr), ``timed_out`` (with the rows it saved before) or ``skipped`` (with
the reason). After every part it calls ``save(run)``, so a run killed at any moment keeps every
finished part.

Only the standard library is imported here, so a part's process pays only for what its own file
imports (the tests' parts start in a fraction of a second).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_io():
    """sparselib's one atomic-write helper, loaded from its file: it needs only the standard library,
    and importing the package would import torch into every part's process first."""
    spec = importlib.util.spec_from_file_location("_sparselib_io", ROOT / "sparselib" / "io.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


write_atomically = _load_io().write_atomically


def write_json(path: Path, data: dict) -> None:
    """``data`` as JSON at ``path``, atomically (a reader sees the old file or the new one, whole)."""
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, default=str) + "\n",
                                                      encoding="utf-8"), overwrite=True)


@dataclasses.dataclass
class Part:
    """One subprocess: ``target`` is ``"path/to/file.py:function"``; it runs with ``context`` (plus the
    run's) for at most ``limit_s`` seconds, and is skipped when less than ``min_s`` of the budget is
    left, or when ``needs`` names something the run's context marks as not ready."""

    name: str
    target: str
    limit_s: float
    min_s: float = 10.0
    context: dict = dataclasses.field(default_factory=dict)
    needs: str | None = None


class Budget:
    """Seconds left of the run's budget."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


class Recorder:
    """What a part hands back: ``row(table, row)`` appends and saves at once (a part killed later keeps
    it); ``failure(what, err)`` records an error and goes on; ``left()`` is the part's own time left."""

    def __init__(self, path: Path, limit_s: float):
        self.path, self.data = Path(path), {}
        self.end = time.monotonic() + limit_s - 3.0          # a margin to save before the kill

    def left(self) -> float:
        return self.end - time.monotonic()

    def save(self) -> None:
        write_json(self.path, self.data)

    def row(self, table: str, row: dict) -> None:
        self.data.setdefault(table, []).append(row)
        self.save()

    def set(self, key: str, value) -> None:
        self.data[key] = value
        self.save()

    def note(self, text: str) -> None:
        print(f"  . {text}", flush=True)
        self.row("notes", {"note": text})

    def failure(self, what: str, err: BaseException) -> None:
        error = "".join(traceback.format_exception_only(err)).strip()[:800]
        print(f"  ! {what}: {error}", flush=True)
        self.row("failures", {"what": what, "error": error})

    def need(self, seconds: float, what: str) -> bool:
        """Whether ``seconds`` are left for ``what``; if not, note that it was skipped."""
        if self.left() >= seconds:
            return True
        self.note(f"skipped {what}: {self.left():.0f} s left of this part's limit, {seconds:.0f} s needed")
        return False


# --------------------------------------------------------------------------------------------
# In the subprocess
# --------------------------------------------------------------------------------------------
_LOADED = {}


def resolve(target: str):
    """The function ``"path/to/file.py:function"`` names (the file is loaded once per process)."""
    file, _, name = target.rpartition(":")
    if not file or not name:
        raise ValueError(f"a part's target is 'path/to/file.py:function', not {target!r}")
    if file not in _LOADED:
        spec = importlib.util.spec_from_file_location(Path(file).stem, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault(Path(file).stem, module)
        spec.loader.exec_module(module)
        _LOADED[file] = module
    return getattr(_LOADED[file], name)


def run_child(target: str, part_file: Path, context: dict) -> int:
    """Run one part, saving what it records to ``part_file``; a raised error is saved there too."""
    rec = Recorder(part_file, context.get("limit_s", 60))
    rec.save()
    try:
        resolve(target)(rec, context)
    except BaseException as err:  # noqa: BLE001 - recorded, then the process fails
        rec.set("error", "".join(traceback.format_exception_only(err)).strip()[:2000])
        traceback.print_exc()
        return 1
    return 0


# --------------------------------------------------------------------------------------------
# In the parent
# --------------------------------------------------------------------------------------------
def _pump(stream, sink, tail: collections.deque) -> None:
    """Pass the part's stderr on as it comes, keeping its last lines."""
    for line in iter(stream.readline, ""):
        tail.append(line.rstrip("\n"))
        sink.write(line)
        sink.flush()


def _kill(proc: subprocess.Popen) -> None:
    """End the part's whole process group: SIGTERM, then SIGKILL after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_part(part: Part, context: dict, limit_s: float, workdir: Path) -> dict:
    """Run ``part`` in a subprocess for at most ``limit_s`` seconds. Returns ``{name, status, seconds,
    limit_s, returncode, data}`` (+ ``error`` and ``stderr_tail`` unless ok); status is "ok",
    "failed" or "timed_out"; ``data`` is what the part recorded, whole or up to where it stopped."""
    part_file = Path(workdir) / f"{part.name}.json"
    ctx = {**context, **part.context, "limit_s": limit_s, "part": part.name}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--target", part.target,
           "--part-file", str(part_file), "--context", json.dumps(ctx, default=str)]
    print(f"\n== {part.name} (limit {limit_s:.0f} s)", flush=True)
    start, tail = time.monotonic(), collections.deque(maxlen=40)
    proc = subprocess.Popen(cmd, stdout=None, stderr=subprocess.PIPE, text=True, start_new_session=True)
    pump = threading.Thread(target=_pump, args=(proc.stderr, sys.stderr, tail), daemon=True)
    pump.start()
    try:
        status = "ok" if proc.wait(timeout=limit_s) == 0 else "failed"
    except subprocess.TimeoutExpired:
        status = "timed_out"
        _kill(proc)
    pump.join(timeout=5)
    try:
        data = json.loads(part_file.read_text())
    except (OSError, ValueError):
        data = {}
    record = {"name": part.name, "status": status, "seconds": round(time.monotonic() - start, 1),
              "limit_s": round(limit_s, 1), "returncode": proc.returncode, "data": data}
    if status != "ok":
        record["error"] = data.pop("error", None) or (
            f"no result within its limit of {limit_s:.0f} s; killed" if status == "timed_out"
            else f"exited with status {proc.returncode}")
        record["stderr_tail"] = "\n".join(tail)[-3000:]
    print(f"== {part.name}: {status} in {record['seconds']:.0f} s"
          + (f" ({record['error'].splitlines()[-1][:200]})" if status != "ok" else ""), flush=True)
    return record


def merge(run: dict, record: dict) -> None:
    """A finished part into the run: its lists extend the run's tables (each row tagged with the part),
    anything else is kept under ``part_results[part]``; the part's record joins ``run["parts"]``."""
    data = record.pop("data")
    for key, value in data.items():
        if isinstance(value, list):
            rows = [{**r, "part": record["name"]} if isinstance(r, dict) else r for r in value]
            run.setdefault(key, []).extend(rows)
        else:
            run.setdefault("part_results", {}).setdefault(record["name"], {})[key] = value
    run.setdefault("parts", []).append(record)


def run_parts(parts: list[Part], context: dict, run: dict, budget: Budget, workdir: Path,
              save=None, after=None) -> dict:
    """Run every part in order within ``budget``, each for at most ``min(limit_s, budget left)``;
    ``after(part, run, context)`` may change the context of the parts to come (the preflight picks
    the kernel), and ``save(run)`` is called after every part, skipped ones included."""
    for part in parts:
        left = budget.left()
        missing = part.needs and not context.get("ready", {}).get(part.needs, True)
        if missing or left < part.min_s:
            why = (f"needs {part.needs}: {context.get('why_not', {}).get(part.needs, 'not available')}" if missing
                   else f"time budget: {max(left, 0):.0f} s left, at least {part.min_s:.0f} s needed")
            print(f"\n== {part.name}: skipped ({why})", flush=True)
            run.setdefault("parts", []).append({"name": part.name, "status": "skipped", "reason": why})
        else:
            merge(run, run_part(part, context, min(part.limit_s, left), workdir))
            if after:
                after(part, run, context)
        if save:
            save(run)
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="run one benchmark part (started by run_parts)")
    parser.add_argument("--target", required=True, help="path/to/file.py:function")
    parser.add_argument("--part-file", type=Path, required=True, help="where the part's record goes")
    parser.add_argument("--context", default="{}", help="the part's context, as JSON")
    args = parser.parse_args(argv)
    return run_child(args.target, args.part_file, json.loads(args.context))


if __name__ == "__main__":
    sys.exit(main())
