"""SparseGPT against principles: the exact least-squares optimum bounds it from below, and it beats
pruning without an update. Inputs are correlated, as real activations are."""
import pytest
import torch

from sparselib.masks import is_nm, nm_mask, unstructured_mask
from sparselib.scores import input_norms, wanda_scores
from sparselib.sparsegpt import inverse_hessian_factor, sparsegpt_prune, sparsegpt_prune_shared


def correlated_problem(seed=0, rows=48, cols=128, tokens=1024):
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(tokens, cols, generator=g)
    A = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    scale = torch.exp(torch.randn(cols, generator=g))  # uneven channel norms, like real activations
    X = (Z @ A) * scale
    W = torch.randn(rows, cols, generator=g)
    return W, X, 2 * X.t() @ X


def error(W, W_hat, H):
    D = (W - W_hat).double()
    return torch.einsum("ij,jk,ik->", D, H.double(), D).item()


def optimum(W, keep, H):
    """Exact least squares for a fixed mask: per row, w_K = H_KK^-1 (H w)_K."""
    W, H = W.double(), H.double()
    out = torch.zeros_like(W)
    for i in range(W.shape[0]):
        K = keep[i]
        out[i, K] = torch.linalg.solve(H[K][:, K], (H @ W[i])[K])
    return out


@pytest.mark.parametrize("pattern", [{"sparsity": 0.5}, {"sparsity": 0.7}, {"n": 2, "m": 4}, {"n": 4, "m": 8}])
def test_between_the_optimum_and_no_update(pattern):
    W, X, H = correlated_problem()
    W_hat, keep = sparsegpt_prune(W, H, blocksize=32, **pattern)
    best = error(W, optimum(W, keep, H), H)
    ours = error(W, W_hat, H)
    assert best <= ours * (1 + 1e-6)           # the optimum is a lower bound
    assert ours <= 1.5 * best                  # greedy, one pass, but close
    S = wanda_scores(W, input_norms(X))
    wanda_keep = nm_mask(S, pattern["n"], pattern["m"]) if "n" in pattern else unstructured_mask(S, pattern["sparsity"])
    assert ours < error(W, W * wanda_keep, H)  # and better than pruning without an update


def test_exact_sparsity_and_nm():
    W, _, H = correlated_problem(1)
    W_hat, keep = sparsegpt_prune(W, H, sparsity=0.5, blocksize=32)
    assert (W_hat == 0).sum() == W.numel() // 2 and torch.equal(W_hat != 0, keep)
    W_hat, keep = sparsegpt_prune(W, H, n=2, m=4, blocksize=32)
    assert is_nm(W_hat, 2, 4) and (W_hat == 0).sum() == W.numel() // 2


def test_per_row_sparsity_varies_with_one_threshold_per_block():
    W, _, H = correlated_problem(2)
    W_hat, _ = sparsegpt_prune(W, H, sparsity=0.5)
    per_row = (W_hat == 0).float().mean(1)
    assert per_row.min() < 0.5 < per_row.max()


def test_dead_inputs_zero_the_weight_column():
    W, X, _ = correlated_problem(3)
    X[:, [5, 17]] = 0
    H = 2 * X.t() @ X
    W_hat, _ = sparsegpt_prune(W, H, sparsity=0.25, blocksize=32)
    assert (W_hat[:, [5, 17]] == 0).all() and torch.isfinite(W_hat).all()


def test_inputs_are_not_modified_and_dtype_device_follow_w():
    W, _, H = correlated_problem(4)
    W64, H0 = W.double(), H.clone()
    W_hat, keep = sparsegpt_prune(W64, H, n=2, m=4, blocksize=32)
    assert W_hat.dtype == torch.float64 and W_hat.device == W.device and keep.dtype == torch.bool
    assert torch.equal(H, H0) and torch.equal(W64, W.double())


def test_damping_retries_with_a_warning_then_succeeds():
    H = torch.diag(torch.tensor([1.0, 1.0, 1.0, -0.1]))
    with pytest.warns(RuntimeWarning, match="not positive definite"):
        U = inverse_hessian_factor(H, 0.01)
    assert torch.isfinite(U).all()
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="not positive definite"):
        inverse_hessian_factor(-torch.eye(4), 0.01)


def test_cholesky_factor_gives_the_inverse():
    _, _, H = correlated_problem(5, cols=32)
    U = inverse_hessian_factor(H.double(), 0.01)
    Hd = H.double() + 0.01 * torch.diag(H.double()).mean() * torch.eye(32, dtype=torch.float64)
    assert torch.allclose(U.t() @ U, torch.linalg.inv(Hd), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("cols", [32, 300])  # 300: the triangular inverse recurses
def test_cholesky_factor_is_the_references(cols):
    # the reference's route: chol(H + λI) -> cholesky_inverse -> chol(upper); U is unique, so ours must match
    _, _, H = correlated_problem(6, cols=cols)
    Hd = H.double() + 0.01 * torch.diag(H.double()).mean() * torch.eye(cols, dtype=torch.float64)
    reference = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(Hd)), upper=True)
    U = inverse_hessian_factor(H.double(), 0.01)
    assert torch.equal(U, U.triu()) and bool((U.diagonal() > 0).all())
    assert torch.allclose(U, reference, rtol=1e-8, atol=1e-10 * float(reference.abs().max()))


@pytest.mark.parametrize("kwargs, match", [
    ({"sparsity": 0.5, "n": 2, "m": 4}, "not both"),
    ({}, "neither"),
    ({"n": 2, "m": 4, "blocksize": 30}, "multiple of m"),
    ({"sparsity": 1.5}, r"\[0, 1\)"),
    ({"n": 3, "m": 2}, "0 < n < m"),
])
def test_bad_arguments(kwargs, match):
    W, _, H = correlated_problem(6, cols=64)
    with pytest.raises(ValueError, match=match):
        sparsegpt_prune(W, H, **kwargs)


def test_bad_tensors():
    W, _, H = correlated_problem(7, cols=64)
    with pytest.raises(ValueError, match="in_features, in_features"):
        sparsegpt_prune(W, H[:10], sparsity=0.5)
    A = H.clone()
    A[0, 1] += 1000
    with pytest.raises(ValueError, match="symmetric"):
        sparsegpt_prune(W, A, sparsity=0.5)
    W[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        sparsegpt_prune(W, H, sparsity=0.5)


def naive_obs(W, H, sparsity=None, n=None, m=None, blocksize=32, percdamp=0.01):
    """Textbook sequential OBS in float64: at column i, invert the Hessian of the columns not yet
    fixed (i..end), zero w_i if masked and spread the error over the remaining columns. Masks follow
    the same rules (per block for unstructured, per M-group for N:M) with cost w_j^2 / [H_{j:,j:}^-1]_00."""
    W, H = W.double().clone(), H.double().clone()
    H += percdamp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    cols = W.shape[1]
    d2 = torch.stack([torch.linalg.inv(H[j:, j:])[0, 0] for j in range(cols)])
    prune = torch.zeros_like(W, dtype=torch.bool)
    for i in range(cols):
        if sparsity is not None and i % blocksize == 0:
            block = (W[:, i:i + blocksize] ** 2 / d2[i:i + blocksize]).flatten()
            k = int(block.numel() * sparsity)
            flat = torch.zeros_like(block, dtype=torch.bool)
            flat[torch.sort(block, stable=True).indices[:k]] = True
            prune[:, i:i + blocksize] = flat.view(W.shape[0], -1)
        if sparsity is None and i % m == 0:
            idx = torch.topk(W[:, i:i + m] ** 2 / d2[i:i + m], n, dim=1, largest=False).indices
            prune[:, i:i + m].scatter_(1, idx, True)
        Hinv = torch.linalg.inv(H[i:, i:])
        q = torch.where(prune[:, i], torch.zeros_like(W[:, i]), W[:, i])
        W[:, i:] -= ((W[:, i] - q) / Hinv[0, 0])[:, None] * Hinv[0][None, :]
        W[:, i] = q
    return W, ~prune


@pytest.mark.parametrize("blocksize", [32, 64])  # 64: two 32-column slices inside each block
@pytest.mark.parametrize("pattern", [{"sparsity": 0.5}, {"n": 2, "m": 4}, {"n": 4, "m": 8}])
def test_cholesky_and_lazy_batches_equal_textbook_sequential_obs(pattern, blocksize):
    W, _, H = correlated_problem(8, rows=8, cols=64)
    W_ref, keep_ref = naive_obs(W, H, blocksize=blocksize, **pattern)
    W_hat, keep = sparsegpt_prune(W.double(), H.double(), blocksize=blocksize, **pattern)
    assert torch.equal(keep, keep_ref)
    assert torch.allclose(W_hat, W_ref, atol=1e-6)


@pytest.mark.parametrize("pattern", [{"sparsity": 0.5}, {"n": 2, "m": 4}])
def test_shared_sweep_equals_separate_calls(pattern):
    """q/k/v read one input: one stacked sweep gives each matrix what its own call gives, including
    its own unstructured threshold per block (not one threshold over the stack)."""
    _, _, H = correlated_problem(3)
    g = torch.Generator().manual_seed(3)
    Ws = [torch.randn(48, 128, generator=g), 5 * torch.randn(16, 128, generator=g), torch.randn(16, 128, generator=g)]
    copies = [W.clone() for W in Ws]
    shared = sparsegpt_prune_shared(Ws, H, blocksize=32, **pattern)
    for W, W0, (W_s, keep_s) in zip(Ws, copies, shared):
        W_1, keep_1 = sparsegpt_prune(W, H, blocksize=32, **pattern)
        assert torch.equal(keep_s, keep_1)
        torch.testing.assert_close(W_s, W_1, rtol=1e-4, atol=1e-5)
        assert (W_s == 0).sum() == W.numel() // 2          # exact per matrix, though the scales differ
        assert torch.equal(W, W0)                           # inputs untouched


@pytest.mark.parametrize("pattern", [{"sparsity": 0.5}, {"n": 2, "m": 4}])
def test_prunes_prechecked_entry_equals_the_public_one(pattern):
    """prune() calls the entry that skips the full passes over W and H; same result, and the cheap
    checks (pattern, shapes) still hold."""
    from sparselib.sparsegpt import _prune_shared_prechecked
    _, _, H = correlated_problem(5)
    g = torch.Generator().manual_seed(5)
    Ws = [torch.randn(32, 128, generator=g), torch.randn(16, 128, generator=g)]
    for (W_a, keep_a, _), (W_b, keep_b) in zip(_prune_shared_prechecked(Ws, H, blocksize=64, **pattern),
                                            sparsegpt_prune_shared(Ws, H, blocksize=64, **pattern)):
        assert torch.equal(W_a, W_b) and torch.equal(keep_a, keep_b)
    with pytest.raises(ValueError, match="not both"):
        _prune_shared_prechecked(Ws, H, sparsity=0.5, n=2, m=4)
    with pytest.raises(ValueError, match="H must be"):
        _prune_shared_prechecked(Ws, H[:64, :64], sparsity=0.5)


def test_shared_sweep_rejects_bad_input():
    _, _, H = correlated_problem(4)
    with pytest.raises(ValueError, match="non-empty list"):
        sparsegpt_prune_shared([], H, sparsity=0.5)
    with pytest.raises(ValueError, match="H must be"):
        sparsegpt_prune_shared([torch.randn(8, 128), torch.randn(8, 64)], H, sparsity=0.5)


@pytest.mark.parametrize("fraction", [0.0001, 0.3, 0.5, 0.7, 0.9999])
def test_kth_value_of_a_block_is_exact(fraction):
    # large enough for the sampled bracket; heavy-tailed like real scores, and a block whose evenly
    # spaced sample sees only outliers (the bracket misses: the answer must not change)
    from sparselib._sparsegpt_fast import kth_value, prime_at_least
    g = torch.Generator().manual_seed(7)
    fooled = torch.rand(128 * 960, generator=g)
    fooled[:: prime_at_least(fooled.numel() // 4096)] += 1000
    for x in (torch.randn(128, 960, generator=g).pow(2) * torch.rand(960, generator=g), fooled):
        flat = x.reshape(-1)
        k = max(1, int(flat.numel() * fraction))
        assert kth_value(flat, k) == torch.sort(flat).values[k - 1].item()


def test_dropping_the_k_smallest_matches_a_stable_sort_with_ties():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from sparselib._sparsegpt_fast import drop_k_smallest

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(0, 5), min_size=1, max_size=60), st.data())
    def check(values, data):
        x = torch.tensor(values, dtype=torch.float32)
        k = data.draw(st.integers(1, len(values)))
        want = torch.zeros_like(x, dtype=torch.bool)
        want[torch.sort(x, stable=True).indices[:k]] = True
        assert torch.equal(~drop_k_smallest(x, k), want)
        # a transposed 2-D view (how a block's scores are passed): ties follow the view's row-major order
        cols = data.draw(st.sampled_from([c for c in range(1, len(values) + 1) if len(values) % c == 0]))
        view = x.view(cols, -1).t()
        want2 = torch.zeros(view.numel(), dtype=torch.bool)
        want2[torch.sort(view.reshape(-1), stable=True).indices[:k]] = True
        assert torch.equal(~drop_k_smallest(view, k), want2.view(view.shape))

    check()
