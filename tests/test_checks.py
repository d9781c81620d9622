"""sparselib.checks: one rule per argument, the same at every entry point; plain values in, so the
command line can check before loading. Each check refuses what it should, with the fix in the message,
and lets the good value through unchanged."""
import math

import pytest
import torch
from transformers import BertConfig, GPT2Config, LlamaConfig, OPTConfig

import sparselib
from sparselib import checks
from sparselib.masks import parse_sparsity

from conftest import tiny_llama, tiny_opt


@pytest.mark.parametrize("value, error, match", [
    (0, ValueError, "n must be at least 1, got 0"), (True, TypeError, "int, not bool"),
    (2.0, TypeError, "int, not float"), ("3", TypeError, "int, not str"),
])
def test_check_int(value, error, match):
    with pytest.raises(error, match=match):
        checks.check_int(value, "n", 1)
    assert checks.check_int(5, "n", 1) == 5


@pytest.mark.parametrize("seqlen, limit, error, match", [
    (1, None, ValueError, "at least 2"), (65, 64, ValueError, "use seqlen <= 64"), (16.0, None, TypeError, "int"),
])
def test_check_seqlen(seqlen, limit, error, match):
    with pytest.raises(error, match=match):
        checks.check_seqlen(seqlen, limit)
    assert checks.check_seqlen(64, 64) == 64
    with pytest.raises(ValueError, match="use --seqlen <= 64"):  # the command line names its flag
        checks.check_seqlen(65, 64, "--seqlen")


def test_max_positions_reads_a_config_or_a_model():
    assert checks.max_positions(LlamaConfig(max_position_embeddings=77)) == 77
    assert checks.max_positions(GPT2Config(n_positions=33)) == 33
    assert checks.max_positions(tiny_llama()) == 64
    assert checks.max_positions(object()) is None


@pytest.mark.parametrize("ids, error, match", [
    (None, ValueError, "calibration_data"),
    (torch.zeros(2, 8), TypeError, "LongTensor"),
    (torch.zeros(8, dtype=torch.long), TypeError, r"\[nsamples, seqlen\]"),
    (torch.zeros(0, 8, dtype=torch.long), ValueError, "empty"),
    (torch.zeros(2, 0, dtype=torch.long), ValueError, "empty"),
    (torch.full((2, 8), -1), ValueError, r"outside \[0, 128\)"),
    (torch.full((2, 8), 128), ValueError, "tokenizer"),
    (torch.zeros(2, 65, dtype=torch.long), ValueError, "maximum of 64"),
    (torch.zeros(2, 1, dtype=torch.long), ValueError, "at least 2"),
])
def test_check_token_ids(ids, error, match):
    with pytest.raises(error, match=match):
        checks.check_token_ids(ids, vocab_size=128, limit=64)
    good = torch.randint(0, 128, (2, 8))
    assert checks.check_token_ids(good, 128, 64) is good


@pytest.mark.parametrize("calib", [torch.zeros(0, 8, dtype=torch.long), torch.full((2, 8), -1),
                                   torch.full((2, 8), 128)])
def test_prune_and_slice_model_refuse_the_same_calibration_ids(calib):
    """One rule for calib at both entry points: empty tensors and ids outside the vocabulary."""
    for run in (lambda m: sparselib.prune(m, "wanda", 0.5, calib, progress=False),
                lambda m: sparselib.slice_model(m, calib, 0.25, progress=False)):
        model = tiny_llama()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(ValueError):
            run(model)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("x, error, match", [
    ([[1.0]], TypeError, "torch.Tensor"), (torch.ones(3), ValueError, "2-D"),
    (torch.tensor([[1.0, math.inf]]), ValueError, "NaN or Inf"), (torch.tensor([[math.nan]]), ValueError, "NaN"),
])
def test_check_matrix(x, error, match):
    with pytest.raises(error, match=match):
        checks.check_matrix(x, "W")
    W = torch.ones(2, 3)
    assert checks.check_matrix(W) is W
    assert checks.check_matrix(torch.tensor([[math.nan]]), finite=False) is not None


def test_every_weight_function_uses_the_one_matrix_check():
    bad = torch.tensor([[1.0, math.nan, 0.0, 0.0]])
    for fn in (sparselib.magnitude_scores, lambda W: sparselib.unstructured_mask(W, 0.5),
               lambda W: sparselib.nm_mask(W, 2, 4), lambda W: sparselib.structured_mask(W, 0.5)):
        with pytest.raises(ValueError, match="NaN or Inf"):
            fn(bad)
        with pytest.raises(ValueError, match="2-D"):
            fn(torch.ones(4))


@pytest.mark.parametrize("value, error", [(1.0, ValueError), (-0.1, ValueError), (math.nan, ValueError),
                                          ("0.5", TypeError), (True, TypeError)])
def test_check_fraction(value, error):
    with pytest.raises(error):
        checks.check_fraction(value)
    assert checks.check_fraction(0) == 0.0 and checks.check_fraction(0.25) == 0.25


def test_check_choice_dataset_and_split():
    with pytest.raises(ValueError, match="choose one of brown, wikitext2"):
        checks.check_dataset("c4")
    with pytest.raises(ValueError, match="'train' or 'test'"):
        checks.check_split("validation")
    with pytest.raises(ValueError, match="unknown per 'col'; choose one of row, matrix"):
        checks.check_choice("col", ("row", "matrix"), "per")


def test_check_device():
    assert checks.check_device(None) == torch.device("cpu")
    assert checks.check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="use cpu or cuda"):
        checks.check_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU.*use --device cpu"):
            checks.check_device("cuda", "--device")


def test_check_nm_fits_and_weights():
    with pytest.raises(ValueError, match="multiple of 8; layer 3 mlp has 132 inputs"):
        checks.check_nm_fits(132, 8, "4:8", "layer 3 mlp")
    model = tiny_llama()
    checks.check_weights(model, parse_sparsity("2:4"))
    with pytest.raises(ValueError, match="multiple of 3"):
        checks.check_weights(model, parse_sparsity("1:3"))
    sparselib.decoder_layers(model)[1].mlp.up_proj.weight.data[0, 0] = math.inf
    with pytest.raises(ValueError, match="layer 1 mlp.up_proj contains NaN or Inf"):
        checks.check_weights(model)


def test_check_enough_tokens():
    checks.check_enough_tokens(256, 256, "the text", "fix")
    with pytest.raises(ValueError, match="has 255 tokens, fewer than one window of 256; use more"):
        checks.check_enough_tokens(255, 256, "the text", "use more")
    with pytest.raises(ValueError, match="one window of 256 plus 1"):
        checks.check_enough_tokens(256, 256, "the text", "fix", spare=1)


def test_configs_alone_say_what_is_supported():
    checks.check_causal_lm(LlamaConfig(architectures=["LlamaForCausalLM"]))
    with pytest.raises(ValueError, match="not a causal language model"):
        checks.check_causal_lm(BertConfig(architectures=["BertForMaskedLM"]))
    with pytest.raises(ValueError, match="Add an entry to sparselib.models.ADAPTERS"):
        checks.check_model_type("gpt_neox")
    assert checks.check_model_type("sparselib_sliced_llama") == "sparselib_sliced_llama"  # keeps llama's adapter


def test_check_slicing_from_the_config():
    config = tiny_llama().config
    assert checks.check_slicing(config, 0.25) == 0.25
    with pytest.raises(ValueError, match="rounds down to 0.*use sparsity <="):
        checks.check_slicing(config, 0.95)
    with pytest.raises(ValueError, match="post-LN"):
        checks.check_slicing(tiny_opt(do_layer_norm_before=False).config, 0.25)
    with pytest.raises(ValueError, match="llama, mistral, opt, qwen2"):
        checks.check_slicing(GPT2Config(), 0.25)
    with pytest.raises(ValueError, match="already sliced"):
        checks.check_slicing(type("C", (), {"model_type": "sparselib_sliced_llama"})(), 0.25)
    with pytest.raises(ValueError, match="word_embed_proj_dim"):
        checks.check_slicing(OPTConfig(hidden_size=64, word_embed_proj_dim=32, num_attention_heads=4), 0.25)


def test_check_out_dir(tmp_path):
    assert checks.check_out_dir(tmp_path / "new" / "out", force=False) == tmp_path / "new" / "out"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x").write_text("x")
    with pytest.raises(ValueError, match="add --force"):
        checks.check_out_dir(tmp_path / "mine", force=False)
    with pytest.raises(ValueError, match="sparselib did not write"):
        checks.check_out_dir(tmp_path / "mine", force=True)
    (tmp_path / "mine" / "report.json").write_text("{}")  # a report.json is not enough (issue 27)
    with pytest.raises(ValueError, match="sparselib did not write"):
        checks.check_out_dir(tmp_path / "mine", force=True)
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "report.json").write_text('{"output_id": "1"}')
    sparselib.io.mark_output(tmp_path / "ours", "1")
    checks.check_out_dir(tmp_path / "ours", force=True)
    (tmp_path / "ours" / "x").write_text("x")
    with pytest.raises(ValueError, match=r"files sparselib did not write \(x\)"):
        checks.check_out_dir(tmp_path / "ours", force=True)
    (tmp_path / "empty").mkdir()
    checks.check_out_dir(tmp_path / "empty", force=True)  # nothing in it to lose
    assert not any(p.name.startswith(".sparselib-probe") for p in tmp_path.iterdir())  # the probe is gone


def test_check_model_dir(tmp_path):
    with pytest.raises(ValueError, match="no such file or directory; FIX"):
        checks.check_model_dir(tmp_path / "missing", "FIX")
    with pytest.raises(ValueError, match="no config.json"):
        checks.check_model_dir(tmp_path, "FIX")


def test_the_slicing_check_refuses_exactly_the_widths_that_round_to_zero():
    from sparselib.slicegpt import kept_dim

    config = tiny_llama().config
    for D in (9, 17, 64, 100, 576):
        config.hidden_size = D
        for sparsity in [i / 50 for i in range(50)]:
            refused = False
            try:
                checks.check_slicing(config, sparsity)
            except ValueError:
                refused = True
            assert refused == (kept_dim(D, sparsity) == 0), (D, sparsity)
