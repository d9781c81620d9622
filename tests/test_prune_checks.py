"""prune's promises on bad input and on failure: every argument is checked before the first weight
changes, and a prune that fails part-way (activations that overflow, an error, Ctrl-C) puts every
weight back, bit for bit. The model's state_dict is compared exactly after each refusal."""
import dataclasses
import importlib
import math

import numpy as np
import pytest
import torch
from conftest import tiny_llama
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import sparselib
from sparselib.owl import layer_sizes

METHODS = importlib.import_module("sparselib.prune").METHODS  # (sparselib.prune is the function)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in after.items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k


def one_layer_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=64)).eval()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(batch_size=0), ValueError, "batch_size must be at least 1"),
    (dict(batch_size=-1), ValueError, "batch_size must be at least 1"),
    (dict(batch_size=2.5), TypeError, "batch_size must be an int"),
    (dict(batch_size=True), TypeError, "batch_size must be an int"),
    (dict(device="tpu"), ValueError, "use cpu or cuda"),
    (dict(device="cuda:7"), ValueError, "cuda"),
    (dict(layer_sparsity=[0.5]), ValueError, "2 decoder layers"),
    (dict(layer_sparsity=[math.nan, 0.5]), ValueError, "outside"),
    (dict(layer_sparsity=[-0.2, 1.2]), ValueError, "outside"),
    (dict(layer_sparsity=[0.0, 1.0]), ValueError, "outside"),
    (dict(layer_sparsity={0: 0.4, 1: 0.6}), TypeError, "not dict"),
    (dict(layer_sparsity={0.4, 0.6}), TypeError, "not set"),
    (dict(layer_sparsity=np.array([[0.4, 0.6]])), TypeError, r"shape \(1, 2\)"),
    (dict(layer_sparsity=[0.4, 0.6], sparsity="2:4"), ValueError, "N:M"),
])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_bad_arguments_change_nothing(method, kwargs, error, match, tiny_calib):
    if kwargs.get("device", "").startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    model = tiny_llama()
    before = snapshot(model)
    args = {"sparsity": 0.5, **kwargs}
    with pytest.raises(error, match=match):
        sparselib.prune(model, method, args.pop("sparsity"), tiny_calib, progress=False, **args)
    assert_unchanged(model, before)


def test_cuda_without_a_gpu_is_refused_before_anything_changes(tiny_calib):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    model = tiny_llama()
    before = snapshot(model)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        sparselib.prune(model, "wanda", "2:4", tiny_calib, device="cuda", progress=False)
    assert_unchanged(model, before)


@pytest.mark.parametrize("sparsity", [np.float32(0.5), np.float64(0.5), np.array(0.5), torch.tensor(0.5)])
def test_numpy_and_tensor_scalars_are_accepted(sparsity, tiny_calib):
    model, reference = tiny_llama(), tiny_llama()
    sparselib.prune(model, "wanda", sparsity, tiny_calib, progress=False)
    sparselib.prune(reference, "wanda", 0.5, tiny_calib, progress=False)
    assert_unchanged(model, reference.state_dict())


@pytest.mark.parametrize("layer_sparsity", [np.array([0.4, 0.6]), np.array([0.4, 0.6], dtype=np.float32),
                                            [np.float32(0.4), np.float64(0.6)], torch.tensor([0.4, 0.6]), (0.4, 0.6)])
def test_layer_sparsity_as_arrays(layer_sparsity, tiny_calib):
    model = tiny_llama()
    report = sparselib.prune(model, "wanda", 0.5, tiny_calib, layer_sparsity=layer_sparsity, progress=False)
    assert report.layer_targets == pytest.approx([0.4, 0.6])
    assert all(type(s) is float for s in report.layer_targets)
    assert report.layer_sparsity() == pytest.approx({0: 0.4, 1: 0.6}, abs=0.02)


def test_one_layer_model(tiny_calib):
    model = one_layer_llama()
    before = snapshot(model)
    with pytest.raises(ValueError, match="mean"):
        sparselib.prune(model, "wanda", 0.5, tiny_calib, layer_sparsity=[0.4], progress=False)
    assert_unchanged(model, before)
    report = sparselib.prune(model, "wanda", 0.5, tiny_calib, layer_sparsity="owl", progress=False)
    assert report.layer_targets == [0.5]  # one layer: OWL has nothing to move
    assert report.sparsity == pytest.approx(0.5, abs=0.01)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0, max_size=3))
def test_any_layer_sparsity_list_is_applied_or_refused_untouched(values, tiny_calib):
    """Whatever list is given: refused with the model bit-identical, or applied to each layer."""
    model = tiny_llama()
    before = snapshot(model)
    target = sum(values) / len(values) if values and all(math.isfinite(v) for v in values) else 0.5
    valid = len(values) == 2 and all(0 <= v < 1 for v in values)  # both layers have the same size
    target = target if 0 <= target < 1 else 0.5
    if not valid:
        with pytest.raises((ValueError, TypeError)):
            sparselib.prune(model, "magnitude", target, layer_sparsity=values, progress=False)
        assert_unchanged(model, before)
    else:
        report = sparselib.prune(model, "magnitude", target, layer_sparsity=values, progress=False)
        for layer, s in report.layer_sparsity().items():
            assert s == pytest.approx(values[layer], abs=1 / 64 + 1e-6)


@pytest.mark.parametrize("calib, match", [
    (torch.full((4, 16), 500), r"outside \[0, 128\)"),
    (torch.zeros(0, 16, dtype=torch.long), "empty"),
    (torch.zeros(2, 65, dtype=torch.long), "maximum of 64"),
    (torch.zeros(2, 16), "OWL"),
])
def test_magnitude_with_owl_checks_its_calibration(calib, match):
    model = tiny_llama()
    before = snapshot(model)
    with pytest.raises((ValueError, TypeError), match=match):
        sparselib.prune(model, "magnitude", 0.5, calib, layer_sparsity="owl", progress=False)
    assert_unchanged(model, before)


def test_owl_out_of_range_names_what_prune_takes(tiny_calib):
    model = tiny_llama()
    before = snapshot(model)
    with pytest.raises(ValueError, match="owl_layer_sparsity") as err:
        sparselib.prune(model, "wanda", 0.95, tiny_calib, layer_sparsity="owl", progress=False)
    assert "lam=" not in str(err.value).split("owl_layer_sparsity")[0]  # not an argument of prune
    assert_unchanged(model, before)


# --------------------------------------------------------------------------------------------
# A prune that fails part-way puts everything back
# --------------------------------------------------------------------------------------------
def overflowing_fp16_model():
    """A float16 Llama whose residual stream overflows (> 65504) after layer 0, so layer 1's
    calibration inputs are inf/NaN; layer 0 alone is fine."""
    model = tiny_llama().half()
    with torch.no_grad():  # layer 0's MLP input ±100, gate = up = 0.1·Σx: 6400 where positive; down = Σ: > 65504
        layer = model.model.layers[0]
        layer.post_attention_layernorm.weight.fill_(100)
        layer.mlp.gate_proj.weight.fill_(0.1)
        layer.mlp.up_proj.weight.fill_(0.1)
        layer.mlp.down_proj.weight.fill_(1.0)
    return model


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_overflowing_activations_are_named_and_nothing_is_pruned(method, tiny_calib):
    model = overflowing_fp16_model()
    before = snapshot(model)
    with pytest.raises(ValueError, match="not finite.*float16.*float32"):
        sparselib.prune(model, method, 0.5, tiny_calib, progress=False)
    assert_unchanged(model, before)  # layer 0 had been pruned, and is put back


class Boom(Exception):
    pass


def fail_on(n, fn, exception=Boom):
    """``fn``, but raising ``exception`` on its ``n``-th call."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise exception
        return fn(*args, **kwargs)
    return wrapper


def failing_method(monkeypatch, method, n, exception=Boom):
    monkeypatch.setitem(METHODS, method, dataclasses.replace(METHODS[method], fn=fail_on(n, METHODS[method].fn,
                                                                                        exception)))


@pytest.mark.parametrize("method, calls_per_layer", [("magnitude", 7), ("wanda", 7), ("sparsegpt", 4)])
@pytest.mark.parametrize("exception", [Boom, KeyboardInterrupt])
def test_a_failure_in_layer_1_puts_layer_0_back(method, calls_per_layer, exception, tiny_calib, monkeypatch):
    model = tiny_llama()
    before = snapshot(model)
    params = dict(model.named_parameters())
    failing_method(monkeypatch, method, calls_per_layer + 1, exception)
    with pytest.raises(exception):
        sparselib.prune(model, method, "2:4", tiny_calib, progress=False)
    assert_unchanged(model, before)
    assert all(p is params[n] for n, p in model.named_parameters())  # the same Parameter objects


def test_a_failure_on_gpt2_puts_its_conv1d_weights_back(monkeypatch):
    """GPT-2's Conv1D weights are written in place (set_weight copies into them): the originals are kept."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64)).eval()
    before = snapshot(model)
    failing_method(monkeypatch, "magnitude", len(sparselib.layer_linears(sparselib.decoder_layers(model)[0])) + 1)
    with pytest.raises(Boom):
        sparselib.prune(model, "magnitude", 0.5, progress=False)
    assert_unchanged(model, before)


def test_layer_sizes_of_one_layer_model():
    assert len(layer_sizes(one_layer_llama())) == 1


def test_magnitude_per_matrix_on_gpt2():
    """Conv1D's W [out, in] is a transposed view: the per-matrix mask must still be written (it failed
    with "view size is not compatible" before)."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64)).eval()
    sparselib.prune(model, "magnitude", 0.5, progress=False)
    for layer in sparselib.decoder_layers(model):
        for name, module in sparselib.layer_linears(layer).items():
            assert sparselib.sparsity(sparselib.weight_of(module)) == pytest.approx(0.5), name
