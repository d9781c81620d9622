"""Recovery fine-tuning keeps every pruning mask exactly; masked vs plain LoRA merge."""
import pytest
import torch
from conftest import tiny_llama

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


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(data=[[1, 2]]), TypeError, "LongTensor"),
    (dict(steps=0), ValueError, "steps"),
    (dict(batch_size=100), ValueError, "batch_size"),
    (dict(lr=-1.0), ValueError, "lr"),
    (dict(lora_rank=0), ValueError, "lora_rank"),
    (dict(data=torch.full((4, 8), 500)), ValueError, "vocabulary"),
])
def test_bad_input_leaves_model_unchanged(kwargs, error, match, tiny_calib):
    model = _pruned(0.5, tiny_calib)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = dict(data=_data(), steps=2) | kwargs
    with pytest.raises(error, match=match):
        recover(model, args.pop("data"), args.pop("steps"), progress=False, **args)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
