"""Chapter 8, 2:4 on the hardware: reading a 2:4 metadata byte, and placing the recorded H200 points on
the roofline."""
from __future__ import annotations

import itertools

import torch

from ...format24 import compress_24
from .. import roofline
from ..results import gpu_runs
from ._answers import call, close, need_function, number
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
    """Your ``fn(out_features, in_features, tokens, ms, sparse)`` -> ``(flop_per_byte, tflop_per_s)``:
    one recorded fp16 linear placed on the roofline (FLOPs of the dense product, compulsory bytes),
    checked on every point of the recorded H200 run."""
    need_function(fn, "check_roofline(place)")
    run = next((r for r in gpu_runs() if r["provenance"].get("gpu") in roofline.PEAKS), None)
    if run is None:
        raise RuntimeError("no recorded GPU run with published peaks in sparselib/results/")
    points = roofline.recorded_points(run)
    for p in sorted(points, key=lambda p: p["path"] != "cuda_graph"):   # the kernels' own times first
        shape = (p["out_features"], p["in_features"], p["tokens"], p["ms"], p["kind"] == "2:4")
        got = call(fb, fn, *shape)
        if got is None:
            return fb
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            return fb.fail(f"return two numbers, (FLOPs per byte, TFLOP/s); got {got!r}")
        intensity, tflop_s = number(got[0], "flop_per_byte"), number(got[1], "tflop_per_s")
        if close(intensity, p["intensity"], 1e-3) and close(tflop_s, p["tflop_s"], 1e-3):
            continue
        where = (f"{p['out_features']}x{p['in_features']} at T={p['tokens']}, {p['kind']}, {p['ms']} ms "
                 f"({'from a CUDA graph' if p['path'] == 'cuda_graph' else 'eager'})")
        return fb.fail(f"{where}: you placed it at {intensity:.4g} FLOP/byte, {tflop_s:.4g} TFLOP/s; "
                       f"expected {p['intensity']:.4g} and {p['tflop_s']:.4g}. "
                       + _roofline_mistake(p, intensity, tflop_s))
    _roofline_findings(fb, points, run)


def _roofline_mistake(p: dict, intensity: float, tflop_s: float) -> str:
    """The usual reason a placed point is off, read from the ratios to the right values."""
    o, i, t, sparse = p["out_features"], p["in_features"], p["tokens"], p["kind"] == "2:4"
    act = 2 * t * (i + o)
    r_flops = tflop_s / p["tflop_s"]
    for ratio, why in ((1e3, "the time is in milliseconds: seconds = ms × 1e-3"),
                       (1e-3, "the time is in milliseconds: seconds = ms × 1e-3"),
                       (1e12, "report TFLOP/s: FLOP/s / 1e12"),
                       (1e9, "report TFLOP/s (FLOP/s / 1e12) with the time in seconds (ms × 1e-3)"),
                       (1e15, "report TFLOP/s (FLOP/s / 1e12) with the time in seconds (ms × 1e-3)")):
        if close(r_flops, ratio, 1e-3):
            return why
    if close(r_flops, 0.5, 1e-3):
        if sparse:
            return ("count the FLOPs of the dense product, 2·T·in·out, for 2:4 too: the datasheet's "
                    "'with sparsity' peak counts them that way, so a 2:4 kernel at its ceiling shows twice "
                    "the dense rate")
        return "a multiply-add is 2 FLOPs: 2·T·in·out"
    flops = p["flops"]
    if close(flops / intensity, p["bytes"] - act, 1e-3):
        return "count the activations too: X [T, in] is read and Y [T, out] written, 2 bytes per value"
    if sparse and close(flops / intensity, act + 2 * o * i / 2, 1e-3):
        return "the 2:4 weight keeps 4.5 of every 8 bytes (values plus 2-bit positions), not half"
    if sparse and close(flops / intensity, act + 2 * o * i, 1e-3):
        return "the 2:4 weight is stored compressed: 4.5 of every 8 dense bytes"
    if close(flops / intensity, 2 * p["bytes"], 1e-3):
        return "fp16 is 2 bytes per value, not 4"
    if close(flops / intensity, p["bytes"] / 2, 1e-3):
        return "fp16 is 2 bytes per value: count bytes, not values"
    return ("intensity = 2·T·in·out / (weight bytes + 2·T·in + 2·T·out); TFLOP/s = 2·T·in·out / "
            "(ms·1e-3) / 1e12")


def _roofline_findings(fb, points, run):
    """What the placed points say, in numbers (the exercise's questions)."""
    graph = [p for p in points if p["path"] == "cuda_graph"]
    big = max({(p["out_features"], p["in_features"]) for p in graph}, key=lambda s: s[0] * s[1])
    prov = run["provenance"]
    fb.note(f"right on all {len(points)} recorded points of the run on the {prov['gpu']} "
            f"({prov['date_utc'][:10]})")
    for tokens in (min(p["tokens"] for p in graph), max(p["tokens"] for p in graph)):
        d, s = (roofline.point(points, *big, tokens, "cuda_graph", k) for k in ("dense", "2:4"))
        line = f"{big[0]}x{big[1]} at T={tokens}, from a CUDA graph: "
        if d["bound"] == s["bound"] == "memory":
            line += (f"both left of their ridge (bound by memory); dense moves {d['tb_s']:.2f} TB/s "
                     f"({d['of_bandwidth']:.0%} of the bandwidth), 2:4 {s['tb_s']:.2f} TB/s "
                     f"({s['of_bandwidth']:.0%}); the roofline predicts {d['bytes'] / s['bytes']:.2f}x for "
                     f"2:4, the run measured {d['ms'] / s['ms']:.2f}x")
        else:
            line += (f"dense is {d['bound']}-bound at {d['of_roof']:.0%} of its roof, 2:4 {s['bound']}-bound "
                     f"at {s['of_roof']:.0%} of its own; measured {d['ms'] / s['ms']:.2f}x")
        fb.note(line)
