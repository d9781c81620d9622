"""What the visualizer must show, computed here with sparselib's own mask and score functions.

The browser test sends the matrices it finds embedded in the page (JSON on stdin:
``[{"W": ..., "x_norm": ..., "sparsities": [...]}, ...]``) and compares the page's cells with these
masks. Output (stdout): ``{"toy": {"W", "x_norm"}, "widgets": [{mode: [keep per step]}]}``, with
one step for "dense" and "2:4" and one per sparsity for "magnitude" and "wanda".
"""
import json
import sys

import torch

import sparselib
from sparselib import magnitude_scores, nm_mask, unstructured_mask, wanda_scores


def views(W: torch.Tensor, x_norm: torch.Tensor, sparsities: list[float]) -> dict:
    S = wanda_scores(W, x_norm)
    as_ints = lambda keep: keep.to(torch.uint8).tolist()  # noqa: E731
    out = {"dense": [as_ints(torch.ones_like(W, dtype=torch.bool))],
           "magnitude": [as_ints(unstructured_mask(magnitude_scores(W), s, per="row")) for s in sparsities],
           "wanda": [as_ints(unstructured_mask(S, s, per="row")) for s in sparsities]}
    if W.shape[1] % 4 == 0:
        out["2:4"] = [as_ints(nm_mask(S, 2, 4))]
    return out


def main() -> None:
    requests = json.load(sys.stdin)
    W, x_norm = sparselib.toy_layer()
    json.dump({"toy": {"W": W.tolist(), "x_norm": x_norm.tolist()},
               "widgets": [views(torch.tensor(r["W"]), torch.tensor(r["x_norm"]), r["sparsities"])
                           for r in requests]}, sys.stdout)


if __name__ == "__main__":
    main()
