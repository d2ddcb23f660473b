"""Shared pieces of the benchmark suite: machine facts, timing, memory, the benchmark model.

Nothing here is a test: the suite measures and prints; RESULTS.md records
what it printed. See benchmarks/README.md.

* ``machine_info()``: CPU model (from /proc/cpuinfo), cores, torch / MKL /
  oneDNN / OpenCV versions, GPU if any.
* ``Timer`` / ``time_calls``: wall-clock timings (CUDA-synchronized when the
  work runs on a GPU), with the foreign CPU load seen meanwhile (other
  processes on a shared machine make timings noisy: the table says how busy
  the machine was).
* ``reset_peak_rss`` / ``peak_rss`` / ``current_rss``: the kernel's VmHWM /
  VmRSS of this process (the high-water mark can be reset through
  /proc/self/clear_refs, so a phase's own peak can be read).
* ``bench_model()``: the benchmark net (FCN-8s at full width, the
  netspec-generated deploy prototxt, or the Caffe fixture scaled to the real
  widths when that is absent) and its weights, generated once with seeded
  He-scaled random values and written with the project's own writer
  (``fcn_repro.caffe.save_weights``) as a .caffemodel of the real size,
  into a cache directory outside the repository.
* ``bench_input()``: a deterministic 500x500 test image, preprocessed as
  FCN's VOC layer does (BGR, mean subtracted), as a (1, 3, H, W) array.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fcn_repro import registry  # noqa: E402  (this checkout's package, after the path above)

CACHE = Path(os.environ.get("FCN_REPRO_BENCH_CACHE", Path.home() / ".cache" / "fcn_repro" / "bench"))

# FCN-8s widths: the fixture nets are the real architecture at reduced width
# (tests/fixtures/caffe/README.md); these map their widths to the real ones.
FIXTURE_TO_REAL_WIDTH = {4: 64, 6: 128, 8: 256, 10: 512, 12: 512, 16: 4096, 21: 21}
MEAN_BGR = registry.MEAN_VOC   # the VOC nets' (B, G, R) mean: one home, the registry


# ---------------------------------------------------------------- machine

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_info() -> dict:
    """Facts about this machine and the software measured, for the table header."""
    import torch
    flags = cpu_flags()
    simd = [f for f in ("avx512f", "avx2", "fma", "avx") if f in flags]
    info = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "simd": simd[0] if simd else "?",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cuda": torch.cuda.is_available(),
    }
    try:
        info["mem_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import cv2  # noqa: F401
        info["opencv"] = cv2.__version__
    except ImportError:
        info["opencv"] = None
    return info


# ---------------------------------------------------------------- load of the machine

def _proc_stat() -> tuple:
    """(busy jiffies, total jiffies) over all CPUs, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()[1:]
    except OSError:
        return (0, 0)
    v = [int(x) for x in parts]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    total = sum(v[:8])
    return total - idle, total


def _own_cpu() -> float:
    """CPU seconds of this process and its finished children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadProbe:
    """Foreign CPU load while a measurement runs: busy CPU time on the machine not spent by us.

    ``foreign`` is in cores (0 = nobody else ran; 2 = two cores busy with
    someone else's work). Measured from /proc/stat (all processes, whatever
    their PID namespace) minus this process's own CPU time.
    """

    def __enter__(self):
        self.b0, self.t0 = _proc_stat()
        self.own0 = _own_cpu()
        self.w0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        b1, t1 = _proc_stat()
        own1 = _own_cpu()
        wall = time.perf_counter() - self.w0
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        busy = (b1 - self.b0) / hz
        self.foreign = max(0.0, (busy - (own1 - self.own0)) / wall) if wall > 0 else 0.0
        return False


def machine_busy(seconds: float = 1.0) -> float:
    """Cores busy with other work right now (sampled over ``seconds``)."""
    with LoadProbe() as p:
        time.sleep(seconds)
    return p.foreign


def wait_quiet(timeout: float, threshold: float = 0.2, sample: float = 1.0) -> float:
    """Wait (up to ``timeout`` s) until other processes use < ``threshold`` cores; returns the last reading."""
    t0 = time.perf_counter()
    busy = machine_busy(sample)
    while busy >= threshold and time.perf_counter() - t0 < timeout:
        busy = machine_busy(sample)
    return busy


# ---------------------------------------------------------------- timing

def sync(device: Any = None) -> None:
    """Wait for queued GPU work (no-op on CPU): timings of CUDA work must synchronize."""
    import torch
    if torch.cuda.is_available() and (device is None or str(device).startswith("cuda")):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], device: Any = None) -> tuple:
    """(seconds, result) of one call; CUDA-synchronized before and after on a GPU."""
    sync(device)
    t = time.perf_counter()
    r = fn()
    sync(device)
    return time.perf_counter() - t, r


def summarize(times: Sequence[float]) -> dict:
    ts = sorted(times)
    return {"median": statistics.median(ts), "min": ts[0], "max": ts[-1], "n": len(ts), "all": list(times)}


def fmt_s(t: Optional[float]) -> str:
    if t is None or (isinstance(t, float) and math.isnan(t)):
        return "-"
    return f"{t:.3f}" if t < 10 else f"{t:.1f}"


# ---------------------------------------------------------------- memory

def _status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss() -> int:
    """Resident set size now, bytes."""
    kb = _status_kb("VmRSS")
    return (kb or 0) * 1024


def peak_rss() -> int:
    """Peak resident set size (since start or the last ``reset_peak_rss``), bytes."""
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mb(nbytes: Optional[float]) -> str:
    """Bytes as MiB (2**20), the unit of every memory column."""
    return "-" if nbytes is None else f"{nbytes / 2 ** 20:.0f}"


# ---------------------------------------------------------------- the benchmark net

def _scaled_fixture_prototxt(dst: Path, size: int = 500) -> Path:
    """FCN-8s deploy prototxt at the real widths, from the reduced-width Caffe fixture."""
    from fcn_repro.caffe.prototxt import parse_prototxt, write_prototxt
    src = REPO / "tests" / "fixtures" / "caffe" / "fcn8s.prototxt"
    net = parse_prototxt(str(src))
    for lp in net.getall("layer"):
        t = str(lp.get("type", ""))
        if t == "Convolution":
            cp = lp.sub("convolution_param")
            n = int(cp.get("num_output"))
            if n not in FIXTURE_TO_REAL_WIDTH:
                raise ValueError(f"{src}: layer {lp.get('name')!r} has an unexpected width {n}")
            cp.set("num_output", FIXTURE_TO_REAL_WIDTH[n])
        elif t == "Input":
            shp = lp.sub("input_param").sub("shape")
            dims = shp.getall("dim")
            shp.remove("dim")
            for d in [1, 3, size, size] if len(dims) == 4 else dims:
                shp.add("dim", d)
    write_prototxt(dst, net)
    return dst


def bench_prototxt() -> Path:
    """The FCN-8s deploy prototxt the suite runs (copied into the cache dir)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    dst = CACHE / "fcn8s-deploy.prototxt"
    src = REPO / "prototxt" / "fcn8s" / "deploy.prototxt"
    if src.is_file():
        text = src.read_text()
        if not dst.is_file() or dst.read_text() != text:
            from fcn_repro.outputs import output_file
            with output_file(dst, 0, "w") as f:
                f.write(text)
        return dst
    return _scaled_fixture_prototxt(CACHE / "fcn8s-deploy-scaled.prototxt")


def bilinear_kernel(k: int) -> np.ndarray:
    """FCN's bilinear upsampling kernel of size k (FACTS.md)."""
    f = math.ceil(k / 2)
    c = f - 1 if k % 2 == 1 else f - 0.5
    r = np.arange(k, dtype=np.float64)
    w1 = 1 - np.abs(r - c) / f
    return np.outer(w1, w1)


def generate_weights(prototxt: Path, seed: int = 0) -> tuple:
    """Seeded weights for every parameter blob of ``prototxt``: ({layer: [arrays]}, {layer: type}).

    Convolutions: He-scaled normal (std sqrt(2 / fan_in)), biases normal with
    std 0.1; Deconvolutions: FCN's bilinear kernel on the channel diagonal
    (zeros elsewhere), as the real nets have; Scale: its constant 1 (a real
    at-once net stores 0.01 / 0.0001, any value times the same input works
    for timing). Shapes come from the net builder.
    """
    from fcn_repro.caffe.net import Net
    net = Net(str(prototxt), seed=seed)
    rng = np.random.default_rng(seed)
    weights, types = {}, {}
    for name in net.layer_names:
        params = net.params.get(name)
        if not params:
            continue
        t = net.layer(name).type_name
        types[name] = t
        blobs = []
        for i, p in enumerate(params):
            shape = tuple(p.shape)
            if t == "Deconvolution" and i == 0:
                w = np.zeros(shape, np.float32)
                kern = bilinear_kernel(shape[2]).astype(np.float32)
                for c in range(min(shape[0], shape[1])):
                    w[c, c] = kern
            elif i == 0 and len(shape) == 4:
                fan_in = int(np.prod(shape[1:]))
                w = rng.standard_normal(shape, dtype=np.float32)
                w *= np.float32(math.sqrt(2.0 / fan_in))
            elif t == "Scale":
                w = np.ones(shape, np.float32)
            else:
                w = (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.1))
            blobs.append(w)
        weights[name] = blobs
    del net
    return weights, types


def bench_model(seed: int = 0, progress: bool = True) -> tuple:
    """(prototxt, caffemodel) of the benchmark FCN-8s; the caffemodel is generated once.

    Written by the project's writer (fcn_repro.caffe.save_weights) into
    CACHE (~/.cache/fcn_repro/bench, or $FCN_REPRO_BENCH_CACHE): ~538 MB,
    never inside the repository. A JSON stamp next to it records how it was
    made; a missing or different stamp regenerates it.
    """
    proto = bench_prototxt()
    model = CACHE / f"fcn8s-bench-seed{seed}.caffemodel"
    stamp = model.with_suffix(".json")
    want = {"prototxt": proto.name, "prototxt_bytes": proto.stat().st_size, "seed": seed, "generator": 1}
    if model.is_file() and stamp.is_file():
        try:
            have = json.loads(stamp.read_text())
            if {k: have.get(k) for k in want} == want and have.get("bytes") == model.stat().st_size:
                return proto, model
        except (ValueError, OSError):
            pass
    from fcn_repro.caffe import save_weights
    if progress:
        print(f"[bench] generating {model} (seeded random FCN-8s weights, written by "
              "fcn_repro.caffe.save_weights) ...", file=sys.stderr, flush=True)
    t = time.perf_counter()
    weights, types = generate_weights(proto, seed)
    save_weights(model, weights, types=types, net_name="FCN-8s (benchmark, random weights)")
    del weights
    from fcn_repro.outputs import output_file
    with output_file(stamp, 0, "w") as f:
        json.dump(dict(want, bytes=model.stat().st_size, seconds=round(time.perf_counter() - t, 1)), f)
    if progress:
        print(f"[bench] wrote {model.stat().st_size:,} bytes in {time.perf_counter() - t:.1f} s",
              file=sys.stderr, flush=True)
    return proto, model


def bench_input(size: tuple = (500, 500), seed: int = 0) -> np.ndarray:
    """A deterministic image-like (1, 3, H, W) float32 input, preprocessed as FCN's VOC layer does.

    Smooth random colour fields plus noise (so the net's activations look
    like an image's, not white noise), uint8 RGB -> BGR -> minus the VOC mean.
    """
    h, w = size
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, size=(h // 25 + 2, w // 25 + 2, 3))
    ys = np.linspace(0, low.shape[0] - 1.001, h)
    xs = np.linspace(0, low.shape[1] - 1.001, w)
    y0, x0 = ys.astype(int), xs.astype(int)
    fx = (xs - x0)[None, :, None]
    out = np.empty((1, 3, h, w), np.float32)
    mean = MEAN_BGR.astype(np.float32)[:, None, None]
    # In bands of rows (the same values as all at once: the noise is drawn in the same order), so
    # that making a 12 MP input does not itself peak at several GB of float64 temporaries.
    step = max(1, (1 << 22) // max(1, 3 * w))
    for r in range(0, h, step):
        yy, fy = y0[r:r + step], (ys - y0)[r:r + step, None, None]
        img = (low[yy][:, x0] * (1 - fy) * (1 - fx) + low[yy + 1][:, x0] * fy * (1 - fx)
               + low[yy][:, x0 + 1] * (1 - fy) * fx + low[yy + 1][:, x0 + 1] * fy * fx)
        img = np.clip(img + rng.normal(0, 12, size=img.shape), 0, 255).astype(np.uint8)
        out[0, :, r:r + step] = img[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) - mean
    return out


def max_rel_diff(a: np.ndarray, ref: np.ndarray) -> float:
    """max |a - ref| / max |ref| (the scale-relative error the suite reports)."""
    a = np.asarray(a, np.float64)
    ref = np.asarray(ref, np.float64)
    if a.shape != ref.shape:
        return float("nan")
    den = np.abs(ref).max()
    return float(np.abs(a - ref).max() / den) if den > 0 else float(np.abs(a - ref).max())


# ---------------------------------------------------------------- subprocesses

def run_json(cmd: Sequence[str], timeout: float = 1800, env: Optional[dict] = None) -> dict:
    """Run a worker command that prints one JSON object on its last stdout line."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    if env:
        e.update(env)
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=e, cwd=str(REPO))
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(lines[-1])


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], file=None) -> None:
    """A GitHub-markdown table (so that it pastes into RESULTS.md as printed)."""
    file = file or sys.stdout
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    width = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, width)) + " |"
    print(line(cells[0]), file=file)
    print("|" + "|".join("-" * (w + 2) for w in width) + "|", file=file)
    for r in cells[1:]:
        print(line(r), file=file)
    file.flush()
