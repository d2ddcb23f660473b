"""Build fcn_repro and its C++ (and, when available, CUDA) extension.

Install torch first, then this package with --no-build-isolation so that the
build uses the torch already installed (never a second, downloaded one).
"""
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ext_modules = [
    CppExtension(
        "fcn_repro._C",
        sources=["csrc/fcn_ops.cpp"],
        extra_compile_args={"cxx": ["-O3"]},
    )
]

setup(
    name="fcn_repro",
    version="0.1.0",
    description="The original FCNs (Long, Shelhamer, Darrell), Caffe-exact, in PyTorch",
    packages=find_packages(include=["fcn_repro", "fcn_repro.*"]),
    package_data={"fcn_repro": ["resources/*", "resources/**/*"]},
    include_package_data=True,
    python_requires=">=3.9",
    install_requires=["numpy", "scipy", "pillow", "h5py", "tqdm"],
    extras_require={"test": ["pytest"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
