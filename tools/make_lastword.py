"""Build the offline last-word task (LAMBADA-style) from the committed Brown TEST text.

Writes sparselib/data/lastword_brown.json: passages of running Brown text whose last word a reader
can supply from the passage itself, for ``sparselib.lastword_accuracy``. Deterministic, and no
language model is used to choose the passages (so the task does not favour the model it scores).

Selection rule
--------------
Source: ``sparselib/data/brown_test.txt`` (the held-out split; calibration reads only the train
split). Documents are separated by blank lines; each line (a sentence or a paragraph) is cut into
sentences after ``.``, ``!`` or ``?`` followed by a space and a capital letter or a quote.

1. A *target sentence* has at least 8 words and ends in ``<word>.``, where ``<word>`` is letters
   only, at least 4 of them, and not one of the function words in ``FUNCTION_WORDS``.
2. Its *passage* is the target sentence without its final word and full stop, preceded by the
   sentences before it in the same document, whole sentences only, as many as fit in
   ``CONTEXT_WORDS`` words in all (a target sentence longer than that is skipped).
3. The passage must contain the target word, with the same spelling and case, as a whole word at
   least once (LAMBADA's criterion, "predictable from the context", stood in for by a rule that
   needs no human reader: the answer is in the passage). The target must not be among the passage's
   last 3 words (a repeat straight away, "very very", says little about reading the passage).
4. Documents are visited in file order (genres interleaved); at most ``PER_DOCUMENT`` items are
   taken from a document, spread over it (every k-th candidate), so that no single text dominates;
   then the first ``N_ITEMS`` items in file order are kept.

The model's task: given the passage, produce " <word>" greedily (every token of it the most
likely next token). Run:  python tools/make_lastword.py
"""
from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "sparselib" / "data" / "brown_test.txt"
OUT = ROOT / "sparselib" / "data" / "lastword_brown.json"

N_ITEMS = 200
PER_DOCUMENT = 5
CONTEXT_WORDS = 60
MIN_LINE_WORDS = 8
MIN_WORD_LETTERS = 4
NOT_IN_LAST = 3
FUNCTION_WORDS = frozenset("""
about above after again against also although among another anything around because been before
being below between both cannot could does doing down during each either enough even ever every
from have having here herself himself into itself just least less made make many more most much
must myself neither never none nothing now once only other others ought ours ourselves over own
perhaps quite rather said same seem seemed several shall should since some something still such
than that their theirs them themselves then there these they thing things this those though through
thus together toward towards under unless until upon very were what whatever when where whether
which while whom whose will with within without would yet your yours yourself yourselves
""".split())

_TARGET = re.compile(r"^(?P<head>.*\S)\s+(?P<word>[A-Za-z]+)\.$")


def documents(text: str) -> list[list[str]]:
    return [block.splitlines() for block in text.strip().split("\n\n") if block.strip()]


_SENTENCE_END = re.compile(r'(?<=[.!?])\s+(?=["A-Z])')


def sentences(lines: list[str]) -> list[str]:
    return [s for line in lines for s in _SENTENCE_END.split(line.strip()) if s]


def candidates(lines: list[str]) -> list[dict]:
    """Every item of one document that passes rules 1–3."""
    found = []
    lines = sentences(lines)
    for i, line in enumerate(lines):
        m = _TARGET.match(line.strip())
        if not m or len(line.split()) < MIN_LINE_WORDS:
            continue
        word = m["word"]
        if len(word) < MIN_WORD_LETTERS or word.lower() in FUNCTION_WORDS:
            continue
        parts, budget = [m["head"]], CONTEXT_WORDS - len(m["head"].split())
        if budget < 0:
            continue
        for previous in reversed(lines[:i]):
            n = len(previous.split())
            if n > budget:
                break
            parts.insert(0, previous.strip())
            budget -= n
        context = " ".join(parts)
        words = re.findall(r"[A-Za-z]+", context)
        if word not in words or word in words[-NOT_IN_LAST:]:
            continue
        found.append({"context": context, "target": word})
    return found


def build(text: str) -> list[dict]:
    items = []
    for d, lines in enumerate(documents(text)):
        found = candidates(lines)
        step = max(1, -(-len(found) // PER_DOCUMENT))  # spread the picks over the document
        items += [{**item, "document": d} for item in found[::step][:PER_DOCUMENT]]
    return items[:N_ITEMS]


def main() -> None:
    items = build(SOURCE.read_text(encoding="utf-8"))
    data = {
        "name": "lastword_brown",
        "source": "sparselib/data/brown_test.txt (Brown corpus, test split; see tools/prepare_brown.py)",
        "built_by": "tools/make_lastword.py",
        "rule": {"n_items": N_ITEMS, "per_document": PER_DOCUMENT, "context_words": CONTEXT_WORDS,
                 "min_line_words": MIN_LINE_WORDS, "min_word_letters": MIN_WORD_LETTERS,
                 "not_in_last_words": NOT_IN_LAST,
                 "summary": "the last word of a Brown test sentence (letters only, not a function word) "
                            "that already occurs in the passage before it; passage = whole preceding "
                            "lines of the same document, at most CONTEXT_WORDS words"},
        "items": items,
    }
    OUT.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(items)} items from {len({i['document'] for i in items})} documents -> {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
