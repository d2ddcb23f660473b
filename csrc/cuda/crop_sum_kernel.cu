// CUDA launchers of the fused Crop + Eltwise SUM op: grid-stride kernels over
// the math of include/fcn_repro/crop_sum.h. Memory-bound: each top element
// reads one a and one b element and writes once. Index math uses 32-bit
// integers when the tensors allow it (64-bit division is slow on the GPU).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>

#include "ops_common.h"

namespace fcn_repro {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  const int64_t cap = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, cap)));
}

template <typename T, typename index_t>
__global__ void crop_sum_fwd_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                    T* __restrict__ top, CropGeom g, T c0, T c1, index_t total) {
  const index_t W = g.W, H = g.H;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += index_t(blockDim.x) * gridDim.x) {
    const index_t r = idx / W, x = idx - r * W;
    const index_t plane = r / H, y = r - plane * H;
    top[idx] = crop_sum_point(a[idx], b[crop_b_index(g, plane, y, x)], c0, c1);
  }
}

// One pass over both gradients: indices [0, nb) are d/db (zero outside the
// window), [nb, nb + na) are d/da.
template <typename T, typename index_t>
__global__ void crop_sum_bwd_kernel(const T* __restrict__ gtop, T* __restrict__ ga,
                                    T* __restrict__ gb, CropGeom g, T c0, T c1, index_t nb,
                                    index_t total) {
  const index_t Wb = g.Wb, Hb = g.Hb;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += index_t(blockDim.x) * gridDim.x) {
    if (idx < nb) {
      const index_t r = idx / Wb, X = idx - r * Wb;
      const index_t plane = r / Hb, Y = r - plane * Hb;
      gb[idx] = crop_sum_grad_b(gtop, g, plane, Y, X, c1);
    } else {
      const index_t e = idx - nb;
      ga[e] = crop_sum_grad_a(gtop[e], c0);
    }
  }
}

bool fits_int32(int64_t n) { return n < int64_t(std::numeric_limits<int32_t>::max()) / 2; }

at::Tensor crop_sum_cuda(const at::Tensor& a, const at::Tensor& b, at::IntArrayRef offsets,
                         double c0, double c1) {
  const char* op = "crop_sum";
  check_float_tensor(a, "first bottom (a)", op);
  check_same(a, b, "first bottom (a)", "second bottom (b)", op);
  const CropGeom g = crop_geom(op, a, b.sizes(), offsets);
  const c10::cuda::CUDAGuard guard(a.device());
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  at::Tensor top = at::empty({g.N, g.C, g.H, g.W}, a.options());
  const int64_t total = top.numel();
  if (total == 0) return top;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "fcn_repro_crop_sum_cuda", [&] {
    const scalar_t k0 = static_cast<scalar_t>(c0), k1 = static_cast<scalar_t>(c1);
    if (fits_int32(std::max(total, b.numel()))) {
      crop_sum_fwd_kernel<scalar_t, int32_t><<<blocks_for(total), kThreads, 0, stream>>>(
          ac.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(), top.data_ptr<scalar_t>(), g, k0, k1,
          static_cast<int32_t>(total));
    } else {
      crop_sum_fwd_kernel<scalar_t, int64_t><<<blocks_for(total), kThreads, 0, stream>>>(
          ac.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(), top.data_ptr<scalar_t>(), g, k0, k1,
          total);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return top;
}

std::tuple<at::Tensor, at::Tensor> crop_sum_backward_cuda(const at::Tensor& grad,
                                                          at::IntArrayRef b_size,
                                                          at::IntArrayRef offsets, double c0,
                                                          double c1) {
  const char* op = "_crop_sum_backward";
  check_float_tensor(grad, "top grad", op);
  check_pair(b_size, "b_size", op);
  TORCH_CHECK(grad.dim() == 4, "fcn_repro::", op, ": top grad must be 4-D, got ", grad.sizes());
  const int64_t b_shape[4] = {grad.size(0), grad.size(1), b_size[0], b_size[1]};
  const CropGeom g = crop_geom(op, grad, b_shape, offsets);
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor gc = grad.contiguous();
  at::Tensor ga = at::empty({g.N, g.C, g.H, g.W}, grad.options());
  at::Tensor gb = at::empty({g.N, g.C, g.Hb, g.Wb}, grad.options());
  const int64_t nb = gb.numel(), total = nb + ga.numel();
  if (total == 0) return {ga, gb};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "fcn_repro_crop_sum_backward_cuda", [&] {
    const scalar_t k0 = static_cast<scalar_t>(c0), k1 = static_cast<scalar_t>(c1);
    if (fits_int32(total)) {
      crop_sum_bwd_kernel<scalar_t, int32_t><<<blocks_for(total), kThreads, 0, stream>>>(
          gc.data_ptr<scalar_t>(), ga.data_ptr<scalar_t>(), gb.data_ptr<scalar_t>(), g, k0, k1,
          static_cast<int32_t>(nb), static_cast<int32_t>(total));
    } else {
      crop_sum_bwd_kernel<scalar_t, int64_t><<<blocks_for(total), kThreads, 0, stream>>>(
          gc.data_ptr<scalar_t>(), ga.data_ptr<scalar_t>(), gb.data_ptr<scalar_t>(), g, k0, k1,
          nb, total);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {ga, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(fcn_repro, CUDA, m) {
  m.impl("crop_sum", &crop_sum_cuda);
  m.impl("_crop_sum_backward", &crop_sum_backward_cuda);
}

}  // namespace fcn_repro
