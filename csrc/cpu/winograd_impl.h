// The Winograd F(m x m, 3x3) convolution of winograd_kernel.cpp, written once
// and compiled once per instruction set: winograd_kernel.cpp includes this file
// inside a namespace per ISA (under `#pragma GCC target`), after defining the
// vector type `V` of that ISA (V::W float lanes; load, loadn, store, storen,
// zero, set1, mul, fma, max). No pragma once, no includes: nothing here may
// instantiate a library template, whose shared copy could then carry the
// ISA's instructions into code that runs on any CPU.
//
// Arithmetic (the same on every ISA, lane by lane, and the same for a pixel
// whatever the size of the map, the block or the thread split):
// * input transform of a tile, columns first: t = B^T d, then V = t B, each
//   entry one product and then fused multiply-adds in index order;
// * the product in the transform domain: M[p][tile][k] = sum over c in
//   order 0..C-1 of V[p][tile][c] * U[p][c][k], one float accumulator per
//   (tile, k), started at zero, fused multiply-adds;
// * output transform, columns first: s = A^T M, then y = s A, as above;
//   then + bias, then ReLU (max(0, y), NaN kept).
// The tile grid is anchored at (phase_y, phase_x): tile row ty covers output
// rows [ty m - phase_y, ty m - phase_y + m), so a caller that passes the
// window's origin modulo m lays every window's tiles on the map's grid. A
// tile computes its pixels as the map's tile does when it reads the same
// inputs (a window that cuts a tile reads zeros where the map has data: the
// same value in exact arithmetic, rounded differently).

// c[0] d[0] + c[1] d[1] + ... + c[R-1] d[R-1]: one product, then fused
// multiply-adds in index order (every transform is made of these).
template <int R>
static inline typename V::T dot(const float* c, const typename V::T* d) {
  typename V::T s = V::mul(V::set1(c[0]), d[0]);
#pragma GCC unroll 8
  for (int r = 1; r < R; ++r) s = V::fma(V::set1(c[r]), d[r], s);
  return s;
}

template <int MRR>
static inline void micro_kernel(const float* A, int64_t lda, const float* B, int64_t kc, float* Cm,
                                int64_t ldc) {
  constexpr int NV = kPanel / V::W;
  typename V::T acc[MRR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MRR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();
  for (int64_t k = 0; k < kc; ++k) {
    typename V::T b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = V::load(B + k * kPanel + v * V::W);
#pragma GCC unroll 8
    for (int r = 0; r < MRR; ++r) {
      const typename V::T a = V::set1(A[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = V::fma(a, b[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MRR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) V::store(Cm + r * ldc + v * V::W, acc[r][v]);
}

// rows <= V::MR rows of A against one packed panel of B.
static inline void micro_rows(int rows, const float* A, int64_t lda, const float* B, int64_t kc,
                              float* Cm, int64_t ldc) {
  switch (rows) {
    case 1: micro_kernel<1>(A, lda, B, kc, Cm, ldc); break;
    case 2: micro_kernel<2>(A, lda, B, kc, Cm, ldc); break;
    case 3: micro_kernel<3>(A, lda, B, kc, Cm, ldc); break;
#if FCN_WINO_MR > 3
    case 4: micro_kernel<4>(A, lda, B, kc, Cm, ldc); break;
    case 5: micro_kernel<5>(A, lda, B, kc, Cm, ldc); break;
    case 6: micro_kernel<6>(A, lda, B, kc, Cm, ldc); break;
#endif
    default: break;
  }
}

// Input transform of one tile: V[p] for the n*n points p, written at
// vb + p * pstride + c (the block's row of this tile), channels in vectors.
template <int N>
static inline void input_tile(const WinoArgs& a, int64_t img, int64_t ty, int64_t tx, float* vb,
                              int64_t pstride, float* tmp) {
  const int64_t y0 = ty * a.m - a.phy - a.pt, x0 = tx * a.m - a.phx - a.pl;
  const float* ximg = a.x + img * a.H * a.W * a.C;
  for (int64_t c = 0; c < a.C; c += V::W) {
    const int nc = static_cast<int>(a.C - c < V::W ? a.C - c : V::W);
#pragma GCC unroll 8
    for (int b = 0; b < N; ++b) {
      const int64_t xx = x0 + b;
      const bool col_in = xx >= 0 && xx < a.W;
      typename V::T d[N];
#pragma GCC unroll 8
      for (int r = 0; r < N; ++r) {
        const int64_t yy = y0 + r;
        d[r] = (col_in && yy >= 0 && yy < a.H) ? V::loadn(ximg + (yy * a.W + xx) * a.C + c, nc)
                                               : V::zero();
      }
#pragma GCC unroll 8
      for (int i = 0; i < N; ++i) V::store(tmp + (i * N + b) * V::W, dot<N>(a.BT + i * N, d));
    }
#pragma GCC unroll 8
    for (int i = 0; i < N; ++i) {
      typename V::T t[N];
#pragma GCC unroll 8
      for (int b = 0; b < N; ++b) t[b] = V::load(tmp + (i * N + b) * V::W);
#pragma GCC unroll 8
      for (int j = 0; j < N; ++j) V::store(vb + (i * N + j) * pstride + c, dot<N>(a.BT + j * N, t));
    }
  }
}

// Output transform of one tile from mb + p * pstride (its row of the block's
// products), + bias, ReLU, written where the tile lies inside the output.
template <int N>
static inline void output_tile(const WinoArgs& a, int64_t img, int64_t ty, int64_t tx, const float* mb,
                               int64_t pstride, float* tmp) {
  constexpr int M = N - 2;
  const int64_t oy0 = ty * M - a.phy, ox0 = tx * M - a.phx;
  float* yimg = a.y + img * a.OH * a.OW * a.K;
  for (int64_t k = 0; k < a.K; k += V::W) {
    const int nk = static_cast<int>(a.K - k < V::W ? a.K - k : V::W);
    const typename V::T bias = a.bias != nullptr ? V::loadn(a.bias + k, nk) : V::zero();
#pragma GCC unroll 8
    for (int b = 0; b < N; ++b) {
      typename V::T mv[N];
#pragma GCC unroll 8
      for (int r = 0; r < N; ++r) mv[r] = V::load(mb + (r * N + b) * pstride + k);
#pragma GCC unroll 8
      for (int i = 0; i < M; ++i) V::store(tmp + (i * N + b) * V::W, dot<N>(a.AT + i * N, mv));
    }
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
      const int64_t yy = oy0 + i;
      if (yy < 0 || yy >= a.OH) continue;
      typename V::T t[N];
#pragma GCC unroll 8
      for (int b = 0; b < N; ++b) t[b] = V::load(tmp + (i * N + b) * V::W);
#pragma GCC unroll 8
      for (int j = 0; j < M; ++j) {
        const int64_t xx = ox0 + j;
        if (xx < 0 || xx >= a.OW) continue;
        typename V::T s = dot<N>(a.AT + j * N, t);
        if (a.bias != nullptr) s = V::add(s, bias);
        if (a.relu) s = V::max(V::zero(), s);
        V::storen(yimg + (yy * a.OW + xx) * a.K + k, s, nk);
      }
    }
  }
}

// Blocks [b0, b1) of a.TB tiles each (tiles numbered image by image, row by
// row). vb: n*n*TB*ldv floats, mb: n*n*TB*Kp floats, tmp: n*n*16 floats.
template <int N>
static void run_blocks_n(const WinoArgs& a, int64_t b0, int64_t b1, float* vb, float* mb, float* tmp) {
  constexpr int P = N * N;
  const int64_t per_img = a.th * a.tw, total = a.N * per_img, panels = a.Kp / kPanel;
  // a cache line between points: the n*n rows a tile's transform reads or
  // writes are then not all a multiple of 4 KiB apart (one L1 set)
  const int64_t vstride = a.TB * a.ldv + kSkew, mstride = a.TB * a.Kp + kSkew;
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int64_t t0 = blk * a.TB;
    const int64_t tb = total - t0 < a.TB ? total - t0 : a.TB;
    for (int64_t i = 0; i < tb; ++i) {
      const int64_t t = t0 + i, img = t / per_img, q = t % per_img;
      input_tile<N>(a, img, q / a.tw, q % a.tw, vb + i * a.ldv, vstride, tmp);
    }
    for (int p = 0; p < P; ++p) {
      const float* ap = vb + p * vstride;
      float* cp = mb + p * mstride;
      for (int64_t kb = 0; kb < panels; ++kb) {
        const float* bp = a.U + (p * panels + kb) * a.C * kPanel;
        for (int64_t r0 = 0; r0 < tb; r0 += V::MR) {
          const int rows = static_cast<int>(tb - r0 < V::MR ? tb - r0 : V::MR);
          micro_rows(rows, ap + r0 * a.ldv, a.ldv, bp, a.C, cp + r0 * a.Kp + kb * kPanel, a.Kp);
        }
      }
    }
    for (int64_t i = 0; i < tb; ++i) {
      const int64_t t = t0 + i, img = t / per_img, q = t % per_img;
      output_tile<N>(a, img, q / a.tw, q % a.tw, mb + i * a.Kp, mstride, tmp);
    }
  }
}

static void run_blocks(const WinoArgs& a, int64_t b0, int64_t b1, float* vb, float* mb, float* tmp) {
  switch (a.n) {
    case 4: run_blocks_n<4>(a, b0, b1, vb, mb, tmp); break;
    case 5: run_blocks_n<5>(a, b0, b1, vb, mb, tmp); break;
    case 6: run_blocks_n<6>(a, b0, b1, vb, mb, tmp); break;
    case 8: run_blocks_n<8>(a, b0, b1, vb, mb, tmp); break;
    default: break;
  }
}
