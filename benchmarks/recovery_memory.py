"""Peak resident memory of ``sparselib.recover`` on SmolLM2-135M (fp32, CPU): full masked fine-tuning
against masked LoRA, each in a fresh process so that nothing else has raised the peak.

Each run loads the model, prunes it to 2:4 by magnitude (the mask does not change the memory), then
trains ``--steps`` steps of ``--batch-size`` × 256 Brown-train tokens. It prints the resident memory
after loading and pruning, the peak during training, and the difference; ``--record`` writes them
to sparselib/results/recovery_memory_smollm2.json (the chapter "When 50 % is not enough" and
``sparselib/recovery.py``'s docstring quote that file).

    .venv/bin/python benchmarks/recovery_memory.py [--steps 3] [--batch-size 4] [--record]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import sparselib

CHILD = r"""
import json, resource, sys
import sparselib
steps, batch_size, rank = int(sys.argv[1]), int(sys.argv[2]), (int(sys.argv[3]) or None)
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6   # Linux: kilobytes -> GB
model, tok = sparselib.load_model()
sparselib.prune(model, "magnitude", "2:4", progress=False)
before = rss()
data = sparselib.calibration_data(tok, nsamples=steps * batch_size, seqlen=256, seed=1)
report = sparselib.recover(model, data, steps, batch_size=batch_size, lora_rank=rank, progress=False)
print(json.dumps(dict(before_gb=before, peak_gb=rss(), trained=report.trained_parameters,
                      seconds_per_step=report.seconds / steps)))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--record", action="store_true", help="write the figures to sparselib/results/")
    args = parser.parse_args()
    result = {"provenance": sparselib.provenance("benchmarks/recovery_memory.py", model="smollm2-135m",
                                                 dtype="float32", steps=args.steps, batch_size=args.batch_size,
                                                 seqlen=256, lora_rank=args.lora_rank, pruned="magnitude 2:4"),
              "runs": {}}
    for mode, name, rank in (("full", "masked full fine-tuning", 0),
                            ("lora", f"masked LoRA r={args.lora_rank}", args.lora_rank)):
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.steps), str(args.batch_size), str(rank)],
                             check=True, capture_output=True, text=True).stdout
        r = result["runs"][mode] = json.loads(out.strip().splitlines()[-1])
        print(f"{name:24s} trains {r['trained'] / 1e6:6.1f} M parameters; resident {r['before_gb']:.2f} GB "
              f"before, peak {r['peak_gb']:.2f} GB (+{r['peak_gb'] - r['before_gb']:.2f} GB for training), "
              f"{r['seconds_per_step']:.1f} s/step at batch {args.batch_size} × 256", flush=True)
    if args.record:
        print("wrote", sparselib.save_result("recovery_memory_smollm2", result))


if __name__ == "__main__":
    main()
