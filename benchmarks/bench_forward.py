"""FCN-8s forward, side by side: fcn_repro (fast / fused / unfused) vs plain PyTorch vs OpenCV dnn.

    python benchmarks/bench_forward.py [--quick] [--repeats N] [--size 500] [--device cpu|cuda]
                                       [--peers fast,fused,unfused,torch,opencv,onnxruntime] [--json FILE]

All peers run the same FCN-8s (full width: 64..512 channels, fc 4096, 21
classes) from the same deploy prototxt and the same generated .caffemodel
(~538 MB, see common.bench_model) on the same 500x500 input:

* ``fast``     fcn_repro.fast.optimize(Net(...)): the fast inference path
* ``fast_avx2`` the same with the C++ kernels' AVX2 code (the instruction set
               chosen at run time, lowered for this row): on an AVX-512 CPU
               the two rows give both kinds of CPU as a ratio in one run
* ``fused``    fcn_repro.caffe.Net(..., fuse=True).forward: the plain path,
               Deconvolution->Crop and Crop->Eltwise fused into fcn_repro.ops
* ``unfused``  the same net with fuse=False (every Caffe layer on its own)
* ``torch``    a plain eager PyTorch FCN-8s written below (conv2d, max_pool2d
               ceil_mode, conv_transpose2d, slicing, add): "Caffe-class" work
* ``opencv``   cv2.dnn.readNetFromCaffe(prototxt, caffemodel) (OpenCV 4.x;
               OpenCV 5 dropped the Caffe importer)
* ``onnxruntime`` the net exported by fcn_repro.export.to_onnx (any input
               size), run by onnxruntime's CPU provider (CPU only)

Timings: one process, peers interleaved round-robin (so that load from
other processes hits all of them alike), a warm-up forward each first, then
the median of ``--repeats`` forwards. Memory: each peer again in a fresh
subprocess (load, then one forward), reporting its RSS after loading and its
peak RSS during the forward. Differences: max |peer - ref| / max |ref|
against fcn_repro's fused (plain) output, and the share of pixels whose
argmax class agrees with it.

On a GPU (``--device cuda``, default when one is present) the torch-based
peers run there (timings synchronize the device), the card's fp32 GEMM rate
is measured first and the FLOP floor (Caffe's FLOPs / that rate) is printed
with the ratio to it; ``--tf32`` adds a TF32 row with its fidelity.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PEERS = ("fast", "fast_avx2", "fused", "unfused", "torch", "opencv", "onnxruntime")
LABELS = {
    "fast": "fcn_repro fast (optimize)",
    "fast_avx2": "fcn_repro fast, AVX2 kernels (AVX-512 off)",
    "fused": "fcn_repro plain, fused",
    "unfused": "fcn_repro plain, fuse=False",
    "torch": "plain PyTorch eager FCN-8s",
    "opencv": "OpenCV dnn (readNetFromCaffe)",
    "onnxruntime": "onnxruntime CPU (fcn_repro.export.to_onnx file)",
    "fast_tf32": "fcn_repro fast, TF32",
}


# ---------------------------------------------------------------- the plain PyTorch peer

VGG = [("conv1_1", 100), ("conv1_2", 1), "pool1", ("conv2_1", 1), ("conv2_2", 1), "pool2",
       ("conv3_1", 1), ("conv3_2", 1), ("conv3_3", 1), "pool3",
       ("conv4_1", 1), ("conv4_2", 1), ("conv4_3", 1), "pool4",
       ("conv5_1", 1), ("conv5_2", 1), ("conv5_3", 1), "pool5"]


def caffe_pool_size(n: int, k: int = 2, s: int = 2) -> int:
    """Caffe's pooled size (CEIL, no pad): ceil((n - k) / s) + 1."""
    return -((k - n) // s) + 1


def plain_fcn8s(weights: dict, device: str = "cpu", mkldnn_trunk: bool = False):
    """FCN-8s in plain eager PyTorch (an nn.Module): what a straightforward port computes.

    Crop offsets are FCN-8s's (Caffe's coord_map: score_pool4c 5,
    score_pool3c 9, score 31); the pools use ceil_mode, checked against
    Caffe's sizes on every call. ``mkldnn_trunk``: the trunk runs on
    oneDNN-layout tensors (for torch.utils.mkldnn.to_mkldnn, which prepacks
    the convolution weights); the score layers and upsampling stay dense.
    """
    import torch
    from torch import nn
    import torch.nn.functional as F

    def conv2d(w, b, pad=0):
        # Built empty (no random init of 538 MB), then given the file's values.
        conv = torch.nn.utils.skip_init(nn.Conv2d, w.shape[1], w.shape[0], tuple(w.shape[2:]), padding=pad)
        conv.weight.data = torch.from_numpy(np.array(w, np.float32))
        conv.bias.data = torch.from_numpy(np.array(b, np.float32))
        return conv

    class PlainFCN8s(nn.Module):
        # The weights are an argument, not a closure variable: the file's
        # (memory-mapped) arrays must not stay referenced once copied.
        def __init__(self, weights):
            super().__init__()
            self.trunk = nn.ModuleDict()
            for item in VGG + [("fc6", 0), ("fc7", 0)]:
                if isinstance(item, str):
                    continue
                name, pad = item
                self.trunk[name] = conv2d(*weights[name], pad=pad)
            self.score = nn.ModuleDict()
            for name in ("score_fr", "score_pool4", "score_pool3"):
                self.score[name] = conv2d(*weights[name])
            for name in ("upscore2", "upscore_pool4", "upscore8"):
                self.register_buffer(name, torch.from_numpy(np.array(weights[name][0], np.float32)))
            self.mkldnn_trunk = mkldnn_trunk

        def forward(self, x):
            h = x.to_mkldnn() if self.mkldnn_trunk else x
            pools = {}
            for item in VGG:
                if isinstance(item, str):
                    n = tuple(h.shape[2:])
                    h = F.max_pool2d(h, 2, 2, ceil_mode=True)
                    want = tuple(caffe_pool_size(v) for v in n)
                    if tuple(h.shape[2:]) != want:
                        raise AssertionError(f"{item}: max_pool2d(ceil_mode) gave {tuple(h.shape[2:])} for {n}, "
                                             f"Caffe gives {want}")
                    if item in ("pool3", "pool4"):
                        pools[item] = h.to_dense() if self.mkldnn_trunk else h
                else:
                    h = torch.relu(self.trunk[item[0]](h))
            h = torch.relu(self.trunk["fc6"](h))
            h = torch.relu(self.trunk["fc7"](h))
            if self.mkldnn_trunk:
                h = h.to_dense()
            h = self.score["score_fr"](h)
            up = F.conv_transpose2d(h, self.upscore2, stride=2)
            s4 = self.score["score_pool4"](pools["pool4"])
            up = up + s4[:, :, 5:5 + up.shape[2], 5:5 + up.shape[3]]
            up = F.conv_transpose2d(up, self.upscore_pool4, stride=2)
            s3 = self.score["score_pool3"](pools["pool3"])
            up = up + s3[:, :, 9:9 + up.shape[2], 9:9 + up.shape[3]]
            up = F.conv_transpose2d(up, self.upscore8, stride=8)
            return up[:, :, 31:31 + x.shape[2], 31:31 + x.shape[3]]

    m = PlainFCN8s(weights).to(device).eval()
    for prm in m.parameters():
        prm.requires_grad_(False)
    if mkldnn_trunk:
        from torch.utils import mkldnn as mkldnn_utils
        m.trunk = mkldnn_utils.to_mkldnn(m.trunk)
    return m


# ---------------------------------------------------------------- building peers

def onnxruntime_peer(proto: Path, model: Path, device: str):
    """(run, note): the net exported by fcn_repro.export.to_onnx (the any-size file) in onnxruntime's CPU provider."""
    import tempfile

    import onnxruntime as ort
    import torch
    from fcn_repro.caffe.net import Net
    from fcn_repro.export import to_onnx
    if device.startswith("cuda"):
        raise RuntimeError("the onnxruntime row is a CPU row (CPUExecutionProvider)")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fcn8s.onnx"
        to_onnx(Net(str(proto), str(model)), path)
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    gc.collect()

    def run(x):
        return sess.run(None, {"data": x})[0]
    return run, f"onnxruntime {ort.__version__}, CPUExecutionProvider, {opts.intra_op_num_threads} threads"


def build_peer(name: str, proto: Path, model: Path, device: str, shared: dict):
    """A callable x(np.ndarray (1,3,H,W)) -> np.ndarray (1,21,H,W) for ``name``, plus a note."""
    if name == "onnxruntime":
        return onnxruntime_peer(proto, model, device)
    if name == "opencv":
        import cv2
        import torch
        if not hasattr(cv2.dnn, "readNetFromCaffe"):
            raise RuntimeError(f"OpenCV {cv2.__version__} has no Caffe importer (removed in 5.x): "
                               "pip install 'opencv-python-headless<5'")
        cv2.setNumThreads(torch.get_num_threads())
        net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

        def run(x):
            net.setInput(x)
            return net.forward()
        return run, f"OpenCV {cv2.__version__}, {cv2.getNumThreads()} threads, CPU"

    import torch
    dev = torch.device(device)
    if name == "torch":
        from fcn_repro.caffe import load_weights
        m = plain_fcn8s(load_weights(str(model)), device)
        gc.collect()

        def run(x):
            with torch.inference_mode():
                y = m(torch.from_numpy(x).to(dev))
                common.sync(device)
                return y.cpu().numpy()
        return run, "conv2d/max_pool2d(ceil)/conv_transpose2d/slice/add, NCHW"

    # fcn_repro peers share one Net (the fast wrapper shares its parameters).
    from fcn_repro import ops
    from fcn_repro.caffe.net import Net
    from fcn_repro.fast import optimize
    if "net" not in shared:
        shared["net"] = Net(str(proto), str(model)).to(dev).eval()
    net = shared["net"]
    info = ops.extension_info()
    ext = "extension ops" if info.get("cuda" if device.startswith("cuda") else "cpu") else "pure-PyTorch ops (extension missing)"
    if name in ("fast", "fast_tf32", "fast_avx2"):
        from fcn_repro.fast.winograd import cpu_isa
        fast = optimize(net)
        tf32 = name == "fast_tf32"
        isa = cpu_isa()
        if name == "fast_avx2":
            if device.startswith("cuda") or isa == "none":
                raise RuntimeError("the AVX2 row needs the CPU kernels (a CPU with AVX2)")
            isa = "avx2"

        def run(x):
            net.fuse = True
            old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            old_isa = torch.ops.fcn_repro._set_cpu_isa(isa) if isa != "none" else None
            if tf32:
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            try:
                with torch.inference_mode():
                    y = fast(data=torch.from_numpy(x).to(dev))["score"]
                    common.sync(device)
                    return y.cpu().numpy()
            finally:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
                if old_isa is not None:
                    torch.ops.fcn_repro._set_cpu_isa(old_isa)
        opts = ", ".join(f"{k}={v}" for k, v in fast.options.items())
        return run, f"{opts}; CPU kernels: {isa}; {ext}"
    fuse = name == "fused"

    def run(x):
        net.fuse = fuse
        with torch.inference_mode():
            y = net(data=torch.from_numpy(x).to(dev))["score"]
            common.sync(device)
            return y.cpu().numpy()
    return run, ext


# ---------------------------------------------------------------- rates

def gemm_rate(device: str, n: int = 4096, repeats: int = 5) -> float:
    """fp32 GEMM rate (FLOP/s, best of ``repeats``) of an n x n x n matmul (TF32 off on GPUs)."""
    import torch
    dev = torch.device(device)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        a = torch.randn(n, n, device=dev)
        b = torch.randn(n, n, device=dev)
        a @ b
        best = float("inf")
        for _ in range(repeats):
            dt, _ = common.time_call(lambda: a @ b, device)
            best = min(best, dt)
        return 2 * n ** 3 / best
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def net_flops(proto: Path, size: tuple) -> dict:
    """Convolution FLOPs of the net: as Caffe computes them, and what the fast path computes."""
    from fcn_repro.caffe.net import Net
    from fcn_repro.fast import count_flops
    net = Net(str(proto))
    full = sum(count_flops(net, (1, 3) + tuple(size), background=False).values())
    fast = sum(count_flops(net, (1, 3) + tuple(size), background=True).values())
    # Deconvolutions (upscore*): Caffe computes the full transposed convolutions.
    return {"caffe": full, "fast": fast}


# ---------------------------------------------------------------- variants (ideas tried)

VARIANTS = [
    ("fast (default)", "fast", {}),
    ("fast, winograd=False (direct 3x3 everywhere)", "fast", {"winograd": False}),
    ("fast, winograd='f2' (F(2x2,3x3))", "fast", {"winograd": "f2"}),
    ("fast, winograd='f3' (F(3x3,3x3))", "fast", {"winograd": "f3"}),
    ("fast, winograd='f6' (F(6x6,3x3), opt-in)", "fast", {"winograd": "f6"}),
    ("fast, Winograd on 512-channel layers only", "fast", {"winograd_min_channels": 512}),
    ("fast, views=False (halo copies)", "fast", {"views": False}),
    ("fast, gemm=False (fc6/fc7/1x1 in oneDNN)", "fast", {"gemm": False}),
    ("fast, conv='torch' (F.conv2d channels-last, ReLU apart)", "fast", {"conv": "torch"}),
    ("fast, conv='torch', NCHW", "fast", {"conv": "torch", "channels_last": False}),
    ("fast, background=False (kernels only, every pixel)", "fast", {"background": False}),
    ("plain torch, NCHW", "torch", {}),
    ("plain torch, channels_last", "torch_cl", {}),
    ("plain torch, trunk torch.utils.mkldnn.to_mkldnn", "torch_mkldnn", {}),
    ("plain torch, jit.trace+freeze+optimize_for_inference", "torch_jit", {}),
    ("plain torch, torch.compile (inductor)", "torch_compile", {}),
]


def build_variant(kind: str, opts: dict, proto: Path, model: Path, shared: dict, x_np):
    """(callable on a torch tensor, first-call seconds) for one variant (CPU)."""
    import torch
    x = torch.from_numpy(x_np)
    if kind == "fast":
        from fcn_repro.caffe.net import Net
        from fcn_repro.fast import optimize
        if "net" not in shared:
            shared["net"] = Net(str(proto), str(model)).eval()
        f = optimize(shared["net"], **opts)
        fn = lambda t: f(data=t)["score"]  # noqa: E731
    else:
        from fcn_repro.caffe import load_weights
        if "weights" not in shared:
            shared["weights"] = load_weights(str(model))
        m = plain_fcn8s(shared["weights"], "cpu", mkldnn_trunk=(kind == "torch_mkldnn"))
        if kind == "torch_cl":
            m = m.to(memory_format=torch.channels_last)
            fn = lambda t: m(t.contiguous(memory_format=torch.channels_last))  # noqa: E731
        elif kind == "torch_jit":
            with torch.no_grad():
                tr = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(m, x)))
            fn = tr
        elif kind == "torch_compile":
            fn = torch.compile(m)
        else:
            fn = m
    t = time.perf_counter()
    with torch.no_grad():
        fn(x)
    return fn, time.perf_counter() - t


KERNELS = ("oneDNN", "F(2x2)", "F(3x3)", "F(4x4)", "F(6x6)", "F(4x4) AVX2")


def kernel_table(proto: Path, size: tuple, repeats: int) -> list:
    """3x3 layers at their fast-path window sizes: oneDNN direct vs the C++ Winograd kernels
    (F(m x m, 3x3), m = 2, 3, 4, 6, and F(4x4) with the AVX2 code), each one's error against float64."""
    import torch
    import torch.nn.functional as F
    from fcn_repro.caffe.net import Net
    from fcn_repro.fast import FastNet, walk
    from fcn_repro.fast.winograd import KINDS, WinogradCpu, cpu_isa
    isa = cpu_isa()
    if isa == "none":
        return []
    net = Net(str(proto))
    f = FastNet(net)
    shapes = {"data": (1, 3) + tuple(size)}
    want = f.schedule(shapes)
    steps = f.steps()
    rows = []
    gen = torch.Generator().manual_seed(0)
    cp = torch.ops.mkldnn._convolution_pointwise
    for i, (gi, _, _) in walk(steps, shapes).items():
        s, m = steps[i], steps[i].layer
        if s.kind != "conv" or tuple(m.window.kernel) != (3, 3) or max(gi.c, m.num_output) < 64:
            continue
        win = want[i]
        h, w = win[1] - win[0], win[3] - win[2]
        c, k = gi.c, m.num_output
        x = torch.relu(torch.randn(1, c, h + 2, w + 2, generator=gen)).contiguous(memory_format=torch.channels_last)
        wt = torch.randn(k, c, 3, 3, generator=gen) * (2.0 / (9 * c)) ** 0.5
        bs = torch.randn(k, generator=gen) * 0.1
        wcl = wt.contiguous(memory_format=torch.channels_last)
        ref = F.relu(F.conv2d(x.double(), wt.double(), bs.double()))
        wk = {f"F({mm}x{mm})": WinogradCpu(wt, mm) for mm in KINDS.values()}

        def on(kern, name):
            def call():
                old = torch.ops.fcn_repro._set_cpu_isa(name)
                try:
                    return kern(x, bs, True)
                finally:
                    torch.ops.fcn_repro._set_cpu_isa(old)
            return call
        calls = {"oneDNN": lambda: cp(x, wcl, bs, [0, 0], [1, 1], [1, 1], 1, "relu", [], "")}
        calls.update({key: on(kern, isa) for key, kern in wk.items()})
        calls["F(4x4) AVX2"] = on(wk["F(4x4)"], "avx2")
        best, err = {}, {}
        with torch.no_grad():
            for key, fn in calls.items():
                y = fn()
                err[key] = float((y.double() - ref).abs().max() / ref.abs().max())
                best[key] = float("inf")
            for _ in range(repeats):
                for key, fn in calls.items():
                    dt, _ = common.time_call(fn)
                    best[key] = min(best[key], dt)
        flops = 2 * h * w * c * k * 9
        rows.append({"layer": m.name, "shape": f"{c}->{k} {h}x{w}", "gflop": flops / 1e9, "best": best, "err": err,
                     "isa": isa})
    return rows


def variants(args) -> dict:
    import torch
    proto, model = common.bench_model()
    size = (args.size, args.size)
    x = common.bench_input(size)
    repeats = args.repeats or (2 if args.quick else 3)
    shared, fns, first, outs, failed = {}, {}, {}, {}, {}
    for label, kind, opts in VARIANTS:
        try:
            fns[label], first[label] = build_variant(kind, opts, proto, model, shared, x)
            with torch.no_grad():
                outs[label] = fns[label](torch.from_numpy(x)).numpy()
            print(f"[bench]   {label}: first call {first[label]:.1f} s", file=sys.stderr, flush=True)
        except Exception as e:
            failed[label] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            print(f"[bench]   {label}: FAILED {failed[label]}", file=sys.stderr, flush=True)
    order = [l for l, _, _ in VARIANTS if l in fns]
    times = {l: [] for l in order}
    loads = {l: [] for l in order}
    xt = torch.from_numpy(x)
    with torch.no_grad():
        for r in range(repeats):
            if args.wait_quiet > 0:
                common.wait_quiet(args.wait_quiet)
            for l in order:
                time.sleep(0.3)
                with common.LoadProbe() as lp:
                    dt, _ = common.time_call(lambda: fns[l](xt))
                times[l].append(dt)
                loads[l].append(lp.foreign)
            print(f"[bench]   variants round {r + 1}/{repeats}", file=sys.stderr, flush=True)
    ref = outs.get(order[0]) if order else None
    res = {"machine": common.machine_info(), "size": list(size), "repeats": repeats, "variants": {}, "failed": failed}
    for l in order:
        res["variants"][l] = {"time": common.summarize(times[l]), "first_call": first[l],
                              "foreign_load": float(np.median(loads[l])),
                              "max_rel_diff": common.max_rel_diff(outs[l], ref)}
    res["kernels"] = kernel_table(proto, size, repeats)
    res["layers"] = layer_profile(shared, x, [("fast (default)", {}), ("winograd=False", {"winograd": False}),
                                              ("winograd='f2'", {"winograd": "f2"}),
                                              ("winograd='f6'", {"winograd": "f6"})])
    report_variants(res)
    if args.json:
        from fcn_repro.outputs import output_file
        with output_file(args.json, 0, "w") as f:
            json.dump(res, f, indent=1, default=str)
    return res


def layer_profile(shared: dict, x_np, configs: list) -> dict:
    """Per-layer milliseconds of fast-path configurations (torch.profiler ranges, best of 2 forwards)."""
    import torch
    from torch.profiler import profile
    from fcn_repro.fast import optimize
    net = shared.get("net")
    if net is None:
        return {}
    x = torch.from_numpy(x_np)
    out = {}
    with torch.no_grad():
        for label, opts in configs:
            f = optimize(net, **opts)
            f(data=x)
            names = [s.step.name for s in f.steps()]
            best: dict = {}
            for _ in range(2):
                with profile() as prof:
                    f(data=x)
                for e in prof.key_averages():
                    if e.key in names:
                        best[e.key] = min(best.get(e.key, float("inf")), e.cpu_time_total / 1e3)
            out[label] = {n: best[n] for n in names if n in best}
    return out


def report_variants(res: dict) -> None:
    info = res["machine"]
    print()
    print(f"## FCN-8s {res['size'][0]}x{res['size'][1]} forward, variants ({info['date']}, {info['cpu']}, "
          f"{info['cores']} cores, torch {info['torch']})")
    print()
    v = res["variants"]
    base = next(iter(v.values()))["time"]["median"] if v else None
    rows = [[l, common.fmt_s(d["time"]["median"]), common.fmt_s(d["time"]["min"]),
             f"{d['time']['median'] / base:.2f}" if base else "-", common.fmt_s(d["first_call"]),
             f"{d['foreign_load']:.1f}", f"{d['max_rel_diff']:.1e}"] for l, d in v.items()]
    common.print_table(["variant", "median s", "min s", "x fast default", "first call s", "other load (cores)",
                        "max rel diff vs fast"], rows)
    for l, why in res.get("failed", {}).items():
        print(f"- {l}: failed ({why})")
    if res.get("kernels"):
        print()
        print("3x3 layers at the fast path's window sizes (fcn_repro.fast kernels), one layer each, best of the runs:")
        print()
        rows = []
        tot = {}
        for r in res["kernels"]:
            for k, t in r["best"].items():
                tot[k] = tot.get(k, 0.0) + t
            rows.append([r["layer"], r["shape"], f"{r['gflop']:.1f}"] + [
                f"{1e3 * r['best'][k]:.0f} ms ({r['gflop'] / r['best'][k]:.0f} GF/s eq., err {r['err'][k]:.1e})"
                for k in KERNELS])
        rows.append(["total", "", f"{sum(r['gflop'] for r in res['kernels']):.0f}"] +
                    [f"{1e3 * tot[k]:.0f} ms" for k in KERNELS])
        isa = res["kernels"][0]["isa"]
        common.print_table(["layer", "Cin->Cout window", "GFLOP direct", "oneDNN direct (fused ReLU)"] +
                           [f"C++ {k} ({isa})" for k in KERNELS[1:-1]] + ["C++ F(4x4) (avx2)"], rows)
        print("err: max |y - float64 reference| / max |reference| of that one layer. "
              f"AVX2 / {isa} time, F(4x4), all layers: {tot['F(4x4) AVX2'] / tot['F(4x4)']:.2f}")
    lp = res.get("layers") or {}
    if lp:
        print()
        print("Where the fast path's time goes (ms per layer, torch.profiler, best of 2):")
        print()
        labels = list(lp)
        names = [n for n in next(iter(lp.values())) if any(lp[l].get(n, 0) >= 1 for l in labels)]
        rows = [[n] + [f"{lp[l].get(n, 0):.0f}" for l in labels] for n in names]
        rows.append(["total"] + [f"{sum(lp[l].values()):.0f}" for l in labels])
        common.print_table(["layer"] + labels, rows)
    print()


# ---------------------------------------------------------------- worker (memory)

def worker(args) -> None:
    """One peer in a fresh process: load, one forward; print JSON with times and RSS."""
    proto, model = common.bench_model(progress=False)
    x = common.bench_input((args.size, args.size))
    rss0 = common.current_rss()
    t = time.perf_counter()
    run, _ = build_peer(args.worker, proto, model, args.device, {})
    load_s = time.perf_counter() - t
    gc.collect()
    rss_loaded = common.current_rss()
    can_reset = common.reset_peak_rss()
    t = time.perf_counter()
    run(x)
    fwd_s = time.perf_counter() - t
    peak_fwd = common.peak_rss()
    out = {"peer": args.worker, "load_s": load_s, "first_forward_s": fwd_s, "rss_start": rss0,
           "rss_loaded": rss_loaded, "peak_forward": peak_fwd, "peak_reset": can_reset}
    import torch
    if args.device.startswith("cuda") and torch.cuda.is_available():
        out["cuda_peak"] = torch.cuda.max_memory_allocated()
    print(json.dumps(out))


# ---------------------------------------------------------------- main

def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 timed forwards per peer instead of 5")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--size", type=int, default=500)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--no-memory", action="store_true", help="skip the per-peer subprocess memory runs")
    ap.add_argument("--tf32", action="store_true", help="on a GPU, add a TF32 row (fidelity reported)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="before each timed round, wait up to S seconds for other processes to use < 0.2 cores")
    ap.add_argument("--variants", action="store_true",
                    help="time the fast path's options and other ideas (CPU), and 3x3 kernels incl. Winograd")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import torch
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("[bench] no CUDA device here: the GPU rows are skipped, running on the CPU", file=sys.stderr)
        args.device = "cpu"
    if args.worker:
        worker(args)
        return {}
    if args.variants:
        return variants(args)
    repeats = args.repeats or (2 if args.quick else 5)
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    bad = [p for p in peers if p not in PEERS]
    if bad:
        ap.error(f"unknown peers {bad}; known: {list(PEERS)}")
    if args.device.startswith("cuda"):
        if "opencv" in peers:
            peers.remove("opencv")      # OpenCV's pip wheels have no CUDA backend
        if args.tf32:
            peers.append("fast_tf32")

    info = common.machine_info()
    proto, model = common.bench_model()
    size = (args.size, args.size)
    x = common.bench_input(size)
    flops = net_flops(proto, size)
    print(f"[bench] forward: FCN-8s {size[0]}x{size[1]}, {model.stat().st_size:,}-byte caffemodel, "
          f"device {args.device}, {repeats} timed runs per peer", file=sys.stderr, flush=True)

    # ---- build, warm up, record outputs
    shared, runs, notes, outs, skipped = {}, {}, {}, {}, {}
    for p in peers:
        try:
            t = time.perf_counter()
            runs[p], notes[p] = build_peer(p, proto, model, args.device, shared)
            build_s = time.perf_counter() - t
            outs[p] = runs[p](x)
            print(f"[bench]   {p}: built in {build_s:.1f} s, warm-up forward done", file=sys.stderr, flush=True)
        except Exception as e:  # a peer that cannot run is reported, not fatal
            skipped[p] = f"{type(e).__name__}: {e}"
            runs.pop(p, None)
            print(f"[bench]   {p}: SKIPPED ({skipped[p][:200]})", file=sys.stderr, flush=True)
    order = [p for p in peers if p in runs]

    # ---- timed, interleaved
    times = {p: [] for p in order}
    foreign = {p: [] for p in order}
    for r in range(repeats):
        if args.wait_quiet > 0:
            common.wait_quiet(args.wait_quiet)
        rot = order[r % len(order):] + order[:r % len(order)] if order else []
        for p in rot:
            time.sleep(0.3)             # let other thread pools go idle (OpenMP spin-wait)
            with common.LoadProbe() as lp:
                dt, _ = common.time_call(lambda: runs[p](x), args.device)
            times[p].append(dt)
            foreign[p].append(lp.foreign)
        print(f"[bench]   round {r + 1}/{repeats}: " + ", ".join(f"{p} {times[p][-1]:.2f}s" for p in order),
              file=sys.stderr, flush=True)

    # ---- memory, each peer in its own process
    mem = {}
    if not args.no_memory:
        for p in order:
            if p == "fast_tf32":
                continue
            try:
                mem[p] = common.run_json([sys.executable, __file__, "--worker", p, "--size", str(args.size),
                                          "--device", args.device])
            except Exception as e:
                mem[p] = {"error": str(e)[-300:]}

    # ---- rates
    rate = None
    try:
        rate = gemm_rate(args.device)
    except Exception as e:
        print(f"[bench] GEMM rate not measured: {e}", file=sys.stderr)

    ref_name = "fused" if "fused" in outs else (order[0] if order else None)
    ref = outs.get(ref_name)
    res = {"machine": info, "device": args.device, "size": list(size), "repeats": repeats,
           "model_bytes": model.stat().st_size, "flops": flops, "gemm_rate": rate, "reference": ref_name,
           "peers": {}, "skipped": skipped}
    for p in order:
        s = common.summarize(times[p])
        d = {"label": LABELS[p], "note": notes[p], "time": s, "foreign_load": float(np.median(foreign[p])),
             "memory": mem.get(p)}
        if ref is not None:
            d["max_rel_diff"] = common.max_rel_diff(outs[p], ref)
            if p.startswith("fast") and ref_name == "fused" and outs[p].shape == ref.shape:
                from fcn_repro.fast.fidelity import REL, fidelity
                fd = fidelity(outs[p], ref, axis=1)
                d["fidelity"] = {"ok": fd.ok, "text": str(fd), "budget": REL}
            d["argmax_agree"] = float((outs[p].argmax(1) == ref.argmax(1)).mean()) if outs[p].shape == ref.shape else float("nan")
        res["peers"][p] = d
    report(res)
    if args.json:
        from fcn_repro.outputs import output_file
        with output_file(args.json, 0, "w") as f:
            json.dump(res, f, indent=1, default=str)
    return res


def report(res: dict) -> None:
    info = res["machine"]
    peers = res["peers"]
    print()
    print(f"## FCN-8s forward, {res['size'][0]}x{res['size'][1]}, {res['device']} "
          f"({info['date']}, {info['cpu']}, {info['cores']} cores, {info['simd']}, torch {info['torch']}, "
          f"{info['torch_threads']} threads)")
    fl = res["flops"]
    line = f"conv+fc FLOPs: {fl['caffe'] / 1e9:.0f} GFLOP as Caffe computes them, {fl['fast'] / 1e9:.0f} GFLOP in the fast path"
    if res.get("gemm_rate"):
        floor = fl["caffe"] / res["gemm_rate"]
        line += (f"; fp32 GEMM rate {res['gemm_rate'] / 1e9:.0f} GFLOP/s (4096^3 matmul, best of 5) -> "
                 f"a GEMM-rate Caffe forward needs {floor:.2f} s")
    print(line)
    print()
    fast_t = peers.get("fast", {}).get("time", {}).get("median")
    rows = []
    for p, d in peers.items():
        t = d["time"]["median"]
        m = d.get("memory") or {}
        ratio = f"{fast_t / t:.2f}" if fast_t else "-"
        rows.append([d["label"], common.fmt_s(t), common.fmt_s(d["time"]["min"]),
                     ratio, f"{d['foreign_load']:.1f}",
                     common.mb(m.get("rss_loaded")) if "error" not in m else "err",
                     common.mb(m.get("peak_forward")) if "error" not in m else "err",
                     f"{d.get('max_rel_diff', float('nan')):.1e}",
                     f"{100 * d.get('argmax_agree', float('nan')):.3f}%",
                     d["note"]])
    common.print_table(["peer", "median s", "min s", "fast/peer", "other load (cores)", "RSS loaded MiB",
                        "peak RSS fwd MiB", f"max rel diff vs {res['reference']}", "argmax agree", "notes"], rows)
    for p, why in res.get("skipped", {}).items():
        print(f"- {LABELS.get(p, p)}: not run ({why})")
    if fast_t:
        checks = []
        for p in ("fast", "fast_avx2"):
            if p not in peers:
                continue
            t = peers[p]["time"]["median"]
            for peer, target in (("opencv", 0.5), ("onnxruntime", 0.6), ("torch", 0.7)):
                if peer in peers:
                    r = t / peers[peer]["time"]["median"]
                    checks.append(f"{p} <= {target} x {peer}: {r:.2f} x -> {'MET' if r <= target else 'NOT MET'}")
            if "fidelity" in peers[p]:
                f = peers[p]["fidelity"]
                checks.append(f"{p} vs plain within the budget (max rel diff <= {f['budget']:.0e}, argmax "
                              f"kept but at near ties): {f['text']} -> {'MET' if f['ok'] else 'NOT MET'}")
        if res["device"].startswith("cuda") and res.get("gemm_rate"):
            floor = res["flops"]["caffe"] / res["gemm_rate"]
            checks.append(f"GPU: fast {fast_t / floor:.2f} x the fp32 FLOP floor ({floor * 1e3:.1f} ms) -> "
                          f"{'MET' if fast_t <= 1.5 * floor else 'NOT MET'} (target 1.5 x)")
        for c in checks:
            print(f"- target: {c}")
    print()


if __name__ == "__main__":
    main()
