"""Weight-only quantization, beside the pruning methods: round-to-nearest (RTN) and GPTQ.

A ``b``-bit grid for one row of ``W [out, in]`` (or one group of ``group_size`` consecutive inputs of a
row) is the set ``{s · (k − z) : k = 0 … 2^b − 1}``. Its range is stretched to include 0
(``xmin ≤ 0 ≤ xmax``), so a pruned weight stays exactly 0:

    asymmetric   s = (xmax − xmin) / (2^b − 1)             z = round(−xmin / s)
    symmetric    xmax ← max(|xmin|, xmax),  s = 2·xmax / (2^b − 1),  z = 2^(b−1)
    Q(w)       = s · (clamp(round(w / s) + z, 0, 2^b − 1) − z)

This is the quantizer of the IST-DASLab ``gptq`` reference, corner cases included (an all-zero row
gets the range [−1, 1]; a symmetric row with no negative weight keeps ``xmin = 0``, so its grid tops
out at 7/15 of ``xmax`` — no group of 32 in SmolLM2's weights is like that). The ``compressed-tensors`` format stores
the same grid with signed codes ``k − 2^(b−1)``; ``s`` is rounded to the dtype it is stored in
(``scale_dtype``, float16 unless the weights are bfloat16) *before* the codes are chosen, so the weights
sparselib keeps are exactly what a reader of the checkpoint decodes.

**RTN** rounds every weight on its own. **GPTQ** (Frantar et al., 2023) is SparseGPT's column sweep
(:mod:`sparselib.sparsegpt`) with rounding in place of the mask: column ``j`` is rounded, and its
error ``(w − Q(w)) / U_jj`` is spread over the columns not yet visited along row ``j`` of ``U``, the
upper Cholesky factor of ``H⁻¹`` (``H = 2XᵀX``). Both live in one implementation of that sweep, so
``prune(model, "sparsegpt", "2:4", calib, wbits=4)`` prunes and quantizes in one pass (the SparseGPT
paper's joint mode: the mask first, then each kept weight rounded, the error fed forward).

Reference rules (IST-DASLab/gptq): per-channel grids from ``W`` as given; with groups, each group's
grid from the weights as they are when the sweep reaches the block that holds the group's first column
(updates from earlier blocks applied, from the same block not yet); ``static_groups=True`` instead
fixes every group's grid from ``W`` before the sweep; ``act_order`` (off by default) visits columns by
decreasing ``diag(H)`` and needs static groups when grouped, so that a group stays a run of
consecutive inputs in the stored format. Not implemented: the reference's MSE grid search (off by
default there) and its "true sequential" option (off by default there too: every linear of a layer
gets its statistics from the layer's dense inputs, as in sparselib's one calibration pipeline).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from .checks import QUANT_BITS, check_bits, check_choice, check_flag
from .checks import check_group_size as _check_group_size

log = logging.getLogger(__name__)

#: The module attribute that holds a quantized linear's grid (a :class:`QuantState`), for exporters.
QUANT_ATTR = "sparselib_quant"
BITS = QUANT_BITS


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize: ``bits``, ``group_size`` (None = one grid per output row), ``symmetric``,
    the dtype the scales are stored in, and GPTQ's ``act_order`` / ``static_groups``."""

    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = True
    scale_dtype: torch.dtype = torch.float16
    act_order: bool = False
    static_groups: bool = False

    @property
    def maxq(self) -> int:
        return 2 ** self.bits - 1

    def __str__(self) -> str:
        grid = "per-channel" if self.group_size is None else f"g{self.group_size}"
        return f"int{self.bits} {grid} {'sym' if self.symmetric else 'asym'}"


def make_spec(bits=4, group_size=128, symmetric=True, scale_dtype=None, act_order=False,
              static_groups=False, weight_dtype=torch.float32) -> QuantSpec:
    """A checked :class:`QuantSpec`. ``scale_dtype`` None: bfloat16 for bfloat16 weights, else float16."""
    check_bits(bits)
    _check_group_size(group_size)
    for name, flag in (("symmetric", symmetric), ("act_order", act_order), ("static_groups", static_groups)):
        check_flag(flag, name)
    if scale_dtype is None:
        scale_dtype = torch.bfloat16 if weight_dtype == torch.bfloat16 else torch.float16
    check_choice(scale_dtype, (torch.float16, torch.bfloat16, torch.float32), "scale_dtype")
    if act_order and group_size is not None and not static_groups:
        raise ValueError("act_order with groups needs static_groups=True: otherwise a group would hold "
                         "inputs scattered over the row, which no stored format can describe")
    return QuantSpec(bits, group_size, symmetric, scale_dtype, act_order, static_groups)


def check_group_size(in_features: int, spec: QuantSpec, where: str = "W") -> None:
    """``spec``'s groups fit a matrix with ``in_features`` inputs."""
    _check_group_size(spec.group_size, in_features, where)


# --------------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------------
def grid_params(X: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero)`` of the grid of each row of ``X [rows, k]`` (float32, scale already rounded to
    ``spec.scale_dtype``)."""
    X = X.float()
    xmin = X.amin(1).clamp(max=0)
    xmax = X.amax(1).clamp(min=0)
    if spec.symmetric:
        xmax = torch.maximum(-xmin, xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    flat = (xmin == 0) & (xmax == 0)  # an all-zero row: any grid holds it; the reference uses [-1, 1]
    xmin, xmax = torch.where(flat, -1.0, xmin), torch.where(flat, 1.0, xmax)
    scale = ((xmax - xmin) / spec.maxq).to(spec.scale_dtype).float()
    if spec.symmetric:
        zero = torch.full_like(scale, (spec.maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale).clamp(0, spec.maxq)
    return scale, zero


def codes(W: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Integer codes ``k`` (0 … 2^b − 1, as float) of ``W`` on the grid ``(scale, zero)``; ``scale`` and
    ``zero`` broadcast against ``W``."""
    return torch.clamp(torch.round(W.float() / scale) + zero, 0, spec.maxq)


def dequantize(k: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``s · (k − z)`` rounded to ``spec.scale_dtype`` (what a reader of the stored format computes),
    returned as float32."""
    return ((k - zero) * scale).to(spec.scale_dtype).float()


def round_to_grid(W, scale, zero, spec: QuantSpec) -> torch.Tensor:
    """``Q(W)``: each weight to its grid's nearest point (float32)."""
    return dequantize(codes(W, scale, zero, spec), scale, zero, spec)


def _expand(P: torch.Tensor, spec: QuantSpec, cols: int) -> torch.Tensor:
    """Per-group parameters ``[rows, groups]`` repeated over each group's columns: ``[rows, cols]``."""
    return P.repeat_interleave(spec.group_size, dim=1) if spec.group_size else P[:, :1].expand(-1, cols)


@dataclass
class QuantState:
    """A quantized linear's grid: ``scale`` and ``zero`` ``[out, groups]`` (one group per row when
    per-channel). ``W == dequantize(codes(W))`` holds for its weight while it is unchanged."""

    spec: QuantSpec
    scale: torch.Tensor
    zero: torch.Tensor

    def codes(self, W: torch.Tensor) -> torch.Tensor:
        cols = W.shape[1]
        return codes(W, _expand(self.scale, self.spec, cols), _expand(self.zero, self.spec, cols), self.spec)

    def dequantize(self, k: torch.Tensor) -> torch.Tensor:
        cols = k.shape[1]
        return dequantize(k, _expand(self.scale, self.spec, cols), _expand(self.zero, self.spec, cols), self.spec)

    def holds(self, W: torch.Tensor) -> bool:
        """Whether ``W`` lies exactly on this grid (it was not changed after quantization)."""
        return bool(torch.equal(self.dequantize(self.codes(W)), W.detach().float()))


def rtn(W: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, QuantState]:
    """Round-to-nearest: ``(Q(W) as float32, its QuantState)``; ``W [out, in]`` is not modified."""
    rows, cols = W.shape
    check_group_size(cols, spec)
    g = spec.group_size or cols
    scale, zero = grid_params(W.detach().float().reshape(rows * (cols // g), g), spec)
    state = QuantState(spec, scale.view(rows, -1), zero.view(rows, -1))
    return state.dequantize(state.codes(W.detach())), state


class SweepGrid:
    """The grid inside the column sweep (:func:`sparselib.sparsegpt.column_sweep`), by the reference's
    rules: per-channel from ``W`` as given; groups fixed before the sweep (``static_groups``) or when
    the sweep reaches the block holding their first column. ``round(w, col)`` rounds one column."""

    def __init__(self, spec: QuantSpec, W: torch.Tensor):
        self.spec = spec
        rows, cols = W.shape
        groups = 1 if spec.group_size is None else cols // spec.group_size
        self.scale, self.zero = W.new_zeros(rows, groups), W.new_zeros(rows, groups)
        if spec.group_size is None:
            self.scale[:, 0], self.zero[:, 0] = grid_params(W, spec)

    def before_sweep(self, W: torch.Tensor) -> None:
        """Static groups, from ``W`` after dead inputs were zeroed (as the reference does)."""
        if self.spec.group_size is not None and self.spec.static_groups:
            for g in range(self.scale.shape[1]):
                self._set(W, g)

    def at_block(self, W: torch.Tensor, i1: int, i2: int) -> None:
        """Groups whose first column lies in ``[i1, i2)``, from ``W`` as it is at the block's start.
        (With act_order, only static groups are allowed, so columns are in their own order here.)"""
        gs = self.spec.group_size
        if gs is not None and not self.spec.static_groups:
            for start in range(-(-i1 // gs) * gs, i2, gs):
                self._set(W, start // gs)

    def _set(self, W, g):
        gs = self.spec.group_size
        self.scale[:, g], self.zero[:, g] = grid_params(W[:, g * gs:(g + 1) * gs], self.spec)

    def round(self, w: torch.Tensor, col: int) -> torch.Tensor:
        g = 0 if self.spec.group_size is None else col // self.spec.group_size
        return round_to_grid(w, self.scale[:, g], self.zero[:, g], self.spec)

    def states(self, rows: list[int]) -> list[QuantState]:
        return [QuantState(self.spec, s.clone(), z.clone())
                for s, z in zip(self.scale.split(rows), self.zero.split(rows))]


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------
@dataclass
class QuantRecord:
    layer: int
    name: str
    shape: tuple[int, int]
    error: float     # ‖W − Q(W)‖ / ‖W‖ against the weights before quantization
    seconds: float


@dataclass
class QuantReport:
    method: str
    spec: QuantSpec
    records: list[QuantRecord] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        s = self.spec
        return {"method": self.method, "bits": s.bits, "group_size": s.group_size, "symmetric": s.symmetric,
                "scale_dtype": str(s.scale_dtype).replace("torch.", ""), "act_order": s.act_order,
                "static_groups": s.static_groups, "seconds": self.seconds,
                "linears": [dict(r.__dict__) for r in self.records]}

    def __str__(self) -> str:
        err = sum(r.error for r in self.records) / max(1, len(self.records))
        return (f"{self.method} {self.spec}: {len(self.records)} linears, mean relative error {err:.3%}, "
                f"{self.seconds:.1f} s")


def quant_state(module: nn.Module) -> QuantState | None:
    """The grid a quantized linear was given by :func:`quantize` or ``prune(..., wbits=)``, else None."""
    return getattr(module, QUANT_ATTR, None)


def quantize(model: nn.Module, bits: int = 4, *, group_size: int | None = 128, symmetric: bool = True,
             method: str = "gptq", calib: torch.Tensor | None = None, act_order: bool = False,
             static_groups: bool = False, scale_dtype=None, blocksize: int = 128, percdamp: float = 0.01,
             layers=None, batch_size: int = 8, device=None, progress: bool = True) -> QuantReport:
    """Quantize every decoder-layer linear of ``model`` in place (weight-only); returns a :class:`QuantReport`.

    bits:       2, 3, 4 or 8.  group_size: inputs per grid (must divide every in_features), or None
                for one grid per output row.  symmetric: zero point in the middle (True) or fitted.
    method:     "rtn" (no data) or "gptq" (needs ``calib``, the same windows the pruning methods use).
    Weights that are exactly 0 stay 0 (a pruned model keeps its pattern: GPTQ treats them as pruned
    and compensates for them; RTN maps 0 to 0). The weights keep their dtype; their values lie on the
    grid with scales rounded to ``scale_dtype``. Each linear remembers its grid (``quant_state``) for
    :func:`sparselib.save_compressed`. Bad input raises ValueError/TypeError before any weight changes.
    """
    from .prune import quantize_model  # the layer walk is the pruning driver's (one pipeline)

    return quantize_model(model, bits=bits, group_size=group_size, symmetric=symmetric, method=method,
                          calib=calib, act_order=act_order, static_groups=static_groups,
                          scale_dtype=scale_dtype, blocksize=blocksize, percdamp=percdamp, layers=layers,
                          batch_size=batch_size, device=device, progress=progress)


def weight_error(W_old: torch.Tensor, W_new: torch.Tensor) -> float:
    """``‖W_new − W_old‖ / ‖W_old‖`` (0 for an all-zero ``W_old`` left unchanged)."""
    norm = float(W_old.float().norm())
    diff = float((W_new.float() - W_old.float()).norm())
    return diff / norm if norm else diff


def gptq(W: torch.Tensor, H: torch.Tensor, spec: QuantSpec, blocksize: int = 128,
         percdamp: float = 0.01) -> tuple[torch.Tensor, QuantState]:
    """GPTQ on one ``W [out, in]`` with ``H = 2XᵀX [in, in]``: ``(Q(W) in W's dtype, its QuantState)``.
    Weights that are exactly 0 stay 0. ``W`` and ``H`` are not modified."""
    from .sparsegpt import _check, column_sweep  # the sweep is SparseGPT's (it imports this module)

    _check([W], H, None, None, None, blocksize, percdamp, quant=spec, prune=False)
    (Q, _, state), = column_sweep([W], H, blocksize=blocksize, percdamp=percdamp, quant=spec, keep=[W != 0])
    return Q, state
