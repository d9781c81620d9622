"""Chapter 1, the landscape: what an N:M format stores, and where CSR starts to pay."""
from __future__ import annotations

import math

import torch

from ...format24 import nm_storage_bytes
from ._answers import call, close, need_function, number
from .registry import checker


#: A dtype of each size, for the byte counts of the N:M format
_DTYPE_OF_SIZE = {1: torch.int8, 2: torch.float16, 4: torch.float32}


def _named_slip(got: float, want: float, n: int, m: int, b: int) -> str | None:
    """The usual slip that gives ``fn(n, m, b) = got`` instead of ``want``, if it is one of them."""
    if close(got, 100 * want, 1e-9):
        return "return a fraction (0.4375), not a percentage"
    if close(got, n / m, 1e-9):
        return (f"fn({n}, {m}, {b}) = {got}: that ignores the metadata; each kept value also stores its "
                f"position, ceil(log2(m)) bits")
    if (n, m, b) == (2, 4, 2) and close(got, 0.375, 1e-9):
        return ("0.375 for 2:4 fp16 is the figure that charges 4 bits of metadata per kept value "
                "(or int8's saving); the format stores 2 bits per kept value: "
                "(2·2 B + 2·2 bit) / 8 B = 4.5/8, so 43.75% saved")
    return None


@checker("ex-landscape-48")
def check_nm_saving(fb, fn):
    """Your ``fn(n, m, bytes_per_value)`` -> fraction of memory saved."""
    need_function(fn, "check_nm_saving(nm_saving)")
    # the format's own byte count (64 columns: every row's position bits fill whole bytes)
    cases = {(n, m, b): nm_storage_bytes(64, 64, _DTYPE_OF_SIZE[b], n, m)["saving"]
             for n, m, b in ((2, 4, 2), (2, 4, 1), (4, 8, 2), (1, 4, 2), (8, 16, 4))}
    for (n, m, b), want in cases.items():
        got = call(fb, fn, n, m, b)
        if got is None:
            return fb
        got = number(got, f"fn({n}, {m}, {b})")
        if close(got, want, 1e-9):
            continue
        slip = _named_slip(got, want, n, m, b)
        fb.fail(slip or f"fn({n}, {m}, {b}) = {got:.6f}, expected {want:.6f} (kept values × (bytes + "
                        f"ceil(log2 m) bits), over m × bytes)")
        if slip:  # a named slip explains every case; the others are listed
            return fb
    if fb.passed:
        fb.note("2:4 fp16 saves 43.75%, 4:8 fp16 40.625%: longer indices cost more than the larger group buys")


@checker("ex-landscape-bits")
def check_group_code_saving(fb, saving):
    """The fp16 saving of 2:4 with one 3-bit code per group of 4."""
    got = number(saving, "saving")
    bits = math.ceil(math.log2(math.comb(4, 2)))
    want = 1 - (2 * 2 + bits / 8) / 8
    if close(got, want, 1e-9):
        return fb.note(f"{bits} bits encode the {math.comb(4, 2)} patterns: 4 + 3/8 of 8 bytes, {want:.4%} saved")
    if close(got, 100 * want, 1e-9):
        return fb.fail("return a fraction, not a percentage")
    if close(got, 0.4375, 1e-9):
        return fb.fail("0.4375 is the 2-bits-per-kept-value format (4 bits per group); the question "
                       "asks for one 3-bit code per group")
    if close(got, 0.5, 1e-9):
        return fb.fail("0.5 leaves out the metadata; the group still needs its 3-bit code")
    return fb.fail(f"{got} is not it: a group of 4 fp16 values (8 bytes) keeps 2 values (4 bytes) "
                   f"plus ceil(log2 C(4,2)) bits")


@checker("ex-landscape-breakeven")
def check_breakeven(fb, speedups: dict, breakeven):
    """Your measured CSR speedups ``{sparsity: speedup}`` and the sparsity you conclude CSR starts to
    win at. Timings are your machine's; the checker tests consistency."""
    if not isinstance(speedups, dict) or len(speedups) < 2:
        raise TypeError("speedups must be a dict {sparsity: measured speedup} with at least two entries")
    pts = sorted((number(s, "a sparsity"), number(v, "a speedup")) for s, v in speedups.items())
    if any(not 0 < s < 1 or v <= 0 for s, v in pts):
        raise ValueError("sparsities must be in (0, 1) and speedups positive (dense time / CSR time)")
    b = number(breakeven, "breakeven")
    # CSR time ≈ k × (kept fraction) × dense time, so each point estimates k = 1 / ((1 - s) · speedup)
    ks = [1 / ((1 - s) * v) for s, v in pts]
    k = sum(ks) / len(ks)
    fb.note("cost of a kept weight in CSR relative to dense, per point: "
            + ", ".join(f"{s:.0%}: k = {kk:.1f}" for (s, _), kk in zip(pts, ks)))
    if max(ks) > 1.5 * min(ks):
        fb.note("your k estimates disagree by more than 1.5×: time with more repeats (median_seconds) "
                "and on an idle machine")
    predicted = 1 - 1 / k
    if abs(b - predicted) > 0.03:
        fb.fail(f"your break-even {b:.0%} is far from where your own measurements cross 1×, about "
                f"{predicted:.0%} (= 1 - 1/k with k = {k:.1f})")
    else:
        fb.note(f"consistent: your measurements cross 1× near {predicted:.0%}")
