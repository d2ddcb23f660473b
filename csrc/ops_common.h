// Host-side helpers shared by the CPU and CUDA launchers: argument checks and
// geometry construction (torch types allowed here, unlike include/fcn_repro).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "fcn_repro/crop_sum.h"
#include "fcn_repro/deconv.h"

namespace fcn_repro {

// CPU inner loops built for AVX2 and the baseline ISA, chosen at load time
// (GCC/Clang target_clones), as ATen builds its own kernels: the extension is
// otherwise compiled for the baseline only. No FMA either way
// (-ffp-contract=off), so every clone rounds as the header functions say.
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__CUDACC__)
#define FCN_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FCN_CPU_CLONES
#endif

// path argument of the private _deconv2d_crop_path op.
enum DeconvPath : int64_t { kPathAuto = 0, kPathGeneral = 1, kPathDiagonal = 2 };

inline void check_pair(at::IntArrayRef v, const char* what, const char* op) {
  TORCH_CHECK(v.size() == 2, "fcn_repro::", op, ": ", what, " must have 2 values (h, w), got ",
              v.size());
}

inline void check_float_tensor(const at::Tensor& t, const char* what, const char* op) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "fcn_repro::", op,
              ": ", what, " must be float32 or float64, got ", t.scalar_type());
}

// Validates a deconvolution call and returns its geometry. bottom_shape and
// weight_shape may come from tensors or (backward) from size arguments.
// offsets/out_size select the computed window; pass out_size = {-1, -1} for
// the whole Caffe top.
inline DeconvGeom deconv_geom(const char* op, at::IntArrayRef bottom_shape,
                              at::IntArrayRef weight_shape, at::IntArrayRef stride,
                              at::IntArrayRef pad, at::IntArrayRef dilation, int64_t groups,
                              at::IntArrayRef offsets, at::IntArrayRef out_size) {
  TORCH_CHECK(bottom_shape.size() == 4, "fcn_repro::", op,
              ": bottom must be 4-D (N, C, H, W), got ", bottom_shape);
  TORCH_CHECK(weight_shape.size() == 4, "fcn_repro::", op,
              ": weight must be 4-D (Cin, Cout/groups, kh, kw) as Caffe stores Deconvolution "
              "weights, got ",
              weight_shape);
  check_pair(stride, "stride", op);
  check_pair(pad, "pad", op);
  check_pair(dilation, "dilation", op);
  check_pair(offsets, "offsets", op);
  check_pair(out_size, "out_size", op);
  const int64_t N = bottom_shape[0], Cin = bottom_shape[1], H = bottom_shape[2],
                W = bottom_shape[3];
  TORCH_CHECK(groups >= 1 && Cin % groups == 0 && weight_shape[0] == Cin, "fcn_repro::", op,
              ": bottom has ", Cin, " channels, weight shape ", weight_shape, ", groups ", groups,
              ": expected weight.shape[0] == channels, divisible by groups");
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1 && dilation[0] >= 1 && dilation[1] >= 1 &&
                  pad[0] >= 0 && pad[1] >= 0,
              "fcn_repro::", op, ": need stride >= 1, dilation >= 1, pad >= 0; got stride ",
              stride, ", pad ", pad, ", dilation ", dilation);
  TORCH_CHECK(H >= 1 && W >= 1 && weight_shape[2] >= 1 && weight_shape[3] >= 1, "fcn_repro::", op,
              ": empty bottom ", bottom_shape, " or kernel ", weight_shape);
  const int64_t Cout = weight_shape[1] * groups;
  DeconvGeom g = make_deconv_geom(N, Cin, H, W, Cout, groups, weight_shape[2], weight_shape[3],
                                  stride[0], stride[1], pad[0], pad[1], dilation[0], dilation[1],
                                  0, 0, 0, 0);
  TORCH_CHECK(g.full_h >= 1 && g.full_w >= 1, "fcn_repro::", op, ": Caffe top size ", g.full_h,
              "x", g.full_w, " is empty for bottom ", bottom_shape, ", weight ", weight_shape);
  g.oy = offsets[0];
  g.ox = offsets[1];
  g.OH = out_size[0] < 0 ? g.full_h : out_size[0];
  g.OW = out_size[1] < 0 ? g.full_w : out_size[1];
  TORCH_CHECK(g.oy >= 0 && g.ox >= 0 && g.OH >= 1 && g.OW >= 1 && g.oy + g.OH <= g.full_h &&
                  g.ox + g.OW <= g.full_w,
              "fcn_repro::", op, ": crop window offsets (", g.oy, ", ", g.ox, ") size ", g.OH,
              "x", g.OW, " does not fit in the ", g.full_h, "x", g.full_w,
              " Caffe top (Caffe Crop requires offset + size <= bottom size)");
  return g;
}

inline void check_same(const at::Tensor& a, const at::Tensor& b, const char* an, const char* bn,
                       const char* op) {
  TORCH_CHECK(a.device() == b.device(), "fcn_repro::", op, ": ", an, " is on ", a.device(),
              " but ", bn, " is on ", b.device());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "fcn_repro::", op, ": ", an, " is ",
              a.scalar_type(), " but ", bn, " is ", b.scalar_type());
}

inline void check_bias(const c10::optional<at::Tensor>& bias, const at::Tensor& x,
                       const DeconvGeom& g, const char* op) {
  if (!bias.has_value() || !bias->defined()) return;
  check_same(x, *bias, "bottom", "bias", op);
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.Cout, "fcn_repro::", op,
              ": bias must have shape (", g.Cout, ",) (num_output), got ", bias->sizes());
}

// A weight qualifies for the diagonal (depthwise) path when groups == 1,
// Cin == Cout, and every off-diagonal kernel W[i, j] (i != j) is exactly zero.
inline bool deconv_diag_possible(const DeconvGeom& g) {
  return g.groups == 1 && g.Cin == g.Cout;
}

inline CropGeom crop_geom(const char* op, const at::Tensor& a, at::IntArrayRef b_shape,
                          at::IntArrayRef offsets) {
  check_pair(offsets, "offsets", op);
  TORCH_CHECK(a.dim() == 4 && b_shape.size() == 4 && a.size(0) == b_shape[0] &&
                  a.size(1) == b_shape[1],
              "fcn_repro::", op, ": bottoms must be 4-D with the same N, C; got ", a.sizes(),
              " and ", b_shape);
  CropGeom g;
  g.N = a.size(0); g.C = a.size(1); g.H = a.size(2); g.W = a.size(3);
  g.Hb = b_shape[2]; g.Wb = b_shape[3];
  g.oy = offsets[0]; g.ox = offsets[1];
  TORCH_CHECK(g.oy >= 0 && g.ox >= 0 && g.oy + g.H <= g.Hb && g.ox + g.W <= g.Wb, "fcn_repro::",
              op, ": crop window offsets (", g.oy, ", ", g.ox, ") size ", g.H, "x", g.W,
              " does not fit in the ", g.Hb, "x", g.Wb,
              " bottom (Caffe Crop requires offset + size <= bottom size)");
  return g;
}

}  // namespace fcn_repro
