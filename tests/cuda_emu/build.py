"""Builds the test-only CUDA emulator (see README.md here) with torch.utils.cpp_extension.

The module is named after a hash of every source it compiles (csrc/, this
directory) and of the variant, and built under tests/cuda_emu/build/ (git-
ignored), so an unchanged tree reuses the last build. Variants: "plain" and
"sanitize" (ASan + UBSan; load it with the sanitizer runtime preloaded).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CSRC = ROOT / "csrc"

FLAGS = {
    # -ffp-contract=off: the CPU kernels' rounding (nvcc --fmad=false on the GPU)
    "plain": ["-O2", "-ffp-contract=off"],
    "sanitize": ["-O1", "-g", "-ffp-contract=off", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                 "-fno-omit-frame-pointer"],
}
DEFINES = ["-DFCN_CUDA_EMU", "-DFCN_REPRO_NS=fcn_repro_emu", "-DFCN_CUDA_KEY=CPU",
           "-fvisibility=hidden", "-fvisibility-inlines-hidden"]


def sources() -> list:
    files = sorted(CSRC.rglob("*.h")) + sorted(CSRC.rglob("*.cuh")) + sorted(CSRC.rglob("*.cu")) + \
        [CSRC / "fcn_ops.cpp"] + sorted(HERE.rglob("*.h")) + sorted(HERE.glob("*.cpp")) + [Path(__file__)]
    return files


def source_hash(variant: str) -> str:
    h = hashlib.sha256(variant.encode())
    for f in sources():
        h.update(str(f.relative_to(ROOT)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def build(variant: str = "plain", verbose: bool = False):
    """The emulator module (importing it registers torch.ops.fcn_repro_emu.*)."""
    import torch.utils.cpp_extension as cpp

    name = f"fcn_emu_{variant}_{source_hash(variant)}"
    build_dir = HERE / "build" / name
    build_dir.mkdir(parents=True, exist_ok=True)
    flags = FLAGS[variant] + DEFINES
    return cpp.load(name=name, sources=[str(HERE / "emu_ops.cpp")],
                    extra_include_paths=[str(HERE / "include"), str(CSRC), str(CSRC / "include")],
                    extra_cflags=flags, extra_ldflags=flags if variant == "sanitize" else [],
                    build_directory=str(build_dir), verbose=verbose)


if __name__ == "__main__":
    import sys
    mod = build(sys.argv[1] if len(sys.argv) > 1 else "plain", verbose=True)
    print(mod.__file__)
