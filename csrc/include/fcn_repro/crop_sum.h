// Caffe Crop (axis 2, offsets (oy, ox)) of bottom b to the spatial size of
// bottom a, followed by Eltwise SUM with coefficients (c0, c1), in one pass.
//
// Caffe's Eltwise SUM starts from zero and adds coeff_i * bottom_i in bottom
// order (caffe_axpy), so top = c0*a + c1*crop(b); with the default
// coefficients 1 the products are exact and top = a + crop(b).
// a, top: (N, C, H, W); b: (N, C, Hb, Wb); all contiguous.
#pragma once

#include "fcn_repro/common.h"

namespace fcn_repro {

struct CropGeom {
  int64_t N, C, H, W;   // a and top
  int64_t Hb, Wb;       // b
  int64_t oy, ox;       // window of b
};

template <typename T>
FCN_HD T crop_sum_point(T a, T b, T c0, T c1) {
  return c0 * a + c1 * b;
}

// Offset of the b element that top element (plane, y, x) reads; plane = n*C + c.
FCN_HD int64_t crop_b_index(const CropGeom& g, int64_t plane, int64_t y, int64_t x) {
  return (plane * g.Hb + y + g.oy) * g.Wb + x + g.ox;
}

// Backward: d(loss)/d(a) = c0 * top_grad.
template <typename T>
FCN_HD T crop_sum_grad_a(T gtop, T c0) {
  return c0 * gtop;
}

// Backward: d(loss)/d(b) is c1 * top_grad inside the window and 0 outside
// (Caffe's Crop backward zero-fills the bottom diff). The window columns of b
// row Y: [begin, end), empty when the row is outside the window.
struct ColRange {
  int64_t begin, end;
};
FCN_HD ColRange crop_window_cols(const CropGeom& g, int64_t Y) {
  ColRange r{0, 0};
  if (Y >= g.oy && Y < g.oy + g.H) {
    r.begin = g.ox;
    r.end = g.ox + g.W;
  }
  return r;
}

template <typename T>
FCN_HD T crop_sum_grad_b_in(T gtop, T c1) {
  return c1 * gtop;
}

// d(loss)/d(b) at b element (plane, Y, X); gtop is the top gradient (N, C, H, W).
template <typename T>
FCN_HD T crop_sum_grad_b(const T* gtop, const CropGeom& g, int64_t plane, int64_t Y, int64_t X,
                         T c1) {
  const ColRange cols = crop_window_cols(g, Y);
  if (X < cols.begin || X >= cols.end) return T(0);
  return crop_sum_grad_b_in(gtop[(plane * g.H + Y - g.oy) * g.W + X - g.ox], c1);
}

}  // namespace fcn_repro
