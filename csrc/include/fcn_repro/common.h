// Shared definitions for the kernel math headers of fcn_repro.
//
// The math of every op is written once, in these headers, as FCN_HD functions
// that compute one output element in gather form. The CPU launchers
// (csrc/cpu, at::parallel_for) and the CUDA launchers (csrc/cuda, grid-stride
// kernels) both call them, so both backends run the same index math and add
// the terms of every sum in the same order (no atomics anywhere). These
// headers include no torch header, only <cstdint>.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FCN_HD __host__ __device__ inline
#else
#define FCN_HD inline
#endif

namespace fcn_repro {

FCN_HD int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
FCN_HD int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

// floor(a / b) and ceil(a / b) for b > 0 and any sign of a (C++ '/' truncates).
FCN_HD int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}
FCN_HD int64_t ceil_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && a > 0) ? q + 1 : q;
}

FCN_HD int64_t gcd64(int64_t a, int64_t b) {
  while (b != 0) {
    const int64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

}  // namespace fcn_repro
