"""The sliced checkpoint format: a SliceGPT model as a Hugging Face checkpoint that
``AutoModelForCausalLM.from_pretrained`` loads with no remote code.

A sliced Llama is a LlamaForCausalLM whose layers are wrapped (:class:`~sparselib.slicegpt.SlicedLayer`)
and whose weights have smaller shapes. :func:`register_sliced` registers, for each architecture SliceGPT
supports, a config class (model_type ``"sparselib_sliced_<type>"``: the dense config plus
``sliced_shapes``) and a model class that builds the dense model, restructures it and gives each
sliced parameter its saved shape.

Registration imports transformers' modeling code (seconds), so it happens lazily: on the first
save or load here, or, after ``import sparselib``, as soon as transformers itself is imported
(:func:`register_when_transformers_loads`). ``import sparselib`` alone imports no transformers.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import json
import logging
import sys
from pathlib import Path

import torch

from .adapters import ADAPTERS, SLICED_PREFIX, decoder_layers, get_module
from .io import write_atomically
from .slicegpt import SlicedLayer, _store, restructure

log = logging.getLogger(__name__)
FORMAT = "sparselib-slicegpt/2"
_CLASSES: dict[str, tuple] = {}  # base model_type -> (SlicedConfig, SlicedForCausalLM), once registered


class _Sliced:
    """Mixin for the registered sliced classes: the dense architecture, restructured, then every
    parameter named in ``config.sliced_shapes`` given that shape (its values come from the checkpoint)."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        restructure(self)
        for name, shape in config.sliced_shapes.items():
            path, _, attr = name.rpartition(".")
            module = get_module(self, path)
            like = getattr(module, attr, None)
            like = like if like is not None else module.weight
            _store(module, attr, torch.zeros(shape, dtype=like.dtype, device=like.device))


def register_sliced() -> dict[str, tuple]:
    """Register the sliced types with transformers' ``AutoConfig`` and ``AutoModelForCausalLM`` (once;
    later calls return the same classes): ``{dense model_type: (SlicedConfig, SlicedForCausalLM)}``."""
    if _CLASSES:
        return _CLASSES
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    classes = {}
    for base in sorted(k for k, a in ADAPTERS.items() if a.norms):
        base_config = CONFIG_MAPPING[base]
        base_model = MODEL_FOR_CAUSAL_LM_MAPPING[base_config]
        config_cls = type(f"Sliced{base_config.__name__}", (base_config,),
                          {"model_type": SLICED_PREFIX + base, "__module__": __name__})
        model_cls = type(f"Sliced{base_model.__name__}", (_Sliced, base_model),
                         {"config_class": config_cls, "__module__": __name__})
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)
        classes[base] = (config_cls, model_cls)
    _CLASSES.update(classes)
    return _CLASSES


def __getattr__(name):
    """The registered classes by name (``SlicedLlamaForCausalLM``, ...), so that pickle finds them here."""
    if name == "SLICED_CLASSES":
        return register_sliced()
    if name.startswith("Sliced"):
        for config_cls, model_cls in register_sliced().values():
            for cls in (config_cls, model_cls):
                if cls.__name__ == name:
                    return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _AfterTransformers(importlib.abc.MetaPathFinder):
    """Runs :func:`register_sliced` right after the ``transformers`` package is first imported."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)  # once; the real finders locate the package
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                try:
                    register_sliced()
                except Exception as err:  # never break `import transformers`; save/load register again
                    log.warning("sparselib could not register its sliced model types yet: %s", err)

            spec.loader.exec_module = exec_module
        return spec


def register_when_transformers_loads() -> None:
    """What ``import sparselib`` calls: register the sliced types now if transformers is already
    imported, else as soon as it is (so ``AutoModelForCausalLM.from_pretrained`` can load a sliced
    checkpoint after ``import sparselib``, while ``import sparselib`` stays free of transformers)."""
    if "transformers" in sys.modules:
        register_sliced()
    elif not any(isinstance(f, _AfterTransformers) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTransformers())


def sliced_config(model):
    """The config a sliced ``model`` is saved with: its own config as the registered sliced type, plus
    ``sliced_shapes`` (every parameter whose shape differs from the restructured dense model's)."""
    layers = decoder_layers(model)
    if not isinstance(layers[0], SlicedLayer):
        raise ValueError("this model is not sliced; save a dense model with model.save_pretrained(path)")
    config_cls, model_cls = register_sliced()[model.config.model_type.removeprefix(SLICED_PREFIX)]
    values = {k: v for k, v in model.config.to_dict().items()  # not the attention kernel chosen at load
              if k not in ("model_type", "sliced_shapes") and not k.startswith("_attn_implementation")}
    with torch.device("meta"):  # the restructured dense model's shapes, without allocating weights
        reference = dict(model_cls(config_cls(**values, sliced_shapes={})).named_parameters())
    values["sliced_shapes"] = {name: list(p.shape) for name, p in model.named_parameters()
                               if name not in reference or reference[name].shape != p.shape}
    values["architectures"] = [model_cls.__name__]
    return config_cls(**values)


def write_sliced(model, directory) -> Path:
    """Write a sliced ``model`` into the new directory ``directory`` as a Hugging Face checkpoint:
    config.json (the registered sliced type), model.safetensors, generation_config.json and slicing.json
    (a summary). Not atomic: :func:`save_sliced` and the CLI write into a temporary directory."""
    from safetensors.torch import save_file

    config, directory = sliced_config(model), Path(directory)
    directory.mkdir(parents=True)
    config.save_pretrained(directory)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              directory / "model.safetensors", metadata={"format": "pt"})
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)
    layers = decoder_layers(model)
    info = {"format": FORMAT, "model_type": config.model_type, "hidden_size": config.hidden_size,
            "shortcuts": [[list(l.attn_shortcut.shape), list(l.mlp_shortcut.shape)] for l in layers]}
    (directory / "slicing.json").write_text(json.dumps(info))
    return directory


def save_sliced(model, path, overwrite: bool = False) -> Path:
    """Write a sliced model to the directory ``path`` (see :func:`write_sliced`): written in a temporary
    directory, then moved into place (:func:`sparselib.io.write_atomically`). Read it back with
    :func:`load_sliced` or, after ``import sparselib``, with ``AutoModelForCausalLM.from_pretrained(path)``."""
    path = Path(path)
    sliced_config(model)  # refuses a model that is not sliced, before anything is written
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists; pass overwrite=True or choose a new directory")
    return write_atomically(path, lambda tmp: write_sliced(model, tmp), overwrite=True)


def load_sliced(path, device=None):
    """Load a model written by :func:`save_sliced` (or by ``sparselib prune --method slicegpt``), in
    eval mode. The same as ``AutoModelForCausalLM.from_pretrained(path)`` after ``import sparselib``."""
    from transformers import AutoModelForCausalLM

    from .version import dtype_kwargs

    path = Path(path)
    info = json.loads((path / "slicing.json").read_text()) if (path / "slicing.json").exists() else {}
    if info.get("format") != FORMAT:
        older = " (an older sparselib's format: slice the model again)" if info else ""
        raise ValueError(f"{path} holds no {FORMAT} slicing.json{older}; pass a directory written by save_sliced")
    register_sliced()
    model = AutoModelForCausalLM.from_pretrained(path, **dtype_kwargs("auto"))
    return model.to(device or "cpu").eval()
