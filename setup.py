"""Build fcn_repro and its C++ (and, when available, CUDA) extension.

Install torch first, then this package with --no-build-isolation so that the
build uses the torch already installed (never a second, downloaded one).

The extension fcn_repro._C holds the ops of csrc/ (registered as
torch.ops.fcn_repro.*). It is a CppExtension by default, and a CUDAExtension
(adding csrc/cuda/*.cu) when torch is a CUDA build and nvcc is found, or when
FORCE_CUDA=1, which lets a machine without a GPU compile and link the CUDA
code (see .ci/cuda_build.sh). FORCE_CUDA=0 forces the CPU-only build.
"""
import glob
import os
import shutil

from setuptools import find_namespace_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension


def _want_cuda() -> bool:
    force = os.environ.get("FORCE_CUDA")
    if force is not None and force.strip() != "":
        return force.strip() == "1"
    import torch

    nvcc = shutil.which("nvcc") or (CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")))
    return torch.version.cuda is not None and CUDA_HOME is not None and bool(nvcc)


WITH_CUDA = _want_cuda()
sources = ["csrc/fcn_ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
extra_compile_args = {
    # -fopenmp: at::parallel_for is torch's OpenMP backend, inlined into our
    # code; without it the loops run on one thread. -ffp-contract=off: no FMA
    # contraction, so the CPU sums round like the CUDA ones (nvcc --fmad=false)
    # and the diagonal fast path matches the general path bit for bit.
    "cxx": ["-O3", "-fopenmp", "-ffp-contract=off"],
}
extension = CppExtension
if WITH_CUDA:
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    extra_compile_args["nvcc"] = ["-O3", "--fmad=false", "-DFCN_REPRO_WITH_CUDA"]
    extra_compile_args["cxx"].append("-DFCN_REPRO_WITH_CUDA")
    extension = CUDAExtension

ext_modules = [
    extension(
        "fcn_repro._C",
        sources=sources,
        include_dirs=[os.path.abspath("csrc"), os.path.abspath("csrc/include")],
        extra_compile_args=extra_compile_args,
        extra_link_args=["-fopenmp"],
    )
]

# fcn_repro.export (ONNX): the exporter and the runtime its --check and tests use
# (seen working: onnx 1.23.2, onnxscript 0.7.2, onnxruntime 1.32.0 with torch 2.13.0).
ONNX_EXTRA = ["onnx>=1.18", "onnxscript>=0.5", "onnxruntime>=1.20"]
# fcn_repro.report (evaluate --report, infer's overlay legend, training's curve.png and TensorBoard
# event files): the plots and the event writer (seen working: matplotlib 3.11.2, tensorboard 2.21.0).
REPORT_EXTRA = ["matplotlib>=3.6", "tensorboard>=2.10"]

setup(
    name="fcn_repro",
    version="0.1.0",
    description="The original FCNs (Long, Shelhamer, Darrell), Caffe-exact, in PyTorch",
    # namespace discovery lists the data folders under fcn_repro/resources as
    # (data-only) packages too, as setuptools wants for files shipped there
    packages=find_namespace_packages(include=["fcn_repro", "fcn_repro.*"], exclude=["*.__pycache__"]),
    package_data={"fcn_repro": ["resources/*", "resources/**/*"]},
    include_package_data=True,
    python_requires=">=3.9",
    install_requires=["numpy", "scipy", "pillow", "h5py", "tqdm", "filelock"],
    extras_require={"onnx": ONNX_EXTRA,
                    "report": REPORT_EXTRA,
                    "test": ["pytest", "hypothesis",
                             "atheris; platform_system == 'Linux' and platform_machine == 'x86_64'"]
                            + ONNX_EXTRA + REPORT_EXTRA},
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
