"""What one recovery step keeps in memory on SmolLM2-135M (fp32, CPU, batch 4 × 256 Brown-train
tokens), counted tensor by tensor rather than read off the process's resident memory:

* saved for backward: the bytes autograd keeps from the forward pass to the backward pass
  (``sparselib.recovery.saved_tensor_bytes``: each storage once, the model's own parameters and
  buffers left out; the masks are included);
* gradients and AdamW's two moments: 3 × 4 bytes per trained parameter.

Three modes on the same 2:4 (magnitude) model: masked full fine-tuning, masked LoRA (rank 16), and
masked LoRA with ``recompute=True``, which forms each linear's ``W + (s·B A) ⊙ keep`` again in the
backward pass instead of keeping it. These are tensor sizes: they do not depend on the machine or
its load (no times are measured). ``--record`` writes sparselib/results/recovery_saved_tensors_smollm2.json.

    .venv/bin/python benchmarks/recovery_saved_tensors.py [--lora-rank 16] [--record]
"""
from __future__ import annotations

import argparse

import sparselib
from sparselib.recovery import masks_of, saved_tensor_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--record", action="store_true", help="write the figures to sparselib/results/")
    args = parser.parse_args()
    model, tok = sparselib.load_model()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    data = sparselib.calibration_data(tok, nsamples=args.batch_size, seqlen=args.seqlen, seed=1)
    result = {"provenance": sparselib.provenance("benchmarks/recovery_saved_tensors.py", model="smollm2-135m",
                                                 dtype="float32", batch_size=args.batch_size, seqlen=args.seqlen,
                                                 lora_rank=args.lora_rank, pruned="magnitude 2:4"),
              "runs": {}}
    for mode, rank, recompute in (("full", None, False), ("lora", args.lora_rank, False),
                                  ("lora_recompute", args.lora_rank, True)):
        model.load_state_dict(dense)
        sparselib.prune(model, "magnitude", "2:4", progress=False)
        with saved_tensor_bytes(model) as saved:
            report = sparselib.recover(model, data, 1, batch_size=args.batch_size, lora_rank=rank,
                                       recompute=recompute, progress=False)
        r = result["runs"][mode] = {"saved_for_backward_bytes": saved["bytes"],
                                    "trained_parameters": report.trained_parameters,
                                    "grads_and_adam_bytes": 12 * report.trained_parameters}
        print(f"{mode:15s} trains {r['trained_parameters'] / 1e6:6.1f} M parameters: saved for backward "
              f"{r['saved_for_backward_bytes'] / 2**30:.2f} GiB, gradients + AdamW moments "
              f"{r['grads_and_adam_bytes'] / 2**30:.2f} GiB", flush=True)
    linears = sum(W.numel() * 4 for W in masks_of(model).values())
    result["decoder_linear_bytes"] = linears
    print(f"(the decoder-layer linear weights: {linears / 2**30:.2f} GiB in fp32)")
    if args.record:
        print("wrote", sparselib.save_result("recovery_saved_tensors_smollm2", result))


if __name__ == "__main__":
    main()
