"""Wanda's score is its definition, |W_ij| * ||X_j||_2, and its ranking matches the reference's."""
import pytest
import torch

from sparselib.calibration import LinearStats
from sparselib.masks import unstructured_mask
from sparselib.scores import input_norms, magnitude_scores, wanda_scores


def test_wanda_equals_definition():
    g = torch.Generator().manual_seed(0)
    W, X = torch.randn(5, 7, generator=g), torch.randn(30, 7, generator=g)
    S = wanda_scores(W, input_norms(X))
    for i in range(5):
        for j in range(7):
            assert torch.isclose(S[i, j], W[i, j].abs() * torch.sqrt((X[:, j] ** 2).sum()), rtol=1e-5)


def test_running_statistics_equal_one_shot_norms():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(4, 9, 6, generator=g)  # 4 samples of 9 tokens
    stats = LinearStats(6, "cpu", hessian=True)
    stats.add(X[:3], 3)
    stats.add(X[3:], 1)
    flat = X.reshape(-1, 6)
    assert torch.allclose(stats.norms, input_norms(flat), rtol=1e-5)
    assert torch.allclose(stats.H, 2 * flat.t() @ flat / 4, rtol=1e-4, atol=1e-5)  # mean over samples


def test_hessian_from_upper_blocks_equals_the_full_product():
    # wide enough for several column blocks; H read between batches (mirrors, then keeps adding)
    g = torch.Generator().manual_seed(3)
    X = torch.randn(5, 40, 600, generator=g) * torch.linspace(0.5, 3, 600)
    stats = LinearStats(600, "cpu", hessian=True)
    assert len(stats._edges) > 2
    for i in range(5):
        stats.add(X[i:i + 1], 1)
        flat = X[:i + 1].reshape(-1, 600)
        expected = 2 * flat.t() @ flat / (i + 1)
        assert torch.allclose(stats.H, expected, rtol=1e-4, atol=1e-3)
        e = stats._edges[1]  # blocks below the diagonal are exact copies of those above
        assert torch.equal(stats.H[e:, :e], stats.H[:e, e:].t())
    assert torch.allclose(stats.norms, input_norms(X.reshape(-1, 600)), rtol=1e-5)


def test_reference_mean_scaling_gives_the_same_mask():
    g = torch.Generator().manual_seed(2)
    W, X = torch.randn(8, 32, generator=g), torch.randn(100, 32, generator=g) * torch.linspace(0.1, 5, 32)
    ours = unstructured_mask(wanda_scores(W, input_norms(X)), 0.5)
    reference = unstructured_mask(W.abs() * (X.pow(2).mean(0)).sqrt(), 0.5)  # sqrt of the running mean
    assert torch.equal(ours, reference)


def test_an_outlier_channel_protects_small_weights():
    W = torch.tensor([[0.1, 0.9, 0.2, 0.8]])
    x_norm = torch.tensor([50.0, 1.0, 1.0, 1.0])
    assert not unstructured_mask(magnitude_scores(W), 0.5)[0, 0]   # magnitude drops it
    assert unstructured_mask(wanda_scores(W, x_norm), 0.5)[0, 0]   # Wanda keeps it


def test_bad_inputs():
    with pytest.raises(ValueError, match="NaN or Inf"):
        magnitude_scores(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="one entry per input channel"):
        wanda_scores(torch.ones(2, 3), torch.ones(4))
    with pytest.raises(ValueError):
        input_norms(torch.empty(0, 3))
