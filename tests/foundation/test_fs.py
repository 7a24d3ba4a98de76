"""utils/fs.atomic_file: the file appears whole with open()'s mode, or not at all."""
import os

import pytest

from diffblocks.utils.fs import atomic_file


def test_atomic_file_moves_into_place_with_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        target = tmp_path / "out.json"
        with atomic_file(str(target)) as tmp:
            assert os.path.dirname(tmp) == str(tmp_path) and not target.exists()
            with open(tmp, "w") as f:
                f.write("{}")
        assert target.read_text() == "{}"
        assert (target.stat().st_mode & 0o777) == 0o640
        assert os.listdir(tmp_path) == ["out.json"]
    finally:
        os.umask(old)


def test_atomic_file_error_leaves_previous_file_and_no_temp(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_file(str(target)) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]
