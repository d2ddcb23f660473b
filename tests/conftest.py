"""Shared test helpers: where the Caffe fixtures are.

The fixtures needed by the always-on tests live in tests/fixtures/caffe. The
larger ones (fcn32s, fcn-alexnet, siftflow, nyud, pascalcontext) are looked
up in $FCN_REPRO_CAFFE_FIXTURES when it is set (CI points it at the full set);
tests that need them skip with the reason when they are not there.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
CAFFE_FIXTURES = FIXTURES / "caffe"


def caffe_fixture(name: str) -> Path:
    """Path of a Caffe fixture file; skips the test when it is not available."""
    p = CAFFE_FIXTURES / name
    if p.exists():
        return p
    extra = os.environ.get("FCN_REPRO_CAFFE_FIXTURES")
    if extra and (Path(extra) / name).exists():
        return Path(extra) / name
    pytest.skip(f"fixture {name} not in tests/fixtures/caffe; set FCN_REPRO_CAFFE_FIXTURES to the full set")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: long-running test")
