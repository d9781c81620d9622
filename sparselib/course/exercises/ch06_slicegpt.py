"""Chapter 6, SliceGPT: folding a LayerNorm into the next linear, and counting a sliced model."""
from __future__ import annotations

import torch
from torch import nn

from ...models import decoder_layers
from ...slicegpt import RMSNorm, SlicedLayer, matmul_weights, slice_model
from ._answers import call, need_function, number
from .registry import checker


def _fold_case(g: torch.Generator, bias: bool) -> tuple[nn.LayerNorm, nn.Linear]:
    """A LayerNorm with random γ, β and the Linear that reads it."""
    D = 24
    ln, lin = nn.LayerNorm(D), nn.Linear(D, 8, bias=bias)
    with torch.no_grad():
        ln.weight.copy_(0.5 + torch.rand(D, generator=g))
        ln.bias.copy_(torch.randn(D, generator=g))
    return ln, lin


@torch.no_grad()
def _fold_mistake(ln: nn.LayerNorm, lin: nn.Linear, W2, b2, g: torch.Generator) -> str | None:
    """None when ``RMSNorm(x) @ W2ᵀ + b2`` equals ``lin(ln(x))`` for mean-free ``x``, else what differs."""
    D = lin.in_features
    x = torch.randn(10, D, generator=g)
    x = x - x.mean(-1, keepdim=True)
    want = lin(ln(x))
    got = RMSNorm(D, ln.eps)(x) @ W2.T + (b2 if b2 is not None else 0)
    if torch.allclose(got, want, atol=1e-5):
        return None
    no_beta = RMSNorm(D, ln.eps)(x) @ (lin.weight * ln.weight).T + (lin.bias if lin.bias is not None else 0)
    if torch.allclose(got, no_beta, atol=1e-5):
        return "γ is folded right, but β is missing: b' = b + W β"
    if torch.allclose(W2, lin.weight * ln.weight, atol=1e-6):
        return (f"W' is right; b' is not (bias={lin.bias is not None}): b' = b + W β (with b = 0 when the "
                f"linear has no bias)")
    if torch.allclose(W2.T, (lin.weight.T * ln.weight[:, None]).T, atol=1e-6):
        return "scale column j of W by γ_j (W * γ broadcasts over rows)"
    return f"outputs differ by up to {float((got - want).abs().max()):.3g}: W' = W diag(γ), b' = b + W β"


@checker("ex-slicegpt-fold")
def check_fold(fb, fn):
    """Your ``fn(ln, lin)`` -> ``(W', b')`` so that a bare RMSNorm followed by ``x @ W'.T + b'``
    equals ``lin(ln(x))`` for mean-free ``x``."""
    need_function(fn, "check_fold(fold)")
    g = torch.Generator().manual_seed(7)
    for bias in (True, False):
        ln, lin = _fold_case(g, bias)
        params = lambda: (*ln.parameters(), *lin.parameters())  # noqa: E731
        before = [p.detach().clone() for p in params()]
        out = call(fb, fn, ln, lin)
        if out is None:
            return fb
        if not (isinstance(out, tuple) and len(out) == 2):
            return fb.fail("return a pair (W_new, b_new)")
        W2, b2 = out
        if any(not torch.equal(a, b.detach()) for a, b in zip(before, params())):
            return fb.fail("your function changed the LayerNorm or the Linear in place; return new tensors")
        if not isinstance(W2, torch.Tensor) or W2.shape != lin.weight.shape:
            return fb.fail(f"W_new must have the linear's shape {tuple(lin.weight.shape)}")
        mistake = _fold_mistake(ln, lin, W2, b2, g)
        if mistake:
            return fb.fail(mistake)
    fb.note("exact for linears with and without bias; inputs untouched")


def _sliced_params(D, d, F, Dkv, V, L, slice_head=False) -> int:
    """Parameters of a Llama-family model sliced from width D to d, with its two shortcut matrices
    per layer and an untied head (V × d when the head is sliced, else V × D)."""
    total = V * d + V * (d if slice_head else D)
    for i in range(L):
        d_out = D if i == L - 1 and not slice_head else d
        total += (D + 2 * Dkv) * d + d * D + 2 * F * d + F * d_out + d * d + d * d_out
    return total


@checker("ex-slicegpt-count")
def check_sliced_params(fb, fn):
    """Your ``fn(D, d, F, Dkv, V, L)`` -> parameters of a Llama-family model sliced to width ``d``
    (head not sliced). Checked against a real slice of a small random model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    need_function(fn, "check_sliced_params(sliced_params)")
    torch.manual_seed(0)
    c = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                    tie_word_embeddings=True)
    model = LlamaForCausalLM(c).eval()
    report = slice_model(model, torch.randint(0, 96, (4, 16)), 0.25, progress=False)
    args = (64, report.dim, 96, 2 * 64 // 4, 96, 3)
    got = call(fb, fn, *args)
    if got is None:
        return fb
    got = number(got, "your count")
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


@checker("ex-slicegpt-head")
def check_slice_head(fb, model, params_after, ideal_ratio):
    """For ``model`` sliced with ``slice_head=True``, your parameter count and ideal speed ratio
    (dense matmul weights / sliced)."""
    if not isinstance(model, nn.Module) or not isinstance(decoder_layers(model)[0], SlicedLayer):
        raise TypeError("model must be the sliced model (after sparselib.slice_model(..., slice_head=True))")
    p, r = number(params_after, "params_after"), number(ideal_ratio, "ideal_ratio")
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
