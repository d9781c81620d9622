"""Every argument check, in one place: one rule per argument, the same for every entry point.

``prune``, ``slice_model``, ``perplexity``, the data functions, ``load_model`` and the ``sparselib``
command all call these. A check takes plain values (a vocabulary size, a maximum number of positions,
a config), not a model, so the command line can run it before anything heavy is loaded. A failed check
raises ``TypeError`` (wrong kind of value) or ``ValueError`` (wrong value) with the fix in the message,
and changes nothing. ``name`` is what the message calls the argument (``"seqlen"``, or ``"--seqlen"``
for the command line).

This module is the bottom layer of the library: it imports only torch, the adapter table and
:mod:`sparselib.io`.
"""
from __future__ import annotations

import math
import os
import socket
import tempfile
from numbers import Real
from pathlib import Path
from urllib.parse import urlparse

import torch

from .adapters import ADAPTERS, SLICED_PREFIX
from .io import deferred_signals, output_problem

DATASETS = ("brown", "wikitext2")


# --------------------------------------------------------------------------------------------
# Plain values
# --------------------------------------------------------------------------------------------
def check_int(value, name: str, minimum: int = 1) -> int:
    """An ``int`` (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def check_number(value, name: str, minimum: float = 0.0, *, above: bool = True, fix: str = "") -> float:
    """A finite real number (a NumPy scalar too, not a bool) ``> minimum`` (``>= minimum`` with
    ``above=False``)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (value <= minimum if above else value < minimum):
        bound = f"{'>' if above else '>='} {minimum:g}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value}{'; ' + fix if fix else ''}")
    return value


def check_batch_size(batch_size, name: str = "batch_size") -> int:
    """Windows per forward pass: an int >= 1."""
    return check_int(batch_size, name, 1)


def check_choice(value, choices, name: str, hint: str = ""):
    """One of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(str, choices))}{hint}")
    return value


def check_dataset(dataset, name: str = "dataset") -> str:
    """``"brown"`` (ships with sparselib) or ``"wikitext2"`` (needs the network)."""
    return check_choice(dataset, DATASETS, name, " ('brown' ships with sparselib and works offline)")


def check_split(split) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    return split


def check_fraction(value, name: str = "sparsity", meaning: str = "the fraction of weights removed") -> float:
    """A number in ``[0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number in [0, 1) such as 0.25, not {value!r}")
    if math.isnan(value) or not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1) ({meaning}), got {value}")
    return float(value)


def max_positions(config) -> int | None:
    """The longest sequence ``config`` (or a model's ``.config``) allows; None when it does not say."""
    config = getattr(config, "config", config)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def check_seqlen(seqlen, limit: int | None = None, name: str = "seqlen") -> int:
    """Tokens per window: an int >= 2 (one token predicted from another), at most ``limit``
    (the model's maximum positions, :func:`max_positions`) when that is known."""
    check_int(seqlen, name, 2)
    if limit is not None and seqlen > limit:
        raise ValueError(f"{name}={seqlen} is above the model's maximum of {limit} positions; "
                         f"use {name} <= {limit}")
    return seqlen


def check_nm_fits(cols: int, m: int, pattern: str, where: str = "this matrix") -> None:
    """An N:M pattern groups ``m`` consecutive inputs, so the input dimension must divide by ``m``."""
    if cols % m:
        raise ValueError(f"{pattern} needs every input dimension to be a multiple of {m}; "
                         f"{where} has {cols} inputs")


def check_device(device, name: str = "device") -> torch.device:
    """A CPU or visible CUDA device (``None`` = CPU)."""
    if device is None:
        return torch.device("cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} {device}: not a device sparselib runs on; use cpu or cuda (cuda:1, ...)")
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{name} {device}: no CUDA GPU is visible here (torch.cuda.is_available() is "
                             f"False); use {name} cpu (`sparselib info` shows what this machine has)")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"{name} {device}: this machine has {count} CUDA GPU(s); use cuda:0 .. "
                             f"cuda:{count - 1}")
    return parsed


def check_enough_tokens(ntokens: int, seqlen: int, what: str, fix: str, spare: int = 0) -> None:
    """A token stream (``what``) must hold one window of ``seqlen`` tokens, plus ``spare``."""
    if ntokens < seqlen + spare:
        window = f"one window of {seqlen}" + (f" plus {spare}" if spare else "")
        raise ValueError(f"{what} has {ntokens} tokens, fewer than {window}; {fix}")


def check_out_dir(out, force: bool, name: str = "--out") -> Path:
    """An output directory that is new, or (with ``force``) an earlier output of sparselib, untouched
    (its :data:`sparselib.io.MARKER` lists every file in it, and it holds nothing else), and that can
    be created where it is."""
    out = Path(out).expanduser()
    if out.exists() or out.is_symlink():
        if not force:
            raise ValueError(f"{name} {out} already exists; choose a new directory, or add --force to replace it")
        if out.is_symlink() or not out.is_dir():
            raise ValueError(f"{name} {out} exists and is not a directory; --force replaces only a directory "
                             f"that sparselib wrote, so choose another {name}")
        problem = output_problem(out) if any(out.iterdir()) else None  # an empty directory holds nothing to lose
        if problem:
            raise ValueError(f"{name} {out} {problem}; --force replaces only sparselib's own output, as it "
                             f"wrote it, so choose another {name}")
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{name} {out} cannot be created: {parent} is a file, not a directory; choose another {name}")
    try:  # a real attempt: permission bits say little to root, nothing about read-only or special file systems
        with deferred_signals():  # Ctrl-C between the two calls would leave the probe behind
            os.rmdir(tempfile.mkdtemp(prefix=".sparselib-probe-", dir=parent))
    except OSError as err:
        raise ValueError(f"{name} {out} cannot be created: {parent} is not writable ({err.strerror}); "
                         f"choose another {name}") from None
    return out


# --------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------
def check_matrix(x, name: str = "W", layout: str = "[out_features, in_features]",
                 finite: bool = True) -> torch.Tensor:
    """A 2-D tensor (weights ``W``, scores ``S``, ...), finite unless ``finite=False``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a 2-D torch.Tensor {layout}, not {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor {layout}, got shape {tuple(x.shape)}")
    if finite and (x.is_floating_point() or x.is_complex()) and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf; pass finite values (fix the weights before pruning)")
    return x


def check_token_ids(ids, vocab_size: int | None = None, limit: int | None = None,
                    name: str = "calib") -> torch.Tensor:
    """Calibration ids: a non-empty LongTensor ``[nsamples, seqlen]`` whose ids lie in
    ``[0, vocab_size)`` and whose ``seqlen`` passes :func:`check_seqlen` against ``limit``."""
    if ids is None:
        raise ValueError(f"{name} is missing: this method needs calibration data, "
                         f"{name} = sparselib.calibration_data(tokenizer)")
    if not isinstance(ids, torch.Tensor) or ids.dtype != torch.long or ids.dim() != 2:
        raise TypeError(f"{name} must be a LongTensor [nsamples, seqlen] of token ids, "
                        f"e.g. sparselib.calibration_data(tokenizer)")
    if ids.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(ids.shape)}); use nsamples >= 1 and seqlen >= 2 "
                         f"in sparselib.calibration_data")
    check_seqlen(ids.shape[1], limit, f"{name} seqlen")
    return check_id_range(ids, vocab_size, name)


def check_id_range(ids: torch.Tensor, vocab_size: int | None, name: str = "ids") -> torch.Tensor:
    """Token ids in ``[0, vocab_size)`` (``vocab_size`` None: not negative)."""
    if ids.numel():
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or (vocab_size is not None and high >= vocab_size):
            allowed = f"[0, {vocab_size})" if vocab_size is not None else "0 and up"
            raise ValueError(f"{name} holds token ids outside {allowed} (from {low} to {high}); "
                             f"tokenize with this model's tokenizer")
    return ids


def check_weights(model, pattern=None) -> None:
    """Every decoder-layer linear of ``model`` is finite and, for an N:M ``pattern``, has a number of
    inputs that divides by M. The message names the layer and the linear."""
    from .adapters import decoder_layers, layer_linears, weight_of

    for i, layer in enumerate(decoder_layers(model)):
        for name, module in layer_linears(layer).items():
            W = weight_of(module)
            if pattern is not None and pattern.is_nm:
                check_nm_fits(W.shape[1], pattern.m, str(pattern), f"layer {i} {name}")
            check_matrix(W, f"layer {i} {name}")


# --------------------------------------------------------------------------------------------
# Models: what a config alone can tell, and where a model comes from
# --------------------------------------------------------------------------------------------
def check_model_type(model_type) -> str:
    """An architecture in the adapter table (a sliced checkpoint's type keeps its dense model's adapter)."""
    if (model_type.removeprefix(SLICED_PREFIX) if isinstance(model_type, str) else model_type) not in ADAPTERS:
        raise ValueError(
            f"architecture {model_type!r} is not supported by sparselib; supported model_type values: "
            f"{', '.join(sorted(ADAPTERS))}. Add an entry to sparselib.models.ADAPTERS to support it.")
    return model_type


def check_causal_lm(config, name: str = "model") -> None:
    """A decoder-only causal LM whose architecture sparselib knows."""
    archs = getattr(config, "architectures", None) or []
    if getattr(config, "is_encoder_decoder", False) or (
            archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)):
        raise ValueError(f"{name} is a {config.model_type} model ({', '.join(archs) or 'encoder-decoder'}), "
                         f"not a causal language model; sparselib prunes decoder-only causal LMs "
                         f"(Llama family, Qwen2, Mistral, OPT, GPT-2)")
    check_model_type(getattr(config, "model_type", None))


def check_slicing(config, sparsity, name: str = "sparsity") -> float:
    """What SliceGPT needs of a model's config: a pre-norm architecture with its layer parts in the
    adapter table, not already sliced, no embedding projection, and a ``sparsity`` (fraction of the
    hidden size to delete) that keeps at least 8 dimensions."""
    sparsity = check_fraction(sparsity, name, "the fraction of the hidden size to delete; e.g. 0.25")
    model_type = str(getattr(config, "model_type", None))
    if model_type.startswith(SLICED_PREFIX):
        raise ValueError("this model is already sliced; slice the dense model once (reload it, "
                         "e.g. sparselib.load_model()), with the sparsity you want")
    adapter = ADAPTERS.get(model_type)
    if adapter is None or not adapter.sliceable(config):
        supported = ", ".join(k for k in sorted(ADAPTERS) if ADAPTERS[k].norms)
        raise ValueError(f"SliceGPT supports pre-LN models of type {supported} (not post-LN OPT-350M); "
                         f"for {model_type!r}, add its layer parts to sparselib.models.ADAPTERS")
    D = config.hidden_size
    if getattr(config, "word_embed_proj_dim", D) != D:
        raise ValueError("SliceGPT needs word_embed_proj_dim == hidden_size (no project_in/out)")
    if sparsity and int((1 - sparsity) * D) < 8:  # slicegpt.kept_dim rounds down to a multiple of 8
        raise ValueError(f"{name}={sparsity} keeps {int((1 - sparsity) * D)} of {D} dimensions, which "
                         f"rounds down to 0 (multiples of 8); use {name} <= {1 - 8 / D:.3f}")
    return sparsity


def check_model_dir(path, fix: str) -> Path:
    """A local directory written by ``save_pretrained``: config.json and safetensors weights."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"model {str(path)!r}: no such file or directory; {fix}")
    if not path.is_dir():
        raise ValueError(f"model {str(path)!r} is a file, not a model directory; {fix}")
    if not (path / "config.json").is_file():
        raise ValueError(f"model {str(path)!r} is not a model directory (no config.json); {fix}")
    if not any(path.glob("*.safetensors")):
        raise ValueError(f"model {str(path)!r} has no .safetensors weights; sparselib loads only safetensors "
                         f"(re-save the model with save_pretrained)")
    return path


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face Hub can be reached: False at once under ``HF_HUB_OFFLINE``, else a
    TCP connection to the endpoint within ``timeout`` seconds (instead of the client's ~50 s of retries)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
    except OSError:
        return False
    return True


def check_hub_id(repo_id: str, fix: str) -> None:
    """A Hugging Face id that is in the local cache, or else one the Hub can be asked about now.
    Without a network this fails at once, naming ``fix``."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not even shaped like an id ("a b", "x//y")
        raise ValueError(f"model {repo_id!r} is neither a local directory nor a Hugging Face id; {fix}") from None
    if isinstance(cached, str) or hub_reachable():
        return
    raise ValueError(f"model {repo_id!r} is neither a local directory nor in the local Hugging Face cache, and the "
                     f"Hub cannot be reached (offline); {fix}")


# --------------------------------------------------------------------------------------------
# Quantization (sparselib.quantize, prune(..., wbits=), the command line's --wbits/--group-size)
# --------------------------------------------------------------------------------------------
#: Weight-only integer grids sparselib writes (compressed-tensors' pack-quantized format holds them).
QUANT_BITS = (2, 3, 4, 8)


def check_bits(bits, name: str = "bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"{name} must be an int, one of {', '.join(map(str, QUANT_BITS))}; not {bits!r}")
    if bits not in QUANT_BITS:
        raise ValueError(f"{name} must be one of {', '.join(map(str, QUANT_BITS))} (weight-only integer grids), "
                         f"got {bits}")
    return bits


def check_group_size(group_size, in_features: int | None = None, where: str = "W",
                     name: str = "group_size") -> int | None:
    """Inputs per quantization grid: None (one grid per output row) or an int >= 1 that divides
    ``in_features`` (when given)."""
    if group_size is None:
        return None
    check_int(group_size, name, 1)
    if in_features is not None and in_features % group_size:
        raise ValueError(f"{name} {group_size} does not divide {where}'s in_features ({in_features}); "
                         f"choose a divisor (e.g. 32, 64, 128) or no groups (one grid per output row)")
    return group_size


def check_flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}")
    return value


def check_positive(value, name: str) -> float:
    """A finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a positive number, not {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


# --------------------------------------------------------------------------------------------
# Task accuracy (sparselib.tasks)
# --------------------------------------------------------------------------------------------
def check_text_items(items, fields, name: str = "items") -> None:
    """A non-empty list of dicts, each with a non-empty str under every key of ``fields``."""
    if not isinstance(items, (list, tuple)) or not items:
        raise TypeError(f"{name} must be a non-empty list of dicts with keys {list(fields)}, "
                        f"e.g. sparselib.lastword_items()")
    for item in items:
        if not isinstance(item, dict) or not all(isinstance(item.get(f), str) and item[f].strip() for f in fields):
            raise TypeError(f"every one of {name} must be a dict with a non-empty str under each of {list(fields)}, "
                            f"got {item!r}")


def check_task_names(tasks, name: str = "tasks") -> None:
    """One task name or a non-empty list of them (lm-eval names such as "boolq")."""
    names = [tasks] if isinstance(tasks, str) else tasks
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(t, str) and t for t in names):
        raise TypeError(f"{name} must be a task name or a non-empty list of them, e.g. ['boolq', 'arc_easy'], "
                        f"got {tasks!r}")
