"""2:4 vs dense fp16 on a GPU with Sparse Tensor Cores: the acceptance figures first, every part hang-proof.

    python benchmarks/semi_structured.py                      # the full run: at most 8 minutes (--budget 480)
    python benchmarks/semi_structured.py --preflight          # <= 60 s: which kernel modes work here
    python benchmarks/semi_structured.py --check              # correctness only (SmolLM2, 7B shape)
    python benchmarks/semi_structured.py --preflight --check  # what the GPU CI job runs
    python benchmarks/semi_structured.py --list               # the plan: parts, order, time limits

Every part runs in its own subprocess with its own time limit. A part that hangs is killed and
recorded as ``timed_out``, one that crashes as ``failed`` with its error and the tail of its stderr;
the run goes on with the next part. A part saves each row as it measures it, so a part cut short
keeps its finished rows. The full run writes ONE new file,
``<--out>/semi_structured_gpu_<UTC time>_<gpu>.json`` (default ``sparselib/results/``), rewritten
atomically after every part: a run killed at any moment leaves every finished part on disk. Its
``provenance`` names the GPU, compute capability, torch, CUDA, cuSPARSELt, the kernel picked by the
preflight, the budget and each part's limit; ``parts`` says how each part ended.

The order puts the acceptance figures first (targets: 7B-shaped prefill 8x2048 >= 1.15x dense end to
end, one linear >= 1.3x at >= 2048 tokens, top-1 agreement, ``generate`` at batch 1/16/64):

 1. preflight           one small and one 7B-sized linear with each kernel mode (cuSPARSELt non-fused,
                        fused transpose, searched alg_id; CUTLASS on sm_8x; PyTorch's stock subclass),
                        the product against dense, and a CUDA graph of the default mode. It picks the
                        kernel of every later part: the non-fused cuSPARSELt layout unless it failed.
 2. prefill_7b          Llama-2-7B-shaped model (random fp16 weights), prefill 8x2048: dense vs 2:4
                        (per linear; fused projections; fused + transposed MLP layout), eager and
                        from a CUDA graph; then 1x2048 if time is left.
 3. linear_grid         one linear, 7B/8B/70B shapes at 2048, 8192 and 16384 tokens: dense, sparselib,
                        PyTorch's stock to_sparse_semi_structured side by side, eager and graph, and
                        the cost of the non-fused layout's output copy.
 4. check_7b            logits vs the masked dense model (top-1 agreement counted where the dense
                        top-1 margin exceeds the fp16 noise level; the raw figure kept), generate at
                        batch 1/16/64, one graph replay == eager, fused == unfused projections.
 5. prefill_7b_fused_transpose  the mode the earlier run could not finish, in its own process.
 6. decode_7b           one decode step with a static KV cache (batch 1/16/64), eager and graphed;
                        generate at batch 16 (the known-slow sparse eager generate only there).
 7. llama3_8b           Llama-3-8B-shaped: check and prefill.
 8. smollm2             SmolLM2-135M (real weights when the offline package is installed): check,
                        prefill, decode.
 9. linear_small        SmolLM2 shapes and small token counts (1, 16, 256).
10. host_cost           per call on one linear: eager, searched alg_id, CUDA-graph replay,
                        torch.compile "reduce-overhead" and "max-autotune-no-cudagraphs".
11. compile             torch.compile of a whole (4-layer, 7B-shaped) model, both modes, vs graph.

Timed forwards run under ``torch.nn.attention.sdpa_kernel([CUDNN, FLASH, EFFICIENT])``, so attention
falling back to the math path raises instead of passing silently, and q/k/v outputs are checked to
have stride 1 (contiguous when not fused). The headline compares best with best: the faster of
eager/graph for dense against the faster for 2:4.

On a machine without 2:4 kernels, the full run prints why and writes nothing; ``--preflight`` and
``--check`` run there with the reference kernel on CPU stand-ins (small shapes and 2-layer models),
through the same subprocess machinery, and print what they would do on a GPU.
"""
from __future__ import annotations

import argparse
import collections
import copy
import datetime as dt
import gc
import inspect
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

STARTED = time.monotonic()   # the budget counts from here: torch's import included

import torch  # noqa: E402

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE.parent)]

import sparselib  # noqa: E402
from subprocess_parts import Budget, Part, Recorder, run_parts, write_json  # noqa: E402
from sparselib.semistructured import (CuSparseLtKernel24, FastPathUnavailable, SparseLinear24,  # noqa: E402
                                      SparseSlice24, _compress, _decide, fast_inference, to_semi_structured)

# --------------------------------------------------------------------------------------------
# What is measured
# --------------------------------------------------------------------------------------------
#: (model, linear, out_features, in_features): the acceptance grid's shapes
ACCEPTANCE_SHAPES = [
    ("Llama-2-7B", "q/k/v/o_proj", 4096, 4096),
    ("Llama-2-7B", "gate/up_proj", 11008, 4096),
    ("Llama-2-7B", "down_proj", 4096, 11008),
    ("Llama-2-7B", "gate+up fused", 22016, 4096),
    ("Llama-3-8B", "gate/up_proj", 14336, 4096),
    ("Llama-3-8B", "down_proj", 4096, 14336),
    ("Llama-70B", "gate/up_proj", 28672, 8192),
    ("Llama-70B", "down_proj", 8192, 28672),
]
ACCEPTANCE_TOKENS = [2048, 8192, 16384]       # 16384 = the 8x2048 prefill's tokens
SMALL_SHAPES = [
    ("SmolLM2-135M", "q/o_proj", 576, 576),
    ("SmolLM2-135M", "gate/up_proj", 1536, 576),
    ("SmolLM2-135M", "down_proj", 576, 1536),
    ("Llama-2-7B", "q/k/v/o_proj", 4096, 4096),
    ("Llama-2-7B", "gate/up_proj", 11008, 4096),
]
SMALL_TOKENS = [1, 16, 256, 2048]
PREFLIGHT_SHAPES = [(576, 576, 64), (11008, 4096, 2048)]
CPU_PREFLIGHT_SHAPES = [(576, 576, 64), (2752, 1024, 16)]   # the 7B-sized one scaled down 4x per side

#: whole models: SmolLM2-135M's real config; the others: the public configs' shapes (random weights)
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
#: on a machine without 2:4 kernels, --check builds this 2-layer stand-in for every model
CPU_STANDIN = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=128, max_position_embeddings=512, tie_word_embeddings=True)
COMPILE_LAYERS = 4           # the whole-model torch.compile part uses a 4-layer 7B-shaped model
COMPILE_MODES = ("reduce-overhead", "max-autotune-no-cudagraphs")
HOST_COST_POINTS = [(11008, 4096, 16), (11008, 4096, 2048)]

VARIANTS = {                 # 2:4 conversions measured end to end: to_semi_structured keyword arguments
    "2:4": {},
    "2:4 fused projections": {"fuse_projections": True},
    "2:4 fused projections, transposed MLP": {"fuse_projections": True, "mlp_layout": "transposed"},
}
PREFILL_ACCEPTANCE, PREFILL_MORE = (8, 2048), (1, 2048)
DECODE_BATCHES, PROMPT, NEW_TOKENS, STEP_CONTEXT = (1, 16, 64), 64, 16, 512
DECODE_SLOTS = 64            # spare static-cache slots: 11 eager steps + 3 warm-up, 1 capture, 21 replays
CHECK_IDS, CPU_CHECK_IDS = (4, 256), (2, 64)
TOP1_MIN, LOGIT_RTOL, MIN_DECISIVE = 0.99, 0.05, 64
TARGETS = {"prefill_7b_8x2048": 1.15, "linear_at_2048_plus": 1.3, "top1": TOP1_MIN}
DEFAULT_BUDGET = 480
KILL_GRACE_S = 15


# --------------------------------------------------------------------------------------------
# The parts and their limits
# --------------------------------------------------------------------------------------------
def _part(name, function, limit_s, min_s, context=None, needs="kernel") -> Part:
    return Part(name, f"{HERE}:{function}", limit_s, min_s, dict(context or {}), needs)


def full_run() -> list[Part]:
    seven = {"model": "llama2-7b-shape"}
    return [
        _part("preflight", "part_preflight", 60, 20, needs=None),
        _part("prefill_7b", "part_prefill", 150, 40, {**seven, "variants": list(VARIANTS), "more": True}),
        _part("linear_grid", "part_linear", 120, 20,
              {"shapes": ACCEPTANCE_SHAPES, "tokens": ACCEPTANCE_TOKENS, "grid": "acceptance"}),
        _part("check_7b", "part_check", 90, 40, seven),
        _part("prefill_7b_fused_transpose", "part_prefill", 60, 30,
              {**seven, "variants": ["2:4"], "kernel_override": {"fused_transpose": True}}, needs="fused_transpose"),
        _part("decode_7b", "part_decode", 90, 30, seven),
        _part("llama3_8b", "part_model", 150, 60, {"model": "llama3-8b-shape"}),
        _part("smollm2", "part_model", 90, 30, {"model": "smollm2-135m", "decode": True}),
        _part("linear_small", "part_linear", 60, 15, {"shapes": SMALL_SHAPES, "tokens": SMALL_TOKENS, "grid": "small"}),
        _part("host_cost", "part_host_cost", 60, 20),
        _part("compile", "part_compile", 240, 60),
    ]


def check_run(preflight: bool) -> list[Part]:
    parts = [_part("preflight", "part_preflight", 60, 20, needs=None)] if preflight else []
    return parts + [_part("check_smollm2", "part_check", 120, 30, {"model": "smollm2-135m"}),
                    _part("check_7b", "part_check", 120, 40, {"model": "llama2-7b-shape"})]


# --------------------------------------------------------------------------------------------
# What the run file says at the top: end-to-end pairs and the headline, best against best
# --------------------------------------------------------------------------------------------
def end_to_end(timings: list[dict]) -> list[dict]:
    """Dense vs each 2:4 variant for every (model, what): per path, and best of eager/graph for each side."""
    groups = collections.defaultdict(dict)
    for r in timings:
        if r.get("ms"):
            groups[(r["model"], r["what"])][(r["variant"], r["path"])] = r
    rows = []
    for (model, what), cells in groups.items():
        dense = {path: r for (variant, path), r in cells.items() if variant == "dense"}
        for variant in sorted({v for v, _ in cells if v != "dense"}):
            sparse = {path: r for (v, path), r in cells.items() if v == variant}
            pairs = [(path, dense[path], sparse[path]) for path in sorted(set(dense) & set(sparse))]
            if dense and sparse:
                pairs.append(("best", min(dense.values(), key=lambda r: r["ms"]),
                              min(sparse.values(), key=lambda r: r["ms"])))
            for path, d, s in pairs:
                base = {k: d[k] for k in ("model", "weights", "phase", "what", "batch", "seqlen") if k in d}
                rows.append({**base, "path": path, "variant": variant, "dense_path": d["path"],
                             "sparse_path": s["path"], "dense_ms": d["ms"], "sparse_ms": s["ms"],
                             "speedup": d["ms"] / s["ms"]})
    return rows


def headline(run: dict) -> dict:
    """The acceptance figures, each best against best, with its target and whether it is met."""
    out = {}
    prefill = [r for r in run.get("end_to_end", []) if r["model"] == "llama2-7b-shape"
               and r["what"] == "prefill 8x2048" and r["path"] == "best"]
    if prefill:
        best = max(prefill, key=lambda r: r["speedup"])
        out["prefill_7b_8x2048"] = {
            "speedup": best["speedup"], "variant": best["variant"], "dense_ms": best["dense_ms"],
            "sparse_ms": best["sparse_ms"], "dense_path": best["dense_path"], "sparse_path": best["sparse_path"],
            "by_variant": {r["variant"]: r["speedup"] for r in prefill},
            "target": TARGETS["prefill_7b_8x2048"], "met": best["speedup"] >= TARGETS["prefill_7b_8x2048"]}
    grid = [r for r in run.get("linear", []) if r.get("path") == "best" and r["tokens"] >= 2048
            and r.get("grid") == "acceptance"]
    if grid:
        worst = min(grid, key=lambda r: r["speedup"])
        out["linear_at_2048_plus"] = {
            "min": worst["speedup"], "min_at": f"{worst['out_features']}x{worst['in_features']} T={worst['tokens']}",
            "median": statistics.median(r["speedup"] for r in grid), "points": len(grid),
            "points_met": sum(r["speedup"] >= TARGETS["linear_at_2048_plus"] for r in grid),
            "target": TARGETS["linear_at_2048_plus"]}
    for check in run.get("checks", []):
        out.setdefault("checks", {})[check["model"]] = {
            k: check.get(k) for k in ("ok", "top1_decisive", "top1_raw", "decisive_tokens", "noise",
                                      "max_abs_diff", "generate_ok")}
    return out


def derive(run: dict) -> None:
    run["end_to_end"] = end_to_end(run.get("timings", []))
    run["headline"] = headline(run)


# --------------------------------------------------------------------------------------------
# Helpers the parts share
# --------------------------------------------------------------------------------------------
def device_of(ctx) -> torch.device:
    return torch.device(ctx.get("device", "cuda"))


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def seconds(fn, repeats: int = 5, device="cuda") -> float:
    """Median wall time of ``fn()`` with the device synchronised, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_ms(fn, min_run_time: float) -> float:
    from torch.utils.benchmark import Timer

    return Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median * 1e3


def host_ms(fn, calls: int = 20, device="cuda") -> float:
    """Median time the host spends in one call (no synchronisation inside: the launch, not the kernel)."""
    fn()
    sync(device)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        sync(device)
    return statistics.median(times) * 1e3


def attention_guard():
    """Fused attention or an error: the math fallback (what a transposed q/k/v caused on the recorded
    run) is not allowed inside."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])


def make_kernel(ctx, override: dict | None = None):
    """The kernel the preflight picked (``ctx["kernel"]``), or the reference kernel on CPU."""
    spec = {"name": ctx.get("backend") or "cusparselt", **ctx.get("kernel", {}), **(override or {})}
    if device_of(ctx).type != "cuda" or spec.get("name") == "reference":
        return "reference"
    if spec.get("name") == "cutlass":
        return "cutlass"
    return CuSparseLtKernel24(fused_transpose=spec.get("fused_transpose", False), alg_id=spec.get("alg_id", 0))


def random_24(out_f: int, in_f: int, device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    W = torch.randn(out_f, in_f, device=device, dtype=torch.float16, generator=g)
    return W * sparselib.nm_mask(W.abs(), 2, 4)


def build(name: str, ctx, rec: Recorder | None = None, layers: int | None = None):
    """``(model in fp16 with SDPA attention, weights label)``: the real SmolLM2 when it loads, else the
    config's shapes with random weights; on CPU the 2-layer stand-in."""
    from transformers import LlamaConfig, LlamaForCausalLM

    device = device_of(ctx)
    if ctx.get("standin"):
        config, label = dict(CPU_STANDIN), "random (CPU stand-in: 2 layers, hidden 64)"
    else:
        if name == "smollm2-135m":
            try:
                model, _ = sparselib.load_model(device=str(device))
                return model.half().eval(), "real (SmolLM2-135M-Instruct, offline GGUF)"
            except Exception as err:  # noqa: BLE001 - e.g. the offline package is not installed there
                if rec:
                    rec.note(f"SmolLM2 real weights not available ({err!r:.150}); its config with random weights")
        config, label = dict(MODELS[name]), "random (fp16, the real model's shapes)"
        if layers:
            config["num_hidden_layers"] = layers
            label += f", {layers} layers"
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM._from_config(LlamaConfig(**config), attn_implementation="sdpa")
    finally:
        torch.set_default_dtype(before)
    return model.half().eval(), label


def mask_24(model) -> None:
    """Magnitude 2:4 on every decoder-layer linear, in place (what sparselib.prune's magnitude does)."""
    with torch.no_grad():
        for layer in sparselib.decoder_layers(model):
            for module in sparselib.layer_linears(layer).values():
                module.weight.mul_(sparselib.nm_mask(module.weight.abs(), 2, 4).to(module.weight.dtype))


def ids(batch: int, seqlen: int, vocab: int, device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randint(0, vocab, (batch, seqlen), device=device, generator=g)


def generate(model, prompt, new_tokens):
    return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)


def cache_keyword(model) -> str:
    """transformers 5 calls the KV cache argument ``cache``; 4.x ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def static_cache(model, batch: int, length: int, device):
    from transformers import StaticCache

    params = inspect.signature(StaticCache.__init__).parameters
    kwargs = {"config": model.config, "max_cache_len": length}
    for key, value in (("max_batch_size", batch), ("batch_size", batch), ("device", device),
                       ("dtype", torch.float16)):
        if key in params:
            kwargs[key] = value
    return StaticCache(**kwargs)


def projection_layout(model, x) -> dict:
    """One forward with hooks on layer 0's q/k/v: their outputs must have stride 1 (and be contiguous
    unless fused), or attention leaves its fused kernels. Raises AssertionError otherwise."""
    layer = sparselib.decoder_layers(model)[0]
    names = sparselib.adapter_for(model).attn_inputs
    seen, hooks = {}, []
    for name in names:
        module = layer.get_submodule(name)

        def hook(mod, inputs, out, name=name):
            seen[name] = {"contiguous": out.is_contiguous(), "last_stride": out.stride(-1),
                          "fused": isinstance(mod, SparseSlice24)}
        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            model(x[:1, :64], use_cache=False, logits_to_keep=1)
    finally:
        for h in hooks:
            h.remove()
    bad = [n for n, s in seen.items() if s["last_stride"] != 1 or not (s["contiguous"] or s["fused"])]
    assert not bad, f"q/k/v outputs without stride 1 / contiguity: {bad} {seen}"
    return seen


# --------------------------------------------------------------------------------------------
# Correctness: logits, the top-1 rule, generate
# --------------------------------------------------------------------------------------------
def fp16_noise(dense_logits: torch.Tensor, rowwise_logits: torch.Tensor) -> float:
    """The dense model's own fp16 noise on these logits: the largest change when only the batching
    (hence the GEMM tiling and summation order) changes, at least one fp16 ulp at the largest logit."""
    ulp = torch.finfo(torch.float16).eps * dense_logits.abs().max().item()
    return max((dense_logits - rowwise_logits).abs().max().item(), ulp)


def top1_agreement(dense_logits: torch.Tensor, sparse_logits: torch.Tensor, noise: float) -> dict:
    """Top-1 agreement, raw and counted only where the dense top-1 beats its runner-up by more than
    ``2 * noise`` (two logits each off by up to ``noise`` can swap below that: a near tie, not an error)."""
    top2 = dense_logits.float().topk(2, dim=-1).values
    margin = top2[..., 0] - top2[..., 1]
    agree = sparse_logits.argmax(-1) == dense_logits.argmax(-1)
    decisive = margin > 2 * noise
    n = int(decisive.sum())
    return {"top1_raw": agree.float().mean().item(), "decisive_tokens": n, "tokens": agree.numel(),
            "top1_decisive": agree[decisive].float().mean().item() if n else None, "noise": noise,
            "margin_threshold": 2 * noise}


def logits_verdict(dense_logits, sparse_logits, noise: float) -> dict:
    """The check on logits: max |Δ| within LOGIT_RTOL of the largest logit, and top-1 agreement >= TOP1_MIN
    over at least MIN_DECISIVE decisive tokens (fewer: inconclusive, not passed)."""
    diff = (sparse_logits.float() - dense_logits.float()).abs().max().item()
    biggest = dense_logits.abs().max().item()
    out = {"max_abs_diff": diff, "max_abs_logit": biggest, **top1_agreement(dense_logits, sparse_logits, noise)}
    top1 = out["top1_decisive"]
    out["top1_ok"] = out["decisive_tokens"] >= MIN_DECISIVE and top1 is not None and top1 >= TOP1_MIN
    if out["decisive_tokens"] < MIN_DECISIVE:
        out["top1_note"] = f"inconclusive: {out['decisive_tokens']} decisive tokens (< {MIN_DECISIVE})"
    out["logits_ok"] = out["top1_ok"] and diff <= LOGIT_RTOL * max(biggest, 1.0)
    return out


# --------------------------------------------------------------------------------------------
# The parts
# --------------------------------------------------------------------------------------------
def _modes(ctx) -> list[tuple[str, dict]]:
    """The kernel modes the preflight tries, default first (a hang in a later one keeps its row)."""
    backend = ctx.get("backend")
    if device_of(ctx).type != "cuda":
        return [("reference", {"name": "reference"})]
    if backend == "cutlass":
        return [("cutlass", {"name": "cutlass"}), ("stock subclass", {"name": "stock"})]
    return [("cusparselt non-fused (default)", {"name": "cusparselt", "fused_transpose": False}),
            ("cusparselt searched alg_id", {"name": "cusparselt", "fused_transpose": False, "alg_id": "search"}),
            ("stock subclass", {"name": "stock"}),
            ("cusparselt fused transpose", {"name": "cusparselt", "fused_transpose": True})]


def _layer_for(mode: dict, W, X, ctx):
    """``(callable X -> Y, kernel spec actually used)`` for one preflight mode."""
    if mode["name"] == "stock":
        Ws = _compress(W, ctx.get("backend", "cusparselt"))
        return (lambda X: torch.nn.functional.linear(X, Ws)), mode
    spec = dict(mode)
    if spec.get("alg_id") == "search":
        spec["alg_id"] = int(torch._cslt_sparse_mm_search(torch._cslt_compress(W), X.t()))
    layer = SparseLinear24(W, None, make_kernel(ctx, spec))
    return layer, spec


def part_preflight(rec: Recorder, ctx) -> None:
    """Each kernel mode on one small and one 7B-sized linear: does it run, and equal dense?"""
    device = device_of(ctx)
    shapes = PREFLIGHT_SHAPES if device.type == "cuda" else CPU_PREFLIGHT_SHAPES
    for out_f, in_f, tokens in shapes:
        W = random_24(out_f, in_f, device)
        X = torch.randn(tokens, in_f, device=device, dtype=torch.float16)
        with torch.inference_mode():
            want = torch.nn.functional.linear(X, W).float()
        tol = 1e-2 * want.abs().max().item() + 1e-2
        for label, mode in _modes(ctx):
            row = {"mode": label, "out_features": out_f, "in_features": in_f, "tokens": tokens}
            try:
                start = time.perf_counter()
                layer, spec = _layer_for(mode, W, X, ctx)
                with torch.inference_mode():
                    got = layer(X).float()
                    sync(device)
                row.update(spec=spec, first_call_s=time.perf_counter() - start,
                           max_abs_diff=(got - want).abs().max().item(), tolerance=tol)
                row["ok"] = row["max_abs_diff"] <= tol
                if isinstance(layer, SparseLinear24):
                    row["graph"] = _graph_check(layer, X, got)
            except Exception as err:  # noqa: BLE001 - one mode failing is what the preflight is for
                row.update(ok=False, error="".join(traceback.format_exception_only(err)).strip()[:500])
            rec.row("preflight", row)
            print(f"preflight {out_f}x{in_f} T={tokens} {label}: "
                  + ("ok" if row["ok"] else "FAILED") + f" (max |Δ| {row.get('max_abs_diff', float('nan')):.3g}"
                  + (f"; graph {row['graph']}" if "graph" in row else "") + (f"; {row['error']}" if "error" in row
                                                                             else "") + ")", flush=True)
            free()


def _graph_check(layer, X, eager) -> str:
    try:
        graphed = fast_inference(layer, X)
    except FastPathUnavailable:
        return "not on CPU (on a GPU: captured once, replay compared with eager)"
    with torch.inference_mode():
        diff = (graphed(X).float() - eager).abs().max().item()
    return f"replay max |Δ| vs eager {diff:.3g}, {len(graphed.captures)} capture"


def part_prefill(rec: Recorder, ctx) -> None:
    """Prefill (last-token logits, as generate computes them), dense vs each 2:4 variant, eager and graph."""
    device = device_of(ctx)
    model, weights = build(ctx["model"], ctx, rec)
    mask_24(model)
    shapes = [tuple(s) for s in ctx.get("prefill", [PREFILL_ACCEPTANCE] + ([PREFILL_MORE] if ctx.get("more") else []))]
    kernel = make_kernel(ctx, ctx.get("kernel_override"))
    label = {"model": ctx["model"], "weights": weights.split(" ")[0]}
    suffix = " fused_transpose" if ctx.get("kernel_override") else ""
    for i, (batch, seqlen) in enumerate(shapes):
        if not suffix:                      # the fused-transpose part pairs with the dense rows already taken
            time_prefill(rec, model, "dense", label, batch, seqlen, device, repeats=ctx.get("repeats", 5))
        for variant in ctx["variants"] if i == 0 else ["2:4"]:
            if not rec.need(30, f"{variant}{suffix} prefill {batch}x{seqlen}"):
                continue
            try:
                sparse = copy.deepcopy(model)
                start = time.perf_counter()
                to_semi_structured(sparse, kernel=kernel, **VARIANTS[variant])
                convert_s = time.perf_counter() - start
                layout = projection_layout(sparse, ids(1, 64, model.config.vocab_size, device))
                time_prefill(rec, sparse, variant + suffix, label, batch, seqlen, device, repeats=ctx.get("repeats", 5),
                             extra={"convert_s": convert_s, "kernel": repr(kernel), "qkv_layout": layout})
            except Exception as err:  # noqa: BLE001
                rec.failure(f"{ctx['model']} {variant}{suffix} prefill {batch}x{seqlen}", err)
            sparse = None
            free()


def time_prefill(rec, model, variant, label, batch, seqlen, device, repeats=5, extra=None) -> None:
    x = ids(batch, seqlen, model.config.vocab_size, device)
    base = {**label, "phase": "prefill", "what": f"prefill {batch}x{seqlen}", "batch": batch, "seqlen": seqlen,
            "variant": variant, **(extra or {})}
    paths = ("eager", "cuda_graph") if device.type == "cuda" else ("eager",)
    for path in paths:
        if not rec.need(12, f"{variant} prefill {batch}x{seqlen} {path}"):
            continue
        try:
            with torch.inference_mode(), attention_guard():
                if path == "eager":
                    result = {"ms": seconds(lambda: model(x, use_cache=False, logits_to_keep=1), repeats, device) * 1e3}
                else:
                    result = graph_timing(model, {"input_ids": x, "logits_to_keep": 1}, repeats, device)
            row = {**base, "path": path, **result, "tok_s": batch * seqlen / result["ms"] * 1e3}
            rec.row("timings", row)
            print(f"{label['model']} {variant:<40} prefill {batch}x{seqlen} {path:<10} {result['ms']:9.2f} ms",
                  flush=True)
        except Exception as err:  # noqa: BLE001 - recorded; the other rows still land
            rec.failure(f"{label['model']} {variant} prefill {batch}x{seqlen} {path}", err)
        free()


def graph_timing(model, inputs, repeats: int, device) -> dict:
    """ms per replay of a graph captured for ``inputs`` (a dict of keyword arguments or a tuple)."""
    graphed = fast_inference(model, inputs, clone_outputs=False)
    replay = graphed.replayer(**inputs) if isinstance(inputs, dict) else graphed.replayer(*inputs)
    ms = seconds(replay, repeats, device) * 1e3
    info = graphed.captures[0]
    return {"ms": ms, "capture_s": info["capture_s"], "graph_memory_mib": info["memory_bytes"] / 2**20}


class StockLinear(torch.nn.Module):
    """PyTorch's own path: ``F.linear`` on the ``to_sparse_semi_structured`` tensor subclass."""

    def __init__(self, W, backend: str):
        super().__init__()
        self.weight = _compress(W, backend)

    def forward(self, X):
        return torch.nn.functional.linear(X, self.weight)


def part_linear(rec: Recorder, ctx) -> None:
    """One linear per grid point: dense, sparselib and the stock subclass, eager and from a CUDA graph."""
    device, min_run_time, kernel = device_of(ctx), ctx.get("min_run_time", 0.05), make_kernel(ctx)
    for model, linear, out_f, in_f in [tuple(s) for s in ctx["shapes"]]:
        W = random_24(out_f, in_f, device)
        layers = {"dense": torch.nn.Linear(in_f, out_f, bias=False, device=device, dtype=torch.float16),
                  "sparse": SparseLinear24(W, None, kernel)}
        layers["dense"].weight.data.copy_(W)
        try:
            layers["stock"] = StockLinear(W, ctx.get("backend") or "cusparselt")
        except Exception as err:  # noqa: BLE001
            rec.failure(f"stock subclass {out_f}x{in_f}", err)
        for tokens in ctx["tokens"]:
            if not rec.need(6, f"linear {out_f}x{in_f} T={tokens}"):
                return
            try:
                point = linear_point(layers, in_f, out_f, tokens, device, min_run_time)
            except Exception as err:  # noqa: BLE001
                rec.failure(f"linear {out_f}x{in_f} T={tokens}", err)
                free()
                continue
            base = {"model": model, "linear": linear, "out_features": out_f, "in_features": in_f, "tokens": tokens,
                    "backend": ctx.get("backend"), "kernel": repr(kernel), "grid": ctx.get("grid"),
                    **point.pop("common")}
            for path, cell in point.items():
                rec.row("linear", {**base, "path": path, **cell})
            best = point.get("best", point["eager"])
            print(f"{model:<13} {linear:<14} {out_f:>6} {in_f:>6} T={tokens:>6}: eager {point['eager']['speedup']:.2f}x"
                  + (f", graph {point['cuda_graph']['speedup']:.2f}x" if "cuda_graph" in point else "")
                  + f", best {best['speedup']:.2f}x", flush=True)
        del layers
        free()


def linear_point(layers: dict, in_f: int, out_f: int, tokens: int, device, min_run_time: float) -> dict:
    """ms per call of each layer (eager; replayed from a graph on a GPU), the largest difference from
    dense, and the time of the copy the non-fused layout makes of its [out, tokens] output."""
    X = torch.randn(tokens, in_f, device=device, dtype=torch.float16)
    common, eager, graph = {}, {}, {}
    with torch.inference_mode():
        want = layers["dense"](X).float()
        for name, layer in layers.items():
            try:
                if name != "dense":
                    common[f"{name}_max_abs_diff"] = (layer(X).float() - want).abs().max().item()
                eager[name] = median_ms(lambda layer=layer: layer(X), min_run_time)
            except Exception as err:  # noqa: BLE001 - the stock path may not run a shape; the rest stands
                if name != "stock":
                    raise
                common["stock_error"] = repr(err)[:300]
        del want
        Y = torch.empty(out_f, tokens, device=device, dtype=torch.float16)   # the non-fused layout's output
        common["copy_ms"] = median_ms(lambda: Y.t().contiguous(), min_run_time)
    for name, layer in layers.items() if device.type == "cuda" else ():
        if name not in eager:
            continue
        try:
            graphed = fast_inference(layer, X, clone_outputs=False)
            graph[name] = median_ms(graphed.replayer(X), min_run_time)
            del graphed
        except Exception as err:  # noqa: BLE001
            if name != "stock":
                raise
            common["stock_graph_error"] = repr(err)[:300]
    out = {"common": common}
    for path, cells in (("eager", eager), ("cuda_graph", graph)):
        if cells:
            out[path] = {"dense_ms": cells["dense"], "sparse_ms": cells["sparse"],
                         "speedup": cells["dense"] / cells["sparse"]}
            if "stock" in cells:
                out[path].update(stock_ms=cells["stock"], speedup_over_stock=cells["stock"] / cells["sparse"])
    if graph:
        dense, sparse = min(eager["dense"], graph["dense"]), min(eager["sparse"], graph["sparse"])
        out["best"] = {"dense_ms": dense, "sparse_ms": sparse, "speedup": dense / sparse}
    return out


def part_check(rec: Recorder, ctx) -> None:
    """Correctness of one model: logits (top-1 rule), generate at batch 1/16/64, graph == eager,
    fused projections == unfused."""
    device = device_of(ctx)
    model, weights = build(ctx["model"], ctx, rec)
    mask_24(model)
    vocab = model.config.vocab_size
    batch, seqlen = CPU_CHECK_IDS if ctx.get("standin") else CHECK_IDS
    x = ids(batch, seqlen, vocab, device, seed=3)
    prompt_len = min(PROMPT, 8) if ctx.get("standin") else PROMPT
    with torch.inference_mode():
        dense_logits = model(x, use_cache=False).logits.float()
        rowwise = torch.cat([model(x[i:i + 1], use_cache=False).logits.float() for i in range(batch)])
        dense_tokens = {b: generate(model, ids(b, prompt_len, vocab, device, seed=4), 8) for b in DECODE_BATCHES}
    noise = fp16_noise(dense_logits, rowwise)
    fused = copy.deepcopy(model)
    converted, reason, n = to_semi_structured(model, kernel=make_kernel(ctx))
    result = {"model": ctx["model"], "weights": weights, "converted": converted, "n_converted": n,
              "reason": reason, "kernel": repr(make_kernel(ctx)), "device": str(device)}
    with torch.inference_mode():
        sparse_logits = model(x, use_cache=False).logits.float()
    result.update(logits_verdict(dense_logits, sparse_logits, noise))
    rec.set("partial_check", result)
    result["generate"] = {}
    for b, want in dense_tokens.items():
        try:
            with torch.inference_mode():
                got = generate(model, want[:, :prompt_len], 8)
            result["generate"][str(b)] = {"ok": tuple(got.shape) == (b, prompt_len + 8),
                                          "token_agreement_with_dense": (got == want).float().mean().item()}
        except Exception as err:  # noqa: BLE001
            result["generate"][str(b)] = {"ok": False, "error": repr(err)[:500]}
    result["generate_ok"] = all(g["ok"] for g in result["generate"].values())
    result["graph"] = _check_graph(model, x, sparse_logits)
    try:
        to_semi_structured(fused, kernel=make_kernel(ctx), fuse_projections=True)
        with torch.inference_mode():
            fused_logits = fused(x, use_cache=False).logits.float()
        result["fused_vs_unfused_max_abs_diff"] = (fused_logits - sparse_logits).abs().max().item()
    except Exception as err:  # noqa: BLE001
        result["fused_error"] = repr(err)[:500]
    del fused
    result["ok"] = (result["logits_ok"] and result["generate_ok"] and result["graph"].get("ok", True)
                    and "fused_error" not in result)
    rec.row("checks", result)
    print(f"check {ctx['model']}: max |Δlogit| {result['max_abs_diff']:.4g} (max |logit| "
          f"{result['max_abs_logit']:.3g}); top-1 {result['top1_raw']:.4f} raw, "
          f"{result['top1_decisive'] if result['top1_decisive'] is None else round(result['top1_decisive'], 4)} "
          f"over {result['decisive_tokens']} decisive tokens (margin > {result['margin_threshold']:.3g}); generate "
          + ", ".join(f"b{b}: {'ok' if g['ok'] else 'FAILED'}" for b, g in result["generate"].items())
          + f"; graph {result['graph'].get('note', result['graph'])} -> {'PASS' if result['ok'] else 'FAIL'}",
          flush=True)


def _check_graph(model, x, eager_logits) -> dict:
    try:
        graphed = fast_inference(model, {"input_ids": x})
    except FastPathUnavailable as err:
        return {"note": "not on CPU: " + str(err).split(";")[0] + " (on a GPU: one capture, then a plain "
                        "call must replay it and equal eager)"}
    try:
        with torch.inference_mode():
            logits = graphed(input_ids=x).logits.float()
        out = {"captures": len(graphed.captures),
               "max_abs_diff_vs_eager": (logits - eager_logits).abs().max().item()}
        out["ok"] = out["captures"] == 1 and out["max_abs_diff_vs_eager"] <= 1e-3 * max(
            eager_logits.abs().max().item(), 1.0)
        out["note"] = f"{out['captures']} capture, replay max |Δ| {out['max_abs_diff_vs_eager']:.3g}"
        return out
    except Exception as err:  # noqa: BLE001
        return {"ok": False, "error": repr(err)[:500], "note": "FAILED"}


def part_decode(rec: Recorder, ctx) -> None:
    """One decode step with a static KV cache holding STEP_CONTEXT tokens, eager and graphed, dense vs
    2:4; generate at batch 16 for both (timing the known-slow sparse eager generate only there)."""
    device = device_of(ctx)
    model, weights = build(ctx["model"], ctx, rec)
    mask_24(model)
    label = {"model": ctx["model"], "weights": weights.split(" ")[0]}
    sizes = {"context": ctx.get("step_context", STEP_CONTEXT), "batches": ctx.get("decode_batches", DECODE_BATCHES),
             "new_tokens": ctx.get("new_tokens", NEW_TOKENS), "repeats": ctx.get("repeats", 10)}
    time_decode(rec, model, "dense", label, device, **sizes)
    to_semi_structured(model, kernel=make_kernel(ctx))
    time_decode(rec, model, "2:4", label, device, **sizes)


def time_decode(rec, model, variant, label, device, context=STEP_CONTEXT, batches=DECODE_BATCHES,
                new_tokens=NEW_TOKENS, repeats=10) -> None:
    """ms per decode step with a static cache of ``context`` tokens. transformers 4.x writes the step at the
    ``cache_position`` given (each timed step rewrites one slot); transformers 5 advances the cache's own
    position tensor on the device (each step, replays included, takes the next slot), so the cache has
    DECODE_SLOTS spare slots. The attention reads the whole static cache either way: the same work per step."""
    vocab, key = model.config.vocab_size, cache_keyword(model)
    positions = "cache_position" in inspect.signature(model.forward).parameters
    for batch in batches:
        base = {**label, "phase": "decode", "what": f"decode step b{batch}", "batch": batch,
                "seqlen": context, "variant": variant}
        if not rec.need(10, f"{variant} decode b{batch}"):
            return
        try:
            cache = static_cache(model, batch, context + DECODE_SLOTS, device)
            prefill = {"cache_position": torch.arange(context, device=device)} if positions else {}
            step = {"cache_position": torch.tensor([context], device=device)} if positions else {}
            with torch.inference_mode(), attention_guard():
                model(ids(batch, context, vocab, device), **{key: cache}, use_cache=True, logits_to_keep=1,
                      **prefill)
                inputs = {"input_ids": ids(batch, 1, vocab, device, seed=1), key: cache, "use_cache": True,
                          "logits_to_keep": 1, **step}
                rec.row("timings", {**base, "path": "eager",
                                    "ms": seconds(lambda: model(**inputs), repeats, device) * 1e3})
                if device.type == "cuda":
                    rec.row("timings", {**base, "path": "cuda_graph", **graph_timing(model, inputs, 20, device)})
        except Exception as err:  # noqa: BLE001
            rec.failure(f"{label['model']} {variant} decode step b{batch}", err)
        free()
    if rec.need(30, f"{variant} generate b16"):
        try:
            prompt = ids(16, PROMPT, vocab, device, seed=2)
            with torch.inference_mode():
                generate(model, prompt, 2)
                s = seconds(lambda: generate(model, prompt, new_tokens), 1, device)
            rec.row("timings", {**label, "phase": "generate", "what": "generate b16", "batch": 16, "seqlen": PROMPT,
                                "new_tokens": new_tokens, "variant": variant, "path": "eager", "ms": s * 1e3,
                                "tok_s": 16 * new_tokens / s})
        except Exception as err:  # noqa: BLE001
            rec.failure(f"{label['model']} {variant} generate b16", err)


def part_model(rec: Recorder, ctx) -> None:
    """Another model: its check, then prefill (and decode when asked), within the part's limit."""
    part_check(rec, ctx)
    free()
    if rec.need(40, f"{ctx['model']} prefill"):
        part_prefill(rec, {**ctx, "variants": ["2:4", "2:4 fused projections"], "more": True})
    free()
    if ctx.get("decode") and rec.need(30, f"{ctx['model']} decode"):
        part_decode(rec, ctx)


def part_host_cost(rec: Recorder, ctx) -> None:
    """Per call on one linear: eager (alg 0), eager with the searched alg_id, CUDA-graph replay,
    torch.compile "reduce-overhead" and "max-autotune-no-cudagraphs"; wall ms and host ms."""
    device = device_of(ctx)
    for out_f, in_f, tokens in [tuple(p) for p in ctx.get("points", HOST_COST_POINTS)]:
        W = random_24(out_f, in_f, device)
        X = torch.randn(tokens, in_f, device=device, dtype=torch.float16)
        base = {"out_features": out_f, "in_features": in_f, "tokens": tokens}
        dense = torch.nn.Linear(in_f, out_f, bias=False, device=device, dtype=torch.float16)
        dense.weight.data.copy_(W)
        ways = {"dense eager": lambda: dense, "2:4 eager": lambda: SparseLinear24(W, None, make_kernel(ctx))}
        kernel = make_kernel(ctx)
        if isinstance(kernel, CuSparseLtKernel24):
            ways["2:4 eager, searched alg_id"] = lambda: SparseLinear24(W, None, make_kernel(ctx, {
                "alg_id": int(torch._cslt_sparse_mm_search(torch._cslt_compress(W), X.t(),
                                                           transpose_result=kernel.fused_transpose))}))
        for label, make in ways.items():
            if not rec.need(5, f"host cost {label}"):
                return
            try:
                layer = make()
                with torch.inference_mode():
                    rec.row("host_cost", {**base, "way": label, "ms": median_ms(lambda: layer(X), 0.05),
                                          "host_ms": host_ms(lambda: layer(X), device=device),
                                          "kernel": repr(getattr(layer, "kernel", "cuBLAS"))})
            except Exception as err:  # noqa: BLE001
                rec.failure(f"host cost {label} {out_f}x{in_f} T={tokens}", err)
        for label, module in (("2:4", SparseLinear24(W, None, make_kernel(ctx))), ("dense", dense)):
            try:
                graphed = fast_inference(module, X, clone_outputs=False)
                replay = graphed.replayer(X)
                rec.row("host_cost", {**base, "way": f"{label} CUDA-graph replay", "ms": median_ms(replay, 0.05),
                                      "host_ms": host_ms(replay, device=device)})
            except Exception as err:  # noqa: BLE001
                rec.failure(f"host cost {label} graph", err)
            for mode in ctx.get("compile_modes", COMPILE_MODES):
                if not rec.need(20, f"torch.compile {mode} {label}"):
                    continue
                compiled_row(rec, "host_cost", module, (X,), {**base, "way": f"{label} torch.compile {mode}"}, mode,
                             device)
        free()


def compiled_row(rec, table: str, module, args, base: dict, mode: str, device) -> None:
    """One torch.compile(mode=...) of ``module``: ms and host ms per call, and the compile time."""
    try:
        torch._dynamo.reset()
        start = time.perf_counter()
        compiled = torch.compile(module, mode=mode, dynamic=False)
        with torch.inference_mode():
            for _ in range(3):      # compile, record (reduce-overhead's graph), replay
                compiled(*args)
            sync(device)
            setup_s = time.perf_counter() - start
            rec.row(table, {**base, "ms": median_ms(lambda: compiled(*args), 0.05),
                     "host_ms": host_ms(lambda: compiled(*args), device=device), "compile_s": setup_s})
    except Exception as err:  # noqa: BLE001
        rec.failure(base["way"], err)
    finally:
        torch._dynamo.reset()


class LastLogits(torch.nn.Module):
    """A prefill as ``generate`` runs it (no cache, last-token logits), with one tensor in and out."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids, use_cache=False, logits_to_keep=1).logits


def part_compile(rec: Recorder, ctx) -> None:
    """torch.compile of a whole (4-layer, 7B-shaped) model, dense and 2:4, vs eager and CUDA graph;
    the 2:4 layers trace through sparselib's custom op and its fake implementation."""
    device = device_of(ctx)
    model, weights = build("llama2-7b-shape", ctx, rec, layers=COMPILE_LAYERS)
    mask_24(model)
    tokens = ctx.get("compile_tokens", 2048)
    x = ids(1, tokens, model.config.vocab_size, device)
    for variant in ("dense", "2:4"):
        if variant == "2:4":
            to_semi_structured(model, kernel=make_kernel(ctx))
        base = {"model": f"llama2-7b-shape, {COMPILE_LAYERS} layers", "weights": weights.split(" ")[0],
                "what": f"prefill 1x{tokens}", "variant": variant}
        wrapped = LastLogits(model)
        for way in ("eager", "CUDA graph"):
            try:
                with torch.inference_mode(), attention_guard():
                    cell = ({"ms": seconds(lambda: wrapped(x), 5, device) * 1e3} if way == "eager"
                            else graph_timing(wrapped, (x,), 5, device))
                rec.row("compile", {**base, "way": way, **cell})
            except Exception as err:  # noqa: BLE001
                rec.failure(f"compile part {variant} {way}", err)
        for mode in ctx.get("compile_modes", COMPILE_MODES):
            if rec.need(60, f"torch.compile {mode} {variant}"):
                with attention_guard():
                    compiled_row(rec, "compile", wrapped, (x,), {**base, "way": f"torch.compile {mode}"}, mode,
                                 device)
        free()


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (out.stdout.strip() + ("+changes" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(reason: str, backend: str | None, budget: float, parts: list[Part]) -> dict:
    prov = sparselib.provenance(
        "benchmarks/semi_structured.py", dtype="float16", acceptance_shapes=ACCEPTANCE_SHAPES,
        acceptance_tokens=ACCEPTANCE_TOKENS, small_shapes=SMALL_SHAPES, small_tokens=SMALL_TOKENS,
        prefill=[list(PREFILL_ACCEPTANCE), list(PREFILL_MORE)], variants=VARIANTS,
        decode_batches=list(DECODE_BATCHES), prompt_tokens=PROMPT, new_tokens=NEW_TOKENS,
        decode_step_context=STEP_CONTEXT, check_ids=list(CHECK_IDS), top1_min=TOP1_MIN, logit_rtol=LOGIT_RTOL,
        min_decisive_tokens=MIN_DECISIVE, targets=TARGETS, compile_layers=COMPILE_LAYERS,
        pruning="magnitude 2:4 (speed does not depend on the kept values)",
        timing="median of synchronised wall times (torch.utils.benchmark for one linear); host_ms: the call "
               "without synchronisation", attention="sdpa_kernel([CUDNN, FLASH, EFFICIENT]) around timed forwards",
        top1_rule="agreement counted where the dense top-1 margin exceeds 2 x the fp16 noise (the dense "
                  "model's own change when only the batching changes, at least one fp16 ulp); raw kept")
    prov.update(backend=backend, backend_reason=reason, budget_s=budget, commit=git_commit(),
                parts={p.name: p.limit_s for p in parts})
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        version = getattr(torch.backends.cusparselt, "version", lambda: None)
        try:
            cusparselt = version() if torch.backends.cusparselt.is_available() else None
        except Exception:  # noqa: BLE001 - a version query must not stop the run
            cusparselt = None
        prov.update(capability=f"{major}.{minor}", cusparselt=cusparselt,
                    gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    return prov


def pick_kernel(part: Part, run: dict, context: dict) -> None:
    """After the preflight: the kernel of every later part (the default mode when it passed both shapes)."""
    if part.name != "preflight":
        return
    rows = [r for r in run.get("preflight", []) if r.get("part") == "preflight"]
    passed = collections.defaultdict(list)
    for r in rows:
        passed[r["mode"]].append(r.get("ok", False))
    good = {mode for mode, oks in passed.items() if len(oks) == 2 and all(oks)}
    modes = dict(_modes(context))
    ready, why = {}, {}
    for label, spec in modes.items():
        if spec["name"] != "stock" and label in good and spec.get("alg_id") != "search":
            context["kernel"] = {k: v for k, v in spec.items()}
            ready["kernel"] = True
            break
    else:
        ready["kernel"], why["kernel"] = False, "no kernel mode passed the preflight on both shapes"
    ready["fused_transpose"] = "cusparselt fused transpose" in good and ready["kernel"]
    if not ready["fused_transpose"]:
        why["fused_transpose"] = "the fused-transpose mode did not pass the preflight"
    context["ready"], context["why_not"] = ready, why
    run["provenance"]["kernel"] = context.get("kernel")
    print(f"-> the following parts use kernel {context.get('kernel')}", flush=True)


ON_A_GPU = {
    "preflight": "on a GPU: 576x576 at 64 tokens and 11008x4096 at 2048 with cuSPARSELt non-fused (the default), "
                 "its searched alg_id, PyTorch's stock subclass and the fused transpose (sm_90+), or CUTLASS and "
                 "the stock subclass (sm_8x); each against dense, and a CUDA graph of each SparseLinear24",
    "check": "on a GPU: {model} (32 layers for the 7B shape; SmolLM2's real weights when installed) at 4x256 "
             "tokens with the preflight's kernel: logits and the top-1 rule, generate at batch 1/16/64, one CUDA "
             "graph (a plain call must replay it and equal eager), fused projections vs unfused",
}


def plan(parts: list[Part], budget: float | None, gpu: bool = False) -> str:
    def what(p):
        if not gpu:
            return ""
        text = ON_A_GPU.get("check" if p.name.startswith("check") else p.name, "")
        return f"\n      {text.format(**p.context)}" if text else ""
    lines = [f"{i + 1:>2}. {p.name:<28} limit {p.limit_s:>4.0f} s (skipped below {p.min_s:.0f} s of budget left)"
             + what(p) for i, p in enumerate(parts)]
    total = sum(p.limit_s for p in parts)
    tail = (f"budget {budget:.0f} s: parts start in this order while the budget lasts; each is cut at its limit "
            f"(limits sum to {total:.0f} s)" if budget else "")
    return "\n".join(lines + ([tail] if tail else []))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "sparselib" / "results",
                        help="directory for the new semi_structured_gpu_<time>_<gpu>.json (full run only)")
    parser.add_argument("--preflight", action="store_true", help="which kernel modes work here (<= 60 s)")
    parser.add_argument("--check", action="store_true", help="correctness only; writes nothing")
    parser.add_argument("--list", action="store_true", help="print the plan and exit")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                        help=f"seconds for the whole run (default {DEFAULT_BUDGET})")
    parser.add_argument("--parts", default="", help="comma-separated subset of the full run's parts")
    parser.add_argument("--min-run-time", type=float, default=0.05,
                        help="seconds of timing per variant per linear grid point (default 0.05)")
    args = parser.parse_args(argv)

    checking = args.check or args.preflight
    parts = check_run(args.preflight) if args.check else (full_run()[:1] if args.preflight else full_run())
    if args.parts:
        chosen = [p for p in args.parts.split(",") if p]
        unknown = sorted(set(chosen) - {p.name for p in parts})
        if unknown:
            parser.error(f"unknown part(s) {unknown}; choose from {[p.name for p in parts]}")
        parts = [p for p in parts if p.name in chosen or p.name == "preflight"]
    if args.list:
        print(plan(parts, args.budget))
        return 0

    ok, reason, backend = _decide(None, None, torch.float16)
    context = {"device": "cuda", "backend": backend, "min_run_time": args.min_run_time}
    if not ok:
        if not checking:
            print(f"no 2:4 measurements on this machine: {reason}. Nothing written.\n"
                  f"On a GPU with 2:4 kernels this run would be:\n{plan(parts, args.budget)}")
            return 0
        context.update(device="cpu", standin=True, backend=None, kernel={"name": "reference"})
        print(f"no 2:4 kernels here ({reason}): running the {'preflight' if args.preflight else ''}"
              f"{' and ' if args.preflight and args.check else ''}{'checks' if args.check else ''} on CPU with the "
              f"reference kernel and CPU stand-ins (small shapes, 2-layer models). On a GPU the same parts run "
              f"the real kernels on the real shapes:\n{plan(parts, None, gpu=True)}\n", flush=True)
    return execute(args, parts, context, reason, backend, checking)


def execute(args, parts, context, reason, backend, checking) -> int:
    start = time.monotonic()
    # what is left of --budget once imported, less the time to kill a part at its limit (SIGTERM, 5 s,
    # then SIGKILL, up to 10 s more): the whole command then ends within --budget seconds
    budget = Budget(args.budget - (start - STARTED) - KILL_GRACE_S)
    record = {"provenance": provenance(reason, backend, args.budget, parts), "parts": [], "failures": []}
    if context["device"] == "cpu":
        record["provenance"]["standin"] = "CPU stand-ins with the reference kernel: no GPU figures"
    path = None
    if not checking:
        gpu = re.sub(r"[^a-z0-9]+", "-", record["provenance"].get("gpu", "gpu").lower()).strip("-")
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
        path = args.out / f"semi_structured_gpu_{stamp}_{gpu}.json"

    def save(run_record):
        derive(run_record)
        run_record["provenance"]["seconds"] = round(time.monotonic() - start, 1)
        if path:
            write_json(path, run_record)
            print(f"[saved] {path}", flush=True)

    with tempfile.TemporaryDirectory(prefix="semi_structured_parts_") as workdir:
        run_parts(parts, context, record, budget, Path(workdir), save=save, after=pick_kernel)
    print(summary(record))
    if not checking:
        return 0
    ended = {p["name"]: p for p in record["parts"]}
    good = all(p["status"] == "ok" for p in ended.values())
    if args.check:
        good = good and len(record.get("checks", [])) == len([p for p in parts if p.name.startswith("check")]) \
            and all(c.get("ok") for c in record.get("checks", []))
    if args.preflight:
        good = good and context.get("ready", {}).get("kernel", False)
    print(f"\n{'PASSED' if good else 'FAILED'} in {time.monotonic() - start:.0f} s; nothing written")
    return 0 if good else 1


def summary(record: dict) -> str:
    lines = ["", "parts: " + ", ".join(f"{p['name']} {p['status']}" for p in record["parts"])]
    head = record.get("headline", {})
    if "prefill_7b_8x2048" in head:
        h = head["prefill_7b_8x2048"]
        lines.append(f"7B-shaped prefill 8x2048, best vs best: {h['speedup']:.3f}x ({h['variant']}; dense "
                     f"{h['dense_path']} {h['dense_ms']:.1f} ms, 2:4 {h['sparse_path']} {h['sparse_ms']:.1f} ms); "
                     f"target {h['target']}x: {'met' if h['met'] else 'not met'}")
    if "linear_at_2048_plus" in head:
        h = head["linear_at_2048_plus"]
        lines.append(f"one linear at >= 2048 tokens, best vs best: min {h['min']:.3f}x at {h['min_at']}, median "
                     f"{h['median']:.3f}x; {h['points_met']} of {h['points']} points >= {h['target']}x")
    for model, c in head.get("checks", {}).items():
        lines.append(f"check {model}: {'PASS' if c['ok'] else 'FAIL'} (top-1 {c['top1_decisive']} decisive, "
                     f"{c['top1_raw']:.4f} raw; generate {'ok' if c['generate_ok'] else 'FAILED'})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
