// CPU Winograd F(m x m, 3x3) convolution (stride 1, no dilation, no groups),
// m in {2, 3, 4, 6}: the fast path's 3x3 layers.
//
// The algorithm is written once, in winograd_impl.h, and compiled here for
// AVX-512 and for AVX2 + FMA; the instruction set is chosen at run time
// (cpu_isa(): the best the CPU and OS support, FCN_REPRO_CPU_ISA or
// _set_cpu_isa to ask for a lower one). Both round every value the same way,
// lane by lane (see the header), so their outputs are bit for bit equal.
//
// Work: tiles in blocks of TB; per block (one thread) the input transforms of
// its tiles (fused with the gather and the zero padding), then for each of the
// n*n transform points the product of the block's TB x C matrix with the
// point's C x K weight, in panels of 32 output channels with register-blocked
// micro-kernels, then the output transforms (fused with bias, ReLU and the
// scatter into the channels-last output). The block's transforms stay in the
// cache between the steps; a block is large enough that streaming the
// transformed weight once per block costs little.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ops_common.h"

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__CUDACC__)
#define FCN_WINO_X86 1
#include <immintrin.h>
#endif

namespace fcn_repro {
namespace wino {

constexpr int kPanel = static_cast<int>(kWinogradPanel);  // U's last axis (ops_common.h)
constexpr int kSkew = 16;   // floats between the block's rows of two transform points

// One call: its checked geometry (ops_common.h), its data, its blocking.
struct WinoArgs : WinogradGeom {
  const float* x;     // (N, H, W, C): the input, channels-last
  const float* U;     // (n*n, Kp/32, C, 32): the transformed weight, packed
  const float* BT;    // (n, n)
  const float* AT;    // (m, n)
  const float* bias;  // (K,) or nullptr
  float* y;           // (N, OH, OW, K): the output, channels-last
  int64_t TB, ldv;    // tiles per block; row length of the block's input transforms
  bool relu;
};

enum Isa : int { kIsaNone = 0, kIsaAvx2 = 1, kIsaAvx512 = 2 };

#ifdef FCN_WINO_X86
// The vector operations both ISAs spell alike, P the intrinsics' prefix.
#define FCN_WINO_VEC_OPS(P)                                                  \
  static inline T load(const float* p) { return P##_loadu_ps(p); }           \
  static inline void store(float* p, T v) { P##_storeu_ps(p, v); }           \
  static inline T zero() { return P##_setzero_ps(); }                        \
  static inline T set1(float f) { return P##_set1_ps(f); }                   \
  static inline T mul(T a, T b) { return P##_mul_ps(a, b); }                 \
  static inline T add(T a, T b) { return P##_add_ps(a, b); }                 \
  static inline T fma(T a, T b, T c) { return P##_fmadd_ps(a, b, c); }       \
  static inline T max(T a, T b) { return P##_max_ps(a, b); }

// GCC 12 warns that the undefined pass-through operand of its own AVX-512
// intrinsics "may be used uninitialized": a false positive in its headers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC push_options
#pragma GCC target("avx512f,fma")
namespace avx512 {
struct V {
  using T = __m512;
  static constexpr int W = 16;
  static constexpr int MR = 6;  // 6 rows x 2 vectors: 12 accumulators
  static inline __mmask16 mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static inline T loadn(const float* p, int n) {
    return n == W ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(mask(n), p);
  }
  static inline void storen(float* p, T v, int n) {
    if (n == W) _mm512_storeu_ps(p, v);
    else _mm512_mask_storeu_ps(p, mask(n), v);
  }
  FCN_WINO_VEC_OPS(_mm512)
};
#define FCN_WINO_MR 6
#include "winograd_impl.h"
#undef FCN_WINO_MR
}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
struct V {
  using T = __m256;
  static constexpr int W = 8;
  static constexpr int MR = 3;  // 3 rows x 4 vectors: 12 accumulators
  static inline __m256i mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static inline T loadn(const float* p, int n) {
    return n == W ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mask(n));
  }
  static inline void storen(float* p, T v, int n) {
    if (n == W) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, mask(n), v);
  }
  FCN_WINO_VEC_OPS(_mm256)
};
#define FCN_WINO_MR 3
#include "winograd_impl.h"
#undef FCN_WINO_MR
}  // namespace avx2
#pragma GCC pop_options
#pragma GCC diagnostic pop
#endif  // FCN_WINO_X86

// What this CPU (and its OS) can run: AVX-512F, else AVX2 with FMA, else none.
Isa detected_isa() {
#ifdef FCN_WINO_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) return kIsaAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kIsaAvx2;
#endif
  return kIsaNone;
}

const char* isa_name(int isa) {
  return isa == kIsaAvx512 ? "avx512" : isa == kIsaAvx2 ? "avx2" : "none";
}

// The ISA of a name ('avx512', 'avx2', 'none'), or -1 for any other.
int isa_from_name(const std::string& s) {
  for (int isa : {kIsaNone, kIsaAvx2, kIsaAvx512})
    if (s == isa_name(isa)) return isa;
  return -1;
}

// The ISA in use: the detected one, lowered by FCN_REPRO_CPU_ISA at the first
// call (an unknown or unsupported name is ignored), or by _set_cpu_isa.
std::atomic<int>& isa_in_use() {
  static std::atomic<int> isa([] {
    int best = detected_isa();
    const char* env = std::getenv("FCN_REPRO_CPU_ISA");
    const int want = env != nullptr ? isa_from_name(env) : -1;
    if (want >= 0 && want < best) best = want;
    return best;
  }());
  return isa;
}

std::string cpu_isa() { return isa_name(isa_in_use().load()); }

// Sets the ISA (at most what the CPU supports); returns the one it replaces.
std::string set_cpu_isa(const std::string& name) {
  const char* op = "_set_cpu_isa";
  const int want = isa_from_name(name);
  FCN_CHECK(op, want >= 0, "instruction set must be 'avx512', 'avx2' or 'none', got '", name, "'");
  FCN_CHECK(op, want <= detected_isa(), "this CPU does not support ", name, " (best: ",
            isa_name(detected_isa()), ")");
  return isa_name(isa_in_use().exchange(want));
}

// Tiles per block: the block's transforms (n*n*TB*(ldv + Kp) floats) within
// ~2 MB, at least 48 tiles (so that the weight, read once per block, is
// amortised over enough tiles), at most 192, a multiple of 6 (both ISAs'
// micro-kernel heights divide it), and no more than the call has.
int64_t block_tiles(int64_t n, int64_t ldv, int64_t Kp, int64_t total) {
  const int64_t per_tile = n * n * (ldv + Kp);
  int64_t tb = (int64_t(1) << 19) / per_tile;
  tb = tb < 48 ? 48 : tb > 192 ? 192 : tb;
  tb = tb / 6 * 6;
  const int64_t need = (total + 5) / 6 * 6;
  return need < tb ? need : tb;
}

at::Tensor winograd_conv3x3_cpu(const at::Tensor& x, const at::Tensor& U, const at::Tensor& BT,
                                const at::Tensor& AT, const c10::optional<at::Tensor>& bias, int64_t K,
                                at::IntArrayRef pad, at::IntArrayRef phase, bool relu) {
  const char* op = "winograd_conv3x3";
  const WinogradGeom g = check_winograd(op, x, U, BT, AT, bias, K, pad, phase);
  const int isa = isa_in_use().load();
  FCN_CHECK(op, isa != kIsaNone, "this CPU has neither AVX-512 nor AVX2 with FMA (or they are switched off)");
  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor Uc = U.contiguous(), BTc = BT.contiguous(), ATc = AT.contiguous();
  at::Tensor bc;
  if (bias.has_value() && bias->defined()) bc = bias->contiguous();
  at::Tensor y = at::empty({g.N, K, g.OH, g.OW}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;

  WinoArgs a{};
  static_cast<WinogradGeom&>(a) = g;
  a.x = xc.data_ptr<float>(); a.U = Uc.data_ptr<float>(); a.BT = BTc.data_ptr<float>();
  a.AT = ATc.data_ptr<float>(); a.bias = bc.defined() ? bc.data_ptr<float>() : nullptr;
  a.y = y.data_ptr<float>();
  a.ldv = (g.C + 15) / 16 * 16;
  a.relu = relu;
  const int64_t total = g.N * g.th * g.tw;
  a.TB = block_tiles(g.n, a.ldv, g.Kp, total);
  const int64_t blocks = (total + a.TB - 1) / a.TB;
  const int64_t nn = g.n * g.n;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> vb(static_cast<size_t>(nn * (a.TB * a.ldv + kSkew))),
        mb(static_cast<size_t>(nn * (a.TB * a.Kp + kSkew))),
        tmp(static_cast<size_t>(nn * 16));
#ifdef FCN_WINO_X86
    if (isa == kIsaAvx512) avx512::run_blocks(a, b0, b1, vb.data(), mb.data(), tmp.data());
    else avx2::run_blocks(a, b0, b1, vb.data(), mb.data(), tmp.data());
#endif
  });
  return y;
}

}  // namespace wino

// The instruction set in use: a CPU-only setting, so registered here (as
// backend-less functions) rather than in fcn_ops.cpp's schema block, which the
// CUDA emulator builds without this file.
TORCH_LIBRARY_FRAGMENT(fcn_repro, m) {
  m.def("_cpu_isa() -> str", &wino::cpu_isa);
  m.def("_set_cpu_isa(str isa) -> str", &wino::set_cpu_isa);
}

TORCH_LIBRARY_IMPL(fcn_repro, CPU, m) {
  m.impl("winograd_conv3x3", &wino::winograd_conv3x3_cpu);
}

}  // namespace fcn_repro
