"""Chapter 0, how to use the course: window length and perplexity, the embedding's share of a model."""
from __future__ import annotations

from ._answers import close, need_model, number
from .registry import checker


@checker("ex-howto-seqlen")
def check_seqlen_effect(fb, prediction: str, ppl_128, ppl_256):
    """Your prediction ("up" or "down") and the two perplexities you measured."""
    if prediction not in ("up", "down"):
        raise ValueError('prediction must be "up" or "down" (what happens to perplexity at seqlen 128)')
    p128, p256 = number(ppl_128, "ppl_128"), number(ppl_256, "ppl_256")
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


@checker("ex-howto-embed")
def check_embedding_share(fb, model, smollm2_share, big_share):
    """The embedding share of ``model`` (SmolLM2) and of the 7B-sized model."""
    need_model(model, "the loaded Hugging Face model (sparselib.load_model()[0])")
    s, b = number(smollm2_share, "smollm2_share"), number(big_share, "big_share")
    if s > 1 or b > 1:
        return fb.fail("give fractions in [0, 1], not percentages")
    embed = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())  # a tied head is one Parameter: counted once
    want_s = embed / total
    V, d, f, L = model.config.vocab_size, 4096, 11008, 32
    linears = L * (4 * d * d + 3 * d * f)
    want_b = 2 * V * d / (2 * V * d + linears)
    if not close(s, want_s, 1e-3):
        tied_twice = 2 * embed / (total + embed)
        hint = (" — SmolLM2 ties lm_head to the embedding: one table, count it once" if close(s, tied_twice, 1e-3)
                else "; divide the embedding table's size by model.parameters()' total")
        fb.fail(f"SmolLM2: you have {s:.4f}, the model says {want_s:.4f}{hint}")
    if not close(b, want_b, 1e-3):
        once = V * d / (V * d + linears)
        hint = (" — that counts the table once; this model's lm_head is untied, a second V×d matrix"
                if close(b, once, 1e-3) else "; q, k, v, o are 4096×4096 and the MLP has three 4096×11008")
        fb.fail(f"7B-sized: you have {b:.4f}, expected {want_b:.4f}{hint}")
    if fb.passed:
        fb.note(f"{want_s:.1%} of SmolLM2 vs {want_b:.1%} of the 7B-sized model is embedding, which "
                f"pruning leaves dense")
