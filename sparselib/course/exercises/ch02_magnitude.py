"""Chapter 2, magnitude pruning: a per-row magnitude mask, and what attention and MLP weights cost."""
from __future__ import annotations

import torch

from ...masks import unstructured_mask
from ...models import adapter_for, decoder_layers, layer_linears, weight_of
from ...scores import magnitude_scores
from ._answers import call, mask_shape_ok, need_function, need_model, number
from .registry import checker


def _awkward_weights(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(16, 32, generator=g)
    ties = torch.randint(-2, 3, (8, 16), generator=g).float()  # many exact ties, some zeros
    negative = -W.abs()[:4]                                    # |w| matters, not w
    return [W, ties, negative]


def _magnitude_mistake(keep: torch.Tensor, want: torch.Tensor, W: torch.Tensor, s: float) -> str | None:
    """What is wrong with ``keep`` where it differs from sparselib's mask ``want``; None when it keeps
    the same magnitudes and only breaks ties differently."""
    k = int(W.shape[1] * s)
    dropped = (~keep).sum(1)
    if not (dropped == k).all():
        r = int((dropped != k).nonzero()[0])
        if (~keep).sum() == (~want).sum():
            return (f"s={s}: the total is right but row {r} drops {int(dropped[r])} instead of {k}: this is "
                    f"one threshold per matrix; the exercise asks per row")
        return f"s={s}: row {r} drops {int(dropped[r])} weights, expected int({W.shape[1]}·{s}) = {k}"
    if torch.equal(keep, ~want) or (W.abs()[keep].mean() < W.abs()[~keep].mean()):
        return f"s={s}: you keep the smallest magnitudes; keep the largest"
    if torch.equal(keep, unstructured_mask(W, s, per="row")):
        return (f"s={s}: you rank by w, not |w|: a large negative weight matters as much as a large "
                f"positive one")
    if torch.equal(torch.sort(W.abs() * keep, 1).values, torch.sort(W.abs() * want, 1).values):
        return None
    return f"s={s}: right counts per row, but different weights than the {k} smallest |w| of each row"


@checker("ex-magnitude-row")
def check_magnitude_mask(fb, fn):
    """Your ``fn(W, s)`` -> keep-mask dropping ``int(in·s)`` smallest |w| per row."""
    need_function(fn, "check_magnitude_mask(magnitude_mask)")
    for W in _awkward_weights():
        W0 = W.clone()
        for s in (0.0, 0.5, 0.7):
            keep = call(fb, fn, W, s)
            if keep is None or not mask_shape_ok(fb, keep, W):
                return fb
            keep = keep.bool()
            if not torch.equal(W, W0):
                return fb.fail("your function changed W in place; work on a copy (W.abs() makes one)")
            want = unstructured_mask(magnitude_scores(W), s, per="row")
            if torch.equal(keep, want):
                continue
            mistake = _magnitude_mistake(keep, want, W, s)
            if mistake:
                return fb.fail(mistake)
            fb.note(f"s={s}: your mask keeps the same magnitudes but breaks ties differently "
                    f"(sparselib drops the lower index first, with a stable sort); fine for pruning")
    if fb.passed:
        fb.note("exact per-row counts, |w| ranking, inputs untouched, ties handled")


def _removed_at_half(model) -> dict[str, int]:
    """Weights that 50 % per row removes from the attention and from the MLP linears, by the
    adapter's list of which linears belong to which."""
    adapter = adapter_for(model)
    part = {name: "attn" for name in (*adapter.attn_inputs, adapter.attn_output)}
    part.update({name: "mlp" for name in (*adapter.mlp_inputs, adapter.mlp_output)})
    removed = {"attn": 0, "mlp": 0}
    for layer in decoder_layers(model):
        for name, lin in layer_linears(layer).items():
            if name not in part:
                raise ValueError(f"the adapter for {model.config.model_type!r} does not say whether {name} "
                                 f"is attention or MLP; use a Llama-family model such as SmolLM2")
            out, inp = weight_of(lin).shape
            removed[part[name]] += out * int(inp * 0.5)
    return removed


@checker("ex-magnitude-types")
def check_magnitude_types(fb, model, removed_attn, removed_mlp, ppl_dense, ppl_attn, ppl_mlp):
    """How many weights you removed from attention and from the MLPs (50 % of each), and the three
    perplexities. Counts are checked exactly; the costs are yours to interpret."""
    need_model(model)
    a, m = number(removed_attn, "removed_attn"), number(removed_mlp, "removed_mlp")
    d, pa, pm = (number(x, n) for x, n in ((ppl_dense, "ppl_dense"), (ppl_attn, "ppl_attn"), (ppl_mlp, "ppl_mlp")))
    want = _removed_at_half(model)
    for got, key in ((a, "attn"), (m, "mlp")):
        if got != want[key]:
            hint = " (did you include the MLP in attention or vice versa?)" if got == sum(want.values()) else ""
            fb.fail(f"{key}: you removed {got:,.0f} weights, 50 % of those linears is {want[key]:,}{hint}")
    if min(pa, pm) < d * 0.999:
        fb.fail("a pruned model with lower perplexity than the dense one is suspicious: did you reload the "
                "dense weights between the two experiments?")
    if fb.passed:
        ca, cm = (pa - d) / want["attn"] * 1e6, (pm - d) / want["mlp"] * 1e6
        fb.note(f"perplexity added per million weights removed: attention {ca:.2f}, MLP {cm:.2f} — "
                f"{'attention' if ca > cm else 'the MLP'} costs more per weight")
