import os
import stat

import pytest

from fcn_repro import utils
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


def test_utils_is_only_an_alias_of_outputs(tmp_path):
    # one implementation: the deprecated names write through fcn_repro.outputs (its temp-file naming)
    seen = []
    with utils.atomic_path(tmp_path / "x") as tmp:
        seen.append(tmp)
        open(tmp, "wb").write(b"1")
    with utils.atomic_write(tmp_path / "y", "w") as f:
        seen.append(f.name)
        f.write("2")
    assert all(s.endswith(".fcnpart") for s in seen)
    assert (tmp_path / "x").read_bytes() == b"1" and (tmp_path / "y").read_text() == "2"
    assert sorted(os.listdir(tmp_path)) == ["x", "y"]


def test_formats_import_without_torch():
    """Reading/converting weights must not import torch (memory, start-up time)."""
    import subprocess
    import sys
    code = ("import sys, fcn_repro.caffe as c; c.load_weights; "
            "assert 'torch' not in sys.modules, 'fcn_repro.caffe imported torch'; "
            "c.Net; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
