"""Bad input: the committed corpus, and short fuzz runs of the decoder and the text parser.

Every bad file must give exactly one clear error (a ValueError subclass naming
the file and a byte offset or line:column), quickly and without allocating
more than the file's size. The long fuzz runs live in benchmarks/fuzz_formats.py.
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fcn_repro.caffe import PrototxtError, WeightsError, load_weights, parse_prototxt, weights_info

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).parent / "corpus" / "bad"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mc = _load("make_corpus", Path(__file__).parent / "corpus" / "make_corpus.py")
fuzz = _load("fuzz_formats", ROOT / "benchmarks" / "fuzz_formats.py")
mc.cases()                       # fills MANIFEST for the byte files
CORPUS_FILES = sorted(p.name for p in CORPUS.iterdir())


def test_corpus_is_what_the_script_makes(tmp_path):
    mc.main(tmp_path)
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == CORPUS_FILES
    for name in made:
        assert (tmp_path / name).read_bytes() == (CORPUS / name).read_bytes(), name
    assert set(mc.MANIFEST) == set(made)


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_corpus_file_gives_one_clear_error(name):
    path = CORPUS / name
    size = path.stat().st_size
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ValueError) as ei:
            if path.suffix == ".prototxt":
                parse_prototxt(path)
            else:
                load_weights(path)
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    e = ei.value
    msg = str(e)
    assert elapsed < 5, f"{name} took {elapsed:.1f} s"
    # Python-side allocations stay around the file's size (plus fixed overhead)
    assert peak < 2 * size + (8 << 20), f"{name}: peak {peak} bytes for a {size}-byte file"
    assert mc.MANIFEST[name] in msg, msg
    assert msg.startswith(str(path)), msg
    if path.suffix == ".prototxt":
        assert isinstance(e, PrototxtError) and e.filename == str(path)
        assert re.match(re.escape(str(path)) + r":\d+:\d+: ", msg), msg
        assert e.line >= 1 and e.col >= 1
    else:
        assert isinstance(e, WeightsError) and e.filename == str(path)
        if e.offset is not None:
            assert 0 <= e.offset <= size and f": byte {e.offset}: " in msg
        else:  # HDF5: h5py gives no offsets; the error names the HDF5 object or the library's reason
            assert path.suffix == ".h5" or "HDF5" in msg
    # the info function refuses the same files the same way
    if path.suffix != ".prototxt":
        with pytest.raises(type(e)):
            weights_info(path)


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="is a directory"):
        load_weights(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        load_weights(tmp_path / "nope.caffemodel")


# ------------------------------------------------------ mutation fuzzing

CAFFEMODEL_SEEDS = fuzz.seeds("caffemodel")
PROTOTXT_SEEDS = fuzz.seeds("prototxt")


@st.composite
def mutated(draw, pool):
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            data += draw(st.binary(min_size=1, max_size=8))
            continue
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.integers(0, 5))
        if op == 0:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:
            data[i] = draw(st.sampled_from([0, 0x7F, 0x80, 0xFF, 0x0A, 0x7B, 0x7D, 0x22]))
        elif op == 2:
            data[i:i] = draw(st.binary(min_size=1, max_size=12))
        elif op == 3:
            del data[i:i + draw(st.integers(1, 16))]
        elif op == 4:
            del data[i:]
        else:
            data[i:i] = b"\xff" * draw(st.integers(1, 11)) + bytes([draw(st.integers(0, 127))])
    return bytes(data)


FUZZ = settings(max_examples=400, deadline=2000, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(mutated(CAFFEMODEL_SEEDS))
def test_fuzz_caffemodel_decoder(data):
    fuzz.check_caffemodel(data)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_caffemodel_decoder_raw_bytes(data):
    fuzz.check_caffemodel(data)


@FUZZ
@given(mutated(PROTOTXT_SEEDS))
def test_fuzz_text_parser(data):
    fuzz.check_prototxt(data)


@FUZZ
@given(st.text(alphabet=st.sampled_from(list('{}<>[]:;,#"\'\\ \n\tabcdeflnrtux0123456789.-+_EIF')),
               max_size=200))
def test_fuzz_text_parser_token_soup(text):
    fuzz.check_prototxt(text.encode())


def _solverstate_seeds() -> list[bytes]:
    from fcn_repro.caffe.caffemodel import SolverStateContents, encode_solverstate
    h = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((1, 1, 2, 2), np.float32), np.zeros(0, np.float32)]
    return [encode_solverstate(SolverStateContents(40, "snap/train_iter_40.caffemodel", h, 1)),
            encode_solverstate(SolverStateContents(0, "", [], 0))]


@FUZZ
@given(mutated(_solverstate_seeds()))
def test_fuzz_solverstate_decoder(data):
    """Mutated binary solver states: a SolverStateContents or one CaffeModelError, never anything else."""
    from fcn_repro.caffe.caffemodel import CaffeModelError, decode_solverstate
    try:
        st = decode_solverstate(data, "<fuzz>")
    except CaffeModelError as e:
        assert "<fuzz>" in str(e)
        return
    assert all(isinstance(h, np.ndarray) and h.dtype == np.float32 for h in st.history)
    assert sum(h.nbytes for h in st.history) <= len(data)   # never more values than the bytes hold


def test_atheris_short_run(tmp_path):
    """A brief coverage-guided run of every target (the long one: benchmarks/fuzz_formats.py)."""
    pytest.importorskip("atheris")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fuzz_formats.py"), "--engine", "atheris",
                        "--runs", "300", "--seconds", "20", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    assert not list(tmp_path.glob("crash-*"))
    assert r.stderr.count("atheris: exit 0") == len(fuzz.TARGETS) == 4


def test_random_engine_short_run(tmp_path):
    assert fuzz.run_random("caffemodel", 1.0, 3000, tmp_path, seed=1) == 0
    assert fuzz.run_random("prototxt", 1.0, 3000, tmp_path, seed=1) == 0
    assert fuzz.run_random("solverstate", 1.0, 1000, tmp_path, seed=1) == 0
    assert fuzz.run_random("hdf5", 1.0, 300, tmp_path, seed=1) == 0
    assert not list(tmp_path.glob("crash-*"))


def test_checks_catch_a_broken_reader(monkeypatch):
    """The fuzz properties fail when a reader lets a foreign exception out (so the runs above mean something)."""
    import fcn_repro.caffe.hdf5 as h5mod
    import fcn_repro.caffe.solverstate as ssmod
    seed = fuzz._binary_seeds("hdf5", ROOT / "tests" / "fixtures" / "caffe")[0]
    state = fuzz._binary_seeds("solverstate", ROOT)[1]
    fuzz.check_hdf5(seed)
    fuzz.check_solverstate(state)

    def broken(*a, **k):
        raise KeyError("raw h5py error")
    monkeypatch.setattr(h5mod.H5Reader, "members", broken)
    with pytest.raises(KeyError):
        fuzz.check_hdf5(seed)
    with pytest.raises(KeyError):
        fuzz.check_solverstate(state)   # the .h5 layout goes through H5Reader.members too
    monkeypatch.setattr(ssmod, "decode_solverstate", broken)
    with pytest.raises(KeyError):
        fuzz.check_solverstate(fuzz._binary_seeds("solverstate", ROOT)[0])
