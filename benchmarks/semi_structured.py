"""Dense vs 2:4 fp16 on a GPU with Sparse Tensor Cores: real linear shapes, then SmolLM2 end to end.

    python benchmarks/semi_structured.py --out DIR        # about 2-4 minutes on an A100/H100

Part 1 times ``Y = X Wᵀ`` for the linear shapes of SmolLM2-135M, Llama-7B and Llama-70B at token counts
from 1 (decoding one sequence) to 8192 (a long prefill), dense vs ``to_sparse_semi_structured``, and writes
``DIR/semi_structured_gpu.csv`` (atomically; default DIR: sparselib/results). Every row carries its
provenance: GPU, compute capability, torch and CUDA versions, date, backend.
Part 2 prunes SmolLM2 2:4 (magnitude: the speed does not depend on which weights are kept), converts it,
checks that its logits match the masked dense model's, and measures tokens/s dense vs 2:4; it writes
``DIR/semi_structured_e2e.json``.

On a machine without a capable GPU it prints why and exits 0 without writing anything.
"""
from __future__ import annotations

import argparse
import copy
import csv
import datetime as dt
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sparselib  # noqa: E402
from sparselib.semistructured import benchmark_linear, can_use_sparse_kernels, to_semi_structured  # noqa: E402

#: (model, linear, out_features, in_features)
SHAPES = [
    ("SmolLM2-135M", "q/o_proj", 576, 576),
    ("SmolLM2-135M", "gate/up_proj", 1536, 576),
    ("SmolLM2-135M", "down_proj", 576, 1536),
    ("Llama-7B", "gate/up_proj", 11008, 4096),
    ("Llama-7B", "down_proj", 4096, 11008),
    ("Llama-70B", "gate/up_proj", 28672, 8192),
    ("Llama-70B", "down_proj", 8192, 28672),
]
TOKENS = [1, 16, 64, 256, 1024, 2048, 4096, 8192]
#: end to end: prefill (batch, seqlen) points; decode batches, prompt length and new tokens
PREFILL = [(1, 256), (8, 512), (32, 512)]
DECODE_BATCHES, PROMPT, NEW_TOKENS = (1, 32), 32, 64
COLUMNS = ["gpu_name", "capability", "torch_version", "cuda_version", "date_utc", "out_features",
           "in_features", "tokens", "dense_ms", "sparse_ms", "speedup", "backend", "max_abs_diff"]


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def provenance() -> dict:
    major, minor = torch.cuda.get_device_capability()
    return {"gpu_name": torch.cuda.get_device_name(), "capability": f"{major}.{minor}",
            "torch_version": torch.__version__, "cuda_version": torch.version.cuda,
            "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def linear_grid(min_run_time: float) -> list[dict]:
    prov, rows = provenance(), []
    print(f"{'model':<13} {'linear':<13} {'out':>6} {'in':>6} {'tokens':>6} {'dense ms':>9} "
          f"{'2:4 ms':>9} {'speedup':>8}", flush=True)
    for model, linear, out_f, in_f in SHAPES:
        for tokens in TOKENS:
            try:
                r = benchmark_linear(out_f, in_f, tokens, min_run_time=min_run_time)
            except Exception as err:  # one failing point (e.g. out of memory) must not lose the rest
                print(f"{model:<13} {linear:<13} {out_f:>6} {in_f:>6} {tokens:>6}  FAILED: {err}", flush=True)
                torch.cuda.empty_cache()
                continue
            rows.append({**prov, "out_features": out_f, "in_features": in_f, "tokens": tokens,
                         "dense_ms": f"{r['dense_ms']:.5f}", "sparse_ms": f"{r['sparse_ms']:.5f}",
                         "speedup": f"{r['speedup']:.4f}", "backend": r["backend"],
                         "max_abs_diff": f"{r['max_abs_diff']:.3g}"})
            print(f"{model:<13} {linear:<13} {out_f:>6} {in_f:>6} {tokens:>6} {r['dense_ms']:>9.4f} "
                  f"{r['sparse_ms']:>9.4f} {r['speedup']:>7.2f}x", flush=True)
        torch.cuda.empty_cache()
    return rows


def seconds(fn, repeats: int = 5) -> float:
    """Median wall time of ``fn()`` with the GPU synchronised, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def end_to_end() -> dict:
    model, tokenizer = sparselib.load_model(device="cuda")
    sparselib.prune(model, "magnitude", "2:4", progress=False)
    dense = model.half()
    sparse = copy.deepcopy(dense)
    converted, reason, n = to_semi_structured(sparse)
    print(f"\nend to end, SmolLM2-135M magnitude 2:4, fp16: {reason}", flush=True)
    if not converted:
        return {"converted": False, "reason": reason}
    need = max([b * s for b, s in PREFILL] + [4 * 256] + [b * PROMPT for b in DECODE_BATCHES])
    stream = sparselib.test_data(tokenizer, max_tokens=need)[0].cuda()
    result = {"converted": True, "reason": reason, "n_converted": n}
    with torch.inference_mode():
        ids = stream[:4 * 256].reshape(4, 256)
        want, got = dense(ids).logits.float(), sparse(ids).logits.float()
        diff = (got - want).abs()
        result["logits"] = {"tokens": ids.numel(), "max_abs_diff": diff.max().item(),
                            "max_abs_logit": want.abs().max().item(),
                            "top1_agreement": (got.argmax(-1) == want.argmax(-1)).float().mean().item()}
        print(f"logits vs masked dense model over {ids.numel()} tokens: max |Δ| = "
              f"{result['logits']['max_abs_diff']:.4g} (max |logit| {result['logits']['max_abs_logit']:.3g}), "
              f"top-1 agreement {result['logits']['top1_agreement']:.4f}", flush=True)

        result["prefill"] = []
        for batch, seqlen in PREFILL:
            ids = stream[:batch * seqlen].reshape(batch, seqlen)
            t_dense, t_sparse = seconds(lambda: dense(ids)), seconds(lambda: sparse(ids))
            row = {"batch": batch, "seqlen": seqlen, "dense_tok_s": ids.numel() / t_dense,
                   "sparse_tok_s": ids.numel() / t_sparse, "speedup": t_dense / t_sparse}
            result["prefill"].append(row)
            print(f"prefill {batch:>2} x {seqlen}: dense {row['dense_tok_s']:>10.0f} tok/s, 2:4 "
                  f"{row['sparse_tok_s']:>10.0f} tok/s, {row['speedup']:.2f}x", flush=True)

    result["decode"] = []
    new = NEW_TOKENS
    for batch in DECODE_BATCHES:
        prompt = stream[:batch * PROMPT].reshape(batch, PROMPT)
        try:
            def gen(m):
                return m.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                                  min_new_tokens=new, do_sample=False, pad_token_id=tokenizer.eos_token_id)
            t_dense, t_sparse = seconds(lambda: gen(dense), 3), seconds(lambda: gen(sparse), 3)
        except Exception as err:
            print(f"decode batch {batch}: FAILED: {err}", flush=True)
            continue
        row = {"batch": batch, "new_tokens": new, "dense_tok_s": batch * new / t_dense,
               "sparse_tok_s": batch * new / t_sparse, "speedup": t_dense / t_sparse}
        result["decode"].append(row)
        print(f"decode  batch {batch:>2}, {new} new tokens: dense {row['dense_tok_s']:>8.0f} tok/s, 2:4 "
              f"{row['sparse_tok_s']:>8.0f} tok/s, {row['speedup']:.2f}x", flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "sparselib" / "results",
                        help="directory for semi_structured_gpu.csv and semi_structured_e2e.json")
    parser.add_argument("--min-run-time", type=float, default=0.2,
                        help="seconds of timing per variant per grid point (default 0.2)")
    parser.add_argument("--skip-e2e", action="store_true", help="only the linear grid")
    args = parser.parse_args(argv)

    ok, reason = can_use_sparse_kernels()
    if not ok:
        print(f"no 2:4 measurements on this machine: {reason}. Nothing written.")
        return 0
    print(f"{reason}\n{provenance()}", flush=True)
    start = time.perf_counter()

    rows = linear_grid(args.min_run_time)
    if not rows:
        print("every grid point failed; nothing written")
        return 1
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = args.out / "semi_structured_gpu.csv"
    write_atomic(csv_path, buf.getvalue())
    print(f"wrote {len(rows)} rows to {csv_path} ({time.perf_counter() - start:.0f} s)", flush=True)

    if not args.skip_e2e:
        e2e = end_to_end()
        e2e["provenance"] = sparselib.provenance(
            "benchmarks/semi_structured.py", model="SmolLM2-135M-Instruct", pruning="magnitude 2:4",
            dtype="float16", backend_reason=reason, prefill=PREFILL, decode_batches=list(DECODE_BATCHES),
            prompt_tokens=PROMPT, new_tokens=NEW_TOKENS, capability=provenance()["capability"])
        json_path = sparselib.save_result("semi_structured_e2e", e2e, args.out)
        print(f"wrote {json_path}", flush=True)
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
