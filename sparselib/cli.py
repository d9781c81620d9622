"""The ``sparselib`` command: prune a causal LM and keep the result as a Hugging Face checkpoint.

    sparselib prune --model smollm2-135m --method wanda --sparsity 2:4 --out smollm2-wanda-24 --eval
    sparselib eval --model smollm2-wanda-24
    sparselib info

(``python -m sparselib`` is the same.) This module parses, calls the library and prints. The checks
are :mod:`sparselib.checks` (run on the command line and the model's config before anything heavy,
a mistake is one line on stderr that names the fix, exit status 2); the checkpoint is written with
:func:`sparselib.io.write_atomically`, so an interrupted run (Ctrl-C: exit status 130) leaves nothing
behind. The work itself is the library's: ``load_model``, ``calibration_data``, ``prune`` /
``slice_model``, ``perplexity``.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import signal
import sys
import time
import uuid
from pathlib import Path

import torch

from .checks import (QUANT_BITS, check_batch_size, check_bits, check_device, check_enough_tokens, check_int,
                     check_out_dir, check_seqlen, check_slicing, check_token_ids, check_weights, max_positions)
from .course.results import provenance
from .data import DATASETS, calibration_data, load_text, test_data
from .eval import EVAL_SEQLEN, EVAL_TOKENS, perplexity
from .interrupts import Interrupted, Interrupts
from .io import Busy, exclusive, mark_output, write_atomically
from .masks import parse_sparsity
from .models import (OFFLINE_MODEL, decoder_layers, gguf_path, layer_linears, load_config, load_model, model_device,
                     offline_model_dir, weight_of)
from .prune import METHODS, model_sparsity, prune
from .semistructured import can_use_sparse_kernels
from .slicegpt import SlicedLayer, slice_model
from .version import __version__, transformers_status

log = logging.getLogger(__name__)

ALL_METHODS = (*METHODS, "slicegpt")
FORMATS = ("hf", "compressed-tensors", "2:4")
DEFAULT_GROUP = 128
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

PRUNE_EXAMPLES = f"""\
examples:
  sparselib prune --model {OFFLINE_MODEL} --method wanda --sparsity 2:4 --out smollm2-wanda-24 --eval
  sparselib prune --model {OFFLINE_MODEL} --method sparsegpt --sparsity 0.5 --out smollm2-sparsegpt-50
  sparselib prune --model {OFFLINE_MODEL} --method slicegpt --sparsity 0.25 --out smollm2-sliced-25 --eval
  sparselib prune --model ./my-llama --method wanda --sparsity 4:8 --device cuda --dtype bfloat16 --out my-llama-48
  sparselib prune --method sparsegpt --sparsity 2:4 --wbits 4 --group-size 64 --format 2:4 --out smollm2-24-int4
  sparselib prune --method wanda --sparsity 0.5 --wbits 4 --group-size 64 --format compressed-tensors --out smollm2-w4

--out receives a checkpoint (safetensors, config, tokenizer) and report.json. --format hf (the default):
a Hugging Face checkpoint with every weight stored, zeros included. Load it with
  import sparselib                  # registers the sliced (SliceGPT) architectures with transformers
  from transformers import AutoModelForCausalLM
  model = AutoModelForCausalLM.from_pretrained("smollm2-wanda-24")
--format compressed-tensors (needs --wbits): the packed-quantized checkpoint transformers and vLLM load
  (AutoModelForCausalLM.from_pretrained, with compressed-tensors installed).
--format 2:4 (needs --sparsity 2:4): kept values + 2-bit positions (+ 4/8-bit values with --wbits);
  load it with sparselib.load_24("smollm2-24-int4").
"""


MAIN_EXAMPLES = f"""\
examples:
  sparselib prune --model {OFFLINE_MODEL} --method wanda --sparsity 2:4 --out smollm2-wanda-24 --eval
  sparselib eval --model smollm2-wanda-24        # perplexity of the result
  sparselib info                                 # torch, the GPU, and whether 2:4 kernels can run here
  sparselib prune --help                         # every option, more examples
"""


class UsageError(Exception):
    """A mistake in the command line: one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print the usage too and exit; we want one line
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# --------------------------------------------------------------------------------------------
# Checks before loading: the command line, then the model's config (sparselib.checks)
# --------------------------------------------------------------------------------------------
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
    return check_device(text or ("cuda" if torch.cuda.is_available() else "cpu"), "--device")


def _needs_calibration(method: str, wbits=None) -> bool:
    """SliceGPT, Wanda and SparseGPT read calibration windows; so does GPTQ (``--wbits``)."""
    return method == "slicegpt" or METHODS[method].calibration or wbits is not None


def _group_size(text: str) -> int:
    """``--group-size``: inputs per quantization grid, or ``channel`` (0 here): one grid per row."""
    if text.strip().lower() in ("channel", "0"):
        return 0
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of inputs (e.g. 64, 128) or 'channel'") from None


def _check_quantization(args, pattern) -> None:
    """``--wbits``, ``--group-size`` and ``--format`` together, from the command line alone."""
    if args.wbits is not None:
        check_bits(args.wbits, "--wbits")
    if args.group_size is not None:
        if args.wbits is None:
            raise UsageError("--group-size sets the quantization grids: add --wbits (8, 4 or 3), or drop --group-size")
        if args.group_size < 0:
            raise UsageError(f"--group-size {args.group_size}: give a positive number of inputs (e.g. 64, 128) "
                             f"or 'channel' (one grid per output row)")
    if args.format == "compressed-tensors":
        if args.wbits is None:
            raise UsageError("--format compressed-tensors stores quantized weights: add --wbits 4 (or 8), or use "
                             "--format hf")
        if args.method == "slicegpt":
            raise UsageError("--format compressed-tensors: a sliced model has sparselib's own architecture, which "
                             "compressed-tensors' loaders do not know; use --format hf (quantized with --wbits)")
        try:
            import compressed_tensors  # noqa: F401
        except ImportError:
            raise UsageError("--format compressed-tensors writes through the compressed-tensors library, which is "
                             "not installed: pip install compressed-tensors (or sparselib[deploy])") from None
    if args.format == "2:4":
        if args.method == "slicegpt" or str(pattern) != "2:4":
            raise UsageError(f"--format 2:4 stores a 2:4 pattern; this run makes {args.method} {args.sparsity}: use "
                             f"--sparsity 2:4 with magnitude, wanda or sparsegpt, or --format hf")
        if args.wbits not in (None, 4, 8):
            raise UsageError(f"--format 2:4 holds 16-, 8- or 4-bit values, not {args.wbits}: use --wbits 4 or 8, "
                             f"or --format hf")
        if args.wbits is not None and _grid_inputs(args) and _grid_inputs(args) % 4:
            raise UsageError(f"--format 2:4 needs quantization groups that are a multiple of 4 inputs, not "
                             f"{_grid_inputs(args)}")


def _grid_inputs(args) -> int | None:
    """Inputs per quantization grid: None for one grid per row (``--group-size channel``)."""
    size = DEFAULT_GROUP if args.group_size is None else args.group_size
    return size or None


def _check_groups_fit(model, args) -> None:
    """Every decoder linear's in_features is a multiple of the group size (after slicing, for SliceGPT)."""
    group = _grid_inputs(args)
    if args.wbits is None or group is None:
        return
    inputs = {(i, name): weight_of(m).shape[1] for i, layer in enumerate(decoder_layers(model))
              for name, m in layer_linears(layer).items()}
    for (i, name), cols in inputs.items():
        if cols % group:
            fits = [g for g in (256, 128, 64, 32, 16, 8) if all(c % g == 0 for c in inputs.values())]
            hint = f"--group-size {fits[0]}" if fits else "--group-size channel"
            raise UsageError(f"--group-size {group} does not divide the {cols} inputs of layer {i} {name}; "
                             f"use {hint}, which divides every linear's inputs (or --group-size channel: one "
                             f"grid per output row)")


def _check_prune_args(args):
    """The command line alone: ``(pattern, device, out)``."""
    if args.method not in ALL_METHODS:
        raise UsageError(f"--method {args.method}: unknown method; choose one of {', '.join(ALL_METHODS)}")
    pattern = _pattern(args.sparsity, args.method)
    _check_quantization(args, pattern)
    device = _device(args.device)
    check_int(args.nsamples, "--nsamples", 1)
    check_seqlen(args.seqlen, name="--seqlen")
    check_batch_size(args.batch_size, "--batch-size")
    if args.eval:
        check_seqlen(args.eval_seqlen, name="--eval-seqlen")
        check_enough_tokens(args.eval_tokens, args.eval_seqlen, "the evaluation slice (--eval-tokens)",
                            f"use --eval-tokens >= {args.eval_seqlen}")
    return pattern, device, check_out_dir(args.out, args.force)


def _check_config(config, args, pattern) -> None:
    """What the config alone can tell: sequence lengths and, for SliceGPT, the architecture."""
    limit = max_positions(config)
    if _needs_calibration(args.method, args.wbits):
        check_seqlen(args.seqlen, limit, "--seqlen")
    if args.eval:
        check_seqlen(args.eval_seqlen, limit, "--eval-seqlen")
    if args.method == "slicegpt":
        check_slicing(config, pattern.sparsity, "--sparsity")


# --------------------------------------------------------------------------------------------
# sparselib prune: load and check, measure, prune or slice, report, write
# --------------------------------------------------------------------------------------------
def _load_inputs(args, pattern, seconds: dict):
    """The model (on CPU; layers visit the device), its calibration and test tokens, all checked."""
    t = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=DTYPES[args.dtype])
    seconds["load"] = time.perf_counter() - t
    _check_config(model.config, args, pattern)  # again: the offline model has no config before its first load
    if args.method != "slicegpt":
        check_weights(model, pattern)
        _check_groups_fit(model, args)  # (SliceGPT: once the model is sliced, before any bytes are written)
    t = time.perf_counter()
    calib = None
    if _needs_calibration(args.method, args.wbits):
        calib = calibration_data(tokenizer, args.calib, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)
        check_token_ids(calib, model.config.vocab_size, max_positions(model.config))
    seconds["calibration_data"] = time.perf_counter() - t
    test = None
    if args.eval:
        test = test_data(tokenizer, args.eval_data, max_tokens=args.eval_tokens)
        check_enough_tokens(test.numel(), args.eval_seqlen, f"the {args.eval_data} test split with this tokenizer",
                            "lower --eval-seqlen")
    return model, tokenizer, calib, test


def _perplexity(model, ids, seqlen: int, device, progress: bool) -> float:
    """Perplexity on ``device``; a model kept on CPU for layer streaming visits it for the evaluation."""
    home = model_device(model)
    model.to(device)
    try:
        return perplexity(model, ids, seqlen=seqlen, progress=progress)
    finally:
        model.to(home)


def _prune_or_slice(model, calib, args, pattern, device, progress: bool) -> dict:
    """Run the method; its report as the ``result``, ``layers`` and ``linears`` of report.json."""
    if args.method == "slicegpt":
        done = slice_model(model, calib, pattern.sparsity, args.batch_size, device=device, progress=progress).to_dict()
        _check_groups_fit(model, args)
        return {"result": {"slicing": done["slicing"]}, "layers": done["layers"], "linears": done["linears"],
                "quantization": _quantize_after(model, calib, args, device, progress)}
    joint = args.method == "sparsegpt" and args.wbits is not None  # the SparseGPT paper's joint mode
    quant = dict(wbits=args.wbits, group_size=_grid_inputs(args)) if joint else {}
    pruned = prune(model, args.method, pattern, calib, batch_size=args.batch_size, device=device, progress=progress,
                   **quant)
    done = {"result": {"method_options": pruned.options, "zeros": model_sparsity(model)},
            "layers": [{"layer": i, "sparsity": s} for i, s in pruned.layer_sparsity().items()],
            "linears": pruned.to_dict()["linears"]}
    if joint:
        done["quantization"] = {"method": "sparsegpt (joint: pruned and quantized in one sweep)", "bits": args.wbits,
                                "group_size": _grid_inputs(args), "symmetric": True}
    else:
        done["quantization"] = _quantize_after(model, calib, args, device, progress)
    return done


def _quantize_after(model, calib, args, device, progress: bool) -> dict | None:
    """GPTQ after pruning or slicing (``--wbits``): pruned weights stay 0; None without ``--wbits``."""
    if args.wbits is None:
        return None
    from .quantize import quantize

    q = quantize(model, args.wbits, group_size=_grid_inputs(args), method="gptq", calib=calib,
                 batch_size=args.batch_size, device=device, progress=progress)
    return {"method": "gptq (after pruning)", "bits": args.wbits, "group_size": _grid_inputs(args),
            "symmetric": True, "seconds": round(q.seconds, 2)}


def _report(args, model, pattern, device, params_before: int, done: dict, ppl, seconds: dict, cuda_prune) -> dict:
    calibrate = _needs_calibration(args.method, args.wbits)
    command = shlex.join(["sparselib", *args.argv])
    return {
        "command": command,
        "model": {"name": args.model, "model_type": model.config.model_type,
                  "parameters_before": params_before, "parameters_after": sum(p.numel() for p in model.parameters())},
        "method": args.method,
        "sparsity": args.sparsity,
        "pattern": str(pattern),
        "options": {"calib": args.calib if calibrate else None, "nsamples": args.nsamples if calibrate else None,
                    "seqlen": args.seqlen if calibrate else None, "seed": args.seed, "batch_size": args.batch_size,
                    "device": str(device), "dtype": args.dtype, "wbits": args.wbits,
                    "group_size": _grid_inputs(args) if args.wbits is not None else None, "format": args.format},
        **done,
        "perplexity": ppl,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "peak_memory": {"cuda_prune_bytes": cuda_prune},
        "provenance": provenance("sparselib prune", command=command),
    }


def _cmd_prune(args) -> int:
    start = time.perf_counter()
    pattern, device, out = _check_prune_args(args)                    # 1. the command line alone
    args.run_state["out"] = out
    try:
        with exclusive(out):  # a second run to the same --out is refused at once, not at its end
            return _prune_to(args, out, pattern, device, start)
    except Busy:
        raise UsageError(f"--out {out} is being written by another sparselib run; wait for it to end, or "
                         f"choose another --out") from None


def _prune_to(args, out: Path, pattern, device, start: float) -> int:
    progress = not args.quiet
    if _needs_calibration(args.method, args.wbits):                                # 2. the text, the model's config
        load_text(args.calib, "train")
    if args.eval:
        load_text(args.eval_data, "test")
    config = load_config(args.model)
    if config is not None:
        _check_config(config, args, pattern)
    seconds = {}                                                       # 3. load and check: nothing changes yet
    model, tokenizer, calib, test = _load_inputs(args, pattern, seconds)
    params_before, ppl = sum(p.numel() for p in model.parameters()), None
    if args.eval:                                                      # 4. the work
        t = time.perf_counter()
        ppl = {"data": args.eval_data, "tokens": int(test.numel()), "seqlen": args.eval_seqlen,
               "before": _perplexity(model, test, args.eval_seqlen, device, progress)}
        seconds["eval_before"] = time.perf_counter() - t
        log.info("perplexity before: %.3f", ppl["before"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    log.info("pruning %s: %s %s on %s (one decoder layer at a time)%s", args.model, args.method, pattern, device,
             f", calibration {args.nsamples} x {args.seqlen} tokens of {args.calib}" if calib is not None else "")
    t = time.perf_counter()
    done = _prune_or_slice(model, calib, args, pattern, device, progress)
    seconds["prune"] = time.perf_counter() - t
    cuda_prune = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    if args.eval:
        t = time.perf_counter()
        ppl["after"] = _perplexity(model, test, args.eval_seqlen, device, progress)
        seconds["eval_after"] = time.perf_counter() - t
        log.info("perplexity after: %.3f", ppl["after"])
    report = _report(args, model, pattern, device, params_before, done, ppl, seconds, cuda_prune)
    fill = _format_fill(model, tokenizer, args)  # the format's checks and packing, before anything is written
    write_atomically(out, lambda directory: _save(model, tokenizer, report, directory, start, fill),  # 5. write
                     overwrite=lambda path: check_out_dir(path, args.force),  # it may have appeared meanwhile
                     on_replaced=lambda: args.run_state.update(written=True))
    _print_summary(out, report)
    return 0


def _format_fill(model, tokenizer, args):
    """``fill(directory)`` for ``--format compressed-tensors`` or ``2:4`` (None for hf), made now: a model the
    format cannot hold raises ValueError here, before anything is written."""
    if args.format == "compressed-tensors":
        from .export import compressed_fill

        return compressed_fill(model, tokenizer)
    if args.format == "2:4":
        from .checkpoint24 import fill_24

        return fill_24(model, tokenizer)
    return None


def _save(model, tokenizer, report: dict, directory: Path, started: float, fill=None) -> None:
    start = time.perf_counter()
    if fill is not None:
        fill(directory)
    elif isinstance(decoder_layers(model)[0], SlicedLayer):
        from .slicegpt import write_sliced

        write_sliced(model, directory)
        tokenizer.save_pretrained(directory)
    else:
        directory.mkdir()
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    report["checkpoint_bytes"] = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
    report["seconds"]["save"] = round(time.perf_counter() - start, 2)
    report["seconds"]["total"] = round(time.perf_counter() - started, 2)
    report["peak_memory"] = _peak_memory(report["peak_memory"].get("cuda_prune_bytes"))
    report["output_id"] = uuid.uuid4().hex
    (directory / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    mark_output(directory, report["output_id"])  # last: what --force may later replace, and nothing else


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


def _print_summary(out: Path, report: dict) -> None:
    if report["method"] == "slicegpt":
        s = report["result"]["slicing"]
        what = (f"residual width {s['hidden_size']} -> {s['dim']}, parameters "
                f"{report['model']['parameters_before']:,} -> {report['model']['parameters_after']:,}")
    else:
        what = f"{report['result']['zeros']:.2%} of the decoder-layer linear weights are zero"
    q = report.get("quantization")
    if q:
        what += f"; int{q['bits']} weights, " + (f"groups of {q['group_size']}" if q["group_size"] else "one grid per row")
    print(f"wrote {out}: {report['method']} {report['pattern']}, {what}")
    print(f"format {report['options']['format']}: {report['checkpoint_bytes'] / 2**20:.1f} MiB of safetensors")
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
    check_seqlen(args.seqlen, name="--seqlen")
    check_batch_size(args.batch_size, "--batch-size")
    check_enough_tokens(args.tokens, args.seqlen, "the evaluation slice (--tokens)", f"use --tokens >= {args.seqlen}")
    load_text(args.data, "test")
    config = load_config(args.model)
    if config is not None:
        check_seqlen(args.seqlen, max_positions(config), "--seqlen")
    start = time.perf_counter()
    model, tokenizer = load_model(args.model, device=device, dtype=DTYPES[args.dtype])
    ids = test_data(tokenizer, args.data, max_tokens=args.tokens)
    check_enough_tokens(ids.numel(), args.seqlen, f"the {args.data} test split with this tokenizer", "lower --seqlen")
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
    cached = offline_model_dir()
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

    _add_prune(commands, debug)
    _add_eval(commands, debug)
    _add_info(commands, debug)
    return parser


def _add_prune(commands, debug) -> None:
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
    p.add_argument("--wbits", type=int, default=None, metavar="BITS",
                   help=f"also quantize the decoder linears' weights to BITS ({', '.join(map(str, QUANT_BITS))}), "
                        f"weight-only, symmetric grids: sparsegpt prunes and quantizes in one sweep (the paper's joint "
                        f"mode); the other methods are followed by GPTQ on the same calibration windows")
    p.add_argument("--group-size", type=_group_size, default=None, metavar="N",
                   help=f"inputs per quantization grid (default: {DEFAULT_GROUP}; it must divide every linear's "
                        f"inputs: SmolLM2's 576 takes 64 or 32), or 'channel' for one grid per output row")
    p.add_argument("--format", default="hf", choices=FORMATS,
                   help="hf (default): every weight stored, zeros too; compressed-tensors: packed quantized weights "
                        "(needs --wbits; transformers and vLLM load it); 2:4: kept values + 2-bit positions "
                        "(needs --sparsity 2:4; --wbits 4 or 8 packs the values; sparselib.load_24 loads it)")
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


def _add_eval(commands, debug) -> None:
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


def _add_info(commands, debug) -> None:
    i = commands.add_parser("info", parents=[debug], help="versions, device, and whether 2:4 kernels can run here",
                            description="torch and transformers versions, the GPU and its compute capability, "
                                        "and whether PyTorch's 2:4 semi-structured kernels can run here (and why not).")
    i.add_argument("--json", action="store_true", help="print as JSON")
    i.set_defaults(run=_cmd_info)


def _one_line(err: BaseException, limit: int = 600) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    Ctrl-C or SIGTERM, wherever it lands, ends with one line on stderr and status 130 / 143, and
    leaves nothing behind (:class:`sparselib.interrupts.Interrupts`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    interrupts, run = Interrupts(), {}
    try:
        interrupts.install()
        code = _main(argv, run)
        interrupts.finish()
        return code
    except KeyboardInterrupt as err:
        signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        err.with_traceback(None)  # let go of the interrupted frames (and the progress bars they hold)
        interrupts.settle()
        word = "terminated" if signum == signal.SIGTERM else "interrupted"
        out = run.get("out")
        where = f" after writing {out}" if run.get("written") else f"; nothing was written{f' to {out}' if out else ''}"
        print(f"sparselib: {word}{where}", file=sys.stderr)
        return 128 + signum
    finally:
        interrupts.uninstall()


def _main(argv: list[str], run: dict) -> int:
    """The command, one-line errors included; ``run`` receives ``out`` and ``written`` for the
    interrupt message."""
    from transformers.utils import logging as hf_logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("sparselib: %(message)s"))
    root = logging.getLogger("sparselib")
    level, propagate, hf_level = root.level, root.propagate, hf_logging.get_verbosity()
    hf_bars = hf_logging.is_progress_bar_enabled()
    try:
        root.addHandler(handler)
        root.propagate = False  # our handler prints them; a notebook's root handler would print them twice
        hf_logging.set_verbosity_error()  # e.g. "Token indices sequence length is longer than ..." on the corpus
        hf_logging.disable_progress_bar()  # transformers' per-file bars; ours show calibration, pruning, eval
        args = build_parser().parse_args(argv)
        args.argv, args.run_state = argv, run
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
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        root.propagate = propagate
        hf_logging.set_verbosity(hf_level)
        if hf_bars:
            hf_logging.enable_progress_bar()
