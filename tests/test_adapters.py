"""The adapter table: the one place for architecture facts (layers, norms, post-norm OPT, GPT-2's
Conv1D, sliced model types), and the sliced layer's contract with the transformers decoder."""
import pytest
import torch
from conftest import tiny_llama, tiny_opt
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from sparselib.adapters import (ADAPTERS, SLICED_PREFIX, adapter_for, decoder_layers, is_conv1d, is_prunable,
                                layer_linears, set_weight, weight_of)
from sparselib.slicegpt import accepted_kwargs, returns_tuple


def test_each_model_finds_its_layers():
    assert len(decoder_layers(tiny_llama())) == 2 and len(decoder_layers(tiny_opt())) == 2
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    assert len(decoder_layers(gpt2)) == 3
    assert set(layer_linears(decoder_layers(gpt2)[0])) == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}


def test_an_unknown_architecture_is_named_with_the_fix():
    model = nn.Linear(2, 2)
    model.config = type("Config", (), {"model_type": "mamba"})()
    with pytest.raises(ValueError, match="'mamba'.*Add an entry to sparselib.models.ADAPTERS"):
        adapter_for(model)


def test_a_sliced_model_type_keeps_its_dense_adapter():
    model = tiny_opt()
    model.config.model_type = SLICED_PREFIX + "opt"
    assert adapter_for(model) is ADAPTERS["opt"]


def test_slicegpt_support_is_an_adapter_fact():
    assert ADAPTERS["llama"].sliceable(tiny_llama().config)
    assert ADAPTERS["opt"].sliceable(tiny_opt().config)
    assert not ADAPTERS["opt"].sliceable(tiny_opt(do_layer_norm_before=False).config)  # post-LN OPT-350M
    assert not ADAPTERS["gpt2"].sliceable(GPT2Config())


def test_conv1d_is_read_and_written_as_w_out_in():
    conv, linear = Conv1D(4, 8), nn.Linear(8, 4)  # both map 8 inputs to 4 outputs
    assert is_conv1d(conv) and not is_conv1d(linear) and is_prunable(conv) and is_prunable(linear)
    assert weight_of(conv).shape == weight_of(linear).shape == (4, 8)
    W = torch.randn(4, 8)
    set_weight(conv, W)
    set_weight(linear, W)
    x = torch.randn(3, 8)
    assert torch.allclose(conv(x) - conv.bias, linear(x) - linear.bias, atol=1e-6)


def test_the_return_contract_is_read_from_the_layer_annotation():
    class Old(nn.Module):
        def forward(self, x) -> tuple[torch.Tensor, torch.Tensor | None]:
            return (x, None)

    class New(nn.Module):
        def forward(self, x) -> torch.Tensor:
            return x

    assert returns_tuple(Old()) and not returns_tuple(New())
    for layer in (decoder_layers(tiny_llama())[0], decoder_layers(tiny_opt())[0]):
        out = layer.forward.__annotations__.get("return")  # what this transformers' decoder unpacks
        assert returns_tuple(layer) == ("uple" in str(out))


def test_attention_gets_only_the_arguments_it_takes():
    class Strict(nn.Module):
        def forward(self, hidden_states, attention_mask=None):
            return hidden_states

    class Loose(nn.Module):
        def forward(self, hidden_states, **kwargs):
            return hidden_states

    assert accepted_kwargs(Strict()) == {"hidden_states", "attention_mask"}
    assert accepted_kwargs(Loose()) is None
