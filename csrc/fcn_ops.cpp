// The one TORCH_LIBRARY schema block of fcn_repro. Kernels are registered per
// backend in csrc/cpu/*_kernel.cpp (CPU) and csrc/cuda/*_kernel.cu (CUDA);
// autograd and fake (meta) implementations are registered from Python
// (fcn_repro/ops/_ext.py) with torch.library.register_autograd/register_fake.
// Below the schemas: the module's direct entry points for fcn_repro.ops.
//
// Conventions (Caffe's): weight (Cin, Cout/groups, kh, kw); pairs are (h, w);
// Deconvolution top size s(H-1) + d(k-1) + 1 - 2p; Crop offsets count from
// the top-left corner.
#include <torch/extension.h>

#include <array>
#include <initializer_list>
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

namespace py = pybind11;

// Direct entry points for fcn_repro.ops (Python). A boxed torch.ops.fcn_repro.*
// call from Python parses every argument against the schema and, even under
// no_grad, passes through the autograd formula registered in Python: ~6-10 us,
// as much as a whole crop_sum at FCN sizes. These take the Python arguments
// as fcn_repro.ops does, call the registered op through the C++ dispatcher
// (below the autograd keys when no gradient can flow, with the GIL released),
// and return None whenever the Python path must decide instead: a device or
// dtype without kernels here (it falls back to the reference and warns), or
// an argument form they do not take (it raises the documented errors).

bool has_kernels(const at::Tensor& t) {
  if (t.scalar_type() != at::kFloat && t.scalar_type() != at::kDouble) return false;
  if (t.device().is_cpu()) return true;
#ifdef FCN_REPRO_WITH_CUDA
  if (t.device().is_cuda()) return true;
#endif
  return false;
}

bool is_int(py::handle o) { return py::isinstance<py::int_>(o) && !py::isinstance<py::bool_>(o); }

// An int (both axes) or a tuple/list of one or two ints, as fcn_repro.ops.reference.pair reads it.
bool int_pair(py::handle o, std::array<int64_t, 2>& out) {
  if (is_int(o)) {
    out[0] = out[1] = o.cast<int64_t>();
    return true;
  }
  if (!py::isinstance<py::tuple>(o) && !py::isinstance<py::list>(o)) return false;
  const auto seq = py::reinterpret_borrow<py::sequence>(o);
  const size_t n = seq.size();
  if (n != 1 && n != 2) return false;
  for (size_t k = 0; k < n; ++k)
    if (!is_int(seq[k])) return false;
  out[0] = seq[0].cast<int64_t>();
  out[1] = seq[n - 1].cast<int64_t>();
  return true;
}

bool needs_grad(std::initializer_list<const at::Tensor*> ts) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : ts)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

template <typename Call>
py::object run(bool grad, Call&& call) {
  at::Tensor y;
  if (grad) {
    y = call();  // through the autograd formula (registered in Python: it takes the GIL itself)
  } else {
    py::gil_scoped_release nogil;
    at::AutoDispatchBelowAutograd guard;
    y = call();
  }
  return py::cast(std::move(y));
}

py::object crop_sum_entry(const at::Tensor& a, const at::Tensor& b, py::handle offsets, py::handle coeffs) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fcn_repro::crop_sum", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                                               double, double)>();
  std::array<int64_t, 2> off{};
  double c0 = 1.0, c1 = 1.0;
  if (!has_kernels(a) || !int_pair(offsets, off)) return py::none();
  if (!coeffs.is_none()) {
    if (!py::isinstance<py::tuple>(coeffs) && !py::isinstance<py::list>(coeffs)) return py::none();
    const auto seq = py::reinterpret_borrow<py::sequence>(coeffs);
    if (seq.size() < 2) return py::none();
    for (size_t k = 0; k < 2; ++k)
      if (!py::isinstance<py::float_>(seq[k]) && !is_int(seq[k])) return py::none();
    c0 = seq[0].cast<double>();
    c1 = seq[1].cast<double>();
  }
  return run(needs_grad({&a, &b}), [&] { return op.call(a, b, off, c0, c1); });
}

using Sig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, at::IntArrayRef,
                       at::IntArrayRef, at::IntArrayRef, int64_t);
using CropSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                           at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t, at::IntArrayRef,
                           at::IntArrayRef);

// Arguments shared by both deconvolutions; false when the Python path must decide.
bool deconv_args(const at::Tensor& x, py::handle bias, py::handle stride, py::handle pad, py::handle dilation,
                 py::handle groups, std::optional<at::Tensor>& b, std::array<int64_t, 2> (&sp)[3],
                 int64_t& g) {
  if (!has_kernels(x) || !int_pair(stride, sp[0]) || !int_pair(pad, sp[1]) || !int_pair(dilation, sp[2]) ||
      !is_int(groups))
    return false;
  if (!bias.is_none()) {
    if (!THPVariable_Check(bias.ptr())) return false;
    b = THPVariable_Unpack(bias.ptr());
  }
  g = groups.cast<int64_t>();
  return true;
}

py::object deconv2d_entry(const at::Tensor& x, const at::Tensor& w, py::handle bias, py::handle stride,
                          py::handle pad, py::handle dilation, py::handle groups) {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("fcn_repro::deconv2d", "").typed<Sig>();
  std::optional<at::Tensor> b;
  std::array<int64_t, 2> sp[3];
  int64_t g = 1;
  if (!deconv_args(x, bias, stride, pad, dilation, groups, b, sp, g)) return py::none();
  const at::Tensor none;
  return run(needs_grad({&x, &w, b ? &*b : &none}), [&] { return op.call(x, w, b, sp[0], sp[1], sp[2], g); });
}

py::object deconv2d_crop_entry(const at::Tensor& x, const at::Tensor& w, py::handle bias, py::handle stride,
                               py::handle pad, py::handle dilation, py::handle groups, py::handle offsets,
                               py::handle out_size) {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("fcn_repro::deconv2d_crop", "").typed<CropSig>();
  std::optional<at::Tensor> b;
  std::array<int64_t, 2> sp[3], off{}, size{};
  int64_t g = 1;
  if (!deconv_args(x, bias, stride, pad, dilation, groups, b, sp, g) || !int_pair(offsets, off) ||
      !int_pair(out_size, size))
    return py::none();
  const at::Tensor none;
  return run(needs_grad({&x, &w, b ? &*b : &none}),
             [&] { return op.call(x, w, b, sp[0], sp[1], sp[2], g, off, size); });
}

}  // namespace

// Importing fcn_repro._C runs the registrations above; the ops are reached
// through torch.ops.fcn_repro, and from fcn_repro.ops through the entry points.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("crop_sum", &crop_sum_entry, "fcn_repro::crop_sum from fcn_repro.ops (None: use the Python path)");
  m.def("deconv2d", &deconv2d_entry, "fcn_repro::deconv2d from fcn_repro.ops (None: use the Python path)");
  m.def("deconv2d_crop", &deconv2d_crop_entry,
        "fcn_repro::deconv2d_crop from fcn_repro.ops (None: use the Python path)");
}
