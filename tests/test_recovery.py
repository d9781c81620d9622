"""Recovery fine-tuning keeps every pruning mask exactly; masked vs plain LoRA merge."""
import math

import pytest
import torch
from conftest import tiny_llama
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import sparselib
from sparselib.recovery import cosine_lr, masks_of, merge_lora, recover


def _data(n=8, seqlen=16, seed=3):
    return torch.randint(0, 128, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _pruned(pattern, tiny_calib):
    model = tiny_llama()
    sparselib.prune(model, "wanda", pattern, tiny_calib, progress=False)
    return model


def _assert_same_masks(model, keeps, pattern):
    now = masks_of(model)
    assert now.keys() == keeps.keys()
    for name, keep in keeps.items():
        assert torch.equal(now[name], keep), name
        if pattern == "2:4":
            assert sparselib.is_nm(now[name], 2, 4)


@pytest.mark.parametrize("pattern", [0.6, "2:4"])
@pytest.mark.parametrize("lora_rank", [None, 4])
def test_masks_fixed_after_every_step(pattern, lora_rank, tiny_calib):
    model = _pruned(pattern, tiny_calib)
    keeps = masks_of(model)
    before = {n: m.weight.detach().clone() for n, m in model.named_modules() if n in keeps}
    checked = []

    def callback(step, m, loss):
        _assert_same_masks(m, keeps, pattern)  # during training (LoRA: the masked forward weight)
        checked.append(step)

    report = recover(model, _data(), steps=4, batch_size=2, lr=1e-2, lora_rank=lora_rank,
                     progress=False, callback=callback)
    assert checked == [1, 2, 3, 4] and len(report.losses) == 4
    _assert_same_masks(model, keeps, pattern)   # after the merge too
    changed = [n for n, W in before.items() if not torch.equal(dict(model.named_modules())[n].weight, W)]
    assert changed, "the surviving weights should have been trained"
    assert not any(parametrize_left(m) for m in model.modules())


def parametrize_left(module):
    return hasattr(module, "parametrizations")


def test_recovery_lowers_training_loss_and_is_deterministic(tiny_calib):
    data = _data(4)
    runs = []
    for _ in range(2):
        model = _pruned(0.5, tiny_calib)
        runs.append((recover(model, data, steps=12, batch_size=4, lr=3e-3, warmup=0, progress=False),
                     {k: v.clone() for k, v in model.state_dict().items()}))
    (r1, s1), (r2, s2) = runs
    assert r1.losses == r2.losses
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert r1.losses[-1] < r1.losses[0]   # same 4 windows each step: it must fit them better


def test_only_linears_train_and_requires_grad_restored(tiny_calib):
    model = _pruned(0.5, tiny_calib)
    emb = model.get_input_embeddings().weight.detach().clone()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    recover(model, _data(), steps=2, batch_size=2, progress=False)
    assert torch.equal(model.get_input_embeddings().weight, emb)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_lora_merge_plain_destroys_pattern_masked_keeps_it():
    torch.manual_seed(0)
    W = torch.randn(8, 16)
    keep = sparselib.nm_mask(W.abs(), 2, 4)
    W = W * keep
    A, B = torch.randn(4, 16), torch.randn(8, 4)
    plain = merge_lora(W, A, B, 0.5)
    masked = merge_lora(W, A, B, 0.5, keep)
    assert (plain == 0).sum() == 0                      # BA is dense: every pruned zero filled in
    assert not sparselib.is_nm(plain, 2, 4)
    assert torch.equal(masked != 0, keep) and sparselib.is_nm(masked, 2, 4)
    assert torch.allclose(masked[keep], plain[keep])    # the survivors get the same update


def test_cosine_schedule():
    assert cosine_lr(0, 10, 0) == 1.0
    assert cosine_lr(10, 10, 0) == pytest.approx(0.0)
    assert cosine_lr(0, 10, 2) < cosine_lr(1, 10, 2) < cosine_lr(2, 10, 2) == 1.0


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_as_before(model, before, flags, training=False):
    """Bit-identical weights, the same requires_grad flags and mode, no hook or parametrization left."""
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], v) and before[k].dtype == v.dtype for k, v in after.items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert model.training is training
    assert not any(parametrize_left(m) for m in model.modules())
    assert not any(p._backward_hooks for p in model.parameters())


BAD = [
    (dict(data=[[1, 2]]), TypeError, "LongTensor"),
    (dict(data=torch.zeros(4, 8)), TypeError, "LongTensor"),
    (dict(data=torch.zeros(0, 8, dtype=torch.long)), ValueError, "empty"),
    (dict(data=torch.full((4, 8), 500)), ValueError, r"outside \[0, 128\)"),
    (dict(data=torch.full((4, 8), -1)), ValueError, "tokenizer"),
    (dict(data=torch.zeros(4, 65, dtype=torch.long)), ValueError, "maximum of 64"),
    (dict(steps=0), ValueError, "steps"),
    (dict(steps=-3), ValueError, "steps"),
    (dict(steps=2.5), TypeError, "steps"),
    (dict(batch_size=100), ValueError, "batch_size"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(lr=-1.0), ValueError, "lr"),
    (dict(lr=0.0), ValueError, "lr"),
    (dict(lr=math.nan), ValueError, "lr"),
    (dict(lr=math.inf), ValueError, "lr"),
    (dict(lr="1e-3"), TypeError, "lr"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay"),
    (dict(weight_decay=math.nan), ValueError, "weight_decay"),
    (dict(warmup=-1), ValueError, "warmup"),
    (dict(warmup=1.5), TypeError, "warmup"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(callback="print"), TypeError, "callback"),
    (dict(lora_rank=0), ValueError, "lora_rank"),
    (dict(lora_rank=33), ValueError, r"min\(out, in\) = 32"),  # k_proj is 32 x 64
    (dict(lora_rank=4.0), TypeError, "lora_rank"),
    (dict(lora_rank=4, lora_alpha=math.nan), ValueError, "lora_alpha"),
    (dict(lora_rank=4, lora_alpha=0), ValueError, "lora_alpha"),
    (dict(lora_rank=4, lora_alpha=-8), ValueError, "lora_alpha"),
    (dict(lora_rank=4, lora_alpha=math.inf), ValueError, "lora_alpha"),
    (dict(lora_alpha=8), TypeError, "lora_rank"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD)
def test_bad_input_leaves_model_unchanged(kwargs, error, match, tiny_calib):
    model = _pruned(0.5, tiny_calib)
    before, flags = snapshot(model), {n: p.requires_grad for n, p in model.named_parameters()}
    args = dict(data=_data(), steps=2) | kwargs
    with pytest.raises(error, match=match):
        recover(model, args.pop("data"), args.pop("steps"), progress=False, **args)
    assert_as_before(model, before, flags)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["lr", "weight_decay", "lora_alpha"]),
       value=st.one_of(st.floats(max_value=0.0), st.sampled_from([math.nan, math.inf, -math.inf]), st.booleans(),
                       st.text(max_size=3), st.none()))
def test_any_bad_number_is_refused_before_anything_changes(name, value, tiny_calib):
    assume(not (value is None and name in ("lr", "lora_alpha")))  # None: the default
    assume(not (name == "weight_decay" and value == 0.0))          # no weight decay
    model = _pruned(0.5, tiny_calib)
    before, flags = snapshot(model), {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises((ValueError, TypeError), match=name):
        recover(model, _data(), 2, progress=False, lora_rank=4, **{name: value})
    assert_as_before(model, before, flags)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_model_is_refused_with_the_fix(dtype, tiny_calib):
    model = _pruned(0.5, tiny_calib).to(dtype)
    before, flags = snapshot(model), {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(TypeError, match=r"float32.*model\.float\(\)"):
        recover(model, _data(), 2, progress=False)
    assert_as_before(model, before, flags)


def test_a_model_that_was_never_pruned_is_refused():
    model = tiny_llama()
    before, flags = snapshot(model), {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="prune it first"):
        recover(model, _data(), 2, progress=False)
    assert_as_before(model, before, flags)


# --------------------------------------------------------------------------------------------
# A recovery that fails part-way puts the model back, bit for bit
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, steps", [
    (dict(lr=1e30), 3),                        # the loss of step 2 is not finite
    (dict(lr=1e30), 1),                        # one step: caught by the check after the last update
    (dict(lora_rank=4, lr=1e30), 3),
])
def test_a_diverging_run_fails_and_restores_the_model(kwargs, steps, tiny_calib):
    model = _pruned(0.5, tiny_calib)
    before, flags = snapshot(model), {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(FloatingPointError, match="as it was before recover"):
        recover(model, _data(), steps, batch_size=2, progress=False, **kwargs)
    assert_as_before(model, before, flags)


class Boom(Exception):
    pass


@pytest.mark.parametrize("lora_rank", [None, 4])
@pytest.mark.parametrize("exception", [Boom, KeyboardInterrupt])
def test_an_error_in_the_callback_restores_the_model(lora_rank, exception, tiny_calib):
    model = _pruned("2:4", tiny_calib)
    model.train()
    before, flags = snapshot(model), {n: p.requires_grad for n, p in model.named_parameters()}

    def callback(step, m, loss):
        if step == 2:
            raise exception
    with pytest.raises(exception):
        recover(model, _data(), 4, batch_size=2, lr=1e-2, lora_rank=lora_rank, progress=False, callback=callback)
    assert_as_before(model, before, flags, training=True)


def test_a_failure_while_setting_up_lora_restores_the_model(tiny_calib, monkeypatch):
    """Half the linears have their LoRA parametrization when the set-up fails."""
    from torch.nn.utils import parametrize

    model = _pruned(0.5, tiny_calib)
    before, flags = snapshot(model), {n: p.requires_grad for n, p in model.named_parameters()}
    real, calls = parametrize.register_parametrization, []

    def register(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:
            raise Boom
        return real(*args, **kwargs)
    monkeypatch.setattr(parametrize, "register_parametrization", register)
    with pytest.raises(Boom):
        recover(model, _data(), 2, lora_rank=4, progress=False)
    assert_as_before(model, before, flags)


# --------------------------------------------------------------------------------------------
# The 2:4 pattern survives recovery exactly: full fine-tuning and masked LoRA, weight decay on
# --------------------------------------------------------------------------------------------
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lora_rank=st.sampled_from([None, 2, 8]), weight_decay=st.floats(0.01, 0.5),
       lr=st.floats(1e-3, 5e-2), seed=st.integers(0, 3), recompute=st.booleans())
def test_every_pruned_weight_stays_exactly_zero(lora_rank, weight_decay, lr, seed, recompute, tiny_calib):
    model = _pruned("2:4", tiny_calib)
    keeps = masks_of(model)
    recover(model, _data(seed=seed), steps=3, batch_size=2, lr=lr, lora_rank=lora_rank, weight_decay=weight_decay,
            seed=seed, recompute=recompute and lora_rank is not None, progress=False)
    modules = dict(model.named_modules())
    trained = 0
    for name, keep in keeps.items():
        W = modules[name].weight.detach()
        assert (W[~keep] == 0).all(), name                      # exactly 0.0, not 1e-12
        assert W[~keep].abs().max() == 0
        assert sparselib.nm_violations(W, 2, 4) == 0, name    # every group of 4 has at most 2 nonzeros
        groups = (W != 0).reshape(W.shape[0], -1, 4).sum(-1)
        assert groups.max() <= 2
        trained += int((W[keep] != 0).any())
    assert trained  # the survivors did train


# --------------------------------------------------------------------------------------------
# Masked LoRA that recomputes (s·B A) ⊙ keep in the backward pass: the same numbers, less memory
# --------------------------------------------------------------------------------------------
def _gpt2_pruned():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64)).eval()
    sparselib.prune(model, "magnitude", "2:4", progress=False)
    return model


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_recompute_gives_the_same_training(arch, tiny_calib):
    runs = []
    for recompute in (False, True):
        model = _pruned("2:4", tiny_calib) if arch == "llama" else _gpt2_pruned()
        keeps = masks_of(model)
        report = recover(model, _data(), 5, batch_size=2, lr=1e-2, lora_rank=4, weight_decay=0.1,
                         recompute=recompute, progress=False)
        _assert_same_masks(model, keeps, "2:4" if arch == "llama" else None)  # (Conv1D's keep is [in, out])
        runs.append((report.losses, snapshot(model)))
        assert not any(hasattr(m, "parametrizations") or "forward" in vars(m) for m in model.modules())
    (l1, s1), (l2, s2) = runs
    assert l1 == pytest.approx(l2, rel=1e-5)
    for k in s1:
        torch.testing.assert_close(s1[k], s2[k], rtol=1e-5, atol=1e-6)


def test_recompute_keeps_less_for_the_backward_pass(tiny_calib):
    """Bytes autograd saves during one forward (parameters and buffers, which exist anyway, not
    counted): recomputing frees at least every linear's full-size W' of the plain masked LoRA."""
    from sparselib.recovery import saved_tensor_bytes

    saved = {}
    for recompute in (False, True):
        model = _pruned("2:4", tiny_calib)
        with saved_tensor_bytes(model) as counted:
            recover(model, _data()[:2], 1, batch_size=2, lora_rank=4, recompute=recompute, progress=False)
        saved[recompute] = counted["bytes"]
    linears = sum(W.numel() * W.element_size() for W in masks_of(model).values())
    assert saved[False] - saved[True] >= linears


def test_recompute_failure_restores_and_needs_lora(tiny_calib):
    model = _pruned("2:4", tiny_calib)
    before, flags = snapshot(model), {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(FloatingPointError):
        recover(model, _data(), 3, batch_size=2, lr=1e30, lora_rank=4, recompute=True, progress=False)
    assert_as_before(model, before, flags)
    assert not any("forward" in vars(m) for m in model.modules())
    with pytest.raises(TypeError, match="lora_rank"):
        recover(model, _data(), 3, recompute=True, progress=False)
    with pytest.raises(TypeError, match="recompute"):
        recover(model, _data(), 3, lora_rank=4, recompute="yes", progress=False)
    assert_as_before(model, before, flags)
