"""Chapter 5, SparseGPT: the column loop written from the rows of U, how damping moves the
reconstruction error, and what the block size changes."""
from __future__ import annotations

import torch

from ...checks import check_matrix
from ...scores import relative_error
from ...sparsegpt import inverse_hessian_factor, sparsegpt_prune
from ._answers import call, mask_shape_ok, need_function, number
from .registry import checker


@checker("ex-sgpt-damping")
def check_damping_errors(fb, W, H, errors: dict):
    """Your ``{percdamp: relative reconstruction error}`` for SparseGPT 50 % on ``W`` with ``H``;
    recomputed here and compared (1 % tolerance)."""
    W, H = check_matrix(W, "W"), check_matrix(H, "H", "[in_features, in_features]")
    if not isinstance(errors, dict) or not errors:
        raise TypeError("errors must be a dict {percdamp: relative error}, e.g. {0.01: 0.05, 0.1: 0.06}")
    want = {}
    for p, got in errors.items():
        p, got = number(p, "a percdamp"), number(got, f"errors[{p}]")
        if p <= 0:
            raise ValueError("percdamp values must be positive")
        want[p] = relative_error(W, sparsegpt_prune(W, H.float(), sparsity=0.5, percdamp=p)[0], H)
        if abs(got - want[p]) > 0.01 * want[p]:
            hint = " (absolute, not relative? divide by the dense WHWᵀ)" if got > 10 * want[p] else ""
            fb.fail(f"percdamp {p}: you have {got:.4g}, recomputed {want[p]:.4g}{hint}")
    best = min(want, key=want.get)
    fb.note("recomputed: " + ", ".join(f"{p:g} → {e:.4f}" for p, e in sorted(want.items()))
            + f"; lowest at percdamp {best:g}")


def _mask_changes(W, H, **pattern) -> int:
    """Mask entries that differ between SparseGPT with blocksize 16 and with 128."""
    return int((sparsegpt_prune(W, H, blocksize=16, **pattern)[1]
                != sparsegpt_prune(W, H, blocksize=128, **pattern)[1]).sum())


@checker("ex-sgpt-blocksize")
def check_blocksize_claim(fb, W, H, same_for_24: bool, same_for_unstructured: bool):
    """Your conclusions — do blocksize 16 and 128 give the same mask on this layer for 2:4, and for
    unstructured 50 %? Checked by running both."""
    W, H = check_matrix(W, "W"), check_matrix(H, "H", "[in_features, in_features]")
    if not isinstance(same_for_24, bool) or not isinstance(same_for_unstructured, bool):
        raise TypeError("same_for_24 and same_for_unstructured must be True or False")
    d24, dun = _mask_changes(W, H, n=2, m=4), _mask_changes(W, H, sparsity=0.5)
    fb.note(f"mask entries that differ between blocksize 16 and 128: 2:4 {d24} of {W.numel()}, "
            f"unstructured {dun}")
    if same_for_24 != (d24 == 0):
        fb.fail("for 2:4 " + ("they differ here: float32 near-ties inside a group can flip, even though the "
                              "arithmetic is the same in exact terms" if d24 else "they are identical here"))
    if same_for_unstructured != (dun == 0):
        fb.fail("for unstructured 50 % " + ("they differ: the block size decides which weights share one "
                                             "threshold" if dun else "they happen to agree on this layer"))


# --------------------------------------------------------------------------------------------
# ex-sgpt-columns: the column loop from the rows of U, N:M
# --------------------------------------------------------------------------------------------
def _column_problem(seed: int, rows: int = 16, cols: int = 64):
    """``(W, H)``: float32 weights and a Hessian ``H = 2XᵀX`` of correlated inputs, some of them loud,
    so that the update moves weights enough to change later groups' choices."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(512, cols, generator=g) @ (torch.randn(cols, cols, generator=g) / 4 + torch.eye(cols))
    X = X * (1 + 4 * (torch.rand(cols, generator=g) < 0.1))
    return torch.randn(rows, cols, generator=g), (2 * X.T @ X).float()


def _columns(W, U, n, m, *, score_pivot=None, err_pivot=None, update="all", score_on="updated"):
    """SparseGPT's N:M column loop, float64, with the usual mistakes as switches (for diagnosis):
    ``score_pivot`` / ``err_pivot`` replace ``U_jj`` in the score / in the error (e.g. by
    ``sqrt(diag H⁻¹)``); ``update`` is "all" (the rest of the row), "group" (only the rest of the group
    of m) or "none"; ``score_on="original"`` scores each group on the weights before any update."""
    W, U = W.double().clone(), U.double()
    W0 = W.clone()
    s_piv = U.diagonal() if score_pivot is None else score_pivot.double()
    e_piv = U.diagonal() if err_pivot is None else err_pivot.double()
    keep = torch.ones_like(W, dtype=torch.bool)
    for j in range(W.shape[1]):
        if j % m == 0:
            source = W if score_on == "updated" else W0
            low = (source[:, j:j + m] / s_piv[j:j + m]).pow(2).topk(n, dim=1, largest=False).indices
            keep[:, j:j + m].scatter_(1, low, False)
        err = W[:, j] * ~keep[:, j] / e_piv[j]             # (w − q) / U_jj
        end = {"all": W.shape[1], "group": (j // m + 1) * m, "none": j + 1}[update]
        W[:, j + 1:end] -= torch.outer(err, U[j, j + 1:end])
        W[:, j] *= keep[:, j]
    return W, keep


def _first_column(bad: torch.Tensor) -> int | None:
    """The first column with any True entry of ``bad [rows, cols]``, or None."""
    cols = bad.any(0).nonzero()
    return int(cols[0]) if len(cols) else None


def _same(W_hat, keep, W_ref, keep_ref) -> bool:
    tol = 1e-3 * float(W_ref.abs().max())
    return torch.equal(keep, keep_ref) and bool(((W_hat.double() - W_ref.double()).abs() <= tol).all())


_MISTAKES = (
    (dict(update="none"), "you never update the columns after the one you prune: that is the mask alone "
                          "(w²/U_jj² scores, no repair). After each column j, W[:, j+1:] -= err ⊗ U[j, j+1:]"),
    (dict(update="group"), "you update only the rest of the current group of m columns; the error of "
                           "column j must reach every later column of the row, W[:, j+1:] -= err ⊗ U[j, j+1:]"),
    (dict(score_on="original"), "you choose every group's mask on the original weights; SparseGPT scores "
                                "a group at its first column, on the weights as the earlier columns' "
                                "updates left them"),
)


@checker("ex-sgpt-columns")
def check_sparsegpt_columns(fb, fn):
    """Your ``fn(W, U, n, m) -> (W_pruned, keep)``: SparseGPT's column loop for N:M, from the rows of
    ``U`` (``sparselib.sparsegpt.inverse_hessian_factor(H)``), on ``W [out, in]``. Compared column by
    column with ``sparselib.sparsegpt_prune(W, H, n=n, m=m)`` on test layers at 2:4 and 4:8."""
    need_function(fn, "check_sparsegpt_columns(sparsegpt_columns)")
    for seed, (n, m) in ((0, (2, 4)), (1, (4, 8))):
        W, H = _column_problem(seed)
        U = inverse_hessian_factor(H)
        W_ref, keep_ref = sparsegpt_prune(W, H, n=n, m=m)
        W_in, U_in = W.clone(), U.clone()
        got = call(fb, fn, W_in, U_in, n, m)
        if got is None:
            return fb
        if not (isinstance(got, tuple) and len(got) == 2):
            return fb.fail(f"return (W_pruned, keep), two tensors; got {type(got).__name__}")
        W_hat, keep = got
        if not isinstance(W_hat, torch.Tensor) or W_hat.shape != W.shape:
            return fb.fail(f"W_pruned must be a tensor shaped like W {tuple(W.shape)}")
        if not mask_shape_ok(fb, keep, W):
            return fb
        keep = keep.bool()
        if not (torch.equal(W_in, W) and torch.equal(U_in, U)):
            fb.note("your function changed its inputs in place; work on a copy (W = W.clone())")
        if (W_hat[~keep] != 0).any():
            return fb.fail(f"{n}:{m}: weights your mask prunes are not zero in W_pruned; set each pruned "
                           f"entry to 0 once its error has been passed on (q = w with pruned entries zeroed)")
        per_group = (~keep).reshape(W.shape[0], -1, m).sum(-1)
        if not (per_group == n).all():
            r, g = (per_group != n).nonzero()[0].tolist()
            return fb.fail(f"{n}:{m}: row {r}, columns {g * m}–{g * m + m - 1} prune {int(per_group[r, g])} "
                           f"weights; every group of {m} consecutive columns of a row prunes exactly {n}")
        if _same(W_hat, keep, W_ref, keep_ref):
            continue
        tol = 1e-3 * float(W_ref.abs().max())
        j_mask = _first_column(keep != keep_ref)
        j_w = _first_column((W_hat.double() - W_ref.double()).abs() > tol)
        j = min(c for c in (j_mask, j_w) if c is not None)
        what = ("the mask" if j == j_mask else "the weights") + (" and the weights" if j_mask == j_w else "")
        fb.fail(f"{n}:{m}: column {j} is the first that disagrees with sparselib ({what}; "
                f"columns 0–{j - 1} agree)" if j else f"{n}:{m}: column 0 already disagrees ({what})")
        for n2, m2 in ((2, 4), (1, 4), (4, 8)):
            if (n2, m2) != (n, m) and _same(W_hat, keep, *_columns(W, U, n2, m2)):
                return fb.fail(f"asked for {n}:{m}, your loop prunes {n2}:{m2}: use the n and m it is given")
        for switches, why in _MISTAKES:
            if _same(W_hat, keep, *_columns(W, U, n, m, **switches)):
                return fb.fail(why)
        root = (U.double().T @ U.double()).diagonal().sqrt()     # sqrt([H⁻¹]_jj)
        if any(_same(W_hat, keep, *_columns(W, U, n, m, **pivots))
               for pivots in (dict(score_pivot=root), dict(score_pivot=root, err_pivot=root))):
            return fb.fail("you use the diagonal of H⁻¹ where the step needs U_jj: [H⁻¹]_jj belongs to "
                           "column j with every column free; once the columns before j are fixed, the "
                           "remaining block's inverse has U_jj² in its corner (row j of U)")
        if j == j_mask and j < m:
            return fb.fail("the first group sees the original weights, so only its score can be wrong: per "
                           "row, prune the n lowest (W_ij / U_jj)² of each group of m (topk, largest=False)")
        if j == j_mask:
            return fb.fail(f"the mask of the group at columns {j - j % m}–{j - j % m + m - 1} differs: score "
                           f"a group at its first column, on the updated weights, with (w / U_jj)²")
        return fb.fail(f"the weights of column {j} differ: the step for column i is err = (w_i − q_i) / U_ii, "
                       f"then W[:, i+1:] -= err ⊗ U[i, i+1:] (row i of U, not column i)")
    fb.note("same masks and weights as sparselib.sparsegpt_prune at 2:4 and 4:8 (float rounding aside)")
