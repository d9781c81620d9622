"""What wrote the converted offline model, so that a stale cache is never loaded silently.

The cache folder (``models.offline_model_dir()``) holds ``sparselib-cache.json``: the transformers and
sparselib versions that converted it and the GGUF file's sha256. A tokenizer or config saved by one
transformers version need not load under another (5.x's files fail in 4.57's tokenizer), so
``load_model`` converts the GGUF file again, atomically, whenever :func:`stale_reason` finds a difference.
A cache written before this record existed is judged by the ``transformers_version`` in its config.json.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .version import __version__, transformers_version

RECORD = "sparselib-cache.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_id(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def record(gguf: Path) -> dict:
    """What converting ``gguf`` now would record."""
    gguf = Path(gguf)
    return {"transformers": transformers_version(), "sparselib": __version__, "gguf_file": gguf.name,
            "gguf_sha256": sha256(gguf), "gguf_size_mtime": _file_id(gguf)}


def write_record(folder: Path, gguf: Path) -> None:
    (Path(folder) / RECORD).write_text(json.dumps(record(gguf), indent=1) + "\n")


def read_record(folder: Path) -> dict:
    """The cache's record; for an older cache without one, only the transformers version that saved it."""
    folder = Path(folder)
    if (folder / RECORD).is_file():
        return json.loads((folder / RECORD).read_text())
    config = json.loads((folder / "config.json").read_text())
    return {"transformers": config.get("transformers_version")}


def stale_reason(folder: Path, gguf: Path | None) -> str | None:
    """None when the cache at ``folder`` was written from ``gguf`` by these transformers and sparselib
    versions; else what differs, in a few words. (The file is hashed only when its size or
    modification time differ from the record's; ``gguf=None``: compare the versions only.)"""
    try:
        was = read_record(folder)
    except (OSError, ValueError) as err:
        return f"its record is unreadable ({err})"
    now = {"transformers": transformers_version(), "sparselib": __version__}
    for key in ("transformers", "sparselib"):
        if key in was and was[key] != now[key]:
            return f"written by {key} {was[key]}, this is {now[key]}"
    if gguf is not None and "gguf_sha256" in was and was.get("gguf_size_mtime") != _file_id(Path(gguf)) \
            and was["gguf_sha256"] != sha256(Path(gguf)):
        return f"written from another {Path(gguf).name} (sha256 {was['gguf_sha256'][:12]}...)"
    return None
