"""Exact tiled inference on a big image: FCN-8s at full width, 12 megapixels, plain and fast forward.

    python benchmarks/bench_tiles.py [--size 3000x4000] [--tile N] [--untiled 750x1000]
                                     [--modes plain,fast] [--json FILE]

The net: FCN-8s at the real widths (64..512 channels, fc 4096, 21 classes),
its deploy prototxt generated from the net definitions
(:func:`fcn_repro.caffe.fcn_nets.build_net`), seeded random weights (timing
does not depend on the values; ~538 MB, written once into the bench cache).

Per mode (``plain``: the Net's forward; ``fast``: ``fcn_repro.fast.optimize``)
two measurements, each in a fresh subprocess (so its peak RSS, the kernel's
VmHWM, is its own: loading the weights included):

* untiled: one forward of the whole image at a size that fits (``--untiled``,
  default 750x1000, the issue's 0.75 MP photo) after a warm-up forward;
* tiled: the ``--size`` image (default 3000x4000, 12 MP) through
  :func:`fcn_repro.streaming.run_image` as :func:`fcn_repro.streaming.plan_image`
  plans it: ``--tile auto`` (default) is the tools' automatic choice under
  ``forward_bytes`` (streamed layer by layer for the FCNs), ``--tile N``
  exact tiles of N pixels; one pass (no warm-up: the first band or tile
  warms up, as it would for a user).

Printed: seconds, seconds per megapixel of image, the tiled/untiled ratio of
that, the bands or tiles and their margin share (input computed twice), peak RSS,
and the CPU load other processes put on the machine meanwhile (cores).
Targets (issue 22): peak RSS < 2 GB, time per MP within 1.5x of untiled.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def full_width_prototxt() -> Path:
    """FCN-8s deploy prototxt at the real widths, generated from fcn_repro's net definitions."""
    from fcn_repro.caffe.fcn_nets import build_net
    from fcn_repro.caffe.prototxt import write_prototxt
    common.CACHE.mkdir(parents=True, exist_ok=True)
    dst = common.CACHE / "fcn8s-deploy-generated.prototxt"
    write_prototxt(dst, build_net("fcn8s", "deploy"))
    return dst


def weights_for(proto: Path) -> Path:
    """Seeded random weights for ``proto`` (the suite's cached FCN-8s caffemodel when its layers match)."""
    from fcn_repro.caffe import Net
    ref_proto, model = common.bench_model()
    try:
        Net(str(proto), str(model))          # strict matching: every layer's blobs present and fitting
        return model
    except Exception:                        # a different layout: generate weights for this prototxt
        from fcn_repro.caffe import save_weights
        out = common.CACHE / "fcn8s-generated-seed0.caffemodel"
        if not out.is_file():
            weights, types = common.generate_weights(proto, 0)
            save_weights(out, weights, types=types, net_name="FCN-8s (generated, random weights)")
        return out


def worker(mode: str, h: int, w: int, tile: str, proto: str, model: str) -> dict:
    """One measurement in this (fresh) process; prints a JSON line."""
    import torch
    from fcn_repro.caffe import Net
    from fcn_repro.fast import optimize
    from fcn_repro.streaming import plan_image, run_image
    from fcn_repro.tiles import Geometry
    net = Net(proto, model).eval()
    m = optimize(net) if mode == "fast" else net
    geo = Geometry(net)
    rss_loaded = common.current_rss()
    x = common.bench_input((h, w))[0]                # (3, H, W) float32, preprocessed
    feed = {geo.inputs[0]: x}
    cpu = torch.device("cpu")
    if tile == "whole":
        xt = torch.from_numpy(x)[None]
        with torch.inference_mode():
            m(**{geo.inputs[0]: xt})                 # warm-up
            with common.LoadProbe() as probe:
                t, out = common.time_call(lambda: m(**{geo.inputs[0]: xt}))
        labels = out[geo.outputs[0]][0].argmax(0)
        info = {"tiles": 1, "window": [h, w], "margin_share": 0.0}
    else:
        plan = plan_image(net, (h, w), tile=None if tile == "auto" else int(tile), geometry=geo)
        with common.LoadProbe() as probe:
            t0 = time.perf_counter()
            labels = run_image(m, feed, plan, geo.outputs[:1], cpu, progress=False, geometry=geo)[geo.outputs[0]]
            t = time.perf_counter() - t0
        info = {"tiles": plan.count, "window": list(plan.window), "margin_share": plan.overhead, "stream": plan.stream,
                "notes": plan.notes, "plan": plan.describe()}
    del labels
    return dict(info, mode=mode, size=[h, w], seconds=t, s_per_mp=t / (h * w / 1e6),
                rss_loaded=rss_loaded, peak_rss=common.peak_rss(), other_load=probe.foreign,
                threads=torch.get_num_threads())


def _size(s: str) -> tuple:
    h, w = (int(v) for v in s.lower().split("x"))
    return h, w


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="3000x4000", help="big image HxW (default 3000x4000, 12 MP)")
    ap.add_argument("--untiled", default="750x1000", help="untiled reference HxW (default 750x1000)")
    ap.add_argument("--tile", default="auto", help="window in pixels, or auto (the planner's budget choice)")
    ap.add_argument("--modes", default="plain,fast")
    ap.add_argument("--json", help="also write the rows as JSON to this file")
    ap.add_argument("--worker", nargs=6, metavar=("MODE", "H", "W", "TILE", "PROTO", "MODEL"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        mode, h, w, tile, proto, model = a.worker
        print(json.dumps(worker(mode, int(h), int(w), tile, proto, model)))
        return 0
    proto = full_width_prototxt()
    model = weights_for(proto)
    info = common.machine_info()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {info.get('cpu')}, "
          f"torch {info.get('torch')}", flush=True)
    rows, out = [], []
    for mode in a.modes.split(","):
        res = {}
        for kind, (h, w), tile in (("untiled", _size(a.untiled), "whole"), ("tiled", _size(a.size), a.tile)):
            r = common.run_json([sys.executable, __file__, "--worker", mode, str(h), str(w), tile,
                                 str(proto), str(model)], timeout=7200)
            res[kind] = r
            out.append(r)
            print(f"[{mode} {kind}] {r.get('plan', 'whole image')}: {r['seconds']:.1f} s, "
                  f"peak RSS {common.mb(r['peak_rss'])} MiB", file=sys.stderr, flush=True)
        u, t = res["untiled"], res["tiled"]
        rows.append([mode, f"{u['size'][1]}x{u['size'][0]}", common.fmt_s(u["seconds"]), f"{u['s_per_mp']:.2f}",
                     common.mb(u["peak_rss"]), f"{u['other_load']:.1f}",
                     f"{t['size'][1]}x{t['size'][0]}",
                     (f"bands of {t['stream']} rows ({t['tiles']})" if t.get("stream") else
                      f"{t['window'][1]}x{t['window'][0]} ({t['tiles']})"),
                     f"{100 * t['margin_share']:.0f}%", common.fmt_s(t["seconds"]), f"{t['s_per_mp']:.2f}",
                     f"{t['s_per_mp'] / u['s_per_mp']:.2f}", common.mb(t["peak_rss"]), f"{t['other_load']:.1f}"])
    common.print_table(["forward", "untiled", "s", "s/MP", "peak RSS MiB", "other load", "tiled", "window (tiles) or bands",
                        "margin share", "s", "s/MP", "tiled/untiled s/MP", "peak RSS MiB", "other load"], rows)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
