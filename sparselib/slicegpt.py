"""SliceGPT (Ashkboos et al., 2024): rotate the residual stream by PCA, then delete its weakest directions.

Invariance: for a parameter-free RMSNorm ``n`` and an orthogonal ``Q``, ``‖xQ‖ = ‖x‖`` so
``n(xQ) = n(x) Q``. Linears that read the stream take ``W Q``, linears that write into it ``Qᵀ W``, and
the model computes the same function in the rotated basis. LayerNorm also subtracts the mean, which
a rotation does not preserve; once the stream is mean-free, LayerNorm *is* RMSNorm (:func:`fuse`).
Slicing: ``Q`` = eigenvectors of ``XᵀX`` of each residual signal, descending; keeping ``d`` columns
keeps the ``d`` strongest directions. Each signal has its own ``Q``, so the residual adds go through
``d × d`` shortcut matrices (:class:`SlicedLayer`).

This follows the reference (microsoft/TransformerCompression), with one default changed: the
reference subtracts each embedding row's mean in every model, which for an RMSNorm model changes the
function (RMSNorm does not remove the mean). Here the embeddings are centred only for LayerNorm models
unless ``center_embeddings=True`` asks for the reference's behaviour.

Saving and loading a sliced model (a Hugging Face checkpoint of a registered sliced type) is
:mod:`sparselib.sliced_checkpoint`; its names are reachable from here too.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import time
import typing
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .adapters import Adapter, adapter_for, decoder_layers, get_module, layer_linears, weight_of
from .calibration import capture_inputs
from .checks import check_batch_size, check_device, check_slicing, check_token_ids, max_positions

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# The two modules a sliced model is made of
# --------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """``x / sqrt(Σx²/D + eps)``, no scale (folded into the next linears). ``D`` stays the *original*
    width after slicing: a sliced ``x`` is normalised as if its deleted coordinates were zero."""

    def __init__(self, D: int, eps: float):
        super().__init__()
        self.D, self.eps = D, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(torch.promote_types(x.dtype, torch.float32))  # at least float32, like Llama's RMSNorm
        return (y * torch.rsqrt(y.pow(2).sum(-1, keepdim=True) / self.D + self.eps)).to(x.dtype)


class SlicedLayer(nn.Module):
    """A pre-norm decoder layer whose two residual adds go through shortcut matrices:

        h   = x S_attn + attention(norm₁(x))      x [.., d_in] → h [.., d_mid]
        out = h S_mlp  + mlp(norm₂(h))            h [.., d_mid] → out [.., d_out]

    ``layer`` is the original Hugging Face layer (its linears, rotated and sliced in place). It answers
    its decoder as the original layer did (:func:`returns_tuple`, :meth:`decoder_output`).
    """

    def __init__(self, layer: nn.Module, adapter: Adapter, S_attn: torch.Tensor, S_mlp: torch.Tensor):
        super().__init__()
        self.layer, self.adapter = layer, adapter
        self.attn_shortcut, self.mlp_shortcut = nn.Parameter(S_attn), nn.Parameter(S_mlp)
        self.returns_tuple = returns_tuple(layer)
        self.attn_kwargs = accepted_kwargs(get_module(layer, adapter.attn_output.rpartition(".")[0]))

    def attend(self, x: torch.Tensor, **kwargs) -> tuple[torch.Tensor, tuple]:
        """``h`` and everything the attention module returned (output, weights[, cache])."""
        attn = get_module(self.layer, self.adapter.attn_output.rpartition(".")[0])
        if self.attn_kwargs is not None:  # an attention that takes no **kwargs gets only its own
            kwargs = {k: v for k, v in kwargs.items() if k in self.attn_kwargs}
        outputs = attn(hidden_states=self.norm(0)(x), **kwargs)
        return x @ self.attn_shortcut + outputs[0], outputs

    def attention(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.attend(x, **kwargs)[0]

    def norm(self, i: int) -> nn.Module:
        return get_module(self.layer, self.adapter.norms[i])

    def mlp(self, h: torch.Tensor) -> torch.Tensor:
        y = self.norm(1)(h)
        for name in self.adapter.mlp:
            y = get_module(self.layer, name)(y)
        return h @ self.mlp_shortcut + y

    def forward(self, hidden_states: torch.Tensor, **kwargs):
        h, attn_outputs = self.attend(hidden_states, **kwargs)
        return self.decoder_output(self.mlp(h), attn_outputs, kwargs)

    def decoder_output(self, out: torch.Tensor, attn_outputs: tuple, kwargs: dict):
        """What the decoder unpacks: the tensor alone, or (as older transformers layers return) the
        tuple ``(out, [attention weights if output_attentions], [cache if use_cache])``."""
        if not self.returns_tuple:
            return out
        extra = (attn_outputs[1],) if kwargs.get("output_attentions") else ()
        cache = (attn_outputs[2],) if kwargs.get("use_cache") and len(attn_outputs) > 2 else ()
        return (out, *extra, *cache)


def returns_tuple(layer: nn.Module) -> bool:
    """Whether ``layer``'s decoder expects a tuple back (transformers < 4.54, and OPT until 5.0) rather
    than the hidden states alone, read from the return annotation of the layer class's ``forward``
    (transformers annotates every decoder layer). The one place that knows this contract."""
    ann = inspect.signature(type(layer).forward).return_annotation
    if not isinstance(ann, str):
        ann = getattr(typing.get_origin(ann) or ann, "__name__", "")
    return ann.lower().startswith("tuple")


def accepted_kwargs(module: nn.Module) -> frozenset | None:
    """The keyword arguments ``module.forward`` accepts; None when it takes ``**kwargs`` (anything).
    A decoder passes its layers arguments (``use_cache``) that some attention modules do not take."""
    params = inspect.signature(module.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


# --------------------------------------------------------------------------------------------
# Step 1, fusion: the same function with parameter-free norms. Weight algebra in float64.
# --------------------------------------------------------------------------------------------
def _store(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Set ``module.<name>`` to ``value`` in the module's dtype; keep its size attributes honest."""
    old = getattr(module, name, None)
    setattr(module, name, nn.Parameter(value.to((old if old is not None else module.weight).dtype)))
    for attr, size in (("in_features", -1), ("out_features", 0), ("embedding_dim", -1)):
        if name == "weight" and hasattr(module, attr):
            setattr(module, attr, value.shape[size])


def rotate_inputs(module: nn.Module, Q: torch.Tensor) -> None:
    """``W ← W Q`` for a linear ``W [out, in]`` or an embedding table ``[vocab, D]``; ``Q [in, d]``."""
    _store(module, "weight", module.weight.double() @ Q)


def rotate_outputs(module: nn.Linear, Q: torch.Tensor) -> None:
    """``W ← Qᵀ W``, ``b ← Qᵀ b`` for a linear writing into the residual stream; ``Q [out, d]``."""
    _store(module, "weight", Q.T @ module.weight.double())
    if module.bias is not None:
        _store(module, "bias", Q.T @ module.bias.double())


def _fold_norm(norm: nn.Module, linears) -> None:
    """``norm(x) = n(x)·γ + β`` feeds ``W``: a bare ``n`` feeding ``W diag(γ)``, bias ``b + Wβ``."""
    gamma, beta = getattr(norm, "weight", None), getattr(norm, "bias", None)
    for lin in linears:
        W = lin.weight.double()
        if beta is not None:
            b = lin.bias.double() if lin.bias is not None else torch.zeros_like(W[:, 0])
            _store(lin, "bias", b + W @ beta.double())
        if gamma is not None:
            _store(lin, "weight", W * gamma.double())


def _parts(root: nn.Module, paths) -> list:
    return [get_module(root, p) for p in paths]


def _replace_norm(root: nn.Module, path: str, D: int) -> None:
    norm = get_module(root, path)
    eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6)))
    parent, _, name = path.rpartition(".")
    setattr(get_module(root, parent) if parent else root, name, RMSNorm(D, eps))


def _tables(model) -> list[nn.Embedding]:
    return [m for m in _parts(model, adapter_for(model).embeddings) if isinstance(m, nn.Embedding)]


def _untie(model) -> nn.Module:
    """Give ``lm_head`` its own weight: the embedding and the head will be rotated differently.
    When they were tied this costs ``vocab × D`` parameters."""
    head = model.get_output_embeddings()
    if head.weight is model.get_input_embeddings().weight:
        head.weight = nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    return head


def restructure(model) -> None:
    """Untie the head, put parameter-free RMSNorms in place of the norms, wrap each layer with
    identity shortcuts. Keeps the function only once the norms are folded: use :func:`fuse`."""
    adapter, D, W = adapter_for(model), model.config.hidden_size, _untie(model).weight
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        for path in adapter.norms:
            _replace_norm(layer, path, D)
        I = torch.eye(D, dtype=W.dtype, device=W.device)
        layers[i] = SlicedLayer(layer, adapter, I, I.clone())
    _replace_norm(model, adapter.final_norm, D)


@torch.no_grad()
def fuse(model, center_embeddings: bool | None = None) -> None:
    """Fold every norm's γ (and β) into the linears that read it; for LayerNorm models also make
    the residual stream mean-free (embeddings and the linears writing into it), so that LayerNorm
    equals RMSNorm. Then :func:`restructure`. The model computes the same function (in place)."""
    adapter, head, layers = adapter_for(model), _untie(model), decoder_layers(model)
    layernorm = isinstance(get_module(layers[0], adapter.norms[0]), nn.LayerNorm)
    center = layernorm if center_embeddings is None else center_embeddings
    for table in _tables(model) if center else []:
        _store(table, "weight", table.weight.double() - table.weight.double().mean(-1, keepdim=True))
    for layer in layers:
        _fold_norm(get_module(layer, adapter.norms[0]), _parts(layer, adapter.attn_inputs))
        _fold_norm(get_module(layer, adapter.norms[1]), _parts(layer, adapter.mlp_inputs))
        for lin in _parts(layer, (adapter.attn_output, adapter.mlp_output)) if layernorm else []:
            W = lin.weight.double()  # subtract the column mean: outputs become mean-free
            _store(lin, "weight", W - W.mean(0, keepdim=True))
            if lin.bias is not None:
                _store(lin, "bias", lin.bias.double() - lin.bias.double().mean())
    _fold_norm(get_module(model, adapter.final_norm), [head])
    restructure(model)


# --------------------------------------------------------------------------------------------
# PCA, and the layer-by-layer rotate-and-slice
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def pca(signals: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending, undamped) and eigenvectors ``Q`` (columns) of ``Σ XᵀX``, in float64.
    ``signals``: tensors ``[..., D]``; every position counts (calibration windows have no padding)."""
    H = 0
    for X in signals:
        X = X.reshape(-1, X.shape[-1]).double()
        H = H + X.T @ X
    damp = 0.01 * H.diagonal().mean()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a D×D eigh is sync-heavy: on a busy 2-core CPU, 2 threads took 0.2-12 s
    try:                      # where 1 thread takes 0.07 s
        eig, Q = torch.linalg.eigh(H + damp * torch.eye(H.shape[0], dtype=H.dtype, device=H.device))
    finally:
        torch.set_num_threads(threads)
    order = torch.argsort(eig, descending=True)
    return eig[order] - damp, Q[:, order]


@dataclass
class SliceRecord:
    """One decoder-layer linear: its ``W [out, in]`` shape before and after, and the fraction deleted."""

    layer: int
    name: str
    shape_before: list[int]
    shape: list[int]
    sparsity: float


@dataclass
class SliceReport:
    """What :func:`slice_model` did. ``spectra[name]``: eigenvalues of each signal it rotated
    ("embeddings", "layer 3 mid", "layer 3 out", ...), descending. ``records``: one per decoder-layer
    linear, like :class:`sparselib.PruneReport`'s."""

    sparsity: float
    hidden_size: int  # D
    dim: int          # d, the kept width of the residual stream
    params_before: int
    params_after: int
    seconds: float = 0.0
    spectra: dict[str, torch.Tensor] = field(default_factory=dict)
    records: list[SliceRecord] = field(default_factory=list)

    def kept_energy(self, name: str) -> float:
        """Fraction of the signal's energy Σλ in its first ``dim`` directions."""
        eig = self.spectra[name].clamp_min(0)
        return float(eig[: self.dim].sum() / eig.sum())

    def layer_sparsity(self) -> dict[int, float]:
        """Per decoder layer: the fraction of its linears' weights that slicing deleted."""
        sizes: dict[int, list] = {}
        for r in self.records:
            sizes.setdefault(r.layer, []).append((r.sparsity, r.shape_before[0] * r.shape_before[1]))
        return {i: sum(s * n for s, n in v) / sum(n for _, n in v) for i, v in sizes.items()}

    def to_dict(self) -> dict:
        """JSON-ready: ``slicing`` {hidden_size, dim}, ``layers`` [{layer, sparsity}], ``linears``
        [{layer, name, shape_before, shape, sparsity}] (the layout of the CLI's report.json), plus
        the sparsity asked for, the parameter counts and the seconds."""
        return {"method": "slicegpt", "sparsity": self.sparsity,
                "slicing": {"hidden_size": self.hidden_size, "dim": self.dim},
                "params_before": self.params_before, "params_after": self.params_after,
                "seconds": self.seconds,
                "layers": [{"layer": i, "sparsity": s} for i, s in self.layer_sparsity().items()],
                "linears": [dict(r.__dict__) for r in self.records]}

    def __str__(self) -> str:
        return (f"SliceGPT {self.sparsity:.0%}: residual width {self.hidden_size} -> {self.dim}; "
                f"parameters {self.params_before:,} -> {self.params_after:,}; {self.seconds:.1f} s")


def _linear_shapes(model) -> dict[tuple[int, str], list[int]]:
    """``{(layer, linear name): [out, in]}`` of the decoder-layer linears (inside SlicedLayer too)."""
    shapes = {}
    for i, layer in enumerate(decoder_layers(model)):
        inner = layer.layer if isinstance(layer, SlicedLayer) else layer
        shapes.update({(i, name): list(weight_of(m).shape) for name, m in layer_linears(inner).items()})
    return shapes


def _records(before: dict, after: dict) -> list[SliceRecord]:
    return [SliceRecord(i, name, before[i, name], shape,
                        1 - (shape[0] * shape[1]) / (before[i, name][0] * before[i, name][1]))
            for (i, name), shape in after.items()]


def kept_dim(D: int, sparsity: float) -> int:
    """The kept width: ``int((1 - s)·D)`` rounded down to a multiple of 8 (``D`` itself when s = 0)."""
    return D if sparsity == 0 else int((1 - sparsity) * D) // 8 * 8


def _validate(model, calib, sparsity, batch_size, device) -> int:
    """Every check before the first change (:mod:`sparselib.checks`); returns the kept width ``d``."""
    sparsity = check_slicing(model.config, sparsity)  # the architecture, the embedding width, d >= 8
    check_batch_size(batch_size)
    check_device(device)
    if isinstance(decoder_layers(model)[0], SlicedLayer):
        raise ValueError("this model is already sliced; slice the dense model once (reload it, "
                         "e.g. sparselib.load_model()), with the sparsity you want")
    check_token_ids(calib, model.config.vocab_size, max_positions(model.config))
    return kept_dim(model.config.hidden_size, sparsity)


@torch.no_grad()
# Over 60 lines on purpose: fusion, the layer-0 PCA and the per-layer rotate-and-slice steps read in
# order, as in the paper's Section 3; split up, the bases Q and Q_mid would travel between functions.
def slice_model(model, calib: torch.Tensor, sparsity: float = 0.25, batch_size: int = 8, *,
                slice_head: bool = False, device=None, center_embeddings: bool | None = None,
                progress: bool = True) -> SliceReport:
    """Rotate and slice ``model`` in place; return a :class:`SliceReport`.

    sparsity:   fraction of the hidden size ``D`` to delete; the kept width ``d`` is
                :func:`kept_dim`. ``sparsity=0`` rotates without slicing (same function).
    calib:      LongTensor [nsamples, seqlen] (``sparselib.calibration_data``).
    slice_head: also slice the last layer's output and ``lm_head`` (the reference's default: no).
    center_embeddings: subtract each embedding row's mean. Default (None): only for LayerNorm models,
                where it is needed and keeps the function; True reproduces the reference, which also
                does it for RMSNorm models (a small change of function there).
    device:     where each layer is processed (default: where the model is). With "cuda" and a model on
                CPU, one decoder layer at a time is moved to the GPU with its activations, as in
                :func:`sparselib.prune`.
    Bad input raises ValueError/TypeError before anything changes.
    """
    d = _validate(model, calib, sparsity, batch_size, device)
    sparsity = float(sparsity)  # (a NumPy scalar passes the check)
    if center_embeddings not in (None, True, False):
        raise TypeError(f"center_embeddings must be None, True or False, not {center_embeddings!r}")
    if not isinstance(slice_head, bool):
        raise TypeError(f"slice_head must be True or False, not {slice_head!r}")
    model.eval()  # no dropout while the signals are measured
    adapter, D, dtype = adapter_for(model), model.config.hidden_size, model.get_output_embeddings().weight.dtype
    report = SliceReport(sparsity, D, d, sum(p.numel() for p in model.parameters()), 0)
    shapes = _linear_shapes(model)
    start = time.perf_counter()
    fuse(model, center_embeddings)                                     # 1. fusion
    home = model.get_output_embeddings().weight.device
    device = torch.device(device) if device is not None else home
    batches = capture_inputs(model, calib, batch_size, device)         # 2. inputs of layer 0
    eig, Q = pca([x for x, _ in batches])
    report.spectra["embeddings"] = eig
    for table in _tables(model):
        rotate_inputs(table, Q[:, :d].to(table.weight.device))
    batches = [(x @ Q[:, :d].to(dtype), kw) for x, kw in batches]
    layers = decoder_layers(model)
    for i, layer in enumerate(tqdm(layers, desc=f"SliceGPT {sparsity:.0%}", disable=not progress)):
        layer.to(device)                                               # one layer at a time on `device`
        d_out = D if i == len(layers) - 1 and not slice_head else d     # 3. per layer
        for lin in _parts(layer.layer, adapter.attn_inputs):           # attention reads x in basis Q
            rotate_inputs(lin, Q[:, :d])
        layer.attn_shortcut.data = Q[:, :d].T.to(dtype)                 # x back to the unrotated frame
        mids = [layer.attention(x, **kw) for x, kw in batches]          # the second norm's input
        eig, Q_mid = pca(mids)
        report.spectra[f"layer {i} mid"] = eig
        rotate_outputs(get_module(layer.layer, adapter.attn_output), Q_mid[:, :d])
        for lin in _parts(layer.layer, adapter.mlp_inputs):
            rotate_inputs(lin, Q_mid[:, :d])
        layer.attn_shortcut.data = (Q[:, :d].T @ Q_mid[:, :d]).to(dtype)
        layer.mlp_shortcut.data = Q_mid[:, :d].T.to(dtype)
        outs = [layer.mlp(h @ Q_mid[:, :d].to(dtype)) for h in mids]  # = the rotated layer's mids
        eig, Q = pca(outs)
        report.spectra[f"layer {i} out"] = eig
        rotate_outputs(get_module(layer.layer, adapter.mlp_output), Q[:, :d_out])
        layer.mlp_shortcut.data = (Q_mid[:, :d].T @ Q[:, :d_out]).to(dtype)
        batches = [(y @ Q[:, :d_out].to(dtype), kw) for y, (_, kw) in zip(outs, batches)]
        layer.to(home)
    rotate_inputs(model.get_output_embeddings(), Q[:, :d_out].to(home))  # the head reads the last basis
    report.seconds = time.perf_counter() - start
    report.params_after = sum(p.numel() for p in model.parameters())
    report.records = _records(shapes, _linear_shapes(model))
    log.info("%s", report)
    return report


def matmul_weights(model) -> int:
    """Weights each token is multiplied by in a forward pass: every ``nn.Linear`` plus the
    shortcut matrices (embedding lookups are free). Forward FLOPs ≈ 2 × this per token, plus the
    attention scores, which slicing does not change."""
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return total + sum(p.numel() for n, p in model.named_parameters() if n.endswith("_shortcut"))


# The sliced checkpoint format lives in sparselib.sliced_checkpoint; its names stay reachable here.
_CHECKPOINT = ("FORMAT", "SLICED_CLASSES", "load_sliced", "register_sliced", "save_sliced", "sliced_config",
               "write_sliced")


def __getattr__(name):
    if name in _CHECKPOINT:
        return getattr(importlib.import_module(".sliced_checkpoint", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
