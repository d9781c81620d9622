"""Chapter 9, sparsity meets quantization: the bits per weight of 2:4 + int4, and round-to-nearest
group quantization written by hand."""
from __future__ import annotations

import torch

from ...quantize import make_spec, rtn
from ...storage import Storage, matrix_bytes
from ._answers import call, close, need_function, number
from .registry import checker


def _bits_mistake(got: float, bits: int, g: int) -> str:
    """What a bits-per-weight figure for 2:4 + int``bits`` that is not the right one most likely counted."""
    guesses = [
        (bits / 2 + 16 / g, "that leaves out the positions: each kept value also stores 2 bits (which of the 4 slots)"),
        (bits / 2 + 1, "the scales are missing: one 16-bit scale per group of inputs"),
        (bits / 2 + 2 + 16 / g, "that is 2 bits of position per weight (or 4 per kept value, the 37.5 % mistake): "
                                "2 bits per kept value name which 2 of the 4 slots are kept"),
        (bits / 2 + 1 + 32 / g, "a group spans group_size inputs of the dense row, half of them kept: 16 bits per "
                                "group is 16 / group_size per dense weight"),
        (bits + 1 + 16 / g, "only half the values are stored: bits / 2 per weight for the values"),
    ]
    for value, why in guesses:
        if close(got, value):
            return why
    want = bits / 2 + 1 + 16 / g
    if close(got, want / 8):
        return "that is bytes per weight; the question asks for bits"
    return (f"you have {got:g} bits per weight; count per dense weight: half a value of {bits} bits, half a "
            f"2-bit position, and one 16-bit scale per {g} inputs")


@checker("ex-smaller-bits24")
def check_bits_24_int4(fb, bits_per_weight, group_size: int = 64, bits: int = 4):
    """Your bits per (dense) weight of a 2:4 matrix whose kept values are ``bits``-bit codes with one
    float16 scale per ``group_size`` inputs (symmetric: no zero points)."""
    got = number(bits_per_weight, "bits_per_weight")
    want = matrix_bytes(4096, 4096, Storage("2:4 + int", bits=bits, group_size=group_size, sparsity="2:4",
                                            density=0.5))["bits_per_weight"]
    if close(got, want):
        return fb.note(f"{want:g} bits per weight: {16 / want:.1f}× smaller than float16, and "
                       f"{(bits + 16 / group_size) / want:.2f}× smaller than dense int{bits} with the same groups")
    return fb.fail(_bits_mistake(got, bits, group_size))


def _cases():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(16, 128, generator=g) * torch.rand(16, 1, generator=g)
    W[0, :32] = 0                       # an all-zero group
    W[1, 32:64] = W[1, 32:64].abs() + 0.1
    W[1, 40] = W[1, 56] = -0.05         # groups whose largest weight is positive and far from their minimum
    W[2] = 0.01 * W[2]                  # a row of small weights: its own scales
    W[3, 5] = 8.0                       # an outlier in one group
    return [(W, 4, 32), (W, 3, 64), (W, 8, 128), (W[:, :64], 4, 16)]


def _rtn_mistake(W, got, bits, g) -> str:
    maxq, half = 2 ** bits - 1, 2 ** (bits - 1)
    X = W.reshape(W.shape[0], -1, g)
    amax = X.abs().amax(-1, keepdim=True).clamp_min(1e-30)
    for div, lo, hi in ((half - 1, 1 - half, half - 1), (half, -half, half - 1)):  # max|w|/7 in ±7, max|w|/8 in −8…7
        s = amax / div
        if torch.allclose(got, (torch.clamp(torch.round(X / s), lo, hi) * s).reshape(W.shape), atol=1e-6):
            return (f"your scale is max|w| / {div}: the reference grid spans 2·max|w| over 2^{bits} − 1 = {maxq} "
                    f"steps, so the scale is 2·max|w| / {maxq}, with codes 0…{maxq} around a zero point of {half}")
    row = rtn(W, make_spec(bits, None, scale_dtype=torch.float32))[0]
    if torch.allclose(got, row, atol=1e-6):
        return f"that is one grid per row; the exercise asks for one per group of {g} inputs"
    if (got[0, :g] != 0).any():
        return "an all-zero group must stay exactly 0 (give it any nonzero scale; 0 is always on the grid)"
    return "not the reference grid; compare your scale, zero point and clamping with the formulas above"


@checker("ex-smaller-rtn")
def check_rtn_groups(fb, fn):
    """Your ``fn(W, bits, group_size) -> W_q``: symmetric round-to-nearest with one grid per
    ``group_size`` consecutive inputs of each row, the GPTQ reference's grid (scales not rounded)."""
    need_function(fn, "check_rtn_groups(my_rtn)")
    for W, bits, g in _cases():
        got = call(fb, fn, W.clone(), bits, g)
        if got is None:
            return fb
        if not isinstance(got, torch.Tensor) or got.shape != W.shape:
            return fb.fail(f"return W_q with W's shape {tuple(W.shape)}, got {getattr(got, 'shape', type(got))}")
        got = got.float()
        want = rtn(W, make_spec(bits, g, scale_dtype=torch.float32))[0]
        if not torch.allclose(got, want, atol=1e-6, rtol=1e-5):
            levels = max(len(torch.unique(x)) for x in got.reshape(-1, g))
            if levels > 2 ** bits:
                return fb.fail(f"a group of {g} holds {levels} distinct values; {bits} bits give at most {2 ** bits}")
            return fb.fail(f"bits={bits}, group_size={g}: " + _rtn_mistake(W, got, bits, g))
    return fb.note("same grid as sparselib.quantize's RTN on every case: zero groups, all-positive groups, "
                   "outliers, 3, 4 and 8 bits")
