"""SliceGPT against its principles: fusion and rotation change no function; slicing removes exactly the
rows/columns the formula says (and the shortcuts and the untied head add some back); the error grows
with the slice; save/load is exact; bad input is refused before anything changes."""
import json

import pytest
import torch
from conftest import tiny_llama, tiny_opt
from transformers import GPT2Config, GPT2LMHeadModel

import sparselib
from sparselib.slicegpt import SlicedLayer, fuse, kept_dim, load_sliced, save_sliced, slice_model

MAKERS = {"llama": tiny_llama, "opt": tiny_opt}


def _with_random_norms(model):
    """Norm scales/biases and embedding means away from their trivial init, so folding is really tested."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g) if name.endswith("weight")
                        else 0.1 * torch.randn(p.shape, generator=g))
        emb = model.get_input_embeddings().weight
        emb.add_(0.05 * torch.randn(emb.shape[-1], generator=g))  # a shared offset: non-zero row means
    return model


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture
def ids():
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("arch", MAKERS)
def test_fusion_keeps_the_function(arch, ids):
    model = _with_random_norms(MAKERS[arch]())
    before = _logits(model, ids)
    fuse(model)
    assert not any("norm" in n for n, _ in model.named_parameters())  # every norm is parameter-free
    assert (_logits(model, ids) - before).abs().max() <= 1e-4


def test_reference_embedding_centring_is_an_option():
    """The reference centres the embeddings of every model. For LayerNorm (OPT) that is part of the
    invariance and our default; for RMSNorm (Llama) it changes the function, so it is opt-in."""
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(7))
    opt = _with_random_norms(tiny_opt())
    before = _logits(opt, ids)
    fuse(opt, center_embeddings=True)
    assert (_logits(opt, ids) - before).abs().max() <= 1e-4
    llama = _with_random_norms(tiny_llama())
    before = _logits(llama, ids)
    fuse(llama, center_embeddings=True)
    assert (_logits(llama, ids) - before).abs().max() > 1e-3
    with pytest.raises(TypeError, match="center_embeddings"):
        slice_model(tiny_llama(), torch.randint(0, 128, (2, 8)), 0.25, center_embeddings="yes")


@pytest.mark.parametrize("arch", MAKERS)
def test_rotation_without_slicing_keeps_the_logits(arch, ids, tiny_calib):
    model = _with_random_norms(MAKERS[arch]())
    before = _logits(model, ids)
    report = slice_model(model, tiny_calib, sparsity=0, progress=False)
    assert report.dim == model.config.hidden_size
    assert (_logits(model, ids) - before).abs().max() <= 1e-3
    for layer in sparselib.decoder_layers(model):  # products of orthogonal matrices are orthogonal
        S = layer.attn_shortcut.detach()
        assert torch.allclose(S @ S.T, torch.eye(S.shape[0]), atol=1e-4)


def _expected_params(config, arch: str, d: int, slice_head: bool) -> int:
    """Parameter count of the sliced model, from the architecture alone."""
    D, V, L = config.hidden_size, config.vocab_size, config.num_hidden_layers
    F = config.intermediate_size if arch == "llama" else config.ffn_dim
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", heads) * (D // heads)
    total = V * d + V * (d if slice_head else D)        # sliced embedding + untied head
    for i in range(L):
        d_out = D if i == L - 1 and not slice_head else d
        total += (D + 2 * kv) * d + d * D               # q, k, v read d; o writes d
        n_in = 2 if arch == "llama" else 1              # gate+up, or fc1
        total += n_in * F * d + d_out * F               # MLP inputs read d; output writes d_out
        total += d * d + d * d_out                      # the two shortcut matrices
        if arch == "opt":                               # biases: q, k, v, out, fc1, fc2
            total += D + 2 * kv + d + F + d_out
    if arch == "opt":
        total += (config.max_position_embeddings + 2) * d + V  # positions; lm_head bias from LayerNorm β
    return total


@pytest.mark.parametrize("slice_head", [False, True])
@pytest.mark.parametrize("arch", MAKERS)
def test_shapes_and_parameter_count_follow_the_formula(arch, slice_head, tiny_calib):
    model = MAKERS[arch]()
    config = model.config
    D = config.hidden_size
    report = slice_model(model, tiny_calib, sparsity=0.25, slice_head=slice_head, progress=False)
    d = kept_dim(D, 0.25)
    assert report.dim == d == 48
    assert sum(p.numel() for p in model.parameters()) == report.params_after
    assert report.params_after == _expected_params(config, arch, d, slice_head)
    adapter = sparselib.adapter_for(model)
    layers = sparselib.decoder_layers(model)
    for i, layer in enumerate(layers):
        d_out = D if i == len(layers) - 1 and not slice_head else d
        for name in adapter.attn_inputs + adapter.mlp_inputs:
            assert sparselib.models.get_module(layer.layer, name).weight.shape[1] == d
        assert sparselib.models.get_module(layer.layer, adapter.attn_output).weight.shape[0] == d
        assert sparselib.models.get_module(layer.layer, adapter.mlp_output).weight.shape[0] == d_out
        assert layer.attn_shortcut.shape == (d, d) and layer.mlp_shortcut.shape == (d, d_out)
    assert model.get_input_embeddings().weight.shape[1] == d
    assert model.get_output_embeddings().weight.shape[1] == (d if slice_head else D)


@pytest.mark.parametrize("arch", MAKERS)
def test_kept_energy_and_spectra(arch, tiny_calib):
    report = slice_model(MAKERS[arch](), tiny_calib, sparsity=0.25, progress=False)
    assert len(report.spectra) == 1 + 2 * 2
    for name, eig in report.spectra.items():
        assert (eig[:-1] >= eig[1:]).all()
        assert 0.75 - 1e-9 <= report.kept_energy(name) <= 1  # the top 75% of directions hold >= 75%


def test_kept_dim_rounds_down_to_a_multiple_of_8():
    assert [kept_dim(576, s) for s in (0.1, 0.2, 0.25, 0.3)] == [512, 456, 432, 400]
    assert kept_dim(60, 0) == 60  # no slice: nothing is rounded away
    for D in (64, 576, 1000):
        for s in (0.05, 0.33, 0.5):
            d = kept_dim(D, s)
            assert d % 8 == 0 and (1 - s) * D - 8 < d <= (1 - s) * D


def test_error_grows_with_sparsity(ids, tiny_calib):
    dense = _logits(tiny_llama(), ids)
    errors = []
    for s in (0.125, 0.5, 0.75):
        model = tiny_llama()
        slice_model(model, tiny_calib, sparsity=s, progress=False)
        out = _logits(model, ids)
        assert torch.isfinite(out).all()
        errors.append(float((out - dense).norm() / dense.norm()))
    assert errors[0] < errors[1] < errors[2], errors


@pytest.mark.parametrize("arch", MAKERS)
def test_save_and_load_give_identical_logits(arch, ids, tiny_calib, tmp_path):
    model = MAKERS[arch]()
    slice_model(model, tiny_calib, sparsity=0.25, progress=False)
    path = save_sliced(model, tmp_path / "sliced")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sliced"]  # no temporary directory left
    assert json.loads((path / "slicing.json").read_text())["hidden_size"] == 64
    loaded = load_sliced(path)
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))
    with pytest.raises(ValueError, match="overwrite=True"):
        save_sliced(model, path)
    save_sliced(loaded, path, overwrite=True)
    assert torch.equal(_logits(load_sliced(path), ids), _logits(model, ids))


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kwargs, error, match", [
    ({"sparsity": 1.0}, ValueError, r"\[0, 1\)"),
    ({"sparsity": -0.1}, ValueError, r"\[0, 1\)"),
    ({"sparsity": "25%"}, TypeError, "number"),
    ({"sparsity": 0.95}, ValueError, "rounds down to 0"),
    ({"sparsity": -0.25}, ValueError, r"\[0, 1\)"),
    ({"sparsity": float("nan")}, ValueError, r"\[0, 1\)"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"batch_size": 2.5}, TypeError, "batch_size"),
    ({"device": "tpu"}, ValueError, "use cpu or cuda"),
    ({"device": "cuda:9"}, ValueError, "cuda"),
    ({"slice_head": "yes"}, TypeError, "slice_head"),
    ({"calib": torch.zeros(2, 8)}, TypeError, "LongTensor"),
    ({"calib": torch.full((2, 8), 500)}, ValueError, "tokenizer"),
])
def test_bad_input_is_refused_before_anything_changes(kwargs, error, match, tiny_calib):
    model = tiny_llama()
    before = _snapshot(model)
    args = {"calib": tiny_calib, "sparsity": 0.25, **kwargs}
    with pytest.raises(error, match=match):
        slice_model(model, args.pop("calib"), progress=False, **args)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    assert not isinstance(model.model.layers[0], SlicedLayer)


def test_unsupported_architectures_are_named(tiny_calib):
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=64, n_layer=1, n_head=4, n_positions=64))
    with pytest.raises(ValueError, match="llama, mistral, opt, qwen2"):
        slice_model(gpt2, tiny_calib, progress=False)
    with pytest.raises(ValueError, match="post-LN"):
        slice_model(tiny_opt(do_layer_norm_before=False), tiny_calib, progress=False)


def test_slicing_twice_is_refused(tiny_calib):
    model = tiny_llama()
    slice_model(model, tiny_calib, sparsity=0.25, progress=False)
    before = _snapshot(model)
    with pytest.raises(ValueError, match="already sliced"):
        slice_model(model, tiny_calib, sparsity=0.25, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("arch", MAKERS)
def test_generation_with_the_cache_is_unchanged_by_rotation(arch, tiny_calib):
    """The sliced layer answers its decoder as the original layer did (a tensor, or in older transformers
    a tuple with the cache): greedy generation, which runs through the KV cache, gives the same tokens."""
    model = _with_random_norms(MAKERS[arch]())
    prompt = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(5))
    settings = dict(max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
    dense = model.generate(prompt, **settings)
    slice_model(model, tiny_calib, sparsity=0, progress=False)
    assert torch.equal(model.generate(prompt, **settings), dense)


def test_the_report_records_every_linear_like_prune_reports():
    model = tiny_opt()
    report = slice_model(model, torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(2)), 0.25,
                         progress=False)
    d = report.to_dict()
    assert d["slicing"] == {"hidden_size": 64, "dim": kept_dim(64, 0.25)}
    assert json.loads(json.dumps(d)) == d  # JSON as it is
    layer0 = model.model.decoder.layers[0].layer
    assert [(r["layer"], r["name"]) for r in d["linears"]][:6] == [
        (0, n) for n in ("self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj", "fc1", "fc2")]
    for r in d["linears"]:
        (o, i), (o0, i0) = r["shape"], r["shape_before"]
        assert r["sparsity"] == pytest.approx(1 - o * i / (o0 * i0))
        if r["layer"] == 0:
            assert list(sparselib.weight_of(layer0.get_submodule(r["name"])).shape) == [o, i]
    assert d["linears"][0]["shape_before"] == [64, 64] and d["linears"][0]["shape"] == [64, kept_dim(64, 0.25)]
    sizes = [r["shape_before"][0] * r["shape_before"][1] for r in d["linears"] if r["layer"] == 1]
    deleted = [r["sparsity"] for r in d["linears"] if r["layer"] == 1]
    assert d["layers"][1] == {"layer": 1, "sparsity": pytest.approx(sum(s * n for s, n in zip(deleted, sizes)) / sum(sizes))}


def test_cuda_without_a_gpu_is_refused_before_anything_changes(tiny_calib):
    """Issue 27: the device was parsed after fusing and slicing had begun."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    model = tiny_llama()
    before = _snapshot(model)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        slice_model(model, tiny_calib, 0.25, device="cuda", progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not isinstance(model.model.layers[0], SlicedLayer)


def test_numpy_sparsity_is_accepted(tiny_calib):
    import numpy as np

    report = slice_model(tiny_llama(), tiny_calib, np.float32(0.25), progress=False)
    assert type(report.sparsity) is float and report.dim == kept_dim(64, 0.25)
