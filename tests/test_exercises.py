"""The exercise checkers: a right answer passes, the usual wrong answers fail with the note that
names the mistake, bad arguments raise, and every exercise in the book has a checker it names."""
import json
import math
import re
from pathlib import Path

import pytest
import torch

import sparselib
from sparselib import exercises as ex
from sparselib.slicegpt import matmul_weights

from conftest import tiny_llama

ROOT = Path(__file__).resolve().parents[1]


def notes(fb):
    return " ".join(fb.notes)


# ------------------------------------------------------------------ the book and the registry
def exercise_blocks():
    """(label, text of the exercise block) for every exercise in every chapter."""
    out = []
    for path in sorted((ROOT / "chapters").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            text = "".join(cell["source"])
            for m in re.finditer(r"\{exercise\}\s*\n:label: (\S+)(.*?)\n(:{3,}|`{3,})\s*\n", text, re.S):
                out.append((m.group(1), m.group(2)))
    return out


def test_every_exercise_has_a_checker_that_its_text_names():
    blocks = exercise_blocks()
    assert len(blocks) >= 16
    for label, text in blocks:
        assert label in ex.CHECKERS, f"{label} has no checker in sparselib.exercises.CHECKERS"
        assert f"exercises.{ex.CHECKERS[label].__name__}" in text, f"{label}'s text does not name its checker"


def test_every_exercise_has_a_solution():
    text = "".join(p.read_text() for p in (ROOT / "chapters").glob("*.ipynb"))
    for label, _ in exercise_blocks():
        assert f"{{solution}} {label}" in text


# ------------------------------------------------------------------ chapter 0
def test_seqlen_effect():
    assert ex.check_seqlen_effect("up", 60.0, 45.0)
    assert "less context" in notes(ex.check_seqlen_effect("down", 60.0, 45.0))
    assert "same token ids" in notes(ex.check_seqlen_effect("up", 40.0, 45.0))
    with pytest.raises(ValueError, match='"up" or "down"'):
        ex.check_seqlen_effect("higher", 60, 45)
    with pytest.raises(ValueError, match="finite"):
        ex.check_seqlen_effect("up", float("nan"), 45)


def test_embedding_share():
    model = tiny_llama()
    embed = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    V, d = model.config.vocab_size, 4096
    big = 2 * V * d / (2 * V * d + 32 * (4 * d * d + 3 * d * 11008))
    assert ex.check_embedding_share(model, embed / total, big)
    assert "count it once" in notes(ex.check_embedding_share(model, 2 * embed / (total + embed), big))
    once = V * d / (V * d + 32 * (4 * d * d + 3 * d * 11008))
    assert "untied" in notes(ex.check_embedding_share(model, embed / total, once))
    assert "percentages" in notes(ex.check_embedding_share(model, 100 * embed / total, big))
    with pytest.raises(TypeError, match="loaded Hugging Face model"):
        ex.check_embedding_share("smollm2", 0.1, 0.1)


# ------------------------------------------------------------------ chapter 1
def test_nm_saving():
    def right(n, m, b):
        kept = m - n
        return 1 - (kept * b + kept * math.ceil(math.log2(m)) / 8) / (m * b)

    assert ex.check_nm_saving(right)
    seed_error = lambda n, m, b: 1 - (m - n) * (b + 0.5) / (m * b)  # 4 bits per kept value
    assert "2 bits per kept value" in notes(ex.check_nm_saving(seed_error))
    assert "ignores the metadata" in notes(ex.check_nm_saving(lambda n, m, b: n / m))
    assert "percentage" in notes(ex.check_nm_saving(lambda n, m, b: 100 * right(n, m, b)))
    assert "raised ZeroDivisionError" in notes(ex.check_nm_saving(lambda n, m, b: 1 / 0))
    with pytest.raises(TypeError, match="your function itself"):
        ex.check_nm_saving(0.4375)


def test_group_code_saving():
    assert ex.check_group_code_saving(1 - 4.375 / 8)
    assert "3-bit code" in notes(ex.check_group_code_saving(0.4375))
    assert "metadata" in notes(ex.check_group_code_saving(0.5))
    with pytest.raises(TypeError):
        ex.check_group_code_saving("45%")


def test_breakeven():
    k = 8.0
    speedups = {s: 1 / (k * (1 - s)) for s in (0.8, 0.85, 0.9)}
    assert ex.check_breakeven(speedups, 1 - 1 / k)
    assert "far from" in notes(ex.check_breakeven(speedups, 0.5))
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        ex.check_breakeven({80: 0.5, 90: 1.2}, 0.87)


# ------------------------------------------------------------------ chapter 2
def test_magnitude_mask():
    def right(W, s):
        k = int(W.shape[1] * s)
        keep = torch.ones_like(W, dtype=torch.bool)
        keep.scatter_(1, W.abs().argsort(dim=1, stable=True)[:, :k], False)
        return keep

    assert ex.check_magnitude_mask(right)
    per_matrix = lambda W, s: sparselib.unstructured_mask(W.abs(), s, per="matrix")
    assert "per matrix" in notes(ex.check_magnitude_mask(per_matrix))
    signed = lambda W, s: sparselib.unstructured_mask(W, s, per="row")
    assert "|w|" in notes(ex.check_magnitude_mask(signed))
    inverted = lambda W, s: ~right(W, s) if s else right(W, s)
    assert "drops" in notes(ex.check_magnitude_mask(inverted)) or "smallest" in notes(ex.check_magnitude_mask(inverted))

    def in_place(W, s):
        keep = right(W, s)
        W.mul_(keep)
        return keep

    assert "in place" in notes(ex.check_magnitude_mask(in_place))
    assert "shape" in notes(ex.check_magnitude_mask(lambda W, s: right(W, s).T))


def test_magnitude_types():
    model = tiny_llama()
    attn = mlp = 0
    for layer in sparselib.decoder_layers(model):
        for name, lin in sparselib.layer_linears(layer).items():
            out, inp = sparselib.weight_of(lin).shape
            if "mlp" in name:
                mlp += out * (inp // 2)
            else:
                attn += out * (inp // 2)
    fb = ex.check_magnitude_types(model, attn, mlp, 40.0, 55.0, 50.0)
    assert fb and "per million" in notes(fb)
    assert "vice versa" in notes(ex.check_magnitude_types(model, attn + mlp, mlp, 40.0, 55.0, 50.0))
    assert "reload" in notes(ex.check_magnitude_types(model, attn, mlp, 40.0, 39.0, 50.0))


# ------------------------------------------------------------------ chapter 3
def test_wanda_24():
    def right(W, X):
        S = W.abs() * X.pow(2).sum(0).sqrt()
        groups = S.reshape(W.shape[0], -1, 4)
        drop = groups.topk(2, dim=-1, largest=False).indices
        return torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False).reshape(W.shape)

    assert ex.check_wanda_24(right)
    assert "magnitude mask" in notes(ex.check_wanda_24(lambda W, X: sparselib.nm_mask(W.abs(), 2, 4)))
    assert "keeps 4 of 4" in notes(ex.check_wanda_24(lambda W, X: torch.ones_like(W, dtype=torch.bool)))
    lowest = lambda W, X: ~right(W, X)
    assert "2 highest" in notes(ex.check_wanda_24(lowest))


def test_outlier_fractions():
    g = torch.Generator().manual_seed(0)
    W, X = torch.randn(16, 32, generator=g), torch.randn(100, 32, generator=g)
    X[:, 5] *= 30
    j = 5
    fm = float((~sparselib.unstructured_mask(W.abs(), 0.5))[:, j].float().mean())
    fw = float((~sparselib.unstructured_mask(sparselib.wanda_scores(W, sparselib.input_norms(X)), 0.5))[:, j].float().mean())
    fb = ex.check_outlier_fractions(W, X, fm, fw)
    assert fb and "channel 5" in notes(fb)
    assert fw < fm
    assert "kept fractions" in notes(ex.check_outlier_fractions(W, X, 1 - fm, fw))
    with pytest.raises(ValueError, match=r"X must be \[tokens, 32\]"):
        ex.check_outlier_fractions(W, X[:, :8], fm, fw)
    with pytest.raises(ValueError, match="NaN"):
        ex.check_outlier_fractions(W * float("nan"), X, fm, fw)


# ------------------------------------------------------------------ chapter 4
def _problem():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(512, 64, generator=g) @ (torch.randn(64, 64, generator=g) / 8 + torch.eye(64))
    return torch.randn(16, 64, generator=g), 2 * X.T @ X


def test_damping_errors():
    W, H = _problem()
    ps = (0.001, 0.01, 0.1)
    errs = {p: ex._relative_error(W, sparselib.sparsegpt_prune(W, H, sparsity=0.5, percdamp=p)[0], H) for p in ps}
    fb = ex.check_damping_errors(W, H, errs)
    assert fb and "lowest at percdamp" in notes(fb)
    assert not ex.check_damping_errors(W, H, {p: 2 * e for p, e in errs.items()})
    with pytest.raises(TypeError, match="dict"):
        ex.check_damping_errors(W, H, [0.1])


def test_blocksize_claim():
    W, H = _problem()
    d24 = (sparselib.sparsegpt_prune(W, H, n=2, m=4, blocksize=16)[1]
           != sparselib.sparsegpt_prune(W, H, n=2, m=4, blocksize=128)[1]).any().item()
    dun = (sparselib.sparsegpt_prune(W, H, sparsity=0.5, blocksize=16)[1]
           != sparselib.sparsegpt_prune(W, H, sparsity=0.5, blocksize=128)[1]).any().item()
    assert ex.check_blocksize_claim(W, H, not d24, not dun)
    assert not ex.check_blocksize_claim(W, H, d24, dun)
    with pytest.raises(TypeError):
        ex.check_blocksize_claim(W, H, "yes", False)


# ------------------------------------------------------------------ chapter 5
def test_fold():
    def right(ln, lin):
        b = lin.bias if lin.bias is not None else torch.zeros(lin.out_features)
        return lin.weight * ln.weight, b + lin.weight @ ln.bias

    assert ex.check_fold(right)
    assert "β is missing" in notes(ex.check_fold(lambda ln, lin: (lin.weight * ln.weight, lin.bias)))
    assert "pair" in notes(ex.check_fold(lambda ln, lin: lin.weight * ln.weight))


def test_sliced_params():
    def right(D, d, F, Dkv, V, L):
        total = V * d + V * D
        for i in range(L):
            d_out = D if i == L - 1 else d
            total += (D + 2 * Dkv) * d + d * D + 2 * F * d + F * d_out + d * d + d * d_out
        return total

    assert ex.check_sliced_params(right)
    assert "untied head" in notes(ex.check_sliced_params(lambda *a: right(*a) - a[4] * a[0]))
    assert "shortcut" in notes(ex.check_sliced_params(
        lambda D, d, F, Dkv, V, L: right(D, d, F, Dkv, V, L) - L * d * d - (L - 1) * d * d - d * D))


def test_slice_head():
    model = tiny_llama()
    dense_w = matmul_weights(tiny_llama())  # tied head counts as a matmul once
    calib = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    report = sparselib.slice_model(model, calib, 0.25, slice_head=True, progress=False)
    fb = ex.check_slice_head(model, report.params_after, dense_w / matmul_weights(model))
    assert fb, str(fb)
    assert "params_after" in notes(ex.check_slice_head(model, report.params_after + 1, dense_w / matmul_weights(model)))
    with pytest.raises(TypeError, match="sliced model"):
        ex.check_slice_head(tiny_llama(), 1, 1.0)


# ------------------------------------------------------------------ chapter 6
def test_meta_byte():
    assert ex.check_meta_byte((0, 1), (1, 3))
    assert "low nibble" in notes(ex.check_meta_byte((1, 3), (0, 1)))
    assert not ex.check_meta_byte((0, 2), (1, 3))
    with pytest.raises(TypeError, match="two positions"):
        ex.check_meta_byte((0, 4), (1, 3))


def test_roofline():
    out_f, in_f, R = 4096, 11008, 150.0

    def right(T):
        dense = max(2 * T * in_f * out_f / R, 2 * (in_f * out_f + T * in_f + T * out_f))
        sparse = max(T * in_f * out_f / R, 2 * (in_f * out_f * 4.5 / 8 + T * in_f + T * out_f))
        return dense / sparse

    assert ex.check_roofline(right)

    def half_bytes(T):
        dense = max(2 * T * in_f * out_f / R, 2 * (in_f * out_f + T * in_f + T * out_f))
        sparse = max(T * in_f * out_f / R, 2 * (in_f * out_f * 0.5 + T * in_f + T * out_f))
        return dense / sparse

    assert "4.5 of 8 bytes" in notes(ex.check_roofline(half_bytes))
    assert "raised" in notes(ex.check_roofline(lambda T: T["x"]))


def test_feedback_reads_well():
    fb = ex.check_meta_byte((1, 3), (0, 1))
    assert str(fb).startswith("✗ not yet — ex-stc-meta-byte") and "low nibble" in fb._repr_markdown_()


# ------------------------------------------------------------------ chapter 8
def test_stored_size_24():
    model = tiny_llama()
    linears = [sparselib.weight_of(l) for layer in sparselib.decoder_layers(model)
               for l in sparselib.layer_linears(layer).values()]
    in_linears = sum(W.numel() for W in linears)
    other = sum(p.numel() for p in model.parameters()) - in_linears
    right = 2 * other + sum(W.shape[0] * (W.shape[1] + W.shape[1] // 8) for W in linears)
    assert ex.check_stored_size_24(model, right)
    assert "metadata" in notes(ex.check_stored_size_24(model, 2 * other + in_linears))
    assert "2 bits per kept value" in notes(ex.check_stored_size_24(model, 2 * other + 1.5 * in_linears))


def test_within_budget():
    dense = sparselib.load_result("sweep_smollm2_brown")["dense"]
    answers = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        curve = sparselib.recorded(method, [0.1, 0.3, 0.5, 0.6, 0.7])
        within = [s for s, p in curve.items() if p <= 2 * dense]
        answers[method] = max(within) if within else 0.0
    assert ex.check_within_budget(answers)
    assert not ex.check_within_budget({"wanda": 0.7 if answers["wanda"] != 0.7 else 0.1})
    with pytest.raises(ValueError, match="unknown method"):
        ex.check_within_budget({"slicegpt": 0.25})


# ------------------------------------------------------------------ chapter 7
def test_outlier_threshold():
    W, x_norm = sparselib.seed_example()
    data = sparselib.visualizer_data(W, x_norm)
    first = {m: next(s for s, st in zip(data["sparsities"], data["states"][m]) if st["pruned_on_outliers"])
             for m in ("magnitude", "wanda")}
    assert ex.check_outlier_threshold(first["wanda"])
    assert "magnitude" in notes(ex.check_outlier_threshold(first["magnitude"]))
    assert "fraction" in notes(ex.check_outlier_threshold(int(W.shape[1] * first["wanda"])))
    previous = max(s for s in data["sparsities"] if s < first["wanda"])
    assert "still keeps" in notes(ex.check_outlier_threshold(previous))
    with pytest.raises(TypeError):
        ex.check_outlier_threshold("87.5%")


def test_row_errors():
    def right(W, keep, x_norm):
        return ((W * ~keep).pow(2) * x_norm.pow(2)).sum(1).sqrt()

    assert ex.check_row_errors(right)
    assert "square root" in notes(ex.check_row_errors(lambda W, k, n: right(W, k, n) ** 2))
    assert "kept weights" in notes(ex.check_row_errors(lambda W, k, n: right(W, ~k, n)))
    assert "square the norms" in notes(ex.check_row_errors(lambda W, k, n: ((W * ~k).pow(2) * n).sum(1).sqrt()))
    assert "norms are missing" in notes(ex.check_row_errors(lambda W, k, n: (W * ~k).pow(2).sum(1).sqrt()))
    assert "one number per output row" in notes(ex.check_row_errors(lambda W, k, n: (W * ~k).pow(2) * n.pow(2)))

    def in_place(W, keep, x_norm):
        W.mul_(keep)
        return right(W, keep, x_norm)

    assert "in place" in notes(ex.check_row_errors(in_place))
    with pytest.raises(TypeError, match="your function itself"):
        ex.check_row_errors(1.0)
