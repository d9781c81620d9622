"""What every checker shares: the :class:`Feedback` it returns and the registry of exercise labels.

A checker is registered by decorating it::

    @checker("ex-magnitude-row")
    def check_magnitude_mask(fb, fn):
        ...                      # record findings with fb.fail(...) / fb.note(...)

The decorator files it in :data:`CHECKERS` under its label, hands the body a fresh ``Feedback`` for
that label as ``fb`` and returns it to the caller, who calls ``check_magnitude_mask(fn)`` without it.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Feedback:
    """The verdict of a checker: ``passed`` and the ``notes`` that explain it."""

    exercise: str
    passed: bool = True
    notes: list[str] = field(default_factory=list)

    def fail(self, note: str) -> "Feedback":
        self.passed = False
        self.notes.append(note)
        return self

    def note(self, note: str) -> "Feedback":
        self.notes.append(note)
        return self

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        head = f"{'✓ passed' if self.passed else '✗ not yet'} — {self.exercise}"
        return "\n".join([head] + [f"  • {n}" for n in self.notes])

    def _repr_markdown_(self) -> str:
        head = f"**{'✓ passed' if self.passed else '✗ not yet'}** — `{self.exercise}`"
        return "\n".join([head, ""] + [f"- {n}" for n in self.notes])


#: Every exercise label in the book and the checker that grades it (filled by :func:`checker`).
CHECKERS: dict[str, Callable[..., Feedback]] = {}


def checker(label: str):
    """Register the decorated function as the checker of exercise ``label`` (see the module docstring)."""
    def register(body: Callable[..., object]) -> Callable[..., Feedback]:
        if label in CHECKERS:
            raise ValueError(f"exercise {label!r} already has a checker, {CHECKERS[label].__name__}")

        @functools.wraps(body)
        def check(*args, **kwargs) -> Feedback:
            fb = Feedback(label)
            body(fb, *args, **kwargs)
            return fb

        # what help() and the notebook's tooltip show: the learner's arguments, without fb
        signature = inspect.signature(body)
        check.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:],
                                                return_annotation=Feedback)
        check.label = label
        CHECKERS[label] = check
        return check

    return register
