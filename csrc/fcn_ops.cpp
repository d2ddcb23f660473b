// The one TORCH_LIBRARY schema block of fcn_repro. Kernels are registered per
// backend in csrc/cpu/*_kernel.cpp (CPU) and csrc/cuda/*_kernel.cu (CUDA);
// autograd and fake (meta) implementations are registered from Python
// (fcn_repro/ops/_ext.py) with torch.library.register_autograd/register_fake.
//
// Conventions (Caffe's): weight (Cin, Cout/groups, kh, kw); pairs are (h, w);
// Deconvolution top size s(H-1) + d(k-1) + 1 - 2p; Crop offsets count from
// the top-left corner.
#include <torch/extension.h>

#include <array>
#include <optional>

TORCH_LIBRARY(fcn_repro, m) {
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
}

namespace {

// Inference entry points: the same registered ops, called through the C++
// dispatcher below the autograd keys. From Python, torch.ops.fcn_repro.* is a
// boxed call (argument parsing against the schema, then the autograd formula
// registered in Python) that costs ~10 us, as much as a whole crop_sum at FCN
// sizes; fcn_repro.ops uses these when no gradient can flow. The device (CPU,
// CUDA, Meta) is still chosen by the dispatcher.
at::Tensor crop_sum_nograd(const at::Tensor& a, const at::Tensor& b, int64_t oy, int64_t ox, double c0,
                           double c1) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fcn_repro::crop_sum", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                                               double, double)>();
  at::AutoDispatchBelowAutograd guard;
  const int64_t offsets[2] = {oy, ox};
  return op.call(a, b, offsets, c0, c1);
}

using Pair = std::array<int64_t, 2>;

at::Tensor deconv2d_nograd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           Pair stride, Pair pad, Pair dilation, int64_t groups) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fcn_repro::deconv2d", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                               const std::optional<at::Tensor>&, at::IntArrayRef,
                                               at::IntArrayRef, at::IntArrayRef, int64_t)>();
  at::AutoDispatchBelowAutograd guard;
  return op.call(x, weight, bias, stride, pad, dilation, groups);
}

at::Tensor deconv2d_crop_nograd(const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, Pair stride, Pair pad, Pair dilation,
                                int64_t groups, Pair offsets, Pair out_size) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fcn_repro::deconv2d_crop", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                               const std::optional<at::Tensor>&, at::IntArrayRef,
                                               at::IntArrayRef, at::IntArrayRef, int64_t, at::IntArrayRef,
                                               at::IntArrayRef)>();
  at::AutoDispatchBelowAutograd guard;
  return op.call(x, weight, bias, stride, pad, dilation, groups, offsets, out_size);
}

}  // namespace

// Importing fcn_repro._C runs the registrations above; the ops are reached
// through torch.ops.fcn_repro (and, for inference, the entry points below).
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("crop_sum_nograd", &crop_sum_nograd, "fcn_repro::crop_sum below autograd (no gradient)",
        pybind11::arg("a"), pybind11::arg("b"), pybind11::arg("oy"), pybind11::arg("ox"),
        pybind11::arg("c0") = 1.0, pybind11::arg("c1") = 1.0);
  m.def("deconv2d_nograd", &deconv2d_nograd, "fcn_repro::deconv2d below autograd (no gradient)");
  m.def("deconv2d_crop_nograd", &deconv2d_crop_nograd, "fcn_repro::deconv2d_crop below autograd (no gradient)");
}
