// CPU launchers of the fused Crop + Eltwise SUM op: at::parallel_for over the
// math of include/fcn_repro/crop_sum.h, one contiguous row per inner loop so
// that the compiler vectorises it.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>

#include "ops_common.h"

namespace fcn_repro {
namespace {

constexpr int64_t kGrain = 32768;

// Output rows [r0, r1) (row r = (n*C + c)*H + y): top[x] = crop_sum_point(a[x],
// b[x], k0, k1) along each row, in FCN_CPU_CLONES functions (AVX2 or the
// baseline; an AVX-512 clone measured slower on these short rows: FCN's are
// 34-70 wide).
template <typename T>
inline void rows_sum(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ t, const CropGeom& g,
                     int64_t r0, int64_t r1, T k0, T k1) {
  const bool plain = k0 == T(1) && k1 == T(1);  // FCN's case: no multiplies (~15% faster at 34x34)
  int64_t y = r0 % g.H, plane = r0 / g.H;  // advanced without dividing (a 64-bit division per
                                           // row costs as much as summing a 70-wide row)
  for (int64_t r = r0; r < r1; ++r) {
    const T* __restrict__ ar = a + r * g.W;
    const T* __restrict__ br = b + crop_b_index(g, plane, y, 0);
    T* __restrict__ tr = t + r * g.W;
    if (++y == g.H) {
      y = 0;
      ++plane;
    }
    if (plain) {
      for (int64_t x = 0; x < g.W; ++x) tr[x] = ar[x] + br[x];  // = crop_sum_point(a, b, 1, 1) exactly
    } else {
      for (int64_t x = 0; x < g.W; ++x) tr[x] = crop_sum_point(ar[x], br[x], k0, k1);
    }
  }
}

FCN_CPU_CLONES void rows_sum_any(const float* a, const float* b, float* t, const CropGeom& g, int64_t r0,
                                 int64_t r1, float k0, float k1) {
  rows_sum(a, b, t, g, r0, r1, k0, k1);
}
FCN_CPU_CLONES void rows_sum_any(const double* a, const double* b, double* t, const CropGeom& g, int64_t r0,
                                 int64_t r1, double k0, double k1) {
  rows_sum(a, b, t, g, r0, r1, k0, k1);
}

at::Tensor crop_sum_cpu(const at::Tensor& a, const at::Tensor& b, at::IntArrayRef offsets,
                        double c0, double c1) {
  const char* op = "crop_sum";
  const CropGeom g = check_crop_sum(op, at::kCPU, a, b, offsets);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  at::Tensor top = at::empty({g.N, g.C, g.H, g.W}, a.options());
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, g.W));
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "fcn_repro_crop_sum_cpu", [&] {
    const scalar_t* ap = ac.data_ptr<scalar_t>();
    const scalar_t* bp = bc.data_ptr<scalar_t>();
    scalar_t* tp = top.data_ptr<scalar_t>();
    const scalar_t k0 = static_cast<scalar_t>(c0), k1 = static_cast<scalar_t>(c1);
    at::parallel_for(0, g.N * g.C * g.H, grain, [&](int64_t r0, int64_t r1) {
      rows_sum_any(ap, bp, tp, g, r0, r1, k0, k1);
    });
  });
  return top;
}

std::tuple<at::Tensor, at::Tensor> crop_sum_backward_cpu(const at::Tensor& grad,
                                                         at::IntArrayRef b_size,
                                                         at::IntArrayRef offsets, double c0,
                                                         double c1) {
  const char* op = "_crop_sum_backward";
  const CropGeom g = check_crop_sum_backward(op, at::kCPU, grad, b_size, offsets);
  const at::Tensor gc = grad.contiguous();
  at::Tensor ga = at::empty({g.N, g.C, g.H, g.W}, grad.options());
  at::Tensor gb = at::empty({g.N, g.C, g.Hb, g.Wb}, grad.options());
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "fcn_repro_crop_sum_backward_cpu", [&] {
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    scalar_t* gap = ga.data_ptr<scalar_t>();
    scalar_t* gbp = gb.data_ptr<scalar_t>();
    const scalar_t k0 = static_cast<scalar_t>(c0), k1 = static_cast<scalar_t>(c1);
    const int64_t n_a = g.N * g.C * g.H * g.W;
    at::parallel_for(0, n_a, kGrain, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) gap[e] = crop_sum_grad_a(gp[e], k0);
    });
    const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, g.Wb));
    at::parallel_for(0, g.N * g.C * g.Hb, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t Y = r % g.Hb, plane = r / g.Hb;
        scalar_t* row = gbp + r * g.Wb;
        // crop_sum_grad_b for a whole row: zeros outside the window columns.
        const ColRange cols = crop_window_cols(g, Y);
        for (int64_t X = 0; X < cols.begin; ++X) row[X] = scalar_t(0);
        if (cols.end > cols.begin) {
          const scalar_t* __restrict__ gr = gp + (plane * g.H + Y - g.oy) * g.W - g.ox;
          for (int64_t X = cols.begin; X < cols.end; ++X) row[X] = crop_sum_grad_b_in(gr[X], k1);
        }
        for (int64_t X = std::max(cols.begin, cols.end); X < g.Wb; ++X) row[X] = scalar_t(0);
      }
    });
  });
  return {ga, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(fcn_repro, CPU, m) {
  m.impl("crop_sum", &crop_sum_cpu);
  m.impl("_crop_sum_backward", &crop_sum_backward_cpu);
}

}  // namespace fcn_repro
