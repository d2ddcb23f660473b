"""Evaluation throughput on generated VOC-layout data: images/s, the loader's share, memory.

    python benchmarks/bench_eval.py [--quick] [--images N] [--device cpu|cuda] [--modes fast,plain]
                                    [--workers 2] [--json FILE]

Generates (once, into the benchmark cache) a PASCAL VOC year directory of
``--images`` images at VOC sizes (500x375, 375x500, 500x333, 333x500,
500x500, cycling), with palette label PNGs (21 classes and 255 borders),
and runs :func:`fcn_repro.evaluation.run` (the loop ``python -m
fcn_repro.evaluate`` runs: threaded decoding ahead of the net, confusion
matrix on the fly) with the benchmark FCN-8s (common.bench_model), once per
mode:

* ``fast``  the net wrapped by fcn_repro.fast.optimize (what ``--fast`` does)
* ``plain`` the net as built (fused plain path)

Reported per mode: end-to-end seconds and images/s; the forward alone (the
same images decoded beforehand, so no loading); the loader alone (every
image decoded and preprocessed in one thread); the loader's share =
loader / (loader + forward), and how much of it the threaded loader hid.
Memory (a fresh process per mode): RSS after loading the net, peak RSS
during the evaluation, and RSS after the first image vs after the last
(bounded memory: nothing may accumulate per image). On a GPU, add
``--images 736`` for the seg11valid-sized run of the issue's target.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

VOC_SIZES = [(375, 500), (500, 375), (333, 500), (500, 333), (500, 500)]  # (H, W)
MODES = ("fast", "plain")


def make_voc(root: Path, n: int, seed: int = 0) -> Path:
    """A VOC year directory with ``n`` generated images; reused when already complete."""
    from PIL import Image
    from fcn_repro.data.transforms import save_label_png
    from fcn_repro.outputs import output_file
    ids = [f"bench_{i:04d}" for i in range(n)]
    split = root / "ImageSets" / "Segmentation" / f"bench{n}.txt"
    if split.is_file() and all((root / "JPEGImages" / f"{i}.jpg").is_file() for i in ids):
        return root
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    split.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k, i in enumerate(ids):
        h, w = VOC_SIZES[k % len(VOC_SIZES)]
        x = common.bench_input((h, w), seed=seed + k)[0]          # BGR minus mean, (3, H, W)
        rgb = (x.transpose(1, 2, 0)[:, :, ::-1] + common.MEAN_BGR[::-1]).clip(0, 255).astype(np.uint8)
        with output_file(root / "JPEGImages" / f"{i}.jpg", 0, "wb") as f:
            Image.fromarray(rgb).save(f, format="JPEG", quality=90)
        # Blocky objects of random classes on background, 255 on their borders (as VOC).
        lab = np.zeros((h, w), np.uint8)
        for _ in range(4):
            y0, x0 = rng.integers(0, h - 40), rng.integers(0, w - 40)
            y1, x1 = y0 + rng.integers(30, h // 2), x0 + rng.integers(30, w // 2)
            lab[y0:y1, x0:x1] = 255
            lab[y0 + 3:y1 - 3, x0 + 3:x1 - 3] = rng.integers(1, 21)
        save_label_png(root / "SegmentationClass" / f"{i}.png", lab)
    with output_file(split, 0, "w") as f:
        f.write("\n".join(ids) + "\n")
    return root


def _build(mode: str, proto: Path, model: Path, device: str):
    import torch
    from fcn_repro.evaluation import load_net
    net = load_net(proto, model, device, fast=(mode == "fast"))
    return net


def measure(mode: str, n: int, device: str, workers: int, memory_only: bool = False) -> dict:
    """One mode: end-to-end run(), then forward-only and loader-only passes."""
    import torch
    from fcn_repro.data import make_dataset
    from fcn_repro.evaluation import net_inputs, run
    proto, model = common.bench_model(progress=False)
    root = make_voc(common.CACHE / "voc-bench", n)
    ds = make_dataset("voc", root, f"bench{n}")
    out = {"mode": mode, "images": n}
    t = time.perf_counter()
    net = _build(mode, proto, model, device)
    out["load_s"] = time.perf_counter() - t
    out["rss_loaded"] = common.current_rss()
    heads = {"score": "label"}
    # Warm-up on one image (first-call costs: oneDNN primitive creation, page faults).
    run(net, ds, heads, device=device, indices=[0], workers=0, progress=False)
    common.reset_peak_rss()
    rss_first = []
    if memory_only:
        run(net, ds, heads, device=device, indices=[0], workers=workers, progress=False)
        rss_first = common.current_rss()
    with common.LoadProbe() as lp:
        res = run(net, ds, heads, device=device, workers=workers, progress=False)
    out["e2e_s"] = res["seconds"]
    out["images_per_s"] = res["images"] / res["seconds"]
    out["foreign_load"] = lp.foreign
    out["peak_rss"] = common.peak_rss()
    out["rss_end"] = common.current_rss()
    if memory_only:
        out["rss_after_first"] = rss_first
        return out
    # Loader alone, one thread (what decoding + preprocessing costs).
    t = time.perf_counter()
    samples = [ds.load(i) for i in range(len(ds))]
    out["loader_s"] = time.perf_counter() - t
    # Forward alone on the decoded samples.
    dev = torch.device(device)
    feeds = [{b: torch.from_numpy(a).unsqueeze(0) for b, a in net_inputs(list(net.inputs), s).items()}
             for s in samples]
    t = time.perf_counter()
    with torch.inference_mode():
        for f in feeds:
            y = net.forward(**{k: v.to(dev) for k, v in f.items()})["score"]
            y[0].argmax(0)
        common.sync(device)
    out["forward_s"] = time.perf_counter() - t
    out["loader_share"] = out["loader_s"] / (out["loader_s"] + out["forward_s"])
    # Hidden: how much of the loader's time the threaded loader overlapped with the forward.
    out["loader_hidden"] = max(0.0, min(1.0, (out["loader_s"] + out["forward_s"] - out["e2e_s"]) / out["loader_s"]))
    out["hist_total"] = int(sum(h.sum() for h in res["hists"].values()))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 images instead of 10")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import torch
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("[bench] no CUDA device here: running on the CPU", file=sys.stderr)
        args.device = "cpu"
    n = args.images or (4 if args.quick else 10)
    if args.worker:
        print(json.dumps(measure(args.worker, n, args.device, args.workers, memory_only=True)))
        return {}
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    common.bench_model()
    make_voc(common.CACHE / "voc-bench", n)
    print(f"[bench] evaluate: {n} generated VOC images, modes {modes}, device {args.device}",
          file=sys.stderr, flush=True)
    results = {}
    for m in modes:
        results[m] = measure(m, n, args.device, args.workers)
        print(f"[bench]   {m}: {results[m]['images_per_s']:.3f} images/s", file=sys.stderr, flush=True)
        if not args.no_memory:
            try:
                results[m]["memory"] = common.run_json([sys.executable, __file__, "--worker", m, "--images", str(n),
                                                        "--device", args.device, "--workers", str(args.workers)])
            except Exception as e:
                results[m]["memory"] = {"error": str(e)[-300:]}
    res = {"machine": common.machine_info(), "device": args.device, "images": n, "modes": results}
    report(res)
    if args.json:
        from fcn_repro.outputs import output_file
        with output_file(args.json, 0, "w") as f:
            json.dump(res, f, indent=1, default=str)
    return res


def report(res: dict) -> None:
    info = res["machine"]
    print()
    print(f"## evaluate throughput, {res['images']} generated VOC images (500x375/375x500/500x333/333x500/500x500), "
          f"{res['device']} ({info['date']}, {info['cpu']}, {info['cores']} cores)")
    print()
    rows = []
    for m, d in res["modes"].items():
        mem = d.get("memory") or {}
        ok = "error" not in mem
        rows.append([m, f"{d['images_per_s']:.3f}", common.fmt_s(d["e2e_s"]), common.fmt_s(d["forward_s"]),
                     common.fmt_s(d["loader_s"]), f"{100 * d['loader_share']:.1f}%",
                     f"{100 * d['loader_hidden']:.0f}%", f"{d['foreign_load']:.1f}",
                     common.mb(mem.get("rss_loaded")) if ok else "err",
                     common.mb(mem.get("peak_rss")) if ok else "err",
                     (common.mb(mem.get("rss_after_first")) + " -> " + common.mb(mem.get("rss_end"))) if ok else "err"])
    common.print_table(["mode", "images/s", "end-to-end s", "forward-only s", "loader-only s", "loader share",
                        "loader hidden", "other load (cores)", "RSS loaded MiB", "peak RSS MiB",
                        "RSS 1st -> last image MiB"], rows)
    print()


if __name__ == "__main__":
    main()
