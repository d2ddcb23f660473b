// The test-only CUDA emulator build: the real csrc/cuda/*.cu files compiled
// by the host compiler behind the stand-in headers of include/ (FCN_CUDA_EMU),
// their kernels registered as the CPU kernels of torch.ops.fcn_repro_emu.*
// (schemas from csrc/fcn_ops.cpp under that name), plus the emulator's
// runtime. One translation unit: built once per source hash by build.py.
#define FCN_REPRO_NO_MODULE
#include "fcn_ops.cpp"
#include "cuda/crop_sum_kernel.cu"
#include "cuda/deconv_kernel.cu"
#include "emu_runtime.cpp"
