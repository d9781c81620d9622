"""The exercise registry and the book agree: every exercise has a checker registered under its label,
its "Check yourself" line names that checker, every checker serves an exercise, and a checker is
registered by decorating it, once per label."""
import inspect
import json
import re
from pathlib import Path

import pytest

import sparselib
from sparselib import exercises as ex
from sparselib.course.exercises.registry import Feedback, checker

ROOT = Path(__file__).resolve().parents[1]


def exercise_blocks(chapter: str = "*"):
    """(label, text of the exercise block) for every exercise in the chapters matching ``chapter``."""
    out = []
    for path in sorted((ROOT / "chapters").glob(f"{chapter}.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            text = "".join(cell["source"])
            for m in re.finditer(r"\{exercise\}\s*\n:label: (\S+)(.*?)\n(:{3,}|`{3,})\s*\n", text, re.S):
                out.append((m.group(1), m.group(2)))
    return out


def test_every_exercise_has_a_checker_that_its_text_names():
    blocks = exercise_blocks()
    assert len(blocks) >= 16
    for label, text in blocks:
        assert label in ex.CHECKERS, f"{label} has no checker in sparselib.exercises.CHECKERS"
        assert f"exercises.{ex.CHECKERS[label].__name__}" in text, f"{label}'s text does not name its checker"


def test_check_yourself_lines_and_the_registry_name_the_same_checkers():
    """Each exercise's "**Check yourself:**" line calls the checker registered under its label, and
    every registered label is an exercise of some chapter (no checker without an exercise)."""
    named = {}
    for label, text in exercise_blocks():
        lines = [line for line in text.splitlines() if line.startswith("**Check yourself:**")]
        assert len(lines) == 1, f"{label}: expected one '**Check yourself:**' line, found {len(lines)}"
        calls = re.findall(r"sparselib\.exercises\.(\w+)\(", lines[0])
        assert len(calls) == 1, f"{label}: the Check yourself line should call one checker, found {calls}"
        named[label] = calls[0]
    assert set(named) == set(ex.CHECKERS), (f"exercises without a checker: {set(named) - set(ex.CHECKERS)}; "
                                            f"checkers without an exercise: {set(ex.CHECKERS) - set(named)}")
    for label, name in named.items():
        assert getattr(ex, name) is ex.CHECKERS[label], f"{label}: its text calls {name}"
        assert getattr(sparselib.course.exercises, name) is ex.CHECKERS[label]


def test_every_exercise_has_a_solution():
    text = "".join(p.read_text() for p in (ROOT / "chapters").glob("*.ipynb"))
    for label, _ in exercise_blocks():
        assert f"{{solution}} {label}" in text


def test_each_checker_lives_in_its_chapters_module():
    seen = set()
    for number in range(100):
        for label, _ in exercise_blocks(f"{number:02d}-*"):
            module = ex.CHECKERS[label].__module__
            assert module.startswith(f"sparselib.course.exercises.ch{number:02d}_"), (label, module)
            seen.add(label)
    assert seen == set(ex.CHECKERS)


def test_feedback_reads_well():
    fb = ex.check_meta_byte((1, 3), (0, 1))
    assert isinstance(fb, Feedback) and fb.exercise == "ex-stc-meta-byte" and not fb
    assert str(fb).startswith("✗ not yet — ex-stc-meta-byte") and "low nibble" in fb._repr_markdown_()
    assert str(ex.check_meta_byte((0, 1), (1, 3))).startswith("✓ passed — ex-stc-meta-byte")


def test_a_checker_is_called_without_its_feedback_and_returns_it(monkeypatch):
    monkeypatch.setattr(ex.registry, "CHECKERS", {})

    @checker("ex-test-double")
    def check_double(fb, fn, x: float = 2.0):
        """Your ``fn(x)`` -> 2x."""
        if fn(x) != 2 * x:
            return fb.fail("not 2x")
        fb.note("right")

    assert ex.registry.CHECKERS == {"ex-test-double": check_double}
    assert list(inspect.signature(check_double).parameters) == ["fn", "x"]
    assert check_double.__name__ == "check_double" and check_double.label == "ex-test-double"
    good, bad = check_double(lambda x: x + x), check_double(lambda x: x, x=3.0)
    assert good and good.notes == ["right"] and good.exercise == "ex-test-double"
    assert not bad and bad.notes == ["not 2x"]
    with pytest.raises(ValueError, match="already has a checker, check_double"):
        checker("ex-test-double")(lambda fb: None)
