// The CUDA launch helpers of fcn_repro, in one place for every .cu file:
// block size and grid, the grid-stride loop, the 32/64-bit index choice, the
// launch itself, the pointers a kernel gets, and the registration key.
//
// The .cu files are written so that the same source also builds without nvcc
// in the test-only emulator (tests/cuda_emu, FCN_CUDA_EMU defined): there
// FCN_LAUNCH is an emulated launch (every block and thread run on the CPU,
// barriers with one fiber per thread), the kernels register under another
// library namespace and dispatch key (FCN_REPRO_NS, FCN_CUDA_KEY) so that
// they take CPU tensors, and kernel_ptr/out_ptr may hand the kernels a
// checking element type. Under nvcc all of this is the plain CUDA form.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>

#ifndef FCN_REPRO_NS
#define FCN_REPRO_NS fcn_repro  // the torch.ops namespace the kernels register in
#endif
#ifndef FCN_CUDA_KEY
#define FCN_CUDA_KEY CUDA  // the dispatch key of the CUDA kernels
#endif

#ifdef FCN_CUDA_EMU
#include "fcn_emu/runtime.h"  // tests/cuda_emu: emulated launch, checking element type
#define FCN_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::fcn_emu::launch(#kernel, kernel, grid, block, smem, stream, __VA_ARGS__)
#else
#define FCN_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

namespace fcn_repro {
namespace cuda {

#ifdef FCN_CUDA_EMU
// The device type of the tensors the kernels take (CPU tensors in the emulator).
constexpr c10::DeviceType kBackend = c10::DeviceType::CPU;
template <typename T>
using kernel_t = ::fcn_emu::elem_t<T>;
#else
constexpr c10::DeviceType kBackend = c10::DeviceType::CUDA;
template <typename T>
using kernel_t = T;
#endif

constexpr int kThreads = 256;  // every grid-stride kernel: __launch_bounds__(kThreads)
constexpr int kReduceThreads = 512;  // the one-block reductions: __launch_bounds__(kReduceThreads)
// (512, not 1024: at 1024 threads ptxas spilled the float64 bias reduction to local memory)

// Grid for n grid-stride work items: enough blocks to cover n, at most 32 per SM.
inline int blocks_for(int64_t n) {
  const int64_t cap = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, cap)));
}

// Test hook: when set, the kernels with a 32-bit index path take the 64-bit
// one whatever the size (the emulator's tests of that path set it).
inline std::atomic<bool> force_index64{false};

// Whether 32-bit index math is safe for n elements (with headroom for idx +
// blockDim * gridDim, which a grid-stride step forms past the end).
inline bool fits_int32(int64_t n) {
  return !force_index64.load(std::memory_order_relaxed) &&
         n < int64_t(std::numeric_limits<int32_t>::max()) / 2;
}

// The pointer a kernel reads (of a contiguous tensor) and the one it writes
// (of a freshly allocated output: the checking emulator build records that
// each element is written exactly once and never read before).
template <typename T>
inline const kernel_t<T>* in_ptr(const at::Tensor& t) {
  return reinterpret_cast<const kernel_t<T>*>(t.data_ptr<T>());
}
template <typename T>
inline kernel_t<T>* out_ptr(const at::Tensor& t) {
#ifdef FCN_CUDA_EMU
  ::fcn_emu::track_output(t.data_ptr<T>(), t.numel(), sizeof(T));
#endif
  return reinterpret_cast<kernel_t<T>*>(t.data_ptr<T>());
}

}  // namespace cuda
}  // namespace fcn_repro

// for (idx = global thread index; idx < total; idx += all threads of the grid)
#define FCN_GRID_STRIDE(index_t, idx, total)                                          \
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < (total); \
       idx += index_t(blockDim.x) * gridDim.x)
