"""Checkpoints that keep the savings: compressed-tensors (quantized) and sparselib's 2:4 format. Each
round-trips to exactly the weights sparselib's model holds, and its bytes on disk match the storage model."""
import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import sparselib
from sparselib.checkpoint24 import file_bytes, load_24, pack_codes, save_24, storage_of, unpack_codes
from sparselib.export import compressed_state_dict, save_compressed
from sparselib.masks import is_nm
from sparselib.storage import Storage, linear_shapes, model_bytes, other_params

from conftest import tiny_llama

compressed_tensors = pytest.importorskip("compressed_tensors")


def medium_llama(seed=0):
    """Big enough that the file's header and config are a small part of its bytes (< 1 %)."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=768,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=64, tie_word_embeddings=True)).eval()


def calib(vocab=128, seed=1):
    return torch.randint(0, vocab, (6, 16), generator=torch.Generator().manual_seed(seed))


def linears(model):
    return {n: m for n, m in model.named_modules() if ".layers." in n and isinstance(m, torch.nn.Linear)}


def params_as(model, dtype):
    """The model with its parameters (not its computed buffers, e.g. rotary frequencies) in ``dtype``,
    as a checkpoint loaded in that dtype has them."""
    model = copy.deepcopy(model)
    for p in model.parameters():
        p.data = p.data.to(dtype)
    return model


# --------------------------------------------------------------------------------------------
# compressed-tensors
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(bits=4, group_size=32), dict(bits=4, group_size=32, symmetric=False),
                                dict(bits=8, group_size=None), dict(bits=3, group_size=64, symmetric=False)])
def test_the_librarys_decompressor_gives_back_sparselibs_weights(kw):
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor

    model = tiny_llama()
    sparselib.quantize(model, calib=calib(), progress=False, **kw)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state, config = compressed_state_dict(model)
    scheme = config.config_groups["group_0"]
    for name, module in linears(model).items():
        local = {k.rpartition(".")[2]: v for k, v in state.items() if k.rpartition(".")[0] == name}
        assert "weight" not in local and local["weight_packed"].dtype == torch.int32
        W = PackedQuantizationCompressor.decompress(local, scheme)["weight"]
        assert W.dtype == torch.float16 and torch.equal(W.float(), module.weight)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # not changed


def test_transformers_loads_the_checkpoint_with_the_same_weights(tmp_path):
    model, tok_out = tiny_llama(), tmp_path / "ct"
    sparselib.prune(model, "sparsegpt", "2:4", calib(), wbits=4, group_size=32, progress=False)
    save_compressed(model, tok_out)
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tok_out)
    x = calib()[:2]
    with torch.no_grad():
        ours = params_as(model, torch.float16)(x).logits
        theirs = loaded(x).logits  # the first forward decompresses the packed weights
    for name, module in linears(model).items():
        assert torch.equal(loaded.get_submodule(name).weight.float(), module.weight)
    torch.testing.assert_close(theirs.float(), ours.float(), atol=2e-3, rtol=0)


@pytest.mark.parametrize("kw, storage", [
    (dict(bits=4, group_size=64), Storage("int4 g64", bits=4, group_size=64)),
    (dict(bits=4, group_size=32, symmetric=False), Storage("int4 g32 asym", bits=4, group_size=32, symmetric=False)),
    (dict(bits=8, group_size=None), Storage("int8", bits=8)),
])
def test_bytes_on_disk_match_the_storage_model(kw, storage, tmp_path):
    model = medium_llama()
    sparselib.quantize(model, method="rtn", progress=False, **kw)
    save_compressed(model, tmp_path / "ct")
    predicted = model_bytes(linear_shapes(model), other_params(model), storage)["model"]
    assert abs(file_bytes(tmp_path / "ct") / predicted - 1) < 0.02


def test_save_compressed_refuses_what_it_cannot_write_and_writes_nothing(tmp_path):
    model = tiny_llama()
    with pytest.raises(ValueError, match="not quantized; run sparselib.quantize"):
        save_compressed(model, tmp_path / "a")
    sparselib.quantize(model, 4, group_size=32, method="rtn", progress=False)
    model.model.layers[1].mlp.up_proj.weight.data[0, 0] += 0.1234
    with pytest.raises(ValueError, match="changed after quantization"):
        save_compressed(model, tmp_path / "b")
    assert not any(tmp_path.iterdir())
    model = tiny_llama()
    sparselib.quantize(model, 4, group_size=32, method="rtn", progress=False)
    sparselib.quantize(model, 8, group_size=None, method="rtn", layers=[1], progress=False)
    with pytest.raises(ValueError, match="different settings"):
        save_compressed(model, tmp_path / "c")
    (tmp_path / "d").mkdir()
    sparselib.quantize(model, 4, group_size=32, method="rtn", progress=False)
    with pytest.raises(FileExistsError):
        save_compressed(model, tmp_path / "d")


# --------------------------------------------------------------------------------------------
# 2:4
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, dict(wbits=4, group_size=32), dict(wbits=8, group_size=None),
                                dict(wbits=4, group_size=32, symmetric=False)])
def test_a_2_4_checkpoint_reloads_into_sparse_modules_with_the_same_logits(kw, tmp_path):
    model = tiny_llama()
    sparselib.prune(model, "sparsegpt", "2:4", calib(), progress=False, **kw)
    save_24(model, tmp_path / "s")
    loaded = load_24(tmp_path / "s")
    assert all(isinstance(loaded.get_submodule(n), sparselib.SparseLinear24) for n in linears(model))
    x = calib()[:2]
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, params_as(model, torch.float16)(x).logits)


@pytest.mark.parametrize("kw, storage", [
    ({}, Storage("2:4 fp16", sparsity="2:4", density=0.5)),
    (dict(wbits=4, group_size=64), Storage("2:4 + int4", bits=4, group_size=64, sparsity="2:4", density=0.5)),
    (dict(wbits=8, group_size=None, symmetric=False), Storage("2:4 + int8", bits=8, symmetric=False,
                                                              sparsity="2:4", density=0.5)),
])
def test_2_4_bytes_on_disk_match_the_storage_model(kw, storage, tmp_path):
    model = medium_llama()
    sparselib.prune(model, "sparsegpt", "2:4", calib(256), progress=False, **kw)
    save_24(model, tmp_path / "s")
    predicted = model_bytes(linear_shapes(model), other_params(model), storage)
    assert abs(file_bytes(tmp_path / "s") / predicted["model"] - 1) < 0.02
    import json
    assert storage_of(json.loads((tmp_path / "s" / "config.json").read_text())["sparselib_24"]) == \
        Storage(storage.name if not kw else f"2:4 + int{kw['wbits']}", **{k: v for k, v in storage.__dict__.items()
                                                                           if k != "name"})
    if not kw:  # half the bytes plus 1/16 of the dense fp16 linears
        dense = model_bytes(linear_shapes(model), other_params(model), Storage("fp16"))["linears"]
        assert predicted["linears"] == dense * (1 / 2 + 1 / 16)


def test_save_24_refuses_a_model_that_is_not_2_4(tmp_path):
    with pytest.raises(ValueError, match="no decoder linear is 2:4"):
        save_24(tiny_llama(), tmp_path / "x")
    model = tiny_llama()
    sparselib.prune(model, "sparsegpt", "2:4", calib(), wbits=3, group_size=32, progress=False)
    with pytest.raises(ValueError, match="4- or 8-bit values"):
        save_24(model, tmp_path / "y")
    with pytest.raises(ValueError, match="not a sparselib 2:4 checkpoint"):
        model = tiny_llama()
        model.save_pretrained(tmp_path / "dense")
        load_24(tmp_path / "dense")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense"]


def test_a_linear_left_dense_stays_dense(tmp_path):
    model = tiny_llama()
    sparselib.prune(model, "wanda", "2:4", calib(), layers=[0], progress=False)
    save_24(model, tmp_path / "s")
    loaded = load_24(tmp_path / "s")
    assert isinstance(loaded.model.layers[0].mlp.up_proj, sparselib.SparseLinear24)
    assert isinstance(loaded.model.layers[1].mlp.up_proj, torch.nn.Linear)
    assert is_nm(model.model.layers[0].mlp.up_proj.weight, 2, 4)


@pytest.mark.parametrize("bits", [4, 8])
def test_codes_pack_and_unpack(bits):
    k = torch.randint(0, 2 ** bits, (5, 12)).float()
    packed = pack_codes(k, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 12 * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, 12), k)


@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_a_converted_model_saves_with_save_24(fuse, arch, tmp_path):
    """save_pretrained refuses a converted model and names save_24: save_24 must take it (fused or not)."""
    from conftest import tiny_opt

    model = tiny_llama() if arch == "llama" else tiny_opt()
    sparselib.prune(model, "wanda", "2:4", calib(), progress=False)
    model = params_as(model, torch.float16)
    x = calib()[:2]
    with torch.no_grad():
        before = model(x).logits
    sparselib.to_semi_structured(model, kernel="reference", fuse_projections=fuse)
    save_24(model, tmp_path / "s")
    loaded = load_24(tmp_path / "s")
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, before)
