"""A 2:4 model on disk in its compressed form, and back into :class:`~sparselib.SparseLinear24` modules.

    sparselib.prune(model, "sparsegpt", "2:4", calib)                 # (+ wbits=4 for 4-bit values)
    sparselib.save_24(model, "out/", tokenizer)                       # half the bytes + 1/16, in fp16
    model = sparselib.load_24("out/")                                 # SparseLinear24 modules

Each 2:4 decoder linear ``W [out, in]`` is stored as :mod:`sparselib.format24` lays it out:
``<name>.values [out, in/2]`` (the 2 kept values of every group of 4) and ``<name>.meta`` uint8
``[out, in/8]`` (their 2-bit positions). With 4- or 8-bit values (a model pruned with ``wbits=`` or
quantized after pruning, and not yet converted) ``values`` holds the codes instead, packed (two 4-bit codes a byte), beside
``<name>.scale [out, groups]`` (and ``<name>.zero`` when asymmetric): a kept value's group is that of
the input column it sat in. Everything else (embeddings, norms, linears that are not 2:4) is stored
dense in the checkpoint's dtype (float16 or bfloat16: the dtypes 2:4 kernels take). One safetensors
file, ``config.json`` with a ``sparselib_24`` section, the tokenizer; written atomically.

No runtime but sparselib reads this file: vLLM removed its 2:4 support (vllm-project/vllm#36799) and
compressed-tensors 0.20 ships no 2:4 compressor. :func:`load_24` builds the model on the meta device and
fills it from the file, so the whole dense model never exists; each 2:4 linear is decoded one at a time
for its kernel (on CPU the reference kernel; on an sm_80+ GPU cuSPARSELt or CUTLASS).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .checks import check_model_dir
from .format24 import Compressed24, compress_24, decompress_24
from .io import write_atomically
from .masks import nm_violations
from .models import decoder_layers
from .quantize import QuantSpec, QuantState, quant_state

SECTION = "sparselib_24"
VERSION = 1
VALUE_BITS = (4, 8)


def pack_codes(k: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes ``k [rows, n]`` (0 … 2^bits − 1) as uint8 ``[rows, n·bits/8]``: 8-bit codes one a
    byte; 4-bit codes two a byte, the first in the low nibble."""
    k = k.to(torch.uint8)
    return k if bits == 8 else (k[:, 0::2] | (k[:, 1::2] << 4)).contiguous()


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    if bits == 8:
        return packed.float()
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(packed.shape[0], -1)[:, :n].float()


def _linears_24(model: nn.Module) -> tuple[dict, set]:
    """``({qualified name: (W [out, in], bias or None, the nn.Linear or None)}, prefixes of converted
    modules)`` for the decoder linears that are exactly 2:4 (the others stay dense). A model converted by
    :func:`~sparselib.to_semi_structured` works too: its SparseLinear24 modules (fused ones included) give
    back their dense ``W``."""
    from .semistructured import FusedSparseLinear24, SparseLinear24, SparseSlice24

    names = {id(m): n for n, m in model.named_modules()}
    out, converted = {}, {n for n, m in model.named_modules() if isinstance(m, SparseLinear24)}
    fused_parts = {}
    for layer in decoder_layers(model):
        for _, module in layer.named_modules():
            if isinstance(module, FusedSparseLinear24):
                continue  # its parts (SparseSlice24, in the linears' places) are saved one by one
            name = names[id(module)]
            if isinstance(module, SparseSlice24):
                fused: FusedSparseLinear24 = module.fused
                if id(fused) not in fused_parts:
                    parts = fused.dense_weight().split(fused.sizes)
                    biases = fused.bias.split(fused.sizes) if fused.bias is not None else [None] * len(parts)
                    fused_parts[id(fused)] = list(zip(parts, biases))
                W, bias = fused_parts[id(fused)][module.index]
                out[name] = (W, bias, None)
            elif isinstance(module, SparseLinear24):
                out[name] = (module.dense_weight(), module.bias, None)
            elif isinstance(module, nn.Linear):
                W = module.weight.detach()
                if W.shape[1] % 4 == 0 and nm_violations(W, 2, 4) == 0:
                    out[name] = (W, None, module)
    return out, converted


def state_24(model: nn.Module, dtype: torch.dtype | None = None) -> tuple[dict, dict]:
    """``(tensors as save_24 writes them, the config section)``."""
    linears, converted = _linears_24(model)
    if not linears:
        raise ValueError("no decoder linear is 2:4 sparse; prune first: sparselib.prune(model, method, '2:4', calib)")
    states = {name: quant_state(m) if m is not None else None for name, (_, _, m) in linears.items()}
    specs = {s.spec for s in states.values() if s is not None}
    spec = specs.pop() if len(specs) == 1 and all(s is not None for s in states.values()) else None
    if specs or (spec is None and any(s is not None for s in states.values())):
        raise ValueError("some 2:4 linears are quantized and some are not (or with different settings); "
                         "quantize all of them in one call, or none")
    if spec is not None and (spec.bits not in VALUE_BITS or (spec.group_size or 4) % 4):
        raise ValueError(f"2:4 checkpoints hold 4- or 8-bit values in groups that are a multiple of 4 "
                         f"inputs; this model is {spec}")
    dtype = dtype or (spec.scale_dtype if spec is not None else _float_dtype(model))
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"2:4 kernels take float16 or bfloat16; pass dtype=torch.float16, not {dtype}")
    if spec is not None and dtype != spec.scale_dtype:
        raise ValueError(f"the model was quantized with {spec.scale_dtype} scales; save with that dtype")
    tensors, seen = {}, set()
    for key, tensor in model.state_dict().items():
        prefix = key.rpartition(".")[0]
        if (prefix in linears and key.endswith(".weight")) or prefix in converted or tensor.data_ptr() in seen:
            continue  # 2:4 weights are written compressed; converted modules' buffers too; tied tensors once
        seen.add(tensor.data_ptr())
        tensors[key] = tensor.detach().to(dtype) if tensor.is_floating_point() else tensor.detach()
    for name, (W, bias, _) in linears.items():
        if bias is not None:  # a converted module's bias (an nn.Linear's stays in the state dict above)
            tensors[f"{name}.bias"] = bias.detach().to(dtype).contiguous()
        c = compress_24(W.detach().to(dtype))
        tensors[f"{name}.meta"] = c.meta
        if spec is None:
            tensors[f"{name}.values"] = c.values
        else:
            q = states[name]
            per_kept = _kept_groups(q, c.values.shape[1])
            k = torch.clamp(torch.round(c.values.float() / per_kept[0]) + per_kept[1], 0, spec.maxq)
            tensors[f"{name}.values"] = pack_codes(k, spec.bits)
            tensors[f"{name}.scale"] = q.scale.to(dtype).contiguous()
            if not spec.symmetric:
                tensors[f"{name}.zero"] = q.zero.to(torch.uint8).contiguous()
    section = {"version": VERSION, "linears": sorted(linears), "dtype": str(dtype).replace("torch.", ""),
               "bits": None if spec is None else spec.bits, "group_size": None if spec is None else spec.group_size,
               "symmetric": None if spec is None else spec.symmetric}
    return tensors, section


def _kept_groups(q: QuantState, kept: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero of each kept value ``[rows, kept]``: kept value ``j`` sat in group of 4 number
    ``j // 2``, so in input column ``4·(j // 2) + position`` — its quantization group is
    ``(j // 2) // (group_size / 4)`` whatever the position."""
    gs = q.spec.group_size
    if gs is None:
        return q.scale[:, :1].expand(-1, kept), q.zero[:, :1].expand(-1, kept)
    idx = torch.arange(kept) // 2 // (gs // 4)
    return q.scale[:, idx], q.zero[:, idx]


def _float_dtype(model) -> torch.dtype:
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float16


def save_24(model: nn.Module, out, tokenizer=None, *, dtype: torch.dtype | None = None,
            overwrite: bool = False) -> Path:
    """Write ``model``'s 2:4 decoder linears compressed (see the module docstring) to the new directory
    ``out``; ``model`` may be pruned (dense ``nn.Linear`` with 2:4 zeros) or already converted by
    :func:`~sparselib.to_semi_structured` (fused projections included, saved unfused). ``dtype``: float16 or bfloat16 (default: the model's, float16 for a float32 model, or the
    dtype of the scales of a quantized one). ``model`` is not changed. Raises ValueError before writing
    anything when no linear is 2:4 or the quantization settings cannot be stored."""
    return write_atomically(out, fill_24(model, tokenizer, dtype), overwrite=overwrite)


def fill_24(model: nn.Module, tokenizer=None, dtype: torch.dtype | None = None):
    """``fill(directory)``, which writes :func:`save_24`'s files into a new ``directory``; the checks
    and the compression run now, so a model that cannot be saved raises before anything is written."""
    from safetensors.torch import save_file

    tensors, section = state_24(model, dtype)

    def fill(directory: Path) -> None:
        directory.mkdir()
        model.config.save_pretrained(directory)
        cfg = json.loads((directory / "config.json").read_text())
        cfg[SECTION] = section
        (directory / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        save_file(tensors, directory / "model.safetensors", metadata={"format": "pt", "sparselib": "2:4"})
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)

    return fill


def load_24(path, kernel: str = "auto", device=None) -> nn.Module:
    """The model :func:`save_24` wrote, its 2:4 linears as :class:`~sparselib.SparseLinear24` modules.

    kernel: "auto" (cuSPARSELt or CUTLASS when ``device`` is an sm_80+ GPU, else the reference kernel),
    "reference", "cusparselt" or "cutlass". ``device``: where the model goes (default CPU). 4- and 8-bit
    values are decoded to the checkpoint's dtype (no runtime here multiplies 2:4 by int4 directly)."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    from .semistructured import SparseLinear24, can_use_sparse_kernels, sparse_backend

    path = check_model_dir(path, "pass the directory sparselib.save_24 wrote")
    cfg = json.loads((path / "config.json").read_text())
    if SECTION not in cfg:
        raise ValueError(f"{path} is not a sparselib 2:4 checkpoint (no '{SECTION}' in config.json); load a "
                         f"dense checkpoint with AutoModelForCausalLM.from_pretrained")
    section = cfg[SECTION]
    if section.get("version") != VERSION:
        raise ValueError(f"{path} was written by a sparselib with 2:4 format version {section.get('version')}; "
                         f"this one reads version {VERSION}")
    dtype = getattr(torch, section["dtype"])
    device = torch.device(device or "cpu")
    if kernel == "auto":  # the GPU's backend when its 2:4 kernels can run, else the reference kernel
        ok, _ = can_use_sparse_kernels(device, dtype=dtype)
        kernel = sparse_backend(torch.cuda.get_device_capability(device)) if ok else "reference"
    from accelerate import init_empty_weights

    config = AutoConfig.from_pretrained(path)
    with init_empty_weights(include_buffers=False):  # parameters on meta; computed buffers (rotary) real
        model = AutoModelForCausalLM.from_config(config)
    with safe_open(path / "model.safetensors", "pt", device=str(device)) as f:
        for name in section["linears"]:
            module = model.get_submodule(name)
            bias = f.get_tensor(f"{name}.bias") if module.bias is not None else None
            values = _read_values(f, name, section, module.out_features, module.in_features, dtype)
            c = Compressed24(values, f.get_tensor(f"{name}.meta"), (module.out_features, module.in_features))
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, SparseLinear24(decompress_24(c), bias, kernel))
        rest = {k: f.get_tensor(k) for k in f.keys() if k.rpartition(".")[0] not in set(section["linears"])}
    missing, unexpected = model.load_state_dict(rest, strict=False, assign=True)
    if unexpected:
        raise ValueError(f"{path}: tensors the model does not have: {unexpected[:3]}")
    model.tie_weights()
    left = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if left:
        raise ValueError(f"{path} lacks {left[:3]}{' ...' if len(left) > 3 else ''}: not a complete checkpoint")
    return model.eval()


def _read_values(f, name, section, out_features, in_features, dtype) -> torch.Tensor:
    stored = f.get_tensor(f"{name}.values")
    bits = section["bits"]
    if bits is None:
        return stored
    spec = QuantSpec(bits, section["group_size"], section["symmetric"], dtype)
    scale = f.get_tensor(f"{name}.scale").float()
    zero = (f.get_tensor(f"{name}.zero").float() if not spec.symmetric
            else torch.full_like(scale, (spec.maxq + 1) / 2))
    q = QuantState(spec, scale, zero)
    kept = in_features // 2
    s, z = _kept_groups(q, kept)
    k = unpack_codes(stored, bits, kept)
    return ((k - z) * s).to(dtype)


def file_bytes(path) -> int:
    """Bytes of the tensors file a checkpoint directory holds (what the storage model predicts)."""
    return sum(p.stat().st_size for p in Path(path).glob("*.safetensors"))


def storage_of(section: dict) -> "object":
    """The :class:`~sparselib.storage.Storage` that describes a 2:4 checkpoint's linears."""
    from .storage import Storage

    if section["bits"] is None:
        return Storage("2:4 fp16", sparsity="2:4", density=0.5)
    return Storage(f"2:4 + int{section['bits']}", bits=section["bits"], group_size=section["group_size"],
                   symmetric=section["symmetric"], sparsity="2:4", density=0.5)

