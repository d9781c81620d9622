"""A quantized model as a ``compressed-tensors`` checkpoint: the packed format transformers and vLLM load.

    sparselib.quantize(model, 4, group_size=64, calib=calib)       # or prune(..., wbits=4)
    sparselib.save_compressed(model, "out/", tokenizer)
    AutoModelForCausalLM.from_pretrained("out/")                   # needs `pip install compressed-tensors`

The format is written by the ``compressed-tensors`` library itself (its pack-quantized compressor and
its quantization config), not by hand: each quantized linear becomes ``weight_packed`` (int32 words of
packed codes), ``weight_scale`` ``[out, groups]`` (and ``weight_zero_point`` when asymmetric). The codes
are the ones sparselib chose: a reader decodes exactly the weights sparselib's quantized model holds.
Sparsity is not stored: compressed-tensors 0.20 ships quantized compressors only (its 2:4 compressors were
removed), so a pruned-and-quantized model is saved dense-quantized, its zeros as codes. For 2:4 bytes on
disk, see :func:`sparselib.save_24`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .io import write_atomically
from .models import decoder_layers, layer_linears, weight_of
from .quantize import QuantSpec, quant_state

FORMAT = "pack-quantized"


def _compressed_tensors():
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise ImportError("save_compressed writes through the compressed-tensors library: "
                          "pip install compressed-tensors") from None
    from compressed_tensors.compressors.model_compressors.model_compressor import ModelCompressor
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme
    return ModelCompressor, PackedQuantizationCompressor, QuantizationArgs, QuantizationConfig, QuantizationScheme


def _quantized_linears(model: nn.Module) -> tuple[dict, QuantSpec]:
    """``{qualified name: (module, QuantState)}`` of the decoder linears, all on one grid spec; raises
    ValueError naming the fix when a linear was not quantized, was changed since, or specs differ."""
    names = {id(m): n for n, m in model.named_modules()}
    found, specs = {}, set()
    for i, layer in enumerate(decoder_layers(model)):
        for name, module in layer_linears(layer).items():
            state = quant_state(module)
            if state is None:
                raise ValueError(f"layer {i} {name} is not quantized; run sparselib.quantize(model, bits, ...) "
                                 f"(or prune(..., 'sparsegpt', ..., wbits=)) before save_compressed")
            if not isinstance(module, nn.Linear):
                raise ValueError(f"layer {i} {name} is a {type(module).__name__}; the compressed-tensors "
                                 f"format stores nn.Linear weights (Llama-family and OPT models)")
            if not state.holds(weight_of(module)):
                raise ValueError(f"layer {i} {name} changed after quantization (its weights are off its grid); "
                                 f"quantize again before saving")
            found[names[id(module)]] = (module, state)
            specs.add(state.spec)
    if len(specs) != 1:
        raise ValueError("the decoder linears were quantized with different settings; one checkpoint holds "
                         "one grid spec: quantize the whole model in one call")
    return found, specs.pop()


def quantization_config(spec: QuantSpec, ignore: list[str]):
    """The compressed-tensors ``QuantizationConfig`` for ``spec``: weight-only int, per group or channel."""
    _, _, QuantizationArgs, QuantizationConfig, QuantizationScheme = _compressed_tensors()
    args = QuantizationArgs(num_bits=spec.bits, type="int", symmetric=spec.symmetric,
                            strategy="channel" if spec.group_size is None else "group",
                            group_size=spec.group_size, actorder=None)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    return QuantizationConfig(config_groups={"group_0": scheme}, ignore=ignore, format=FORMAT,
                              quantization_status="compressed")


def compressed_state_dict(model: nn.Module) -> tuple[dict, object]:
    """``(state dict as the checkpoint stores it, QuantizationConfig)``: quantized linears packed by
    compressed-tensors, everything else in the scales' dtype; tied tensors stored once."""
    ModelCompressor, Packed, *_ = _compressed_tensors()
    linears, spec = _quantized_linears(model)
    dtype = spec.scale_dtype
    ignore = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in linears]
    config = quantization_config(spec, ignore)
    scheme = config.config_groups["group_0"]
    state, seen = {}, {}
    for key, tensor in model.state_dict().items():
        prefix = key.rpartition(".")[0]
        if prefix in linears and key.endswith(".weight"):
            continue
        if tensor.data_ptr() in seen and tensor.numel():  # a tied tensor (lm_head = embed_tokens)
            continue
        seen[tensor.data_ptr()] = key
        state[key] = tensor.detach().to(dtype) if tensor.is_floating_point() else tensor.detach()
    half = 2 ** (spec.bits - 1)  # the format's codes are signed: k − 2^(b−1), zero point likewise
    for name, (module, q) in linears.items():
        local = {"weight": weight_of(module).detach().to(dtype), "weight_scale": q.scale.to(dtype),
                 "weight_zero_point": (q.zero - half).to(torch.int8)}
        for key, tensor in Packed.compress(local, scheme).items():
            state[f"{name}.{key}"] = tensor.contiguous()
    return state, config


def save_compressed(model: nn.Module, out, tokenizer=None, *, overwrite: bool = False) -> Path:
    """Write ``model`` (quantized by :func:`sparselib.quantize` or ``prune(..., wbits=)``) to the new
    directory ``out`` as a compressed-tensors pack-quantized checkpoint (safetensors + config.json with
    its ``quantization_config``, + the tokenizer when given). Written atomically; ``model`` is not
    changed. Raises ValueError (naming the fix) before writing anything when a decoder linear is not
    quantized, was changed after quantization, or when linears differ in their grid settings."""
    return write_atomically(out, compressed_fill(model, tokenizer), overwrite=overwrite)


def compressed_fill(model: nn.Module, tokenizer=None):
    """``fill(directory)``, which writes :func:`save_compressed`'s files into a new ``directory``; the
    checks and the packing run now, so a model that cannot be saved raises before anything is written."""
    from safetensors.torch import save_file

    ModelCompressor, *_ = _compressed_tensors()
    state, config = compressed_state_dict(model)

    def fill(directory: Path) -> None:
        directory.mkdir()
        model.config.save_pretrained(directory)
        generation = getattr(model, "generation_config", None)
        if generation is not None:
            generation.save_pretrained(directory)
        save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
        ModelCompressor(quantization_config=config).update_config(str(directory))
        cfg = json.loads((directory / "config.json").read_text())
        cfg["torch_dtype"] = cfg["dtype"] = str(config_dtype(state)).replace("torch.", "")
        (directory / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)

    return fill


def config_dtype(state: dict) -> torch.dtype:
    """The floating dtype the checkpoint's unquantized tensors are stored in."""
    return next(t.dtype for t in state.values() if t.is_floating_point())
