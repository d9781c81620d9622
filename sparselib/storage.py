"""Honest bytes: what a model's weights take when stored each way, metadata included.

For a ``[rows, cols]`` decoder linear the counts are exact, laid out as the formats lay them out:

    values      kept values × bits / 8    (quantized codes are packed: compressed-tensors puts 32 codes
                                          into ``bits`` int32 words, so a row of 32k codes has no padding)
    positions   2:4: 2 bits per kept value (which 2 of the 4 slots; :mod:`sparselib.format24`,
                cuSPARSELt and CUTLASS store as many bits) — bitmask: 1 bit per weight, kept or not
    scales      one per (row, group) in the scale dtype (2 bytes), when quantized
    zeros       one ``bits``-bit code per (row, group), when quantized asymmetrically

Everything that is not a decoder linear (embeddings, norms, an untied ``lm_head``) stays 16-bit.
"Bytes per weight" divides by the dense model's number of decoder-linear weights, so a 2:4 model is
compared per weight it *had*, and a sliced model per weight of the model it was sliced from.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .checks import check_bits, check_choice, check_group_size, check_int


@dataclass(frozen=True)
class Storage:
    """One way to store the decoder linears.

    bits:       bits per stored value (16: float16/bfloat16, not quantized).
    group_size: inputs per quantization grid (None: one grid per output row); only when bits < 16.
    symmetric:  no zero points stored (only when bits < 16).
    sparsity:   None (dense), "2:4" (half the values kept, 2-bit positions) or "bitmask" (``density``
                of the values kept, one bit per weight says which).
    """

    name: str
    bits: int = 16
    group_size: int | None = None
    symmetric: bool = True
    sparsity: str | None = None
    density: float = 1.0
    scale_bytes: int = 2

    def __post_init__(self):
        if self.bits != 16:
            check_bits(self.bits)
            check_group_size(self.group_size)
        check_choice(self.sparsity, (None, "2:4", "bitmask"), "sparsity")
        if not 0 < self.density <= 1:
            raise ValueError(f"density must be in (0, 1], got {self.density}")
        if self.sparsity == "2:4" and self.density != 0.5:
            raise ValueError("2:4 keeps exactly half the values: density=0.5")

    @property
    def quantized(self) -> bool:
        return self.bits < 16


def matrix_bytes(rows: int, cols: int, s: Storage) -> dict:
    """Bytes of one ``[rows, cols]`` linear stored as ``s``: values, positions, scales, zeros, total."""
    check_int(rows, "rows", 1)
    check_int(cols, "cols", 1)
    if s.sparsity == "2:4" and cols % 4:
        raise ValueError(f"2:4 needs cols to be a multiple of 4, got {cols}")
    if s.quantized:
        check_group_size(s.group_size, cols, f"a [{rows}, {cols}] matrix")
    kept = cols // 2 if s.sparsity == "2:4" else math.ceil(cols * s.density)   # values kept per row
    values = rows * math.ceil(kept * s.bits / 8)
    positions = {None: 0, "2:4": rows * math.ceil(kept * 2 / 8), "bitmask": rows * math.ceil(cols / 8)}[s.sparsity]
    groups = 1 if not s.quantized or s.group_size is None else cols // s.group_size
    scales = rows * groups * s.scale_bytes if s.quantized else 0
    zeros = rows * groups * s.bits / 8 if s.quantized and not s.symmetric else 0
    total = values + positions + scales + zeros
    return {"values": values, "positions": positions, "scales": scales, "zeros": zeros, "total": total,
            "bits_per_weight": 8 * total / (rows * cols)}


def model_bytes(shapes: list[tuple[int, int]], other_params: int, s: Storage,
                dense_weights: int | None = None) -> dict:
    """A whole model stored as ``s``: ``shapes`` are its decoder linears ``(rows, cols)``, ``other_params``
    the rest (16-bit). ``dense_weights``: the decoder-linear weights of the model before slicing
    (default: ``shapes``'s own count). Returns bytes of the linears and of the model, and bytes per
    dense decoder-linear weight of each."""
    linears = sum(matrix_bytes(r, c, s)["total"] for r, c in shapes)
    dense_weights = dense_weights or sum(r * c for r, c in shapes)
    model = linears + 2 * other_params
    return {"linears": linears, "model": model, "bytes_per_weight": linears / dense_weights,
            "model_bytes_per_weight": model / (dense_weights + other_params)}


#: The combinations the course compares (group size 64: SmolLM2's hidden size, 576, is not a multiple of 128).
SCHEMES = {
    "fp16": Storage("fp16"),
    "int8": Storage("int8 per-channel", bits=8),
    "int4 g64": Storage("int4 g64", bits=4, group_size=64),
    "int4 g32": Storage("int4 g32", bits=4, group_size=32),
    "int4 g32 asym": Storage("int4 g32 asym", bits=4, group_size=32, symmetric=False),
    "int3 g64": Storage("int3 g64", bits=3, group_size=64),
    "2:4 fp16": Storage("2:4 fp16", sparsity="2:4", density=0.5),
    "2:4 + int8": Storage("2:4 + int8", bits=8, sparsity="2:4", density=0.5),
    "2:4 + int4 g64": Storage("2:4 + int4 g64", bits=4, group_size=64, sparsity="2:4", density=0.5),
    "50% + int4 g64 (bitmask)": Storage("50% + int4 g64 (bitmask)", bits=4, group_size=64, sparsity="bitmask",
                                        density=0.5),
    "SliceGPT 25% + int4 g64": Storage("SliceGPT 25% + int4 g64", bits=4, group_size=64),
}


def linear_shapes(model) -> list[tuple[int, int]]:
    """``(out, in)`` of every decoder-layer linear of ``model``."""
    from .models import decoder_layers, layer_linears, weight_of

    return [tuple(weight_of(m).shape) for layer in decoder_layers(model) for m in layer_linears(layer).values()]


def other_params(model) -> int:
    """Parameters outside the decoder-layer linears (tied tensors counted once)."""
    from .models import decoder_layers, layer_linears

    linear = {id(m.weight) for layer in decoder_layers(model) for m in layer_linears(layer).values()}
    return sum(p.numel() for p in model.parameters() if id(p) not in linear)  # parameters(): tied once
