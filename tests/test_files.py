"""model_zoo.files.write_dir_atomically: replace, keep, and a failed write that leaves nothing behind."""

from __future__ import annotations

import pytest

from model_zoo.files import write_dir_atomically


def _writer(text):
    def write(staging):
        (staging / "f.txt").write_text(text)

    return write


def test_replace_keep_and_failure(tmp_path):
    out = tmp_path / "out"
    write_dir_atomically(out, _writer("one"))
    write_dir_atomically(out, _writer("two"))  # replaced
    assert (out / "f.txt").read_text() == "two"
    write_dir_atomically(out, _writer("three"), replace=False)  # kept: someone finished first
    assert (out / "f.txt").read_text() == "two"

    def broken(staging):
        (staging / "half.txt").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_dir_atomically(out, broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or moved-aside copy left
    assert sorted(p.name for p in out.iterdir()) == ["f.txt"]
