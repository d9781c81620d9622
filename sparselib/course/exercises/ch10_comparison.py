"""Chapter 10, the comparison: the stored size of a 2:4 model, and the sparsity each method reaches
within a perplexity budget."""
from __future__ import annotations

import torch

from ...format24 import storage_bytes
from ...models import decoder_layers, layer_linears, weight_of
from ..results import load_result, recorded
from ._answers import need_model, number
from .registry import checker


def _size_mistake(model, got: float, want: int, other: int, in_linears: int) -> str:
    """What a 2:4 size in bytes that is not ``want`` most likely counted."""
    if got == 2 * other + 2 * in_linears / 2:
        return "that leaves out the metadata: each kept value also stores a 2-bit position"
    if got == 2 * other + in_linears * (1 + 0.5):
        return "that charges 4 bits per kept value (the 37.5% figure); the format stores 2 bits per kept value"
    head = model.get_output_embeddings()
    if head is not None and got == want + 2 * head.weight.numel():
        return "the head is tied to the embedding in SmolLM2: one table, count it once"
    if abs(got - want / 2) < 1:
        return "bytes, not fp16 elements: 2 bytes per value"
    return (f"you have {got:,.0f} bytes, expected {want:,}: dense fp16 for the {other:,} parameters "
            f"outside the decoder linears, and 4.5 of 8 bytes per group of 4 inside them")


@checker("ex-compare-size24")
def check_stored_size_24(fb, model, nbytes):
    """Your fp16 size in bytes of ``model`` with every decoder linear in 2:4 format."""
    need_model(model)
    got = number(nbytes, "nbytes")
    linears = [weight_of(lin) for layer in decoder_layers(model) for lin in layer_linears(layer).values()]
    in_linears = sum(W.numel() for W in linears)
    other = sum(p.numel() for p in model.parameters()) - in_linears
    want = 2 * other + sum(storage_bytes(*W.shape, torch.float16)["total"] for W in linears)
    if got == want:
        return fb.note(f"{want / 1e6:.2f} MB, {want / (2 * (other + in_linears)):.1%} of dense fp16")
    return fb.fail(_size_mistake(model, got, want, other, in_linears))


@checker("ex-compare-budget")
def check_within_budget(fb, answers: dict, budget: float = 2.0):
    """``{method: highest recorded sparsity with perplexity ≤ budget × dense}``, checked against the
    recorded sweep."""
    if not isinstance(answers, dict) or not answers:
        raise TypeError('answers must be a dict such as {"magnitude": 0.3, "wanda": 0.5, "sparsegpt": 0.5}')
    dense = load_result("sweep_smollm2_brown")["dense"]
    for method, got in answers.items():
        if method not in ("magnitude", "wanda", "sparsegpt"):
            raise ValueError(f"unknown method {method!r}; use magnitude, wanda, sparsegpt")
        got = number(got, f"answers[{method!r}]")
        curve = recorded(method, [0.1, 0.3, 0.5, 0.6, 0.7])
        within = [s for s, ppl in curve.items() if ppl <= budget * dense]
        want = max(within) if within else 0.0
        if got != want:
            over = {s: round(p, 1) for s, p in curve.items() if s > want}
            fb.fail(f"{method}: you have {got}, the sweep says {want} (dense {dense:.1f}, budget "
                    f"{budget * dense:.1f}; above it: {over})")
    if fb.passed:
        fb.note("matches the recorded sweep")
