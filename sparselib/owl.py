"""OWL: Outlier Weighed Layerwise sparsity (Yin et al., 2024).

Uniform pruning gives every decoder layer the same sparsity ``S``. OWL gives a layer fewer zeros the
more *outliers* it holds, where an outlier is a weight whose Wanda score ``|W_ij|·‖X_j‖₂`` is more
than ``M`` times the mean score of its layer (all the layer's linears together; paper: ``M = 5``).

    D_l = share of layer l's Wanda scores above M · mean(layer l's scores)      (outlier ratio)
    z_l = D_l − Σ_k w_k D_k                      centred on the parameter-weighted mean (w_k ∝ size)
    S_l = S − λ · z_l / max_k |z_k|              so S_l ∈ [S − λ, S + λ] and Σ_l w_l S_l = S

The paper states the rule as "S_l ∈ [S − λ, S + λ], average S, lower sparsity for more outliers";
that is ``rule="paper"`` above. The authors' code (``lib/prune_all.py``, ``prune_wanda_outlier``)
min-max normalises ``D`` to ``[0, 2λ]`` and subtracts its *unweighted* mean: the span is 2λ but a
layer can sit up to 2λ from ``S`` when the ratios are skewed; that is ``rule="code"``. For a model
whose layers all have the same size (Llama, SmolLM2) the two means coincide.

Pure functions on tensors and lists here; :func:`layer_outlier_ratios` walks the model with the one
calibration pipeline (:func:`sparselib.calibration.layerwise`), pruning nothing (a dense pass).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Set as AbstractSet
from numbers import Real

import torch
from torch import nn

from .calibration import layerwise
from .checks import check_token_ids, max_positions
from .models import decoder_layers, layer_linears, weight_of
from .scores import wanda_scores

#: The paper's outlier threshold (a score above M × the layer's mean score is an outlier).
OWL_M = 5.0
#: The paper's bound on how far a layer's sparsity may move from the target.
OWL_LAMBDA = 0.08
RULES = ("paper", "code")


def outlier_ratio(scores, M: float = OWL_M) -> float:
    """Share of ``scores`` (one tensor or a list: all linears of one layer) above ``M`` × their mean."""
    if isinstance(scores, torch.Tensor):
        scores = [scores]
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    if flat.numel() == 0:
        raise ValueError("outlier_ratio needs at least one score")
    return (flat > M * flat.mean()).double().mean().item()


def owl_sparsities(ratios, target: float, lam: float = OWL_LAMBDA, weights=None,
                   rule: str = "paper") -> list[float]:
    """Per-layer sparsities from per-layer outlier ratios ``D_l`` (see the module docstring).

    ``weights``: each layer's number of prunable weights (default: all equal); the weighted mean of
    the result is ``target``. More outliers → lower sparsity. Raises ValueError if a sparsity would
    leave ``[0, 1)`` (use a smaller ``lam``).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, not {rule!r}")
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam < 1:
        raise ValueError(f"lam must be a number in [0, 1), got {lam!r}")
    D = torch.tensor([float(r) for r in ratios], dtype=torch.float64)
    if D.numel() == 0:
        raise ValueError("ratios is empty: one outlier ratio per decoder layer is needed")
    w = torch.ones_like(D) if weights is None else torch.tensor([float(x) for x in weights], dtype=torch.float64)
    if w.shape != D.shape or (w <= 0).any():
        raise ValueError(f"weights must be {D.numel()} positive layer sizes, got {weights!r}")
    w = w / w.sum()
    if D.max() == D.min():  # no layer stands out: uniform
        S = torch.full_like(D, float(target))
    elif rule == "paper":
        z = D - (w * D).sum()
        S = target - lam * z / z.abs().max()
    else:  # the reference code: min-max to [0, 2λ], minus the unweighted mean, density → sparsity
        r = (D - D.min()) / (D.max() - D.min()) * (2 * lam)
        S = target - (r - r.mean())
    if (S < 0).any() or (S >= 1).any():
        raise ValueError(f"OWL with target {target} and lam={lam} gives layer sparsities from "
                         f"{S.min().item():.3f} to {S.max().item():.3f}, outside [0, 1); use a smaller lam")
    return S.tolist()


def layer_sizes(model: nn.Module) -> list[int]:
    """Number of prunable weights in each decoder layer."""
    return [sum(weight_of(m).numel() for m in layer_linears(layer).values())
            for layer in decoder_layers(model)]


@torch.no_grad()
def layer_outlier_ratios(model: nn.Module, calib: torch.Tensor, M: float = OWL_M, batch_size: int = 8,
                         device=None) -> list[float]:
    """Outlier ratio ``D_l`` of every decoder layer of the *dense* model, from the Wanda statistics
    the calibration pipeline gathers. Prunes nothing (each layer's dense output feeds the next)."""
    ratios = []
    for _, _, linears, stats in layerwise(model, calib, hessian=False, batch_size=batch_size, device=device):
        ratios.append(outlier_ratio([wanda_scores(weight_of(m), stats[name].norms)
                                     for name, m in linears.items()], M))
    return ratios


def owl_layer_sparsity(model: nn.Module, calib: torch.Tensor, target: float, lam: float = OWL_LAMBDA,
                       M: float = OWL_M, rule: str = "paper", batch_size: int = 8, device=None) -> list[float]:
    """OWL's per-decoder-layer sparsities for ``model`` at mean sparsity ``target``."""
    ratios = layer_outlier_ratios(model, calib, M=M, batch_size=batch_size, device=device)
    return owl_sparsities(ratios, target, lam=lam, weights=layer_sizes(model), rule=rule)


def check_layer_sparsity(layer_sparsity, target: float, sizes: list[int]) -> list[float]:
    """Validate a per-decoder-layer sparsity list against the target and the layer sizes.

    The parameter-weighted mean must equal ``target`` to within one weight per layer. Returns the
    list as floats; raises TypeError/ValueError naming the fix.
    """
    if (isinstance(layer_sparsity, (str, bytes, Mapping, AbstractSet)) or not hasattr(layer_sparsity, "__len__")
            or getattr(layer_sparsity, "ndim", 1) != 1):
        raise TypeError(f"layer_sparsity must be a list (or a 1-D array) with one fraction per decoder layer, "
                        f"or 'owl'; not {type(layer_sparsity).__name__}"
                        f"{f' of shape {tuple(layer_sparsity.shape)}' if hasattr(layer_sparsity, 'shape') else ''}")
    values = list(layer_sparsity.tolist() if hasattr(layer_sparsity, "tolist") else layer_sparsity)
    if len(values) != len(sizes):
        raise ValueError(f"layer_sparsity has {len(values)} entries but the model has {len(sizes)} "
                         f"decoder layers; give one fraction per layer")
    for i, s in enumerate(values):
        if isinstance(s, bool) or not isinstance(s, Real):
            raise TypeError(f"layer_sparsity[{i}] must be a number, not {type(s).__name__}")
        if math.isnan(s) or not 0 <= s < 1:
            raise ValueError(f"layer_sparsity[{i}] = {s} is outside [0, 1) (the fraction of weights removed)")
    total = sum(sizes)
    mean = sum(s * n for s, n in zip(values, sizes)) / total
    if abs(mean - target) > len(sizes) / total + 1e-12:
        raise ValueError(f"layer_sparsity's size-weighted mean is {mean:.6f} but sparsity is {target}; "
                         f"scale the list so that its mean is the target (or pass sparsity={mean:.6f})")
    return [float(s) for s in values]


def resolve_layer_sparsity(model: nn.Module, method: str, pattern, calib, layer_sparsity, layers=None,
                           batch_size: int = 8, device=None) -> list[float]:
    """What :func:`sparselib.prune` does with ``layer_sparsity``: a checked list of per-layer
    fractions (from the list given, or OWL's for ``"owl"``). Nothing in the model changes."""
    if pattern.is_nm:
        raise ValueError(f"layer_sparsity needs an unstructured sparsity such as 0.7, not {pattern}: an "
                         f"N:M pattern fixes the sparsity of every group, so no layer can differ")
    if layers is not None:
        raise ValueError("layer_sparsity and layers cannot be combined; give sparsity 0 to the layers "
                         "to leave dense (and raise the others so the mean is the target)")
    sizes = layer_sizes(model)
    if isinstance(layer_sparsity, str):
        if layer_sparsity != "owl":
            raise ValueError(f"layer_sparsity must be 'owl' or a list of fractions, not {layer_sparsity!r}")
        if not isinstance(calib, torch.Tensor) or calib.dtype != torch.long or calib.dim() != 2:
            raise ValueError(f"layer_sparsity='owl' needs calibration data (OWL counts Wanda-score "
                             f"outliers), also with {method}: calib = sparselib.calibration_data(tokenizer)")
        check_token_ids(calib, getattr(model.config, "vocab_size", None), max_positions(model.config))
        ratios = layer_outlier_ratios(model, calib, batch_size=batch_size, device=device)
        try:
            owl = owl_sparsities(ratios, pattern.sparsity, weights=sizes)
        except ValueError:  # prune takes no lam: name what the caller can change
            raise ValueError(f"OWL's layer sparsities around {pattern.sparsity} (±{OWL_LAMBDA}) leave [0, 1) for "
                             f"this model; use a lower sparsity, or compute them with a smaller lam and pass "
                             f"the list: layer_sparsity=sparselib.owl_layer_sparsity(model, calib, "
                             f"{pattern.sparsity}, lam=...)") from None
        return check_layer_sparsity(owl, pattern.sparsity, sizes)
    return check_layer_sparsity(layer_sparsity, pattern.sparsity, sizes)
