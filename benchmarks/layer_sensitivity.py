"""Which decoder layers of SmolLM2 break first under magnitude pruning?

Prunes the linears of ONE decoder layer at a time (magnitude, 70%, the reference per-matrix
threshold), everything else dense, and measures perplexity on the first 4,096 Brown test tokens.
Writes sparselib/results/layer_sensitivity_smollm2.json (chapter 2 loads it and re-runs one layer).
About 6 minutes on 2 CPU cores.

    .venv/bin/python benchmarks/layer_sensitivity.py
"""
from __future__ import annotations

import torch

import sparselib
from sparselib.models import decoder_layers

NAME = "layer_sensitivity_smollm2"
PROTOCOL = dict(model="smollm2-135m", method="magnitude", per="matrix", sparsity=0.7,
                eval_tokens=4096, eval_seqlen=256)


def main():
    model, tok = sparselib.load_model(PROTOCOL["model"])
    test = sparselib.test_data(tok, max_tokens=PROTOCOL["eval_tokens"])
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    result = {"provenance": sparselib.provenance("benchmarks/layer_sensitivity.py", **PROTOCOL),
              "dense": sparselib.perplexity(model, test, seqlen=PROTOCOL["eval_seqlen"], progress=False),
              "layers": []}
    for index in range(len(decoder_layers(model))):
        model.load_state_dict(dense_state)
        sparselib.prune(model, "magnitude", PROTOCOL["sparsity"], layers=[index], progress=False)
        ppl = sparselib.perplexity(model, test, seqlen=PROTOCOL["eval_seqlen"], progress=False)
        result["layers"].append(ppl)
        print(f"layer {index:2d}: {ppl:8.2f}", flush=True)
    sparselib.save_result(NAME, result)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
