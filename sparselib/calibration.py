"""Calibration: capture each decoder layer's inputs, and the statistics its linears need.

The protocol of the reference implementations, written once for every method:
1. run the model on the calibration batch up to decoder layer 0 and keep *all* the arguments the
   layer receives (hidden states and every keyword: attention mask, position ids, rotary
   ``position_embeddings``, ...);
2. for each layer: hook its linears, run the *dense* layer on all samples to accumulate statistics;
   hand the layer to the method to prune; run the *pruned* layer to make the next layer's inputs.

With ``device`` set (e.g. "cuda" while the model stays on CPU), one layer and its activations at a
time live on that device: the same code path streams large models through a small accelerator.
"""
from __future__ import annotations

import torch
from torch import nn

from .models import adapter_for, decoder_layers, get_module, layer_linears, model_device


class LinearStats:
    """Running statistics of one linear's inputs ``X [tokens, in]``.

    ``H``:     running mean over calibration *samples* of ``2 XᵀX`` (SparseGPT's reference scaling;
               the scale does not matter because damping is relative to ``mean(diag H)``). Gathered
               only with ``hessian=True``.
    ``norms``: ``‖X_j‖₂`` per input channel (Wanda): a float64 running sum of squares without ``H``;
               with ``H`` it is read off its diagonal (``Σ_t x_tj² = diag(H)_j · nsamples / 2``).
    """

    def __init__(self, in_features: int, device, hessian: bool):
        self.sq = None if hessian else torch.zeros(in_features, dtype=torch.float64, device=device)
        self._H = torch.zeros(in_features, in_features, device=device) if hessian else None
        self._edges = _gram_edges(in_features)
        self._mirrored = True
        self.nsamples = 0
        self.ntokens = 0

    def add(self, X: torch.Tensor, nsamples: int) -> None:
        X = X.reshape(-1, X.shape[-1]).float()
        self.ntokens += X.shape[0]
        if self._H is None:
            self.sq += X.pow(2).sum(0, dtype=torch.float64)
        else:
            total = self.nsamples + nsamples  # H <- H · n/total + 2XᵀX/total: the running mean
            _add_gram_upper(self._H, X, self._edges, beta=self.nsamples / total, alpha=2.0 / total)
            self._mirrored = False
        self.nsamples += nsamples

    @property
    def H(self) -> torch.Tensor | None:
        if self._H is not None and not self._mirrored:  # fill the lower blocks from the upper ones
            e = self._edges
            for a in range(len(e) - 2):
                self._H[e[a + 1]:, e[a]:e[a + 1]] = self._H[e[a]:e[a + 1], e[a + 1]:].t()
            self._mirrored = True
        return self._H

    @property
    def norms(self) -> torch.Tensor:
        """``‖X_j‖₂`` per input channel (float32)."""
        if self.sq is not None:
            return self.sq.sqrt().float()
        return (torch.diagonal(self.H).double() * (self.nsamples / 2)).sqrt().float()


def _gram_edges(d: int, width: int = 256) -> list[int]:
    """Column blocks of about ``width`` for :func:`_add_gram_upper`."""
    k = max(1, -(-d // width))
    return [round(i * d / k) for i in range(k + 1)]


def _add_gram_upper(H: torch.Tensor, X: torch.Tensor, edges: list[int], beta: float = 1.0,
                    alpha: float = 1.0) -> None:
    """``H ← β·H + α·XᵀX`` on the blocks on and above the diagonal only: ``XᵀX`` is symmetric, so
    the blocks below are copies (filled in by ``LinearStats.H``). About 40 % fewer flops than one
    GEMM for the widths of small LLMs; this product is most of the cost of SparseGPT's statistics."""
    for a, b in zip(edges, edges[1:]):
        H[a:b, a:].addmm_(X[:, a:b].t(), X[:, a:], beta=beta, alpha=alpha)


class _Stop(Exception):
    pass


def _to(obj, device):
    """Move every tensor inside ``obj`` (tuples, lists, dicts) to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def capture_inputs(model: nn.Module, calib: torch.Tensor, batch_size: int, device) -> list:
    """Inputs of decoder layer 0, per minibatch of ``calib``: a list of ``(hidden, kwargs)``."""
    adapter = adapter_for(model)
    layer0 = decoder_layers(model)[0]
    captured = []

    def catch(module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden, {k: v for k, v in kwargs.items()}))
        raise _Stop

    handle = layer0.register_forward_pre_hook(catch, with_kwargs=True)
    moved = [m for p in adapter.embeddings if (m := get_module(model, p)) is not None]
    homes = [next(iter(m.parameters()), torch.empty(0)).device for m in moved]
    try:
        for m in moved:
            m.to(device)
        for start in range(0, calib.shape[0], batch_size):
            try:
                model(input_ids=calib[start:start + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
        for m, home in zip(moved, homes):
            m.to(home)
    return captured


def run_layer(layer: nn.Module, batches: list) -> list:
    """The layer's outputs for every captured ``(hidden, kwargs)`` minibatch."""
    return [(_output(layer(hidden, **kwargs)), kwargs) for hidden, kwargs in batches]


@torch.no_grad()
def layerwise(model: nn.Module, calib: torch.Tensor, hessian: bool = False, batch_size: int = 8,
              device=None, only=None):
    """Walk the decoder layers with their calibration statistics.

    Yields ``(index, layer, linears, stats)`` with ``stats[name]`` a :class:`LinearStats` gathered by
    running the dense layer. The caller prunes ``linears`` in place; when it asks for the next layer,
    the *pruned* layer is run to produce that layer's inputs. With ``only`` (a set of indices), the
    other layers are run once to feed the next one and yielded with empty ``stats``.
    """
    device = torch.device(device) if device is not None else model_device(model)
    batches = [(h.to(device), _to(kw, device)) for h, kw in capture_inputs(model, calib, batch_size, device)]
    for index, layer in enumerate(decoder_layers(model)):
        home = model_device(layer)
        layer.to(device)
        linears = layer_linears(layer)
        if only is not None and index not in only:  # left as it is: one pass feeds the next layer
            yield index, layer, linears, {}
            batches = run_layer(layer, batches)
            layer.to(home)
            continue
        stats: dict[str, LinearStats] = {}
        readers: dict[int, tuple] = {}  # id(input tensor) -> (tensor, stats) within one minibatch

        def hook(module, inputs, output, name):
            # Linears that read the same tensor (q/k/v, gate/up) share one LinearStats: the
            # statistics, above all H, are computed once per distinct input.
            X = inputs[0]
            seen = readers.get(id(X))
            if seen is not None and seen[0] is X:
                stats.setdefault(name, seen[1])
                return
            if name not in stats:
                stats[name] = LinearStats(X.shape[-1], device, hessian)
            stats[name].add(X, X.shape[0])
            readers[id(X)] = (X, stats[name])

        handles = [m.register_forward_hook(lambda mod, i, o, name=name: hook(mod, i, o, name))
                   for name, m in linears.items()]
        try:
            for hidden, kwargs in batches:  # dense pass: statistics only
                readers.clear()
                layer(hidden, **kwargs)
        finally:
            for h in handles:
                h.remove()
            readers.clear()
        yield index, layer, linears, stats
        batches = run_layer(layer, batches)  # pruned pass: the next layer's inputs
        layer.to(home)
        del stats


@torch.no_grad()
def module_inputs(model: nn.Module, module: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The inputs ``X [tokens, in]`` that ``module`` (a linear inside ``model``) sees while the model
    reads ``ids`` — for studying one layer in isolation."""
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(i[0].reshape(-1, i[0].shape[-1])))
    try:
        model(input_ids=ids.to(model_device(model)), use_cache=False)
    finally:
        handle.remove()
    if not seen:
        raise ValueError("the module was not called during the forward pass; is it part of this model?")
    return torch.cat(seen)
