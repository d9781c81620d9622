"""Self-grading quizzes: one JSON file per chapter in ``sparselib/quizzes/`` (jupyterquiz format).

They ship with the package so a chapter opened alone on Colab finds them too. ``show_quiz`` renders
them with jupyterquiz, which works in a live notebook and in the static HTML book (JavaScript only).
"""
from __future__ import annotations

import json
from importlib import resources

QUIZ_DIR = resources.files("sparselib") / "quizzes"
_TYPES = {"multiple_choice", "many_choice", "numeric"}


def quiz_names() -> list[str]:
    return sorted(p.name.removesuffix(".json") for p in QUIZ_DIR.iterdir() if p.name.endswith(".json"))


def load_quiz(name: str) -> list[dict]:
    """The questions of quiz ``name`` (a file stem such as ``"01-landscape"``), validated."""
    path = QUIZ_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no quiz named {name!r}; available: {', '.join(quiz_names())}")
    questions = json.loads(path.read_text(encoding="utf-8"))
    for i, q in enumerate(questions):
        where = f"quiz {name!r} question {i + 1}"
        if q.get("type") not in _TYPES:
            raise ValueError(f"{where}: type must be one of {sorted(_TYPES)}")
        if not q.get("question") or not q.get("answers"):
            raise ValueError(f"{where}: needs 'question' and 'answers'")
        correct = [a for a in q["answers"] if a.get("correct")]
        if not correct:
            raise ValueError(f"{where}: no answer is marked correct")
        if q["type"] == "multiple_choice" and len(correct) != 1:
            raise ValueError(f"{where}: multiple_choice needs exactly one correct answer")
        if q["type"] != "numeric" and not all("feedback" in a for a in q["answers"]):
            raise ValueError(f"{where}: every answer needs feedback that says why")
    return questions


def show_quiz(name: str) -> None:
    """Render quiz ``name`` in the notebook (and in the built HTML book)."""
    from jupyterquiz import display_quiz

    display_quiz(load_quiz(name), shuffle_answers=False)
