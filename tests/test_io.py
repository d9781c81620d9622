"""sparselib.io: an atomic write leaves the old path intact whenever it does not complete; the
output marker recognises exactly what sparselib wrote; the lock admits one writer at a time."""
import errno
import json
import os

import pytest

from sparselib import io


def _fill(tmp):
    tmp.mkdir()
    (tmp / "a.bin").write_bytes(b"new")


def test_a_failed_second_rename_puts_the_old_directory_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.bin").write_bytes(b"old")
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(1)
        if len(calls) == 2:  # the new directory into place
            raise OSError(errno.EIO, "disk gone")
        return real(src, dst)
    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        io.write_atomically(out, _fill, overwrite=True)
    assert (out / "a.bin").read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_path_that_appears_meanwhile_is_refused_and_kept(tmp_path):
    out = tmp_path / "new" / "out"

    def fill(tmp):
        _fill(tmp)
        out.mkdir()  # another writer
        (out / "theirs").write_text("x")
    with pytest.raises(FileExistsError):
        io.write_atomically(out, fill)
    assert [p.name for p in out.iterdir()] == ["theirs"] and [p.name for p in out.parent.iterdir()] == ["out"]


def test_a_rename_onto_a_directory_filled_meanwhile_is_a_clear_refusal(tmp_path, monkeypatch):
    """The other writer's directory appears between the check and the rename (ENOTEMPTY)."""
    out = tmp_path / "out"
    real = os.replace

    def replace(src, dst):
        out.mkdir()
        (out / "theirs").write_text("x")
        return real(src, dst)
    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(FileExistsError, match="another process"):
        io.write_atomically(out, _fill)
    assert [p.name for p in out.iterdir()] == ["theirs"] and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_the_marker_recognises_exactly_what_was_written(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "w.bin").write_bytes(b"1234")
    (out / "report.json").write_text(json.dumps({"output_id": "abc"}))
    assert "did not write" in io.output_problem(out)
    io.mark_output(out, "abc")
    assert io.output_problem(out) is None
    (out / "w.bin").write_bytes(b"12345")
    assert "changed" in io.output_problem(out)
    (out / "w.bin").write_bytes(b"1234")
    (out / ".hidden").write_text("")
    assert "(.hidden)" in io.output_problem(out)
    (out / ".hidden").unlink()
    io.mark_output(out, "xyz")  # a marker whose id is not the report's
    assert "does not match" in io.output_problem(out)


def test_exclusive_admits_one_holder(tmp_path):
    out = tmp_path / "out"
    with io.exclusive(out):
        with pytest.raises(io.Busy):
            with io.exclusive(tmp_path / "." / "out"):  # the same path, spelled differently
                pass
        with io.exclusive(tmp_path / "other"):  # another path is free
            pass
    with io.exclusive(out):  # released
        pass
    assert list(tmp_path.iterdir()) == []  # nothing beside the path
