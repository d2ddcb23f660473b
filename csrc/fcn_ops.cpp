// The one TORCH_LIBRARY schema block of fcn_repro. Kernels are registered per
// backend in csrc/cpu/*_kernel.cpp (CPU) and csrc/cuda/*_kernel.cu (CUDA);
// autograd and fake (meta) implementations are registered from Python
// (fcn_repro/ops/_ext.py) with torch.library.register_autograd/register_fake.
// fcn_repro.ops reaches the kernels only through torch.ops.fcn_repro.*.
// FCN_REPRO_NS renames the library (the test-only CUDA emulator registers
// the same schemas as fcn_repro_emu).
//
// Conventions (Caffe's): weight (Cin, Cout/groups, kh, kw); pairs are (h, w);
// Deconvolution top size s(H-1) + d(k-1) + 1 - 2p; Crop offsets count from
// the top-left corner.
#include <torch/extension.h>

#include "diag_cache.h"

#ifndef FCN_REPRO_NS
#define FCN_REPRO_NS fcn_repro
#endif

namespace {
void clear_diagonal_cache() { fcn_repro::diag_cache().clear(); }
}  // namespace

TORCH_LIBRARY(FCN_REPRO_NS, m) {
  // Caffe Deconvolution: x (N, Cin, H, W) -> (N, Cout, s(H-1)+d(k-1)+1-2p, ...).
  m.def(
      "deconv2d(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] pad, "
      "int[2] dilation, int groups) -> Tensor");
  // Deconvolution evaluated only on the window [oy, oy+H) x [ox, ox+W) of its top,
  // i.e. deconv2d(...)[..., oy:oy+H, ox:ox+W] (Deconvolution followed by Crop).
  m.def(
      "deconv2d_crop(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] pad, "
      "int[2] dilation, int groups, int[2] offsets, int[2] out_size) -> Tensor");
  // Caffe Crop(axis 2) of b to a's H x W at offsets, then Eltwise SUM c0*a + c1*crop(b).
  m.def("crop_sum(Tensor a, Tensor b, int[2] offsets, float c0=1.0, float c1=1.0) -> Tensor");

  // CPU only (csrc/cpu/winograd_kernel.cpp): the valid 3x3 correlation of x
  // zero-padded by pad, stride 1, as Winograd F(m x m, 3x3) with the transformed
  // weight U (n*n, ceil(K/32), C, 32), B^T (n, n) and A^T (m, n), n = m + 2;
  // + bias, then ReLU when relu. Tiles start at output (-phase_y, -phase_x).
  // -> (N, K, H + 2 pad_h - 2, W + 2 pad_w - 2), channels-last.
  m.def(
      "winograd_conv3x3(Tensor x, Tensor U, Tensor BT, Tensor AT, Tensor? bias, int K, int[2] pad, "
      "int[2] phase, bool relu) -> Tensor");

  // Private: backward kernels (called by the autograd formulas).
  m.def(
      "_deconv2d_grad_input(Tensor grad, Tensor weight, int[2] in_size, int[2] stride, "
      "int[2] pad, int[2] dilation, int groups, int[2] offsets) -> Tensor");
  m.def(
      "_deconv2d_grad_weight(Tensor grad, Tensor x, int[2] kernel, int[2] stride, int[2] pad, "
      "int[2] dilation, int groups, int[2] offsets) -> Tensor");
  m.def("_deconv2d_grad_bias(Tensor grad) -> Tensor");
  m.def(
      "_crop_sum_backward(Tensor grad, int[2] b_size, int[2] offsets, float c0, float c1) "
      "-> (Tensor, Tensor)");
  // Private, for tests and diagnostics: deconv2d_crop with the path forced
  // (0 auto = check the weight, 1 general, 2 diagonal without checking), and
  // the weight check the auto path runs.
  m.def(
      "_deconv2d_crop_path(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] pad, "
      "int[2] dilation, int groups, int[2] offsets, int[2] out_size, int path) -> Tensor");
  m.def("_deconv2d_is_diagonal(Tensor weight, int groups) -> bool");
  // Forgets the remembered diagonal checks (CUDA remembers them per weight
  // version; a change through .data or NumPy bypasses the version counter).
  m.def("_clear_diagonal_cache() -> ()", &clear_diagonal_cache);
}

#ifndef FCN_REPRO_NO_MODULE
// The module stub: importing fcn_repro._C runs the registrations above.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
#endif
