"""Speed of the fcn_repro ops against the PyTorch composite they replace.

At FCN-8s sizes for a 500x500 input (blob sizes follow from the net: pad 100,
five ceil-mode pools, fc6 7x7):

    upscore2       deconv2d       21x16x16 -> 34x34     k4 s2
    upscore_pool4  deconv2d       21x34x34 -> 70x70     k4 s2
    upscore8+crop  deconv2d_crop  21x70x70 -> 568x568 kept 500x500 at offset 31, k16 s8
    fuse_pool4     crop_sum       21x34x34 + crop(21x44x44, offset 5)
    fuse_pool3     crop_sum       21x70x70 + crop(21x88x88, offset 9)

Composite = what a plain PyTorch port runs: F.conv_transpose2d, then slicing
(a view), then `+`; for crop_sum also the Caffe-style composite, whose Crop
layer materialises the cropped blob before the Eltwise SUM. The upsampling weights are FCN's: bilinear on the channel
diagonal, zero elsewhere (so our kernels take their diagonal path, after
checking the weight on every call); rows marked "general" use the same
weights with small off-diagonal noise (as the fcn8s fixture has), which forces
the general path. Forward only, under torch.no_grad(); the median of
--repeats timed samples after warm-up, ours and the composite alternating;
a sample is one call, or for ops of microseconds as many back-to-back calls
as fill 2 ms (the same count for both), timed together. On CUDA, also the crop_sum against the
memory-bandwidth floor: (bytes read + written) / (copy bandwidth measured
with a large device-to-device copy), and against a copy of the same bytes.

Usage: python benchmarks/bench_ops.py [--device cpu|cuda|all] [--repeats N]
Refuses to run (exit 2) if the extension is missing, since the numbers would be
the fallback's (override with --allow-fallback).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import fcn_repro.ops as ops


def bilinear_diag(c: int, k: int, dtype=torch.float32) -> torch.Tensor:
    f = (k + 1) // 2
    center = f - 1 if k % 2 == 1 else f - 0.5
    og = np.ogrid[:k, :k]
    filt = (1 - abs(og[0] - center) / f) * (1 - abs(og[1] - center) / f)
    w = torch.zeros(c, c, k, k, dtype=dtype)
    w[range(c), range(c)] = torch.from_numpy(filt).to(dtype)
    return w


def timeit(fn, device: str, repeats: int, min_warmup_s: float = 0.05, stat=statistics.median) -> float:
    """Median (or stat) seconds of one call of fn (after warm-up)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    n = 0
    while n < 3 or time.perf_counter() - t0 < min_warmup_s:
        fn()
        n += 1
    sync()
    times = []
    if device == "cuda":
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return stat(times)


def cases(device: str, batch: int):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    c = 21
    w4, w16 = bilinear_diag(c, 4).to(device), bilinear_diag(c, 16).to(device)
    n4 = (bilinear_diag(c, 4) + 1e-3 * torch.randn(c, c, 4, 4, generator=g)).to(device)
    n16 = (bilinear_diag(c, 16) + 1e-3 * torch.randn(c, c, 16, 16, generator=g)).to(device)
    fr, p4, up2 = r(batch, c, 16, 16), r(batch, c, 44, 44), r(batch, c, 34, 34)
    p3, up4 = r(batch, c, 88, 88), r(batch, c, 70, 70)
    out = []
    for tag, wa, wb in (("", w4, w16), (" general", n4, n16)):
        out += [
            (f"upscore2 deconv2d{tag}", f"{batch}x21x16x16 k4s2",
             lambda wa=wa: ops.deconv2d(fr, wa, None, 2),
             lambda wa=wa: F.conv_transpose2d(fr, wa, None, 2)),
            (f"upscore_pool4 deconv2d{tag}", f"{batch}x21x34x34 k4s2",
             lambda wa=wa: ops.deconv2d(up2, wa, None, 2),
             lambda wa=wa: F.conv_transpose2d(up2, wa, None, 2)),
            (f"upscore8+crop deconv2d_crop{tag}", f"{batch}x21x70x70 k16s8 ->500",
             lambda wb=wb: ops.deconv2d_crop(up4, wb, None, 8, 0, 1, 1, (31, 31), (500, 500)),
             lambda wb=wb: F.conv_transpose2d(up4, wb, None, 8)[:, :, 31:531, 31:531]),
        ]
    out += [
        ("fuse_pool4 crop_sum", f"{batch}x21x34x34 + 44x44@5",
         lambda: ops.crop_sum(up2, p4, 5), lambda: up2 + p4[:, :, 5:39, 5:39]),
        ("fuse_pool3 crop_sum", f"{batch}x21x70x70 + 88x88@9",
         lambda: ops.crop_sum(up4, p3, 9), lambda: up4 + p3[:, :, 9:79, 9:79]),
        # Caffe's layer-by-layer way: the Crop layer writes its own blob, then Eltwise SUM
        ("fuse_pool4 crop_sum vs Caffe-style", f"{batch}x21x34x34 + 44x44@5",
         lambda: ops.crop_sum(up2, p4, 5), lambda: up2 + p4[:, :, 5:39, 5:39].contiguous()),
        ("fuse_pool3 crop_sum vs Caffe-style", f"{batch}x21x70x70 + 88x88@9",
         lambda: ops.crop_sum(up4, p3, 9), lambda: up4 + p3[:, :, 9:79, 9:79].contiguous()),
    ]
    return out


def once(fn, device: str, calls: int = 1) -> float:
    """Seconds per call of ``calls`` back-to-back calls of fn (CUDA: between events around them)."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls


# One timed sample lasts at least this long: ops of a few microseconds are
# called back to back that many times per sample (the same count for ours and
# the composite), so that a sample measures the op, not the timer and the
# cache misses of a single cold call.
SAMPLE_S = 2e-3


def check_same(ours, composite, name):
    a, b = ours(), composite()
    err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
    if err > 1e-5:
        raise SystemExit(f"{name}: ours differs from the composite by {err:.2e} (relative); not timing it")


def copy_bandwidth(device: str, repeats: int) -> float:
    """Bytes per second of a large device-to-device copy (read + write counted)."""
    src = torch.empty(64 * 2**20, device=device)  # 256 MB
    dst = torch.empty_like(src)
    t = timeit(lambda: dst.copy_(src), device, repeats)
    return 2 * src.numel() * src.element_size() / t


def run(device: str, repeats: int, batch: int) -> None:
    print(f"\n== {device}" + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else
                             f" ({torch.get_num_threads()} threads)") + f", float32, batch {batch}")
    print("median (and min) of the timed samples (per call); ours and the composite alternate, sample by sample")
    print(f"{'op':38s} {'shape':28s} {'ours ms':>9s} {'composite ms':>13s} {'speedup':>8s} "
          f"{'(min: ours':>11s} {'composite':>10s} {'speedup)':>9s}")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.no_grad():
        for name, shape, ours, composite in cases(device, batch):
            check_same(ours, composite, name)
            fastest = min(timeit(ours, device, 3), timeit(composite, device, 3))
            calls = max(1, int(SAMPLE_S / max(fastest, 1e-7)))
            t_o, t_c = [], []
            for _ in range(repeats):  # interleaved, so that load changes hit both alike
                t_o.append(once(ours, device, calls))
                t_c.append(once(composite, device, calls))
            sync()
            mo, mc = statistics.median(t_o), statistics.median(t_c)
            print(f"{name:38s} {shape:28s} {mo * 1e3:9.3f} {mc * 1e3:13.3f} {mc / mo:7.2f}x "
                  f"{min(t_o) * 1e3:11.3f} {min(t_c) * 1e3:10.3f} {min(t_c) / min(t_o):8.2f}x")
        if device == "cuda":
            bw = copy_bandwidth(device, repeats)
            print(f"\ncopy bandwidth (256 MB device copy): {bw / 1e9:.0f} GB/s")
            print(f"{'crop_sum':38s} {'bytes':>10s} {'ours us':>9s} {'floor us':>9s} {'ratio':>6s} "
                  f"{'same-size copy us':>18s}")
            for n, (h, hb, off) in [(batch, (34, 44, 5)), (batch, (70, 88, 9)), (64, (70, 88, 9)),
                                    (16, (500, 568, 31))]:
                a = torch.randn(n, 21, h, h, device=device)
                b = torch.randn(n, 21, hb, hb, device=device)
                nbytes = 3 * a.numel() * a.element_size()  # read a, read b's window, write top
                t = timeit(lambda: ops.crop_sum(a, b, off), device, repeats)
                src = torch.empty(nbytes // 8, device=device)
                dst = torch.empty_like(src)
                tc = timeit(lambda: dst.copy_(src), device, repeats)
                floor = nbytes / bw
                print(f"{f'{n}x21x{h}x{h} + {hb}x{hb}@{off}':38s} {nbytes:10d} {t * 1e6:9.1f} {floor * 1e6:9.1f} "
                      f"{t / floor:6.2f} {tc * 1e6:18.1f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=0,
                   help="torch.set_num_threads (default: torch's default, all cores)")
    p.add_argument("--allow-fallback", action="store_true")
    args = p.parse_args(argv)
    info = ops.extension_info()
    print(f"torch {torch.__version__}; extension: {info}")
    if info["fallback"] and not args.allow_fallback:
        print(f"fcn_repro._C is not available ({info['error']}): these would be the pure-PyTorch "
              "fallback's numbers. Build the extension, or pass --allow-fallback.", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    for dev in devices:
        if dev == "cuda" and not torch.cuda.is_available():
            print("\n== cuda: no GPU here, skipped")
            continue
        run(dev, args.repeats, args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
