"""Reading a learner's answer: bad input is the learner's bug too, so each check says what was
expected; the learner's own function runs under :func:`call` so that its error becomes a note."""
from __future__ import annotations

import math
from numbers import Real

import torch
from torch import nn

from .registry import Feedback


def need_function(fn, example: str) -> None:
    if not callable(fn):
        raise TypeError(f"pass your function itself, e.g. {example} (not {type(fn).__name__})")


def need_model(model, what: str = "the loaded model (sparselib.load_model()[0])") -> None:
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"model must be {what}")


def number(x, name: str) -> float:
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, Real):
        raise TypeError(f"{name} must be a number, got {type(x).__name__}")
    if not math.isfinite(x):
        raise ValueError(f"{name} is {x}; pass the finite value you computed")
    return float(x)


def call(fb: Feedback, fn, *args):
    """The learner's ``fn(*args)``, or None after noting the exception it raised."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - any error in learner code is feedback
        shown = ", ".join(str(tuple(a.shape)) if isinstance(a, torch.Tensor) else repr(a) for a in args)
        fb.fail(f"your function raised {type(e).__name__}: {e} (arguments: {shown})")
        return None


def close(a: float, b: float, rel: float = 1e-6) -> bool:
    return abs(a - b) <= rel * max(abs(b), 1e-12)


def mask_shape_ok(fb: Feedback, keep, W: torch.Tensor) -> bool:
    """Whether ``keep`` is a mask shaped like ``W``; notes why not, or that a non-bool dtype is risky."""
    if not isinstance(keep, torch.Tensor):
        fb.fail(f"return a torch.Tensor keep-mask, not {type(keep).__name__}")
        return False
    if keep.shape != W.shape:
        fb.fail(f"the mask has shape {tuple(keep.shape)}, the weight {tuple(W.shape)}: one entry per weight")
        return False
    if keep.dtype != torch.bool:
        fb.note(f"the mask has dtype {keep.dtype}; a bool mask (True = keep) avoids surprises "
                f"(W * mask works with both, W[mask] only with bool) — converted for checking")
    return True
