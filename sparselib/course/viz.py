"""The sparsity visualizer: which weights of a small matrix survive each pruning rule, and what it costs.

Given ``W [out, in]`` and the per-channel input norms ``x_norm [in]`` (``‖X_j‖₂``, from
:func:`sparselib.input_norms`), every view is a keep-mask made by sparselib's own mask functions:

* ``"dense"``     — everything kept;
* ``"magnitude"`` — :func:`unstructured_mask` of :func:`magnitude_scores`, per output row;
* ``"wanda"``     — :func:`unstructured_mask` of :func:`wanda_scores`, per output row;
* ``"2:4"``       — :func:`nm_mask` of :func:`wanda_scores` (2 pruned of every 4 consecutive inputs).

Each row's **output error** uses the per-channel norms only:
``e_i = sqrt(Σ_j (W_ij − Ŵ_ij)² ‖X_j‖²)``, which equals ``‖(W − Ŵ)_i X‖`` when the input channels are
uncorrelated (it drops the cross terms of ``XᵀX``, exactly as Wanda's score does). It is shown relative
to the same sum for the dense row, ``sqrt(Σ_j W_ij² ‖X_j‖²)``.

Two front-ends share one renderer: :func:`visualizer_html` is a self-contained HTML/JS widget (every
view precomputed in Python and embedded as JSON; the JavaScript only switches views, so it works in a
static page), and :func:`visualizer_widget` is the ipywidgets version for a live kernel.
"""
from __future__ import annotations

import functools
import hashlib
import html
import itertools
import json
import string
import warnings
from importlib import resources
from typing import Sequence

import torch

from ..checks import check_matrix
from ..masks import nm_mask, parse_sparsity, unstructured_mask
from ..scores import magnitude_scores, wanda_scores

#: The views, in button order, and their labels.
MODES: tuple[str, ...] = ("dense", "magnitude", "wanda", "2:4")
MODE_LABELS = {"dense": "Dense", "magnitude": "Magnitude", "wanda": "Wanda", "2:4": "2:4 (Wanda)"}
#: Sparsity steps of the slider for the unstructured views: 0, 1/8, ..., 7/8 (exact in binary).
SPARSITIES: tuple[float, ...] = tuple(k / 8 for k in range(8))
#: An input channel is an outlier when its norm exceeds this many times the median norm.
OUTLIER_FACTOR = 10.0
#: Largest matrix drawn cell by cell.
MAX_WEIGHTS = 4096

_ids = itertools.count()


def toy_layer() -> tuple[torch.Tensor, torch.Tensor]:
    """The course's toy layer: ``W [4, 8]`` and input norms ``x_norm [8]`` with two outlier input
    channels (1 and 6). The Wanda chapter builds a 2:4 mask on it by hand and the visualizer chapter
    opens on it."""
    x_norm = torch.tensor([1.0, 50.0, 1.2, 0.8, 1.1, 0.9, 40.0, 1.0])
    W = torch.tensor([[0.1, -0.9, 0.2, 0.4, -0.1, 0.8, -0.3, 0.5],
                      [-0.5, 0.2, -0.1, -0.8, 0.6, -0.2, 0.1, -0.4],
                      [0.3, -0.4, 0.7, -0.2, -0.5, 0.3, -0.9, 0.1],
                      [-0.2, 0.5, -0.3, 0.1, 0.4, -0.7, 0.2, -0.6]])
    return W, x_norm


def seed_example() -> tuple[torch.Tensor, torch.Tensor]:
    """Deprecated name of :func:`toy_layer` (same tensors); use ``sparselib.toy_layer()``."""
    warnings.warn("sparselib.seed_example() is renamed sparselib.toy_layer(); the old name will be "
                  "removed in a later release", DeprecationWarning, stacklevel=2)
    return toy_layer()


# --------------------------------------------------------------------------------------------
# Input checks (the API boundary)
# --------------------------------------------------------------------------------------------
def _as_tensor(name: str, value, shape_hint: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value.detach()
    else:
        try:
            t = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a tensor or array of real numbers {shape_hint}, "
                            f"not {type(value).__name__}") from None
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers {shape_hint}, got dtype {t.dtype}")
    return t.float().cpu()


def _check(W, x_norm, outliers=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    W = check_matrix(_as_tensor("W", W, "[out_features, in_features]"), "W")
    if 0 in W.shape:
        raise ValueError(f"W must be a non-empty 2-D matrix [out_features, in_features], got shape "
                         f"{tuple(W.shape)}")
    if W.numel() > MAX_WEIGHTS:
        raise ValueError(f"W has {W.numel()} weights, too many to draw one cell each (at most "
                         f"{MAX_WEIGHTS}); pass a slice such as W[:8, :32]")
    x_norm = _as_tensor("x_norm", x_norm, "[in_features]")
    if x_norm.shape != (W.shape[1],):
        raise ValueError(f"x_norm must hold one norm per input channel of W, shape ({W.shape[1]},); got "
                         f"{tuple(x_norm.shape)}. Slice it with the same columns as W")
    if not torch.isfinite(x_norm).all() or (x_norm < 0).any():
        raise ValueError("x_norm must be finite and non-negative: the norms ‖X_j‖₂ of the input "
                         "channels, e.g. sparselib.input_norms(X)")
    if outliers is None:
        outliers = outlier_channels(x_norm)
    else:
        outliers = torch.as_tensor(outliers)
        if outliers.dtype != torch.bool or outliers.shape != (W.shape[1],):
            raise ValueError(f"outliers must be a boolean tensor with one entry per input channel "
                             f"({W.shape[1]}), e.g. x_norm > 10 * x_norm.median()")
    return W, x_norm, outliers.cpu()


def _check_sparsities(sparsities) -> list[float]:
    if isinstance(sparsities, (str, bytes)) or not isinstance(sparsities, Sequence) or not sparsities:
        raise TypeError("sparsities must be a non-empty sequence of fractions in [0, 1), e.g. (0.25, 0.5)")
    out = []
    for s in sparsities:
        pattern = parse_sparsity(s)  # ValueError/TypeError for out-of-range or non-numbers
        if pattern.is_nm:
            raise ValueError(f"sparsities are the unstructured slider's steps (fractions like 0.5); "
                             f"{s!r} is an N:M pattern — the '2:4' view is a mode of its own")
        out.append(pattern.sparsity)
    return sorted(set(out))


def _check_modes(modes, in_features: int) -> list[str]:
    if isinstance(modes, str) or not isinstance(modes, Sequence) or not modes:
        raise TypeError(f"modes must be a non-empty sequence drawn from {MODES}")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown modes {unknown}; choose from {MODES}")
    if "2:4" in modes and in_features % 4:
        raise ValueError(f"the '2:4' view needs the number of input columns to be a multiple of 4 "
                         f"(W has {in_features}); slice W to a multiple of 4 columns or leave '2:4' "
                         f"out of modes")
    return [m for m in MODES if m in modes]


# --------------------------------------------------------------------------------------------
# The numbers behind each view
# --------------------------------------------------------------------------------------------
def outlier_channels(x_norm: torch.Tensor, factor: float = OUTLIER_FACTOR) -> torch.Tensor:
    """Boolean ``[in]``: channels whose norm exceeds ``factor`` × the median norm."""
    x_norm = torch.as_tensor(x_norm, dtype=torch.float32)
    return x_norm > factor * x_norm.quantile(0.5)


def keep_mask(W: torch.Tensor, x_norm: torch.Tensor, mode: str, sparsity: float = 0.5) -> torch.Tensor:
    """The keep-mask (True = survives) of one view, from sparselib's mask and score functions.
    ``sparsity`` is the fraction pruned per output row; the dense and 2:4 views ignore it."""
    W, x_norm, _ = _check(W, x_norm)
    _check_modes([mode], W.shape[1])
    if mode == "dense":
        return torch.ones_like(W, dtype=torch.bool)
    if mode == "magnitude":
        return unstructured_mask(magnitude_scores(W), sparsity, per="row")
    if mode == "wanda":
        return unstructured_mask(wanda_scores(W, x_norm), sparsity, per="row")
    return nm_mask(wanda_scores(W, x_norm), 2, 4)


def row_errors(W: torch.Tensor, keep: torch.Tensor, x_norm: torch.Tensor) -> torch.Tensor:
    """``e_i = sqrt(Σ_j (W_ij − Ŵ_ij)² ‖X_j‖²)`` with ``Ŵ = W·keep``: row ``i``'s output error on the
    calibration inputs when their channels are uncorrelated (the diagonal of ``XᵀX`` only)."""
    W, x_norm, _ = _check(W, x_norm)
    if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool or keep.shape != W.shape:
        raise ValueError(f"keep must be a boolean tensor shaped like W {tuple(W.shape)}")
    return ((W * ~keep.cpu()).pow(2) * x_norm.pow(2)).sum(1).sqrt()


def _channels(idx: torch.Tensor, names: list[str]) -> str:
    return ", ".join(names[j] for j in idx.tolist()) or "none"


def _state(W, x_norm, outliers, mode: str, sparsity: float, col_names: list[str]) -> dict:
    keep = keep_mask(W, x_norm, mode, sparsity)
    err = row_errors(W, keep, x_norm)
    dense = row_errors(W, torch.zeros_like(keep), x_norm)
    rel = torch.where(dense > 0, err / dense.clamp_min(1e-30), torch.zeros_like(err))
    pruned = int((~keep).sum())
    on_outliers = int((~keep[:, outliers]).sum())
    where = {"dense": "nothing pruned",
             "magnitude": f"{sparsity:.1%} of each row pruned by |W|",
             "wanda": f"{sparsity:.1%} of each row pruned by |W|·‖X_j‖",
             "2:4": "2 of every 4 consecutive weights pruned by |W|·‖X_j‖"}[mode]
    n_out = int(outliers.sum())
    summary = (f"{MODE_LABELS[mode]}: {where}. {pruned} of {W.numel()} weights pruned; "
               + (f"{on_outliers} of {n_out * W.shape[0]} weights on the outlier channels "
                  f"({_channels(outliers.nonzero().flatten(), col_names)}) pruned. "
                  if n_out else "no outlier channels. ")
               + f"Mean relative row error {rel.mean().item():.1%}, worst {rel.max().item():.1%}.")
    actual = pruned / W.numel()
    return {"keep": keep.to(torch.uint8).tolist(),
            "row_error": [float(f"{e:.6g}") for e in err.tolist()],
            "row_error_rel": [float(f"{e:.6g}") for e in rel.tolist()],
            "sparsity": actual, "sparsity_label": f"{actual:.1%}",
            "pruned_on_outliers": on_outliers, "summary": summary}


def visualizer_data(W, x_norm, *, sparsities: Sequence[float] = SPARSITIES, modes: Sequence[str] = MODES,
                    outliers=None, outlier_rule: str | None = None, row_names: Sequence[str] | None = None,
                    col_names: Sequence[str] | None = None) -> dict:
    """Every view of the visualizer as plain JSON-ready data.

    ``states[mode]`` is a list with one entry per step of ``sparsities`` for the unstructured modes
    (``"magnitude"``, ``"wanda"``) and a single entry for ``"dense"`` and ``"2:4"``. Each entry holds
    ``keep`` (0/1 per weight, rows of ``W``), ``row_error``, ``row_error_rel`` and a ``summary`` line.
    ``outliers`` (boolean ``[in]``) defaults to :func:`outlier_channels` of ``x_norm``; pass your own
    when ``x_norm`` is a slice of a larger layer whose median should decide, with ``outlier_rule``
    saying how they were chosen (shown in the legend).
    """
    if outlier_rule is None and outliers is None:
        outlier_rule = f"‖X_j‖ > {OUTLIER_FACTOR:g}× median"
    W, x_norm, outliers = _check(W, x_norm, outliers)
    sparsities = _check_sparsities(sparsities)
    modes = _check_modes(modes, W.shape[1])
    rows, cols = W.shape
    row_names = _names("row_names", row_names, rows, "row")
    col_names = _names("col_names", col_names, cols, "")
    states = {}
    for mode in modes:
        steps = sparsities if mode in ("magnitude", "wanda") else [0.5]
        states[mode] = [_state(W, x_norm, outliers, mode, s, col_names) for s in steps]
    return {
        "shape": [rows, cols], "W": W.tolist(), "x_norm": x_norm.tolist(),
        "outliers": outliers.tolist(), "outlier_rule": outlier_rule or "",
        "row_names": row_names, "col_names": col_names,
        "sparsities": sparsities,
        "modes": [{"key": m, "label": MODE_LABELS[m], "uses_sparsity": m in ("magnitude", "wanda")}
                  for m in modes],
        "states": states,
        "error": "row error = sqrt(sum_j (W_ij - What_ij)^2 ||X_j||^2), relative to the dense row's "
                 "sqrt(sum_j W_ij^2 ||X_j||^2); exact for uncorrelated input channels",
    }


def _names(name: str, values, count: int, prefix: str) -> list[str]:
    if values is None:
        return [f"{prefix} {k}".strip() for k in range(count)]
    values = [str(v) for v in values]
    if len(values) != count:
        raise ValueError(f"{name} needs {count} labels, one per {'row' if prefix else 'column'} of W; "
                         f"got {len(values)}")
    return values


# --------------------------------------------------------------------------------------------
# Rendering (shared by the static widget and the ipywidgets one). The front end is in package
# files: static/visualizer.css (the look), static/visualizer.js (switching views in the page) and
# static/visualizer.html (the static widget's frame, a string.Template).
# --------------------------------------------------------------------------------------------
#: Wider than this, cells are drawn as small squares without their values (shown on hover).
COMPACT_COLUMNS = 16


@functools.lru_cache(maxsize=None)
def _static(name: str) -> str:
    return (resources.files(__package__) / "static" / name).read_text(encoding="utf-8")


def _root_class(data: dict) -> str:
    return "sv-root sv-compact" if data["shape"][1] > COMPACT_COLUMNS else "sv-root"


def _state_at(data: dict, mode: str, step: int) -> dict:
    """The view of ``mode`` at slider step ``step`` (the dense and 2:4 views have one step only)."""
    states = data["states"][mode]
    return states[min(step, len(states) - 1)]


def _group_gap(data: dict):
    """``gap(j)``: a thin spacer cell before every group of 4 inputs, where the 2:4 view is possible."""
    if data["shape"][1] % 4:
        return lambda j: ""
    return lambda j: '<td class="sv-gap"></td>' if j and j % 4 == 0 else ""


def _head_rows(data: dict) -> str:
    """Two header rows: the input channels' names, then their norms with the outliers marked."""
    esc, gap = html.escape, _group_gap(data)
    names = ['<tr><th class="sv-corner">input</th>']
    norms = ['<tr><th class="sv-corner">‖X_j‖</th>']
    for j, (norm, out) in enumerate(zip(data["x_norm"], data["outliers"])):
        names.append(f'{gap(j)}<th class="sv-colname" data-col="{j}">{esc(data["col_names"][j])}</th>')
        norms.append(f'{gap(j)}<th class="sv-norm" data-col="{j}" data-outlier="{int(out)}" '
                     f'title="{esc(data["col_names"][j])}: ‖X_j‖ = {norm:.4g}">{norm:.1f}</th>')
    names.append("<th></th></tr>")
    norms.append('<th class="sv-err-head">row error</th></tr>')
    return "".join(names + norms)


def _body_rows(data: dict, state: dict) -> str:
    """One row per output: its weights as cells (kept or pruned in ``state``) and its error bar."""
    esc, gap = html.escape, _group_gap(data)
    rows = []
    for i, weights in enumerate(data["W"]):
        cells = [f'<tr class="sv-row" data-row="{i}"><th>{esc(data["row_names"][i])}</th>']
        for j, w in enumerate(weights):
            cells.append(f'{gap(j)}<td class="sv-cell" data-row="{i}" data-col="{j}" '
                         f'data-outlier="{int(data["outliers"][j])}" data-kept="{state["keep"][i][j]}" '
                         f'title="W[{i},{j}] = {w:+.4g}, |W|·‖X_j‖ = {abs(w) * data["x_norm"][j]:.4g}">'
                         f'{w:+.2f}</td>')
        rel = state["row_error_rel"][i]
        cells.append(f'<td class="sv-err" data-row="{i}"><span class="sv-barbox"><span class="sv-bar" '
                     f'style="width:{100 * rel:.1f}%"></span></span><span class="sv-err-text">{rel:.1%}</span>'
                     f'</td></tr>')
        rows.append("".join(cells))
    return "".join(rows)


def _legend(data: dict) -> str:
    key = '<span class="sv-key" style="{}"></span>'.format
    rule = f' ({html.escape(data["outlier_rule"])})' if data["outlier_rule"] else ''
    hover = ' Hover over a cell for its weight.' if data["shape"][1] > COMPACT_COLUMNS else ''
    return ('<p class="sv-legend">'
            f'{key("background:#b9e3b0")}kept{key("background:#ececec")}pruned'
            f'{key("background:#fff;border-color:#f6a04d")}outlier channel{rule}'
            f'{key("background:#f4b6ae;border-color:#f6a04d")}pruned on an outlier channel. '
            'Row error: √Σ<sub>j</sub>(W<sub>ij</sub>−Ŵ<sub>ij</sub>)²‖X<sub>j</sub>‖², relative to the '
            f'dense row (exact when input channels are uncorrelated).{hover}</p>')


def _grid(data: dict, mode: str, step: int) -> str:
    """The grid, row errors, summary and legend of one view (no controls, no script)."""
    state = _state_at(data, mode, step)
    return (f'<table class="sv-grid"><thead>{_head_rows(data)}</thead>'
            f'<tbody>{_body_rows(data, state)}</tbody></table>'
            f'<p class="sv-summary">{html.escape(state["summary"])}</p>{_legend(data)}')


def _initial(data: dict, mode: str, sparsity: float) -> tuple[str, int]:
    keys = [m["key"] for m in data["modes"]]
    if mode not in keys:
        raise ValueError(f"mode {mode!r} is not among this visualizer's modes {keys}")
    sparsity = parse_sparsity(sparsity).sparsity
    step = min(range(len(data["sparsities"])), key=lambda k: abs(data["sparsities"][k] - sparsity))
    return mode, step


def _mode_buttons(data: dict, mode: str) -> str:
    return "".join(f'<button type="button" class="sv-mode" data-mode="{html.escape(m["key"])}" '
                   f'aria-pressed="{str(m["key"] == mode).lower()}">{html.escape(m["label"])}</button>'
                   for m in data["modes"])


def visualizer_html(W, x_norm, *, title: str = "Sparsity visualizer", mode: str = "dense",
                    sparsity: float = 0.5, element_id: str | None = None, **options) -> str:
    """A self-contained HTML widget (no external scripts): mode buttons, a sparsity slider, the grid
    of kept and pruned weights with the outlier channels marked, and each row's output error.

    Every view is computed here by :func:`visualizer_data` (``options`` go there) and embedded as JSON
    in ``<script type="application/json" class="sv-data">``; the JavaScript only switches views. Show it
    with ``IPython.display.HTML(...)``: it works in Jupyter, Colab and a static HTML book. DOM hooks
    for tests: the root ``.sv-root`` carries ``data-mode``, ``data-step`` and ``data-sparsity``; each
    button ``button.sv-mode[data-mode]``; each cell ``td.sv-cell[data-row][data-col][data-kept]``.
    """
    data = visualizer_data(W, x_norm, **options)
    mode, step = _initial(data, mode, sparsity)
    payload = json.dumps(data, separators=(",", ":"))
    if element_id is None:
        digest = hashlib.sha1(payload.encode()).hexdigest()[:8]
        element_id = f"sv-{digest}-{next(_ids)}"
    return string.Template(_static("visualizer.html")).substitute(
        root_class=_root_class(data), element_id=html.escape(element_id), mode=html.escape(mode), step=step,
        css=_static("visualizer.css"), title=html.escape(title), buttons=_mode_buttons(data, mode),
        last_step=len(data["sparsities"]) - 1, sparsity_label=_state_at(data, mode, step)["sparsity_label"],
        view=_grid(data, mode, step), data_json=payload.replace("</", "<\\/"), js=_static("visualizer.js"),
        element_id_json=json.dumps(element_id))


def visualizer_widget(W, x_norm, *, title: str = "Sparsity visualizer", mode: str = "dense",
                      sparsity: float = 0.5, **options):
    """The same visualizer as ipywidgets, for a live kernel (Jupyter, Colab): ``ToggleButtons`` for the
    mode, a ``SelectionSlider`` for the sparsity, and the grid redrawn by Python. Returns a ``VBox``
    whose ``children`` are ``(mode_buttons, slider, view)``."""
    import ipywidgets as widgets

    data = visualizer_data(W, x_norm, **options)
    mode, step = _initial(data, mode, sparsity)
    buttons = widgets.ToggleButtons(options=[(m["label"], m["key"]) for m in data["modes"]], value=mode,
                                    description="rule")
    slider = widgets.SelectionSlider(options=[(f"{s:.1%}", k) for k, s in enumerate(data["sparsities"])],
                                     value=step, description="sparsity", continuous_update=True)
    view = widgets.HTML()

    def redraw(_=None):
        uses = next(m for m in data["modes"] if m["key"] == buttons.value)["uses_sparsity"]
        slider.disabled = not uses
        view.value = (f'<div class="{_root_class(data)}" data-mode="{html.escape(buttons.value)}">'
                      f'<style>{_static("visualizer.css")}</style><div class="sv-title">{html.escape(title)}</div>'
                      f'{_grid(data, buttons.value, slider.value)}</div>')

    buttons.observe(redraw, names="value")
    slider.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([buttons, slider, view])
    box.visualizer_data = data
    return box
