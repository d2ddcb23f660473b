// CUDA launchers of the Caffe Deconvolution ops: grid-stride kernels, one
// thread per output element, over the gather-form math of
// include/fcn_repro/deconv.h (the same functions the CPU launchers call, so
// both backends add the same terms in the same order; no atomics).
//
// The diagonal fast path is chosen on the device: a one-block kernel checks
// that the weight is zero off the channel diagonal and writes a flag that the
// main kernel reads (no host synchronisation, nothing cached between calls).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "ops_common.h"

namespace fcn_repro {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  const int64_t cap = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, cap)));
}

#define FCN_GRID_STRIDE(idx, total)                                                      \
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < (total);     \
       idx += int64_t(blockDim.x) * gridDim.x)

// One block: flag = 1 when every off-diagonal weight element is exactly zero
// (NaN != 0, so a NaN keeps the general path).
template <typename T>
__global__ void deconv2d_diag_check_kernel(const T* w, int64_t numel, int64_t cout, int64_t wk,
                                           int* flag) {
  int nonzero = 0;
  for (int64_t e = threadIdx.x; e < numel; e += blockDim.x)
    if (deconv_off_diagonal(e, cout, wk) && w[e] != T(0)) nonzero = 1;
  nonzero = __syncthreads_or(nonzero);
  if (threadIdx.x == 0) *flag = nonzero ? 0 : 1;
}

template <typename T>
__global__ void deconv2d_fwd_kernel(const T* x, const T* w, const T* bias, T* y, DeconvGeom g,
                                    const int* diag_flag, int64_t total) {
  const bool diag = diag_flag != nullptr && *diag_flag != 0;
  FCN_GRID_STRIDE(idx, total) {
    int64_t r = idx / g.OW;
    const int64_t j = idx - r * g.OW;
    const int64_t i = r % g.OH;
    r /= g.OH;
    const int64_t co = r % g.Cout, n = r / g.Cout;
    y[idx] = deconv_top(x, w, bias, g, n, co, i, j, diag);
  }
}

template <typename T>
__global__ void deconv2d_grad_input_kernel(const T* gy, const T* w, T* gx, DeconvGeom g,
                                           const int* diag_flag, int64_t total) {
  const bool diag = diag_flag != nullptr && *diag_flag != 0;
  FCN_GRID_STRIDE(idx, total) {
    int64_t r = idx / g.W;
    const int64_t j = idx - r * g.W;
    const int64_t i = r % g.H;
    r /= g.H;
    const int64_t ci = r % g.Cin, n = r / g.Cin;
    gx[idx] = deconv_grad_input_elem(gy, w, g, n, ci, i, j, diag);
  }
}

template <typename T>
__global__ void deconv2d_grad_weight_kernel(const T* gy, const T* x, T* gw, DeconvGeom g,
                                            int64_t total) {
  FCN_GRID_STRIDE(e, total) {
    const int64_t kx = e % g.kw, ky = (e / g.kw) % g.kh, c = (e / (g.kw * g.kh)) % g.cout_g,
                  ci = e / (g.kw * g.kh * g.cout_g);
    gw[e] = deconv_grad_weight_elem(gy, x, g, ci, c, ky, kx);
  }
}

template <typename T>
__global__ void deconv2d_grad_bias_kernel(const T* gy, T* gb, DeconvGeom g) {
  FCN_GRID_STRIDE(co, g.Cout) { gb[co] = deconv_grad_bias_elem(gy, g, co); }
}

// Device flag for the auto path (nullptr = general path), after checking the
// weight on the device; forced paths as for the CPU.
at::Tensor diag_flag(const at::Tensor& wc, const DeconvGeom& g, int64_t path, const char* op) {
  TORCH_CHECK(path == kPathAuto || path == kPathGeneral || path == kPathDiagonal, "fcn_repro::", op,
              ": path must be 0 (auto), 1 (general) or 2 (diagonal), got ", path);
  if (path == kPathGeneral) return at::Tensor();
  if (path == kPathDiagonal) {
    TORCH_CHECK(deconv_diag_possible(g), "fcn_repro::", op,
                ": the diagonal path needs groups == 1 and Cin == Cout, got groups ", g.groups,
                ", Cin ", g.Cin, ", Cout ", g.Cout);
    return at::ones({1}, wc.options().dtype(at::kInt));
  }
  if (!deconv_diag_possible(g)) return at::Tensor();
  at::Tensor flag = at::empty({1}, wc.options().dtype(at::kInt));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(wc.scalar_type(), "fcn_repro_diag_check_cuda", [&] {
    deconv2d_diag_check_kernel<scalar_t><<<1, 1024, 0, stream>>>(
        wc.data_ptr<scalar_t>(), wc.numel(), g.cout_g, g.kh * g.kw, flag.data_ptr<int>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return flag;
}

at::Tensor deconv_forward(const at::Tensor& x, const at::Tensor& weight,
                          const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                          at::IntArrayRef pad, at::IntArrayRef dilation, int64_t groups,
                          at::IntArrayRef offsets, at::IntArrayRef out_size, int64_t path,
                          const char* op) {
  check_float_tensor(x, "bottom", op);
  check_same(x, weight, "bottom", "weight", op);
  DeconvGeom g = deconv_geom(op, x.sizes(), weight.sizes(), stride, pad, dilation, groups,
                             offsets, out_size);
  check_bias(bias, x, g, op);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor bc = has_bias ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty({g.N, g.Cout, g.OH, g.OW}, x.options());
  const at::Tensor flag = diag_flag(wc, g, path, op);
  const int64_t total = y.numel();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fcn_repro_deconv2d_cuda", [&] {
    deconv2d_fwd_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        xc.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(),
        has_bias ? bc.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(), g,
        flag.defined() ? flag.data_ptr<int>() : nullptr, total);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

at::Tensor deconv2d_cuda(const at::Tensor& x, const at::Tensor& weight,
                         const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                         at::IntArrayRef pad, at::IntArrayRef dilation, int64_t groups) {
  const int64_t zero[2] = {0, 0}, whole[2] = {-1, -1};
  return deconv_forward(x, weight, bias, stride, pad, dilation, groups, zero, whole, kPathAuto,
                        "deconv2d");
}

at::Tensor deconv2d_crop_cuda(const at::Tensor& x, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                              at::IntArrayRef pad, at::IntArrayRef dilation, int64_t groups,
                              at::IntArrayRef offsets, at::IntArrayRef out_size) {
  return deconv_forward(x, weight, bias, stride, pad, dilation, groups, offsets, out_size,
                        kPathAuto, "deconv2d_crop");
}

at::Tensor deconv2d_crop_path_cuda(const at::Tensor& x, const at::Tensor& weight,
                                   const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                   at::IntArrayRef pad, at::IntArrayRef dilation, int64_t groups,
                                   at::IntArrayRef offsets, at::IntArrayRef out_size,
                                   int64_t path) {
  return deconv_forward(x, weight, bias, stride, pad, dilation, groups, offsets, out_size, path,
                        "_deconv2d_crop_path");
}

bool deconv2d_is_diagonal_cuda(const at::Tensor& weight, int64_t groups) {
  TORCH_CHECK(weight.dim() == 4, "fcn_repro::_deconv2d_is_diagonal: weight must be 4-D, got ",
              weight.sizes());
  check_float_tensor(weight, "weight", "_deconv2d_is_diagonal");
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor wc = weight.contiguous();
  DeconvGeom g = make_deconv_geom(1, wc.size(0), 1, 1, wc.size(1) * groups, groups, wc.size(2),
                                  wc.size(3), 1, 1, 0, 0, 1, 1, 0, 0, 1, 1);
  const at::Tensor flag = diag_flag(wc, g, kPathAuto, "_deconv2d_is_diagonal");
  return flag.defined() && flag.item<int>() != 0;  // synchronises: diagnostics only
}

at::Tensor deconv2d_grad_input_cuda(const at::Tensor& grad, const at::Tensor& weight,
                                    at::IntArrayRef in_size, at::IntArrayRef stride,
                                    at::IntArrayRef pad, at::IntArrayRef dilation, int64_t groups,
                                    at::IntArrayRef offsets) {
  const char* op = "_deconv2d_grad_input";
  check_float_tensor(grad, "top grad", op);
  check_same(grad, weight, "top grad", "weight", op);
  check_pair(in_size, "in_size", op);
  TORCH_CHECK(grad.dim() == 4, "fcn_repro::", op, ": top grad must be 4-D, got ", grad.sizes());
  const int64_t bottom[4] = {grad.size(0), weight.size(0), in_size[0], in_size[1]};
  const int64_t window[2] = {grad.size(2), grad.size(3)};
  DeconvGeom g = deconv_geom(op, bottom, weight.sizes(), stride, pad, dilation, groups, offsets,
                             window);
  TORCH_CHECK(grad.size(1) == g.Cout, "fcn_repro::", op, ": top grad has ", grad.size(1),
              " channels, expected ", g.Cout);
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor gc = grad.contiguous(), wc = weight.contiguous();
  const at::Tensor flag = diag_flag(wc, g, kPathAuto, op);
  at::Tensor gx = at::empty({g.N, g.Cin, g.H, g.W}, grad.options());
  const int64_t total = gx.numel();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "fcn_repro_deconv2d_grad_input_cuda", [&] {
    deconv2d_grad_input_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        gc.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), g,
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
  check_float_tensor(grad, "top grad", op);
  check_same(grad, x, "top grad", "bottom", op);
  check_pair(kernel, "kernel", op);
  TORCH_CHECK(grad.dim() == 4 && x.dim() == 4, "fcn_repro::", op,
              ": top grad and bottom must be 4-D, got ", grad.sizes(), " and ", x.sizes());
  TORCH_CHECK(groups >= 1 && grad.size(1) % groups == 0, "fcn_repro::", op, ": top grad has ",
              grad.size(1), " channels, not divisible by groups ", groups);
  const int64_t wshape[4] = {x.size(1), grad.size(1) / groups, kernel[0], kernel[1]};
  const int64_t window[2] = {grad.size(2), grad.size(3)};
  DeconvGeom g = deconv_geom(op, x.sizes(), wshape, stride, pad, dilation, groups, offsets, window);
  TORCH_CHECK(grad.size(0) == g.N, "fcn_repro::", op, ": top grad batch ", grad.size(0),
              " != bottom batch ", g.N);
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor gc = grad.contiguous(), xc = x.contiguous();
  at::Tensor gw = at::empty({g.Cin, g.cout_g, g.kh, g.kw}, grad.options());
  const int64_t total = gw.numel();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "fcn_repro_deconv2d_grad_weight_cuda", [&] {
    deconv2d_grad_weight_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        gc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), gw.data_ptr<scalar_t>(), g, total);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gw;
}

at::Tensor deconv2d_grad_bias_cuda(const at::Tensor& grad) {
  const char* op = "_deconv2d_grad_bias";
  check_float_tensor(grad, "top grad", op);
  TORCH_CHECK(grad.dim() == 4, "fcn_repro::", op, ": top grad must be 4-D, got ", grad.sizes());
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor gc = grad.contiguous();
  DeconvGeom g{};
  g.N = gc.size(0); g.Cout = gc.size(1); g.OH = gc.size(2); g.OW = gc.size(3);
  at::Tensor gb = at::empty({g.Cout}, grad.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "fcn_repro_deconv2d_grad_bias_cuda", [&] {
    deconv2d_grad_bias_kernel<scalar_t><<<blocks_for(g.Cout), kThreads, 0, stream>>>(
        gc.data_ptr<scalar_t>(), gb.data_ptr<scalar_t>(), g);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gb;
}

}  // namespace

TORCH_LIBRARY_IMPL(fcn_repro, CUDA, m) {
  m.impl("deconv2d", &deconv2d_cuda);
  m.impl("deconv2d_crop", &deconv2d_crop_cuda);
  m.impl("_deconv2d_crop_path", &deconv2d_crop_path_cuda);
  m.impl("_deconv2d_is_diagonal", &deconv2d_is_diagonal_cuda);
  m.impl("_deconv2d_grad_input", &deconv2d_grad_input_cuda);
  m.impl("_deconv2d_grad_weight", &deconv2d_grad_weight_cuda);
  m.impl("_deconv2d_grad_bias", &deconv2d_grad_bias_cuda);
}

}  // namespace fcn_repro
