"""Architecture facts, in one table: where each model family keeps its decoder layers and their parts.

Everything else in sparselib reads a model through :func:`adapter_for` and the helpers below, so
supporting a new family means adding one :class:`Adapter` entry to ``ADAPTERS``. Nothing here imports
transformers: the table is plain data, and GPT-2's ``Conv1D`` is recognised by :func:`is_conv1d` alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Adapter:
    """Architecture facts the pruning pipeline needs.

    layers:      dotted path to the ``nn.ModuleList`` of decoder layers.
    final_norm:  dotted path to the norm after the last layer.
    embeddings:  dotted paths of the modules that feed layer 0 (token/position embeddings).

    SliceGPT needs the parts of one pre-norm decoder layer (paths relative to the layer; ``norms``
    None = SliceGPT does not support the architecture):
    norms:       the norm before attention, the norm before the MLP.
    attn_inputs / attn_output:  the linears that read the first norm / write attention's output.
    mlp:         the MLP as a chain of modules applied in order.
    mlp_inputs / mlp_output:    the linears that read the second norm / write the MLP's output.
    pre_norm_flag: name of a config attribute that is False when the layers are post-norm (OPT-350M's
                 ``do_layer_norm_before``); "" = always pre-norm. SliceGPT needs pre-norm layers.
    """

    layers: str
    final_norm: str
    embeddings: tuple[str, ...]
    norms: tuple[str, str] | None = None
    attn_inputs: tuple[str, ...] = ()
    attn_output: str = ""
    mlp: tuple[str, ...] = ()
    mlp_inputs: tuple[str, ...] = ()
    mlp_output: str = ""
    pre_norm_flag: str = ""

    def sliceable(self, config) -> bool:
        """Whether SliceGPT can slice a model of this family with this ``config``: its layer parts are
        in the table and its layers are pre-norm."""
        return self.norms is not None and (not self.pre_norm_flag or bool(getattr(config, self.pre_norm_flag, True)))


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
        mlp_inputs=("fc1",), mlp_output="fc2", pre_norm_flag="do_layer_norm_before",
    ),
    "gpt2": Adapter("transformer.h", "transformer.ln_f", ("transformer.wte", "transformer.wpe")),
}


# A SliceGPT checkpoint's model_type is this prefix + its dense model_type; it keeps the dense adapter.
SLICED_PREFIX = "sparselib_sliced_"


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for ``model``'s architecture, or a ValueError that names the supported ones."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if isinstance(model_type, str):
        model_type = model_type.removeprefix(SLICED_PREFIX)
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


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's linear layer (``transformers.pytorch_utils.Conv1D``), which stores ``W`` as ``[in, out]``.
    Recognised by its class name, so that sparselib need not import transformers to ask."""
    return type(module).__name__ == "Conv1D"


def is_prunable(module: nn.Module) -> bool:
    """Linears inside decoder layers: ``nn.Linear`` or GPT-2's ``Conv1D``."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def layer_linears(layer: nn.Module) -> dict[str, nn.Module]:
    """All prunable linears of one decoder layer, by name, in definition order."""
    return {name: m for name, m in layer.named_modules() if name and is_prunable(m)}


def weight_of(module: nn.Module) -> torch.Tensor:
    """The weight as ``W [out_features, in_features]`` (a view: Conv1D stores it transposed)."""
    return module.weight.data.t() if is_conv1d(module) else module.weight.data


def set_weight(module: nn.Module, W: torch.Tensor, *, adopt: bool = False) -> None:
    """Write ``W [out, in]`` back into the module, in the module's own layout and dtype.

    ``adopt=True`` (for a fresh ``W`` that nothing else uses): when ``W`` already has the
    parameter's shape, dtype, device and layout, the parameter takes over ``W``'s memory instead of
    copying into its own: no copy, and no page faults on the first write to memory the loader
    handed out but never wrote (as with weights read from a safetensors file).
    """
    target = weight_of(module)
    if (adopt and not is_conv1d(module) and W.shape == target.shape and W.stride() == target.stride()
            and W.dtype == target.dtype and W.device == target.device):
        module.weight.data = W
    else:
        target.copy_(W.to(target.dtype))
