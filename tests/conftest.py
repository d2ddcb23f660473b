"""Shared test helpers: where the Caffe fixtures are.

Every Caffe fixture the tests read is in tests/fixtures/caffe, so a fresh clone
runs every conformance test. The larger ones are stored packed (see
tests/fixtures/caffe/make_fixtures.py): ``NAME.xz`` or ``NAME.arrays.xz``;
:func:`caffe_fixture` rebuilds Caffe's original file from them, once per
process, in a temporary directory. A fixture not here at all is looked up in
$FCN_REPRO_CAFFE_FIXTURES (a full set beside the clone) and the test is
skipped, with the reason, when it is not there either.
"""
from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
CAFFE_FIXTURES = FIXTURES / "caffe"


_spec = importlib.util.spec_from_file_location("make_fixtures", CAFFE_FIXTURES / "make_fixtures.py")
make_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_fixtures)

_unpacked: dict[str, Path] = {}
_unpack_dir: list[Path] = []


def _unpack(name: str, packed: Path) -> Path:
    if name not in _unpacked:
        if not _unpack_dir:
            d = Path(tempfile.mkdtemp(prefix="fcn_repro_fixtures_"))
            atexit.register(shutil.rmtree, d, True)
            _unpack_dir.append(d)
        _unpacked[name] = make_fixtures.unpack(packed, _unpack_dir[0] / name)
    return _unpacked[name]


def caffe_fixture(name: str) -> Path:
    """Path of a Caffe fixture file (rebuilt from its packed form if need be); skips when absent."""
    p = CAFFE_FIXTURES / name
    if p.exists():
        return p
    packed = CAFFE_FIXTURES / make_fixtures.packed_name(name)
    if packed.exists():
        return _unpack(name, packed)
    extra = os.environ.get("FCN_REPRO_CAFFE_FIXTURES")
    if extra and (Path(extra) / name).exists():
        return Path(extra) / name
    pytest.skip(f"fixture {name} is neither in tests/fixtures/caffe (plain or packed) nor in "
                f"$FCN_REPRO_CAFFE_FIXTURES")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: long-running test")
