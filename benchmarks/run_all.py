"""The whole benchmark suite, one command, one summary table.

    python benchmarks/run_all.py [--quick] [--device cpu|cuda] [--skip load,ops,eval] [--json FILE]

Runs, in this order, each printing its own detailed table:

1. ``bench_forward.py``: FCN-8s 500x500 forward, fcn_repro fast / fused /
   unfused vs a plain PyTorch FCN-8s vs OpenCV dnn (time, peak RSS, max
   relative difference, argmax agreement);
2. ``bench_load.py`` (the formats' benchmark): caffemodel load time and peak
   RSS against the file size (run as its own script, in fresh processes);
3. ``bench_ops.py`` (the ops' benchmark), when present: the fused
   deconvolution / crop-sum kernels against their references;
4. ``bench_eval.py``: evaluation throughput (images/s) on generated
   VOC-layout data, the loader's share, and memory;

then one summary table of the headline figures with the targets. The
generated files (the ~538 MB caffemodel, the VOC images, bench_load's
files) live in ~/.cache/fcn_repro/bench ($FCN_REPRO_BENCH_CACHE), never in
the repository. ``--quick``: fewer repeats everywhere (a few minutes on 2
cores instead of ~15). Shared machines: the tables give the CPU load that
other processes put on the machine meanwhile; re-run when it is quiet.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402


def _run_script(script: Path, args: list, json_path: Path, timeout: float = 3600) -> dict:
    """Run a sibling benchmark script (its output passes through); return its JSON."""
    if json_path.exists():
        json_path.unlink()
    cmd = [sys.executable, str(script)] + args
    print(f"\n[run_all] {' '.join(cmd)}", file=sys.stderr, flush=True)
    # This checkout's package, whatever `pip install -e` points at.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(common.REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=str(common.REPO), timeout=timeout, env=env)
    out = {"seconds": time.perf_counter() - t, "returncode": p.returncode}
    if json_path.exists():
        try:
            out["result"] = json.loads(json_path.read_text())
        except ValueError as e:
            out["error"] = f"unreadable JSON: {e}"
    elif p.returncode != 0:
        out["error"] = f"exit status {p.returncode}"
    return out


def _supports(script: Path, flag: str) -> bool:
    try:
        h = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                           cwd=str(common.REPO))
        return flag in h.stdout
    except (subprocess.SubprocessError, OSError):
        return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and images everywhere")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: forward,load,ops,eval")
    ap.add_argument("--json", default=None, help="write every figure here")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="forward benchmark: wait up to S s before each round for the machine to be quiet")
    args = ap.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    info = common.machine_info()
    common.CACHE.mkdir(parents=True, exist_ok=True)
    busy = common.machine_busy(2.0)
    print(f"# fcn_repro benchmark suite, {info['date']}: {info['cpu']}, {info['cores']} cores ({info['simd']}), "
          f"{info.get('mem_gb', '?')} GB, torch {info['torch']} ({info['torch_threads']} threads), "
          f"OpenCV {info['opencv']}, GPU: {info.get('gpu', 'none')}")
    print(f"other processes were using {busy:.1f} cores when the suite started")
    dev = ["--device", args.device] if args.device else []
    quick = ["--quick"] if args.quick else []
    results = {"machine": info, "busy_at_start": busy}

    if "forward" not in skip:
        wq = ["--wait-quiet", str(args.wait_quiet)] if args.wait_quiet > 0 else []
        results["forward"] = _run_script(HERE / "bench_forward.py", quick + dev + wq + ["--json", str(common.CACHE / "forward.json")],
                                         common.CACHE / "forward.json")
    if "load" not in skip:
        lj = common.CACHE / "load.json"
        if (HERE / "bench_load.py").is_file():
            results["load"] = _run_script(HERE / "bench_load.py", ["--dir", str(common.CACHE / "load"),
                                                                   "--repeat", "1" if args.quick else "3",
                                                                   "--json", str(lj)], lj)
        else:
            results["load"] = {"error": "benchmarks/bench_load.py not present"}
    if "ops" not in skip:
        oj = common.CACHE / "ops.json"
        script = HERE / "bench_ops.py"
        if script.is_file():
            extra = []
            if args.quick and _supports(script, "--quick"):
                extra.append("--quick")
            elif args.quick and _supports(script, "--repeats"):
                extra += ["--repeats", "5"]
            if _supports(script, "--json"):
                extra += ["--json", str(oj)]
            results["ops"] = _run_script(script, extra + (dev if _supports(script, "--device") else []), oj)
            if "result" not in results["ops"] and results["ops"].get("returncode") == 0:
                results["ops"]["note"] = "printed its own table (no JSON output)"
        else:
            results["ops"] = {"error": "benchmarks/bench_ops.py not present"}
    if "eval" not in skip:
        results["eval"] = _run_script(HERE / "bench_eval.py", quick + dev + ["--json", str(common.CACHE / "eval.json")],
                                      common.CACHE / "eval.json")

    summary(results)
    if args.json:
        from fcn_repro.outputs import output_file
        with output_file(args.json, 0, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


def summary(results: dict) -> None:
    rows = []
    fw = (results.get("forward") or {}).get("result")
    if fw:
        peers = fw["peers"]
        fast = peers.get("fast", {}).get("time", {}).get("median")
        for p, d in peers.items():
            t = d["time"]["median"]
            mem = d.get("memory") or {}
            rows.append(["forward 500x500", d["label"], f"{t:.3f} s",
                         f"peak RSS {common.mb(mem.get('peak_forward'))} MiB" if "peak_forward" in mem else "",
                         f"fast/peer {fast / t:.2f}" if fast else "",
                         f"max rel diff {d.get('max_rel_diff', float('nan')):.1e}"])
        if fast and "opencv" in peers:
            r = fast / peers["opencv"]["time"]["median"]
            rows.append(["target", "fast <= 0.9 x OpenCV dnn", f"{r:.2f} x", "", "MET" if r <= 0.9 else "NOT MET", ""])
        if fast and "torch" in peers:
            r = fast / peers["torch"]["time"]["median"]
            rows.append(["target", "fast <= 0.7 x plain torch", f"{r:.2f} x", "", "MET" if r <= 0.7 else "NOT MET", ""])
        if "fast" in peers and "max_rel_diff" in peers["fast"]:
            e = peers["fast"]["max_rel_diff"]
            rows.append(["target", "fast within 1e-5 rel. of plain", f"{e:.1e}", "",
                         "MET" if e <= 1e-5 else "NOT MET", ""])
    elif "forward" in results:
        rows.append(["forward", "FAILED", results["forward"].get("error", ""), "", "", ""])
    ld = (results.get("load") or {})
    if ld.get("result"):
        size = ld["result"]["file_bytes"]
        for r in ld["result"]["results"]:
            if r["mode"].startswith("views+touch") or r["mode"] in ("copy", "hdf5"):
                rows.append(["caffemodel load", f"{r['mode']} ({r['cache']})", f"{r['load_touch_s']:.3f} s",
                             f"peak RSS {r['peak_rss'] / 2 ** 20:.0f} MiB", f"{r['peak_rss'] / size:.2f} x file",
                             f"file {size / 2 ** 20:.0f} MiB"])
    elif ld:
        rows.append(["caffemodel load", "not run", ld.get("error", ""), "", "", ""])
    ops = results.get("ops") or {}
    if ops.get("result") or ops.get("returncode") == 0:
        rows.append(["ops", "see the bench_ops table above", "", "", "", ""])
    elif ops:
        rows.append(["ops", "not run", ops.get("error", ""), "", "", ""])
    ev = (results.get("eval") or {}).get("result")
    if ev:
        for m, d in ev["modes"].items():
            mem = d.get("memory") or {}
            rows.append([f"evaluate ({ev['images']} VOC-size images)", m, f"{d['images_per_s']:.3f} images/s",
                         f"peak RSS {common.mb(mem.get('peak_rss'))} MiB" if "peak_rss" in mem else "",
                         f"loader share {100 * d['loader_share']:.1f}%", f"loader hidden {100 * d['loader_hidden']:.0f}%"])
    elif "eval" in results:
        rows.append(["evaluate", "FAILED", results["eval"].get("error", ""), "", "", ""])
    print()
    print("## Summary")
    print()
    common.print_table(["benchmark", "what", "figure", "memory", "ratio / target", "other"], rows)


if __name__ == "__main__":
    sys.exit(main())
