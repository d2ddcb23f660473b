"""Load speed and memory of a full-size FCN-8s caffemodel, against the targets.

    python benchmarks/bench_load.py [--dir DIR] [--keep] [--repeat 3] [--json OUT.json]

Generates (once, in DIR; default a temporary directory) a V2 ``.caffemodel``
with the full-width FCN-8s parameter shapes (VGG-16 trunk, fc6 4096x512x7x7,
fc7 4096x4096x1x1, score_fr 21x4096, upscore 21x21 k4/k4/k16, score_pool4
21x512, score_pool3 21x256: ~134.5 M values, ~538 MB like the original
fcn8s-heavy-pascal.caffemodel's 537,963,159 bytes), and its Caffe HDF5 twin.
Then each measurement runs in a fresh process (so ``ru_maxrss`` is that
measurement's own peak):

* ``views``: ``load_weights(path)``: the default, memory-mapped views;
* ``views+touch``: the same, then every value read once (a sum per blob):
  what using all the weights costs;
* ``copy``: ``load_weights(path, copy=True)``: fresh arrays, no mapping;
* ``hdf5``: ``load_weights(path.h5)``;
* ``views+touch (package)``: as ``views+touch`` but importing
  ``fcn_repro.caffe`` the normal way, which also loads the net builder and
  torch: the process baseline a user really has.

Except for the last, the processes import only the format modules (not
torch; see ``import_formats_only`` in fuzz_formats.py), so the peak RSS is the
loader's own. "warm": the file is in the page cache; "cold": it was evicted
first with ``posix_fadvise(DONTNEED)``. Targets (issue 2): load in under 1 s,
peak RSS under 1.1x the file size; Caffe itself: 1.17 s and 1.2 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

TARGET_SECONDS = 1.0
TARGET_RSS_RATIO = 1.1
CAFFE_SECONDS = 1.17
CAFFE_RSS = 1.2e9

# (layer, type, [blob shapes]) of FCN-8s (PASCAL VOC, 21 classes), full width.
def fcn8s_layers(classes: int = 21) -> list[tuple[str, str, list[tuple[int, ...]]]]:
    convs = [("conv1_1", 64, 3), ("conv1_2", 64, 64), ("conv2_1", 128, 64), ("conv2_2", 128, 128),
             ("conv3_1", 256, 128), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
             ("conv4_1", 512, 256), ("conv4_2", 512, 512), ("conv4_3", 512, 512),
             ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512)]
    out = []
    for name, o, i in convs:
        out.append((name, "Convolution", [(o, i, 3, 3), (o,)]))
        out.append(("relu" + name[4:], "ReLU", []))
        if name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"):
            out.append(("pool" + name[4], "Pooling", []))
    out += [
        ("fc6", "Convolution", [(4096, 512, 7, 7), (4096,)]), ("relu6", "ReLU", []), ("drop6", "Dropout", []),
        ("fc7", "Convolution", [(4096, 4096, 1, 1), (4096,)]), ("relu7", "ReLU", []), ("drop7", "Dropout", []),
        ("score_fr", "Convolution", [(classes, 4096, 1, 1), (classes,)]),
        ("upscore2", "Deconvolution", [(classes, classes, 4, 4)]),
        ("score_pool4", "Convolution", [(classes, 512, 1, 1), (classes,)]),
        ("score_pool4c", "Crop", []), ("fuse_pool4", "Eltwise", []),
        ("upscore_pool4", "Deconvolution", [(classes, classes, 4, 4)]),
        ("score_pool3", "Convolution", [(classes, 256, 1, 1), (classes,)]),
        ("score_pool3c", "Crop", []), ("fuse_pool3", "Eltwise", []),
        ("upscore8", "Deconvolution", [(classes, classes, 16, 16)]),
        ("score", "Crop", []),
    ]
    return out


def generate(path: Path, h5: Path) -> None:
    import numpy as np
    sys.path.insert(0, str(HERE))
    from fuzz_formats import import_formats_only
    import_formats_only()
    from fcn_repro.caffe.caffemodel import CaffeLayer, write_caffemodel
    from fcn_repro.caffe.hdf5 import save_hdf5
    rng = np.random.default_rng(0)
    layers = []
    for name, ltype, shapes in fcn8s_layers():
        blobs = [(rng.random(s, dtype=np.float32) - 0.5) * 0.02 for s in shapes]
        layers.append(CaffeLayer(name, ltype, blobs))
    t0 = time.perf_counter()
    write_caffemodel(path, layers, "FCN-8s")
    t1 = time.perf_counter()
    save_hdf5(h5, {lay.name: list(lay.blobs) for lay in layers})
    t2 = time.perf_counter()
    print(f"generated {path} ({path.stat().st_size:,} bytes) in {t1 - t0:.2f} s, "
          f"{h5.name} ({h5.stat().st_size:,} bytes) in {t2 - t1:.2f} s", file=sys.stderr)


def _evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def _rss() -> int:
    """Peak resident set of this process, in bytes.

    VmHWM, not ``ru_maxrss``: Linux carries ``ru_maxrss`` across fork and
    execve, so a child would report its parent's peak (the generator's).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(mode: str, path: str, package: bool) -> dict:
    """One measurement in this (fresh) process; returns its figures."""
    t_imp = time.perf_counter()
    if package:
        import fcn_repro.caffe  # noqa: F401 - the real package: builder and torch included
    else:
        sys.path.insert(0, str(HERE))
        from fuzz_formats import import_formats_only
        import_formats_only()
    import numpy as np
    from fcn_repro.caffe.weights import load_weights
    import_s = time.perf_counter() - t_imp
    base = _rss()
    t0 = time.perf_counter()
    w = load_weights(path, copy=(mode == "copy"))
    t1 = time.perf_counter()
    touched = 0.0
    if mode in ("views+touch", "copy", "hdf5"):
        for blobs in w.values():
            for a in blobs:
                touched += float(np.add.reduce(a, axis=None, dtype=np.float64))
    t2 = time.perf_counter()
    n = sum(a.size for blobs in w.values() for a in blobs)
    return {"mode": mode + (" (package)" if package else ""), "load_s": t1 - t0, "load_touch_s": t2 - t0,
            "baseline_rss": base, "peak_rss": _rss(), "values": int(n), "import_s": import_s,
            "checksum": touched}


def measure(mode: str, path: Path, cold: bool, package: bool = False) -> dict:
    if cold:
        _evict(path)
    else:
        _warm(path)
    cmd = [sys.executable, __file__, "--child", mode, str(path)] + (["--package"] if package else [])
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"measurement {mode} failed:\n{r.stderr}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["cache"] = "cold" if cold else "warm"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="caffemodel load benchmark (FCN-8s, full size)")
    ap.add_argument("--dir", type=Path, help="where the generated files go (kept there)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files of a temporary --dir")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (median reported)")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--package", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child[0], a.child[1], a.package)))
        return 0

    tmp = None
    d = a.dir
    if d is None:
        tmp = tempfile.mkdtemp(prefix="fcn-bench-load-", dir=os.environ.get("TMPDIR"))
        d = Path(tmp)
    d.mkdir(parents=True, exist_ok=True)
    path, h5 = d / "fcn8s-full.caffemodel", d / "fcn8s-full.caffemodel.h5"
    try:
        if not (path.exists() and h5.exists()):
            generate(path, h5)
        size = path.stat().st_size
        plan = [("views", False, False), ("views", True, False), ("views+touch", False, False),
                ("views+touch", True, False), ("copy", False, False), ("copy", True, False),
                ("hdf5", False, False), ("views+touch", False, True)]
        results = []
        for mode, cold, package in plan:
            target = h5 if mode == "hdf5" else path
            runs = [measure(mode, target, cold, package) for _ in range(max(1, a.repeat))]
            med = dict(runs[0])
            for k in ("load_s", "load_touch_s", "peak_rss", "baseline_rss"):
                med[k] = statistics.median(r[k] for r in runs)
            med["file_bytes"] = target.stat().st_size
            results.append(med)
            print(f"  {med['mode']:<24} {med['cache']:<5} load {med['load_s']:.3f} s, "
                  f"load+use {med['load_touch_s']:.3f} s, peak RSS {med['peak_rss'] / 1e6:.0f} MB", file=sys.stderr)
        checks = {r["checksum"] for r in results if r["mode"] != "views"}
        assert len(checks) == 1, f"the modes disagree on the values: {checks}"

        print(f"\nFCN-8s full size: {size:,} bytes (original fcn8s-heavy-pascal.caffemodel: 537,963,159), "
              f"{results[0]['values']:,} values")
        print(f"targets: load < {TARGET_SECONDS:.1f} s, peak RSS < {TARGET_RSS_RATIO}x file = "
              f"{TARGET_RSS_RATIO * size / 1e6:.0f} MB; Caffe: {CAFFE_SECONDS} s, {CAFFE_RSS / 1e9:.1f} GB\n")
        hdr = f"{'mode':<24} {'cache':<5} {'load s':>8} {'load+use s':>10} {'peak RSS MB':>11} {'x file':>7} " \
              f"{'over base MB':>12}  target"
        print(hdr)
        print("-" * len(hdr))
        for r in results:
            ratio = r["peak_rss"] / r["file_bytes"]
            seconds = r["load_touch_s"] if r["mode"] != "views" else r["load_s"]
            ok = seconds < TARGET_SECONDS and ratio < TARGET_RSS_RATIO
            print(f"{r['mode']:<24} {r['cache']:<5} {r['load_s']:>8.3f} {r['load_touch_s']:>10.3f} "
                  f"{r['peak_rss'] / 1e6:>11.0f} {ratio:>7.2f} {(r['peak_rss'] - r['baseline_rss']) / 1e6:>12.0f}"
                  f"  {'met' if ok else 'MISSED'}")
        print("\n'load+use' = load, then read every value once; 'over base' = peak RSS minus the RSS after "
              "imports; '(package)' imports fcn_repro.caffe with the net builder and torch.")
        for cache in ("warm", "cold"):
            r = [x for x in results if x["mode"] == "views+touch" and x["cache"] == cache][0]
            ratio = r["peak_rss"] / size
            ok = r["load_touch_s"] < TARGET_SECONDS and ratio < TARGET_RSS_RATIO
            print(f"default load_weights, every value used, {cache} cache: {r['load_touch_s']:.2f} s "
                  f"(Caffe {CAFFE_SECONDS} s), peak RSS {r['peak_rss'] / 1e6:.0f} MB = {ratio:.2f}x the file "
                  f"(Caffe {CAFFE_RSS / 1e9:.1f} GB): target {'met' if ok else 'MISSED'}")
        if a.json:
            a.json.write_text(json.dumps({"file_bytes": size, "results": results,
                                          "targets": {"seconds": TARGET_SECONDS, "rss_ratio": TARGET_RSS_RATIO},
                                          "caffe": {"seconds": CAFFE_SECONDS, "rss": CAFFE_RSS}}, indent=1))
    finally:
        if tmp and not a.keep:
            for p in (path, h5):
                if p.exists():
                    p.unlink()
            os.rmdir(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
