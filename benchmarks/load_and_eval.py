"""Model load time (cold: GGUF -> fp32 -> safetensors cache; cached) and perplexity throughput.

    .venv/bin/python benchmarks/load_and_eval.py
The cold load uses a temporary cache directory, so your real cache is left alone.
"""
from __future__ import annotations

import os
import tempfile
import time

import torch

import sparselib


def main():
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SPARSELIB_CACHE"] = tmp
        start = time.perf_counter()
        sparselib.load_model()
        cold = time.perf_counter() - start
        start = time.perf_counter()
        model, tok = sparselib.load_model()
        cached = time.perf_counter() - start
    print(f"load_model('smollm2-135m'): cold {cold:.1f} s (dequantise the GGUF, write safetensors), "
          f"cached {cached:.1f} s")
    ids = sparselib.test_data(tok, max_tokens=sparselib.EVAL_TOKENS)
    for batch_size in (1, 4):
        start = time.perf_counter()
        ppl = sparselib.perplexity(model, ids, seqlen=sparselib.EVAL_SEQLEN, batch_size=batch_size, progress=False)
        seconds = time.perf_counter() - start
        print(f"perplexity on {ids.shape[1]:,} tokens, batch {batch_size}: {ppl:.2f} in {seconds:.1f} s "
              f"= {ids.shape[1] / seconds:,.0f} tokens/s")


if __name__ == "__main__":
    main()
