"""The packed Caffe fixtures (tests/fixtures/caffe/make_fixtures.py) rebuild Caffe's files exactly."""
from __future__ import annotations

import lzma
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import CAFFE_FIXTURES, caffe_fixture, make_fixtures

ORIGINALS = os.environ.get("FCN_REPRO_CAFFE_FIXTURES")


def test_every_fixture_is_in_the_repository():
    """A fresh clone has every fixture the conformance tests read (none skips for a missing file)."""
    for name in make_fixtures.PACKED:
        assert (CAFFE_FIXTURES / make_fixtures.packed_name(name)).exists(), name
        assert not (CAFFE_FIXTURES / name).exists(), f"{name}: both packed and unpacked"
    for name in make_fixtures.COPIED:
        assert (CAFFE_FIXTURES / name).exists(), name
    total = sum(p.stat().st_size for p in CAFFE_FIXTURES.parent.rglob("*") if p.is_file())
    assert total < 30e6, f"tests/fixtures holds {total / 1e6:.1f} MB"


@pytest.mark.skipif(not ORIGINALS, reason="FCN_REPRO_CAFFE_FIXTURES (Caffe's full fixture set) not set")
@pytest.mark.parametrize("name", make_fixtures.PACKED)
def test_packed_fixture_rebuilds_the_original(name):
    original = Path(ORIGINALS) / name
    if not original.exists():
        pytest.skip(f"{original} not there")
    assert make_fixtures.same_file(original, caffe_fixture(name)) is None


def _roundtrip(arrays):
    back = make_fixtures.unpack_arrays(make_fixtures.pack_arrays(arrays))
    assert [k for k, _ in back] == [k for k, _ in arrays]
    for (_, a), (_, b) in zip(arrays, back):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    return back


def test_pack_roundtrip_is_bitwise():
    rng = np.random.default_rng(0)
    big = np.cumsum(rng.standard_normal((1, 3, 40, 50)), axis=-1).astype(np.float32)
    big[0, 0, 0, :3] = [np.nan, -0.0, np.inf]
    arrays = [
        ("s0/upscore", big),
        ("s0/score", big[:, :, 7:7 + 20, 11:11 + 30].copy()),          # a window: stored as a crop
        ("s0/split", big.copy()),                                        # a copy
        ("s0/relu", np.maximum(rng.standard_normal((2, 5)), 0).astype(np.float32)),
        ("loss", np.float64(3.25)),                                      # 0-d
        ("label", rng.integers(0, 255, (4, 7), dtype=np.uint8)),
        ("empty", np.zeros((0, 3), np.float32)),
        ("wide", rng.integers(-2**62, 2**62, (3, 9), dtype=np.int64)),
    ]
    _roundtrip(arrays)
    header = lzma.decompress(make_fixtures.pack_arrays(arrays)).split(b"\n", 1)[0]
    assert b'"how":"crop","of":"s0/upscore","offset":[0,0,7,11]' in header
    assert b'"how":"copy","of":"s0/upscore"' in header


def test_damaged_pack_is_a_clear_error(tmp_path):
    packed = make_fixtures.pack_arrays([("a", np.arange(10, dtype=np.float32))])
    with pytest.raises(make_fixtures.FixturePackError, match="not an xz stream"):
        make_fixtures.unpack_arrays(packed[:-9], "cut")
    raw = lzma.decompress(packed)
    with pytest.raises(make_fixtures.FixturePackError, match="bytes do not fit"):
        make_fixtures.unpack_arrays(lzma.compress(raw[:-4]), "short")
    with pytest.raises(make_fixtures.FixturePackError, match="after the last array"):
        make_fixtures.unpack_arrays(lzma.compress(raw + b"xx"), "long")
    bad = tmp_path / "x.npz.arrays.xz"
    bad.write_bytes(b"junk")
    with pytest.raises(make_fixtures.FixturePackError):
        make_fixtures.unpack(bad, tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists() and list(tmp_path.iterdir()) == [bad]
