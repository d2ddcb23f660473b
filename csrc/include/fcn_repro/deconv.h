// Caffe Deconvolution (and its crop-window variant), gather form.
//
// Caffe's DeconvolutionLayer computes top = col2im(W^T * bottom): every bottom
// pixel scatters a kh x kw patch (stride s, dilation d, pad p) into a top of
// size s(H-1) + d(k-1) + 1 - 2p. Scattering needs atomics on a GPU; we gather
// instead: top(y) receives bottom(i) through tap ky exactly when
//     t = y + p - ky*d  satisfies  t % s == 0  and  0 <= i = t/s < H.
// For a fixed y only the taps with ky*d == y + p (mod s) can qualify; they are
// lcm(s, d)/d apart and their bottom rows lcm(s, d)/s apart, so we compute the
// first one from the residue and step, never testing the other taps
// (FCN's k16 s8 upsampling: 2 taps per axis instead of 16).
//
// Tensors are contiguous: bottom x (N, Cin, H, W); weight (Cin, Cout/g, kh, kw)
// as Caffe stores it; top (N, Cout, OH, OW) is the window [oy, oy+OH) x
// [ox, ox+OW) of Caffe's full top (the whole top when no crop follows).
#pragma once

#include "fcn_repro/common.h"

namespace fcn_repro {

struct DeconvGeom {
  int64_t N, Cin, H, W;           // bottom
  int64_t Cout, groups, cin_g, cout_g;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t full_h, full_w;         // Caffe's full top size
  int64_t oy, ox;                 // window offset inside the full top
  int64_t OH, OW;                 // window (computed top) size
  int64_t ksy, isy, ksx, isx;     // tap step and bottom-row step between contributing taps
};

// Fills the derived fields. Host side; arguments are validated by the caller.
inline DeconvGeom make_deconv_geom(int64_t N, int64_t Cin, int64_t H, int64_t W, int64_t Cout,
                                   int64_t groups, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                                   int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t oy,
                                   int64_t ox, int64_t OH, int64_t OW) {
  DeconvGeom g;
  g.N = N; g.Cin = Cin; g.H = H; g.W = W; g.Cout = Cout; g.groups = groups;
  g.cin_g = Cin / groups; g.cout_g = Cout / groups;
  g.kh = kh; g.kw = kw; g.sh = sh; g.sw = sw; g.ph = ph; g.pw = pw; g.dh = dh; g.dw = dw;
  g.full_h = sh * (H - 1) + dh * (kh - 1) + 1 - 2 * ph;
  g.full_w = sw * (W - 1) + dw * (kw - 1) + 1 - 2 * pw;
  g.oy = oy; g.ox = ox; g.OH = OH; g.OW = OW;
  g.ksy = sh / gcd64(sh, dh); g.isy = dh / gcd64(sh, dh);
  g.ksx = sw / gcd64(sw, dw); g.isx = dw / gcd64(sw, dw);
  return g;
}

// The contributing taps of one top coordinate along one axis: taps k0, k0+ks,
// ... (n of them, ascending) read bottom rows i0, i0-is, ...
struct Taps {
  int64_t k0, i0, n;
};

// o: coordinate in Caffe's full top; p, s, d, k: pad, stride, dilation, kernel
// size; in: bottom size; ks, is: the steps of DeconvGeom.
FCN_HD Taps deconv_taps(int64_t o, int64_t p, int64_t s, int64_t d, int64_t k, int64_t in,
                        int64_t ks, int64_t is) {
  Taps t{0, 0, 0};
  const int64_t r = o + p;  // >= 0
  int64_t k0 = 0;
  // The first tap with (r - k0*d) % s == 0 lies in [0, ks) if any does.
  for (; k0 < ks && k0 < k; ++k0) {
    const int64_t q = r - k0 * d;
    if (q < 0) return t;  // bottom row < 0 for this and every later tap
    if (q % s == 0) break;
  }
  if (k0 >= ks || k0 >= k) return t;
  int64_t i0 = (r - k0 * d) / s;
  if (i0 >= in) {  // skip the taps that read below the bottom's last row
    const int64_t skip = ceil_div(i0 - (in - 1), is);
    k0 += skip * ks;
    i0 -= skip * is;
  }
  if (k0 >= k || i0 < 0) return t;
  t.k0 = k0;
  t.i0 = i0;
  t.n = imin(ceil_div(k - k0, ks), i0 / is + 1);
  return t;
}

// The input channels that reach top channel co: [begin, end), and co's index
// c inside its group (weight plane (ci, c) is at w + (ci*cout_g + c)*kh*kw).
// diag: the weight is known to be zero off the channel diagonal (groups == 1,
// Cin == Cout), so only input channel co can contribute.
struct ChannelRange {
  int64_t begin, end, c;
};

FCN_HD ChannelRange deconv_channels(int64_t co, const DeconvGeom& g, bool diag) {
  const int64_t grp = co / g.cout_g;
  ChannelRange r;
  r.c = co - grp * g.cout_g;
  r.begin = diag ? co : grp * g.cin_g;
  r.end = diag ? co + 1 : grp * g.cin_g + g.cin_g;
  return r;
}

// Adds the terms of one input channel (bottom plane xp (H, W) through weight
// plane wp (kh, kw)) to a run of len top elements out[m*out_step], m < len,
// that lie on one top row at columns x0 + m*sw: column x0 + m*sw has the
// column taps of x0 with bottom columns shifted by +m, so a launcher may pass
// any run over which the tap pattern (k0, n) stays the same. Terms are added
// taps ascending, ky outer, kx inner, the same for every element.
// out never aliases xp or wp (__restrict__ lets the CPU compiler vectorise).
template <typename T>
FCN_HD void deconv_accum_run(T* __restrict__ out, int64_t out_step, int64_t len,
                             const T* __restrict__ xp, const T* __restrict__ wp,
                             const DeconvGeom& g, const Taps& ty, const Taps& tx) {
  for (int64_t a = 0; a < ty.n; ++a) {
    const T* xr = xp + (ty.i0 - a * g.isy) * g.W;
    const T* wr = wp + (ty.k0 + a * g.ksy) * g.kw;
    for (int64_t b = 0; b < tx.n; ++b) {
      const T wv = wr[tx.k0 + b * g.ksx];
      const T* xs = xr + tx.i0 - b * g.isx;
      for (int64_t m = 0; m < len; ++m) out[m * out_step] += xs[m] * wv;
    }
  }
}

// The same for one element: acc plus the terms of one input channel.
template <typename T>
FCN_HD T deconv_accum(T acc, const T* xp, const T* wp, const DeconvGeom& g, const Taps& ty,
                      const Taps& tx) {
  deconv_accum_run(&acc, 1, 1, xp, wp, g, ty, tx);
  return acc;
}

// The full sum of top element (n, co, .) with row/column taps ty, tx: input
// channels ascending, each through deconv_accum, starting from +0. A launcher
// may interleave the channel loop with its loop over elements (the CPU one
// does, for locality) as long as each element's terms are added in this order.
//
// The diagonal path returns bit for bit what the general path returns, for
// finite inputs: every other channel adds exact zeros, acc + x*0 == acc, since
// acc starts at +0 and a sum is -0 only when both terms are.
template <typename T>
FCN_HD T deconv_point(const T* x_n, const T* w, const ChannelRange& cr, const DeconvGeom& g,
                      const Taps& ty, const Taps& tx) {
  const int64_t hw = g.H * g.W, wk = g.kh * g.kw;
  T acc = T(0);
  for (int64_t ci = cr.begin; ci < cr.end; ++ci)
    acc = deconv_accum(acc, x_n + ci * hw, w + (ci * g.cout_g + cr.c) * wk, g, ty, tx);
  return acc;
}

// Caffe adds the bias after the col2im accumulation.
template <typename T>
FCN_HD T deconv_add_bias(T acc, const T* bias, int64_t co) {
  return bias != nullptr ? T(acc + bias[co]) : acc;
}

// One top element, from its window coordinates (GPU form: taps on the fly).
template <typename T>
FCN_HD T deconv_top(const T* x, const T* w, const T* bias, const DeconvGeom& g, int64_t n,
                    int64_t co, int64_t y, int64_t xx, bool diag) {
  const Taps ty = deconv_taps(y + g.oy, g.ph, g.sh, g.dh, g.kh, g.H, g.ksy, g.isy);
  const Taps tx = deconv_taps(xx + g.ox, g.pw, g.sw, g.dw, g.kw, g.W, g.ksx, g.isx);
  const ChannelRange cr = deconv_channels(co, g, diag);
  return deconv_add_bias(deconv_point(x + n * g.Cin * g.H * g.W, w, cr, g, ty, tx), bias, co);
}

// ---- backward -------------------------------------------------------------
// The gradient of the bottom is an ordinary convolution (correlation) of the
// top gradient with the same weight: bottom pixel i reaches window row
// y = i*s - p + ky*d - oy through tap ky, which counts when 0 <= y < OH (the
// top gradient is zero outside the kept window).

// Taps of bottom coordinate i along one axis: taps k0 .. k0+n-1 (step 1) reach
// window rows y0, y0+d, ...
struct Span {
  int64_t k0, y0, n;
};

FCN_HD Span conv_span(int64_t i, int64_t s, int64_t p, int64_t d, int64_t k, int64_t off,
                      int64_t out) {
  Span r{0, 0, 0};
  const int64_t base = i * s - p - off;  // window row of tap 0
  const int64_t k0 = imax(int64_t(0), ceil_div(-base, d));
  const int64_t k1 = imin(k - 1, floor_div(out - 1 - base, d));
  if (k1 < k0) return r;
  r.k0 = k0;
  r.y0 = base + k0 * d;
  r.n = k1 - k0 + 1;
  return r;
}

// The output channels that bottom channel ci reaches: [begin, end) inside
// its group, and the first one's global index.
FCN_HD ChannelRange deconv_grad_input_channels(int64_t ci, const DeconvGeom& g, bool diag) {
  const int64_t grp = ci / g.cin_g;
  ChannelRange r;
  r.c = grp * g.cout_g;  // global index of the group's first top channel
  r.begin = diag ? ci : 0;
  r.end = diag ? ci + 1 : g.cout_g;
  return r;
}

// Adds the terms of one top-gradient plane gp (OH, OW) through weight plane wp
// (kh, kw) to a run of len bottom elements out[m], m < len, on one bottom row
// at consecutive columns j0 + m: column j0 + m has the spans of j0 with window
// columns shifted by m*sw, so a launcher may pass any run over which the span
// pattern (k0, n) stays the same. ky outer, kx inner.
template <typename T>
FCN_HD void deconv_grad_input_accum_run(T* __restrict__ out, int64_t len, const T* __restrict__ gp,
                                        const T* __restrict__ wp, const DeconvGeom& g,
                                        const Span& sy, const Span& sx) {
  for (int64_t a = 0; a < sy.n; ++a) {
    const T* gr = gp + (sy.y0 + a * g.dh) * g.OW;
    const T* wr = wp + (sy.k0 + a) * g.kw;
    for (int64_t b = 0; b < sx.n; ++b) {
      const T wv = wr[sx.k0 + b];
      const T* gs = gr + sx.y0 + b * g.dw;
      for (int64_t m = 0; m < len; ++m) out[m] += gs[m * g.sw] * wv;
    }
  }
}

template <typename T>
FCN_HD T deconv_grad_input_accum(T acc, const T* gp, const T* wp, const DeconvGeom& g,
                                 const Span& sy, const Span& sx) {
  deconv_grad_input_accum_run(&acc, 1, gp, wp, g, sy, sx);
  return acc;
}

// d(loss)/d(bottom) at (n, ci, .) with spans sy, sx; gy_n points at image n of
// the (windowed) top gradient (N, Cout, OH, OW). Sum order: the group's top
// channels ascending, each through deconv_grad_input_accum. diag: only top
// channel ci (same argument as for deconv_point).
template <typename T>
FCN_HD T deconv_grad_input_point(const T* gy_n, const T* w, int64_t ci, const ChannelRange& cr,
                                 const DeconvGeom& g, const Span& sy, const Span& sx) {
  const int64_t ohw = g.OH * g.OW, wk = g.kh * g.kw;
  T acc = T(0);
  for (int64_t c = cr.begin; c < cr.end; ++c)
    acc = deconv_grad_input_accum(acc, gy_n + (cr.c + c) * ohw, w + (ci * g.cout_g + c) * wk, g,
                                  sy, sx);
  return acc;
}

template <typename T>
FCN_HD T deconv_grad_input_elem(const T* gy, const T* w, const DeconvGeom& g, int64_t n,
                                int64_t ci, int64_t i, int64_t j, bool diag) {
  const Span sy = conv_span(i, g.sh, g.ph, g.dh, g.kh, g.oy, g.OH);
  const Span sx = conv_span(j, g.sw, g.pw, g.dw, g.kw, g.ox, g.OW);
  const ChannelRange cr = deconv_grad_input_channels(ci, g, diag);
  return deconv_grad_input_point(gy + n * g.Cout * g.OH * g.OW, w, ci, cr, g, sy, sx);
}

// Bottom rows [i_begin, i_end) whose tap ky lands inside the window.
struct Rows {
  int64_t begin, end;
};
FCN_HD Rows weight_rows(int64_t ky, int64_t s, int64_t p, int64_t d, int64_t off, int64_t out,
                        int64_t in) {
  const int64_t base = ky * d - p - off;  // window row of bottom row 0
  Rows r;
  r.begin = imax(int64_t(0), ceil_div(-base, s));
  r.end = imin(in, floor_div(out - 1 - base, s) + 1);
  if (r.end < r.begin) r.end = r.begin;
  return r;
}

// d(loss)/d(weight)[ci, c, ky, kx] = sum over n, i, j of
// bottom[n, ci, i, j] * top_grad[n, co, i*s - p + ky*d - oy, j*s - p + kx*d - ox].
// Sum order: n, i, j.
template <typename T>
FCN_HD T deconv_grad_weight_elem(const T* gy, const T* x, const DeconvGeom& g, int64_t ci,
                                 int64_t c, int64_t ky, int64_t kx) {
  const int64_t co = (ci / g.cin_g) * g.cout_g + c;
  const Rows ry = weight_rows(ky, g.sh, g.ph, g.dh, g.oy, g.OH, g.H);
  const Rows rx = weight_rows(kx, g.sw, g.pw, g.dw, g.ox, g.OW, g.W);
  const int64_t by = ky * g.dh - g.ph - g.oy, bx = kx * g.dw - g.pw - g.ox;
  T acc = T(0);
  for (int64_t n = 0; n < g.N; ++n) {
    const T* xp = x + (n * g.Cin + ci) * g.H * g.W;
    const T* gp = gy + (n * g.Cout + co) * g.OH * g.OW;
    for (int64_t i = ry.begin; i < ry.end; ++i) {
      const T* xr = xp + i * g.W;
      const T* gr = gp + (i * g.sh + by) * g.OW + bx;
      for (int64_t j = rx.begin; j < rx.end; ++j) {
        acc += xr[j] * gr[j * g.sw];
      }
    }
  }
  return acc;
}

// d(loss)/d(bias)[co]: the sum over n, y, x of the (windowed) top gradient,
// in one fixed order that a GPU block computes in parallel and the CPU
// sequentially, bit for bit alike: the M = N*OH*OW values of channel co,
// taken n-major (k = n*OH*OW + y*OW + x), go to kBiasLanes lanes, lane t
// summing k = t, t + kBiasLanes, ... in that order from +0
// (deconv_grad_bias_lane); then a pairwise tree halves the lanes,
// lane[t] = lane[t] + lane[t + h] for h = kBiasLanes/2, ..., 1
// (deconv_grad_bias_tree_step), and lane 0 is the sum.
constexpr int kBiasLanes = 1024;

// The value k of channel co.
template <typename T>
FCN_HD T deconv_grad_bias_value(const T* gy, const DeconvGeom& g, int64_t co, int64_t k) {
  const int64_t ohw = g.OH * g.OW;
  const int64_t n = k / ohw;
  return gy[(n * g.Cout + co) * ohw + (k - n * ohw)];
}

template <typename T>
FCN_HD T deconv_grad_bias_lane(const T* gy, const DeconvGeom& g, int64_t co, int64_t lane) {
  const int64_t m = g.N * g.OH * g.OW;
  T acc = T(0);
  for (int64_t k = lane; k < m; k += kBiasLanes) acc += deconv_grad_bias_value(gy, g, co, k);
  return acc;
}

// One level of the tree: lanes [0, h) take lane t + h.
template <typename T>
FCN_HD void deconv_grad_bias_tree_step(T* lanes, int64_t t, int64_t h) {
  lanes[t] = lanes[t] + lanes[t + h];
}

// Is weight (Cin, Cout/g, kh, kw) element e off the channel diagonal? (groups == 1)
FCN_HD bool deconv_off_diagonal(int64_t e, int64_t cout, int64_t wk) {
  const int64_t ci = e / (cout * wk);
  const int64_t c = (e / wk) % cout;
  return ci != c;
}

}  // namespace fcn_repro
