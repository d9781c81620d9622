"""A peer, side by side: llm-compressor's SparseGPT and Wanda beside sparselib's, on SmolLM2-135M.

Both libraries prune the same dequantised SmolLM2-135M-Instruct (the safetensors directory that
``sparselib.load_model()`` caches, fp32), calibrate on the same 32 Brown train windows of 256 tokens
(``sparselib.calibration_data``, seed 0, handed to llm-compressor as a dataset of exactly those token
ids: no re-tokenisation, no padding), and are scored by the same code: ``sparselib.perplexity`` on the
standard Brown test slice (16,384 tokens, windows of 256), in this process, after the pruned weights
are loaded into sparselib's own copy of the model. Only the pruning code differs.

llm-compressor pins its own transformers, so it runs in its own virtualenv, ``.venv-peer`` in the
repository root, made on first use by this script (pip: ``torch==2.13.0`` first, so that the local
CPU build is taken, then ``llmcompressor==0.14.0.1``; about 2 minutes). Each llm-compressor run is a
fresh process in that venv (``--worker``), which writes the pruned weights to a temporary folder.
Runs of the two libraries are interleaved so that the load of a shared machine falls on both; each
run records the load average before and after it.

Writes ``sparselib/results/peer_llmcompressor_smollm2.json`` after every run (resumable: runs already
in the file are skipped unless ``--redo``). Not part of ``make test``.

    .venv/bin/python benchmarks/peer_llmcompressor.py [--only NAME ...] [--redo] [--list]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "peer_llmcompressor_smollm2"
PEER_VENV = ROOT / ".venv-peer"
PEER_VERSION = "0.14.0.1"
PEER_TORCH = "2.13.0"
RUN_LOG = ROOT / ".cache" / "peer_llmcompressor_runs.jsonl"  # ignored by git
PEER_READY = PEER_VENV / f".installed-llmcompressor-{PEER_VERSION}"
PROTOCOL = dict(model="smollm2-135m", dtype="float32", calib="brown", nsamples=32, seqlen=256, seed=0,
                eval_tokens=16384, eval_seqlen=256, peer=f"llmcompressor=={PEER_VERSION}")
OWL = dict(M=5.0, lam=0.08)  # the OWL paper's values, sparselib's defaults (sparselib.owl)

# What a new user writes (llm-compressor's documented defaults and its 2:4 example's ignore list).
NEW_USER = dict(targets=["Linear"], ignore=["lm_head"])
# The same, with lm_head excluded the way llm-compressor's docstrings write it (a regex).
FIXED = dict(targets=["Linear"], ignore=["re:.*lm_head"])


def _run(name, library, method, sparsity, role, note="", pair=None, **settings):
    return dict(name=name, library=library, method=method, sparsity=sparsity, role=role, note=note,
                pair=pair, settings=settings)


# In the order they run: the two libraries alternate. ``pair``: the sparselib run a peer run is
# compared with. ``settings`` of an llm-compressor run: modifier arguments (targets, ignore,
# dampening_frac, block_size, sparsity_profile, owl_m, owl_lmbda) and oneshot arguments (pipeline,
# propagate_error, batch_size, shuffle_calibration_samples), each at llm-compressor's default
# unless given; of a sparselib run: ``sparselib.prune`` options.
RUNS = [
    _run("sparselib/sparsegpt/2:4", "sparselib", "sparsegpt", "2:4", "point"),
    _run("llmcompressor/sparsegpt/2:4/new-user", "llmcompressor", "sparsegpt", "2:4", "reproduction",
         "the issue's new-user run: 0.14.0.1 defaults, targets=['Linear'], ignore=['lm_head']",
         pair="sparselib/sparsegpt/2:4", **NEW_USER),
    _run("llmcompressor/sparsegpt/2:4", "llmcompressor", "sparsegpt", "2:4", "point",
         "one change from the new-user run: lm_head ignored by regex, ignore=['re:.*lm_head']",
         pair="sparselib/sparsegpt/2:4", **FIXED),
    _run("sparselib/sparsegpt/0.5", "sparselib", "sparsegpt", 0.5, "point"),
    _run("sparselib/sparsegpt/2:4/+lm_head", "sparselib", "sparsegpt", "2:4", "diagnostic",
         "sparselib's SparseGPT 2:4, then its SparseGPT on the tied lm_head as well (what the new-user "
         "run does), to confirm that this alone accounts for the new-user gap",
         pair="llmcompressor/sparsegpt/2:4/new-user", also_lm_head=True),
    _run("llmcompressor/sparsegpt/0.5", "llmcompressor", "sparsegpt", 0.5, "point",
         pair="sparselib/sparsegpt/0.5", **FIXED),
    _run("sparselib/wanda/2:4", "sparselib", "wanda", "2:4", "point"),
    _run("llmcompressor/wanda/2:4", "llmcompressor", "wanda", "2:4", "point",
         pair="sparselib/wanda/2:4", **FIXED),
    _run("sparselib/wanda/0.5", "sparselib", "wanda", 0.5, "point"),
    _run("llmcompressor/wanda/0.5", "llmcompressor", "wanda", 0.5, "point",
         pair="sparselib/wanda/0.5", **FIXED),
    _run("sparselib/wanda/0.7/owl", "sparselib", "wanda", 0.7, "point", layer_sparsity="owl"),
    _run("llmcompressor/wanda/0.7/owl", "llmcompressor", "wanda", 0.7, "point",
         "OWL profile; targets = the decoder layers, as its OWL examples write them",
         pair="sparselib/wanda/0.7/owl", targets=[r"re:model.layers.\d+$"], ignore=["re:.*lm_head"],
         sparsity_profile="owl", owl_m=OWL["M"], owl_lmbda=OWL["lam"]),
    # diagnostics for OWL: the same Wanda pruning with llm-compressor's layer fractions, and sparselib's
    # OWL with the authors' code rule (min-max to [0, 2λ]), which llm-compressor follows
    _run("sparselib/wanda/0.7/owl-peer-fractions", "sparselib", "wanda", 0.7, "diagnostic",
         "sparselib's Wanda with the per-layer sparsities llm-compressor's OWL chose",
         pair="llmcompressor/wanda/0.7/owl", layer_sparsity="from:llmcompressor/wanda/0.7/owl"),
    _run("sparselib/wanda/0.7/owl-code-rule", "sparselib", "wanda", 0.7, "diagnostic",
         "sparselib's OWL with rule='code' (the authors' code: min-max to [0, 2λ]) instead of the paper's",
         pair="llmcompressor/wanda/0.7/owl", layer_sparsity="owl-code"),
]


def run_names() -> list[str]:
    """Every run's name, in order (a run's name is its key in the result file)."""
    return [r["name"] for r in RUNS]


def relative_gap(peer: float, ours: float) -> float:
    """``peer / ours - 1``: how much higher the peer's perplexity is than sparselib's (negative: lower)."""
    if not ours > 0:
        raise ValueError(f"sparselib's perplexity must be positive, got {ours!r}")
    return peer / ours - 1.0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------
# The peer's virtualenv
# --------------------------------------------------------------------------------------------------
def ensure_peer_venv(python: str = "python3") -> Path:
    """``.venv-peer/bin/python``, creating the venv first if it is missing (as the Makefile makes
    ``.venv-floor``: torch from the local wheel first, then llm-compressor and what it pins)."""
    py = PEER_VENV / "bin" / "python"
    if PEER_READY.exists():
        return py
    print(f"creating {PEER_VENV} (llmcompressor=={PEER_VERSION}; a few minutes)", flush=True)
    start = time.perf_counter()
    subprocess.run([python, "-m", "venv", str(PEER_VENV)], check=True)
    pip = [str(py), "-m", "pip", "install", "--quiet"]
    subprocess.run(pip + ["--upgrade", "pip"], check=True)
    subprocess.run(pip + [f"torch=={PEER_TORCH}"], check=True)
    subprocess.run(pip + [f"llmcompressor=={PEER_VERSION}"], check=True)
    PEER_READY.touch()
    print(f"{PEER_VENV} ready in {time.perf_counter() - start:.0f} s", flush=True)
    return py


# --------------------------------------------------------------------------------------------------
# The worker: one llm-compressor run, in .venv-peer (imports nothing from sparselib)
# --------------------------------------------------------------------------------------------------
MODIFIER_KEYS = ("targets", "ignore", "dampening_frac", "block_size", "sparsity_profile", "owl_m", "owl_lmbda")
ONESHOT_KEYS = ("pipeline", "propagate_error", "batch_size", "shuffle_calibration_samples")


def worker(spec_path: str) -> None:
    import torch
    from datasets import Dataset
    from loguru import logger
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    import llmcompressor
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    spec = json.loads(Path(spec_path).read_text())
    settings = spec["settings"]
    unknown = set(settings) - set(MODIFIER_KEYS) - set(ONESHOT_KEYS)
    if unknown:
        raise ValueError(f"unknown llm-compressor settings: {sorted(unknown)}")
    log_lines: list[str] = []
    logger.add(lambda msg: log_lines.append(str(msg).rstrip()), level="INFO")

    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=getattr(torch, spec["dtype"]))
    calib = load_file(spec["calib"])["calib"]
    dataset = Dataset.from_dict({"input_ids": calib.tolist()})  # the windows as given: one row each

    sparsity = spec["sparsity"]
    kwargs = {k: settings[k] for k in MODIFIER_KEYS if k in settings}
    if isinstance(sparsity, str):  # N:M
        kwargs.update(sparsity=0.5, mask_structure=sparsity)
    else:
        kwargs.update(sparsity=float(sparsity))
    cls = {"sparsegpt": SparseGPTModifier, "wanda": WandaPruningModifier}[spec["method"]]
    if kwargs.get("sparsity_profile") == "owl":
        cls = _owl_as_list(cls)
    modifier = cls(**kwargs)
    oneshot_kwargs = {k: settings[k] for k in ONESHOT_KEYS if k in settings}

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    oneshot(model=model, dataset=dataset, recipe=modifier, max_seq_length=spec["seqlen"],
            num_calibration_samples=len(calib), **oneshot_kwargs)
    seconds = time.perf_counter() - start
    load_after = os.getloadavg()[0]

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    if tied:
        state.pop("lm_head.weight", None)  # safetensors refuses shared tensors; it is embed_tokens
    save_file(state, spec["out"])
    sparsified = [line.split("Sparsifying ", 1)[1].split(" using")[0] for line in log_lines
                  if "Sparsifying " in line]
    info = dict(seconds=seconds, load_average_before=load_before, load_average_after=load_after,
                llmcompressor=llmcompressor.__version__, transformers=__import__("transformers").__version__,
                torch=torch.__version__, tied_lm_head=tied, modules_sparsified=len(sparsified),
                lm_head_sparsified=any(s.rstrip(".").endswith("lm_head") for s in sparsified),
                compress_seconds=sum(float(m.group(1)) for line in log_lines if "METRIC" in line
                                     for m in [re.search(r"- time ([0-9.]+)s$", line)] if m),
                hessian_inversion_failures=sum("Failed to invert hessian" in line for line in log_lines),
                owl_sparsities=getattr(modifier, "_owl_list", None),
                warnings=sorted({line.split(" - ", 1)[-1][:200] for line in log_lines if "WARNING" in line}))
    Path(spec["info"]).write_text(json.dumps(info, indent=1))


def hooked(spec_path: str) -> None:
    """Which modules a modifier with these settings would calibrate and prune (llm-compressor's own
    registration: ``on_initialize`` then ``on_calibration_start``), without calibrating anything."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmcompressor.core import State
    from llmcompressor.modifiers.pruning import SparseGPTModifier

    spec = json.loads(Path(spec_path).read_text())
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    out = {}
    for label, settings in spec["variants"].items():
        modifier = SparseGPTModifier(sparsity=0.5, mask_structure="2:4", **settings)
        state = State(model=model)
        modifier.on_initialize(state)
        modifier.on_calibration_start(state, None)
        names = list(modifier._module_names.values())
        modifier.remove_hooks()
        out[label] = dict(settings=settings, count=len(names), not_in_decoder_layers=[
            n for n in names if not n.startswith("model.layers.")])
    Path(spec["info"]).write_text(json.dumps(out, indent=1))


def _owl_as_list(cls):
    """llm-compressor 0.14.0.1 infers OWL's layer sparsities as a dict keyed by layer name, but its
    hooks read a *list* (a dict falls through to ``layer_sparsity = self.sparsity``, the whole dict,
    and pruning fails). This subclass hands the same values on as a list, in layer order: the one
    change needed to run its OWL profile."""
    class OWLAsList(cls):
        def on_initialize(self, state, **kwargs):
            ok = super().on_initialize(state, **kwargs)
            if isinstance(self.sparsity, dict):
                layers = list(self._target_layers)
                self.sparsity = [float(self.sparsity[name]) for name in layers]
                object.__setattr__(self, "_owl_list", list(self.sparsity))
            return ok
    OWLAsList.__name__ = cls.__name__
    return OWLAsList


# --------------------------------------------------------------------------------------------------
# The driver (in .venv, with sparselib)
# --------------------------------------------------------------------------------------------------
def _sparsities(model):
    """Zeros per decoder-layer linear, per layer, overall (size-weighted), and of the embedding."""
    from sparselib.models import decoder_layers, layer_linears, weight_of
    per_linear, per_layer, zeros, total = {}, [], 0, 0
    for i, layer in enumerate(decoder_layers(model)):
        z = n = 0
        for name, module in layer_linears(layer).items():
            W = weight_of(module)
            per_linear[f"{i}.{name}"] = (W == 0).sum().item() / W.numel()
            z += (W == 0).sum().item()
            n += W.numel()
        per_layer.append(z / n)
        zeros, total = zeros + z, total + n
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    return dict(achieved_sparsity=zeros / total, layer_sparsity=per_layer, linear_sparsity=per_linear,
                embedding_sparsity=(emb == 0).sum().item() / emb.numel(),
                lm_head_sparsity=(head == 0).sum().item() / head.numel(),
                lm_head_tied=head.data_ptr() == emb.data_ptr())


def _run_sparselib(run, model, dense_state, calib, test, result):
    import sparselib
    from sparselib.owl import owl_layer_sparsity
    model.load_state_dict(dense_state)
    options = dict(run["settings"])
    load = os.getloadavg()[0]
    start = time.perf_counter()  # the whole call, as for the peer's oneshot (OWL's ratios included)
    fractions = options.get("layer_sparsity")
    if isinstance(fractions, str) and fractions.startswith("from:"):  # another run's OWL fractions
        source = result["runs"].get(fractions[5:], {})
        if not source.get("owl_sparsities"):
            return dict(error=f"needs the recorded run {fractions[5:]} first")
        options["layer_sparsity"] = source["owl_sparsities"]
    elif fractions == "owl-code":
        options["layer_sparsity"] = owl_layer_sparsity(model, calib, run["sparsity"], rule="code")
    also_lm_head = options.pop("also_lm_head", False)
    report = sparselib.prune(model, run["method"], run["sparsity"], calib, progress=False, **options)
    if also_lm_head:
        _prune_lm_head_too(model, calib, run["sparsity"])
    return dict(seconds=time.perf_counter() - start, load_average_before=load,
                load_average_after=os.getloadavg()[0], layer_targets=report.layer_targets)


def _prune_lm_head_too(model, calib, sparsity):
    """What llm-compressor's new-user run does after the decoder layers: SparseGPT on ``lm_head`` too,
    calibrated on its inputs (the final norm's output, from the pruned layers), with sparselib's own
    SparseGPT. In SmolLM2 ``lm_head`` is tied to the token embedding, so both change."""
    import torch
    import sparselib
    from sparselib.models import weight_of, set_weight
    head = model.get_output_embeddings()
    n, m = (int(x) for x in sparsity.split(":"))
    H = torch.zeros(head.in_features, head.in_features)
    with torch.no_grad():
        for start in range(0, len(calib), 8):
            X = model.model(input_ids=calib[start:start + 8], use_cache=False).last_hidden_state
            X = X.reshape(-1, X.shape[-1]).float()
            H += 2 * X.t() @ X
    W, _ = sparselib.sparsegpt_prune(weight_of(head), H / len(calib), n=n, m=m)
    set_weight(head, W)


def _hook_evidence(model_dir, tmp: Path) -> dict:
    """The modules llm-compressor's SparseGPT modifier registers for pruning, with the new user's
    ``ignore=["lm_head"]`` and with the regex form (its own registration code, no calibration)."""
    spec = dict(model_dir=str(model_dir), info=str(tmp / "hooked.json"),
                variants={"new-user": NEW_USER, "regex": FIXED})
    (tmp / "hooked-spec.json").write_text(json.dumps(spec))
    subprocess.run([str(ensure_peer_venv()), __file__, "--hooked", str(tmp / "hooked-spec.json")], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((tmp / "hooked.json").read_text())


def _run_peer(run, model, dense_state, calib_file, model_dir, tmp: Path):
    from safetensors.torch import load_file
    py = ensure_peer_venv()
    spec = dict(model_dir=str(model_dir), dtype=PROTOCOL["dtype"], calib=str(calib_file),
                seqlen=PROTOCOL["seqlen"], method=run["method"], sparsity=run["sparsity"],
                settings=run["settings"], out=str(tmp / "pruned.safetensors"), info=str(tmp / "info.json"))
    (tmp / "spec.json").write_text(json.dumps(spec))
    log = tmp / "worker.log"
    with open(log, "w") as f:
        proc = subprocess.run([str(py), __file__, "--worker", str(tmp / "spec.json")], stdout=f,
                              stderr=subprocess.STDOUT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode:
        tail = log.read_text()[-3000:]
        return dict(error=f"worker exited {proc.returncode}", log_tail=tail)
    info = json.loads((tmp / "info.json").read_text())
    state = load_file(tmp / "pruned.safetensors")
    model.load_state_dict(dense_state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"the peer's checkpoint does not fit: missing {missing}, unexpected {unexpected}")
    return info


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these runs (names: --list)")
    parser.add_argument("--redo", action="store_true", help="re-measure runs already in the file")
    parser.add_argument("--list", action="store_true", help="print the runs and exit")
    parser.add_argument("--from-log", action="store_true", help="merge the runs recorded in the run log into the file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--hooked", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    if args.hooked:
        return hooked(args.hooked)
    if args.list:
        for r in RUNS:
            print(f"{r['name']:40s} {r['role']:12s} {r['settings']}")
        return
    if args.from_log:
        import sparselib
        result = _load_result()
        for line in RUN_LOG.read_text().splitlines():
            entry = json.loads(line)
            if entry["name"] in run_names() and "error" not in entry["record"]:
                result["runs"][entry["name"]] = entry["record"]
        result = _save(result)
        return
    unknown = set(args.only or []) - set(run_names())
    if unknown:
        parser.error(f"unknown run(s) {sorted(unknown)}; --list shows them")

    import sparselib
    from safetensors.torch import save_file
    from sparselib.course.results import protocol_inputs, resume_result
    from sparselib.models import offline_model_dir

    ensure_peer_venv()
    model, tok, calib, test, dense_state = protocol_inputs(PROTOCOL)
    result = resume_result(NAME, PROTOCOL)
    result.setdefault("runs", result.pop("points", {}))
    result["provenance"] = sparselib.provenance("benchmarks/peer_llmcompressor.py", **PROTOCOL)
    result["provenance"]["timing_note"] = (
        "wall-clock seconds on a shared 2-core machine under load (see each run's load averages); "
        "they compare the two libraries run by run, not this machine's speed")
    if "dense" not in result and not args.only:  # with --only, another invocation may be measuring it
        result["dense"] = sparselib.perplexity(model, test, seqlen=PROTOCOL["eval_seqlen"], progress=False)
        _save(result)
        print(f"dense perplexity {result['dense']:.2f}", flush=True)

    with tempfile.TemporaryDirectory(prefix="peer-llmc-") as tmpdir:
        tmp = Path(tmpdir)
        if "hooked_modules" not in result:
            result["hooked_modules"] = _hook_evidence(offline_model_dir(), tmp)
            result = _save(result)
        calib_file = tmp / "calib.safetensors"
        save_file({"calib": calib.contiguous()}, calib_file)
        for run in RUNS:
            if args.only and run["name"] not in args.only:
                continue
            if run["name"] in result["runs"] and "error" not in result["runs"][run["name"]] and not args.redo:
                continue
            started = _now()
            if run["library"] == "sparselib":
                out = _run_sparselib(run, model, dense_state, calib, test, _load_result())
            else:
                out = _run_peer(run, model, dense_state, calib_file, offline_model_dir(), tmp)
            record = {k: run[k] for k in ("library", "method", "sparsity", "role", "note", "pair", "settings")}
            record.update(out, date_utc=started)
            if "error" not in out:  # scored here, by sparselib, whichever library pruned
                t = time.perf_counter()
                record["perplexity"] = sparselib.perplexity(model, test, seqlen=PROTOCOL["eval_seqlen"],
                                                            progress=False)
                record["eval_seconds"] = time.perf_counter() - t
                record.update(_sparsities(model))
            RUN_LOG.parent.mkdir(exist_ok=True)
            with open(RUN_LOG, "a") as f:  # every record also lands here (--from-log merges them back)
                f.write(json.dumps({"name": run["name"], "record": record}) + "\n")
            if "error" in out:  # not recorded in the file: it stays in not_yet_measured
                print(f"{run['name']}: {out['error']}\n{out.get('log_tail', '')}", flush=True)
                continue
            result["runs"][run["name"]] = record
            result = _save(result, run["name"])
            print(f"{run['name']:40s} ppl {record['perplexity']:8.2f}  sparsity {record['achieved_sparsity']:.4f}  "
                  f"embedding {record['embedding_sparsity']:.3f}  {record['seconds']:6.1f} s "
                  f"(load {record['load_average_before']:.1f})", flush=True)
    model.load_state_dict(dense_state)


def _load_result():
    from sparselib.course.results import resume_result
    result = resume_result(NAME, PROTOCOL)
    result.setdefault("runs", result.pop("points", {}))
    return result


def _save(result, name=None):
    """Write ``result``, merged into the file as it is now: several invocations with different
    ``--only`` runs may share one file (each adds its own runs; the dense figure is kept)."""
    import sparselib
    latest = _load_result()
    merged = {**latest, **{k: v for k, v in result.items() if k != "runs"}}
    merged["runs"] = {k: v for k, v in {**latest["runs"], **({name: result["runs"][name]} if name else {})}.items()
                      if "error" not in v}  # a failed or interrupted run is not a measurement
    targets = {r["name"]: r["sparsity"] for r in RUNS}
    for key, rec in merged["runs"].items():  # records from before the achieved sparsity had its own key
        if "achieved_sparsity" not in rec and key in targets:
            rec["achieved_sparsity"], rec["sparsity"] = rec["sparsity"], targets[key]
    _compare(merged)
    merged["not_yet_measured"] = [n for n in run_names() if "perplexity" not in merged["runs"].get(n, {})]
    merged["explanation"] = explain(merged)
    sparselib.save_result(NAME, merged)
    merged["runs"] = {**merged["runs"], **{k: v for k, v in result["runs"].items() if k not in merged["runs"]}}
    return merged


def explain(result) -> str:
    """The finding, in plain words, with every figure read from ``result`` (only what is recorded)."""
    runs, parts = result["runs"], []
    hooked = result.get("hooked_modules")
    if hooked:
        parts.append(
            "Why the new-user run is worse: in llm-compressor 0.14.0.1, ignore=['lm_head'] does not keep "
            "lm_head out of SparseGPT or Wanda. The sparsity modifiers name each module they prune "
            "'<target>.<name inside the target>'; with targets=['Linear'] every linear is its own target "
            "and the name inside it is empty, so lm_head is called 'lm_head.' (with a trailing dot). An "
            "ignore entry without 're:' must equal the name exactly, so 'lm_head' misses it and "
            "'re:.*lm_head' catches it; the warning meant for a pruned lm_head tests "
            "name.endswith('lm_head') and stays silent for the same reason. llm-compressor's own "
            f"registration code hooks {hooked['new-user']['count']} modules with the new user's settings "
            f"(the decoder-layer linears plus {', '.join(hooked['new-user']['not_in_decoder_layers'])}) and "
            f"{hooked['regex']['count']} with ignore=['re:.*lm_head']. Its sequential pipeline calibrates "
            "lm_head in its last step, so lm_head is pruned too, and in SmolLM2 lm_head is tied to the "
            "token embedding: the input embedding loses the same weights.")
    new_user, fixed = runs.get("llmcompressor/sparsegpt/2:4/new-user"), runs.get("llmcompressor/sparsegpt/2:4")
    ours, ours_head = runs.get("sparselib/sparsegpt/2:4"), runs.get("sparselib/sparsegpt/2:4/+lm_head")
    if new_user and "perplexity" in new_user and ours:
        parts.append(f"Measured: the new-user run gives perplexity {new_user['perplexity']:.1f} against "
                     f"sparselib's {ours['perplexity']:.1f}, with {new_user['embedding_sparsity']:.1%} of the "
                     f"embedding zero (dense: {ours['embedding_sparsity']:.1%}).")
    if ours and ours_head and "perplexity" in ours_head:
        parts.append(
            f"The same done with sparselib alone (its SparseGPT 2:4, then its SparseGPT 2:4 on the tied "
            f"lm_head, calibrated on the final norm's outputs as llm-compressor does) raises sparselib's "
            f"perplexity from {ours['perplexity']:.1f} to {ours_head['perplexity']:.1f} "
            f"(×{ours_head['perplexity'] / ours['perplexity']:.2f}; embedding "
            f"{ours_head['embedding_sparsity']:.1%} zero): the size of the gap the new-user run showed "
            "(224 against 138 on about 40k test tokens, ×1.62).")
    if fixed and "perplexity" in fixed and ours:
        parts.append(f"With that one setting changed (ignore=['re:.*lm_head']), llm-compressor gives "
                     f"{fixed['perplexity']:.1f} against sparselib's {ours['perplexity']:.1f} "
                     f"({relative_gap(fixed['perplexity'], ours['perplexity']):+.1%}).")
    pairs = [(n, r) for n, r in runs.items() if r.get("role") == "point" and "gap_to_pair" in r
             and n != "llmcompressor/sparsegpt/2:4"]
    if pairs:
        parts.append("Other points, llm-compressor against sparselib: " + "; ".join(
            f"{n.split('/', 1)[1]} {r['perplexity']:.1f} vs {runs[r['pair']]['perplexity']:.1f} "
            f"({r['gap_to_pair']:+.1%})" for n, r in pairs) + ".")
    parts.append(
        "Read side by side, the two implement the same rules, the reference implementations' "
        "(IST-DASLab/sparsegpt, locuslab/wanda): SparseGPT with H the running mean over samples of 2XXᵀ, "
        "dead inputs set to H_ii = 1 with their weights zeroed, damping 0.01 · mean(diag H) "
        "(llm-compressor's dampening_frac default is 0.01, although its docstring example shows 0.001), "
        "blocks of 128 columns, the upper Cholesky factor of H⁻¹, N:M chosen at every m-th column on the "
        "already-updated weights, unstructured masks with one threshold per block over all rows; Wanda "
        "with |W|·‖X_j‖₂ (a running mean of squares), per-row unstructured and per-group N:M masks, no "
        "update. Calibration is handled alike: a dataset of input_ids is used as given (no "
        "re-tokenisation, no padding, no attention mask: the causal mask only), all 32 windows, in a "
        "shuffled order, one window per forward (batch size 1; sparselib uses 8: the statistics are the "
        "same sums); llm-compressor calibrates with eager attention, sparselib with the model's default "
        "(the same function). Both are sequential: its default pipeline for these modifiers is "
        "'sequential' with propagate_error=True, so each decoder layer is calibrated on the outputs of "
        "the already-pruned layers before it, as in the references and in sparselib; within a layer "
        "every linear sees the dense layer's activations in both. Both run in fp32 here. Small "
        "differences that remain: llm-compressor's unstructured SparseGPT prunes the weights at or below "
        "the threshold, one more per block than int(rows·128·s) (and ties); if a Cholesky factorisation "
        "fails it warns and falls back to H⁻¹ = I (magnitude pruning for that layer) where sparselib "
        "raises the damping; its OWL profile follows the authors' code (outlier ratios min-max scaled to "
        "[0, 2λ]) rather than the paper's formula that sparselib uses by default, and scores outliers "
        "with the mean of per-window activation norms rather than one norm over all tokens.")
    timed = [(n, r) for n, r in runs.items() if r.get("library") == "llmcompressor" and "time_ratio_to_pair" in r]
    if timed:
        parts.append("Time (wall clock on a shared, loaded 2-core machine, runs of the two libraries "
                     "interleaved): " + "; ".join(
                         f"{n.split('/', 1)[1]} {r['seconds']:.0f} s vs {runs[r['pair']]['seconds']:.0f} s "
                         f"(×{r['time_ratio_to_pair']:.1f}; the SparseGPT/Wanda sweeps themselves "
                         f"{r.get('compress_seconds', 0):.0f} s of it)" for n, r in timed) + ".")
    parts.append(
        "Where llm-compressor's time goes, from its code: every linear gathers its own statistics, so "
        "q, k and v each accumulate the same 576×576 Hessian (and gate and up the same one twice), each as "
        "a full product where sparselib computes one triangle once per distinct input; it runs the "
        "calibration and propagation passes one window at a time; and it sweeps each linear's columns in "
        "its own Python loop, after tracing the model into subgraphs with torch.fx.")
    return " ".join(parts)


def _compare(result):
    """Each peer run's perplexity gap to its sparselib pair (when both are recorded)."""
    runs = result["runs"]
    for rec in runs.values():
        pair = runs.get(rec.get("pair") or "")
        if pair and "perplexity" in rec and "perplexity" in pair:
            rec["gap_to_pair"] = relative_gap(rec["perplexity"], pair["perplexity"])
            rec["time_ratio_to_pair"] = rec["seconds"] / pair["seconds"]


if __name__ == "__main__":
    main()
