"""The driver: prune every decoder-layer linear of a causal LM with one method, layer by layer.

    report = sparselib.prune(model, "wanda", "2:4", calib)

Methods are rows of one table (:data:`METHODS`): a pure function on one weight matrix and the
statistics the calibration pipeline gathered for it. Embeddings and ``lm_head`` are never pruned.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .calibration import LinearStats, layerwise
from .checks import (check_batch_size, check_choice, check_device, check_int, check_positive, check_token_ids,
                     check_weights, max_positions)
from .masks import Pattern, mask_for, parse_sparsity
from .models import adapter_for, decoder_layers, layer_linears, model_device, set_weight, weight_of
from .owl import resolve_layer_sparsity
from .quantize import (QUANT_ATTR, QuantRecord, QuantReport, QuantSpec, check_group_size, make_spec, rtn,
                       weight_error)
from .scores import magnitude_scores, wanda_scores
from .sparsegpt import _prune_shared_prechecked, column_sweep

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Methods: W [out, in], the linear's calibration statistics, the pattern -> pruned W
# --------------------------------------------------------------------------------------------
def _magnitude(W: torch.Tensor, stats: LinearStats | None, pattern: Pattern, per: str = "matrix"):
    return W * mask_for(magnitude_scores(W), pattern, per=per)


def _wanda(W: torch.Tensor, stats: LinearStats, pattern: Pattern, per: str = "row"):
    return W * mask_for(wanda_scores(W, stats.norms), pattern, per=per)


def _sparsegpt(Ws: list[torch.Tensor], stats: LinearStats, pattern: Pattern, blocksize: int = 128,
               percdamp: float = 0.01, quant: QuantSpec | None = None):
    # takes every linear that reads the same input at once: they share H (see sparsegpt_prune_shared);
    # with quant, each kept weight is rounded in the same sweep (the paper's joint mode)
    nm = dict(n=pattern.n, m=pattern.m) if pattern.is_nm else dict(sparsity=pattern.sparsity)
    # prune() checked every weight before the first layer, and LinearStats.H is symmetric by construction
    return [(W, state) for W, _, state in _prune_shared_prechecked(Ws, stats.H, blocksize=blocksize,
                                                                   percdamp=percdamp, quant=quant, **nm)]


@dataclass(frozen=True)
class Method:
    fn: object
    calibration: bool  # needs calibration data
    hessian: bool      # needs H = 2XᵀX (not just the per-channel norms)
    options: tuple[str, ...]
    shared: bool = False  # fn takes a list of the linears that read one input, returns [(W, QuantState)]


METHODS: dict[str, Method] = {
    "magnitude": Method(_magnitude, calibration=False, hessian=False, options=("per",)),
    "wanda": Method(_wanda, calibration=True, hessian=False, options=("per",)),
    "sparsegpt": Method(_sparsegpt, calibration=True, hessian=True, options=("blocksize", "percdamp"),
                        shared=True),
}


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------
@dataclass
class LinearRecord:
    layer: int
    name: str
    shape: tuple[int, int]
    sparsity: float
    seconds: float


@dataclass
class PruneReport:
    method: str
    pattern: str
    options: dict
    records: list[LinearRecord] = field(default_factory=list)
    seconds: float = 0.0
    layer_targets: list[float] | None = None  # per-layer sparsity asked for (layer_sparsity=)

    @property
    def sparsity(self) -> float:
        """Fraction of zeros over all pruned linears (weighted by size)."""
        total = sum(r.shape[0] * r.shape[1] for r in self.records)
        zeros = sum(r.sparsity * r.shape[0] * r.shape[1] for r in self.records)
        return zeros / total if total else 0.0

    def layer_sparsity(self) -> dict[int, float]:
        out: dict[int, list] = {}
        for r in self.records:
            out.setdefault(r.layer, []).append(r)
        return {k: sum(r.sparsity * r.shape[0] * r.shape[1] for r in v) / sum(r.shape[0] * r.shape[1] for r in v)
                for k, v in out.items()}

    def to_dict(self) -> dict:
        return {"method": self.method, "pattern": self.pattern, "options": self.options,
                "sparsity": self.sparsity, "seconds": self.seconds, "layer_targets": self.layer_targets,
                "linears": [r.__dict__ for r in self.records]}

    def __str__(self) -> str:
        lines = [f"{self.method} {self.pattern}: {len(self.records)} linears, "
                 f"{self.sparsity:.2%} zeros, {self.seconds:.1f} s",
                 f"{'layer':>5}  {'linear':<22} {'shape':>12}  {'sparsity':>8}  {'time s':>7}"]
        for r in self.records:
            lines.append(f"{r.layer:>5}  {r.name:<22} {r.shape[0]:>5}x{r.shape[1]:<6}  "
                         f"{r.sparsity:>8.2%}  {r.seconds:>7.3f}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Validation: everything is checked before the first weight changes
# --------------------------------------------------------------------------------------------
def _validate(model, method, pattern, calib, options, batch_size, device, quant=None) -> None:
    """Every check, through :mod:`sparselib.checks`, before the first weight changes."""
    check_choice(method, METHODS, "method")
    check_batch_size(batch_size)
    check_device(device)
    if quant is not None:
        if method != "sparsegpt":
            raise ValueError(f"wbits= (prune and quantize in one pass) is SparseGPT's joint mode; for {method}, "
                             f"prune first, then sparselib.quantize(model, bits, calib=calib)")
        _check_group_size_everywhere(model, quant)
    spec = METHODS[method]
    unknown = set(options) - set(spec.options)
    if unknown:
        raise TypeError(f"{method} takes no option(s) {', '.join(sorted(unknown))}; "
                        f"its options are: {', '.join(spec.options) or 'none'}")
    if "per" in options:
        check_choice(options["per"], ("row", "matrix"), "per")
    adapter_for(model)  # the architecture is in the table
    check_weights(model, pattern)
    if spec.calibration:
        check_token_ids(calib, getattr(model.config, "vocab_size", None), max_positions(model.config))


def prune(model: nn.Module, method: str, sparsity, calib: torch.Tensor | None = None, *,
          layers=None, layer_sparsity=None, batch_size: int = 8, device=None, progress: bool = True,
          wbits: int | None = None, group_size: int | None = 128, symmetric: bool = True,
          **options) -> PruneReport:
    """Prune ``model`` in place and return a :class:`PruneReport`.

    method:   "magnitude", "wanda" or "sparsegpt".
    sparsity: a fraction (0.5) or an N:M pattern string ("2:4", "4:8").
    calib:    LongTensor [nsamples, seqlen] (``sparselib.calibration_data``); not needed for magnitude.
    device:   where each layer is processed (default: where the model is). With "cuda" and a model on
              CPU, one decoder layer at a time is moved to the GPU with its activations.
    layers:   indices of the decoder layers to prune (default: all); the others stay dense.
    layer_sparsity: one fraction per decoder layer (size-weighted mean = ``sparsity``), or "owl" for
              OWL's outlier-weighted fractions (:mod:`sparselib.owl`); unstructured only.
    wbits:    SparseGPT only: also quantize every kept weight to ``wbits`` bits in the same sweep (the
              paper's joint mode), with ``group_size`` inputs per grid (None: one per row) and
              ``symmetric`` grids, as :func:`sparselib.quantize` does.
    options:  the method's own: magnitude/wanda ``per="matrix"|"row"``; sparsegpt ``blocksize``,
              ``percdamp``.
    Bad input raises ValueError/TypeError before any weight changes. If pruning fails part-way
    (calibration activations that overflow, out of memory, Ctrl-C), every weight is put back as it
    was before the error is raised: the model is pruned entirely or not at all.
    """
    pattern = parse_sparsity(sparsity)
    quant = None if wbits is None else make_spec(wbits, group_size, symmetric, weight_dtype=_linear_dtype(model))
    _validate(model, method, pattern, calib, options, batch_size, device, quant)
    selected = _selected(layers, len(decoder_layers(model)))
    per_layer = None if layer_sparsity is None else resolve_layer_sparsity(
        model, method, pattern, calib, layer_sparsity, layers, batch_size=batch_size, device=device)
    spec = METHODS[method]
    report = PruneReport(method, str(pattern), dict(options), layer_targets=per_layer)
    if quant is not None:
        report.options.update(wbits=quant.bits, group_size=quant.group_size, symmetric=quant.symmetric)
        options = dict(options, quant=quant)
    start = time.perf_counter()
    originals = _Originals(model)
    try:
        for index, linears, stats in _walk(model, calib, spec.calibration, spec.hessian, spec.shared, selected,
                                           batch_size, device, progress, f"{method} {pattern}"):
            layer_pattern = pattern if per_layer is None else parse_sparsity(per_layer[index])
            report.records += _prune_group(spec, index, linears, stats, layer_pattern, device, options, originals)
    except BaseException:
        originals.put_back()
        raise
    report.seconds = time.perf_counter() - start
    log.info("%s %s: %.2f%% zeros in %.1f s", method, pattern, 100 * report.sparsity, report.seconds)
    return report


def _walk(model, calib, calibration: bool, hessian: bool, shared: bool, selected: set[int], batch_size,
          device, progress: bool, desc: str):
    """The one layer-by-layer walk of every method (pruning and quantization): yields
    ``(layer index, {name: linear} of one group, the group's statistics or None)`` for the selected
    layers. A group is one linear, or with ``shared`` all linears that read one input (q/k/v, gate/up)."""
    layers = decoder_layers(model)
    if calibration:
        walk = layerwise(model, calib, hessian=hessian, batch_size=batch_size, device=device, only=selected)
    else:
        walk = ((i, layer, layer_linears(layer), {}) for i, layer in enumerate(layers))
    for index, layer, linears, stats in tqdm(walk, total=len(layers), desc=desc, disable=not progress):
        if index not in selected:
            continue
        for names in _groups(linears, stats, shared):
            _check_finite(stats.get(names[0]), index, names, model)
            yield index, {n: linears[n] for n in names}, stats.get(names[0])


class _Originals:
    """Every decoder-layer weight as it was before pruning, to put back if pruning fails part-way.
    No copies: a pruned weight is a fresh tensor (``set_weight(adopt=True)``), so holding the old one
    is enough; a weight that would be overwritten in place gets fresh memory first (:meth:`keep`)."""

    def __init__(self, model: nn.Module):
        self.layers = [(layer, model_device(layer)) for layer in decoder_layers(model)]
        self.weights = {m: m.weight.data for layer, _ in self.layers for m in layer_linears(layer).values()}
        self.grids = {m: getattr(m, QUANT_ATTR, None) for m in self.weights}  # a quantized linear's grid

    def keep(self, module: nn.Module) -> None:
        """Call before writing ``module``'s new weight."""
        if module.weight.data_ptr() == self.weights[module].data_ptr():  # still the original's memory
            module.weight.data = torch.empty_like(module.weight.data)

    def put_back(self) -> None:
        for layer, home in self.layers:
            layer.to(home)  # a layer that was visiting `device` when the error came
        for module, W in self.weights.items():
            module.weight.data = W
            remember_grid(module, self.grids[module])


def _check_finite(stats: LinearStats | None, index: int, names: list[str], model: nn.Module) -> None:
    """The calibration statistics of a linear are finite (float16 activations can overflow)."""
    if stats is not None and not torch.isfinite(stats.norms).all():
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        raise ValueError(f"the calibration activations reaching layer {index} {names[0]} are not finite "
                         f"(they overflow in {dtype}?); nothing was pruned. Load the model in float32 or "
                         f"bfloat16: sparselib.load_model(name, dtype=torch.float32)")


def _selected(layers, count: int) -> set[int]:
    """The indices of the decoder layers to prune (all when ``layers`` is None), checked."""
    if layers is None:
        return set(range(count))
    selected = set(layers)
    if not selected or not all(isinstance(i, int) and 0 <= i < count for i in selected):
        raise ValueError(f"layers must be indices in 0..{count - 1}, got {sorted(layers, key=str)}")
    return selected


def _prune_group(spec: Method, index: int, linears: dict, stats, pattern: Pattern, device, options: dict,
                 originals: _Originals):
    """Prune the linears of one group (one linear, or all that share ``stats`` for a shared method)
    and write their new weights back; one :class:`LinearRecord` each."""
    t = time.perf_counter()
    Ws = [weight_of(module) for module in linears.values()]
    if device is not None:
        Ws = [W.to(device) for W in Ws]
    new = spec.fn(Ws, stats, pattern, **options) if spec.shared else [(spec.fn(Ws[0], stats, pattern, **options), None)]
    seconds = (time.perf_counter() - t) / sum(W.numel() for W in Ws)  # shared time, by size
    records = []
    for (name, module), W, (W_new, state) in zip(linears.items(), Ws, new):
        originals.keep(module)
        set_weight(module, W_new, adopt=True)  # every method returns a fresh tensor
        remember_grid(module, state)
        zeros = (weight_of(module) == 0).sum().item() / W.numel()
        records.append(LinearRecord(index, name, tuple(W.shape), zeros, seconds * W.numel()))
    return records


def _groups(linears: dict, stats: dict, shared: bool) -> list[list[str]]:
    """The linears' names, grouped by the statistics they share (q/k/v, gate/up) when ``shared``,
    else one by one; in the layer's order."""
    if not shared:
        return [[name] for name in linears]
    groups: dict[int, list[str]] = {}
    for name in linears:
        groups.setdefault(id(stats[name]), []).append(name)
    return list(groups.values())


def model_sparsity(model: nn.Module) -> float:
    """Fraction of zeros over all decoder-layer linears of ``model``."""
    zeros = total = 0
    for layer in decoder_layers(model):
        for module in layer_linears(layer).values():
            W = weight_of(module)
            zeros += (W == 0).sum().item()
            total += W.numel()
    return zeros / total if total else math.nan


# --------------------------------------------------------------------------------------------
# Quantization (sparselib.quantize): the same walk, rounding instead of pruning
# --------------------------------------------------------------------------------------------
def remember_grid(module: nn.Module, state) -> None:
    """Keep a quantized linear's grid on the module (for exporters); forget a stale one."""
    if state is not None:
        setattr(module, QUANT_ATTR, state)
    elif hasattr(module, QUANT_ATTR):
        delattr(module, QUANT_ATTR)  # new weights: the old grid no longer describes them


def _linear_dtype(model) -> torch.dtype:
    adapter_for(model)
    for layer in decoder_layers(model):
        for module in layer_linears(layer).values():
            return weight_of(module).dtype
    return torch.float32


def _check_group_size_everywhere(model, quant: QuantSpec) -> None:
    for i, layer in enumerate(decoder_layers(model)):
        for name, module in layer_linears(layer).items():
            check_group_size(weight_of(module).shape[1], quant, f"layer {i} {name}")


def quantize_model(model, *, bits, group_size, symmetric, method, calib, act_order, static_groups, scale_dtype,
                   blocksize, percdamp, layers, batch_size, device, progress) -> QuantReport:
    """:func:`sparselib.quantize` (its docstring): checks first, then the layer walk."""
    check_choice(method, ("rtn", "gptq"), "method", " (quantization: 'rtn' needs no data, 'gptq' needs calib)")
    quant = make_spec(bits, group_size, symmetric, scale_dtype, act_order, static_groups,
                      weight_dtype=_linear_dtype(model))
    if method == "rtn" and (act_order or static_groups):
        raise ValueError("act_order and static_groups are GPTQ options; RTN rounds each weight on its own")
    _check_group_size_everywhere(model, quant)
    check_weights(model, None)
    check_batch_size(batch_size)
    check_device(device)
    if method == "gptq":
        if calib is None:
            raise ValueError("method='gptq' needs calib: sparselib.calibration_data(tokenizer)")
        check_token_ids(calib, getattr(model.config, "vocab_size", None), max_positions(model.config))
        check_int(blocksize, "blocksize", 1)
        check_positive(percdamp, "percdamp")
    selected = _selected(layers, len(decoder_layers(model)))
    report = QuantReport(method, quant)
    start = time.perf_counter()
    gptq = method == "gptq"
    originals = _Originals(model)
    try:
        for index, linears, stats in _walk(model, calib, gptq, gptq, gptq, selected, batch_size, device,
                                           progress, f"{method} {quant}"):
            t = time.perf_counter()
            Ws = [weight_of(m) if device is None else weight_of(m).to(device) for m in linears.values()]
            if gptq:  # zeros stay zeros: a pruned model keeps its pattern
                new = [(W, s) for W, _, s in column_sweep(Ws, stats.H, blocksize=blocksize, percdamp=percdamp,
                                                          quant=quant, keep=[W != 0 for W in Ws])]
            else:
                new = [rtn(W, quant) for W in Ws]
            seconds = (time.perf_counter() - t) / sum(W.numel() for W in Ws)
            for (name, module), W, (W_new, state) in zip(linears.items(), Ws, new):
                error = weight_error(W, W_new)
                originals.keep(module)
                set_weight(module, W_new.to(W.dtype), adopt=True)
                remember_grid(module, state)
                report.records.append(QuantRecord(index, name, tuple(W.shape), error, seconds * W.numel()))
    except BaseException:
        originals.put_back()
        raise
    report.seconds = time.perf_counter() - start
    log.info("%s", report)
    return report
