"""Chapter 4, SparseGPT: how damping moves the reconstruction error, and what the block size changes."""
from __future__ import annotations

from ...checks import check_matrix
from ...scores import relative_error
from ...sparsegpt import sparsegpt_prune
from ._answers import number
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
