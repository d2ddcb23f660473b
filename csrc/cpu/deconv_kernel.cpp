// CPU launchers of the Caffe Deconvolution ops: at::parallel_for over the
// gather-form math of include/fcn_repro/deconv.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "ops_common.h"

namespace fcn_repro {
namespace {

constexpr int64_t kGrain = 32768;  // at::internal::GRAIN_SIZE: elements of work per task

// Top columns grouped into runs x0, x0 + sw, ... (one residue class mod the
// stride) whose column taps have the same pattern (k0, n); along a run the
// bottom column i0 grows by 1 (checked). Columns without taps are left out
// (they receive no terms). The same for every row, so computed once per call.
struct TapRun {
  int64_t x0, len;
  Taps tx;  // taps of column x0
};

std::vector<TapRun> column_runs(const DeconvGeom& g) {
  std::vector<TapRun> runs;
  for (int64_t rho = 0; rho < std::min(g.sw, g.OW); ++rho) {
    TapRun cur{0, 0, Taps{0, 0, 0}};
    Taps prev{0, 0, 0};
    for (int64_t x = rho; x < g.OW; x += g.sw) {
      const Taps t = deconv_taps(x + g.ox, g.pw, g.sw, g.dw, g.kw, g.W, g.ksx, g.isx);
      const bool extends = cur.len > 0 && t.n == cur.tx.n && t.k0 == cur.tx.k0 && t.i0 == prev.i0 + 1;
      if (extends) {
        ++cur.len;
      } else {
        if (cur.len > 0) runs.push_back(cur);
        cur = TapRun{x, t.n > 0 ? 1 : 0, t};
      }
      prev = t;
    }
    if (cur.len > 0) runs.push_back(cur);
  }
  return runs;
}

// Bottom columns grouped into runs j0, j0 + 1, ... whose spans have the same
// pattern (k0, n); along a run the window column y0 grows by sw (checked).
struct SpanRun {
  int64_t j0, len;
  Span sx;  // span of column j0
};

std::vector<SpanRun> bottom_column_runs(const DeconvGeom& g) {
  std::vector<SpanRun> runs;
  SpanRun cur{0, 0, Span{0, 0, 0}};
  Span prev{0, 0, 0};
  for (int64_t j = 0; j < g.W; ++j) {
    const Span s = conv_span(j, g.sw, g.pw, g.dw, g.kw, g.ox, g.OW);
    const bool extends = cur.len > 0 && s.n == cur.sx.n && s.k0 == cur.sx.k0 && s.y0 == prev.y0 + g.sw;
    if (extends) {
      ++cur.len;
    } else {
      if (cur.len > 0) runs.push_back(cur);
      cur = SpanRun{j, s.n > 0 ? 1 : 0, s};
    }
    prev = s;
  }
  if (cur.len > 0) runs.push_back(cur);
  return runs;
}

template <typename T>
bool weight_is_diagonal(const T* w, const DeconvGeom& g) {
  const int64_t wk = g.kh * g.kw;
  for (int64_t ci = 0; ci < g.Cin; ++ci) {
    for (int64_t c = 0; c < g.cout_g; ++c) {
      if (c == ci) continue;
      const T* p = w + (ci * g.cout_g + c) * wk;
      for (int64_t k = 0; k < wk; ++k) {
        if (p[k] != T(0)) return false;  // NaN != 0 too: a NaN takes the general path
      }
    }
  }
  return true;
}

// Checks the weight (never assumes it): diagonal path only when it is exactly
// zero off the channel diagonal. path was validated by check_deconv_forward.
bool choose_diag(const at::Tensor& w, const DeconvGeom& g, int64_t path) {
  if (path == kPathGeneral) return false;
  if (path == kPathDiagonal) return true;
  if (!deconv_diag_possible(g)) return false;
  bool diag = false;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "fcn_repro_is_diagonal",
                             [&] { diag = weight_is_diagonal(w.data_ptr<scalar_t>(), g); });
  return diag;
}

// One forward call's inputs, for the row loop below.
template <typename T>
struct FwdRows {
  const T* xp;
  const T* wp;
  const T* bp;  // nullptr: no bias
  T* yp;
  const DeconvGeom* g;
  const TapRun* runs;
  int64_t nruns;
  const Taps* ty;  // row taps, the same for every image and channel
  int64_t max_len;
  bool diag;
};

// deconv_top for whole top rows [r0, r1) (row r = (n*Cout + co)*OH + i). Per
// run of columns with the same tap pattern (one residue class mod the
// stride), a contiguous buffer is the accumulator: it starts at +0 and
// receives, input channel by input channel, the terms deconv_accum_run adds,
// then the bias; so each element gets exactly deconv_top's terms in
// deconv_top's order, while the inner loops run over contiguous memory and
// vectorise.
template <typename T>
inline void deconv_rows(const FwdRows<T>& A, int64_t r0, int64_t r1) {
  const DeconvGeom& g = *A.g;
  std::vector<T> buf(A.max_len);
  T* acc = buf.data();
  int64_t i = r0 % g.OH, co = (r0 / g.OH) % g.Cout, n = r0 / (g.OH * g.Cout);
  ChannelRange cr = deconv_channels(co, g, A.diag);
  for (int64_t r = r0; r < r1; ++r) {
    const Taps& t_row = A.ty[i];
    const T* xn = A.xp + n * g.Cin * g.H * g.W;
    T* yr = A.yp + r * g.OW;
    const T empty = deconv_add_bias(T(0), A.bp, co);  // columns no tap reaches
    for (int64_t j = 0; j < g.OW; ++j) yr[j] = empty;
    if (t_row.n > 0) {
      for (int64_t q = 0; q < A.nruns; ++q) {
        const TapRun& run = A.runs[q];
        for (int64_t m = 0; m < run.len; ++m) acc[m] = T(0);
        for (int64_t ci = cr.begin; ci < cr.end; ++ci)
          deconv_accum_run(acc, 1, run.len, xn + ci * g.H * g.W, A.wp + (ci * g.cout_g + cr.c) * g.kh * g.kw,
                           g, t_row, run.tx);
        T* out = yr + run.x0;
        for (int64_t m = 0; m < run.len; ++m) out[m * g.sw] = deconv_add_bias(acc[m], A.bp, co);
      }
    }
    if (++i == g.OH) {  // next row: advance (i, co, n) without dividing
      i = 0;
      if (++co == g.Cout) {
        co = 0;
        ++n;
      }
      cr = deconv_channels(co, g, A.diag);
    }
  }
}

FCN_CPU_CLONES void deconv_rows_any(const FwdRows<float>& A, int64_t r0, int64_t r1) { deconv_rows(A, r0, r1); }
FCN_CPU_CLONES void deconv_rows_any(const FwdRows<double>& A, int64_t r0, int64_t r1) { deconv_rows(A, r0, r1); }

at::Tensor deconv_forward(const at::Tensor& x, const at::Tensor& weight,
                          const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                          at::IntArrayRef pad, at::IntArrayRef dilation, int64_t groups,
                          at::IntArrayRef offsets, at::IntArrayRef out_size, bool whole,
                          int64_t path, const char* op) {
  const DeconvGeom g = check_deconv_forward(op, at::kCPU, x, weight, bias, stride, pad, dilation,
                                            groups, offsets, out_size, whole, path);
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor bc = has_bias ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty({g.N, g.Cout, g.OH, g.OW}, x.options());
  const bool diag = choose_diag(wc, g, path);
  const std::vector<TapRun> runs = column_runs(g);
  std::vector<Taps> ty(g.OH);  // row taps, the same for every image and channel
  for (int64_t i = 0; i < g.OH; ++i)
    ty[i] = deconv_taps(i + g.oy, g.ph, g.sh, g.dh, g.kh, g.H, g.ksy, g.isy);
  int64_t max_len = 1;
  for (const TapRun& run : runs) max_len = std::max(max_len, run.len);
  const int64_t taps = (g.kh / g.ksy + 1) * (g.kw / g.ksx + 1) * (diag ? 1 : g.cin_g);
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, g.OW * taps));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fcn_repro_deconv2d_cpu", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* wp = wc.data_ptr<scalar_t>();
    const scalar_t* bp = has_bias ? bc.data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.data_ptr<scalar_t>();
    const FwdRows<scalar_t> rows{xp, wp, bp, yp, &g, runs.data(), static_cast<int64_t>(runs.size()),
                                 ty.data(), max_len, diag};
    at::parallel_for(0, g.N * g.Cout * g.OH, grain,
                     [&](int64_t r0, int64_t r1) { deconv_rows_any(rows, r0, r1); });
  });
  return y;
}

at::Tensor deconv2d_cpu(const at::Tensor& x, const at::Tensor& weight,
                        const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                        at::IntArrayRef pad, at::IntArrayRef dilation, int64_t groups) {
  const int64_t zero[2] = {0, 0};
  return deconv_forward(x, weight, bias, stride, pad, dilation, groups, zero, zero, true, kPathAuto,
                        "deconv2d");
}

at::Tensor deconv2d_crop_cpu(const at::Tensor& x, const at::Tensor& weight,
                             const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                             at::IntArrayRef pad, at::IntArrayRef dilation, int64_t groups,
                             at::IntArrayRef offsets, at::IntArrayRef out_size) {
  return deconv_forward(x, weight, bias, stride, pad, dilation, groups, offsets, out_size, false,
                        kPathAuto, "deconv2d_crop");
}

at::Tensor deconv2d_crop_path_cpu(const at::Tensor& x, const at::Tensor& weight,
                                  const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                  at::IntArrayRef pad, at::IntArrayRef dilation, int64_t groups,
                                  at::IntArrayRef offsets, at::IntArrayRef out_size,
                                  int64_t path) {
  return deconv_forward(x, weight, bias, stride, pad, dilation, groups, offsets, out_size, false,
                        path, "_deconv2d_crop_path");
}

bool deconv2d_is_diagonal_cpu(const at::Tensor& weight, int64_t groups) {
  const DeconvGeom g = check_is_diagonal("_deconv2d_is_diagonal", at::kCPU, weight, groups);
  return choose_diag(weight.contiguous(), g, kPathAuto);
}

at::Tensor deconv2d_grad_input_cpu(const at::Tensor& grad, const at::Tensor& weight,
                                   at::IntArrayRef in_size, at::IntArrayRef stride,
                                   at::IntArrayRef pad, at::IntArrayRef dilation, int64_t groups,
                                   at::IntArrayRef offsets) {
  const char* op = "_deconv2d_grad_input";
  const DeconvGeom g = check_deconv_grad_input(op, at::kCPU, grad, weight, in_size, stride, pad,
                                               dilation, groups, offsets);
  const at::Tensor gc = grad.contiguous(), wc = weight.contiguous();
  const bool diag = choose_diag(wc, g, kPathAuto);
  at::Tensor gx = at::empty({g.N, g.Cin, g.H, g.W}, grad.options());
  const std::vector<SpanRun> runs = bottom_column_runs(g);
  std::vector<Span> sy(g.H);
  for (int64_t i = 0; i < g.H; ++i) sy[i] = conv_span(i, g.sh, g.ph, g.dh, g.kh, g.oy, g.OH);
  const int64_t work = g.W * g.kh * g.kw * (diag ? 1 : g.cout_g);
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, work));
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "fcn_repro_deconv2d_grad_input_cpu", [&] {
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const scalar_t* wp = wc.data_ptr<scalar_t>();
    scalar_t* op_ = gx.data_ptr<scalar_t>();
    at::parallel_for(0, g.N * g.Cin * g.H, grain, [&](int64_t r0, int64_t r1) {
      int64_t i = r0 % g.H, ci = (r0 / g.H) % g.Cin, n = r0 / (g.H * g.Cin);
      ChannelRange cr = deconv_grad_input_channels(ci, g, diag);
      for (int64_t r = r0; r < r1; ++r) {
        const Span& s_row = sy[i];
        const scalar_t* gn = gp + n * g.Cout * g.OH * g.OW;
        scalar_t* row = op_ + r * g.W;
        // deconv_grad_input_elem for a whole row: the row is the accumulator
        // (+0 first), top channels in order, runs of columns with the same
        // span pattern together; each element gets its terms in the same order.
        for (int64_t j = 0; j < g.W; ++j) row[j] = scalar_t(0);
        if (s_row.n > 0) {
          for (int64_t c = cr.begin; c < cr.end; ++c) {
            const scalar_t* gc_ = gn + (cr.c + c) * g.OH * g.OW;
            const scalar_t* wc_ = wp + (ci * g.cout_g + c) * g.kh * g.kw;
            for (const SpanRun& run : runs)
              deconv_grad_input_accum_run(row + run.j0, run.len, gc_, wc_, g, s_row, run.sx);
          }
        }
        if (++i == g.H) {
          i = 0;
          if (++ci == g.Cin) {
            ci = 0;
            ++n;
          }
          cr = deconv_grad_input_channels(ci, g, diag);
        }
      }
    });
  });
  return gx;
}

at::Tensor deconv2d_grad_weight_cpu(const at::Tensor& grad, const at::Tensor& x,
                                    at::IntArrayRef kernel, at::IntArrayRef stride,
                                    at::IntArrayRef pad, at::IntArrayRef dilation, int64_t groups,
                                    at::IntArrayRef offsets) {
  const char* op = "_deconv2d_grad_weight";
  const DeconvGeom g = check_deconv_grad_weight(op, at::kCPU, grad, x, kernel, stride, pad,
                                                dilation, groups, offsets);
  const at::Tensor gc = grad.contiguous(), xc = x.contiguous();
  at::Tensor gw = at::empty({g.Cin, g.cout_g, g.kh, g.kw}, grad.options());
  const int64_t numel = gw.numel();
  const int64_t work = g.N * (g.H / g.sh + 1) * (g.W / g.sw + 1);
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, work));
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "fcn_repro_deconv2d_grad_weight_cpu", [&] {
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    scalar_t* out = gw.data_ptr<scalar_t>();
    at::parallel_for(0, numel, grain, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) {
        const int64_t kx = e % g.kw, ky = (e / g.kw) % g.kh, c = (e / (g.kw * g.kh)) % g.cout_g,
                      ci = e / (g.kw * g.kh * g.cout_g);
        out[e] = deconv_grad_weight_elem(gp, xp, g, ci, c, ky, kx);
      }
    });
  });
  return gw;
}

// deconv_grad_bias_lane for every lane, then the tree of deconv.h: the
// values are visited in k order, each added to its lane (k mod kBiasLanes),
// in contiguous segments that the compiler vectorises; each lane receives its
// values in the order deconv_grad_bias_lane adds them.
template <typename T>
T grad_bias_sum(const T* gy, const DeconvGeom& g, int64_t co, T* __restrict__ lanes) {
  const int64_t ohw = g.OH * g.OW;
  for (int64_t t = 0; t < kBiasLanes; ++t) lanes[t] = T(0);
  int64_t lane = 0;
  for (int64_t n = 0; n < g.N; ++n) {
    const T* __restrict__ v = gy + (n * g.Cout + co) * ohw;
    for (int64_t k = 0; k < ohw;) {
      const int64_t len = std::min<int64_t>(kBiasLanes - lane, ohw - k);
      for (int64_t m = 0; m < len; ++m) lanes[lane + m] += v[k + m];
      k += len;
      lane += len;
      if (lane == kBiasLanes) lane = 0;
    }
  }
  for (int64_t h = kBiasLanes / 2; h > 0; h /= 2)
    for (int64_t t = 0; t < h; ++t) deconv_grad_bias_tree_step(lanes, t, h);
  return lanes[0];
}

at::Tensor deconv2d_grad_bias_cpu(const at::Tensor& grad) {
  const char* op = "_deconv2d_grad_bias";
  const DeconvGeom g = check_deconv_grad_bias(op, at::kCPU, grad);
  const at::Tensor gc = grad.contiguous();
  at::Tensor gb = at::empty({g.Cout}, grad.options());
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "fcn_repro_deconv2d_grad_bias_cpu", [&] {
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    scalar_t* out = gb.data_ptr<scalar_t>();
    const int64_t ohw = g.OH * g.OW;
    const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, g.N * ohw));
    at::parallel_for(0, g.Cout, grain, [&](int64_t c0, int64_t c1) {
      std::vector<scalar_t> lanes(kBiasLanes);
      for (int64_t co = c0; co < c1; ++co) out[co] = grad_bias_sum(gp, g, co, lanes.data());
    });
  });
  return gb;
}

}  // namespace

TORCH_LIBRARY_IMPL(fcn_repro, CPU, m) {
  m.impl("deconv2d", &deconv2d_cpu);
  m.impl("deconv2d_crop", &deconv2d_crop_cpu);
  m.impl("_deconv2d_crop_path", &deconv2d_crop_path_cpu);
  m.impl("_deconv2d_is_diagonal", &deconv2d_is_diagonal_cpu);
  m.impl("_deconv2d_grad_input", &deconv2d_grad_input_cpu);
  m.impl("_deconv2d_grad_weight", &deconv2d_grad_weight_cpu);
  m.impl("_deconv2d_grad_bias", &deconv2d_grad_bias_cpu);
}

}  // namespace fcn_repro
