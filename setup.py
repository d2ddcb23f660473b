"""Build fcn_repro and its C++ (and, when available, CUDA) extension.

Install torch first, then this package with --no-build-isolation so that the
build uses the torch already installed (never a second, downloaded one).

The extension fcn_repro._C holds the ops of csrc/ (registered as
torch.ops.fcn_repro.*). It is a CppExtension by default, and a CUDAExtension
(adding csrc/cuda/*.cu) when torch is a CUDA build and nvcc is found, or when
FORCE_CUDA=1, which lets a machine without a GPU compile and link the CUDA
code (see .ci/cuda_build.sh). FORCE_CUDA=0 forces the CPU-only build.

A CUDA build on a machine where torch sees no GPU (a Docker image build, a CI
runner) has no device to take the architectures from: it targets
DEFAULT_CUDA_ARCHS below unless TORCH_CUDA_ARCH_LIST says otherwise. With a GPU
visible and no TORCH_CUDA_ARCH_LIST, torch targets the GPUs it sees.

The CUDA torch wheels from pip carry part of the CUDA headers (cusparse.h,
cublas_v2.h, ...) in the nvidia-* packages (site-packages/nvidia/*/include)
rather than in the toolkit; torch's own headers include them. Those
directories are appended to CPATH (searched after every -I, so a full local
toolkit's headers still come first) for both g++ and nvcc.
"""
import glob
import os
import shutil

from setuptools import find_namespace_packages, setup


def _toolkit(root) -> bool:
    return bool(root) and os.path.isfile(os.path.join(root, "bin", "nvcc")) and \
        os.path.isfile(os.path.join(root, "include", "cuda_runtime.h"))


def _find_cuda_home() -> None:
    """Set CUDA_HOME for torch's build when it is not set and torch would guess wrong.

    torch takes the directory above the `nvcc` on PATH; where that nvcc is a symlink or a
    wrapper script (/usr/local/bin/nvcc -> /usr/local/cuda-13.0/bin/nvcc) that is not a
    toolkit (no include/, no lib64/: the link fails on -lcudart). The symlink's target, else
    /usr/local/cuda, is taken instead when it is one."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    if nvcc is None or _toolkit(os.path.dirname(os.path.dirname(nvcc))):
        return
    for root in (os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "/usr/local/cuda"):
        if _toolkit(root):
            os.environ["CUDA_HOME"] = root
            return


_find_cuda_home()
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda() -> bool:
    force = os.environ.get("FORCE_CUDA")
    if force is not None and force.strip() != "":
        return force.strip() == "1"
    import torch

    nvcc = shutil.which("nvcc") or (CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")))
    return torch.version.cuda is not None and CUDA_HOME is not None and bool(nvcc)


#: the GPU architectures a CUDA build targets when no GPU is visible: Turing (7.5),
#: Ampere (8.0, 8.6), Ada (8.9), Hopper (9.0), and PTX of 9.0 that newer GPUs
#: (Blackwell) compile at load time. CUDA 13's nvcc supports 7.5 and newer only.
DEFAULT_CUDA_ARCHS = "7.5;8.0;8.6;8.9;9.0+PTX"


def _cuda_arch_list() -> str | None:
    """The TORCH_CUDA_ARCH_LIST to build with (set in the environment for torch's build), or None
    when torch picks from the visible GPUs."""
    given = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if given:
        return given
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return None
    os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    return DEFAULT_CUDA_ARCHS


def pip_cuda_include_dirs() -> list:
    """The include directories of the nvidia-* pip packages beside the installed torch
    (nvidia/cu13/include for CUDA 13 wheels, nvidia/<lib>/include for CUDA 12 ones)."""
    import site
    import sysconfig

    import torch

    roots = [os.path.dirname(os.path.dirname(torch.__file__)), sysconfig.get_paths()["purelib"],
             sysconfig.get_paths()["platlib"], *getattr(site, "getsitepackages", lambda: [])()]
    found = []
    for root in dict.fromkeys(roots):
        for inc in sorted(glob.glob(os.path.join(root, "nvidia", "*", "include"))):
            if os.path.isdir(inc) and inc not in found:
                found.append(inc)
    return found


def _add_pip_cuda_headers() -> list:
    dirs = pip_cuda_include_dirs()
    have = [d for d in os.environ.get("CPATH", "").split(os.pathsep) if d]
    add = [d for d in dirs if d not in have]
    if add:
        os.environ["CPATH"] = os.pathsep.join(have + add)
    return add


# fcn_repro.export (ONNX): the exporter and the runtime its --check and tests use
# (seen working: onnx 1.23.2, onnxscript 0.7.2, onnxruntime 1.32.0 with torch 2.13.0).
ONNX_EXTRA = ["onnx>=1.18", "onnxscript>=0.5", "onnxruntime>=1.20"]
# fcn_repro.report (evaluate --report, infer's overlay legend, training's curve.png and TensorBoard
# event files): the plots and the event writer (seen working: matplotlib 3.11.2, tensorboard 2.21.0).
REPORT_EXTRA = ["matplotlib>=3.6", "tensorboard>=2.10"]


def main() -> None:
    with_cuda = _want_cuda()
    sources = ["csrc/fcn_ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    extra_compile_args = {
        # -fopenmp: at::parallel_for is torch's OpenMP backend, inlined into our
        # code; without it the loops run on one thread. -ffp-contract=off: no FMA
        # contraction, so the CPU sums round like the CUDA ones (nvcc --fmad=false)
        # and the diagonal fast path matches the general path bit for bit.
        "cxx": ["-O3", "-fopenmp", "-ffp-contract=off"],
    }
    extension = CppExtension
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        extra_compile_args["nvcc"] = ["-O3", "--fmad=false", "-DFCN_REPRO_WITH_CUDA"]
        extra_compile_args["cxx"].append("-DFCN_REPRO_WITH_CUDA")
        extension = CUDAExtension
        archs = _cuda_arch_list()
        headers = _add_pip_cuda_headers()
        print(f"fcn_repro: building the CUDA extension for {archs or 'the visible GPUs'}"
              + (f"; pip CUDA headers: {os.pathsep.join(headers)}" if headers else ""))

    ext_modules = [
        extension(
            "fcn_repro._C",
            sources=sources,
            include_dirs=[os.path.abspath("csrc"), os.path.abspath("csrc/include")],
            extra_compile_args=extra_compile_args,
            extra_link_args=["-fopenmp"],
        )
    ]

    setup(
        name="fcn_repro",
        version="0.1.0",
        description="The original FCNs (Long, Shelhamer, Darrell), Caffe-exact, in PyTorch",
        # namespace discovery lists the data folders under fcn_repro/resources as
        # (data-only) packages too, as setuptools wants for files shipped there
        packages=find_namespace_packages(include=["fcn_repro", "fcn_repro.*"], exclude=["*.__pycache__"]),
        package_data={"fcn_repro": ["resources/*", "resources/**/*"]},
        include_package_data=True,
        # torch 2.13 has wheels for Python 3.10 to 3.13
        python_requires=">=3.10",
        install_requires=["numpy", "scipy", "pillow", "h5py", "tqdm", "filelock"],
        extras_require={"onnx": ONNX_EXTRA,
                        "report": REPORT_EXTRA,
                        "test": ["pytest", "hypothesis"] + ONNX_EXTRA + REPORT_EXTRA,
                        # the coverage-guided fuzzers (tests/test_fuzz.py's atheris runs, which skip
                        # without it): atheris has wheels for some Pythons only (not 3.10) and often
                        # does not build from source, so it is not part of the test extra
                        "fuzz": ["atheris; platform_system == 'Linux' and platform_machine == 'x86_64'"]},
        ext_modules=ext_modules,
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


# `python setup.py ...` and pip's build run this file as __main__; .ci/cuda_build.sh imports it
# for pip_cuda_include_dirs() (its gates call nvcc directly).
if __name__ == "__main__":
    main()
