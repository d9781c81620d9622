"""The checkers of chapter 5, SparseGPT (ch05_sparsegpt): right answers pass, the usual
wrong answers fail with the note that names the mistake, bad arguments raise."""
import re

import pytest
import torch

import sparselib
from sparselib import exercises as ex
from sparselib.course.exercises import ch05_sparsegpt as ch05
from sparselib.sparsegpt import inverse_hessian_factor


def notes(fb):
    return " ".join(fb.notes)


def _problem():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(512, 64, generator=g) @ (torch.randn(64, 64, generator=g) / 8 + torch.eye(64))
    return torch.randn(16, 64, generator=g), 2 * X.T @ X, X


def relative_error(W, W_hat, X):
    """‖(W − Ŵ)Xᵀ‖² / ‖WXᵀ‖², from the inputs themselves rather than from H."""
    W, W_hat, X = W.double(), W_hat.double(), X.double()
    return float(((W - W_hat) @ X.T).pow(2).sum() / (W @ X.T).pow(2).sum())


def test_damping_errors():
    W, H, X = _problem()
    ps = (0.001, 0.01, 0.1)
    errs = {p: relative_error(W, sparselib.sparsegpt_prune(W, H, sparsity=0.5, percdamp=p)[0], X) for p in ps}
    fb = ex.check_damping_errors(W, H, errs)
    assert fb and "lowest at percdamp" in notes(fb)
    assert not ex.check_damping_errors(W, H, {p: 2 * e for p, e in errs.items()})
    with pytest.raises(TypeError, match="dict"):
        ex.check_damping_errors(W, H, [0.1])


def test_blocksize_claim():
    W, H, _ = _problem()
    d24 = (sparselib.sparsegpt_prune(W, H, n=2, m=4, blocksize=16)[1]
           != sparselib.sparsegpt_prune(W, H, n=2, m=4, blocksize=128)[1]).any().item()
    dun = (sparselib.sparsegpt_prune(W, H, sparsity=0.5, blocksize=16)[1]
           != sparselib.sparsegpt_prune(W, H, sparsity=0.5, blocksize=128)[1]).any().item()
    assert ex.check_blocksize_claim(W, H, not d24, not dun)
    assert not ex.check_blocksize_claim(W, H, d24, dun)
    with pytest.raises(TypeError):
        ex.check_blocksize_claim(W, H, "yes", False)


# ex-sgpt-columns: the learner's column loop from the rows of U ---------------------------------
def sparsegpt_columns(W, U, n, m):
    """The chapter's solution: one column at a time, N:M choice at every m-th column, float64."""
    W, U = W.double().clone(), U.double()
    d = U.diagonal()
    keep = torch.ones_like(W, dtype=torch.bool)
    for i in range(W.shape[1]):
        if i % m == 0:
            drop = (W[:, i:i + m] / d[i:i + m]).pow(2).topk(n, dim=1, largest=False).indices
            keep[:, i:i + m].scatter_(1, drop, False)
        err = (W[:, i] - W[:, i] * keep[:, i]) / d[i]
        W[:, i:] -= torch.outer(err, U[i, i:])
    return W * keep, keep


def columns_float32_in_place(W, U, n, m):
    """Right, in float32, writing into the W it was given (allowed, with a note)."""
    keep = torch.ones_like(W, dtype=torch.bool)
    for i in range(W.shape[1]):
        if i % m == 0:
            drop = (W[:, i:i + m] / U.diagonal()[i:i + m]).pow(2).topk(n, dim=1, largest=False).indices
            keep[:, i:i + m].scatter_(1, drop, False)
        err = W[:, i] * ~keep[:, i] / U[i, i]
        W[:, i + 1:] -= torch.outer(err, U[i, i + 1:])
        W[:, i] *= keep[:, i]
    return W, keep


def mistake(**switches):
    """The solution with one of the usual mistakes switched on."""
    def fn(W, U, n, m):
        return ch05._columns(W, U, n, m, **switches)
    return fn


def hinv_diag_everywhere(W, U, n, m):
    """sqrt([H⁻¹]_jj) in place of U_jj, in the score and in the error."""
    root = (U.double().T @ U.double()).diagonal().sqrt()
    return ch05._columns(W, U, n, m, score_pivot=root, err_pivot=root)


def hinv_diag_score(W, U, n, m):
    """The OBS score with the full inverse's diagonal, w² / [H⁻¹]_jj; the update right."""
    root = (U.double().T @ U.double()).diagonal().sqrt()
    return ch05._columns(W, U, n, m, score_pivot=root)


def column_of_U(W, U, n, m):
    """Takes column i of U (zero below the diagonal) as the update direction: no update at all."""
    return ch05._columns(W, U.T.contiguous(), n, m)


def pruned_left_in(W, U, n, m):
    W_hat, keep = sparsegpt_columns(W, U, n, m)
    return W_hat + 0.5 * ~keep, keep


def keeps_the_lowest(W, U, n, m):
    W_hat, keep = sparsegpt_columns(W, U, n, m)
    return W * ~keep, ~keep


def two_of_four_always(W, U, n, m):
    return sparsegpt_columns(W, U, 2, 4)


def test_sparsegpt_columns_right_answers_pass():
    fb = ex.check_sparsegpt_columns(sparsegpt_columns)
    assert fb and "2:4 and 4:8" in notes(fb), notes(fb)
    fb = ex.check_sparsegpt_columns(columns_float32_in_place)
    assert fb and "in place" in notes(fb), notes(fb)


def test_the_test_layers_make_every_mistake_visible():
    """On the checker's own layers each mistake changes the result (else it could not be named)."""
    for seed, (n, m) in ((0, (2, 4)), (1, (4, 8))):
        W, H = ch05._column_problem(seed)
        U = inverse_hessian_factor(H)
        right = ch05._columns(W, U, n, m)
        for fn in (mistake(update="none"), mistake(update="group"), mistake(score_on="original"),
                   hinv_diag_score, hinv_diag_everywhere):
            assert not ch05._same(*fn(W, U, n, m), *right), (fn, n, m)


@pytest.mark.parametrize("fn, says", [
    (mistake(update="none"), "never update the columns after"),
    (column_of_U, "never update the columns after"),
    (mistake(update="group"), "only the rest of the current group"),
    (mistake(score_on="original"), "on the original weights"),
    (hinv_diag_everywhere, "diagonal of H⁻¹"),
    (hinv_diag_score, "diagonal of H⁻¹"),
    (pruned_left_in, "are not zero"),
    (keeps_the_lowest, "column 0 already disagrees"),
    (two_of_four_always, "use the n and m it is given"),
])
def test_sparsegpt_columns_names_the_usual_mistakes(fn, says):
    fb = ex.check_sparsegpt_columns(fn)
    assert not fb and says in notes(fb), notes(fb)


def test_sparsegpt_columns_says_which_column_first_disagrees():
    def late_slip(W, U, n, m):          # right except that column 21 forgets to pass its error on
        W, U = W.double().clone(), U.double()
        keep = torch.ones_like(W, dtype=torch.bool)
        for i in range(W.shape[1]):
            if i % m == 0:
                drop = (W[:, i:i + m] / U.diagonal()[i:i + m]).pow(2).topk(n, dim=1, largest=False).indices
                keep[:, i:i + m].scatter_(1, drop, False)
            if i != 21:
                W[:, i + 1:] -= torch.outer(W[:, i] * ~keep[:, i] / U[i, i], U[i, i + 1:])
            W[:, i] *= keep[:, i]
        return W, keep

    W, H = ch05._column_problem(0)
    fb = ex.check_sparsegpt_columns(late_slip)
    assert not fb
    first = re.search(r"column (\d+) is the first that disagrees", notes(fb))
    assert first and int(first.group(1)) == 22, notes(fb)      # column 21 itself is right; 22 is not


def test_sparsegpt_columns_bad_answers():
    assert not ex.check_sparsegpt_columns(lambda W, U, n, m: 1 / 0)
    assert "return (W_pruned, keep)" in notes(ex.check_sparsegpt_columns(lambda W, U, n, m: W))
    with pytest.raises(TypeError, match="your function itself"):
        ex.check_sparsegpt_columns("sparsegpt_columns")
