"""Chapter 6, Sparse Tensor Cores: reading a 2:4 metadata byte, and the roofline speed-up of 2:4."""
from __future__ import annotations

import itertools

import torch

from ...format24 import compress_24, storage_bytes
from ._answers import call, need_function, number
from .registry import checker

_BYTE = 0b11010100


def _groups_encoded_as(byte: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The kept positions of two groups of 4 that ``compress_24`` itself stores as ``byte``."""
    for first, second in itertools.product(itertools.combinations(range(4), 2), repeat=2):
        W = torch.zeros(1, 8)
        W[0, [*first, *(4 + i for i in second)]] = torch.tensor([1.0, 2.0, 3.0, 4.0])
        if int(compress_24(W).meta[0, 0]) == byte:
            return first, second
    raise RuntimeError(f"compress_24 writes no pair of 2:4 groups as {byte:#010b}")


@checker("ex-stc-meta-byte")
def check_meta_byte(fb, first_group, second_group):
    """The kept positions (two per group) you read from the byte ``0b11010100``."""
    for g, name in ((first_group, "first_group"), (second_group, "second_group")):
        if not isinstance(g, (tuple, list)) or len(g) != 2 or not all(isinstance(i, int) and 0 <= i < 4 for i in g):
            raise TypeError(f"{name} must be two positions in 0..3, e.g. (0, 2)")
    want = _groups_encoded_as(_BYTE)
    got = (tuple(first_group), tuple(second_group))
    if got == want:
        return fb.note(f"first group keeps {want[0]}, second {want[1]}")
    if got == (want[1], want[0]):
        return fb.fail("the low nibble is the first group: read the byte from its right end")
    if got == tuple(tuple(sorted(3 - i for i in g)) for g in want) or got == ((1, 0), (3, 1)):
        return fb.fail("within a nibble bits 0–1 come first (the rightmost two bits)")
    return fb.fail("split 0b11010100 into nibbles: low 0100, high 1101; in each, bits 0–1 are the first "
                   "kept position and bits 2–3 the second")


@checker("ex-stc-roofline")
def check_roofline(fb, fn):
    """Your ``fn(T)`` -> the model's 2:4 speed-up for the 4096 × 11008 fp16 layer at ``T`` tokens with
    R = 150 (peak FLOP/s over bytes/s)."""
    need_function(fn, "check_roofline(model_speedup)")
    out_f, in_f, R = 4096, 11008, 150.0
    meta = storage_bytes(out_f, in_f, torch.float16)
    ratio = meta["total"] / meta["dense"]  # 4.5 / 8, from the format itself

    def want(T):
        dense = max(2 * T * in_f * out_f / R, 2 * (in_f * out_f + T * in_f + T * out_f))
        sparse = max(T * in_f * out_f / R, 2 * (in_f * out_f * ratio + T * in_f + T * out_f))
        return dense / sparse

    for T in (1, 16, 128, 256, 1024, 8192):
        got = call(fb, fn, T)
        if got is None:
            return fb
        got = number(got, f"fn({T})")
        if abs(got - want(T)) <= 1e-3 * want(T):
            continue
        if T == 1 and abs(got - 2.0) < 0.05:
            return fb.fail("fn(1) ≈ 2: at one token the layer is bound by the bytes it reads, and 2:4 "
                           "keeps 4.5 of 8 bytes of weights, not half")
        return fb.fail(f"fn({T}) = {got:.4f}, expected {want(T):.4f}: time = max(FLOPs / R, bytes), "
                       f"2:4 halves the FLOPs and keeps {ratio} of the weight bytes")
    fb.note(f"speed-up {want(1):.2f}× at T=1, {want(8192):.2f}× at T=8192")
