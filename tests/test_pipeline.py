"""The layer-by-layer pipeline on real architectures (small random weights, no download)."""
import pytest
import torch
from transformers import BertConfig, BertLMHeadModel, GPT2Config, GPT2LMHeadModel

import sparselib
from sparselib.masks import is_nm
from sparselib.models import decoder_layers, layer_linears, weight_of

from conftest import tiny_llama


def decoder_linear_weights(model):
    return {f"{i}.{n}": weight_of(m) for i, l in enumerate(decoder_layers(model))
            for n, m in layer_linears(l).items()}


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", [0.5, 0.3, "2:4", "4:8"])
def test_prunes_exactly_the_decoder_linears(tiny_model, tiny_calib, method, pattern):
    before = {k: v.clone() for k, v in tiny_model.named_parameters()}
    report = sparselib.prune(tiny_model, method, pattern, tiny_calib, progress=False)
    weights = decoder_linear_weights(tiny_model)
    linears = [n for n, m in tiny_model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    assert len(report.records) == len(weights) == len(linears)
    for name, W in weights.items():
        if isinstance(pattern, str):
            n, m = map(int, pattern.split(":"))
            assert is_nm(W, n, m), name
        elif method == "sparsegpt":  # one threshold per 128-column block: exact per matrix, not per row
            assert (W == 0).sum() == int(W.numel() * pattern), name
        elif method == "wanda":
            assert ((W == 0).sum(1) == int(W.shape[1] * pattern)).all(), name
        else:  # magnitude: reference protocol, one threshold per matrix
            assert (W == 0).sum() == int(W.numel() * pattern), name
    pruned_ids = {id(m.weight) for l in decoder_layers(tiny_model) for m in layer_linears(l).values()}
    for name, p in tiny_model.named_parameters():
        if id(p) not in pruned_ids:  # embeddings, norms, biases, lm_head: untouched
            assert torch.equal(p, before[name]), name
    target = 0.5 if isinstance(pattern, str) else pattern
    assert abs(report.sparsity - target) < 0.01


def test_gpt2_conv1d_weights_are_pruned_in_their_own_layout(tiny_calib):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64)).eval()
    sparselib.prune(model, "wanda", "2:4", tiny_calib, progress=False)
    for l in decoder_layers(model):
        for m in layer_linears(l).values():
            assert is_nm(m.weight.t(), 2, 4)  # Conv1D stores [in, out]: groups run along inputs


def test_report_prints_a_table(tiny_calib):
    report = sparselib.prune(tiny_llama(), "wanda", 0.5, tiny_calib, progress=False)
    text = str(report)
    assert "wanda 50%" in text and "self_attn.q_proj" in text and "mlp.down_proj" in text
    assert set(report.layer_sparsity()) == {0, 1}


@pytest.mark.parametrize("sparsity, calib_kind, error, match", [
    (1.0, "ok", ValueError, r"\[0, 1\)"),
    (-0.2, "ok", ValueError, r"\[0, 1\)"),
    ("3:2", "ok", ValueError, "0 < N < M"),
    ("2:3", "ok", ValueError, "multiple of 3"),
    ("a:b", "ok", ValueError, "N:M"),
    (0.5, "empty", ValueError, "empty"),
    (0.5, "none", ValueError, "calibration_data"),
    (0.5, "float", TypeError, "LongTensor"),
    (0.5, "too_long", ValueError, "maximum"),
])
def test_bad_input_fails_before_touching_the_model(tiny_calib, sparsity, calib_kind, error, match):
    model = tiny_llama()
    calib = {"ok": tiny_calib, "empty": tiny_calib[:0], "none": None, "float": tiny_calib.float(),
             "too_long": torch.zeros(1, 65, dtype=torch.long)}[calib_kind]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        sparselib.prune(model, "wanda", sparsity, calib, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_nan_weight_is_reported_with_its_place(tiny_calib):
    model = tiny_llama()
    decoder_layers(model)[1].mlp.up_proj.weight.data[0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer 1 mlp.up_proj"):
        sparselib.prune(model, "magnitude", 0.5, progress=False)


def test_unsupported_architecture_names_the_supported_ones(tiny_calib):
    model = BertLMHeadModel(BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64, is_decoder=True))
    with pytest.raises(ValueError, match="llama.*opt|opt.*llama"):
        sparselib.prune(model, "wanda", 0.5, tiny_calib, progress=False)


def test_unknown_method_and_option(tiny_calib):
    with pytest.raises(ValueError, match="magnitude, wanda, sparsegpt"):
        sparselib.prune(tiny_llama(), "random", 0.5, tiny_calib)
    with pytest.raises(TypeError, match="blocksize"):
        sparselib.prune(tiny_llama(), "wanda", 0.5, tiny_calib, blocksize=64)


def test_only_the_selected_layers_are_pruned(tiny_calib):
    model = tiny_llama()
    report = sparselib.prune(model, "wanda", 0.5, tiny_calib, layers=[1], progress=False)
    assert {r.layer for r in report.records} == {1}
    assert all((weight_of(m) != 0).all() for m in layer_linears(decoder_layers(model)[0]).values())
    with pytest.raises(ValueError, match="0..1"):
        sparselib.prune(model, "wanda", 0.5, tiny_calib, layers=[2], progress=False)


def test_a_layer_pruned_alone_sees_the_dense_inputs(tiny_calib):
    """layers=[1]: layer 0 is left dense and only run to feed layer 1, so layer 1's statistics are
    those of the dense model (checked against SparseGPT on the inputs module_inputs captures)."""
    dense, model = tiny_llama(), tiny_llama()
    sparselib.prune(model, "sparsegpt", 0.5, tiny_calib, layers=[1], progress=False)
    q = decoder_layers(dense)[1].self_attn.q_proj
    X = sparselib.calibration.module_inputs(dense, q, tiny_calib)
    want, _ = sparselib.sparsegpt_prune(weight_of(q), 2 * X.T.double() @ X.double(), sparsity=0.5)
    got = weight_of(decoder_layers(model)[1].self_attn.q_proj)
    assert torch.equal(got == 0, want == 0)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)
    assert torch.equal(weight_of(decoder_layers(model)[0].self_attn.q_proj), weight_of(decoder_layers(dense)[0].self_attn.q_proj))


def test_pruning_keeps_the_parameter_objects(tiny_model, tiny_calib):
    # the pipeline hands each fresh pruned weight to its parameter (no copy); optimisers, hooks and
    # tied references that hold the Parameter must still see it
    params = dict(tiny_model.named_parameters())
    grads = {n: p.requires_grad for n, p in params.items()}
    sparselib.prune(tiny_model, "wanda", 0.5, tiny_calib, progress=False)
    for name, p in tiny_model.named_parameters():
        assert p is params[name] and p.requires_grad == grads[name], name
    assert all((weight_of(m) == 0).any() for l in decoder_layers(tiny_model) for m in layer_linears(l).values())


def test_set_weight_adopts_only_a_matching_tensor():
    from transformers.pytorch_utils import Conv1D

    from sparselib.models import set_weight
    linear, W = torch.nn.Linear(8, 4), torch.randn(4, 8)
    set_weight(linear, W, adopt=True)
    assert linear.weight.data_ptr() == W.data_ptr()  # taken over, not copied
    W16 = torch.randn(4, 8, dtype=torch.float16)
    set_weight(linear, W16, adopt=True)
    assert linear.weight.dtype == torch.float32 and torch.equal(linear.weight.data, W16.float())
    conv, W2 = Conv1D(4, 8), torch.randn(4, 8)  # Conv1D stores [in, out]
    set_weight(conv, W2, adopt=True)
    assert conv.weight.shape == (8, 4) and torch.equal(conv.weight.data, W2.t())
    plain = torch.randn(4, 8)
    set_weight(linear, plain)  # default: copy into the parameter's own memory
    assert linear.weight.data_ptr() != plain.data_ptr() and torch.equal(linear.weight.data, plain)
