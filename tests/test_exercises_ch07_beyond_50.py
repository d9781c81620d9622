"""Checkers of the chapter "When 50 % is not enough": right answers pass, the usual mistakes are named."""
import math

import pytest
import torch

import sparselib
from sparselib import exercises as ex
from sparselib.owl import owl_sparsities


def owl_right(ratios, target, lam=0.08):
    D = torch.tensor(ratios, dtype=torch.float64)
    z = D - D.mean()
    if z.abs().max() == 0:
        return [target] * len(ratios)
    return (target - lam * z / z.abs().max()).tolist()


def owl_code_rule(ratios, target, lam=0.08):  # the authors' code: min-max to [0, 2λ], minus the mean
    D = torch.tensor(ratios, dtype=torch.float64)
    if D.max() == D.min():
        return [target] * len(ratios)
    r = (D - D.min()) / (D.max() - D.min()) * 2 * lam
    return (target - (r - r.mean())).tolist()


def test_owl_sparsities_checker():
    assert ex.check_owl_sparsities(owl_right)
    fb = ex.check_owl_sparsities(lambda r, t, lam: [2 * t - s for s in owl_right(r, t, lam)])
    assert not fb and "reversed" in str(fb)
    fb = ex.check_owl_sparsities(owl_code_rule)
    assert not fb and "min-max" in str(fb)
    fb = ex.check_owl_sparsities(lambda r, t, lam: [t - lam * x for x in r])   # not centred
    assert not fb and "centre" in str(fb)
    fb = ex.check_owl_sparsities(lambda r, t, lam: [t])
    assert not fb and "one per layer" in str(fb)
    fb = ex.check_owl_sparsities(lambda r, t, lam: 1 / 0)
    assert not fb and "ZeroDivisionError" in str(fb)
    with pytest.raises(TypeError):
        ex.check_owl_sparsities(0.7)


def test_masked_merge_checker():
    assert ex.check_masked_merge(lambda W, A, B, s: W + s * (B @ A) * (W != 0))
    fb = ex.check_masked_merge(lambda W, A, B, s: W + s * (B @ A))
    assert not fb and "plain merge" in str(fb)
    fb = ex.check_masked_merge(lambda W, A, B, s: W + (B @ A) * (W != 0))       # scale forgotten
    assert not fb and "survivors" in str(fb) or "surviving" in str(fb)

    def in_place(W, A, B, s):
        W += s * (B @ A) * (W != 0)
        return W
    fb = ex.check_masked_merge(in_place)
    assert not fb and "in place" in str(fb)


def test_registered_under_the_chapters_labels():
    assert ex.CHECKERS["ex-owl-sparsities"] is ex.check_owl_sparsities
    assert ex.CHECKERS["ex-masked-merge"] is ex.check_masked_merge
    assert ex.CHECKERS["ex-layer-allocation"] is ex.check_layer_allocation
    assert ex.CHECKERS["ex-mask-after-step"] is ex.check_masked_step


# --- a layer allocation picked by hand from the measured sensitivity ---------------------------------

def _hand_allocation(target=0.7, lam=0.08, protect=3):
    """What a learner might pick: the `protect` most sensitive layers at target - lam, the rest raised
    evenly so that the mean stays the target."""
    layers = sparselib.load_result("layer_sensitivity_smollm2")["layers"]
    order = sorted(range(len(layers)), key=layers.__getitem__, reverse=True)
    rest = target + protect * lam / (len(layers) - protect)
    return [target - lam if i in order[:protect] else rest for i in range(len(layers))]


def test_layer_allocation_checker_passes_a_sensible_hand_allocation_and_owl():
    fb = ex.check_layer_allocation(_hand_allocation())
    assert fb, str(fb)
    assert "paper rule" in str(fb) and "code rule" in str(fb)   # compared with both of OWL's rules
    rec = sparselib.load_result("recovery_smollm2")
    paper, code = (owl_sparsities(rec["outlier_ratios"], 0.6, lam=0.05, weights=rec["layer_sizes"], rule=rule)
                   for rule in ("paper", "code"))
    assert ex.check_layer_allocation(paper, target=0.6, lam=0.05)
    fb = ex.check_layer_allocation(code, target=0.6, lam=0.05)   # the code's rule goes up to 2λ from S
    assert not fb and "more than lam" in str(fb)


def test_layer_allocation_checker_names_the_usual_mistakes():
    right = _hand_allocation()
    fb = ex.check_layer_allocation([0.7] * len(right))
    assert not fb and "uniform" in str(fb)
    fb = ex.check_layer_allocation([1.4 - s for s in right])                  # sensitive layers pruned more
    assert not fb and "rise with the measured sensitivity" in str(fb)
    fb = ex.check_layer_allocation([100 * s for s in right])
    assert not fb and "percentages" in str(fb)
    fb = ex.check_layer_allocation([s + 0.02 for s in right])
    assert not fb and "subtract +0.0200" in str(fb)
    fb = ex.check_layer_allocation(_hand_allocation(lam=0.15))               # beyond lam = 0.08
    assert not fb and "more than lam" in str(fb)
    fb = ex.check_layer_allocation(right[:-1])
    assert not fb and "one per layer" in str(fb)
    layers = sparselib.load_result("layer_sensitivity_smollm2")["layers"]
    worst = max(range(len(layers)), key=layers.__getitem__)
    skipped = list(right)                       # protects layers 2-4 in sensitivity, not the worst one
    order = sorted(range(len(layers)), key=layers.__getitem__, reverse=True)
    skipped = [0.7 - 0.08 if i in order[1:4] else 0.7 + 3 * 0.08 / 27 for i in range(len(layers))]
    skipped[worst] = 0.7 + 3 * 0.08 / 27
    fb = ex.check_layer_allocation(skipped)
    assert not fb and f"layer {worst} is by far the most sensitive" in str(fb)
    with pytest.raises(TypeError):
        ex.check_layer_allocation(0.7)
    with pytest.raises(ValueError):
        ex.check_layer_allocation(right, target=0.7, lam=0.5)


def test_rank_correlation_handles_ties():
    from sparselib.course.exercises.ch07_beyond_50 import rank_correlation
    assert rank_correlation([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert rank_correlation([1, 1, 2, 2], [1, 2, 3, 4]) == pytest.approx(0.894427, abs=1e-6)
    assert math.isnan(rank_correlation([1, 1, 1], [1, 2, 3]))


# --- a training step that keeps the mask --------------------------------------------------------------

def _loss_step(layer, opt, x, y):
    opt.zero_grad()
    ((layer(x) - y) ** 2).mean().backward()


def step_both(layer, keep, opt, x, y):            # sparselib.recover's recipe
    _loss_step(layer, opt, x, y)
    layer.weight.grad.mul_(keep)
    opt.step()
    with torch.no_grad():
        layer.weight.mul_(keep)


def step_hook_only(layer, keep, opt, x, y):       # the gradient masked, the mask never re-applied
    _loss_step(layer, opt, x, y)
    layer.weight.grad.mul_(keep)
    opt.step()


def step_reapply_only(layer, keep, opt, x, y):
    _loss_step(layer, opt, x, y)
    opt.step()
    with torch.no_grad():
        layer.weight.mul_(keep)


def step_unmasked(layer, keep, opt, x, y):
    _loss_step(layer, opt, x, y)
    opt.step()


def test_masked_step_checker():
    assert ex.check_masked_step(step_both)
    fb = ex.check_masked_step(step_hook_only)
    assert not fb and "first moment" in str(fb) and "Weight decay cannot revive" in str(fb)
    fb = ex.check_masked_step(step_unmasked)
    assert not fb and "fresh AdamW" in str(fb)
    fb = ex.check_masked_step(step_reapply_only)     # right, with a note on the optimizer state
    assert fb and "global norm" in str(fb)

    def no_zero_grad(layer, keep, opt, x, y):
        ((layer(x) - y) ** 2).mean().backward()
        layer.weight.grad.mul_(keep)
        opt.step()
        with torch.no_grad():
            layer.weight.mul_(keep)
    fb = ex.check_masked_step(no_zero_grad)
    assert not fb and "zero_grad" in str(fb)

    def replaces(layer, keep, opt, x, y):
        layer.weight = torch.nn.Parameter(layer.weight.detach() * keep)
    fb = ex.check_masked_step(replaces)
    assert not fb and "replaced layer.weight" in str(fb)
    fb = ex.check_masked_step(lambda *a: 1 / 0)
    assert not fb and "ZeroDivisionError" in str(fb)
    with pytest.raises(TypeError):
        ex.check_masked_step("step")


def test_the_hook_alone_keeps_zeros_with_a_fresh_optimizer():
    """The principle behind the exercise: weight decay cannot revive an exact zero; moments can."""
    from sparselib.course.exercises.ch07_beyond_50 import _step_case
    for prior, revives in ((0, False), (3, True)):
        layer, keep, opt, x, y = _step_case(prior)
        step_hook_only(layer, keep, opt, x, y)
        assert bool((layer.weight.detach()[~keep] != 0).any()) is revives
