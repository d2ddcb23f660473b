"""The evaluation report: one self-contained HTML page (``evaluate --report DIR``).

:func:`write_report` turns the report of :func:`fcn_repro.evaluation.evaluate_set`
(and a :class:`~fcn_repro.report.gallery.Gallery` filled during the same run)
into ``DIR/index.html``. Every picture is embedded as a PNG data URI, so the
page opens from disk, moved or mailed, with no server, no network and no
script. Per score head (SIFT Flow: a section each):

* the four scores against the reference: the card's published scores with
  MATCH/DIFFERENT as ``evaluate`` prints them (:func:`reference_comparison`),
  or, for the bundled sample, Caffe's own run on the same images;
* the per-class IU chart, ours beside the reference's per-class IU where
  there is one (the sample's Caffe run);
* the confusion matrix as a row-normalised heatmap with the class names on
  both axes, and the pixel counts in a table below it (each cell's counts
  also on hover); with more than :data:`PLOT_ALL_UP_TO` classes, those
  without a pixel in the ground truth or the prediction are left out of
  both plots and named below them;
* the gallery: the worst and best images by per-image IU (the image, the
  ground truth, the prediction and where they differ), with the legend of
  the classes they show, in the head's colours (a user's own classes and
  palette included: the report's ``names`` and ``palette``).

Then the run's facts: net, prototxt, weights and their sha256, data, split,
images, device, processes, time, versions (files of the package shown as
``fcn_repro/...``, :func:`shown_path`). Plots need matplotlib (the
``report`` extra); the page is written atomically (:mod:`fcn_repro.outputs`).
"""
from __future__ import annotations

import base64
import html
import io
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from fcn_repro import __version__, hub, registry
from fcn_repro.evaluation import SCORE_LABELS, reference_comparison
from fcn_repro.labels import LabelSet
from fcn_repro.outputs import output_file
from fcn_repro.registry import IGNORE_LABEL
from fcn_repro.report import plots
from fcn_repro.report.extra import require
from fcn_repro.report.gallery import WRONG_RGB, Entry, Gallery, panels

__all__ = ["write_report", "render", "head_labels", "shown_path", "PAGE"]

#: the page's file name inside the report directory
PAGE = "index.html"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d1d1f;
 margin:0;background:#f4f5f7}
main{max-width:1180px;margin:0 auto;padding:18px 22px 40px}
h1{font-size:22px;margin:6px 0 2px}h2{font-size:18px;margin:28px 0 8px;border-bottom:2px solid #d8dbe0;
 padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
.sub{color:#555;margin:0 0 12px}.card{background:#fff;border:1px solid #dde0e4;border-radius:8px;
 padding:12px 16px;margin:10px 0}
.banner{background:#fff6db;border-color:#e8cf7a}
table{border-collapse:collapse}td,th{padding:3px 10px;text-align:right;border-bottom:1px solid #eceef1}
th{background:#f0f2f5;font-weight:600}td.l,th.l{text-align:left}
.scores td{font-variant-numeric:tabular-nums;font-size:15px}
.badge{display:inline-block;padding:3px 12px;border-radius:12px;font-weight:700;font-size:14px;
 letter-spacing:.04em}
.MATCH{background:#d9f2df;color:#11612b}.DIFFERENT{background:#fbd9d9;color:#8d1313}
.NA{background:#eceef1;color:#444}
.facts td{text-align:left;vertical-align:top}.facts td:first-child{color:#555;white-space:nowrap}
code{font:12px ui-monospace,"DejaVu Sans Mono",monospace;word-break:break-all}
.plots{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.plots img{max-width:100%;height:auto;border:1px solid #eceef1;background:#fff}
.scroll{max-width:100%;overflow-x:auto}.scroll img{max-width:none}
.row{display:grid;grid-template-columns:110px repeat(var(--n),minmax(0,1fr));gap:8px;align-items:start;
 margin:8px 0 14px}
.row figure{margin:0}.row figcaption{font-size:11px;color:#555;text-align:center}
.row img{width:100%;height:auto;max-height:240px;object-fit:contain;image-rendering:pixelated;
 border:1px solid #d0d3d8;display:block;background:#fff}
.rowhead{font-size:13px;overflow-wrap:anywhere}.rowhead b{font-size:18px;display:block}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;margin:6px 0}
.sw{display:inline-block;width:14px;height:14px;border:1px solid #555;vertical-align:-2px;margin-right:5px}
details{margin-top:8px}summary{cursor:pointer;color:#0b57a3}
.cm td,.cm th{font-size:11px;padding:1px 4px}.cm th{writing-mode:vertical-rl;transform:rotate(180deg)}
.cm th.l{writing-mode:horizontal-tb;transform:none}
.note{color:#555;font-size:13px}
"""


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _img(png: bytes, alt: str, cls: str = "") -> str:
    return f'<img src="{_data_uri(png)}" alt="{_esc(alt)}"' + (f' class="{cls}"' if cls else "") + ">"


def head_labels(head: dict) -> LabelSet:
    """The LabelSet a report head carries (its ``classes`` and ``palette``)."""
    pal = head.get("palette")
    names = head["classes"]
    if pal is None:
        return LabelSet.voc(names)
    cols = np.asarray(pal, dtype=np.int64).reshape(-1, 3)
    return LabelSet(tuple(names), cols)


def _pct(v, d: int = 2) -> str:
    return "" if v is None or not np.isfinite(v) else f"{v:.{d}f}"


# ------------------------------------------------------------------ sections

def _comparison(report: dict, blob: str, head: dict) -> Optional[dict]:
    """The reference of one head as rows, a verdict and a note (the card's, or Caffe's sample run)."""
    caffe = report.get("caffe")
    if caffe is not None and blob == "score":
        m = caffe["metrics"]
        rows = [{"label": lab, "ours": 100 * head[k], "reference": 100 * m[k], "difference": 100 * (head[k] - m[k])}
                for k, lab in SCORE_LABELS]
        which = "Caffe's predictions on the same images" if caffe.get("subset") else "Caffe's own run"
        note = (f"confusion matrix {'identical to' if caffe['hist_equal'] else 'DIFFERENT from'} {which}; "
                f"pixel agreement {100 * caffe['agreement']:.4f}% ({caffe['differ']} of "
                f"{caffe['pixels']:,} pixels differ)")
        return {"against": which, "rows": rows, "verdict": "MATCH" if caffe["hist_equal"] else "DIFFERENT",
                "note": note, "iu": np.asarray(m["iu"], dtype=np.float64), "ref_label": "Caffe"}
    cmp = reference_comparison(head, report["split"], report.get("limit"))
    if cmp is None:
        return None
    note = (f"every score within {cmp['tolerance']:g} points" if cmp["comparable"]
            else f"not comparable: {cmp['note']}")
    return {"against": f"published ({cmp['source']}, {cmp['split']})", "rows": cmp["rows"],
            "verdict": cmp["verdict"], "note": note, "iu": None, "ref_label": "published"}


def _scores_html(report: dict, blob: str, head: dict, cmp: Optional[dict]) -> str:
    out = ['<table class="scores"><tr><th class="l">score</th><th>ours %</th>']
    if cmp is not None:
        out.append(f"<th>{_esc(cmp['ref_label'])} %</th><th>difference</th>")
    out.append("</tr>")
    refs = {r["label"]: r for r in (cmp["rows"] if cmp else [])}
    for key, label in SCORE_LABELS:
        out.append(f'<tr><td class="l">{_esc(label)}</td><td>{_pct(100 * head[key], 4)}</td>')
        if cmp is not None:
            r = refs.get(label)
            out.append("<td></td><td></td>" if r is None else
                       f"<td>{_pct(r['reference'], 4)}</td><td>{r['difference']:+.4f}</td>")
        out.append("</tr>")
    out.append("</table>")
    if cmp is not None:
        v = cmp["verdict"] or "NA"
        shown = cmp["verdict"] or "NOT COMPARABLE"
        out.append(f'<p><span class="badge {v}">{shown}</span> against {_esc(cmp["against"])}: '
                   f'{_esc(cmp["note"])}</p>')
    else:
        out.append('<p class="note">No published reference for this net and head.</p>')
    for c in head.get("context") or []:
        out.append(f'<p class="note">context ({_esc(c["split"])}; {_esc(c["source"])}): {_esc(c["text"])}</p>')
    excl = head.get("excluded_classes") or []
    if excl:
        out.append('<p class="note">Not scored (no ground truth in the set, the dataset\'s protocol): '
                   + _esc(", ".join(head["classes"][c] for c in excl)) + "</p>")
    return "".join(out)


def _counts_table(hist: np.ndarray, names: Sequence[str]) -> str:
    h = np.asarray(hist, dtype=np.int64)
    rows = h.sum(1)
    out = ['<details><summary>pixel counts (rows: ground truth, columns: prediction; hover a cell)</summary>'
           '<div style="overflow:auto"><table class="cm"><tr><th class="l">truth \\ predicted</th>']
    out += [f"<th>{_esc(n)}</th>" for n in names]
    out.append("<th>total</th></tr>")
    for i, n in enumerate(names):
        out.append(f'<tr><th class="l">{_esc(n)}</th>')
        for j, m in enumerate(names):
            share = f" ({100 * h[i, j] / rows[i]:.1f}% of {n})" if rows[i] else ""
            tip = f"truth {n}, predicted {m}: {h[i, j]:,} pixels{share}"
            out.append(f'<td title="{_esc(tip)}">{h[i, j]:,}</td>')
        out.append(f"<td>{rows[i]:,}</td></tr>")
    out.append("</table></div></details>")
    return "".join(out)


def legend_html(labels: LabelSet, classes: Sequence[int]) -> str:
    """Colour swatches and names of ``classes``."""
    items = []
    for c in classes:
        r, g, b = (int(v) for v in labels.palette[c])
        name = "not labelled (ignored)" if c == IGNORE_LABEL else labels.name(c)
        items.append(f'<span><span class="sw" style="background:rgb({r},{g},{b})"></span>{_esc(name)}</span>')
    return '<div class="legend">' + "".join(items) + "</div>"


def _gallery_row(e: Entry, labels: LabelSet) -> str:
    p = panels(e, labels)
    cap = {"image": "image", "truth": "ground truth", "prediction": "prediction",
           "difference": "where they differ"}
    figs = "".join(f"<figure>{_img(_png(a), f'{e.id}: {cap[k]}')}<figcaption>{cap[k]}</figcaption></figure>"
                   for k, a in p.items())
    return (f'<div class="row" style="--n:{len(p)}"><div class="rowhead">{_esc(e.id)}<b>{100 * e.iu:.1f}%</b>image mean IU</div>'
            f"{figs}</div>")


def _gallery_html(gallery: Optional[Gallery], blob: str, labels: LabelSet) -> str:
    if gallery is None:
        return ""
    worst, best = gallery.worst(blob), gallery.best(blob)
    if not worst and not best:
        return '<p class="note">No image with labelled pixels to rank.</p>'
    present = sorted({c for e in worst + best for c in e.classes()})
    if any((e.label == IGNORE_LABEL).any() for e in worst + best):
        present.append(IGNORE_LABEL)
    wr, wg, wb = WRONG_RGB
    out = [f'<p class="note">Ranked by each image\'s own mean IU over the classes in its ground truth or '
           f"prediction ({gallery.ranked(blob)} images ranked). Where they differ: wrong pixels "
           f'<span class="sw" style="background:rgb({wr},{wg},{wb})"></span>, the rest in grey '
           "(unlabelled pixels are not counted as wrong).</p>",
           "<b>Classes in these images</b>", legend_html(labels, present)]
    if worst:
        out.append(f"<h3>Worst {len(worst)}</h3>" + "".join(_gallery_row(e, labels) for e in worst))
    if best:
        out.append(f"<h3>Best {len(best)}</h3>" + "".join(_gallery_row(e, labels) for e in best))
    return "".join(out)


#: with more classes than this, the plots leave out the classes without any pixel (a short set)
PLOT_ALL_UP_TO = 12


def _plotted(hist: np.ndarray) -> tuple:
    """(classes drawn in the plots, classes left out): all of them, unless there are more than
    :data:`PLOT_ALL_UP_TO` and some have no pixel in the ground truth or the prediction (a
    subset of a big dataset: the plots would be mostly empty rows); those are left out."""
    h = np.asarray(hist)
    n = h.shape[0]
    used = (h.sum(0) + h.sum(1)) > 0
    if n <= PLOT_ALL_UP_TO or used.all() or not used.any():
        return list(range(n)), []
    return [c for c in range(n) if used[c]], [c for c in range(n) if not used[c]]


def _head_html(report: dict, blob: str, head: dict, gallery: Optional[Gallery], several: bool) -> str:
    labels = head_labels(head)
    cmp = _comparison(report, blob, head)
    n = len(head["classes"])
    title = f"{blob}: {n} classes"
    out = [f'<section id="{_esc(blob)}"><h2>{_esc(title)}'
           f' <span class="note">({head["pixels"]:,} labelled pixels)</span></h2>',
           '<div class="card">', _scores_html(report, blob, head, cmp), "</div>"]
    ref_iu = None if cmp is None else cmp["iu"]
    hist = np.asarray(head["hist"])
    sel, hidden = _plotted(hist)
    names = [head["classes"][c] for c in sel]
    pos = {c: k for k, c in enumerate(sel)}
    chart = plots.iu_chart(names, np.asarray(head["iu"], dtype=np.float64)[sel],
                           reference=None if ref_iu is None else np.asarray(ref_iu)[sel],
                           ref_label=cmp["ref_label"] if cmp else "reference",
                           excluded=[pos[c] for c in head.get("excluded_classes") or () if c in pos],
                           title="per-class IU")
    heat = plots.confusion_heatmap(hist[np.ix_(sel, sel)], names, title="confusion matrix (row-normalised, %)")
    out += ['<div class="card"><div class="plots">', _img(chart, f"{blob}: per-class IU"),
            # many classes: the heatmap at its own size (names stay legible), scrolled sideways
            f'<div class="scroll">{_img(heat, f"{blob}: confusion matrix")}</div>', "</div>"]
    if hidden:
        out.append(f'<p class="note">Not in the plots: the {len(hidden)} classes with no pixel in the ground '
                   "truth or the prediction: " + _esc(", ".join(head["classes"][c] for c in hidden)) + ".</p>")
    out += [_counts_table(head["hist"], head["classes"]), "</div>"]
    if gallery is not None:
        out += ['<div class="card"><h3 style="margin-top:4px">Gallery: the worst and best images</h3>',
                _gallery_html(gallery, blob, labels), "</div>"]
    out.append("</section>")
    return "".join(out)


_PACKAGE = Path(__file__).resolve().parent.parent


def shown_path(p) -> str:
    """A path as the page shows it: a file shipped in the package as ``fcn_repro/...`` (not the
    checkout or site-packages it happens to sit in), any other as recorded."""
    s = str(p)
    if not s or s == "None":
        return ""
    try:
        rel = Path(s).resolve().relative_to(_PACKAGE)
    except (ValueError, OSError):
        return s
    return str(Path(_PACKAGE.name) / rel)


def _weights_hash(report: dict) -> Optional[str]:
    chk = report.get("weights_check") or {}
    if chk.get("sha256"):
        return chk["sha256"]
    w = report.get("weights")
    if w and Path(w).is_file():
        return hub.sha256_file(w, progress=False)[1]
    return None


def _facts_html(report: dict) -> str:
    chk = report.get("weights_check") or {}
    digest = _weights_hash(report)
    status = chk.get("status")
    wline = f"<code>{_esc(shown_path(report['weights']))}</code>"
    if digest:
        wline += f"<br>sha256 <code>{_esc(digest)}</code>"
    if status in ("verified", "recorded"):
        wline += f" ({_esc(status)}{' against ' + _esc(chk['against']) if chk.get('against') else ''})"
    torch = sys.modules.get("torch")
    rows = [("net", f"<code>{_esc(report['net'])}</code> (<code>{_esc(shown_path(report['prototxt']))}</code>)"),
            ("weights", wline),
            ("data", f"<code>{_esc(shown_path(report['data']))}</code> ({_esc(report.get('dataset', ''))})"),
            ("split", f"{_esc(report['split'])}" + (f" (<code>{_esc(shown_path(report['split_file']))}</code>)"
                                                   if shown_path(report.get("split_file") or "") else "")
             + (f", first {report['limit']} images" if report.get("limit") else "")),
            ("images", f"{report['images']:,} in {report['seconds']:.1f} s"
             + (f" ({report['images_per_s']:.2f} images/s)" if report.get("images_per_s") else "")),
            ("device", f"{_esc(report['device'])}, {report['world_size']} process(es)"
             + (", fast forward" if report.get("fast") else "")),
            ("time", _esc(report.get("time", ""))),
            ("versions", f"fcn_repro {_esc(__version__)}" + (f", torch {_esc(torch.__version__)}" if torch else ""))]
    return ('<table class="facts">' + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows) + "</table>")


def render(report: dict, gallery: Optional[Gallery] = None, title: Optional[str] = None) -> str:
    """The page's HTML text (see the module docstring)."""
    require("matplotlib", "the evaluation report (--report)")
    heads: Dict[str, dict] = report["heads"]
    several = len(heads) > 1
    if title is None:
        kind = report.get("dataset")
        data = registry.DATASETS[kind].title if kind in registry.DATASETS else (kind or "data")
        card = registry.SAMPLE if report["net"] == registry.SAMPLE.name else registry.NETS.get(str(report["net"]))
        if card is not None and card.data.bundled and card.dataset == kind:   # the sample: its title says all
            title = f"{card.title}, split {report['split']}"
        else:
            title = f"{Path(str(report['net'])).name} on {data}, split {report['split']}"
    sub = (f"{report['images']:,} images of <code>{_esc(shown_path(report['data']))}</code> split "
           f"{_esc(report['split'])}"
           f" · {_esc(report['device'])} · {_esc(report.get('time', ''))}")
    parts: List[str] = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{_esc(title)}: evaluation report</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_esc(title)}</h1>",
        f'<p class="sub">Evaluation report · {sub}</p>']
    if report.get("caffe") is not None:
        parts.append('<div class="card banner"><b>The bundled sample: not PASCAL VOC.</b> A reduced-width '
                     "FCN-8s trained in real Caffe on synthetic shapes, compared with Caffe's own predictions "
                     "on the same images. For the real reproduction see the README (<code>python -m "
                     "fcn_repro.zoo download fcn8s</code>, then <code>--data VOCdevkit/VOC2011</code>).</div>")
    summary = []
    for blob, head in heads.items():
        cmp = _comparison(report, blob, head)
        v = (cmp or {}).get("verdict")
        badge = f' <span class="badge {v or "NA"}">{v or ("NOT COMPARABLE" if cmp else "no reference")}</span>'
        summary.append(f"<tr><td class=\"l\"><a href=\"#{_esc(blob)}\">{_esc(blob)}</a></td>"
                       f"<td>{_pct(100 * head['mean_iu'], 2)}</td><td>{_pct(100 * head['overall_acc'], 2)}</td>"
                       f'<td class="l">{badge}</td></tr>')
    parts.append('<div class="card"><table><tr><th class="l">head</th><th>mean IU %</th><th>pixel acc %</th>'
                 '<th class="l">against the reference</th></tr>' + "".join(summary) + "</table></div>")
    for blob, head in heads.items():
        parts.append(_head_html(report, blob, head, gallery, several))
    parts += ["<h2>The run</h2>", '<div class="card">', _facts_html(report), "</div>",
              "</main></body></html>\n"]
    return "".join(parts)


def write_report(out_dir: str | os.PathLike, report: dict, gallery: Optional[Gallery] = None,
                 title: Optional[str] = None) -> Path:
    """Write ``out_dir/index.html`` (atomically) and return its path."""
    text = render(report, gallery, title).encode("utf-8")
    path = Path(out_dir) / PAGE
    with output_file(path, len(text), "wb") as f:
        f.write(text)
    return path
