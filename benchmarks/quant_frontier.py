"""Sparsity × quantization on SmolLM2: perplexity against bytes per weight for every combination, the
joint SparseGPT+GPTQ pass against the two orders of doing it separately, and the Q4_1 trap.

Writes sparselib/results/quant_frontier_smollm2.json; chapter "Smaller: sparsity meets quantization"
loads it and re-runs one point live (on the first 4,096 test tokens, which every point also records).
Each point: the recipe applied to the dense model, perplexity on the standard Brown slice and on its
first 4,096 tokens, bytes per weight from the storage model (sparselib.storage), the zeros, the time.
Resumable: points already in the file are skipped unless --redo. About 40 min on 2 idle cores.

    .venv/bin/python benchmarks/quant_frontier.py [--only NAME ...] [--redo]
"""
from __future__ import annotations

import argparse
import os
import time
from datetime import datetime, timezone

import torch

import sparselib
from sparselib.course.results import protocol_inputs, resume_result
from sparselib.storage import Storage, linear_shapes, model_bytes, other_params

NAME = "quant_frontier_smollm2"
SHORT = 4096  # tokens of the cheap live check
PROTOCOL = dict(model="smollm2-135m", calib="brown", nsamples=32, seqlen=256, seed=0,
                eval_tokens=sparselib.EVAL_TOKENS, eval_seqlen=sparselib.EVAL_SEQLEN, short_tokens=SHORT,
                scale_dtype="float16", blocksize=128, percdamp=0.01)
G = 64  # SmolLM2's hidden size, 576, is 4.5 × 128: the largest power-of-two group that divides it is 64


# A recipe is applied to the dense model: recipe(model, calib, tokenizer).
def q(bits, group_size=G, symmetric=True, method="gptq", **options):
    return lambda m, c, t: sparselib.quantize(m, bits, group_size=group_size, symmetric=symmetric, method=method,
                                              calib=c, progress=False, **options)


def joint(pattern, bits, group_size=G):
    return lambda m, c, t: sparselib.prune(m, "sparsegpt", pattern, c, wbits=bits, group_size=group_size,
                                           progress=False)


def then(*steps):
    def run(m, c, t):
        for step in steps:
            step(m, c, t)
    return run


def prune(method, pattern):
    return lambda m, c, t: sparselib.prune(m, method, pattern, c, progress=False)


def slice_(fraction):
    return lambda m, c, t: sparselib.slice_model(m, c, fraction, progress=False)


def with_windows(nsamples, recipe):
    """``recipe`` calibrated on ``nsamples`` windows of the protocol's text and seed instead."""
    return lambda m, c, t: recipe(m, sparselib.calibration_data(t, PROTOCOL["calib"], nsamples, PROTOCOL["seqlen"],
                                                                 PROTOCOL["seed"]), t)


def S(name, bits=16, group_size=G, symmetric=True, sparsity=None):
    density = 0.5 if sparsity else 1.0
    return Storage(name, bits=bits, group_size=group_size if bits < 16 else None, symmetric=symmetric,
                   sparsity=sparsity, density=density)


# name -> (recipe, storage, group). Groups: "frontier" (the plot), "rtn" (the same grids without
# data), "order" (joint vs sequential), "trap" (grids on GGUF Q4_1 weights), "gptq" (its options and its
# calibration size). The frontier points come first: an interrupted run is useful.
POINTS = {
    "fp16": (lambda m, c, t: None, S("fp16"), "frontier"),
    "gptq int8": (q(8, None), S("int8", 8, None), "frontier"),
    "gptq int4 g64": (q(4), S("int4 g64", 4), "frontier"),
    "gptq int4 g32": (q(4, 32), S("int4 g32", 4, 32), "frontier"),
    "gptq int3 g64": (q(3), S("int3 g64", 3), "frontier"),
    "sparsegpt 2:4": (prune("sparsegpt", "2:4"), S("2:4 fp16", sparsity="2:4"), "frontier"),
    "sparsegpt 2:4 + int8": (joint("2:4", 8, None), S("2:4 + int8", 8, None, sparsity="2:4"), "frontier"),
    "sparsegpt 2:4 + int4 g64": (joint("2:4", 4), S("2:4 + int4 g64", 4, sparsity="2:4"), "frontier"),
    "sparsegpt 50% + int4 g64": (joint(0.5, 4), S("50% + int4 g64", 4, sparsity="bitmask"), "frontier"),
    "slicegpt 25%": (slice_(0.25), S("fp16"), "frontier"),
    # the sliced width, 432, is not a multiple of 64: one grid per row
    "slicegpt 25% + int4": (then(slice_(0.25), q(4, None)), S("int4 per-channel", 4, None), "frontier"),
    "gptq int4": (q(4, None), S("int4 per-channel", 4, None), "frontier"),
    "rtn int8": (q(8, None, method="rtn"), S("int8", 8, None), "rtn"),
    "rtn int4 g64": (q(4, method="rtn"), S("int4 g64", 4), "rtn"),
    "rtn int4": (q(4, None, method="rtn"), S("int4 per-channel", 4, None), "rtn"),
    "rtn int3 g64": (q(3, method="rtn"), S("int3 g64", 3), "rtn"),
    # joint vs the two orders (SparseGPT 2:4 and int4 g64 in all three)
    "prune, then gptq (2:4, int4 g64)": (then(prune("sparsegpt", "2:4"), q(4)),
                                         S("2:4 + int4 g64", 4, sparsity="2:4"), "order"),
    # quantize first: SparseGPT's updates then move kept weights off the grid, so they are rounded again
    "gptq, then prune, then rtn (int4 g64, 2:4)": (then(q(4), prune("sparsegpt", "2:4"), q(4, method="rtn")),
                                                   S("2:4 + int4 g64", 4, sparsity="2:4"), "order"),
    "wanda 2:4, then gptq int4 g64": (then(prune("wanda", "2:4"), q(4)), S("2:4 + int4 g64", 4, sparsity="2:4"),
                                      "order"),
    # the trap: the weights came from GGUF Q4_1 (blocks of 32 inputs, a scale and a minimum each)
    "rtn int4 g32 asym": (q(4, 32, False, "rtn"), S("int4 g32 asym", 4, 32, False), "trap"),
    "rtn int4 g32": (q(4, 32, True, "rtn"), S("int4 g32", 4, 32), "trap"),
    # GPTQ's own options, and its calibration size (4× the windows: 128 × 256 tokens, seed 0)
    "gptq int4 g64, act-order + static groups": (q(4, act_order=True, static_groups=True), S("int4 g64", 4), "gptq"),
    "gptq int4 g64, 128 windows": (with_windows(128, q(4)), S("int4 g64", 4), "gptq"),
}


def q4_1_round_trip(W: torch.Tensor) -> torch.Tensor:
    """GGUF Q4_1's own rule on blocks of 32 inputs: ``min + d · round((w − min) / d)``, ``d = (max − min)/15``
    (float16 ``d`` and ``min``, as the file stores them). Not sparselib's grid: its zero point is a float."""
    X = W.float().reshape(W.shape[0], -1, 32)
    lo, hi = X.amin(-1, keepdim=True), X.amax(-1, keepdim=True)
    d = ((hi - lo) / 15).half().float()
    lo = lo.half().float()
    return (lo + d * torch.round((X - lo) / d.clamp_min(1e-30)).clamp(0, 15)).reshape(W.shape)


def trap_facts(model) -> dict:
    """How the dense weights sit on Q4_1's grid: distinct values per block of 32, and the round trip."""
    most = blocks = at_most_16 = 0
    err = 0.0
    for layer in sparselib.decoder_layers(model):
        for module in sparselib.layer_linears(layer).values():
            W = module.weight.detach()
            distinct = (W.reshape(-1, 32).sort(-1).values.diff(dim=-1) != 0).sum(-1) + 1
            most = max(most, int(distinct.max()))
            blocks += distinct.numel()
            at_most_16 += int((distinct <= 16).sum())
            err = max(err, float((q4_1_round_trip(W) - W).abs().max() / W.abs().max()))
    return {"blocks_of_32": blocks, "blocks_with_at_most_16_values": at_most_16, "most_values_in_a_block": most,
            "q4_1_round_trip_max_relative_change": err}


def run_point(model, tok, dense_state, calib, test, name, dense_weights):
    recipe, storage, group = POINTS[name]
    model.load_state_dict(dense_state)
    load = os.getloadavg()[0]
    t = time.perf_counter()
    recipe(model, calib, tok)
    seconds = time.perf_counter() - t
    bytes_ = model_bytes(linear_shapes(model), other_params(model), storage, dense_weights=dense_weights)
    point = {"group": group, "storage": storage.name, "bits": storage.bits, "group_size": storage.group_size,
             "symmetric": storage.symmetric, "sparsity_format": storage.sparsity,
             "bytes_per_weight": bytes_["bytes_per_weight"], "model_bytes": bytes_["model"],
             "model_bytes_per_weight": bytes_["model_bytes_per_weight"], "zeros": sparselib.model_sparsity(model),
             "seconds": seconds, "load_average_before": load}
    point["perplexity"] = sparselib.perplexity(model, test, seqlen=PROTOCOL["eval_seqlen"], progress=False)
    point["perplexity_short"] = sparselib.perplexity(model, test[:, :SHORT], seqlen=PROTOCOL["eval_seqlen"],
                                                     progress=False)
    point["date_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return point


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(POINTS), metavar="NAME", help="run these points")
    parser.add_argument("--redo", action="store_true", help="re-measure points already in the file")
    args = parser.parse_args()

    model, tok, calib, test, dense_state = protocol_inputs(PROTOCOL)
    shapes, other = linear_shapes(model), other_params(model)
    dense_weights = sum(r * c for r, c in shapes)
    result = resume_result(NAME, PROTOCOL)
    result["provenance"] = sparselib.provenance("benchmarks/quant_frontier.py", **PROTOCOL)
    result.setdefault("trap", trap_facts(model))
    result["dense_weights"], result["other_params"] = dense_weights, other
    sparselib.save_result(NAME, result)
    for name in POINTS:
        if (args.only and name not in args.only) or (name in result["points"] and not args.redo):
            continue
        fresh = sparselib.load_model(PROTOCOL["model"])[0] if "slice" in name else model  # slicing reshapes it
        point = run_point(fresh, tok, dense_state, calib, test, name, dense_weights)
        result["points"][name] = point
        sparselib.save_result(NAME, result)  # after every point: an interrupted run keeps its work
        print(f"{name:>45}  ppl {point['perplexity']:8.2f}  {point['bytes_per_weight']:.3f} B/w  "
              f"{point['seconds']:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
