// Host side of every op, shared by the CPU and CUDA launchers: the one
// argument check and geometry construction per op (torch types allowed here,
// unlike include/fcn_repro). Both backends call the same check_* function, so
// they accept and refuse exactly the same calls with the same messages; the
// Python fake kernels and references (fcn_repro/ops/checks.py) check the same
// rules.
//
// Range rule: Caffe keeps blob dimensions and layer parameters in `int`, so
// every integer that reaches us (tensor dimensions, stride, pad, dilation,
// groups, offsets, sizes) must lie in [lo, INT32_MAX], and so must every term
// of the size formulas (computed with checked int64 arithmetic). With every
// operand below 2^31, no sum or product the kernels form from them (at most a
// product of two plus a few terms, or an index below a tensor's numel)
// overflows int64. Refusals are c10::ValueError (Python ValueError).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <climits>
#include <cstdint>
#include <initializer_list>

#include "fcn_repro/crop_sum.h"
#include "fcn_repro/deconv.h"

namespace fcn_repro {

// CPU inner loops built for AVX2 and the baseline ISA, chosen at load time
// (GCC/Clang target_clones), as ATen builds its own kernels: the extension is
// otherwise compiled for the baseline only. No FMA either way
// (-ffp-contract=off), so every clone rounds as the header functions say.
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__CUDACC__) && \
    !defined(FCN_NO_CLONES)
#define FCN_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FCN_CPU_CLONES
#endif

// path argument of the private _deconv2d_crop_path op.
enum DeconvPath : int64_t { kPathAuto = 0, kPathGeneral = 1, kPathDiagonal = 2 };

// The largest value Caffe can hold in a blob dimension or layer parameter.
constexpr int64_t kMaxCaffeInt = INT32_MAX;

#define FCN_CHECK(op, cond, ...) TORCH_CHECK_VALUE(cond, "fcn_repro::", op, ": ", __VA_ARGS__)

// lo <= v <= INT32_MAX.
inline int64_t check_int(int64_t v, int64_t lo, const char* what, const char* op) {
  FCN_CHECK(op, v >= lo && v <= kMaxCaffeInt, what, " must be in [", lo, ", ", kMaxCaffeInt,
            "] (Caffe stores it in an int), got ", v);
  return v;
}

// Checked int64 arithmetic for the size formulas; the result must also be a Caffe int.
inline int64_t add_checked(int64_t a, int64_t b, const char* what, const char* op) {
  int64_t r = 0;
  FCN_CHECK(op, !__builtin_add_overflow(a, b, &r) && r <= kMaxCaffeInt && r >= -kMaxCaffeInt, what,
            " (", a, " + ", b, ") is out of Caffe's int range");
  return r;
}
inline int64_t mul_checked(int64_t a, int64_t b, const char* what, const char* op) {
  int64_t r = 0;
  FCN_CHECK(op, !__builtin_mul_overflow(a, b, &r) && r <= kMaxCaffeInt && r >= -kMaxCaffeInt, what,
            " (", a, " * ", b, ") is out of Caffe's int range");
  return r;
}
// Element count of a shape: checked against int64 overflow (not against
// INT32_MAX: a batch may hold more than 2^31 elements).
inline int64_t numel_checked(std::initializer_list<int64_t> dims, const char* what, const char* op) {
  int64_t n = 1;
  for (int64_t d : dims)
    FCN_CHECK(op, !__builtin_mul_overflow(n, d, &n), what, " has more than 2^63 elements");
  return n;
}

inline void check_pair(at::IntArrayRef v, const char* what, const char* op) {
  FCN_CHECK(op, v.size() == 2, what, " must have 2 values (h, w), got ", v.size());
}

// A pair of ints each in [lo, INT32_MAX].
inline void check_int_pair(at::IntArrayRef v, int64_t lo, const char* what, const char* op) {
  check_pair(v, what, op);
  FCN_CHECK(op, v[0] >= lo && v[0] <= kMaxCaffeInt && v[1] >= lo && v[1] <= kMaxCaffeInt, what,
            " must be in [", lo, ", ", kMaxCaffeInt, "] (Caffe stores it in an int), got ", v);
}

inline void check_shape(at::IntArrayRef s, const char* what, const char* op) {
  FCN_CHECK(op, s.size() == 4, what, " must be 4-D (N, C, H, W), got ", s);
  for (int64_t d : s)
    FCN_CHECK(op, d >= 0 && d <= kMaxCaffeInt, what, " shape ", s,
              " has a dimension over Caffe's int range");
}

// The tensor arguments of one call: defined ones must be float32/float64, of
// one dtype, on one device, of the backend whose kernel runs (a meta or CPU
// tensor among CUDA ones, or the reverse, is refused: no uninitialised output).
struct NamedTensor {
  const at::Tensor* t;
  const char* name;
};
inline void check_tensors(const char* op, c10::DeviceType backend,
                          std::initializer_list<NamedTensor> ts) {
  const NamedTensor* first = nullptr;
  for (const NamedTensor& a : ts) {
    if (a.t == nullptr || !a.t->defined()) continue;
    FCN_CHECK(op, a.t->scalar_type() == at::kFloat || a.t->scalar_type() == at::kDouble, a.name,
              " must be float32 or float64, got ", a.t->scalar_type());
    FCN_CHECK(op, a.t->device().type() == backend, a.name, " is on ", a.t->device(), ", expected a ",
              c10::DeviceTypeName(backend, true), " tensor like the others");
    if (first == nullptr) {
      first = &a;
      continue;
    }
    FCN_CHECK(op, a.t->device() == first->t->device(), first->name, " is on ", first->t->device(),
              " but ", a.name, " is on ", a.t->device());
    FCN_CHECK(op, a.t->scalar_type() == first->t->scalar_type(), first->name, " is ",
              first->t->scalar_type(), " but ", a.name, " is ", a.t->scalar_type());
  }
}

// Geometry of a deconvolution after all checks. bottom_shape and weight_shape
// come from tensors or (backward) from size arguments. The window is
// [oy, oy+OH) x [ox, ox+OW) of Caffe's top; whole: the entire top (no crop).
inline DeconvGeom deconv_geom(const char* op, at::IntArrayRef bottom_shape,
                              at::IntArrayRef weight_shape, at::IntArrayRef stride,
                              at::IntArrayRef pad, at::IntArrayRef dilation, int64_t groups,
                              at::IntArrayRef offsets, at::IntArrayRef out_size, bool whole) {
  check_shape(bottom_shape, "bottom", op);
  FCN_CHECK(op, weight_shape.size() == 4,
            "weight must be 4-D (Cin, Cout/groups, kh, kw) as Caffe stores Deconvolution weights, got ",
            weight_shape);
  check_shape(weight_shape, "weight", op);
  check_int_pair(stride, 1, "stride", op);
  check_int_pair(pad, 0, "pad", op);
  check_int_pair(dilation, 1, "dilation", op);
  check_int_pair(offsets, 0, "offsets", op);
  if (!whole) check_int_pair(out_size, 1, "out_size", op);
  check_int(groups, 1, "groups", op);
  const int64_t N = bottom_shape[0], Cin = bottom_shape[1], H = bottom_shape[2],
                W = bottom_shape[3];
  FCN_CHECK(op, Cin % groups == 0 && weight_shape[0] == Cin, "bottom has ", Cin,
            " channels, weight shape ", weight_shape, ", groups ", groups,
            ": expected weight.shape[0] == channels, divisible by groups");
  FCN_CHECK(op, H >= 1 && W >= 1 && weight_shape[2] >= 1 && weight_shape[3] >= 1, "empty bottom ",
            bottom_shape, " or kernel ", weight_shape);
  const int64_t Cout = mul_checked(weight_shape[1], groups, "num_output (weight.shape[1] * groups)", op);
  // Caffe's top size s(H-1) + d(k-1) + 1 - 2p, each term a Caffe int.
  int64_t full[2];
  const int64_t in[2] = {H, W};
  for (int a = 0; a < 2; ++a) {
    const int64_t span = mul_checked(stride[a], in[a] - 1, "stride * (bottom size - 1)", op);
    const int64_t extent = add_checked(
        mul_checked(dilation[a], weight_shape[2 + a] - 1, "dilation * (kernel - 1)", op), 1,
        "kernel extent", op);
    const int64_t twice_pad = mul_checked(2, pad[a], "2 * pad", op);
    full[a] = add_checked(add_checked(span, extent, "Deconvolution top size", op), -twice_pad,
                          "Deconvolution top size", op);
  }
  FCN_CHECK(op, full[0] >= 1 && full[1] >= 1, "Caffe top size ", full[0], "x", full[1],
            " is empty for bottom ", bottom_shape, ", weight ", weight_shape, ", stride ", stride,
            ", pad ", pad, ", dilation ", dilation);
  DeconvGeom g = make_deconv_geom(N, Cin, H, W, Cout, groups, weight_shape[2], weight_shape[3],
                                  stride[0], stride[1], pad[0], pad[1], dilation[0], dilation[1],
                                  0, 0, 0, 0);
  g.oy = offsets[0];
  g.ox = offsets[1];
  g.OH = whole ? g.full_h : out_size[0];
  g.OW = whole ? g.full_w : out_size[1];
  // every operand is below 2^31: the sums do not overflow
  FCN_CHECK(op, g.oy + g.OH <= g.full_h && g.ox + g.OW <= g.full_w, "crop window offsets (", g.oy,
            ", ", g.ox, ") size ", g.OH, "x", g.OW, " does not fit in the ", g.full_h, "x", g.full_w,
            " Caffe top (Caffe Crop requires offset + size <= bottom size)");
  numel_checked({N, Cout, g.OH, g.OW}, "top", op);
  return g;
}

// A weight qualifies for the diagonal (depthwise) path when groups == 1,
// Cin == Cout, and every off-diagonal kernel W[i, j] (i != j) is exactly zero.
inline bool deconv_diag_possible(const DeconvGeom& g) { return g.groups == 1 && g.Cin == g.Cout; }

inline void check_path(int64_t path, const DeconvGeom& g, const char* op) {
  FCN_CHECK(op, path == kPathAuto || path == kPathGeneral || path == kPathDiagonal,
            "path must be 0 (auto), 1 (general) or 2 (diagonal), got ", path);
  FCN_CHECK(op, path != kPathDiagonal || deconv_diag_possible(g),
            "the diagonal path needs groups == 1 and Cin == Cout, got groups ", g.groups, ", Cin ",
            g.Cin, ", Cout ", g.Cout);
}

// ---- one check per op ------------------------------------------------------

// deconv2d (whole), deconv2d_crop and _deconv2d_crop_path.
inline DeconvGeom check_deconv_forward(const char* op, c10::DeviceType backend, const at::Tensor& x,
                                       const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                       at::IntArrayRef stride, at::IntArrayRef pad,
                                       at::IntArrayRef dilation, int64_t groups,
                                       at::IntArrayRef offsets, at::IntArrayRef out_size, bool whole,
                                       int64_t path) {
  const at::Tensor* b = bias.has_value() && bias->defined() ? &*bias : nullptr;
  check_tensors(op, backend, {{&x, "bottom"}, {&weight, "weight"}, {b, "bias"}});
  DeconvGeom g = deconv_geom(op, x.sizes(), weight.sizes(), stride, pad, dilation, groups, offsets,
                             out_size, whole);
  FCN_CHECK(op, b == nullptr || (b->dim() == 1 && b->size(0) == g.Cout), "bias must have shape (",
            g.Cout, ",) (num_output), got ", b ? b->sizes() : at::IntArrayRef());
  check_path(path, g, op);
  return g;
}

inline DeconvGeom check_deconv_grad_input(const char* op, c10::DeviceType backend,
                                          const at::Tensor& grad, const at::Tensor& weight,
                                          at::IntArrayRef in_size, at::IntArrayRef stride,
                                          at::IntArrayRef pad, at::IntArrayRef dilation,
                                          int64_t groups, at::IntArrayRef offsets) {
  check_tensors(op, backend, {{&grad, "top grad"}, {&weight, "weight"}});
  check_shape(grad.sizes(), "top grad", op);
  FCN_CHECK(op, weight.dim() == 4, "weight must be 4-D, got ", weight.sizes());
  check_int_pair(in_size, 1, "in_size", op);
  const int64_t bottom[4] = {grad.size(0), weight.size(0), in_size[0], in_size[1]};
  const int64_t window[2] = {grad.size(2), grad.size(3)};
  DeconvGeom g = deconv_geom(op, bottom, weight.sizes(), stride, pad, dilation, groups, offsets,
                             window, false);
  FCN_CHECK(op, grad.size(1) == g.Cout, "top grad has ", grad.size(1), " channels, expected ", g.Cout);
  return g;
}

inline DeconvGeom check_deconv_grad_weight(const char* op, c10::DeviceType backend,
                                           const at::Tensor& grad, const at::Tensor& x,
                                           at::IntArrayRef kernel, at::IntArrayRef stride,
                                           at::IntArrayRef pad, at::IntArrayRef dilation,
                                           int64_t groups, at::IntArrayRef offsets) {
  check_tensors(op, backend, {{&grad, "top grad"}, {&x, "bottom"}});
  check_shape(grad.sizes(), "top grad", op);
  check_shape(x.sizes(), "bottom", op);
  check_int_pair(kernel, 1, "kernel", op);
  check_int(groups, 1, "groups", op);
  FCN_CHECK(op, grad.size(1) % groups == 0, "top grad has ", grad.size(1),
            " channels, not divisible by groups ", groups);
  const int64_t wshape[4] = {x.size(1), grad.size(1) / groups, kernel[0], kernel[1]};
  const int64_t window[2] = {grad.size(2), grad.size(3)};
  DeconvGeom g = deconv_geom(op, x.sizes(), wshape, stride, pad, dilation, groups, offsets, window,
                             false);
  FCN_CHECK(op, grad.size(0) == g.N, "top grad batch ", grad.size(0), " != bottom batch ", g.N);
  return g;
}

// Only N, Cout, OH, OW are set.
inline DeconvGeom check_deconv_grad_bias(const char* op, c10::DeviceType backend,
                                         const at::Tensor& grad) {
  check_tensors(op, backend, {{&grad, "top grad"}});
  check_shape(grad.sizes(), "top grad", op);
  DeconvGeom g{};
  g.N = grad.size(0); g.Cout = grad.size(1); g.OH = grad.size(2); g.OW = grad.size(3);
  return g;
}

// _deconv2d_is_diagonal: the weight's geometry (groups checked before any division).
inline DeconvGeom check_is_diagonal(const char* op, c10::DeviceType backend, const at::Tensor& weight,
                                    int64_t groups) {
  check_tensors(op, backend, {{&weight, "weight"}});
  FCN_CHECK(op, weight.dim() == 4, "weight must be 4-D, got ", weight.sizes());
  check_shape(weight.sizes(), "weight", op);
  check_int(groups, 1, "groups", op);
  const int64_t cout = mul_checked(weight.size(1), groups, "num_output (weight.shape[1] * groups)", op);
  FCN_CHECK(op, weight.size(0) % groups == 0, "weight has ", weight.size(0),
            " input channels, not divisible by groups ", groups);
  return make_deconv_geom(1, weight.size(0), 1, 1, cout, groups, weight.size(2), weight.size(3), 1,
                          1, 0, 0, 1, 1, 0, 0, 1, 1);
}

inline CropGeom crop_geom(const char* op, at::IntArrayRef a_shape, at::IntArrayRef b_shape,
                          at::IntArrayRef offsets) {
  check_int_pair(offsets, 0, "offsets", op);
  FCN_CHECK(op, a_shape.size() == 4 && b_shape.size() == 4 && a_shape[0] == b_shape[0] &&
                    a_shape[1] == b_shape[1],
            "bottoms must be 4-D with the same N, C; got ", a_shape, " and ", b_shape);
  check_shape(a_shape, "first bottom (a)", op);
  check_shape(b_shape, "second bottom (b)", op);
  CropGeom g;
  g.N = a_shape[0]; g.C = a_shape[1]; g.H = a_shape[2]; g.W = a_shape[3];
  g.Hb = b_shape[2]; g.Wb = b_shape[3];
  g.oy = offsets[0]; g.ox = offsets[1];
  // every operand is below 2^31: the sums do not overflow
  FCN_CHECK(op, g.oy + g.H <= g.Hb && g.ox + g.W <= g.Wb, "crop window offsets (", g.oy, ", ", g.ox,
            ") size ", g.H, "x", g.W, " does not fit in the ", g.Hb, "x", g.Wb,
            " bottom (Caffe Crop requires offset + size <= bottom size)");
  return g;
}

inline CropGeom check_crop_sum(const char* op, c10::DeviceType backend, const at::Tensor& a,
                               const at::Tensor& b, at::IntArrayRef offsets) {
  check_tensors(op, backend, {{&a, "first bottom (a)"}, {&b, "second bottom (b)"}});
  return crop_geom(op, a.sizes(), b.sizes(), offsets);
}

inline CropGeom check_crop_sum_backward(const char* op, c10::DeviceType backend,
                                        const at::Tensor& grad, at::IntArrayRef b_size,
                                        at::IntArrayRef offsets) {
  check_tensors(op, backend, {{&grad, "top grad"}});
  check_shape(grad.sizes(), "top grad", op);
  check_int_pair(b_size, 1, "b_size", op);
  const int64_t b_shape[4] = {grad.size(0), grad.size(1), b_size[0], b_size[1]};
  return crop_geom(op, grad.sizes(), b_shape, offsets);
}

// ---- winograd_conv3x3 (CPU only) -------------------------------------------

// Geometry of one call of the Winograd F(m x m, 3x3) convolution: the
// stride-1 correlation of x (N, C, H, W), zero-padded by pad, with a 3x3
// kernel given as its transform U (n*n, Kp/32, C, 32), n = m + 2, Kp = K
// rounded up to 32; B^T (n, n) and A^T (m, n) the transforms.
// Output channels per packed panel of U (its last axis): the kernel's layout.
constexpr int64_t kWinogradPanel = 32;

struct WinogradGeom {
  int64_t N, C, H, W, K, Kp, OH, OW, m, n, pt, pl, phy, phx, th, tw;
};

inline WinogradGeom check_winograd(const char* op, const at::Tensor& x, const at::Tensor& U,
                                   const at::Tensor& BT, const at::Tensor& AT,
                                   const c10::optional<at::Tensor>& bias, int64_t K,
                                   at::IntArrayRef pad, at::IntArrayRef phase) {
  const at::Tensor* b = bias.has_value() && bias->defined() ? &*bias : nullptr;
  for (const NamedTensor& t : {NamedTensor{&x, "x"}, NamedTensor{&U, "U"}, NamedTensor{&BT, "BT"},
                               NamedTensor{&AT, "AT"}, NamedTensor{b, "bias"}}) {
    if (t.t == nullptr) continue;
    FCN_CHECK(op, t.t->scalar_type() == at::kFloat, t.name, " must be float32, got ",
              t.t->scalar_type());
    FCN_CHECK(op, t.t->device().is_cpu(), t.name, " must be a CPU tensor, got ", t.t->device());
  }
  check_shape(x.sizes(), "x", op);
  FCN_CHECK(op, AT.dim() == 2 && BT.dim() == 2, "AT and BT must be 2-D, got ", AT.sizes(), " and ",
            BT.sizes());
  const int64_t m = AT.size(0), n = AT.size(1);
  FCN_CHECK(op, (m == 2 || m == 3 || m == 4 || m == 6) && n == m + 2,
            "AT must be (m, m + 2) with m in {2, 3, 4, 6} (F(m x m, 3x3)), got ", AT.sizes());
  FCN_CHECK(op, BT.size(0) == n && BT.size(1) == n, "BT must be (", n, ", ", n, "), got ", BT.sizes());
  check_int(K, 1, "K (output channels)", op);
  check_int_pair(pad, 0, "pad", op);
  check_pair(phase, "phase", op);
  FCN_CHECK(op, phase[0] >= 0 && phase[0] < m && phase[1] >= 0 && phase[1] < m, "phase must be in [0, ",
            m, "), got ", phase);
  WinogradGeom g{};
  g.N = x.size(0); g.C = x.size(1); g.H = x.size(2); g.W = x.size(3);
  g.K = K; g.m = m; g.n = n; g.pt = pad[0]; g.pl = pad[1]; g.phy = phase[0]; g.phx = phase[1];
  constexpr int64_t P = kWinogradPanel;
  g.Kp = (K + P - 1) / P * P;
  FCN_CHECK(op, g.C >= 1, "x has no channels: ", x.sizes());
  FCN_CHECK(op, U.dim() == 4 && U.size(0) == n * n && U.size(1) == g.Kp / P && U.size(2) == g.C &&
                    U.size(3) == P,
            "U must be (", n * n, ", ", g.Kp / P, ", ", g.C, ", ", P, ") for x ", x.sizes(), " and K ", K,
            ", got ", U.sizes());
  FCN_CHECK(op, b == nullptr || (b->dim() == 1 && b->size(0) == K), "bias must have shape (", K,
            ",), got ", b ? b->sizes() : at::IntArrayRef());
  const int64_t in[2] = {g.H, g.W};
  int64_t out[2];
  for (int i = 0; i < 2; ++i) {
    const int64_t padded = add_checked(in[i], mul_checked(2, pad[i], "2 * pad", op), "padded size", op);
    out[i] = padded - 2;
    FCN_CHECK(op, out[i] >= 1, "the padded input ", x.sizes(), " with pad ", pad,
              " is smaller than the 3x3 kernel");
  }
  g.OH = out[0]; g.OW = out[1];
  g.th = (g.OH + g.phy + m - 1) / m;
  g.tw = (g.OW + g.phx + m - 1) / m;
  numel_checked({g.N, g.K, g.OH, g.OW}, "output", op);
  numel_checked({g.N, g.th, g.tw}, "tile count", op);
  return g;
}

}  // namespace fcn_repro
