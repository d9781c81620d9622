"""Writing files and directories so that a reader never sees half of one.

    write_atomically(path, lambda tmp: tmp.write_text(text))              # a file
    write_atomically(out, lambda tmp: model.save_pretrained(tmp), overwrite=True)   # a directory

Used for result files, the converted model cache, sliced checkpoints and the command line's ``--out``.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Callable


@contextlib.contextmanager
def _signals_held():
    """Hold Ctrl-C and SIGTERM during the renames, so ``path`` is never left half-replaced."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _missing_parents(path: Path) -> list[Path]:
    """The directories above ``path`` that do not exist yet, deepest first."""
    missing, parent = [], path.absolute().parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    return missing


def write_atomically(path, fill: Callable[[Path], object], *, overwrite: bool | Callable[[Path], object] = False,
                     on_replaced: Callable[[], object] | None = None) -> Path:
    """``fill(tmp)`` writes a file or a directory at ``tmp``, a path in a fresh directory next to
    ``path``; once it returns, that takes the place of ``path`` (``os.replace``) and ``on_replaced()``
    is called. On any error or interrupt before then, nothing is left: neither the temporary files
    nor the parent directories created for ``path``.

    overwrite: what to do when ``path`` exists at the moment of the rename: False raises
    ``FileExistsError``; True replaces it; a function is called with ``path`` first (it raises to refuse).
    """
    path = Path(path)
    created = _missing_parents(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.sparselib-", dir=path.parent))
    done = False
    try:
        fill(staging / "new")
        with _signals_held():
            if path.exists() or path.is_symlink():
                if overwrite is False:
                    raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
                if callable(overwrite):
                    overwrite(path)  # it may have appeared, or changed, while we worked
                if path.is_dir() and not path.is_symlink():  # a directory cannot be replaced in one rename
                    os.replace(path, staging / "old")
            os.replace(staging / "new", path)
            done = True
            if on_replaced is not None:
                on_replaced()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not done:
            for parent in created:  # deepest first
                with contextlib.suppress(OSError):
                    parent.rmdir()
    return path
