"""2:4 vs dense fp16 on a GPU with Sparse Tensor Cores: one linear, then whole models; eager and fast path.

    python benchmarks/semi_structured.py            # about 4-6 minutes on an H100/H200 (budget: 8)
    python benchmarks/semi_structured.py --check    # correctness only, about 1-2 minutes; writes nothing

The full run writes ONE new file, ``sparselib/results/semi_structured_gpu_<UTC time>_<gpu>.json``
(atomically, after each part, so a run cut short keeps what it measured); older runs stay beside it.
Its ``provenance`` names the GPU, compute capability, torch, CUDA, cuSPARSELt, the backend and kernel.

1. One linear (SmolLM2, Llama-2-7B, Llama-3-8B, Llama-70B shapes; 1 to 8192 tokens): ``nn.Linear``
   vs ``sparselib.SparseLinear24``, eager and replayed from a CUDA graph (``sparselib.fast_inference``);
   cuSPARSELt's two output layouts and its own algorithm search (``torch._cslt_sparse_mm_search``);
   ``torch.compile(mode="reduce-overhead")`` on one shape.
2. Whole models, dense (2:4-masked ``nn.Linear``) vs converted (``to_semi_structured``): SmolLM2-135M
   (the real model when the offline package is installed, else its real config with random weights,
   labelled), Llama-2-7B- and Llama-3-8B-shaped models with random fp16 weights (labelled random:
   speed does not depend on the values). Per model: the check (logits vs the masked dense model,
   top-1 agreement, ``generate`` at batch 1/16/64), prefill 1x2048 and 8x2048 (last-token logits,
   as ``generate`` computes them) eager and from a CUDA graph, decode with ``generate`` at batch
   1/16/64 (eager, dynamic KV cache) and one decode step with a static KV cache, eager and graphed.

``--check`` runs only the checks (SmolLM2 and the 7B shape) and exits 1 if one fails. On a machine
without 2:4 kernels it prints why and exits 0 without writing anything.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import inspect
import json
import re
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sparselib  # noqa: E402
from sparselib.io import write_atomically  # noqa: E402
from sparselib.semistructured import (CuSparseLtKernel24, SparseLinear24, _decide,  # noqa: E402
                                      benchmark_linear, can_use_sparse_kernels, fast_inference,
                                      to_semi_structured)

#: (model, linear, out_features, in_features)
SHAPES = [
    ("SmolLM2-135M", "q/o_proj", 576, 576),
    ("SmolLM2-135M", "gate/up_proj", 1536, 576),
    ("SmolLM2-135M", "down_proj", 576, 1536),
    ("Llama-2-7B", "q/k/v/o_proj", 4096, 4096),
    ("Llama-2-7B", "gate/up_proj", 11008, 4096),
    ("Llama-2-7B", "down_proj", 4096, 11008),
    ("Llama-3-8B", "gate/up_proj", 14336, 4096),
    ("Llama-3-8B", "down_proj", 4096, 14336),
    ("Llama-70B", "gate/up_proj", 28672, 8192),
    ("Llama-70B", "down_proj", 8192, 28672),
]
TOKENS = [1, 16, 256, 2048, 8192]
LAYOUT_POINTS = [(11008, 4096, 2048), (4096, 11008, 8192)]   # cuSPARSELt output: fused transpose vs copy
COMPILE_POINT = (11008, 4096, 2048)

#: whole models. SmolLM2-135M's real config; the other two: the public configs' shapes.
MODELS = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0,
                         max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True),
    "llama2-7b-shape": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                            num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                            max_position_embeddings=4096, rms_norm_eps=1e-5),
    "llama3-8b-shape": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                            num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                            rope_theta=500000.0, max_position_embeddings=8192, rms_norm_eps=1e-5),
}
PREFILL = [(1, 2048), (8, 2048)]
DECODE_BATCHES, PROMPT, NEW_TOKENS, STEP_CONTEXT = (1, 16, 64), 64, 16, 512
CHECK_IDS, TOP1_MIN, LOGIT_RTOL = (4, 256), 0.99, 0.05
DEVICE = "cuda"


# --------------------------------------------------------------------------------------------
# Bookkeeping
# --------------------------------------------------------------------------------------------
class Budget:
    """Seconds left of the run's budget; parts that would not fit are skipped and say so."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def write_atomic(path: Path, data: dict) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8"),
                     overwrite=True)


def provenance(reason: str, backend: str) -> dict:
    major, minor = torch.cuda.get_device_capability()
    version = getattr(torch.backends.cusparselt, "version", lambda: None)
    try:
        cusparselt = version() if torch.backends.cusparselt.is_available() else None
    except Exception:  # noqa: BLE001 - a version query must not stop the run
        cusparselt = None
    prov = sparselib.provenance(
        "benchmarks/semi_structured.py", dtype="float16", shapes=SHAPES, tokens=TOKENS, prefill=PREFILL,
        decode_batches=list(DECODE_BATCHES), prompt_tokens=PROMPT, new_tokens=NEW_TOKENS,
        decode_step_context=STEP_CONTEXT, check_ids=list(CHECK_IDS), top1_min=TOP1_MIN,
        logit_rtol=LOGIT_RTOL, pruning="magnitude 2:4 (speed does not depend on the kept values)",
        timing="median of synchronised wall times (torch.utils.benchmark for one linear)")
    prov.update(capability=f"{major}.{minor}", cusparselt=cusparselt, backend=backend, backend_reason=reason)
    return prov


def seconds(fn, repeats: int = 5) -> float:
    """Median wall time of ``fn()`` with the GPU synchronised, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def free():
    gc.collect()
    torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# Part 1: one linear
# --------------------------------------------------------------------------------------------
def linear_grid(budget: Budget, min_run_time: float, log, kernel="auto") -> list[dict]:
    rows = []
    print(f"{'model':<13} {'linear':<13} {'out':>6} {'in':>6} {'tokens':>6} {'eager x':>8} {'graph x':>8}"
          f"  (dense/2:4 ms eager; graph)", flush=True)
    for model, linear, out_f, in_f in SHAPES:
        for tokens in TOKENS:
            if budget.left() < 300:
                log("linear grid", f"stopped at {out_f}x{in_f} T={tokens}: time budget")
                return rows
            try:
                r = benchmark_linear(out_f, in_f, tokens, min_run_time=min_run_time, kernel=kernel)
            except Exception as err:  # noqa: BLE001 - one failing point must not lose the rest
                log(f"linear {out_f}x{in_f} T={tokens}", repr(err))
                free()
                continue
            base = {"model": model, "linear": linear, "out_features": out_f, "in_features": in_f,
                    "tokens": tokens, "backend": r["backend"], "kernel": r["kernel"],
                    "max_abs_diff": r["max_abs_diff"]}
            rows.append({**base, "path": "eager", "dense_ms": r["dense_ms"], "sparse_ms": r["sparse_ms"],
                         "speedup": r["speedup"]})
            rows.append({**base, "path": "cuda_graph", "dense_ms": r["graph_dense_ms"],
                         "sparse_ms": r["graph_sparse_ms"], "speedup": r["graph_speedup"]})
            print(f"{model:<13} {linear:<13} {out_f:>6} {in_f:>6} {tokens:>6} {r['speedup']:>7.2f}x "
                  f"{r['graph_speedup']:>7.2f}x  ({r['dense_ms']:.4f}/{r['sparse_ms']:.4f}; "
                  f"{r['graph_dense_ms']:.4f}/{r['graph_sparse_ms']:.4f})", flush=True)
        free()
    return rows


def layout_probe(min_run_time: float, log) -> tuple[list[dict], bool]:
    """cuSPARSELt writing [tokens, out] itself (fused transpose) vs [out, tokens] and one copy."""
    rows, totals = [], {True: 0.0, False: 0.0}
    for out_f, in_f, tokens in LAYOUT_POINTS:
        for fused in (True, False):
            try:
                r = benchmark_linear(out_f, in_f, tokens, min_run_time=min_run_time,
                                     kernel=CuSparseLtKernel24(fused_transpose=fused))
            except Exception as err:  # noqa: BLE001
                log(f"layout fused_transpose={fused} {out_f}x{in_f}", repr(err))
                totals[fused] = float("inf")
                continue
            totals[fused] += r["graph_sparse_ms"]
            rows.append({"out_features": out_f, "in_features": in_f, "tokens": tokens,
                         "fused_transpose": fused, "eager_ms": r["sparse_ms"], "graph_ms": r["graph_sparse_ms"],
                         "max_abs_diff": r["max_abs_diff"]})
            print(f"layout {out_f}x{in_f} T={tokens} fused_transpose={fused}: eager {r['sparse_ms']:.4f} ms, "
                  f"graph {r['graph_sparse_ms']:.4f} ms", flush=True)
    fused = totals[True] <= totals[False]
    print(f"-> models use fused_transpose={fused}", flush=True)
    for out_f, in_f, tokens in LAYOUT_POINTS:  # does cuSPARSELt's own algorithm search help?
        try:
            W = torch.randn(out_f, in_f, device="cuda", dtype=torch.float16)
            W = W * sparselib.nm_mask(W.abs(), 2, 4)
            X = torch.randn(tokens, in_f, device="cuda", dtype=torch.float16)
            alg = int(torch._cslt_sparse_mm_search(torch._cslt_compress(W), X.t(), transpose_result=fused))
            r = benchmark_linear(out_f, in_f, tokens, min_run_time=min_run_time,
                                 kernel=CuSparseLtKernel24(fused_transpose=fused, alg_id=alg))
        except Exception as err:  # noqa: BLE001
            log(f"algorithm search {out_f}x{in_f}", repr(err)[:300])
            continue
        rows.append({"out_features": out_f, "in_features": in_f, "tokens": tokens, "fused_transpose": fused,
                     "alg_id": alg, "eager_ms": r["sparse_ms"], "graph_ms": r["graph_sparse_ms"],
                     "max_abs_diff": r["max_abs_diff"]})
        print(f"searched alg_id {alg} {out_f}x{in_f} T={tokens}: eager {r['sparse_ms']:.4f} ms, "
              f"graph {r['graph_sparse_ms']:.4f} ms", flush=True)
    free()
    return rows, fused


def compile_probe(log) -> list[dict]:
    """torch.compile(mode="reduce-overhead") on one linear, dense and 2:4, against the CUDA graph."""
    out_f, in_f, tokens = COMPILE_POINT
    W = torch.randn(out_f, in_f, device="cuda", dtype=torch.float16)
    W = W * sparselib.nm_mask(W.abs(), 2, 4)
    X = torch.randn(tokens, in_f, device="cuda", dtype=torch.float16)
    dense = torch.nn.Linear(in_f, out_f, bias=False, device="cuda", dtype=torch.float16)
    dense.weight.data.copy_(W)
    rows, backend = [], _decide("cuda", None, torch.float16)[2]
    for label, module in (("dense", dense), ("2:4", SparseLinear24(W, None, backend))):
        try:
            torch._dynamo.reset()
            start = time.perf_counter()
            compiled = torch.compile(module, mode="reduce-overhead", dynamic=False)
            with torch.inference_mode():
                for _ in range(3):  # compile, then record the graph, then replay
                    compiled(X)
                torch.cuda.synchronize()
                setup_s = time.perf_counter() - start
                ms = seconds(lambda: compiled(X), 20) * 1e3
            rows.append({"module": label, "out_features": out_f, "in_features": in_f, "tokens": tokens,
                         "compiled_ms": ms, "compile_and_capture_s": setup_s})
            print(f"torch.compile reduce-overhead {label} {out_f}x{in_f} T={tokens}: {ms:.4f} ms per call "
                  f"(compile + capture {setup_s:.1f} s)", flush=True)
        except Exception as err:  # noqa: BLE001
            log(f"torch.compile {label}", repr(err)[:500])
    torch._dynamo.reset()
    return rows


# --------------------------------------------------------------------------------------------
# Part 2: whole models
# --------------------------------------------------------------------------------------------
def build(name: str, log):
    """(model on the GPU in fp16, weights label). The real SmolLM2 when it can be loaded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if name == "smollm2-135m":
        try:
            model, _ = sparselib.load_model(device=DEVICE)
            return model.half().eval(), "real (SmolLM2-135M-Instruct, offline GGUF)"
        except Exception as err:  # noqa: BLE001 - e.g. the offline package is not installed there
            log("smollm2-135m real weights", f"not available ({err!r:.200}); using its config with random weights")
    config = LlamaConfig(**MODELS[name])
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        torch.manual_seed(0)
        with torch.device(DEVICE):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(before)
    return model.half().eval(), "random (fp16, std 0.02; the real model's shapes)"


def mask_24(model) -> None:
    """Magnitude 2:4 on every decoder-layer linear, in place (what sparselib.prune's magnitude does)."""
    with torch.no_grad():
        for layer in sparselib.decoder_layers(model):
            for module in sparselib.layer_linears(layer).values():
                W = module.weight
                W.mul_(sparselib.nm_mask(W.abs(), 2, 4).to(W.dtype))


def ids(batch: int, seqlen: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    return torch.randint(0, vocab, (batch, seqlen), device=DEVICE, generator=g)


def generate(model, prompt, new_tokens):
    return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)


def static_cache(model, batch: int, length: int):
    from transformers import StaticCache

    params = inspect.signature(StaticCache.__init__).parameters
    kwargs = {"config": model.config, "max_cache_len": length}
    for key, value in (("max_batch_size", batch), ("batch_size", batch), ("device", DEVICE),
                       ("dtype", torch.float16)):
        if key in params:
            kwargs[key] = value
    return StaticCache(**kwargs)


def decode_step(model, batch: int, graphs: bool) -> dict:
    """ms per decode step with a static KV cache holding STEP_CONTEXT tokens, eager or from a CUDA graph."""
    vocab = model.config.vocab_size
    cache = static_cache(model, batch, STEP_CONTEXT + 64)
    with torch.inference_mode():
        model(ids(batch, STEP_CONTEXT, vocab), past_key_values=cache, use_cache=True,
              cache_position=torch.arange(STEP_CONTEXT, device=DEVICE), logits_to_keep=1)
        token = ids(batch, 1, vocab, seed=1)
        position = torch.tensor([STEP_CONTEXT], device=DEVICE)
        inputs = {"input_ids": token, "past_key_values": cache, "cache_position": position,
                  "use_cache": True, "logits_to_keep": 1}
        # Every timed step writes the same cache slot: the work per step is that of a real step.
        if not graphs:
            return {"ms": seconds(lambda: model(**inputs), 10) * 1e3}
        start = time.perf_counter()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                model(**inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model(**inputs)
        torch.cuda.synchronize()
        capture_s = time.perf_counter() - start
        return {"ms": seconds(graph.replay, 20) * 1e3, "capture_s": capture_s}


def measure(model, label: str, budget: Budget, log, tag: str) -> dict:
    """Every timing for one state of the model (dense or 2:4); each failure is recorded, not fatal."""
    vocab, out = model.config.vocab_size, {}
    for batch, seqlen in PREFILL:
        x = ids(batch, seqlen, vocab)
        key = f"prefill {batch}x{seqlen}"
        try:
            with torch.inference_mode():
                out[(key, "eager")] = {"ms": seconds(lambda: model(x, use_cache=False, logits_to_keep=1)) * 1e3}
            graphed = fast_inference(model, {"input_ids": x, "logits_to_keep": 1}, clone_outputs=False)
            info = graphed.captures[0]
            out[(key, "cuda_graph")] = {"ms": seconds(lambda: graphed.replay(input_ids=x, logits_to_keep=1,
                                                                              use_cache=False)) * 1e3,
                                        "capture_s": info["capture_s"], "graph_memory_mib": info["memory_bytes"] / 2**20}
            del graphed
        except Exception as err:  # noqa: BLE001
            log(f"{label} {tag} {key}", repr(err)[:500])
        free()
    for batch in DECODE_BATCHES:
        key = f"decode b{batch}"
        if budget.left() < 60:
            log(f"{label} {tag} {key}", "skipped: time budget")
            continue
        prompt = ids(batch, PROMPT, vocab, seed=2)
        try:
            with torch.inference_mode():
                generate(model, prompt, 2)  # warm-up
                s = seconds(lambda: generate(model, prompt, NEW_TOKENS), 1)
            out[(key, "eager generate")] = {"ms": s * 1e3, "tok_s": batch * NEW_TOKENS / s}
        except Exception as err:  # noqa: BLE001
            log(f"{label} {tag} {key} generate", repr(err)[:500])
        for graphs, path in ((False, "eager step"), (True, "cuda_graph step")):
            try:
                out[(key, path)] = decode_step(model, batch, graphs)
            except Exception as err:  # noqa: BLE001
                log(f"{label} {tag} {key} {path}", repr(err)[:500])
        free()
    return out


def check(dense_logits, sparse_logits, dense_tokens: dict, model, log) -> dict:
    diff = (sparse_logits - dense_logits).abs()
    max_logit = dense_logits.abs().max().item()
    result = {"tokens": dense_logits.shape[0] * dense_logits.shape[1], "max_abs_diff": diff.max().item(),
              "max_abs_logit": max_logit,
              "top1_agreement": (sparse_logits.argmax(-1) == dense_logits.argmax(-1)).float().mean().item()}
    result["logits_ok"] = (result["top1_agreement"] >= TOP1_MIN
                           and result["max_abs_diff"] <= LOGIT_RTOL * max(max_logit, 1.0))
    result["generate"] = {}
    for batch, want in dense_tokens.items():
        try:
            with torch.inference_mode():
                got = generate(model, want[:, :PROMPT], 8)
            result["generate"][batch] = {"ok": tuple(got.shape) == (batch, PROMPT + 8),
                                         "token_agreement_with_dense": (got == want).float().mean().item()}
        except Exception as err:  # noqa: BLE001
            result["generate"][batch] = {"ok": False, "error": repr(err)[:500]}
    result["ok"] = result["logits_ok"] and all(g["ok"] for g in result["generate"].values())
    print(f"check: max |Δlogit| {result['max_abs_diff']:.4g} (max |logit| {max_logit:.3g}), top-1 agreement "
          f"{result['top1_agreement']:.4f}; generate "
          + ", ".join(f"b{b}: {'ok' if g['ok'] else 'FAILED ' + g.get('error', '')}"
                      for b, g in result["generate"].items()) + f" -> {'PASS' if result['ok'] else 'FAIL'}",
          flush=True)
    return result


def end_to_end(name: str, budget: Budget, log, kernel, timings: bool) -> tuple[dict, list[dict]]:
    model, weights = build(name, log)
    label = f"{name} ({weights.split(' ')[0]} weights)"
    mask_24(model)
    vocab = model.config.vocab_size
    x = ids(*CHECK_IDS, vocab, seed=3)
    with torch.inference_mode():
        dense_logits = model(x, use_cache=False).logits.float()
        dense_tokens = {b: generate(model, ids(b, PROMPT, vocab, seed=4), 8) for b in DECODE_BATCHES}
    dense = measure(model, label, budget, log, "dense") if timings else {}
    start = time.perf_counter()
    converted, reason, n = to_semi_structured(model, kernel=kernel)
    convert_s = time.perf_counter() - start
    print(f"\n{label}: {reason} ({convert_s:.1f} s)", flush=True)
    info = {"model": name, "weights": weights, "converted": converted, "n_converted": n, "reason": reason,
            "convert_s": convert_s}
    if not converted:
        return info, []
    with torch.inference_mode():
        sparse_logits = model(x, use_cache=False).logits.float()
        graphed = fast_inference(model, {"input_ids": x})
        graph_logits = graphed(input_ids=x).logits.float()
        del graphed
    info["check"] = check(dense_logits, sparse_logits, dense_tokens, model, log)
    info["check"]["graph_vs_eager_max_abs_diff"] = (graph_logits - sparse_logits).abs().max().item()
    del dense_logits, sparse_logits, graph_logits
    free()
    rows = []
    if timings:
        sparse = measure(model, label, budget, log, "2:4")
        for key in sorted(set(dense) | set(sparse)):
            phase, path = key
            d, s = dense.get(key, {}), sparse.get(key, {})
            row = {"model": name, "weights": weights.split(" ")[0], "phase": phase.split(" ")[0],
                   "what": phase, "path": path, "dense_ms": d.get("ms"), "sparse_ms": s.get("ms"),
                   "speedup": d["ms"] / s["ms"] if d.get("ms") and s.get("ms") else None}
            m = re.match(r"prefill (\d+)x(\d+)", phase) or re.match(r"decode b(\d+)", phase)
            row["batch"] = int(m.group(1))
            if phase.startswith("prefill"):
                row["seqlen"] = int(m.group(2))
            elif "generate" in path:
                row.update(new_tokens=NEW_TOKENS, prompt=PROMPT, dense_tok_s=d.get("tok_s"),
                           sparse_tok_s=s.get("tok_s"))
            else:
                row["context"] = STEP_CONTEXT
            for side, values in (("dense", d), ("sparse", s)):
                for extra in ("capture_s", "graph_memory_mib"):
                    if extra in values:
                        row[f"{side}_{extra}"] = values[extra]
            rows.append(row)
            sp = f"{row['speedup']:.2f}x" if row["speedup"] else "—"
            print(f"{label:<28} {phase:<16} {path:<16} dense {row['dense_ms'] or float('nan'):>9.3f} ms  "
                  f"2:4 {row['sparse_ms'] or float('nan'):>9.3f} ms  {sp}", flush=True)
        # The fast path against what a user runs today: 2:4 from a CUDA graph vs dense eager.
        for batch, seqlen in PREFILL:
            key = f"prefill {batch}x{seqlen}"
            if (key, "eager") in dense and (key, "cuda_graph") in sparse:
                speed = dense[(key, "eager")]["ms"] / sparse[(key, "cuda_graph")]["ms"]
                rows.append({"model": name, "weights": weights.split(" ")[0], "phase": "prefill", "what": key,
                             "path": "2:4 cuda_graph vs dense eager", "batch": batch, "seqlen": seqlen,
                             "dense_ms": dense[(key, "eager")]["ms"], "sparse_ms": sparse[(key, "cuda_graph")]["ms"],
                             "speedup": speed})
    del model
    free()
    return info, rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "sparselib" / "results",
                        help="directory for the new semi_structured_gpu_<time>_<gpu>.json")
    parser.add_argument("--check", action="store_true", help="only the correctness checks; write nothing")
    parser.add_argument("--budget", type=float, default=450, help="seconds for the whole run (default 450)")
    parser.add_argument("--min-run-time", type=float, default=0.05,
                        help="seconds of timing per variant per linear grid point (default 0.05)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {list(MODELS)}")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")

    ok, reason = can_use_sparse_kernels()
    if not ok:
        print(f"no 2:4 measurements on this machine: {reason}. Nothing written.")
        return 0
    _, _, backend = _decide("cuda", None, torch.float16)
    budget, start = Budget(args.budget), time.perf_counter()
    prov = provenance(reason, backend)
    print(f"{reason}\n{ {k: prov.get(k) for k in ('gpu', 'capability', 'torch', 'cuda', 'cusparselt')} }",
          flush=True)
    failures = []

    def log(what, error):
        failures.append({"what": what, "error": error})
        print(f"  ! {what}: {error}", flush=True)

    if args.check:
        results = [end_to_end(name, budget, log, "auto", timings=False)[0]
                   for name in models if name in ("smollm2-135m", "llama2-7b-shape")]
        passed = all(r.get("check", {}).get("ok") for r in results)
        print(f"\ncheck {'PASSED' if passed else 'FAILED'} in {time.perf_counter() - start:.0f} s; nothing written")
        return 0 if passed else 1

    gpu = re.sub(r"[^a-z0-9]+", "-", prov["gpu"].lower()).strip("-")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    path = args.out / f"semi_structured_gpu_{stamp}_{gpu}.json"
    run = {"provenance": prov, "linear": [], "layout": [], "compile": [], "models": [], "end_to_end": [],
           "failures": failures}

    def save(part):
        run["provenance"]["seconds"] = round(time.perf_counter() - start, 1)
        write_atomic(path, run)
        print(f"[{part}] wrote {path} ({run['provenance']['seconds']:.0f} s)", flush=True)

    kernel = "auto"
    if backend == "cusparselt":
        run["layout"], fused = layout_probe(args.min_run_time, log)
        kernel = CuSparseLtKernel24(fused_transpose=fused)
    prov["kernel"] = repr(kernel)
    run["linear"] = linear_grid(budget, args.min_run_time, log, kernel)
    save("linear")
    for name in models:
        if budget.left() < 90:
            log(name, "skipped: time budget")
            continue
        try:
            info, rows = end_to_end(name, budget, log, kernel, timings=True)
        except Exception as err:  # noqa: BLE001 - record it and go on to the next model
            log(name, "".join(traceback.format_exception_only(err)).strip()[:800])
            free()
            continue
        run["models"].append(info)
        run["end_to_end"].extend(rows)
        save(name)
    if budget.left() > 60:
        run["compile"] = compile_probe(log)
    save("done")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
