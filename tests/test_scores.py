"""Wanda's score is its definition, |W_ij| * ||X_j||_2, and its ranking matches the reference's; the
relative reconstruction error is ‖(W − Ŵ)X‖² / ‖WX‖² computed from H."""
import pytest
import torch

from sparselib.masks import unstructured_mask
from sparselib.scores import input_norms, magnitude_scores, relative_error, wanda_scores


def test_wanda_equals_definition():
    g = torch.Generator().manual_seed(0)
    W, X = torch.randn(5, 7, generator=g), torch.randn(30, 7, generator=g)
    S = wanda_scores(W, input_norms(X))
    for i in range(5):
        for j in range(7):
            assert torch.isclose(S[i, j], W[i, j].abs() * torch.sqrt((X[:, j] ** 2).sum()), rtol=1e-5)


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


def test_relative_error_is_the_output_error_on_the_calibration_inputs():
    g = torch.Generator().manual_seed(4)
    W, X = torch.randn(6, 16, generator=g), torch.randn(50, 16, generator=g)
    W_hat = W * unstructured_mask(wanda_scores(W, input_norms(X)), 0.5)
    H = 2 * X.double().t() @ X.double()
    direct = ((X.double() @ (W - W_hat).double().t()).pow(2).sum() / (X.double() @ W.double().t()).pow(2).sum()).item()
    assert relative_error(W, W_hat, H) == pytest.approx(direct, rel=1e-9)
    assert relative_error(W, W, H) == 0.0
    assert relative_error(W, torch.zeros_like(W), H) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="H \\[in, in\\]"):
        relative_error(W, W_hat, H[:4])

