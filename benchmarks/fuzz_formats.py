"""Fuzz the format readers: binary .caffemodel, text format, solver states, HDF5.

    python benchmarks/fuzz_formats.py --seconds 600                 # all targets, atheris
    python benchmarks/fuzz_formats.py --target caffemodel --runs 5000
    python benchmarks/fuzz_formats.py --engine random --seconds 60  # no atheris needed

The property checked on every input (see ``check_caffemodel``,
``check_prototxt``, ``check_solverstate``, ``check_hdf5``): the input is either refused with the format's own
error (a ``ValueError`` subclass naming the file and a byte offset or
line:column inside the input) or accepted, and then what was read writes back
and reads again to the same thing; nothing else may happen: no other
exception, no RecursionError, no hang (libFuzzer ``-timeout``), no memory
blow-up (``-rss_limit_mb``; the decoder also must not return more array bytes
than the input holds).

Engines: ``atheris`` (coverage-guided libFuzzer, ``pip install atheris``) runs
each target in its own process, as libFuzzer exits when done; ``random`` is a
plain seed-mutation loop in pure Python, for machines without atheris. Seeds:
the committed bad-input corpus (tests/corpus/bad), small valid nets, and the
small Caffe fixtures. Crashing inputs are written to ``--out`` (default
out/fuzz/, git-ignored), which also receives libFuzzer's growing corpus.
"""
from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("caffemodel", "prototxt", "solverstate", "hdf5")
_SCRATCH: list[Path] = []


def scratch(name: str) -> Path:
    """A per-process scratch file for readers that take a path (HDF5, .npz)."""
    if not _SCRATCH:
        _SCRATCH.append(Path(tempfile.mkdtemp(prefix="fuzz-formats-")))
    return _SCRATCH[0] / name


def import_formats_only() -> None:
    """Make ``fcn_repro.caffe.<format module>`` importable without the package's __init__.

    ``fcn_repro/caffe/__init__.py`` also exports the net builder, which imports
    torch (seconds, hundreds of MB); the formats need none of it, and the
    fuzzer should instrument and load only them. A bare package module stands
    in for ``fcn_repro.caffe`` unless the real one is already imported.
    """
    import types
    if "fcn_repro.caffe" in sys.modules:
        return
    import fcn_repro
    pkg = types.ModuleType("fcn_repro.caffe")
    pkg.__path__ = [str(Path(fcn_repro.__file__).resolve().parent / "caffe")]
    pkg.__package__ = "fcn_repro.caffe"
    sys.modules["fcn_repro.caffe"] = pkg


# ------------------------------------------------------------- the checks

def check_caffemodel(data: bytes) -> None:
    """Decode ``data``; a refusal must be a WeightsError with a sane offset."""
    from fcn_repro.caffe.caffemodel import (
        WeightsError, decode_caffemodel, encode_caffemodel, layers_from_weights,
    )
    from fcn_repro.caffe.weightfile import looks_like
    looks_like(data[:4096])     # the sniffer must survive anything too
    try:
        w = decode_caffemodel(data, filename="<fuzz>", keep_dtype=True, keep_empty=True)
    except WeightsError as e:
        assert e.filename == "<fuzz>", e
        assert e.offset is not None and 0 <= e.offset <= len(data), e
        return
    total = sum(a.nbytes for blobs in w.values() for a in blobs)
    assert total <= len(data), f"decoded {total} bytes of values from {len(data)} input bytes"
    again = decode_caffemodel(encode_caffemodel(layers_from_weights(w)), keep_dtype=True, keep_empty=True)
    assert list(again) == list(w)
    for k in w:
        assert [(a.shape, a.dtype, a.tobytes()) for a in w[k]] == \
            [(a.shape, a.dtype, a.tobytes()) for a in again[k]], k


def check_prototxt(data: bytes) -> None:
    """Parse ``data`` as text format (and upgrade it as a net)."""
    from fcn_repro.caffe.prototxt import PrototxtError, format_text, parse_prototxt, parse_text
    try:
        m = parse_text(data, "<fuzz>")
    except PrototxtError as e:
        assert e.filename == "<fuzz>" and e.line >= 1 and e.col >= 1, e
        return
    text = format_text(m)
    again = parse_text(text)
    assert format_text(again) == text
    try:
        up = parse_prototxt(data)
    except PrototxtError:
        return
    assert format_text(parse_text(format_text(up))) == format_text(up)


def check_solverstate(data: bytes) -> None:
    """Read ``data`` as a solver state: the binary message from memory, and as a
    file in whatever layout its first bytes say (binary, HDF5 or .npz)."""
    from fcn_repro.caffe.solverstate import (
        SolverStateContents, decode_solverstate, encode_solverstate, read_state,
    )
    from fcn_repro.errors import FcnReproError
    try:
        st = decode_solverstate(data, "<fuzz>")
    except FcnReproError as e:
        assert e.filename == "<fuzz>" and e.offset is not None and 0 <= e.offset <= len(data), e
    else:
        assert sum(h.nbytes for h in st.history) <= 2 * len(data)   # float64 -> float32 halves
        again = decode_solverstate(encode_solverstate(SolverStateContents(
            st.iter, st.learned_net, st.history, st.current_step)))
        assert (again.iter, again.current_step, again.learned_net) == (st.iter, st.current_step, st.learned_net)
        assert [h.tobytes() for h in again.history] == [h.tobytes() for h in st.history]
    path = scratch("state.solverstate")
    path.write_bytes(data)
    try:
        sf = read_state(path)
    except FcnReproError as e:
        assert e.filename == str(path), e
        return
    total = sum(h.nbytes for h in sf.state.history) + sum(a.nbytes for a in sf.extra.values())
    assert total <= 256 * max(len(data), 1), f"{total} bytes of arrays from {len(data)} input bytes"


def check_hdf5(data: bytes) -> None:
    """Read ``data`` as Caffe HDF5 weights (info, then values)."""
    from fcn_repro.caffe.hdf5 import hdf5_info, load_hdf5
    from fcn_repro.errors import WeightsError
    path = scratch("w.h5")
    path.write_bytes(data)
    try:
        info = hdf5_info(path)
        w = load_hdf5(path, keep_dtype=True, keep_empty=True)
    except WeightsError as e:
        assert e.filename == str(path), e
        return
    total = sum(a.nbytes for blobs in w.values() for a in blobs)
    assert total <= 256 * len(data), f"{total} bytes of values from {len(data)} input bytes"
    assert [lay.name for lay in info.layers] == list(w)


CHECKS = {"caffemodel": check_caffemodel, "prototxt": check_prototxt, "solverstate": check_solverstate,
          "hdf5": check_hdf5}


# -------------------------------------------------------------- the seeds

def seeds(target: str) -> list[bytes]:
    sys.path.insert(0, str(ROOT / "tests" / "corpus"))
    import make_corpus as mc
    out: list[bytes] = []
    bad = ROOT / "tests" / "corpus" / "bad"
    if bad.is_dir():
        for p in sorted(bad.iterdir()):
            if (p.suffix == ".h5") == (target == "hdf5"):
                out.append(p.read_bytes())
    fixtures = ROOT / "tests" / "fixtures" / "caffe"
    if target in ("solverstate", "hdf5"):
        out += _binary_seeds(target, fixtures)
    elif target == "caffemodel":
        out.append(mc.good_net())
        out.append(mc.s(1, "v1") + mc.layer_v1("ip", 14, [mc.blob(legacy=(1, 1, 2, 2), data=[1, 2, 3, 4])]))
        out.append(mc.layer_v2("d", "", [mc.shape(3) + mc.unpacked_f64(8, [1.0, 2.0, 3.0])]))
        for name in ("zoo.caffemodel",):
            if (fixtures / name).exists():
                out.append((fixtures / name).read_bytes())
    else:
        for name in ("zoo.prototxt", "vgg-v1.prototxt", "fcn8s.solver.prototxt", "fcn8s.train.prototxt"):
            if (fixtures / name).exists():
                out.append((fixtures / name).read_bytes())
        out.append(b'a: "\\303\\251" b: [1, 2.5e-3, -inf] c <d: 0x1F; e: \'x\' "y"> f { } # c\n')
    return out


def _binary_seeds(target: str, fixtures: Path) -> list[bytes]:
    """Small valid solver states (all three layouts) or HDF5 weights, made here."""
    import numpy as np

    from fcn_repro.caffe.hdf5 import save_hdf5
    from fcn_repro.caffe.solverstate import SolverStateContents, encode_solverstate, write_state
    d = Path(tempfile.mkdtemp(prefix="fuzz-seeds-bin-"))
    hist = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(2, np.float32)]
    if target == "hdf5":
        save_hdf5(d / "w.h5", {"conv": hist, "relu": []})
        out = [(d / "w.h5").read_bytes()]
        if (fixtures / "zoo.caffemodel.h5").exists():
            out.append((fixtures / "zoo.caffemodel.h5").read_bytes())
        return out
    st = SolverStateContents(7, "net_iter_7.caffemodel", hist, 1)
    out = [encode_solverstate(st)]
    for name in ("s.solverstate.h5", "s.npz"):
        write_state(d / name, st, ["conv/0", "conv/1"], {"loss": np.array([0.5])})
        out.append((d / name).read_bytes())
    return out


# ----------------------------------------------------------------- engines

def _mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(8)
        if not b:
            b += rng.randbytes(rng.randint(1, 8))
            continue
        i = rng.randrange(len(b))
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i] = rng.choice((0, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:
            b[i:i] = rng.randbytes(rng.randint(1, 10))
        elif op == 3:
            del b[i:i + rng.randint(1, 16)]
        elif op == 4:
            del b[i:]
        elif op == 5:  # a long varint / hostile length
            b[i:i] = bytes([0xFF] * rng.randint(1, 12)) + bytes([rng.randrange(128)])
        elif op == 6:  # splice from another seed
            other = rng.choice(pool)
            j = rng.randrange(len(other) + 1)
            b[i:] = other[j:j + rng.randint(0, 64)] + b[i:]
        else:
            j = rng.randrange(len(b))
            b[i:i] = b[j:j + rng.randint(1, 32)]
    return bytes(b)


def run_random(target: str, seconds: float, runs: int | None, out: Path, seed: int = 0) -> int:
    check = CHECKS[target]
    pool = seeds(target)
    rng = random.Random(seed)
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end and (runs is None or n < runs):
        data = _mutate(rng, rng.choice(pool), pool)
        try:
            check(data)
        except BaseException as e:  # noqa: BLE001 - everything else is a finding
            out.mkdir(parents=True, exist_ok=True)
            crash = out / f"crash-{target}-{n}"
            crash.write_bytes(data)
            print(f"[{target}] FAILED on input {n} ({len(data)} bytes) -> {crash}: {type(e).__name__}: {e}",
                  file=sys.stderr)
            return 1
        n += 1
        if len(data) < 4096 and rng.random() < 0.02:
            pool.append(data)
    print(f"[{target}] random engine: {n} inputs, no failure", file=sys.stderr)
    return 0


def run_atheris_child(target: str, seconds: float, runs: int | None, out: Path) -> None:
    """In this process: libFuzzer over ``target``; exits the process when done."""
    import atheris
    import_formats_only()
    with atheris.instrument_imports(include=["fcn_repro"]):
        import fcn_repro.caffe.caffemodel  # noqa: F401
        import fcn_repro.caffe.prototxt  # noqa: F401
        import fcn_repro.caffe.weights  # noqa: F401
        import fcn_repro.caffe.solverstate  # noqa: F401
        import fcn_repro.caffe.hdf5  # noqa: F401
        import fcn_repro.npz  # noqa: F401
    check = CHECKS[target]
    corpus = out / f"corpus-{target}"
    corpus.mkdir(parents=True, exist_ok=True)
    seed_dir = Path(tempfile.mkdtemp(prefix=f"fuzz-seeds-{target}-"))
    for i, s in enumerate(seeds(target)):
        (seed_dir / f"seed{i:03d}").write_bytes(s)
    argv = [sys.argv[0], str(corpus), str(seed_dir), f"-artifact_prefix={out}/crash-{target}-",
            "-rss_limit_mb=2048", "-timeout=10", "-max_len=65536", "-print_final_stats=1"]
    if seconds:
        argv.append(f"-max_total_time={int(max(1, seconds))}")
    if runs is not None:
        argv.append(f"-runs={runs}")
    atheris.Setup(argv, check)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="time per target (default 60)")
    ap.add_argument("--runs", type=int, default=None, help="stop after this many inputs per target")
    ap.add_argument("--target", choices=TARGETS + ("all",), default="all")
    ap.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "fuzz")
    ap.add_argument("--seed", type=int, default=0, help="random engine seed")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    engine = a.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            print("atheris not installed: using the random mutation engine", file=sys.stderr)
            engine = "random"
    targets = TARGETS if a.target == "all" else (a.target,)
    a.out.mkdir(parents=True, exist_ok=True)
    if engine == "random":
        import_formats_only()
        return max(run_random(t, a.seconds, a.runs, a.out, a.seed) for t in targets)
    if a.child:
        run_atheris_child(targets[0], a.seconds, a.runs, a.out)
        return 0
    rc = 0
    for t in targets:
        cmd = [sys.executable, __file__, "--child", "--engine", "atheris", "--target", t,
               "--seconds", str(a.seconds), "--out", str(a.out)]
        if a.runs is not None:
            cmd += ["--runs", str(a.runs)]
        t0 = time.monotonic()
        r = subprocess.run(cmd, cwd=ROOT).returncode
        print(f"[{t}] atheris: exit {r} after {time.monotonic() - t0:.1f} s "
              f"({'ok' if r == 0 else 'FAILED, see ' + str(a.out)})", file=sys.stderr)
        rc = rc or r
    return 1 if rc else 0


if __name__ == "__main__":
    sys.exit(main())
