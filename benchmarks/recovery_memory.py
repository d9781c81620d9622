"""Peak resident memory of ``sparselib.recover`` on SmolLM2-135M (fp32, CPU): full masked fine-tuning
against masked LoRA, each in a fresh process so that nothing else has raised the peak.

Each run loads the model, prunes it to 2:4 by magnitude (the mask does not change the memory), then
trains ``--steps`` steps of ``--batch-size`` × 256 Brown-train tokens. It prints the resident memory
after loading and pruning, the peak during training, and the difference; ``--record`` writes them
to sparselib/results/recovery_memory_smollm2.json (the chapter "When 50 % is not enough" and
``sparselib/recovery.py``'s docstring quote that file).

Peak resident memory is the most the process held from the operating system, which includes memory
the allocator has freed but kept. ``--tensors`` measures the tensors instead, again each mode in a
fresh process, over 2 steps (the second holds AdamW's state): torch's profiler records every CPU
allocation and free, and the peak of the live total is the most the tensors themselves needed at
one moment (allocations before training, the model's weights, are not in it); a saved-tensors hook
adds up the bytes autograd keeps for the backward pass (parameters excluded: they are alive anyway).
``--record`` then writes sparselib/results/recovery_memory_tensors_smollm2.json.

    .venv/bin/python benchmarks/recovery_memory.py [--steps 3] [--batch-size 4] [--tensors] [--record]
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

TENSOR_CHILD = r"""
import json, resource, sys
import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile
import sparselib
from sparselib import recovery
steps, batch_size, rank = int(sys.argv[1]), int(sys.argv[2]), (int(sys.argv[3]) or None)
model, tok = sparselib.load_model()
sparselib.prune(model, "magnitude", "2:4", progress=False)
data = sparselib.calibration_data(tok, nsamples=steps * batch_size, seqlen=256, seed=1)
params = {p.untyped_storage().data_ptr() for p in model.parameters()}
saved, per_step = {}, []
def pack(t):   # what autograd keeps for backward, counted once per storage
    s = t.untyped_storage()
    if s.data_ptr() not in params:
        saved[s.data_ptr()] = s.nbytes()
    return t
step = recovery._step
def counted(*a, **k):
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = step(*a, **k)
    per_step.append(sum(saved.values()) / 1e9)
    return out
recovery._step = counted
with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
    report = sparselib.recover(model, data, steps, batch_size=batch_size, lora_rank=rank, progress=False)
def walk(nodes):
    for n in nodes:
        yield n
        yield from walk(n.children)
events = sorted((e.start_time_ns, e.extra_fields.alloc_size)
                for e in walk(prof.profiler.kineto_results.experimental_event_tree()) if e.tag == _EventType.Allocation)
live = peak = 0
for _, size in events:
    live += size
    peak = max(peak, live)
print(json.dumps(dict(tensor_peak_gb=peak / 1e9, saved_for_backward_gb=max(per_step),
                      trained=report.trained_parameters)))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--tensors", action="store_true",
                        help="tensor accounting (profiler) instead of resident memory")
    parser.add_argument("--record", action="store_true", help="write the figures to sparselib/results/")
    args = parser.parse_args()
    if args.tensors:
        return tensors(args)
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


def tensors(args):
    steps = 2   # the second step holds AdamW's state
    result = {"provenance": sparselib.provenance("benchmarks/recovery_memory.py --tensors", model="smollm2-135m",
                                                 dtype="float32", steps=steps, batch_size=args.batch_size,
                                                 seqlen=256, lora_rank=args.lora_rank, pruned="magnitude 2:4"),
              "runs": {}}
    for mode, name, rank in (("full", "masked full fine-tuning", 0),
                            ("lora", f"masked LoRA r={args.lora_rank}", args.lora_rank)):
        out = subprocess.run([sys.executable, "-c", TENSOR_CHILD, str(steps), str(args.batch_size), str(rank)],
                             check=True, capture_output=True, text=True).stdout
        r = result["runs"][mode] = json.loads(out.strip().splitlines()[-1])
        print(f"{name:24s} tensors at their peak {r['tensor_peak_gb']:.2f} GB beyond the loaded model; "
              f"kept for backward {r['saved_for_backward_gb']:.2f} GB", flush=True)
    if args.record:
        print("wrote", sparselib.save_result("recovery_memory_tensors_smollm2", result))


if __name__ == "__main__":
    main()
