"""Hostile images and labels: each ends in one project error naming the file, under a memory limit.

Every case runs in a subprocess whose address space is capped with
``resource.setrlimit`` (so a decoder that allocates what a header declares
would die there, not pass), reading through the same functions the datasets,
the predictor and ``infer`` use.
"""
from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcn_repro.data.transforms import ImageReadError, check_label_size, read_label_png, read_rgb
from fcn_repro.errors import FcnReproError, LimitError

REPO = Path(__file__).resolve().parent.parent
MEMORY_LIMIT = 1 << 30   # 1 GiB of address space for numpy + PIL + the case


def _jpeg_bytes(h=16, w=16, mode="RGB") -> bytes:
    b = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3) if mode == "RGB" else (h, w),
                                                     dtype=np.uint8)).save(b, format="JPEG")
    return b.getvalue()


def _declare_jpeg_size(data: bytes, h: int, w: int) -> bytes:
    """The JPEG with its SOF0 header claiming h x w (the scan data stays 16x16)."""
    i = data.index(b"\xff\xc0")
    return data[:i + 5] + struct.pack(">HH", h, w) + data[i + 9:]


def _declare_png_size(data: bytes, h: int, w: int) -> bytes:
    """The PNG with its IHDR claiming h x w (CRC fixed, so PIL reads the header)."""
    assert data[12:16] == b"IHDR"
    body = b"IHDR" + struct.pack(">II", w, h) + data[24:29]
    return data[:8] + data[8:12] + body + struct.pack(">I", zlib.crc32(body)) + data[33:]


def _png_bytes(a: np.ndarray, mode=None) -> bytes:
    b = io.BytesIO()
    (Image.fromarray(a) if mode is None else Image.fromarray(a).convert(mode)).save(b, format="PNG")
    return b.getvalue()


def _png16(h=8, w=8) -> bytes:
    b = io.BytesIO()
    Image.fromarray(np.full((h, w), 300, np.uint16)).save(b, format="PNG")
    return b.getvalue()


CASES = {
    # name: (file name, bytes, reader, expected error class name, text in the message)
    "huge-declared-jpeg": ("big.jpg", lambda: _declare_jpeg_size(_jpeg_bytes(), 9000, 12000), "read_rgb",
                           "LimitError", "12000x9000 pixels"),
    "huge-declared-png-label": ("big.png", lambda: _declare_png_size(_png_bytes(np.zeros((8, 8), np.uint8)),
                                                                     40000, 40000),
                                "read_label_png", "LimitError", "1600000000 pixels"),
    "corrupt-image": ("junk.jpg", lambda: b"\xff\xd8\xff\xe0 not really a jpeg" * 20, "read_rgb",
                      "ImageReadError", "junk.jpg"),
    "truncated-image": ("cut.jpg", lambda: _jpeg_bytes(64, 64)[:400], "read_rgb", "ImageReadError", "cut.jpg"),
    "empty-image": ("empty.png", lambda: b"", "read_rgb", "ImageReadError", "empty.png"),
    "jpeg-under-png-label": ("lab.png", lambda: _jpeg_bytes(8, 8, "L"), "read_label_png", "ImageReadError",
                             "JPEG data"),
    "16-bit-label": ("lab16.png", _png16, "read_label_png", "ImageReadError", "16-bit"),
    "rgb-label": ("rgb.png", lambda: _png_bytes(np.zeros((4, 4, 3), np.uint8)), "read_label_png",
                  "ImageReadError", "mode 'RGB'"),
    "truncated-label": ("cutlab.png", lambda: _png_bytes(np.random.default_rng(1).integers(
        0, 21, (64, 64), dtype=np.uint8))[:120], "read_label_png", "ImageReadError", "cutlab.png"),
    "corrupt-label": ("badlab.png", lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "read_label_png",
                      "ImageReadError", "badlab.png"),
}

_RUNNER = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    from fcn_repro.data import transforms
    from fcn_repro.errors import FcnReproError
    out = {{}}
    for name, (path, reader) in json.loads(sys.argv[1]).items():
        try:
            getattr(transforms, reader)(path)
            out[name] = ["read", ""]
        except FcnReproError as e:
            out[name] = [type(e).__name__, str(e)]
    print(json.dumps(out))
""")


def _run_limited(cases: dict, env_extra=None) -> dict:
    import os

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    r = subprocess.run([sys.executable, "-c", _RUNNER.format(limit=MEMORY_LIMIT), json.dumps(cases)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_hostile_images_and_labels_under_a_memory_limit(tmp_path):
    todo = {}
    for name, (fname, make, reader, _, _) in CASES.items():
        p = tmp_path / name / fname
        p.parent.mkdir()
        p.write_bytes(make())
        todo[name] = [str(p), reader]
    got = _run_limited(todo)
    for name, (fname, _, _, cls, text) in CASES.items():
        kind, msg = got[name]
        assert kind == cls, (name, kind, msg)
        assert msg.startswith(todo[name][0]), (name, msg)      # the message names the file first
        assert text in msg and "\n" not in msg, (name, msg)


def test_the_pixel_cap_is_configurable(tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(p)
    got = _run_limited({"a": [str(p), "read_rgb"]}, {"FCN_REPRO_MAX_IMAGE_PIXELS": "5000"})
    assert got["a"][0] == "LimitError" and "FCN_REPRO_MAX_IMAGE_PIXELS" in got["a"][1]
    assert _run_limited({"a": [str(p), "read_rgb"]})["a"][0] == "read"


def test_errors_are_in_the_project_family():
    assert issubclass(ImageReadError, FcnReproError) and issubclass(ImageReadError, ValueError)
    assert issubclass(LimitError, FcnReproError)


def test_wrong_size_label_names_both_files(tmp_path):
    lab = np.zeros((4, 5), np.uint8)
    with pytest.raises(ImageReadError) as ei:
        check_label_size(lab, (4, 6, 3), tmp_path / "l.png", tmp_path / "i.jpg")
    assert str(ei.value).startswith(str(tmp_path / "l.png")) and "i.jpg" in str(ei.value)
    assert check_label_size(lab, (4, 5), "l.png") is lab


def test_wrong_size_label_in_a_voc_directory(tmp_path):
    from fcn_repro.data.voc import VOCSegmentation

    root = tmp_path / "VOC2011"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(root / "JPEGImages" / "a.jpg")
    Image.fromarray(np.zeros((10, 11), np.uint8)).save(root / "SegmentationClass" / "a.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("a\n")
    with pytest.raises(ValueError) as ei:
        VOCSegmentation(root, "val")[0]
    assert "a.png" in str(ei.value) and "size" in str(ei.value)


def test_good_files_still_read(tmp_path):
    a = np.random.default_rng(3).integers(0, 255, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "x.png")
    assert np.array_equal(read_rgb(tmp_path / "x.png"), a)
    lab = np.random.default_rng(4).integers(0, 21, (7, 9), dtype=np.uint8)
    Image.fromarray(lab).save(tmp_path / "l.png")   # 'L'
    assert np.array_equal(read_label_png(tmp_path / "l.png"), lab)
    with pytest.raises(FileNotFoundError, match="nope"):
        read_rgb(tmp_path / "nope.jpg")


def test_infer_skips_a_decompression_bomb(tmp_path, capsys):
    from fcn_repro import infer as inf

    d = tmp_path / "in"
    d.mkdir()
    (d / "big.jpg").write_bytes(_declare_jpeg_size(_jpeg_bytes(), 9000, 12000))
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(d / "ok.png")
    assert inf.main([str(d), "--net", "sample", "-o", str(tmp_path / "o"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "big.jpg" in err and "over the limit" in err
    assert (tmp_path / "o" / "ok.png").exists()
