// CUDA launchers of the fused Crop + Eltwise SUM op: grid-stride kernels over
// the math of include/fcn_repro/crop_sum.h. Memory-bound: each top element
// reads one a and one b element and writes once. Index math uses 32-bit
// integers when the tensors allow it (64-bit division is slow on the GPU).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "cuda/launch.cuh"
#include "ops_common.h"

namespace fcn_repro {
namespace cuda {
namespace {

template <typename T, typename index_t>
__global__ void __launch_bounds__(kThreads) crop_sum_fwd_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                    T* __restrict__ top, CropGeom g, T c0, T c1, index_t total) {
  const index_t W = g.W, H = g.H;
  FCN_GRID_STRIDE(index_t, idx, total) {
    const index_t r = idx / W, x = idx - r * W;
    const index_t plane = r / H, y = r - plane * H;
    top[idx] = crop_sum_point(a[idx], b[crop_b_index(g, plane, y, x)], c0, c1);
  }
}

// One pass over both gradients: indices [0, nb) are d/db (zero outside the
// window), [nb, nb + na) are d/da.
template <typename T, typename index_t>
__global__ void __launch_bounds__(kThreads) crop_sum_bwd_kernel(const T* __restrict__ gtop, T* __restrict__ ga,
                                    T* __restrict__ gb, CropGeom g, T c0, T c1, index_t nb,
                                    index_t total) {
  const index_t Wb = g.Wb, Hb = g.Hb;
  FCN_GRID_STRIDE(index_t, idx, total) {
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

at::Tensor crop_sum_cuda(const at::Tensor& a, const at::Tensor& b, at::IntArrayRef offsets,
                         double c0, double c1) {
  const char* op = "crop_sum";
  const CropGeom g = check_crop_sum(op, kBackend, a, b, offsets);
  const c10::cuda::CUDAGuard guard(a.device());
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  at::Tensor top = at::empty({g.N, g.C, g.H, g.W}, a.options());
  const int64_t total = top.numel();
  if (total == 0) return top;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "fcn_repro_crop_sum_cuda", [&] {
    using T = kernel_t<scalar_t>;
    const T k0 = static_cast<scalar_t>(c0), k1 = static_cast<scalar_t>(c1);
    if (fits_int32(std::max(total, b.numel()))) {
      const auto crop_sum_fwd_i32 = &crop_sum_fwd_kernel<T, int32_t>;
      FCN_LAUNCH(crop_sum_fwd_i32, blocks_for(total), kThreads, 0, stream,
                 in_ptr<scalar_t>(ac), in_ptr<scalar_t>(bc), out_ptr<scalar_t>(top), g, k0, k1,
                 static_cast<int32_t>(total));
    } else {
      const auto crop_sum_fwd_i64 = &crop_sum_fwd_kernel<T, int64_t>;
      FCN_LAUNCH(crop_sum_fwd_i64, blocks_for(total), kThreads, 0, stream,
                 in_ptr<scalar_t>(ac), in_ptr<scalar_t>(bc), out_ptr<scalar_t>(top), g, k0, k1,
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
  const CropGeom g = check_crop_sum_backward(op, kBackend, grad, b_size, offsets);
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor gc = grad.contiguous();
  at::Tensor ga = at::empty({g.N, g.C, g.H, g.W}, grad.options());
  at::Tensor gb = at::empty({g.N, g.C, g.Hb, g.Wb}, grad.options());
  const int64_t nb = gb.numel(), total = nb + ga.numel();
  if (total == 0) return {ga, gb};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "fcn_repro_crop_sum_backward_cuda", [&] {
    using T = kernel_t<scalar_t>;
    const T k0 = static_cast<scalar_t>(c0), k1 = static_cast<scalar_t>(c1);
    if (fits_int32(total)) {
      const auto crop_sum_bwd_i32 = &crop_sum_bwd_kernel<T, int32_t>;
      FCN_LAUNCH(crop_sum_bwd_i32, blocks_for(total), kThreads, 0, stream,
                 in_ptr<scalar_t>(gc), out_ptr<scalar_t>(ga), out_ptr<scalar_t>(gb), g, k0, k1,
                 static_cast<int32_t>(nb), static_cast<int32_t>(total));
    } else {
      const auto crop_sum_bwd_i64 = &crop_sum_bwd_kernel<T, int64_t>;
      FCN_LAUNCH(crop_sum_bwd_i64, blocks_for(total), kThreads, 0, stream,
                 in_ptr<scalar_t>(gc), out_ptr<scalar_t>(ga), out_ptr<scalar_t>(gb), g, k0, k1,
                 nb, total);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {ga, gb};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(FCN_REPRO_NS, FCN_CUDA_KEY, m) {
  m.impl("crop_sum", &cuda::crop_sum_cuda);
  m.impl("_crop_sum_backward", &cuda::crop_sum_backward_cuda);
}

}  // namespace fcn_repro
