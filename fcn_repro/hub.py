"""The original weights, fetched and kept so that they do not rot.

Each weights file has its sources in order (the original host, then known
mirrors) and what is published about it (a size, a sha1); both come from the
registry's cards. :func:`download` fetches files from those sources with a
progress bar, resumes a partial file (HTTP ``Range``) left by an interrupted
run, verifies the result and only then renames it into place::

    python -m fcn_repro.zoo download fcn8s fcn32s [--dir DIR] [--base-url URL]
        [--deadline SECONDS] [--min-rate KIB_PER_S] [--stall-timeout SECONDS]
    python -m fcn_repro.zoo download --all

    from fcn_repro import hub
    hub.download(["fcn8s"])            # -> [Path(.../fcn8s-heavy-pascal.caffemodel)]

Where files go and are looked for: ``$FCN_REPRO_WEIGHTS_DIR`` when set, else
the checkout's ``weights/`` for files already there, else the cache
``$FCN_REPRO_HOME/weights`` (``~/.cache/fcn_repro/weights`` by default), where
downloads go (:func:`find_weights`, :func:`download_dir`).

Faults. Each source's transfer is bounded (:mod:`fcn_repro.transfer`: a
deadline, a minimum rate, a stall timeout, never more than the published or
announced size, redirects within http(s) and never from https to http, a
``.part`` that is not a regular file of ours is refused); any failure of a
source moves on to the next. One process downloads a file at a time (a lock
beside it: the others wait, then find it there), and manifests are updated
under their own lock (:func:`update_manifest`), so concurrent records are all
kept.

Verification. A file with published facts (a pinned size or sha1) must match
them, or it is refused: a download is deleted, nothing is left at its final
path. For a file with nothing published, the manifest (``manifest.json`` beside
the weights) records its size and sha256 the first time, and every later copy
must match. A hash is recorded only after the file has parsed completely as a
caffemodel of the right net (every layer present with the shapes of the net's
prototxt), so a truncated download or an unrelated file is never recorded;
the user is told, once, that it was recorded, not verified.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple


from fcn_repro.caffe import weights_info
from fcn_repro.caffe.fcn_nets import net_text
from fcn_repro import limits, registry
from fcn_repro.caffe.match import blob_fits
from fcn_repro.errors import FcnReproError, OutputError
from fcn_repro.outputs import locked, output_file
from fcn_repro.transfer import Bounds, SourceFailed, part_size, reason, transfer
from fcn_repro.progress import bar as progress_bar

__all__ = ["HubError", "DownloadError", "WeightsMismatchError", "Bounds", "home", "weights_dir", "download_dir",
           "weights_dirs", "find_weights", "download", "verify_or_record"]

Notify = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class HubError(FcnReproError):
    """A weights file that cannot be fetched or is not the one it claims to be."""


class DownloadError(HubError):
    """No source gave the file (the message says where it tried and what to do)."""


class WeightsMismatchError(HubError):
    """A weights file differs from its published facts or from what the manifest recorded."""


# ------------------------------------------------------------------ facts

@dataclass(frozen=True)
class Source(registry.Weights):
    """A weights file of the registry (:class:`registry.Weights`) and the net it must fit."""

    net: Optional[str] = None


def _facts() -> List[Source]:
    """Every weights file the project knows, from the registry's cards."""
    out = [Source(**vars(c.weights), net=c.name) for c in registry.NETS.values() if c.weights is not None]
    return out + [Source(**vars(w)) for w in registry.INIT_WEIGHTS.values()]


def known_files() -> List[Source]:
    return _facts()


def source(name: str) -> Source:
    """The weights of net ``name`` (or a known file name, or 'vgg16')."""
    facts = _facts()
    for s in facts:
        if name in (s.net, s.file) or (name == "vgg16" and s.net is None and "VGG" in s.file):
            return s
    nets = [s.net for s in facts if s.net]
    raise HubError(f"no published weights for {name!r}; nets with weights: {', '.join(nets)}, vgg16")


# ------------------------------------------------------------------ places

def repo_root() -> Optional[Path]:
    """The source checkout this package runs from, if any (editable installs)."""
    root = Path(__file__).resolve().parent.parent
    if (root / "setup.py").is_file() and (root / "fcn_repro").is_dir():
        return root
    return None


def home() -> Path:
    """The cache root: $FCN_REPRO_HOME, else ~/.cache/fcn_repro."""
    env = os.environ.get("FCN_REPRO_HOME")
    return Path(env) if env else Path.home() / ".cache" / "fcn_repro"


def weights_dir() -> Path:
    """The weights directory of this setup: $FCN_REPRO_WEIGHTS_DIR, else the checkout's weights/,
    else the download cache (:func:`download_dir`); never the working directory."""
    env = os.environ.get("FCN_REPRO_WEIGHTS_DIR")
    if env:
        return Path(env)
    root = repo_root()
    if root is not None:
        return root / "weights"
    return download_dir()


def download_dir() -> Path:
    """Where downloads go by default: $FCN_REPRO_WEIGHTS_DIR, else $FCN_REPRO_HOME/weights."""
    env = os.environ.get("FCN_REPRO_WEIGHTS_DIR")
    return Path(env) if env else home() / "weights"


def weights_dirs() -> List[Path]:
    """The directories weights files are looked for in, in order: :func:`weights_dir`, :func:`download_dir`."""
    return list(dict.fromkeys([weights_dir(), download_dir()]))


def find_weights(file: str) -> Optional[Path]:
    """The first existing ``file`` in :func:`weights_dirs` (None: in none of them)."""
    for d in weights_dirs():
        if (d / file).is_file():
            return d / file
    return None


def manifest_path(directory: Optional[os.PathLike] = None) -> Path:
    """The manifest of a weights directory (default: :func:`weights_dir`)."""
    return Path(directory or weights_dir()) / "manifest.json"


def manifest_for(path: os.PathLike) -> Path:
    """The manifest that speaks for a weights file: the one beside it when there
    is one (or when it is in the download cache), else the default directory's."""
    parent = Path(path).resolve().parent
    if (parent / "manifest.json").is_file() or parent == download_dir().resolve():
        return parent / "manifest.json"
    return manifest_path()


# ------------------------------------------------------------------ manifest

def _round_half_up(v: float, decimals: int) -> float:
    """Rounding as published tables round (65.0050 -> 65.01), not binary float rounding."""
    q = Decimal(1).scaleb(-decimals)
    return float(Decimal(repr(v)).quantize(q, rounding=ROUND_HALF_UP))


def build_manifest(previous: Optional[dict] = None) -> dict:
    """The manifest content from the registry, keeping what was recorded."""
    prev = (previous or {}).get("files", {})
    files = {}
    for s in _facts():
        old = prev.get(s.file, {})
        d = {"url": s.urls[0], "bytes": old.get("bytes"), "sha256": old.get("sha256")}
        if old.get("recorded"):
            d["recorded"] = old["recorded"]
        if s.net:
            net = registry.net(s.net)
            ref = net.reference(asserted=True)
            d.update({"net": s.net, "dataset": net.dataset, "split": net.split,
                      # the two-decimal figure of the release table, and the four-decimal one where published
                      "expected_mean_iu": None if ref is None else _round_half_up(ref.mean_iu, min(ref.decimals, 2)),
                      "expected_mean_iu_precise": ref.mean_iu if ref is not None and ref.decimals > 2 else None})
        else:
            d.update({"net": None, "note": "ILSVRC VGG-16 (V1 format), the start of FCN training"})
        files[s.file] = d
    return {
        "about": ("Original FCN caffemodels. bytes and sha256 are null until a file is first seen; they are "
                  "recorded (fcn_repro.hub) only after the file has parsed completely as the net's caffemodel, "
                  "and verified after. Published sizes and sha1s are checked from the registry, not from here. "
                  "Generated from the registry (python -m fcn_repro.zoo --write-manifest)."),
        "base_url": registry.BASE_URL,
        "files": files,
    }


def load_manifest(path: Optional[os.PathLike] = None) -> dict:
    """The manifest at ``path`` (default weights/manifest.json); built from the
    registry when the file does not exist."""
    p = Path(path) if path else manifest_path()
    if p.is_file():
        try:   # bounded: a manifest is a few KB (a planted huge file is refused, not read into memory)
            m = json.loads(limits.read_capped(p, "manifest", error=HubError).decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            if isinstance(e, HubError):
                raise
            raise HubError(f"{p}: not a readable manifest ({e}); delete it to start a new one") from None
        if not isinstance(m, dict) or not isinstance(m.get("files", {}), dict):
            raise HubError(f"{p}: not a manifest (no 'files' table); delete it to start a new one")
        return m
    return build_manifest()


def write_manifest(manifest: dict, path: Optional[os.PathLike] = None) -> Path:
    p = Path(path) if path else manifest_path()
    text = json.dumps(manifest, indent=2) + "\n"
    with output_file(p, len(text.encode()), "w") as f:
        f.write(text)
    return p


_MANIFEST_WAIT = 60.0   # seconds another process may hold a manifest's lock (a write takes milliseconds)


def update_manifest(change: Callable[[dict], Optional[dict]], path: Optional[os.PathLike] = None) -> Path:
    """Read, change and write a manifest holding its lock, so that processes recording at once
    all keep their records. ``change`` gets the current manifest (:func:`load_manifest`) and
    changes it in place or returns the new one."""
    p = Path(path) if path else manifest_path()
    with locked(p, _MANIFEST_WAIT, holder="another process writing the manifest"):
        m = load_manifest(p)
        new = change(m)
        return write_manifest(m if new is None else new, p)


# ------------------------------------------------------------------ checking

def hash_file(path: os.PathLike, progress: bool = True, sha1: bool = False) -> Tuple[int, str, Optional[str]]:
    """(bytes, sha256 hex, sha1 hex or None) of a file, streamed; a progress bar for big files.
    A pipe or device (no size of its own; a FIFO would block the open) is refused."""
    size = limits.require_regular(path, "weights file", error=HubError).st_size
    h, h1 = hashlib.sha256(), (hashlib.sha1() if sha1 else None)
    bar = None
    if progress and size > (64 << 20):
        bar = progress_bar(total=size, unit="B", unit_scale=True, unit_divisor=1024,
                           desc=f"checking {Path(path).name}", leave=False)
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 22)
            if not chunk:
                break
            h.update(chunk)
            if h1 is not None:
                h1.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return size, h.hexdigest(), (h1.hexdigest() if h1 is not None else None)


def sha256_file(path: os.PathLike, progress: bool = True) -> Tuple[int, str]:
    """(bytes, sha256 hex) of a file."""
    size, digest, _ = hash_file(path, progress)
    return size, digest


@dataclass
class Check:
    """The outcome of :func:`check_file`.

    status: 'verified' (matches published facts or an earlier record),
    'pending' (nothing to check against yet: record after parsing),
    'unknown' (not a file the project knows: nothing to check).
    """

    status: str
    file: str
    name: str
    bytes: Optional[int] = None
    sha256: Optional[str] = None
    manifest: Optional[str] = None
    source: Optional[Source] = None
    against: str = ""

    def as_dict(self) -> dict:
        return {"status": self.status, "file": self.file, "bytes": self.bytes, "sha256": self.sha256,
                "manifest": self.manifest, "against": self.against}


def _mismatch(path, what: str, want, got, src: Optional[Source]) -> WeightsMismatchError:
    where = f"download it again ({', '.join(src.urls)})" if src else "download it again"
    return WeightsMismatchError(f"{path}: {what} is {got}, expected {want}: the file is corrupt, cut short or "
                                f"not the original; delete it and {where}")


def check_file(path: os.PathLike, name: Optional[str] = None, manifest: Optional[os.PathLike] = None,
               progress: bool = True, src: Optional[Source] = None) -> Check:
    """Check a weights file against its published facts and the manifest's record.

    ``name``: the file name it stands for (default: its own name). Raises
    :class:`WeightsMismatchError` on any difference; records nothing.
    """
    path = Path(path)
    name = name or path.name
    if src is None:
        src = next((s for s in _facts() if s.file == name), None)
    mpath = Path(manifest) if manifest else manifest_for(path)
    entry = load_manifest(mpath).get("files", {}).get(name)
    if src is None and entry is None:
        return Check("unknown", str(path), name, manifest=str(mpath))
    size = limits.require_regular(path, "weights file", error=HubError).st_size
    if src is not None and src.bytes is not None and size != src.bytes:
        raise _mismatch(path, "the size", f"{src.bytes:,} bytes (published)", f"{size:,} bytes", src)
    size, digest, sha1 = hash_file(path, progress, sha1=bool(src and src.sha1))
    out = Check("pending", str(path), name, size, digest, str(mpath), src)
    against = []
    if src is not None and src.sha1 is not None:
        if sha1 != src.sha1:
            raise _mismatch(path, "the sha1", f"{src.sha1} (published)", sha1, src)
        against.append("the published sha1")
    if entry is not None and entry.get("sha256") is not None:
        if entry.get("bytes") != size or entry["sha256"] != digest:
            raise _mismatch(path, "the size and sha256", f"{entry.get('bytes')} bytes, sha256 {entry['sha256']} "
                            f"(recorded in {mpath})", f"{size} bytes, sha256 {digest}", src)
        against.append(f"the record in {mpath}")
    if against:
        out.status, out.against = "verified", " and ".join(against)
    return out


def _net_prototxt(net: str):
    """The deploy net whose parameter shapes a caffemodel of ``net`` must have."""
    return net_text(net, "deploy")


def check_parses(path: os.PathLike, net: Optional[str]) -> None:
    """The file parses completely as a caffemodel, and as one of ``net``: every
    layer with parameters present, with the blob count and shapes of the net's
    prototxt (layers the net does not have are ignored, as Caffe's
    CopyTrainedLayersFrom ignores them). Raises a project error otherwise."""
    info = weights_info(path)   # the whole structure: a cut or foreign file is an error here
    if net is None:
        if not any(layer.blobs for layer in info.layers):
            raise WeightsMismatchError(f"{path}: parses but holds no parameter blobs")
        return
    # torch only here: listing, downloading and hashing stay free of it
    import torch

    from fcn_repro.caffe.net import Net

    with torch.device("meta"):   # shapes only: no memory for the parameters
        model = Net(_net_prototxt(net))
    have = {layer.name: layer for layer in info.layers if layer.blobs}
    for lname, params in model.params.items():
        layer = have.pop(lname, None)
        if layer is None:
            raise WeightsMismatchError(f"{path}: not the weights of {net}: no layer {lname!r}")
        if len(layer.blobs) != len(params):
            raise WeightsMismatchError(f"{path}: not the weights of {net}: layer {lname!r} has {len(layer.blobs)} "
                                       f"blobs, the net {len(params)}")
        for b, p in zip(layer.blobs, params):
            if not blob_fits(b.shape, tuple(p.shape)):
                raise WeightsMismatchError(f"{path}: not the weights of {net}: layer {lname!r} blob {b.index} has "
                                           f"shape {tuple(b.shape)}, the net {tuple(p.shape)}")


def record(check: Check, notify: Notify = _stderr) -> Check:
    """Write a checked file's size and sha256 into its manifest (after it parsed).

    Tells the user, once (this is the only time it is recorded), that it was
    recorded and not verified when nothing published was checked.
    """
    if check.status != "pending":
        return check
    mpath = Path(check.manifest)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    def add(m: dict) -> None:
        entry = m.setdefault("files", {}).get(check.name)
        if entry is None:
            entry = build_manifest()["files"].get(check.name) or {}
            m["files"][check.name] = entry
        entry.update(bytes=check.bytes, sha256=check.sha256, recorded=f"first seen {when}, not verified")
    try:
        update_manifest(add, mpath)
    except (OSError, OutputError) as e:
        warnings.warn(f"{check.name}: could not record its sha256 in {mpath} ({e}); it was not verified")
        check.status = "unrecorded"
        return check
    published = " (only its size is published)" if check.source and check.source.bytes else ""
    notify(f"{check.name}: nothing published to verify it against{published}; its size ({check.bytes:,} bytes) and "
           f"sha256 {check.sha256} were recorded in {mpath}: recorded, not verified. Later copies must match.")
    check.status = "recorded"
    return check


def verify_or_record(path: os.PathLike, manifest: Optional[os.PathLike] = None, progress: bool = True,
                     notify: Notify = _stderr) -> dict:
    """Check a weights file; record it the first time, once it has parsed as its net's caffemodel.

    Returns {'status', 'file', 'bytes', 'sha256', 'manifest', 'against'}: status
    'verified', 'recorded', 'unrecorded' (the manifest could not be written) or
    'unknown' (a file the project does not know: nothing to check). Raises
    :class:`WeightsMismatchError` when the file is not the one it is named
    after, and the format's error when it does not parse.
    """
    return _check_and_record(path, manifest, progress, notify).as_dict()


def _check_and_record(path: os.PathLike, manifest: Optional[os.PathLike], progress: bool, notify: Notify,
                      src: Optional[Source] = None) -> Check:
    """check_file, then (first seen) a full parse as its net's caffemodel and the record."""
    chk = check_file(path, manifest=manifest, progress=progress, src=src)
    if chk.status == "pending":
        check_parses(path, chk.source.net if chk.source else None)
        record(chk, notify)
    return chk


# ------------------------------------------------------------------ downloading

def fetch(src: Source, directory: Optional[os.PathLike] = None, *, progress: bool = True,
          notify: Notify = _stderr, timeout: float = 60.0, bounds: Optional[Bounds] = None) -> Path:
    """Download one file into ``directory`` (default :func:`download_dir`) and verify it.

    A file already there is checked instead. Sources are tried in order; a cut
    transfer leaves ``<file>.part``, which the next source (or run) resumes.
    The file is renamed into place only once verified (published facts, the
    manifest's record, a full parse as its net's caffemodel) and then recorded.

    ``bounds`` (:class:`fcn_repro.transfer.Bounds`): the deadline, minimum
    rate and stall timeout of each source's transfer (default: ``Bounds()``
    with ``timeout``). One process at a time downloads a file: another one
    waits for it (at most the deadline), then finds the file there.
    """
    bounds = bounds or Bounds(timeout=timeout)
    directory = Path(directory) if directory else download_dir()
    dest = directory / src.file
    mpath = manifest_path(directory)   # the directory's own record of what it holds
    if not dest.is_file():
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DownloadError(f"cannot create {directory} for {src.file} ({reason(e)}); pass --dir DIR") from None
        with locked(dest, bounds.deadline, notify, holder=f"another download of {src.file}"):
            if not dest.is_file():   # else another process brought it while this one waited
                return _fetch_locked(src, dest, mpath, progress, notify, bounds)
    chk = _check_and_record(dest, mpath, progress, notify, src)
    notify(f"{src.file}: already in {directory} ({chk.status}{' against ' + chk.against if chk.against else ''})")
    return dest


def _fetch_locked(src: Source, dest: Path, mpath: Path, progress: bool, notify: Notify, bounds: Bounds) -> Path:
    """fetch's download, holding the file's lock: each source in turn until one gives a verified file."""
    part = dest.with_name(dest.name + ".part")
    size, size_from = src.bytes, "published"
    if size is None:   # no published size: the size recorded the first time, where there is one
        try:
            size, size_from = load_manifest(mpath).get("files", {}).get(src.file, {}).get("bytes"), "recorded"
        except (HubError, AttributeError):
            size = None   # an unreadable manifest is reported by the check after the transfer
        size = size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None
    tried = []
    for url in src.urls:
        for again in (False, True):
            if _from(url, src, part, dest, mpath, progress, notify, bounds, tried, (size, size_from)):
                return dest
            if not tried[-1][0] or again:   # it failed from the start: the next source
                break
            # the bytes it resumed may be another source's or another file's: once more from the start
            notify(f"{src.file}: the resumed download did not verify; downloading it again from the start ({url})")
    kept = part_size(part)
    todo = (f"{kept:,} bytes are kept in {part}: run the same command again to resume" if kept else
            "Check the network and run it again, give another source with --base-url URL, or put the file "
            "there by hand")
    said = "; ".join(dict.fromkeys(t[1] for t in tried))
    raise DownloadError(f"could not download {src.file} into {dest.parent}: tried {said}. {todo}")


def _from(url: str, src: Source, part: Path, dest: Path, mpath: Path, progress: bool, notify: Notify,
          bounds: Bounds, tried: list, known: tuple) -> bool:
    """One try of one source: True when ``dest`` is in place and verified; else appends
    (whether the try had resumed a part, what went wrong) to ``tried``. ``known``: (the size
    the file must have or None, where that is from)."""
    have = part_size(part)   # a part that is not a regular file of ours is refused here
    notify(f"{src.file}: resuming from byte {have:,} ({url})" if have else f"{src.file}: downloading {url}")
    try:
        transfer(url, part, label=src.file, progress=progress, bounds=bounds, size=known[0], size_from=known[1])
    except SourceFailed as e:   # (a part that can not be written is an OutputError: no other source is tried)
        tried.append((False, f"{url} ({e})"))
        return False
    try:
        chk = check_file(part, name=src.file, manifest=mpath, progress=progress, src=src)
        if chk.status == "pending":
            check_parses(part, src.net)
    except ValueError as e:   # a mismatch, or the format's error (it does not parse)
        part.unlink(missing_ok=True)
        tried.append((bool(have), f"{url} (refused: {e})"))
        return False
    chk.file = str(dest)
    os.replace(part, dest)
    record(chk, notify)
    notify(f"{src.file}: saved to {dest} ({chk.bytes:,} bytes, {chk.status}"
           f"{' against ' + chk.against if chk.against else ''})")
    return True


def download(names: Iterable[str] = (), *, all: bool = False, directory: Optional[os.PathLike] = None,
             base_url: Optional[Sequence[str] | str] = None, progress: bool = True, notify: Notify = _stderr,
             timeout: float = 60.0, bounds: Optional[Bounds] = None) -> List[Path]:
    """Download the original weights of ``names`` (nets, file names or 'vgg16'), or ``all`` of them.

    ``base_url``: one or more base URLs to fetch ``<base_url>/<file>`` from
    instead of the registry's sources (a local mirror). ``bounds``: each
    transfer's deadline, minimum rate and stall timeout (:class:`Bounds`).
    Returns the paths.
    """
    srcs = [s for s in _facts() if s.net] if all else [source(n) for n in names]
    if not srcs:
        raise HubError("nothing to download: name nets (python -m fcn_repro.zoo lists them) or pass --all")
    if base_url:
        bases = [base_url] if isinstance(base_url, str) else list(base_url)
        srcs = [replace(s, urls=tuple(b.rstrip("/") + "/" + s.file for b in bases)) for s in srcs]
    return [fetch(s, directory, progress=progress, notify=notify, timeout=timeout, bounds=bounds) for s in srcs]
