"""setup.py's decisions for installs everywhere (read without building anything): the CUDA
architectures without a visible GPU, the pip nvidia headers, the CUDA toolkit behind a
wrapper nvcc, the extras (the test extra installs on every supported Python) and what the
README says about them."""
from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.fixture
def setup_py(monkeypatch):
    # importing runs _find_cuda_home(): keep this process's environment as it is
    monkeypatch.setenv("CUDA_HOME", os.environ.get("CUDA_HOME") or "/nonexistent-cuda-home-for-the-test")
    spec = importlib.util.spec_from_file_location("fcn_repro_setup_under_test", ROOT / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)   # setup() itself runs only as __main__
    return mod


def _setup_kwargs(setup_py, monkeypatch) -> dict:
    seen = {}
    monkeypatch.setattr(setup_py, "setup", lambda **kw: seen.update(kw))
    monkeypatch.setenv("FORCE_CUDA", "0")
    setup_py.main()
    return seen


def test_default_architectures_without_a_gpu_and_the_override(setup_py, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    assert setup_py._cuda_arch_list() == setup_py.DEFAULT_CUDA_ARCHS
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == setup_py.DEFAULT_CUDA_ARCHS   # what torch's build reads
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    assert setup_py._cuda_arch_list() == "8.0"
    # the list is stated in the README, as it is
    assert setup_py.DEFAULT_CUDA_ARCHS in README
    # every entry is one CUDA 13's nvcc compiles (7.5 and newer)
    for arch in setup_py.DEFAULT_CUDA_ARCHS.split(";"):
        assert float(arch.replace("+PTX", "")) >= 7.5


def test_pip_nvidia_headers_are_appended_to_cpath(setup_py, monkeypatch, tmp_path):
    import torch

    site = tmp_path / "site-packages"
    for d in ("nvidia/cu13/include", "nvidia/cudnn/include", "torch"):
        (site / d).mkdir(parents=True)
    (site / "nvidia/cu13/include/cusparse.h").write_text("")
    monkeypatch.setattr(torch, "__file__", str(site / "torch" / "__init__.py"))
    found = setup_py.pip_cuda_include_dirs()
    assert str(site / "nvidia/cu13/include") in found and str(site / "nvidia/cudnn/include") in found
    monkeypatch.setenv("CPATH", "/first")
    setup_py._add_pip_cuda_headers()
    cpath = os.environ["CPATH"].split(os.pathsep)
    assert cpath[0] == "/first" and str(site / "nvidia/cu13/include") in cpath   # after what was there
    setup_py._add_pip_cuda_headers()
    assert os.environ["CPATH"].split(os.pathsep) == cpath   # not added twice


def test_cuda_home_behind_a_symlinked_nvcc(setup_py, monkeypatch, tmp_path):
    toolkit = tmp_path / "cuda-13.0"
    (toolkit / "bin").mkdir(parents=True)
    (toolkit / "include").mkdir()
    (toolkit / "include" / "cuda_runtime.h").write_text("")
    (toolkit / "bin" / "nvcc").write_text("#!/bin/sh\n")
    (toolkit / "bin" / "nvcc").chmod(0o755)
    onpath = tmp_path / "usr-local-bin"
    onpath.mkdir()
    (onpath / "nvcc").symlink_to(toolkit / "bin" / "nvcc")
    monkeypatch.delenv("CUDA_HOME")
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(onpath))
    setup_py._find_cuda_home()
    assert os.environ["CUDA_HOME"] == str(toolkit)
    # a nvcc inside a toolkit: torch's own guess is right, nothing is set
    monkeypatch.delenv("CUDA_HOME")
    monkeypatch.setenv("PATH", str(toolkit / "bin"))
    setup_py._find_cuda_home()
    assert "CUDA_HOME" not in os.environ


def test_extras_and_python_versions(setup_py, monkeypatch):
    kw = _setup_kwargs(setup_py, monkeypatch)
    extras = kw["extras_require"]
    assert not any("atheris" in r for r in extras["test"])   # installs on 3.10 too (no atheris wheel)
    assert any(r.startswith("atheris") for r in extras["fuzz"])
    assert kw["python_requires"] == ">=3.10"
    lo = re.search(r">=(3\.\d+)", kw["python_requires"]).group(1)
    assert f"Python {lo} to 3.13" in README and "3.9+" not in README
    assert sys.version_info[:2] >= tuple(map(int, lo.split(".")))
