"""Checkers for the chapters' exercises: call one on *your* answer and read what it says.

    from sparselib import exercises
    exercises.check_magnitude_mask(magnitude_mask)     # your function
    exercises.check_meta_byte((0, 1), (1, 3))          # your numbers

Each checker recomputes the answer with ``sparselib`` itself (never a stored number), runs your code on
ordinary and awkward cases (ties, all-zero rows, ...) and returns a :class:`Feedback`: passed or not,
and one note per finding that says *what* differs and the usual reason. Instructors can grade with
``feedback.passed``; :data:`CHECKERS` maps each exercise label of the book to its checker.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real

import torch
from torch import nn

from ..format24 import storage_bytes
from ..masks import nm_mask, unstructured_mask
from ..scores import input_norms, magnitude_scores, wanda_scores
from ..sparsegpt import sparsegpt_prune


@dataclass
class Feedback:
    """The verdict of a checker: ``passed`` and the ``notes`` that explain it."""

    exercise: str
    passed: bool = True
    notes: list[str] = field(default_factory=list)

    def fail(self, note: str) -> "Feedback":
        self.passed = False
        self.notes.append(note)
        return self

    def note(self, note: str) -> "Feedback":
        self.notes.append(note)
        return self

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        head = f"{'✓ passed' if self.passed else '✗ not yet'} — {self.exercise}"
        return "\n".join([head] + [f"  • {n}" for n in self.notes])

    def _repr_markdown_(self) -> str:
        head = f"**{'✓ passed' if self.passed else '✗ not yet'}** — `{self.exercise}`"
        return "\n".join([head, ""] + [f"- {n}" for n in self.notes])


# --------------------------------------------------------------------------------------------
# Argument checks: bad input is the learner's bug too, so say exactly what was expected
# --------------------------------------------------------------------------------------------
def _callable(fn, what: str) -> None:
    if not callable(fn):
        raise TypeError(f"pass your function itself, e.g. {what} (not {type(fn).__name__})")


def _number(x, name: str) -> float:
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, Real):
        raise TypeError(f"{name} must be a number, got {type(x).__name__}")
    if not math.isfinite(x):
        raise ValueError(f"{name} is {x}; pass the finite value you computed")
    return float(x)


def _matrix(x, name: str, dim: int = 2) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != dim:
        raise TypeError(f"{name} must be a {dim}-D torch.Tensor")
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def _run(fb: Feedback, fn, *args):
    """Call the learner's function; an exception becomes a note instead of a traceback."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - any error in learner code is feedback
        fb.fail(f"your function raised {type(e).__name__}: {e} (arguments: "
                f"{', '.join(tuple(a.shape).__str__() if isinstance(a, torch.Tensor) else repr(a) for a in args)})")
        return None


def _close(a: float, b: float, rel: float = 1e-6) -> bool:
    return abs(a - b) <= rel * max(abs(b), 1e-12)


def _mask_shape_ok(fb: Feedback, keep, W: torch.Tensor) -> bool:
    if not isinstance(keep, torch.Tensor):
        fb.fail(f"return a torch.Tensor keep-mask, not {type(keep).__name__}")
        return False
    if keep.shape != W.shape:
        fb.fail(f"the mask has shape {tuple(keep.shape)}, the weight {tuple(W.shape)}: one entry per weight")
        return False
    if keep.dtype != torch.bool:
        fb.note(f"the mask has dtype {keep.dtype}; a bool mask (True = keep) avoids surprises "
                f"(W * mask works with both, W[mask] only with bool) — converted for checking")
    return True


def _awkward_weights(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(16, 32, generator=g)
    ties = torch.randint(-2, 3, (8, 16), generator=g).float()  # many exact ties, some zeros
    negative = -W.abs()[:4]                                    # |w| matters, not w
    return [W, ties, negative]


# --------------------------------------------------------------------------------------------
# Chapter 0
# --------------------------------------------------------------------------------------------
def check_seqlen_effect(prediction: str, ppl_128, ppl_256) -> Feedback:
    """ex-howto-seqlen: your prediction ("up" or "down") and the two perplexities you measured."""
    fb = Feedback("ex-howto-seqlen")
    if prediction not in ("up", "down"):
        raise ValueError('prediction must be "up" or "down" (what happens to perplexity at seqlen 128)')
    p128, p256 = _number(ppl_128, "ppl_128"), _number(ppl_256, "ppl_256")
    if p128 < 1 or p256 < 1:
        return fb.fail("a perplexity is at least 1 (it is exp of a mean cross-entropy); did you pass a loss?")
    if prediction != "up":
        fb.fail("shorter windows give each token less context, so perplexity goes up, not down")
    if p128 <= p256:
        fb.fail(f"your measurement has seqlen 128 ({p128:.2f}) not above seqlen 256 ({p256:.2f}); "
                f"evaluate the same token ids both times, with only seqlen changed")
    # the share of tokens predicted from fewer than 32 tokens of context, per window length
    for L in (128, 256):
        fb.note(f"seqlen {L}: {31 / (L - 1):.1%} of predicted tokens see fewer than 32 tokens of context")
    return fb


def check_embedding_share(model, smollm2_share, big_share) -> Feedback:
    """ex-howto-embed: the embedding share of ``model`` (SmolLM2) and of the 7B-sized model."""
    fb = Feedback("ex-howto-embed")
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise TypeError("model must be the loaded Hugging Face model (sparselib.load_model()[0])")
    s, b = _number(smollm2_share, "smollm2_share"), _number(big_share, "big_share")
    if s > 1 or b > 1:
        return fb.fail("give fractions in [0, 1], not percentages")
    c = model.config
    embed = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())  # a tied head is one Parameter: counted once
    want_s = embed / total
    V, d, f, L = c.vocab_size, 4096, 11008, 32
    linears = L * (4 * d * d + 3 * d * f)
    want_b = 2 * V * d / (2 * V * d + linears)
    if not _close(s, want_s, 1e-3):
        tied_twice = 2 * embed / (total + embed)
        hint = (" — SmolLM2 ties lm_head to the embedding: one table, count it once" if _close(s, tied_twice, 1e-3)
                else "; divide the embedding table's size by model.parameters()' total")
        fb.fail(f"SmolLM2: you have {s:.4f}, the model says {want_s:.4f}{hint}")
    if not _close(b, want_b, 1e-3):
        once = V * d / (V * d + linears)
        hint = (" — that counts the table once; this model's lm_head is untied, a second V×d matrix"
                if _close(b, once, 1e-3) else "; q, k, v, o are 4096×4096 and the MLP has three 4096×11008")
        fb.fail(f"7B-sized: you have {b:.4f}, expected {want_b:.4f}{hint}")
    if fb.passed:
        fb.note(f"{want_s:.1%} of SmolLM2 vs {want_b:.1%} of the 7B-sized model is embedding, which "
                f"pruning leaves dense")
    return fb


# --------------------------------------------------------------------------------------------
# Chapter 1
# --------------------------------------------------------------------------------------------
def _nm_saving(n: int, m: int, nbytes: float) -> float:
    kept = m - n
    return 1 - (kept * nbytes + kept * math.ceil(math.log2(m)) / 8) / (m * nbytes)


def check_nm_saving(fn) -> Feedback:
    """ex-landscape-48: your ``fn(n, m, bytes_per_value)`` -> fraction of memory saved."""
    _callable(fn, "check_nm_saving(nm_saving)")
    fb = Feedback("ex-landscape-48")
    # the 2:4 cases come from format24's own byte count, the rest from the general rule
    cases = {(2, 4, 2): storage_bytes(64, 64, torch.float16)["saving"],
             (2, 4, 1): storage_bytes(64, 64, torch.int8)["saving"],
             (4, 8, 2): _nm_saving(4, 8, 2), (1, 4, 2): _nm_saving(1, 4, 2), (8, 16, 4): _nm_saving(8, 16, 4)}
    for (n, m, b), want in cases.items():
        got = _run(fb, fn, n, m, b)
        if got is None:
            return fb
        got = _number(got, f"fn({n}, {m}, {b})")
        if _close(got, want, 1e-9):
            continue
        if _close(got, 100 * want, 1e-9):
            return fb.fail("return a fraction (0.4375), not a percentage")
        if _close(got, n / m, 1e-9):
            return fb.fail(f"fn({n}, {m}, {b}) = {got}: that ignores the metadata; each kept value "
                           f"also stores its position, ceil(log2(m)) bits")
        if (n, m, b) == (2, 4, 2) and _close(got, 0.375, 1e-9):
            return fb.fail("0.375 for 2:4 fp16 is the figure that charges 4 bits of metadata per kept value "
                           "(or int8's saving); the format stores 2 bits per kept value: "
                           "(2·2 B + 2·2 bit) / 8 B = 4.5/8, so 43.75% saved")
        fb.fail(f"fn({n}, {m}, {b}) = {got:.6f}, expected {want:.6f} (kept values × (bytes + "
                f"ceil(log2 m) bits), over m × bytes)")
    if fb.passed:
        fb.note("2:4 fp16 saves 43.75%, 4:8 fp16 40.625%: longer indices cost more than the larger group buys")
    return fb


def check_group_code_saving(saving) -> Feedback:
    """ex-landscape-bits: the fp16 saving of 2:4 with one 3-bit code per group of 4."""
    fb = Feedback("ex-landscape-bits")
    got = _number(saving, "saving")
    bits = math.ceil(math.log2(math.comb(4, 2)))
    want = 1 - (2 * 2 + bits / 8) / 8
    if _close(got, want, 1e-9):
        return fb.note(f"{bits} bits encode the {math.comb(4, 2)} patterns: 4 + 3/8 of 8 bytes, {want:.4%} saved")
    if _close(got, 100 * want, 1e-9):
        return fb.fail("return a fraction, not a percentage")
    if _close(got, 0.4375, 1e-9):
        return fb.fail("0.4375 is the 2-bits-per-kept-value format (4 bits per group); the question "
                       "asks for one 3-bit code per group")
    if _close(got, 0.5, 1e-9):
        return fb.fail("0.5 leaves out the metadata; the group still needs its 3-bit code")
    return fb.fail(f"{got} is not it: a group of 4 fp16 values (8 bytes) keeps 2 values (4 bytes) "
                   f"plus ceil(log2 C(4,2)) bits")


def check_breakeven(speedups: dict, breakeven) -> Feedback:
    """ex-landscape-breakeven: your measured CSR speedups ``{sparsity: speedup}`` and the sparsity
    you conclude CSR starts to win at. Timings are your machine's; the checker tests consistency."""
    fb = Feedback("ex-landscape-breakeven")
    if not isinstance(speedups, dict) or len(speedups) < 2:
        raise TypeError("speedups must be a dict {sparsity: measured speedup} with at least two entries")
    pts = sorted((_number(s, "a sparsity"), _number(v, "a speedup")) for s, v in speedups.items())
    if any(not 0 < s < 1 or v <= 0 for s, v in pts):
        raise ValueError("sparsities must be in (0, 1) and speedups positive (dense time / CSR time)")
    b = _number(breakeven, "breakeven")
    # CSR time ≈ k × (kept fraction) × dense time, so each point estimates k = 1 / ((1 - s) · speedup)
    ks = [1 / ((1 - s) * v) for s, v in pts]
    k = sum(ks) / len(ks)
    fb.note("cost of a kept weight in CSR relative to dense, per point: "
            + ", ".join(f"{s:.0%}: k = {kk:.1f}" for (s, _), kk in zip(pts, ks)))
    if max(ks) > 1.5 * min(ks):
        fb.note("your k estimates disagree by more than 1.5×: time with more repeats (median_seconds) "
                "and on an idle machine")
    predicted = 1 - 1 / k
    if abs(b - predicted) > 0.03:
        fb.fail(f"your break-even {b:.0%} is far from where your own measurements cross 1×, about "
                f"{predicted:.0%} (= 1 - 1/k with k = {k:.1f})")
    else:
        fb.note(f"consistent: your measurements cross 1× near {predicted:.0%}")
    return fb


# --------------------------------------------------------------------------------------------
# Chapter 2
# --------------------------------------------------------------------------------------------
def check_magnitude_mask(fn) -> Feedback:
    """ex-magnitude-row: your ``fn(W, s)`` -> keep-mask dropping ``int(in·s)`` smallest |w| per row."""
    _callable(fn, "check_magnitude_mask(magnitude_mask)")
    fb = Feedback("ex-magnitude-row")
    for W in _awkward_weights():
        W0 = W.clone()
        for s in (0.0, 0.5, 0.7):
            keep = _run(fb, fn, W, s)
            if keep is None or not _mask_shape_ok(fb, keep, W):
                return fb
            keep = keep.bool()
            if not torch.equal(W, W0):
                return fb.fail("your function changed W in place; work on a copy (W.abs() makes one)")
            want = unstructured_mask(magnitude_scores(W), s, per="row")
            if torch.equal(keep, want):
                continue
            k = int(W.shape[1] * s)
            dropped = (~keep).sum(1)
            if not (dropped == k).all():
                r = int((dropped != k).nonzero()[0])
                if (~keep).sum() == (~want).sum():
                    return fb.fail(f"s={s}: the total is right but row {r} drops {int(dropped[r])} instead "
                                   f"of {k}: this is one threshold per matrix; the exercise asks per row")
                return fb.fail(f"s={s}: row {r} drops {int(dropped[r])} weights, expected int({W.shape[1]}·{s}) = {k}")
            if torch.equal(keep, ~want) or (W.abs()[keep].mean() < W.abs()[~keep].mean()):
                return fb.fail(f"s={s}: you keep the smallest magnitudes; keep the largest")
            if torch.equal(keep, unstructured_mask(W, s, per="row")):
                return fb.fail(f"s={s}: you rank by w, not |w|: a large negative weight matters as much as a "
                               f"large positive one")
            if torch.equal(torch.sort(W.abs() * keep, 1).values, torch.sort(W.abs() * want, 1).values):
                fb.note(f"s={s}: your mask keeps the same magnitudes but breaks ties differently "
                        f"(sparselib drops the lower index first, with a stable sort); fine for pruning")
                continue
            return fb.fail(f"s={s}: right counts per row, but different weights than the {k} smallest |w| of each row")
    if fb.passed:
        fb.note("exact per-row counts, |w| ranking, inputs untouched, ties handled")
    return fb


def check_magnitude_types(model, removed_attn, removed_mlp, ppl_dense, ppl_attn, ppl_mlp) -> Feedback:
    """ex-magnitude-types: how many weights you removed from attention and from the MLPs (50 % of
    each), and the three perplexities. Counts are checked exactly; the costs are yours to interpret."""
    from ..models import decoder_layers, layer_linears, weight_of

    fb = Feedback("ex-magnitude-types")
    if not isinstance(model, nn.Module):
        raise TypeError("model must be the loaded model (sparselib.load_model()[0])")
    a, m = _number(removed_attn, "removed_attn"), _number(removed_mlp, "removed_mlp")
    d, pa, pm = (_number(x, n) for x, n in ((ppl_dense, "ppl_dense"), (ppl_attn, "ppl_attn"), (ppl_mlp, "ppl_mlp")))
    want = {"attn": 0, "mlp": 0}
    for layer in decoder_layers(model):
        for name, lin in layer_linears(layer).items():
            out, inp = weight_of(lin).shape
            want["mlp" if "mlp" in name else "attn"] += out * int(inp * 0.5)
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
    return fb


# --------------------------------------------------------------------------------------------
# Chapter 3
# --------------------------------------------------------------------------------------------
def check_wanda_24(fn) -> Feedback:
    """ex-wanda-score: your ``fn(W, X)`` -> 2:4 keep-mask from Wanda scores ``|W_ij|·‖X_j‖``."""
    _callable(fn, "check_wanda_24(my_wanda_24)")
    fb = Feedback("ex-wanda-score")
    g = torch.Generator().manual_seed(5)
    W = torch.randn(8, 32, generator=g)
    X = torch.randn(64, 32, generator=g) * torch.exp(2 * torch.randn(32, generator=g))  # uneven channels
    W0, X0 = W.clone(), X.clone()
    keep = _run(fb, fn, W, X)
    if keep is None or not _mask_shape_ok(fb, keep, W):
        return fb
    keep = keep.bool()
    if not (torch.equal(W, W0) and torch.equal(X, X0)):
        return fb.fail("your function changed W or X in place")
    groups = keep.reshape(W.shape[0], -1, 4).sum(-1)
    if not (groups == 2).all():
        r, grp = (groups != 2).nonzero()[0].tolist()
        return fb.fail(f"row {r}, group {grp} (inputs {4 * grp}..{4 * grp + 3}) keeps {int(groups[r, grp])} "
                       f"of 4; 2:4 keeps exactly 2 of every 4 consecutive inputs of a row")
    want = nm_mask(wanda_scores(W, input_norms(X)), 2, 4)
    if torch.equal(keep, want):
        return fb.note("matches sparselib's Wanda 2:4 mask")
    if torch.equal(keep, nm_mask(magnitude_scores(W), 2, 4)):
        return fb.fail("this is the magnitude mask: multiply |W| by each input channel's norm ‖X_j‖")
    if torch.equal(keep, nm_mask(W.abs() * X.norm(dim=1)[: W.shape[1]], 2, 4)):
        return fb.fail("wrong axis: ‖X_j‖ is over the tokens (dim 0 of X [tokens, in]), one norm per input channel")
    if torch.equal(keep, nm_mask(W * input_norms(X), 2, 4)):
        return fb.fail("use |W|: a large negative weight matters as much as a positive one")
    S = wanda_scores(W, input_norms(X))
    if torch.equal(keep, ~want) or S[keep].mean() < S[~keep].mean():
        return fb.fail("you keep the 2 lowest scores of each group; keep the 2 highest")
    return fb.fail(f"{int((keep != want).sum())} of {W.numel()} entries differ from the Wanda 2:4 mask; "
                   f"check the score |W_ij|·‖X_j‖₂ and that groups are consecutive inputs of a row")


def check_outlier_fractions(W, X, magnitude_fraction, wanda_fraction) -> Feedback:
    """ex-wanda-outlier: for the ``W`` and ``X`` you used, the fraction of the strongest input
    channel's weights that magnitude 50 % and Wanda 50 % prune (per row)."""
    fb = Feedback("ex-wanda-outlier")
    W, X = _matrix(W, "W"), _matrix(X, "X")
    if X.shape[-1] != W.shape[1]:
        raise ValueError(f"X must be [tokens, {W.shape[1]}] (the inputs W reads), got {tuple(X.shape)}")
    fm, fw = _number(magnitude_fraction, "magnitude_fraction"), _number(wanda_fraction, "wanda_fraction")
    norms = input_norms(X)
    j = int(norms.argmax())
    want_m = float((~unstructured_mask(magnitude_scores(W), 0.5, per="row"))[:, j].float().mean())
    want_w = float((~unstructured_mask(wanda_scores(W, norms), 0.5, per="row"))[:, j].float().mean())
    for got, want, name in ((fm, want_m, "magnitude"), (fw, want_w, "Wanda")):
        if abs(got - want) > 1e-6:
            hint = (" — those are the kept fractions; the question asks for the pruned ones"
                    if abs(got - (1 - want)) < 1e-6 else
                    f"; the outlier channel is input {j} (largest ‖X_j‖ = {float(norms[j]):.1f}), a column of W")
            fb.fail(f"{name}: you have {got:.3f}, expected {want:.3f}{hint}")
    if fb.passed:
        fb.note(f"channel {j}: magnitude prunes {want_m:.0%} of its weights, Wanda {want_w:.0%}")
    return fb


# --------------------------------------------------------------------------------------------
# Chapter 4
# --------------------------------------------------------------------------------------------
def _relative_error(W, W_hat, H) -> float:
    D, W = (W - W_hat).double(), W.double()
    return float(torch.einsum("ij,jk,ik->", D, H.double(), D) / torch.einsum("ij,jk,ik->", W, H.double(), W))


def check_damping_errors(W, H, errors: dict) -> Feedback:
    """ex-sgpt-damping: your ``{percdamp: relative reconstruction error}`` for SparseGPT 50 % on
    ``W`` with ``H``; recomputed here and compared (1 % tolerance)."""
    fb = Feedback("ex-sgpt-damping")
    W, H = _matrix(W, "W"), _matrix(H, "H")
    if not isinstance(errors, dict) or not errors:
        raise TypeError("errors must be a dict {percdamp: relative error}, e.g. {0.01: 0.05, 0.1: 0.06}")
    want = {}
    for p, got in errors.items():
        p, got = _number(p, "a percdamp"), _number(got, f"errors[{p}]")
        if p <= 0:
            raise ValueError("percdamp values must be positive")
        want[p] = _relative_error(W, sparsegpt_prune(W, H.float(), sparsity=0.5, percdamp=p)[0], H)
        if abs(got - want[p]) > 0.01 * want[p]:
            hint = " (absolute, not relative? divide by the dense WHWᵀ)" if got > 10 * want[p] else ""
            fb.fail(f"percdamp {p}: you have {got:.4g}, recomputed {want[p]:.4g}{hint}")
    best = min(want, key=want.get)
    fb.note("recomputed: " + ", ".join(f"{p:g} → {e:.4f}" for p, e in sorted(want.items()))
            + f"; lowest at percdamp {best:g}")
    return fb


def check_blocksize_claim(W, H, same_for_24: bool, same_for_unstructured: bool) -> Feedback:
    """ex-sgpt-blocksize: your conclusions — do blocksize 16 and 128 give the same mask on this layer
    for 2:4, and for unstructured 50 %? Checked by running both."""
    fb = Feedback("ex-sgpt-blocksize")
    W, H = _matrix(W, "W"), _matrix(H, "H")
    if not isinstance(same_for_24, bool) or not isinstance(same_for_unstructured, bool):
        raise TypeError("same_for_24 and same_for_unstructured must be True or False")
    d24 = int((sparsegpt_prune(W, H, n=2, m=4, blocksize=16)[1] != sparsegpt_prune(W, H, n=2, m=4, blocksize=128)[1]).sum())
    dun = int((sparsegpt_prune(W, H, sparsity=0.5, blocksize=16)[1] != sparsegpt_prune(W, H, sparsity=0.5, blocksize=128)[1]).sum())
    fb.note(f"mask entries that differ between blocksize 16 and 128: 2:4 {d24} of {W.numel()}, "
            f"unstructured {dun}")
    if same_for_24 != (d24 == 0):
        fb.fail("for 2:4 " + ("they differ here: float32 near-ties inside a group can flip, even though the "
                              "arithmetic is the same in exact terms" if d24 else "they are identical here"))
    if same_for_unstructured != (dun == 0):
        fb.fail("for unstructured 50 % " + ("they differ: the block size decides which weights share one "
                                             "threshold" if dun else "they happen to agree on this layer"))
    return fb


# --------------------------------------------------------------------------------------------
# Chapter 5
# --------------------------------------------------------------------------------------------
def check_fold(fn) -> Feedback:
    """ex-slicegpt-fold: your ``fn(ln, lin)`` -> ``(W', b')`` so that a bare RMSNorm followed by
    ``x @ W'.T + b'`` equals ``lin(ln(x))`` for mean-free ``x``."""
    from ..slicegpt import RMSNorm

    _callable(fn, "check_fold(fold)")
    fb = Feedback("ex-slicegpt-fold")
    g = torch.Generator().manual_seed(7)
    for bias in (True, False):
        D = 24
        ln = nn.LayerNorm(D)
        lin = nn.Linear(D, 8, bias=bias)
        with torch.no_grad():
            ln.weight.copy_(0.5 + torch.rand(D, generator=g))
            ln.bias.copy_(torch.randn(D, generator=g))
        before = [p.detach().clone() for p in (*ln.parameters(), *lin.parameters())]
        out = _run(fb, fn, ln, lin)
        if out is None:
            return fb
        if not (isinstance(out, tuple) and len(out) == 2):
            return fb.fail("return a pair (W_new, b_new)")
        W2, b2 = out
        if any(not torch.equal(a, b.detach()) for a, b in zip(before, (*ln.parameters(), *lin.parameters()))):
            return fb.fail("your function changed the LayerNorm or the Linear in place; return new tensors")
        if not isinstance(W2, torch.Tensor) or W2.shape != lin.weight.shape:
            return fb.fail(f"W_new must have the linear's shape {tuple(lin.weight.shape)}")
        x = torch.randn(10, D, generator=g)
        x = x - x.mean(-1, keepdim=True)
        with torch.no_grad():
            want = lin(ln(x))
            got = RMSNorm(D, ln.eps)(x) @ W2.T + (b2 if b2 is not None else 0)
        if torch.allclose(got, want, atol=1e-5):
            continue
        with torch.no_grad():
            no_beta = RMSNorm(D, ln.eps)(x) @ (lin.weight * ln.weight).T + (lin.bias if bias else 0)
        if torch.allclose(got, no_beta, atol=1e-5):
            return fb.fail("γ is folded right, but β is missing: b' = b + W β")
        if torch.allclose(W2, lin.weight * ln.weight, atol=1e-6):
            return fb.fail(f"W' is right; b' is not (bias={bias}): b' = b + W β (with b = 0 when the linear "
                           f"has no bias)")
        if torch.allclose(W2.T, (lin.weight.T * ln.weight[:, None]).T, atol=1e-6):
            return fb.fail("scale column j of W by γ_j (W * γ broadcasts over rows)")
        return fb.fail(f"outputs differ by up to {float((got - want).abs().max()):.3g}: W' = W diag(γ), "
                       f"b' = b + W β")
    if fb.passed:
        fb.note("exact for linears with and without bias; inputs untouched")
    return fb


def _sliced_params(D, d, F, Dkv, V, L, slice_head=False) -> int:
    total = V * d + V * (d if slice_head else D)
    for i in range(L):
        d_out = D if i == L - 1 and not slice_head else d
        total += (D + 2 * Dkv) * d + d * D + 2 * F * d + F * d_out + d * d + d * d_out
    return total


def check_sliced_params(fn) -> Feedback:
    """ex-slicegpt-count: your ``fn(D, d, F, Dkv, V, L)`` -> parameters of a Llama-family model
    sliced to width ``d`` (head not sliced). Checked against a real slice of a small random model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..slicegpt import slice_model

    _callable(fn, "check_sliced_params(sliced_params)")
    fb = Feedback("ex-slicegpt-count")
    torch.manual_seed(0)
    c = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                    tie_word_embeddings=True)
    model = LlamaForCausalLM(c).eval()
    report = slice_model(model, torch.randint(0, 96, (4, 16)), 0.25, progress=False)
    args = (64, report.dim, 96, 2 * 64 // 4, 96, 3)
    got = _run(fb, fn, *args)
    if got is None:
        return fb
    got = _number(got, "your count")
    want = report.params_after
    if got == want:
        return fb.note(f"{int(got):,} parameters, as the sliced model has (D=64 → d={report.dim}, 3 layers)")
    D, d, F, Dkv, V, L = args
    if got == want - V * D:
        return fb.fail("missing the untied head: V × D (SliceGPT unties lm_head from the embedding)")
    if got == want - L * d * d - (L - 1) * d * d - d * D:
        return fb.fail("missing the shortcut matrices: two per layer (d×d, and d×D in the last layer)")
    if got == _sliced_params(D, d, F, Dkv, V, L, slice_head=True):
        return fb.fail("that slices the last layer's output and the head too; here the head is not "
                       "sliced, so the last layer writes D rows")
    return fb.fail(f"your formula gives {int(got):,} for D=64, d={d}, F=96, Dkv=32, V=96, L=3; the sliced "
                   f"model has {want:,}. Count q,k,v ((D+2Dkv)·d), o (d·D), gate/up (2F·d), down (F·d_out), "
                   f"the shortcuts, the embedding V·d and the head V·D")


def check_slice_head(model, params_after, ideal_ratio) -> Feedback:
    """ex-slicegpt-head: for ``model`` sliced with ``slice_head=True``, your parameter count and ideal
    speed ratio (dense matmul weights / sliced)."""
    from ..models import decoder_layers
    from ..slicegpt import SlicedLayer, matmul_weights

    fb = Feedback("ex-slicegpt-head")
    if not isinstance(model, nn.Module) or not isinstance(decoder_layers(model)[0], SlicedLayer):
        raise TypeError("model must be the sliced model (after sparselib.slice_model(..., slice_head=True))")
    p, r = _number(params_after, "params_after"), _number(ideal_ratio, "ideal_ratio")
    head = model.get_output_embeddings()
    if head.in_features == model.config.hidden_size:
        return fb.fail("this model's head still reads the full width: slice with slice_head=True")
    c = model.config
    Dkv = c.num_key_value_heads * getattr(c, "head_dim", c.hidden_size // c.num_attention_heads)
    want_p = _sliced_params(c.hidden_size, head.in_features, c.intermediate_size, Dkv, c.vocab_size,
                            c.num_hidden_layers, slice_head=True)
    if p != want_p:
        fb.fail(f"params_after: you have {int(p):,}, the sliced model has {want_p:,}")
    dense_w = (c.num_hidden_layers * ((c.hidden_size + 2 * Dkv) * c.hidden_size + c.hidden_size ** 2
                                      + 3 * c.intermediate_size * c.hidden_size) + c.vocab_size * c.hidden_size)
    want_r = dense_w / matmul_weights(model)
    if abs(r - want_r) > 1e-3 * want_r:
        fb.fail(f"ideal_ratio: you have {r:.4f}, expected {want_r:.4f} = dense matmul weights "
                f"({dense_w:,}) / sliced ({matmul_weights(model):,}), shortcuts included")
    if fb.passed:
        fb.note(f"{want_p:,} parameters, ideal speed-up {want_r:.3f}×")
    return fb


# --------------------------------------------------------------------------------------------
# Chapter 6
# --------------------------------------------------------------------------------------------
def check_meta_byte(first_group, second_group) -> Feedback:
    """ex-stc-meta-byte: the kept positions (two per group) you read from the byte ``0b11010100``."""
    from ..format24 import compress_24

    fb = Feedback("ex-stc-meta-byte")
    for g, name in ((first_group, "first_group"), (second_group, "second_group")):
        if not isinstance(g, (tuple, list)) or len(g) != 2 or not all(isinstance(i, int) and 0 <= i < 4 for i in g):
            raise TypeError(f"{name} must be two positions in 0..3, e.g. (0, 2)")
    # find the groups that compress_24 itself encodes as this byte
    want = None
    for a in range(4):
        for b in range(a + 1, 4):
            for c_ in range(4):
                for d in range(c_ + 1, 4):
                    W = torch.zeros(1, 8)
                    W[0, [a, b, 4 + c_, 4 + d]] = torch.tensor([1.0, 2.0, 3.0, 4.0])
                    if int(compress_24(W).meta[0, 0]) == 0b11010100:
                        want = ((a, b), (c_, d))
    got = (tuple(first_group), tuple(second_group))
    if got == want:
        return fb.note(f"first group keeps {want[0]}, second {want[1]}")
    if got == (want[1], want[0]):
        return fb.fail("the low nibble is the first group: read the byte from its right end")
    if got == tuple(tuple(sorted(3 - i for i in g)) for g in want) or got == ((1, 0), (3, 1)):
        return fb.fail("within a nibble bits 0–1 come first (the rightmost two bits)")
    return fb.fail("split 0b11010100 into nibbles: low 0100, high 1101; in each, bits 0–1 are the first "
                   "kept position and bits 2–3 the second")


def check_roofline(fn) -> Feedback:
    """ex-stc-roofline: your ``fn(T)`` -> the model's 2:4 speed-up for the 4096 × 11008 fp16 layer at
    ``T`` tokens with R = 150 (peak FLOP/s over bytes/s)."""
    _callable(fn, "check_roofline(model_speedup)")
    fb = Feedback("ex-stc-roofline")
    out_f, in_f, R = 4096, 11008, 150.0
    meta = storage_bytes(out_f, in_f, torch.float16)
    ratio = meta["total"] / meta["dense"]  # 4.5 / 8, from the format itself

    def want(T):
        dense = max(2 * T * in_f * out_f / R, 2 * (in_f * out_f + T * in_f + T * out_f))
        sparse = max(T * in_f * out_f / R, 2 * (in_f * out_f * ratio + T * in_f + T * out_f))
        return dense / sparse

    for T in (1, 16, 128, 256, 1024, 8192):
        got = _run(fb, fn, T)
        if got is None:
            return fb
        got = _number(got, f"fn({T})")
        if abs(got - want(T)) <= 1e-3 * want(T):
            continue
        if T == 1 and abs(got - 2.0) < 0.05:
            return fb.fail("fn(1) ≈ 2: at one token the layer is bound by the bytes it reads, and 2:4 "
                           "keeps 4.5 of 8 bytes of weights, not half")
        return fb.fail(f"fn({T}) = {got:.4f}, expected {want(T):.4f}: time = max(FLOPs / R, bytes), "
                       f"2:4 halves the FLOPs and keeps {ratio} of the weight bytes")
    return fb.note(f"speed-up {want(1):.2f}× at T=1, {want(8192):.2f}× at T=8192")


#: Every exercise label in the book and the checker that grades it.
CHECKERS = {
    "ex-howto-seqlen": check_seqlen_effect,
    "ex-howto-embed": check_embedding_share,
    "ex-landscape-48": check_nm_saving,
    "ex-landscape-bits": check_group_code_saving,
    "ex-landscape-breakeven": check_breakeven,
    "ex-magnitude-row": check_magnitude_mask,
    "ex-magnitude-types": check_magnitude_types,
    "ex-wanda-score": check_wanda_24,
    "ex-wanda-outlier": check_outlier_fractions,
    "ex-sgpt-damping": check_damping_errors,
    "ex-sgpt-blocksize": check_blocksize_claim,
    "ex-slicegpt-fold": check_fold,
    "ex-slicegpt-count": check_sliced_params,
    "ex-slicegpt-head": check_slice_head,
    "ex-stc-meta-byte": check_meta_byte,
    "ex-stc-roofline": check_roofline,
}


# --------------------------------------------------------------------------------------------
# Chapter 8
# --------------------------------------------------------------------------------------------
def check_stored_size_24(model, nbytes) -> Feedback:
    """ex-compare-size24: your fp16 size in bytes of ``model`` with every decoder linear in 2:4 format."""
    from ..models import decoder_layers, layer_linears, weight_of

    fb = Feedback("ex-compare-size24")
    if not isinstance(model, nn.Module):
        raise TypeError("model must be the loaded model (sparselib.load_model()[0])")
    got = _number(nbytes, "nbytes")
    linears = [weight_of(l) for layer in decoder_layers(model) for l in layer_linears(layer).values()]
    in_linears = sum(W.numel() for W in linears)
    other = sum(p.numel() for p in model.parameters()) - in_linears
    lin24 = sum(storage_bytes(*W.shape, torch.float16)["total"] for W in linears)
    want = 2 * other + lin24
    if got == want:
        return fb.note(f"{want / 1e6:.2f} MB, {want / (2 * (other + in_linears)):.1%} of dense fp16")
    if got == 2 * other + 2 * in_linears / 2:
        return fb.fail("that leaves out the metadata: each kept value also stores a 2-bit position")
    if got == 2 * other + in_linears * (1 + 0.5):
        return fb.fail("that charges 4 bits per kept value (the 37.5% figure); the format stores 2 bits per kept value")
    if model.get_output_embeddings() is not None and got == want + 2 * model.get_output_embeddings().weight.numel():
        return fb.fail("the head is tied to the embedding in SmolLM2: one table, count it once")
    if abs(got - want / 2) < 1:
        return fb.fail("bytes, not fp16 elements: 2 bytes per value")
    return fb.fail(f"you have {got:,.0f} bytes, expected {want:,}: dense fp16 for the {other:,} parameters "
                   f"outside the decoder linears, and 4.5 of 8 bytes per group of 4 inside them")


def check_within_budget(answers: dict, budget: float = 2.0) -> Feedback:
    """ex-compare-budget: ``{method: highest recorded sparsity with perplexity ≤ budget × dense}``,
    checked against the recorded sweep."""
    from .results import load_result, recorded

    fb = Feedback("ex-compare-budget")
    if not isinstance(answers, dict) or not answers:
        raise TypeError('answers must be a dict such as {"magnitude": 0.3, "wanda": 0.5, "sparsegpt": 0.5}')
    dense = load_result("sweep_smollm2_brown")["dense"]
    for method, got in answers.items():
        if method not in ("magnitude", "wanda", "sparsegpt"):
            raise ValueError(f"unknown method {method!r}; use magnitude, wanda, sparsegpt")
        got = _number(got, f"answers[{method!r}]")
        curve = recorded(method, [0.1, 0.3, 0.5, 0.6, 0.7])
        within = [s for s, ppl in curve.items() if ppl <= budget * dense]
        want = max(within) if within else 0.0
        if got != want:
            over = {s: round(p, 1) for s, p in curve.items() if s > want}
            fb.fail(f"{method}: you have {got}, the sweep says {want} (dense {dense:.1f}, budget "
                    f"{budget * dense:.1f}; above it: {over})")
    if fb.passed:
        fb.note("matches the recorded sweep")
    return fb


CHECKERS.update({"ex-compare-size24": check_stored_size_24, "ex-compare-budget": check_within_budget})


# --------------------------------------------------------------------------------------------
# Chapter 7
# --------------------------------------------------------------------------------------------
def check_outlier_threshold(sparsity) -> Feedback:
    """ex-viz-threshold: the first slider sparsity at which Wanda prunes a weight on an outlier channel
    of the toy layer (``sparselib.seed_example()``)."""
    from .viz import seed_example, visualizer_data

    fb = Feedback("ex-viz-threshold")
    got = _number(sparsity, "sparsity")
    W, x_norm = seed_example()
    data = visualizer_data(W, x_norm)
    first = {mode: next((s for s, st in zip(data["sparsities"], data["states"][mode]) if st["pruned_on_outliers"]),
                        None) for mode in ("magnitude", "wanda")}
    want = first["wanda"]
    cols = W.shape[1]
    ordinary = int((~torch.tensor(data["outliers"])).sum())
    if _close(got, want):
        return fb.note(f"at {want:.1%} a row loses {int(cols * want)} of its {cols} weights, more than its "
                       f"{ordinary} ordinary channels, so an outlier weight must go")
    if _close(got, int(cols * want)):
        return fb.fail(f"that is the number of weights pruned per row; give the fraction, the slider value "
                       f"({int(cols * want)} of {cols})")
    if first["magnitude"] is not None and _close(got, first["magnitude"]):
        return fb.fail("that is where *magnitude* first prunes an outlier weight; select Wanda")
    earlier = [s for s in data["sparsities"] if s < want]
    if earlier and _close(got, earlier[-1]):
        return fb.fail("at that step Wanda still keeps every outlier weight; the question asks for the first "
                       "step that prunes one")
    return fb.fail(f"you have {got}, but Wanda first prunes an outlier weight at {want}: compare, per row, "
                   f"the number of weights pruned with the number of ordinary channels")


def check_row_errors(fn) -> Feedback:
    """ex-viz-row-error: your ``fn(W, keep, x_norm)`` -> ``e_i = sqrt(Σ_j (W_ij − Ŵ_ij)² ‖X_j‖²)`` per
    output row, with ``Ŵ = W·keep``."""
    from .viz import row_errors

    _callable(fn, "check_row_errors(my_row_errors)")
    fb = Feedback("ex-viz-row-error")
    g = torch.Generator().manual_seed(7)
    W = torch.randn(6, 16, generator=g)
    x_norm = torch.rand(16, generator=g) * torch.exp(2 * torch.randn(16, generator=g))  # uneven channels
    x_norm[3] = 0.0                                                                     # a dead channel
    keep = unstructured_mask(wanda_scores(W, x_norm), 0.5, per="row")
    keep[0] = True                                   # a row with nothing pruned
    keep[1] = False                                  # a row with everything pruned
    W0, keep0, x0 = W.clone(), keep.clone(), x_norm.clone()
    got = _run(fb, fn, W, keep, x_norm)
    if got is None:
        return fb
    if not (torch.equal(W, W0) and torch.equal(keep, keep0) and torch.equal(x_norm, x0)):
        return fb.fail("your function changed W, keep or x_norm in place")
    if not isinstance(got, torch.Tensor):
        return fb.fail(f"return a torch.Tensor with one error per output row, not {type(got).__name__}")
    got = got.detach().float().reshape(-1) if got.numel() == W.shape[0] else got
    if got.shape != (W.shape[0],):
        return fb.fail(f"the result has shape {tuple(got.shape)}; return one number per output row "
                       f"({W.shape[0]}), summing over the inputs j")
    want = row_errors(W, keep, x_norm)
    close = lambda x: torch.allclose(got, x.float(), rtol=1e-4, atol=1e-6)  # noqa: E731
    if close(want):
        return fb.note("matches sparselib.row_errors, including a row with nothing pruned and one with everything")
    pruned = W * ~keep
    dense = row_errors(W, torch.zeros_like(keep), x_norm)
    if close(want ** 2):
        return fb.fail("that is e_i²: take the square root of the sum")
    if close(row_errors(W, ~keep, x_norm)):
        return fb.fail("you summed over the kept weights; the error comes from the pruned ones, W − Ŵ = W·(1 − keep)")
    if close((pruned.pow(2) * x_norm).sum(1).sqrt()):
        return fb.fail("square the norms too: each pruned weight costs (|W_ij|·‖X_j‖)² = W_ij²·‖X_j‖²")
    if close((pruned.abs() * x_norm).sum(1)):
        return fb.fail("that is the sum of the pruned Wanda scores; e_i is the root of the sum of their squares")
    if close(torch.where(dense > 0, want / dense.clamp_min(1e-30), torch.zeros_like(want))):
        return fb.fail("that is the relative error the bars show; the exercise asks for e_i itself")
    if close(pruned.pow(2).sum(1).sqrt()):
        return fb.fail("the norms are missing: every pruned weight is weighed by its input's norm ‖X_j‖")
    worst = int((got - want.float()).abs().argmax())
    return fb.fail(f"row {worst}: you have {float(got[worst]):.4g}, expected {float(want[worst]):.4g}; "
                   f"sum (W_ij − Ŵ_ij)²·‖X_j‖² over the inputs j, then take the square root")


CHECKERS.update({"ex-viz-threshold": check_outlier_threshold, "ex-viz-row-error": check_row_errors})


# --------------------------------------------------------------------------------------------
# Chapter 9
# --------------------------------------------------------------------------------------------
def _cli_report(out, method: str) -> dict:
    """The report.json of a ``sparselib prune --method <method>`` run written to ``out``."""
    import json
    from pathlib import Path

    path = Path(out) / "report.json"
    if not path.is_file():
        raise ValueError(f"{out} holds no report.json; pass the --out directory of `sparselib prune`")
    report = json.loads(path.read_text())
    if report.get("method") != method:
        raise ValueError(f"{out} is a {report.get('method')} run; run `sparselib prune --method {method} ...`")
    return report


def check_sliced_checkpoint(out, params_dense, params_sliced) -> Feedback:
    """ex-cli-slice: the parameter counts you found for the dense model and for the sliced checkpoint
    that `sparselib prune --method slicegpt` wrote to ``out``."""
    from transformers import AutoModelForCausalLM

    report = _cli_report(out, "slicegpt")
    fb = Feedback("ex-cli-slice")
    dense, sliced = _number(params_dense, "params_dense"), _number(params_sliced, "params_sliced")
    want_dense, want_sliced = report["model"]["parameters_before"], report["model"]["parameters_after"]
    model = AutoModelForCausalLM.from_pretrained(out)  # loads because `import sparselib` registered the type
    if sum(p.numel() for p in model.parameters()) != want_sliced:
        return fb.fail(f"the checkpoint in {out} does not match its report.json; run the command again")
    head = model.get_output_embeddings().weight.numel()
    if dense == want_sliced and sliced == want_dense:
        return fb.fail("the two counts are swapped: params_dense is the model before slicing")
    if dense != want_dense:
        if dense == want_dense + head:
            fb.fail("the dense SmolLM2 ties its head to the embedding: one table, count it once")
        else:
            fb.fail(f"params_dense: you have {int(dense):,}, the dense model has {want_dense:,}")
    if sliced != want_sliced:
        scaled = int(sliced) in (int(0.75 * want_dense), round(0.75 * want_dense))
        fb.fail("slicing removes a quarter of the residual width, not a quarter of the parameters; count the "
                "loaded model's parameters" if scaled else
                f"params_sliced: you have {int(sliced):,}, the checkpoint has {want_sliced:,} "
                f"(sum(p.numel() for p in model.parameters()) on the loaded model)")
    if fb.passed:
        change = "more" if want_sliced > want_dense else "fewer"
        fb.note(f"{want_sliced:,} parameters, {abs(want_sliced - want_dense):,} {change} than dense"
                + (f": slicing unties the head, whose {head:,} weights now count separately"
                   if want_sliced > want_dense else ""))
    return fb


def check_sweep_table(table: dict, least) -> Feedback:
    """ex-cli-sweep: ``{"2:4": ppl, "4:8": ppl, "0.5": ppl}`` read from your three report.json files
    (Wanda, default options) and the pattern you found costs the least, against the recorded sweep."""
    from ..eval import EVAL_TOKENS
    from .results import load_result, sweep_point

    fb = Feedback("ex-cli-sweep")
    patterns = ("2:4", "4:8", "0.5")
    if not isinstance(table, dict) or set(map(str, table)) != set(patterns):
        raise TypeError('table must be a dict {"2:4": ppl, "4:8": ppl, "0.5": ppl} of the perplexities after pruning')
    got = {str(k): _number(v, f"table[{k!r}]") for k, v in table.items()}
    want = {p: sweep_point("wanda", p)["perplexity"] for p in patterns}
    dense = load_result("sweep_smollm2_brown")["dense"]
    for p in patterns:
        if abs(got[p] / want[p] - 1) <= 0.02:
            continue
        if abs(got[p] / dense - 1) <= 0.02:
            fb.fail(f"{p}: {got[p]:.1f} is the perplexity *before* pruning; read report['perplexity']['after']")
        elif any(abs(got[p] / want[q] - 1) <= 0.02 for q in patterns if q != p):
            fb.fail(f"{p}: {got[p]:.1f} is another pattern's value; check which directory is which")
        else:
            fb.fail(f"{p}: you have {got[p]:.1f}, the recorded sweep {want[p]:.1f} (same protocol: 32 x 256 "
                    f"calibration tokens, the standard {EVAL_TOKENS:,} evaluation tokens); did you change "
                    f"--nsamples, --seqlen or --eval-tokens?")
    best = min(want, key=want.get)
    if str(least) != best:
        worst = max(want, key=want.get)
        fb.fail(f"{least} has the {'highest' if str(least) == worst else 'middle'} perplexity; the least costly "
                f"pattern is the one with the lowest perplexity after pruning")
    if fb.passed:
        fb.note(f"{best} costs the least ({want[best]:.1f}); 2:4 ({want['2:4']:.1f}) is the most constrained, "
                f"and the only one Sparse Tensor Cores run")
    return fb


CHECKERS.update({"ex-cli-slice": check_sliced_checkpoint, "ex-cli-sweep": check_sweep_table})
