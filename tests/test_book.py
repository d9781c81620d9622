"""The book's own rules: stripped notebooks, one repository URL, a quiz per chapter, a complete TOC."""
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

import sparselib

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb"))  # chapters and pages (the instructor guide)
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]-*.ipynb"))


def committed(path: Path) -> str:
    """The notebook as committed (the index), so CI's executed copies do not count."""
    rel = path.relative_to(ROOT).as_posix()
    try:
        return subprocess.run(["git", "show", f":{rel}"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout
    except (subprocess.CalledProcessError, FileNotFoundError):
        return path.read_text()


def test_there_are_chapters():
    assert len(CHAPTERS) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs(path):
    nb = json.loads(committed(path))
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
             and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; run jupyter nbconvert --clear-output"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_colab_setup_cell_uses_the_configured_repository(path):
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    nb = json.loads(path.read_text())
    setup = "".join(nb["cells"][1]["source"])
    assert 'if "google.colab" in sys.modules' in setup, f"{path.name}: cell 2 must be the Colab set-up cell"
    assert f'REPO = "{url}"' in setup, f"{path.name}: the set-up cell must install from {url}"
    assert not re.search(r"torch[=<>]", setup), "never re-pin torch on Colab"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_each_chapter_has_a_quiz_of_at_least_three_questions(path):
    assert path.stem in sparselib.quiz.quiz_names(), f"add sparselib/quizzes/{path.stem}.json"
    assert len(sparselib.load_quiz(path.stem)) >= 3
    code = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])
    assert f'show_quiz("{path.stem}")' in code


def test_every_chapter_is_in_the_toc():
    toc = (ROOT / "_toc.yml").read_text()
    for path in NOTEBOOKS:
        assert f"chapters/{path.stem}" in toc, f"{path.name} is missing from _toc.yml"


def test_requirements_pin_the_book_and_torch():
    req = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^jupyter-book[^\n]*<2", req, re.M)
    assert re.search(r"^torch==2\.13\.0", req, re.M)
