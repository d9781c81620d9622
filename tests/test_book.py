"""The book's own rules: stripped notebooks, one repository URL, a quiz per chapter, a complete TOC."""
import json
import math
import re
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

import sparselib
from conftest import load_benchmark

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
    req = (ROOT / "requirements.txt").read_text() + (ROOT / "requirements-tests.txt").read_text()  # -r'd
    assert "-r requirements-tests.txt" in req
    assert re.search(r"^jupyter-book[^\n]*<2", req, re.M)
    assert re.search(r"^torch==2\.13\.0", req, re.M)


# ---------------------------------------------------------------------------------------------------
# What a reader sees: text about the subject, not about how the book was made; tables and conclusions
# that render; paper numbers with their source.

PAGES_MD = [ROOT / "intro.md", ROOT / "references.md"]
QUIZZES = sorted((ROOT / "sparselib" / "quizzes").glob("*.json"))

# Phrases about the making of the book (acceptance runs, budgets, notes files, fallbacks for results
# not yet recorded, the machine it was written on). A reader needs the protocol, the machine and the
# date of a measurement, not these.
PROCESS_PHRASES = [
    r"acceptance run",
    r"time budget",
    r"reference[- ]rules",
    r"no gpu measurements? (has|have) been recorded",
    r"not recorded yet",
    r"sweep\.py resumes",
    r"rather than made up",
    r"shared \d+-core",
    r"quoted secondhand",
    r"secondary source",
    r"\(secondary\)",
    r"for this course yet",
]
PROCESS_RE = re.compile("|".join(PROCESS_PHRASES), re.I)


def _cells(path: Path):
    """(kind, index, text) of every cell of a notebook."""
    nb = json.loads(path.read_text())
    return [(c["cell_type"], i, "".join(c["source"])) for i, c in enumerate(nb["cells"])]


def _reader_texts():
    """Every text a reader can see: notebook cells (code too: it prints), markdown pages, quizzes."""
    for path in NOTEBOOKS:
        for kind, i, text in _cells(path):
            yield f"{path.name} cell {i} ({kind})", text
    for path in PAGES_MD:
        yield path.name, path.read_text()
    for path in QUIZZES:
        yield path.name, path.read_text()


def test_process_phrase_pattern_catches_the_phrases_it_lists():
    for text in ("The acceptance run of this chapter", "the chapter's time budget", "see the reference-rules notes",
                 "No GPU measurements have been recorded for this course yet", "not recorded yet (benchmarks/sweep.py "
                 "resumes where it stopped)", "on a shared 2-core machine", "quoted secondhand"):
        assert PROCESS_RE.search(text), text
    assert not PROCESS_RE.search("recorded on 2026-11-29 on an NVIDIA H200 with torch 2.11")


def test_no_text_about_how_the_book_was_made():
    hits = [f"{where}: {m.group(0)!r}" for where, text in _reader_texts() for m in PROCESS_RE.finditer(text)]
    assert not hits, "rewrite these for a reader (protocol, machine and date, once per chapter):\n" + "\n".join(hits)


# A quoted paper number: a paragraph of a markdown cell (or page) that names a published model (LLaMA,
# Llama-2, OPT-<size>, BLOOM, or a parameter count such as 7B or 70B) and holds a decimal number (a
# perplexity, a speedup) or a percentage that is not a multiple of 5 (sparsity levels are). The
# convention: such a paragraph carries a {cite}`key` role, and every key is in references.bib. Code
# blocks and display math are not prose and are skipped. Quizzes cannot cite, so they quote no
# paper numbers.
PAPER_MODEL = re.compile(r"\b(?i:LLaMA|Llama-2|OPT-\d|BLOOM)|\b\d+B\b(?!-sized)")
NUMBER = re.compile(r"\b\d+\.\d+\b|\b\d*[1-46-9]\s?%")
CITE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]+)`")
NOT_PROSE = re.compile(r"```.*?```|~~~.*?~~~|\$\$.*?\$\$|\{glue(?::\w+)?\}`[^`]*`", re.S)


def _paragraphs(text: str):
    return [p for p in re.split(r"\n\s*\n", NOT_PROSE.sub("", text)) if p.strip()]


def _uncited_paper_numbers(text: str) -> list[str]:
    return [p.strip()[:120] for p in _paragraphs(text)
            if PAPER_MODEL.search(p) and NUMBER.search(CITE.sub("", p)) and not CITE.search(p)]


def test_citation_rule_tells_cited_from_uncited_paper_numbers():
    assert _uncited_paper_numbers("LLaMA-2-7B goes from 5.12 to 6.42 at 50%.")
    assert not _uncited_paper_numbers("LLaMA-2-7B goes from 5.12 to 6.42 {cite}`sun2024wanda`.")
    assert not _uncited_paper_numbers("SmolLM2 reaches {glue:text}`w50:.1f` on Brown.")
    assert _uncited_paper_numbers("First paragraph {cite}`x`.\n\nOPT-125M: 27.66.")
    assert not _uncited_paper_numbers("OPT-125M pruned to 50% on WikiText-2.")
    assert not _uncited_paper_numbers("A 7B-sized model holds 6.7 GB in fp16.")
    assert not _uncited_paper_numbers("```python\nLLaMA = 5.12\n```")


def test_every_quoted_paper_number_carries_a_citation_key():
    bib = (ROOT / "references.bib").read_text()
    keys = set(re.findall(r"^@\w+\{([^,]+),", bib, re.M))
    missing, unknown = [], []
    for path in NOTEBOOKS:
        for kind, i, text in _cells(path):
            if kind != "markdown":
                continue
            missing += [f"{path.name} cell {i}: {p}" for p in _uncited_paper_numbers(text)]
            unknown += [f"{path.name} cell {i}: {k.strip()}" for m in CITE.finditer(text)
                        for k in m.group(1).split(",") if k.strip() not in keys]
    for path in QUIZZES:
        for q in json.loads(path.read_text()):
            texts = [q["question"]] + [a[f] for a in q.get("answers", []) for f in ("answer", "feedback") if f in a]
            missing += [f"{path.name}: {t[:120]}" for t in texts
                        if PAPER_MODEL.search(t) and NUMBER.search(t)]
    assert not missing, "paper numbers without a {cite}`key` in the same paragraph:\n" + "\n".join(missing)
    assert not unknown, "citation keys missing from references.bib:\n" + "\n".join(unknown)


def _last_expression_call(source: str) -> str | None:
    """The name of the function a code cell's last expression calls (what the cell displays), if any."""
    import ast

    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("!", "%"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return None
    if not tree.body or not isinstance(tree.body[-1], ast.Expr) or not isinstance(tree.body[-1].value, ast.Call):
        return None
    func = tree.body[-1].value.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapters_print_tables_as_html_and_write_conclusions_in_markdown(path):
    """myst-nb renders a code cell's markdown output as CommonMark: no tables, no math. A table is
    printed with sparselib.course.tables.html_table; a conclusion is a markdown cell with glued values."""
    bad = []
    for kind, i, text in _cells(path):
        if kind != "code":
            continue
        if re.search(r"\|\s*:?-{3,}", text):
            bad.append(f"cell {i}: builds a markdown table (use html_table)")
        if _last_expression_call(text) == "Markdown" or re.search(r"display\(\s*(IPython\.display\.)?Markdown\(", text):
            bad.append(f"cell {i}: displays Markdown(...) (write a markdown cell with {{glue:text}} values)")
    assert not bad, f"{path.name}:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_glued_name_is_glued_in_the_same_chapter(path):
    cells = _cells(path)
    code = "\n".join(t for k, _, t in cells if k == "code")
    glued = set(re.findall(r"""glue\(\s*f?["']([\w{}\[\]\-:.]+)["']""", code))
    patterns = [re.compile("^" + re.sub(r"\\\{[^}]*\\\}", r"[\\w.:-]+", re.escape(g)) + "$") for g in glued]
    used = {m.group(1).split(":")[0] for k, _, t in cells if k == "markdown"
            for m in re.finditer(r"\{glue(?::\w+)?\}`([^`]+)`", t)}
    unglued = sorted(u for u in used if not any(p.match(u) for p in patterns))
    assert not unglued, f"{path.name}: markdown uses glue names no code cell glues: {unglued}"


def test_toc_readme_and_titles_agree_on_the_chapter_order():
    """The TOC lists the numbered chapters in file order, each title carries its file's number, and the
    README's chapter table has one row per chapter with that number (the instructor guide reads the files)."""
    toc = re.findall(r"chapters/(\d\d)-[\w-]+", (ROOT / "_toc.yml").read_text())
    numbers = [p.stem[:2] for p in CHAPTERS]
    assert toc == numbers, f"_toc.yml lists chapters in the order {toc}, the files are {numbers}"
    for path in CHAPTERS:
        first = json.loads(path.read_text())["cells"][0]["source"]
        first = first[0] if isinstance(first, list) else first
        assert first.startswith(f"# {int(path.stem[:2])}. "), f"{path.name}: title should start '# {int(path.stem[:2])}. '"
    readme = re.findall(r"^\| (\d+) \| ", (ROOT / "README.md").read_text(), flags=re.M)
    assert readme == [str(int(n)) for n in numbers], f"README's chapter table rows {readme} != {numbers}"


# ---------------------------------------------------------------------------------------------------
# Chapter 8 reasons from one recorded GPU run. Its measurements reach the prose only as glued values,
# the roofline figures it words come from sparselib.course.roofline on the recorded file, and its quiz
# (which cannot glue) quotes figures that the same computation reproduces.

CH8 = ROOT / "chapters" / "08-sparse-tensor-cores.ipynb"
# a measured quantity written out: a decimal speedup (1.46×) or a number with a unit of time, rate,
# size or share (0.171 ms, 4.1 TB/s, 265 MB, 38%)
MEASUREMENT = re.compile(r"(?<![\w.:])\d+(?:\.\d+)?\s?(?:%|ms\b|µs\b|TB/s|TFLOP/s|GB\b|MB\b|MiB\b)"
                         r"|(?<![\w.])\d+\.\d+\s?×")
NO_TYPED_MEASUREMENTS = [CH8]


def _prose(text: str) -> str:
    """Markdown without code, math and glued values: what is typed by hand."""
    text = re.sub(r"`{3,}\w*\n.*?\n`{3,}", "", text, flags=re.S)      # fenced code (the exercise solutions)
    text = NOT_PROSE.sub("", text)
    text = re.sub(r"\$[^$]*\$", "", text)                             # inline math
    return re.sub(r"`[^`]*`", "", text)                               # inline code


def test_measurement_pattern_tells_typed_figures_from_structure():
    for typed in ("ran at 1.46× dense", "took 0.171 ms", "moved 4.1 TB/s", "265 MB", "at 38% of"):
        assert MEASUREMENT.search(_prose(typed)), typed
    for fine in ("at most 2× for the multiply", "8 × 2048 tokens", "dense ms / 2:4 ms", "16 tokens", "sm_90",
                 "ran at {glue:text}`x:.2f`×", "$4.5/8$ of that", "`0.5`"):
        assert not MEASUREMENT.search(_prose(fine)), fine


@pytest.mark.parametrize("path", NO_TYPED_MEASUREMENTS, ids=lambda p: p.name)
def test_measurements_reach_the_prose_only_through_glue(path):
    typed = [f"cell {i}: {m.group(0)!r}" for kind, i, text in _cells(path) if kind == "markdown"
             for m in MEASUREMENT.finditer(_prose(text))]
    assert not typed, f"{path.name}: glue these from the data instead of typing them:\n" + "\n".join(typed)


def _h200_points():
    from sparselib.course import roofline
    from sparselib.course.results import gpu_runs

    run = next(r for r in gpu_runs() if r["name"] == "semi_structured_gpu_2026-11-29_h200")
    return run, roofline.recorded_points(run)


def test_chapter8_words_the_roofline_figures_it_glues():
    used = {m.group(1).split(":")[0] for kind, _, t in _cells(CH8) if kind == "markdown"
            for m in re.finditer(r"\{glue(?::\w+)?\}`([^`]+)`", t)}
    roofline_names = {"h200_bw", "h200_dense", "h200_sparse", "ridge_dense", "ridge_24", "few_dense_tb_lo",
                      "few_dense_bw_hi", "few_24_tb_hi", "few_24_bw_hi", "big16_dense_tb", "big16_24_tb",
                      "big16_bw_ratio", "big16_bytes_ratio", "big16_speedup", "many_dense_roof_hi",
                      "many_24_roof_hi", "many_ratio_lo", "tiny_floor_ratio", "big_share_lo", "big_share_hi",
                      "prof_est_speedup"}
    assert roofline_names <= used, f"chapter 8 no longer words {sorted(roofline_names - used)}"


def test_chapter8_roofline_claims_hold_in_the_recorded_data():
    """What the chapter says in words about the points, checked on the file it loads."""
    from sparselib.course import roofline

    run, points = _h200_points()
    graph = [p for p in points if p["path"] == "cuda_graph"]
    large = [p for p in graph if p["out_features"] * p["in_features"] >= 4096 * 4096]
    for d in (p for p in large if p["kind"] == "dense"):
        s = roofline.point(points, d["out_features"], d["in_features"], d["tokens"], "cuda_graph", "2:4")
        if d["tokens"] == 16:       # few tokens: both held by memory, 2:4 streams far below dense
            assert d["bound"] == s["bound"] == "memory"
            assert d["of_bandwidth"] > 0.65 and s["tb_s"] < 0.4 * d["tb_s"]
            assert s["tb_s"] / d["tb_s"] < s["bytes"] / d["bytes"]    # so 2:4 is slower there
        if d["tokens"] >= 2048:     # many tokens: both held by arithmetic, 2:4 further from its roof
            assert d["bound"] == s["bound"] == "compute"
            assert s["of_roof"] < d["of_roof"]
    big = [r["speedup"] for r in run["linear"] if r["path"] == "cuda_graph" and r["tokens"] >= 2048
           and r["out_features"] * r["in_features"] >= 11008 * 4096]
    assert (round(roofline.gain_share(min(big)), 2), round(roofline.gain_share(max(big)), 2)) == (0.31, 0.46)
    smol = {(p["out_features"], p["in_features"]) for p in graph if max(p["out_features"], p["in_features"]) <= 1536}
    assert smol == {(576, 576)}     # the only SmolLM2 shape replayed from a graph (chapters 8 and 9)
    assert max(r["speedup"] for r in run["end_to_end"]) < 1          # no whole model got faster


def test_chapter8_quiz_quotes_the_recorded_figures():
    """Quiz 8's roofline question quotes figures (a quiz cannot glue): each is what the run gives."""
    from sparselib.course import roofline

    _, points = _h200_points()
    d, s = (roofline.point(points, 28672, 8192, 16, "cuda_graph", k) for k in ("dense", "2:4"))
    h = roofline.H200
    quiz = json.dumps(sparselib.load_quiz("08-sparse-tensor-cores"), ensure_ascii=False)
    expected = [f"{s['ms']:.3f} ms with 2:4 weights and {d['ms']:.3f} ms dense",
                f"about {s['bytes'] / 1e6:.0f} MB against {d['bytes'] / 1e6:.0f} MB",
                f"dense moved about {d['tb_s']:.1f} TB/s, near the H200's {h.bandwidth / 1e12:.1f} TB/s",
                f"moved only about {s['tb_s']:.2f} TB/s", f"about {d['bytes'] / s['bytes']:.2f}×",
                f"the measured {d['ms'] / s['ms']:.2f}×",
                f"about {d['intensity']:.0f} FLOPs per byte dense and {s['intensity']:.0f} with 2:4",
                f"about {h.ridge['dense']:.0f} and {h.ridge['2:4']:.0f} FLOPs per byte"]
    missing = [e for e in expected if e not in quiz]
    assert not missing, f"quiz 8 no longer quotes the recorded figures: {missing}"
    assert s["tb_s"] / d["tb_s"] < 0.40 and "under 40 % of dense's rate" in quiz


def test_chapter8_states_the_cusparselt_default_the_code_has():
    """The chapter says sparselib's cuSPARSELt kernel writes the output non-fused by default, because the
    fused layout is the one the recorded run could not finish; the code must agree."""
    import inspect

    from sparselib.semistructured import CuSparseLtKernel24

    text = " ".join(t for kind, _, t in _cells(CH8) if kind == "markdown")
    assert re.search(r"\*\*non-fused\*\*\s+mode, its default", text)
    default = inspect.signature(CuSparseLtKernel24.__init__).parameters["fused_transpose"].default
    assert default is False, "chapter 8 says the non-fused cuSPARSELt layout is the default"
    run, _ = _h200_points()
    assert any("_FUSE_TRANSPOSE = True" in f["what"] for f in run["data"]["failures"])


# Worded figures tied to their data. These sentences once carried typed numbers that the data did not
# support; each now uses a glued value computed in its chapter, and the typed wording stays out.

def _chapter(stem: str) -> tuple[str, str]:
    """(all markdown, all code) of chapter ``stem``."""
    cells = _cells(ROOT / "chapters" / f"{stem}.ipynb")
    return ("\n".join(t for k, _, t in cells if k == "markdown"), "\n".join(t for k, _, t in cells if k == "code"))


TIED = [  # chapter, glued name the sentence uses, the typed wording it replaced
    ("02-magnitude", "mlp_over_attn", r"\d\.\d\s*× as many weights as attention"),
    ("02-magnitude", "first_big", r"from layer \d+ on"),
    ("05-sparsegpt", "linear_max", r"close to 50\s?% but not exactly"),
    ("05-sparsegpt", "row_max", r"rows? can lose anything from \d"),
]


@pytest.mark.parametrize("stem, name, typed", TIED, ids=[f"{s}:{n}" for s, n, _ in TIED])
def test_worded_figures_are_glued_from_the_chapters_data(stem, name, typed):
    markdown, code = _chapter(stem)
    assert re.search(r"\{glue:text\}`" + name + r"[:`]", markdown), f"{stem}: the text should use glue {name!r}"
    assert re.search(r"glue\(\s*[\"']" + name + r"[\"']", code), f"{stem}: no code cell glues {name!r}"
    assert not re.search(typed, markdown), f"{stem}: a typed figure is back: {typed!r}"


def test_pruning_chapters_show_the_text_of_chapter_0s_prompt():
    """Chapter 0 generates with sparselib.generate_text; each pruning chapter shows the same call on its
    pruned model beside the dense model's."""
    for stem in ("00-how-to-use", "02-magnitude", "03-wanda", "05-sparsegpt", "06-slicegpt"):
        _, code = _chapter(stem)
        calls = re.findall(r"sparselib\.generate_text\(", code)
        assert len(calls) >= (1 if stem.startswith("00") else 2), f"{stem}: {len(calls)} generate_text calls"
        assert ".generate(" not in code, f"{stem}: generate through sparselib.generate_text (one call for all)"


def test_quizzes_cite_figures_their_chapter_has():
    """A quiz that points at "Figure N.k" points at a caption of its own chapter."""
    for path in QUIZZES:
        markdown, _ = _chapter(path.stem)
        for number in set(re.findall(r"Figure (\d+(?:\.\d+)?)", path.read_text())):
            assert re.search(rf"\*Figure {re.escape(number)}[.:]", markdown), f"{path.name} cites Figure {number}"


def test_sparsegpt_prunes_exactly_half_of_every_smollm2_linear():
    """Chapter 5 says every linear comes out exactly 50 % sparse: each block of 128 columns drops exactly
    int(rows·128·s) weights, and SmolLM2's shapes make every block's count even."""
    config = sparselib.models.load_config(sparselib.OFFLINE_MODEL)
    if config is None:
        pytest.skip("the offline model has not been converted yet (sparselib.load_model() does it once)")
    d, f = config.hidden_size, config.intermediate_size
    d_kv = config.num_key_value_heads * (d // config.num_attention_heads)
    g = torch.Generator().manual_seed(0)
    for rows, cols in {(d, d), (d_kv, d), (f, d), (d, f)}:
        X = torch.randn(cols + 64, cols, generator=g)
        W = torch.randn(rows, cols, generator=g)
        _, keep = sparselib.sparsegpt_prune(W, 2 * X.T @ X, sparsity=0.5)
        per_block = [int((~keep[:, c:c + 128]).sum()) for c in range(0, cols, 128)]
        assert per_block == [int(rows * min(128, cols - c) * 0.5) for c in range(0, cols, 128)]
        assert sum(per_block) == W.numel() // 2
        assert (~keep).float().mean(1).min() < 0.5 < (~keep).float().mean(1).max()   # rows vary


# Comparisons between methods rest on the spread over calibration seeds. A chapter that compares two
# methods or settings words the comparison with sparselib.course.results.verdict_words (decided by
# compare: the gap must exceed the two error bars added together), in code cells tagged "verdicts"
# that read only recorded result files. The tests below run those cells against the recorded files,
# check every worded comparison against the spread it was given, and look for comparisons typed by
# hand in the prose.
COMPARING = ["02-magnitude", "03-wanda", "05-sparsegpt", "06-slicegpt", "07-beyond-50", "10-comparison"]
NOT_CHECKED = {  # chapters 2-10 whose comparisons these tests do not cover, and why
    "07-beyond-50": "its OWL-vs-uniform verdicts over seeds are checked above; its other words (the table's one "
                    "draw, the λ × M sweep, the recovery curves) are checked against its result files by the "
                    "chapter 7 tests below",
    "09-smaller": "compares quantization recipes (GPTQ, RTN, joint SparseGPT+GPTQ), which the seed study does not "
                  "cover",
}
SEED_STEMS = [p.stem for p in CHAPTERS if 2 <= int(p.stem[:2]) <= 10]
VERDICT_WORD = re.compile(r"\b(ahead|behind|better|worse|beats?|outperforms?|within noise)\b", re.I)
METHOD = re.compile(r"\b(magnitude|Wanda|SparseGPT|SliceGPT|OWL|uniform|2:4|4:8|unstructured|per[- ]row|"
                    r"per[- ]matrix)\b", re.I)
COMPARATIVE = re.compile(r"\b(better|worse|ahead|behind|beats?|outperforms?|wins?|leads?|costs? (?:more|less)|"
                         r"helps?)\b|[≤≥≪≫]", re.I)


def _seed(method, sparsity, **options):
    return sparselib.seed_point(method, sparsity, **options)["perplexity"]


def _beyond(a, b, verdict):
    return sparselib.compare(a, b)["verdict"] == verdict


TYPED_CLAIMS = [  # (chapter, the typed words, a check on the recorded data that backs them, or why none is needed)
    ("04-visualizer", r"Wanda's is never above magnitude's, and at 50 % no mask of a row",
     "an exact property of the toy layer (no calibration draw), asserted in the chapter's code"),
    ("10-comparison", r"2:4 costs\s+more than unstructured",
     lambda: all(_beyond(_seed(m, "2:4"), _seed(m, 0.5), "higher") for m in ("wanda", "sparsegpt"))),
]


def _sentences(markdown: str):
    """The sentences of a chapter's prose, glued values, code and math left out; a sentence about a
    published model (a paper's result, cited) is not one of the course's comparisons and is skipped."""
    for paragraph in _prose(markdown).split("\n\n"):
        for sentence in re.split(r"(?<=[.;!?])\s+(?=[A-Z*])", " ".join(paragraph.split())):
            if not PAPER_MODEL.search(sentence):
                yield sentence


def _verdict_cells(stem):
    return [text for kind, _, text, tags in _tagged_cells(ROOT / "chapters" / f"{stem}.ipynb")
            if kind == "code" and "verdicts" in tags]


def _tagged_cells(path: Path):
    nb = json.loads(path.read_text())
    return [(c["cell_type"], i, "".join(c["source"]), c.get("metadata", {}).get("tags", []))
            for i, c in enumerate(nb["cells"])]


def _run_verdict_cells(stem, monkeypatch):
    """Run the chapter's "verdicts" cells on the recorded files: (glued {name: text}, [(a, b, words)])."""
    myst_nb = pytest.importorskip("myst_nb")
    from sparselib.course import results

    glued, worded = {}, []
    real = results.verdict_words

    def record_words(a, b, *args, **kwargs):
        words = real(a, b, *args, **kwargs)
        worded.append((a, b, words))
        return words

    def record_glue(name, value, display=True):
        glued[name] = getattr(value, "data", value)

    monkeypatch.setattr(results, "verdict_words", record_words)
    monkeypatch.setattr(myst_nb, "glue", record_glue)
    namespace = {}
    for source in _verdict_cells(stem):
        exec(compile(source, f"{stem} verdicts cell", "exec"), namespace)
    return glued, worded


@pytest.mark.parametrize("stem", COMPARING)
def test_worded_comparisons_follow_the_recorded_spread(stem, monkeypatch):
    from sparselib.course.results import largest_relative_std

    assert _verdict_cells(stem), f"{stem} compares methods: word them in a code cell tagged 'verdicts'"
    glued, worded = _run_verdict_cells(stem, monkeypatch)
    assert worded, f"{stem}: its verdicts cells word no comparison through verdict_words"
    minimum = load_benchmark("seed_spread").MINIMUM_SEEDS
    exact = {p["perplexity"] for k, p in sparselib.load_result("sweep_smollm2_brown")["points"].items()
             if k.startswith("magnitude|")}
    allowance = largest_relative_std()
    for a, b, words in worded:
        # the words say what compare says: no "ahead" where the bars overlap
        within = sparselib.compare(a, b)["verdict"] == "within noise"
        assert ("within noise" in words) == within and (("ahead" in words) <= (not within)), words
        for s in (a, b):  # each bar is a recorded one: over the seeds, exact (no calibration), or the allowance
            if s.get("borrowed"):
                assert s["std"] >= allowance * abs(s["mean"]) * (1 - 1e-9), f"{stem}: a borrowed bar narrower " \
                    f"than the widest the seed study measured: {words}"
            elif s["std"] == 0:
                assert any(abs(s["mean"] - v) <= 2e-3 * v for v in exact), f"{stem}: a bar of zero on a value " \
                    f"that is not a magnitude point (only a method without calibration is exact): {words}"
            else:
                assert s["n"] >= minimum, f"{stem}: a bar from {s['n']} seeds (at least {minimum}): {words}"
    phrases = {words for _, _, words in worded}
    markdown, _ = _chapter(stem)
    for name, value in glued.items():
        if isinstance(value, str) and VERDICT_WORD.search(value):
            assert value in phrases, f"{stem}: glue {name!r} words a comparison outside verdict_words: {value!r}"
            assert re.search(r"\{glue:md\}`" + name + "`", markdown), f"{stem}: the verdict {name!r} is not in the text"


@pytest.mark.parametrize("stem", SEED_STEMS)
def test_no_comparison_between_methods_is_typed_by_hand(stem):
    if stem in NOT_CHECKED:
        pytest.skip(NOT_CHECKED[stem])
    markdown, code = _chapter(stem)
    claims = [(pattern, check) for s, pattern, check in TYPED_CLAIMS if s == stem]
    typed = [sentence for sentence in _sentences(markdown)
             if COMPARATIVE.search(sentence) and len({m.lower() for m in METHOD.findall(sentence)}) >= 2
             and not any(re.search(pattern, sentence) for pattern, _ in claims)]
    assert not typed, f"{stem}: comparisons typed by hand; word them with verdict_words from the recorded " \
                      f"spread (or add a checked entry to TYPED_CLAIMS):\n" + "\n".join(typed)
    made = [s for s in _text_literals(stem) if VERDICT_WORD.search(s) and len(set(METHOD.findall(s))) >= 2]
    assert not made, f"{stem}: code writes its own verdict between methods (use verdict_words): {made}"
    for pattern, check in claims:
        assert re.search(pattern, " ".join(markdown.split())), f"{stem}: TYPED_CLAIMS entry {pattern!r} is stale"
        if callable(check):
            assert check(), f"{stem}: the recorded spread does not back the typed claim {pattern!r}"


def _text_literals(stem):
    """The strings a chapter's code can show a reader (assertion messages left out)."""
    import ast

    out = []
    for kind, _, text in _cells(ROOT / "chapters" / f"{stem}.ipynb"):
        if kind != "code":
            continue
        tree = ast.parse(text)
        messages = {id(n.msg) for n in ast.walk(tree) if isinstance(n, ast.Assert) and n.msg is not None}
        out += [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                and id(n) not in messages]
    return out


# Chapter 7's worded claims, recomputed from the result files the chapter loads. Its numbers are glued;
# the words around them ("lower", "about the same", "confounded with the schedule") are checked here.

CH7 = ROOT / "chapters" / "07-beyond-50.ipynb"


def _ch7_markdown() -> str:
    return "\n\n".join(t for k, _, t in _cells(CH7) if k == "markdown")


def _log_share(before, after, floor):
    return (math.log(before) - math.log(after)) / (math.log(before) - math.log(floor))


def test_chapter7_owl_rules_are_described_as_the_data_show():
    from sparselib.owl import owl_sparsities
    text = _ch7_markdown()
    rec = sparselib.load_result("recovery_smollm2")
    D, sizes, lam = rec["outlier_ratios"], rec["layer_sizes"], rec["owl"]["lam"]
    paper = owl_sparsities(D, 0.7, lam=lam, weights=sizes)
    code = owl_sparsities(D, 0.7, lam=lam, weights=sizes, rule="code")
    # the two rules do not share a spread: sparselib's reading spans between λ and 2λ, the code exactly 2λ
    assert not re.search(r"spread is the same", text)
    assert max(code) - min(code) > max(paper) - min(paper) + 0.01
    assert "sparselib's reading of the paper" in text and 'rule="code"' in text
    # "the most outlier-heavy layer gets S − λ" only as the case it is (max z ≥ |min z|)
    assert "the most outlier-heavy layer gets $S-\\lambda$, and" not in text
    assert re.search(r"\\max_k z_k \\ge \|\\min_k z_k\|", text)
    # the settings: the authors' LLaMA-7B examples, and their N:M example's other values, cited
    assert re.search(r"\$M = 5\$ and \$\\lambda = 0\.08\$ are the values of the authors' LLaMA-7B", text)
    assert "--Hyper_m 6\n--Lamda 2" in text or "--Hyper_m 6 --Lamda 2" in text.replace("\n", " ")
    assert "{cite}`yin2025owlcode`" in text


def test_chapter7_recovery_words_hold_on_the_recorded_curves():
    text = _ch7_markdown()
    rec = sparselib.load_result("recovery_smollm2")
    pts, dense = rec["points"], rec["dense_curve"]["perplexity"]
    curve = {k: [c["perplexity"] for c in p["curve"]] for k, p in pts.items() if "curve" in p}
    control, w24, l24 = curve["control|dense|full"], curve["recovery|wanda|2:4|full"], curve["recovery|wanda|2:4|lora"]
    s24 = curve["recovery|sparsegpt|2:4|full"]
    assert all(len(c) == len(rec["budget"]["eval_steps"]) for c in curve.values()), "a curve is partial: rerun"
    # "Training alone moves the dense model too: from … to … (… lower)"
    assert "Training alone moves the dense model too" in text and control[-1] < control[0]
    # "SparseGPT 2:4 starts lower and ends … still below recovered Wanda 2:4"
    assert s24[0] < w24[0] and s24[-1] < w24[-1]
    # masked LoRA vs full fine-tuning: "about the same share" (glued) and "one run each … not a difference"
    assert "one run each" in text
    diff = _log_share(l24[0], l24[-1], dense) - _log_share(w24[0], w24[-1], dense)
    assert abs(diff) < 0.05, "the text calls masked LoRA and full fine-tuning about the same: reread it"
    assert not re.search(r"closes more|closes less", text)
    # the early steps win more per token, and the text says the schedule is confounded with it
    steps, lrs = rec["budget"]["eval_steps"], pts["recovery|wanda|2:4|full"]["lrs"]
    toks = [s * rec["budget"]["batch_size"] * rec["budget"]["train_seqlen"] for s in steps]
    per_tok = lambda c, i, j: (math.log(c[i]) - math.log(c[j])) / (toks[j] - toks[i])  # noqa: E731
    assert per_tok(w24, 0, 1) > per_tok(w24, -2, -1)
    assert sum(lrs[:steps[1]]) / steps[1] > sum(lrs[steps[-2]:]) / (steps[-1] - steps[-2])
    assert re.search(r"confounded\s+with the schedule", text)
    assert per_tok(control, 0, 1) > per_tok(control, -2, -1)   # "The control falls in the same pattern"
    # memory: the measured peaks do not show the saving that tensor accounting predicts
    mem = sparselib.load_result("recovery_memory_smollm2")["runs"]
    saving = 4 * (2 * pts["recovery|wanda|2:4|full"]["trained_parameters"]
                  - 4 * pts["recovery|wanda|2:4|lora"]["trained_parameters"]) / 1e9
    assert mem["lora"]["peak_gb"] > mem["full"]["peak_gb"] - saving / 2
    assert "the measured peaks are not" in text and "thousands of steps" not in text
    # … and the tensors, counted one by one, do show it: masked LoRA's peak is lower, its merged weights kept
    tens = sparselib.load_result("recovery_memory_tensors_smollm2")["runs"]
    weights_gb = 4 * pts["recovery|wanda|2:4|full"]["trained_parameters"] / 1e9
    assert "masked LoRA's tensors do need less" in text
    assert tens["lora"]["tensor_peak_gb"] < tens["full"]["tensor_peak_gb"] - weights_gb
    assert tens["lora"]["saved_for_backward_gb"] > tens["full"]["saved_for_backward_gb"] + weights_gb / 2


def test_chapter7_sweep_words_hold_on_the_recorded_sweep():
    text = _ch7_markdown()
    sweep = sparselib.load_result("owl_sweep_smollm2")
    ppl = {k: p["perplexity"] for k, p in sweep["points"].items()}
    uniform, M0, lam0 = sweep["uniform"], sweep["authors"]["M"], sweep["authors"]["lam"]
    # "OWL lowers the perplexity of Wanda 70 % at most settings" … "every point is a collapsed model"
    assert "at most settings" in text and sum(p < uniform for p in ppl.values()) > len(ppl) / 2
    assert "every\npoint is a collapsed model" in text or "every point is a collapsed model" in text.replace("\n", " ")
    assert min(ppl.values()) > 10 * sweep["dense"]
    # "Perplexity does not move smoothly": along λ at the authors' M it goes up and down
    row = [ppl[f"paper|{M0:g}|{lam:g}"] for lam in sweep["lambdas"]]
    assert "does not move smoothly" in text
    assert any((b - a) * (c - b) < 0 for a, b, c in zip(row, row[1:], row[2:]))
    # "not a best setting for this model": the text names no winner as the setting to use
    assert not re.search(r"(best|right|recommended) (setting|λ|\$\\lambda\$) (for|on) SmolLM2 is", text)
    assert ppl[f"paper|{M0:g}|{lam0:g}"] == sparselib.load_result("recovery_smollm2")["points"]["owl|wanda|0.7"]["perplexity"]


