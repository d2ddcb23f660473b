// The CUDA emulator of the test suite: what the .cu files of csrc/cuda see
// of CUDA when built without nvcc (FCN_CUDA_EMU). Kernels are ordinary C++
// functions; a launch runs every block, and in each block every thread as a
// fiber of its own (ucontext), in a chosen order (sequential, reversed,
// shuffled, warp-interleaved), so that __syncthreads/__syncthreads_or are
// real barriers: a round runs each live thread up to its next barrier or its
// end; threads that leave while others wait, or wait at different barriers,
// are reported as barrier divergence. Launch configurations that CUDA
// refuses fail as CUDA fails them (the error surfaces at
// C10_CUDA_KERNEL_LAUNCH_CHECK), and a launch without a CUDAGuard in scope is
// flagged. Kernels see elements of type elem_t<T> (Tracked<T>): when
// checking is on, every write to an output of the launch (out_ptr) is
// counted, and a read of an output element not yet written, a second write,
// or an element never written is reported.
//
// Test-only: tests/cuda_emu/build.py builds it; nothing here ships.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- the CUDA language pieces the kernels use -------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // one block runs at a time: a function-static array is its shared memory

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};

extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;

void __syncthreads();
int __syncthreads_or(int predicate);

namespace fcn_emu {

// ---- settings (tests set them through the module's functions) --------------
enum class Order { kSequential = 0, kReversed = 1, kShuffled = 2, kInterleaved = 3 };
void set_order(int order, uint64_t seed);
void set_sm_count(int n);
int sm_count();
void set_checking(bool on);

// ---- the checking element type ----------------------------------------------
extern bool g_checking;  // fast path: nothing recorded when off
void note_read(const void* p);
void note_write(const void* p);
// Registers [p, p + n*elem) as an output of the next launch.
void track_output(const void* p, int64_t n, size_t elem);

template <typename T>
struct Tracked {
  T v;
  Tracked() = default;
  Tracked(T x) : v(x) {}  // NOLINT: implicit, as the kernels write T(0), acc = a + b
  Tracked(const Tracked& o) : v(o.get()) {}
  Tracked& operator=(const Tracked& o) {
    set(o.get());
    return *this;
  }
  Tracked& operator=(T x) {
    set(x);
    return *this;
  }
  Tracked& operator+=(T x) {
    set(get() + x);
    return *this;
  }
  operator T() const { return get(); }  // NOLINT
  T get() const {
    if (g_checking) note_read(this);
    return v;
  }
  void set(T x) {
    if (g_checking) note_write(this);
    v = x;
  }
};
static_assert(sizeof(Tracked<float>) == sizeof(float) && sizeof(Tracked<double>) == sizeof(double),
              "Tracked<T> is laid out as T");

template <typename T>
using elem_t = Tracked<T>;

// ---- launches -----------------------------------------------------------------
// Runs body(thread) for every thread of every block; errors are kept for
// launch_check() as CUDA keeps them for cudaGetLastError.
void run_grid(const char* name, dim3 grid, dim3 block, size_t smem, const std::function<void()>& body);
// C10_CUDA_KERNEL_LAUNCH_CHECK: throws (c10::Error) when the last launch failed.
void launch_check(const char* file, int line);
void guard_enter();
void guard_exit();

template <typename... KArgs, typename Stream, typename... Args>
void launch(const char* name, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
            const Stream&, Args&&... args) {
  // the arguments are converted to the kernel's parameter types once, at the
  // launch, as CUDA copies them
  std::tuple<std::decay_t<KArgs>...> packed(std::forward<Args>(args)...);
  run_grid(name, grid, block, smem, [&] { std::apply(kernel, packed); });
}

}  // namespace fcn_emu
