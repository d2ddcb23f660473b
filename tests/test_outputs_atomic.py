import os
import stat

import pytest

from fcn_repro.outputs import output_file, output_path


def atomic_write(path, mode="wb"):
    return output_file(path, 0, mode)


def atomic_path(path):
    return output_path(path)


def test_atomic_write_replaces_on_success(tmp_path):
    p = tmp_path / "out.bin"
    p.write_bytes(b"old")
    with atomic_write(p) as f:
        f.write(b"new")
    assert p.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    p = tmp_path / "out.bin"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(p) as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert p.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "new.h5") as tmp:
            open(tmp, "wb").write(b"x")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == ["out.bin"]


def test_atomic_outputs_get_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "a") as f:
            f.write(b"x")
        with atomic_path(tmp_path / "b") as tmp:
            open(tmp, "wb").write(b"x")
    finally:
        os.umask(old)
    for name in "ab":
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644
