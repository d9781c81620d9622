"""Versions in one place: sparselib's own (read by the CLI, result provenance and the model cache) and
the transformers versions the unit tests run under (``make unit`` and ``make unit-floor``).

Read with ``importlib.metadata``: asking for a version never imports transformers.
"""
from __future__ import annotations

import importlib.metadata
import re

__version__ = "0.1.0"

# The oldest and the newest transformers the unit tests pass under. The floor is requirements.txt's
# (make unit-floor installs exactly it); the newest is the one .venv resolves to today (make unit).
# 4.57.6 (what Colab shipped in 2025) was tested as well.
TRANSFORMERS_TESTED = ("4.50.0", "5.24.0")


def _release(version: str) -> tuple[int, ...]:
    """``"4.57.6"`` -> ``(4, 57, 6)``; suffixes such as ``.dev0`` or ``rc1`` are ignored."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def transformers_version() -> str | None:
    """The installed transformers' version, or None when it is not installed."""
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None


def transformers_supported(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed one) lies in the tested range, ends included."""
    version = version if version is not None else transformers_version()
    if version is None:
        return False
    low, high = (_release(v) for v in TRANSFORMERS_TESTED)
    release = _release(version)
    return low <= release and release[:2] <= high[:2]  # any patch release of the newest minor


def transformers_status() -> str:
    """For ``sparselib info``: whether the installed transformers lies in the tested range."""
    version, (low, high) = transformers_version(), TRANSFORMERS_TESTED
    if version is None:
        return f"not installed; tested {low} to {high}"
    if transformers_supported(version):
        return f"inside the tested range {low} to {high}"
    return f"OUTSIDE the tested range {low} to {high}: untested, pip install 'transformers>={low},<={high}'"


def dtype_kwargs(dtype) -> dict:
    """``from_pretrained``'s dtype argument: ``dtype=`` from transformers 4.57 on, ``torch_dtype=`` before
    (older versions pass an unknown ``dtype`` on to the model's constructor, which fails)."""
    version = transformers_version()
    return {"torch_dtype" if version and _release(version) < (4, 57) else "dtype": dtype}
