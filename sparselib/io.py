"""Writing files and directories so that a reader never sees half of one.

    write_atomically(path, lambda tmp: tmp.write_text(text))              # a file
    write_atomically(out, lambda tmp: model.save_pretrained(tmp), overwrite=True)   # a directory
    with exclusive(out):                                                  # one writer of `out` at a time
        ...

Used for result files, the converted model cache, sliced checkpoints and the command line's ``--out``.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Callable


@contextlib.contextmanager
def deferred_signals():
    """Hold Ctrl-C and SIGTERM until the block ends, so that it is never cut in half: a signal that
    arrives meanwhile is handed to the previous handler afterwards (a ``KeyboardInterrupt`` raised
    when the block is done). Python runs signal handlers in the main thread only, so this swaps the
    handlers there; in another thread no ``KeyboardInterrupt`` can land, and nothing is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    old = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) is not None:  # None: a handler set outside Python; leave it
                old[signum] = signal.signal(signum, lambda s, frame: caught.append(s))
        yield
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(caught):  # once each, in order
            handler = old[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


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
    nor the parent directories created for ``path``, and an earlier ``path`` is kept as it was.

    overwrite: what to do when ``path`` exists at the moment of the rename: False raises
    ``FileExistsError``; True replaces it; a function is called with ``path`` first (it raises to refuse).
    """
    path = Path(path)
    created, staging, done = [], None, False
    try:
        with deferred_signals():  # set-up, and below the renames and the clean-up, are never cut in half
            created = _missing_parents(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.sparselib-", dir=path.parent))
        fill(staging / "new")
        with deferred_signals():
            _replace(path, staging, overwrite)
            done = True
            if on_replaced is not None:
                on_replaced()
    finally:
        with deferred_signals():
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            if not done:
                for parent in created:  # deepest first
                    with contextlib.suppress(OSError):
                        parent.rmdir()
    return path


def _replace(path: Path, staging: Path, overwrite) -> None:
    """``staging/new`` takes the place of ``path``; an earlier directory moves to ``staging/old``
    first (a directory cannot be replaced in one rename) and comes back if the second rename fails."""
    old = None
    if path.exists() or path.is_symlink():
        if overwrite is False:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        if callable(overwrite):
            overwrite(path)  # it may have appeared, or changed, while we worked
        if path.is_dir() and not path.is_symlink():
            old = staging / "old"
            os.replace(path, old)
    try:
        os.replace(staging / "new", path)
    except OSError as err:
        if old is not None:
            with contextlib.suppress(OSError):
                os.replace(old, path)
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST):  # another writer's `path` appeared meanwhile
            raise FileExistsError(f"{path} was written by another process at the same time; "
                                  f"nothing of this run was written there") from None
        raise


class Busy(RuntimeError):
    """Another process holds the :func:`exclusive` lock of a path."""


@contextlib.contextmanager
def exclusive(path, wait: bool = False):
    """Hold an exclusive lock on ``path`` (which need not exist) among processes of this user on
    this machine: with ``wait=False`` raise :class:`Busy` at once if another process holds it. The
    lock is an ``flock`` on a file in the temporary directory (never beside ``path``), released when
    the block ends or the process dies. Without ``fcntl`` (Windows) it does nothing."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    key = hashlib.sha256(os.path.realpath(os.path.expanduser(str(path))).encode()).hexdigest()[:32]
    folder = Path(tempfile.gettempdir()) / f"sparselib-locks-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise Busy(f"{path} is being written by another process") from None
        yield
    finally:
        os.close(fd)  # releases the lock


# --------------------------------------------------------------------------------------------
# The mark of an output directory sparselib wrote (the command line's --out)
# --------------------------------------------------------------------------------------------
MARKER = "sparselib-output.json"


def _entries(directory: Path) -> dict[str, int | None]:
    """Every path below ``directory`` (relative, '/'-separated): a file's size, None for anything else."""
    found = {}
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory).as_posix()
        found[rel] = p.stat().st_size if p.is_file() and not p.is_symlink() else None
    return found


def mark_output(directory, output_id: str) -> None:
    """Write :data:`MARKER` into ``directory`` (complete, just written by sparselib): its id and the
    size of every file in it. Only sparselib writes this file; ``--force`` replaces a directory only
    while it holds exactly what its marker lists (:func:`output_problem`)."""
    directory = Path(directory)
    entries = _entries(directory)
    entries.pop(MARKER, None)
    (directory / MARKER).write_text(json.dumps({"written_by": "sparselib", "id": output_id, "files": entries},
                                               indent=1) + "\n")


def output_problem(directory) -> str | None:
    """None when ``directory`` holds exactly an output sparselib marked (:func:`mark_output`) and
    nothing else; else why not, in a few words."""
    directory = Path(directory)
    try:
        mark = json.loads((directory / MARKER).read_text())
        listed, output_id = mark["files"], mark["id"]
        if mark.get("written_by") != "sparselib" or not isinstance(listed, dict) or not isinstance(output_id, str):
            raise ValueError
    except FileNotFoundError:
        return f"is a directory that sparselib did not write (it has no {MARKER})"
    except (OSError, ValueError, KeyError, TypeError):
        return f"has a {MARKER} that sparselib did not write"
    now = _entries(directory)
    now.pop(MARKER, None)
    extra = sorted(set(now) - set(listed))
    if extra:
        shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        return f"holds files sparselib did not write ({shown})"
    changed = sorted(name for name in listed if now.get(name, -1) != listed[name])
    if changed:
        return f"was changed since sparselib wrote it ({', '.join(changed[:3])} missing or resized)"
    if "report.json" in listed:
        try:
            if json.loads((directory / "report.json").read_text()).get("output_id") != output_id:
                return f"has a report.json that does not match its {MARKER}"
        except (OSError, ValueError, AttributeError):
            return "has an unreadable report.json"
    return None
