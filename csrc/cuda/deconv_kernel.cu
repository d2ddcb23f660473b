// CUDA launchers of the Caffe Deconvolution ops: grid-stride kernels, one
// thread per output element, over the gather-form math of
// include/fcn_repro/deconv.h (the same functions the CPU launchers call, so
// both backends add the same terms in the same order; no atomics).
//
// The diagonal fast path is chosen on the device: a one-block kernel checks
// that the weight is zero off the channel diagonal and writes a flag that the
// main kernel reads (no host synchronisation). The flag is remembered per
// weight and stream (its storage, view and version counter: see DiagCache),
// so a weight that does not change is checked once, not on every call.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include "cuda/launch.cuh"
#include "diag_cache.h"
#include "ops_common.h"

namespace fcn_repro {
namespace cuda {
namespace {

// One block: flag = 1 when every off-diagonal weight element is exactly zero
// (NaN != 0, so a NaN keeps the general path).
template <typename T>
__global__ void __launch_bounds__(kReduceThreads)
    deconv2d_diag_check_kernel(const T* w, int64_t numel, int64_t cout, int64_t wk, int* flag) {
  int nonzero = 0;
  for (int64_t e = threadIdx.x; e < numel; e += blockDim.x)
    if (deconv_off_diagonal(e, cout, wk) && w[e] != T(0)) nonzero = 1;
  nonzero = __syncthreads_or(nonzero);
  if (threadIdx.x == 0) *flag = nonzero ? 0 : 1;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    deconv2d_fwd_kernel(const T* x, const T* w, const T* bias, T* y, DeconvGeom g,
                        const int* diag_flag, int64_t total) {
  const bool diag = diag_flag != nullptr && *diag_flag != 0;
  FCN_GRID_STRIDE(int64_t, idx, total) {
    int64_t r = idx / g.OW;
    const int64_t j = idx - r * g.OW;
    const int64_t i = r % g.OH;
    r /= g.OH;
    const int64_t co = r % g.Cout, n = r / g.Cout;
    y[idx] = deconv_top(x, w, bias, g, n, co, i, j, diag);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    deconv2d_grad_input_kernel(const T* gy, const T* w, T* gx, DeconvGeom g, const int* diag_flag,
                               int64_t total) {
  const bool diag = diag_flag != nullptr && *diag_flag != 0;
  FCN_GRID_STRIDE(int64_t, idx, total) {
    int64_t r = idx / g.W;
    const int64_t j = idx - r * g.W;
    const int64_t i = r % g.H;
    r /= g.H;
    const int64_t ci = r % g.Cin, n = r / g.Cin;
    gx[idx] = deconv_grad_input_elem(gy, w, g, n, ci, i, j, diag);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    deconv2d_grad_weight_kernel(const T* gy, const T* x, T* gw, DeconvGeom g, int64_t total) {
  FCN_GRID_STRIDE(int64_t, e, total) {
    const int64_t kx = e % g.kw, ky = (e / g.kw) % g.kh, c = (e / (g.kw * g.kh)) % g.cout_g,
                  ci = e / (g.kw * g.kh * g.cout_g);
    gw[e] = deconv_grad_weight_elem(gy, x, g, ci, c, ky, kx);
  }
}

// One block per channel: its kReduceThreads threads sum the kBiasLanes lanes
// (thread t: lanes t, t + kReduceThreads, ...), then the tree of deconv.h in
// shared memory; each lane and tree node adds its terms in deconv.h's order,
// so the CPU's sequential evaluation of the same tree gives the same bits.
template <typename T>
__global__ void __launch_bounds__(kReduceThreads)
    deconv2d_grad_bias_kernel(const T* gy, T* gb, DeconvGeom g) {
  static_assert(kBiasLanes % kReduceThreads == 0, "whole lanes per thread");
  __shared__ T lanes[kBiasLanes];
  const int64_t co = blockIdx.x;
  const int t = threadIdx.x;
  for (int l = t; l < kBiasLanes; l += kReduceThreads) lanes[l] = deconv_grad_bias_lane(gy, g, co, l);
  __syncthreads();
  for (int h = kBiasLanes / 2; h > 0; h /= 2) {
    for (int l = t; l < h; l += kReduceThreads) deconv_grad_bias_tree_step(lanes, l, h);
    __syncthreads();
  }
  if (t == 0) gb[co] = lanes[0];
}

// Device flag for the auto path (undefined = general path), from the cache or
// after checking the weight on the device; forced paths as for the CPU (path
// validated by check_deconv_forward).
at::Tensor diag_flag(const at::Tensor& weight, const at::Tensor& wc, const DeconvGeom& g,
                     int64_t path) {
  if (path == kPathGeneral) return at::Tensor();
  if (path == kPathDiagonal) return at::ones({1}, wc.options().dtype(at::kInt));
  if (!deconv_diag_possible(g)) return at::Tensor();
  auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor flag = diag_cache().find(weight, stream.id());
  if (flag.defined()) return flag;
  flag = at::empty({1}, wc.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(wc.scalar_type(), "fcn_repro_diag_check_cuda", [&] {
    FCN_LAUNCH(deconv2d_diag_check_kernel<kernel_t<scalar_t>>, 1, kReduceThreads, 0, stream,
               in_ptr<scalar_t>(wc), wc.numel(), g.cout_g, g.kh * g.kw, flag.data_ptr<int>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  diag_cache().insert(weight, stream.id(), flag);
  return flag;
}

at::Tensor deconv_forward(const at::Tensor& x, const at::Tensor& weight,
                          const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                          at::IntArrayRef pad, at::IntArrayRef dilation, int64_t groups,
                          at::IntArrayRef offsets, at::IntArrayRef out_size, bool whole,
                          int64_t path, const char* op) {
  const DeconvGeom g = check_deconv_forward(op, kBackend, x, weight, bias, stride, pad, dilation,
                                            groups, offsets, out_size, whole, path);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor bc = has_bias ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty({g.N, g.Cout, g.OH, g.OW}, x.options());
  const int64_t total = y.numel();
  if (total == 0) return y;
  const at::Tensor flag = diag_flag(weight, wc, g, path);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fcn_repro_deconv2d_cuda", [&] {
    FCN_LAUNCH(deconv2d_fwd_kernel<kernel_t<scalar_t>>, blocks_for(total), kThreads, 0, stream,
               in_ptr<scalar_t>(xc), in_ptr<scalar_t>(wc),
               has_bias ? in_ptr<scalar_t>(bc) : nullptr, out_ptr<scalar_t>(y), g,
               flag.defined() ? flag.data_ptr<int>() : nullptr, total);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

at::Tensor deconv2d_cuda(const at::Tensor& x, const at::Tensor& weight,
                         const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                         at::IntArrayRef pad, at::IntArrayRef dilation, int64_t groups) {
  const int64_t zero[2] = {0, 0};
  return deconv_forward(x, weight, bias, stride, pad, dilation, groups, zero, zero, true, kPathAuto,
                        "deconv2d");
}

at::Tensor deconv2d_crop_cuda(const at::Tensor& x, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                              at::IntArrayRef pad, at::IntArrayRef dilation, int64_t groups,
                              at::IntArrayRef offsets, at::IntArrayRef out_size) {
  return deconv_forward(x, weight, bias, stride, pad, dilation, groups, offsets, out_size, false,
                        kPathAuto, "deconv2d_crop");
}

at::Tensor deconv2d_crop_path_cuda(const at::Tensor& x, const at::Tensor& weight,
                                   const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                   at::IntArrayRef pad, at::IntArrayRef dilation, int64_t groups,
                                   at::IntArrayRef offsets, at::IntArrayRef out_size,
                                   int64_t path) {
  return deconv_forward(x, weight, bias, stride, pad, dilation, groups, offsets, out_size, false,
                        path, "_deconv2d_crop_path");
}

bool deconv2d_is_diagonal_cuda(const at::Tensor& weight, int64_t groups) {
  const DeconvGeom g = check_is_diagonal("_deconv2d_is_diagonal", kBackend, weight, groups);
  const c10::cuda::CUDAGuard guard(weight.device());
  if (!deconv_diag_possible(g)) return false;
  const at::Tensor flag = diag_flag(weight, weight.contiguous(), g, kPathAuto);
  return flag.item<int>() != 0;  // synchronises: diagnostics only
}

at::Tensor deconv2d_grad_input_cuda(const at::Tensor& grad, const at::Tensor& weight,
                                    at::IntArrayRef in_size, at::IntArrayRef stride,
                                    at::IntArrayRef pad, at::IntArrayRef dilation, int64_t groups,
                                    at::IntArrayRef offsets) {
  const char* op = "_deconv2d_grad_input";
  const DeconvGeom g = check_deconv_grad_input(op, kBackend, grad, weight, in_size, stride, pad,
                                               dilation, groups, offsets);
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor gc = grad.contiguous(), wc = weight.contiguous();
  at::Tensor gx = at::empty({g.N, g.Cin, g.H, g.W}, grad.options());
  const int64_t total = gx.numel();
  if (total == 0) return gx;
  const at::Tensor flag = diag_flag(weight, wc, g, kPathAuto);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "fcn_repro_deconv2d_grad_input_cuda", [&] {
    FCN_LAUNCH(deconv2d_grad_input_kernel<kernel_t<scalar_t>>, blocks_for(total), kThreads, 0,
               stream, in_ptr<scalar_t>(gc), in_ptr<scalar_t>(wc), out_ptr<scalar_t>(gx), g,
               flag.defined() ? flag.data_ptr<int>() : nullptr, total);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gx;
}

at::Tensor deconv2d_grad_weight_cuda(const at::Tensor& grad, const at::Tensor& x,
                                     at::IntArrayRef kernel, at::IntArrayRef stride,
                                     at::IntArrayRef pad, at::IntArrayRef dilation, int64_t groups,
                                     at::IntArrayRef offsets) {
  const char* op = "_deconv2d_grad_weight";
  const DeconvGeom g = check_deconv_grad_weight(op, kBackend, grad, x, kernel, stride, pad,
                                                dilation, groups, offsets);
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor gc = grad.contiguous(), xc = x.contiguous();
  at::Tensor gw = at::empty({g.Cin, g.cout_g, g.kh, g.kw}, grad.options());
  const int64_t total = gw.numel();
  if (total == 0) return gw;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "fcn_repro_deconv2d_grad_weight_cuda", [&] {
    FCN_LAUNCH(deconv2d_grad_weight_kernel<kernel_t<scalar_t>>, blocks_for(total), kThreads, 0,
               stream, in_ptr<scalar_t>(gc), in_ptr<scalar_t>(xc), out_ptr<scalar_t>(gw), g, total);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gw;
}

at::Tensor deconv2d_grad_bias_cuda(const at::Tensor& grad) {
  const char* op = "_deconv2d_grad_bias";
  const DeconvGeom g = check_deconv_grad_bias(op, kBackend, grad);
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor gc = grad.contiguous();
  at::Tensor gb = at::empty({g.Cout}, grad.options());
  if (g.Cout == 0) return gb;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "fcn_repro_deconv2d_grad_bias_cuda", [&] {
    FCN_LAUNCH(deconv2d_grad_bias_kernel<kernel_t<scalar_t>>, static_cast<int>(g.Cout),
               kReduceThreads, 0, stream, in_ptr<scalar_t>(gc), out_ptr<scalar_t>(gb), g);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gb;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(FCN_REPRO_NS, FCN_CUDA_KEY, m) {
  m.impl("deconv2d", &cuda::deconv2d_cuda);
  m.impl("deconv2d_crop", &cuda::deconv2d_crop_cuda);
  m.impl("_deconv2d_crop_path", &cuda::deconv2d_crop_path_cuda);
  m.impl("_deconv2d_is_diagonal", &cuda::deconv2d_is_diagonal_cuda);
  m.impl("_deconv2d_grad_input", &cuda::deconv2d_grad_input_cuda);
  m.impl("_deconv2d_grad_weight", &cuda::deconv2d_grad_weight_cuda);
  m.impl("_deconv2d_grad_bias", &cuda::deconv2d_grad_bias_cuda);
}

}  // namespace fcn_repro
