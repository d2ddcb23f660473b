// The CUDA emulator's runtime (see include/fcn_emu/runtime.h): the grid and
// block scheduler with one fiber per CUDA thread, the launch checks, the
// write-once checker, and the module's Python functions. Included by
// emu_ops.cpp (one translation unit with the .cu files it runs).
#include <ucontext.h>
#include <sys/mman.h>

#include <algorithm>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <vector>

#include <torch/extension.h>

#include "fcn_emu/runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define FCN_EMU_ASAN 1
#endif

uint3 threadIdx{0, 0, 0};
uint3 blockIdx{0, 0, 0};
dim3 blockDim{1, 1, 1};
dim3 gridDim{1, 1, 1};

namespace fcn_emu {

bool g_checking = false;

namespace {

constexpr size_t kStack = 256 * 1024;
constexpr int kMaxThreads = 1024;
constexpr int kMaxMessages = 8;  // per launch

enum State { kReady, kAtBarrier, kDone };
enum Barrier { kSync = 1, kSyncOr = 2 };

struct Fiber {
  ucontext_t ctx;
  State state;
  int kind, value;
  int64_t passed;  // barriers passed
  uint3 tid;
};

struct Range {
  const char* begin;
  const char* end;
  size_t elem;
  std::vector<uint8_t> writes;
};

struct Emu {
  std::mutex launch_mu;
  Order order = Order::kSequential;
  uint64_t seed = 0;
  int sms = 132;
  int guards = 0;
  std::string last_error;
  std::vector<std::string> violations;
  std::vector<std::tuple<std::string, int64_t, int64_t>> launches;
  std::vector<Range> pending, active;
  int messages = 0;
  // the block being run
  std::vector<Fiber> fibers;
  char* stacks = nullptr;
  int current = -1;
  int barrier_result = 0;
  const std::function<void()>* body = nullptr;
  ucontext_t sched;
  const char* name = "";
#ifdef FCN_EMU_ASAN
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
#endif
};

Emu& emu() {
  static Emu* e = new Emu();
  return *e;
}

void violation(const std::string& msg) {
  Emu& e = emu();
  if (e.messages++ >= kMaxMessages) return;
  e.violations.push_back(std::string(e.name) + ": " + msg);
  if (e.last_error.empty()) e.last_error = e.violations.back();
}

// The order in which n items (threads of a block, or blocks) are run.
std::vector<int64_t> ordering(int64_t n, bool threads) {
  Emu& e = emu();
  std::vector<int64_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  switch (e.order) {
    case Order::kSequential:
      break;
    case Order::kReversed:
      std::reverse(idx.begin(), idx.end());
      break;
    case Order::kShuffled: {
      std::mt19937_64 rng(e.seed * 2 + (threads ? 1 : 0));
      std::shuffle(idx.begin(), idx.end(), rng);
      break;
    }
    case Order::kInterleaved: {  // lane 0 of every warp, then lane 1, ... (blocks: even, then odd)
      const int64_t w = threads ? 32 : 2;
      int64_t k = 0;
      for (int64_t lane = 0; lane < w; ++lane)
        for (int64_t i = lane; i < n; i += w) idx[k++] = i;
      break;
    }
  }
  return idx;
}

void start_switch(void** save, const void* bottom, size_t size) {
#ifdef FCN_EMU_ASAN
  __sanitizer_start_switch_fiber(save, bottom, size);
#else
  (void)save, (void)bottom, (void)size;
#endif
}
void finish_switch(void* save, const void** bottom, size_t* size) {
#ifdef FCN_EMU_ASAN
  __sanitizer_finish_switch_fiber(save, bottom, size);
#else
  (void)save, (void)bottom, (void)size;
#endif
}

void fiber_main() {
  Emu& e = emu();
#ifdef FCN_EMU_ASAN
  finish_switch(nullptr, &e.sched_bottom, &e.sched_size);
#else
  finish_switch(nullptr, nullptr, nullptr);
#endif
  (*e.body)();
  e.fibers[e.current].state = kDone;
#ifdef FCN_EMU_ASAN
  start_switch(nullptr, e.sched_bottom, e.sched_size);  // this fiber ends
#endif
  // returns to uc_link (the scheduler)
}

int barrier(int kind, int value) {
  Emu& e = emu();
  TORCH_CHECK(e.current >= 0, "__syncthreads outside an emulated kernel");
  Fiber& f = e.fibers[e.current];
  f.state = kAtBarrier;
  f.kind = kind;
  f.value = value;
  void* fake = nullptr;
#ifdef FCN_EMU_ASAN
  start_switch(&fake, e.sched_bottom, e.sched_size);
#endif
  swapcontext(&f.ctx, &e.sched);
  finish_switch(fake, nullptr, nullptr);
  return e.barrier_result;
}

void set_thread_index(const Fiber& f) { threadIdx = f.tid; }

// Runs one block; false when it had to be abandoned (barrier divergence).
bool run_block(int64_t nthreads) {
  Emu& e = emu();
  e.fibers.resize(nthreads);
  for (int64_t t = 0; t < nthreads; ++t) {
    Fiber& f = e.fibers[t];
    f.state = kReady;
    f.passed = 0;
    f.tid = uint3{static_cast<unsigned>(t % blockDim.x),
                  static_cast<unsigned>((t / blockDim.x) % blockDim.y),
                  static_cast<unsigned>(t / (int64_t(blockDim.x) * blockDim.y))};
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = e.stacks + t * kStack;
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = &e.sched;
    makecontext(&f.ctx, fiber_main, 0);
  }
  const std::vector<int64_t> order = ordering(nthreads, true);
  for (;;) {
    for (int64_t t : order) {
      Fiber& f = e.fibers[t];
      if (f.state == kDone) continue;
      f.state = kReady;
      e.current = static_cast<int>(t);
      set_thread_index(f);
      void* fake = nullptr;
      start_switch(&fake, e.stacks + t * kStack, kStack);
      swapcontext(&e.sched, &f.ctx);
      finish_switch(fake, nullptr, nullptr);
    }
    e.current = -1;
    int64_t done = 0, waiting = 0, kinds = 0, result = 0;
    for (const Fiber& f : e.fibers) {
      if (f.state == kDone) ++done;
      if (f.state == kAtBarrier) {
        ++waiting;
        kinds |= f.kind;
        result |= f.value != 0;
      }
    }
    if (waiting == 0) return true;
    std::ostringstream msg;
    if (done > 0) {
      msg << "barrier divergence in block " << blockIdx.x << ": " << done << " of " << nthreads
          << " threads exited while " << waiting << " wait at a barrier";
    } else if (kinds == (kSync | kSyncOr)) {
      msg << "barrier divergence in block " << blockIdx.x
          << ": threads wait at different barriers (__syncthreads and __syncthreads_or)";
    }
    if (!msg.str().empty()) {
      violation(msg.str());
      return false;  // the suspended fibers are dropped (their stacks are reused)
    }
    e.barrier_result = static_cast<int>(result);
    for (Fiber& f : e.fibers) ++f.passed;
  }
}

}  // namespace

void set_order(int order, uint64_t seed) {
  TORCH_CHECK(order >= 0 && order <= 3, "order must be 0..3");
  emu().order = static_cast<Order>(order);
  emu().seed = seed;
}
void set_sm_count(int n) {
  TORCH_CHECK(n >= 1, "SM count must be >= 1");
  emu().sms = n;
}
int sm_count() { return emu().sms; }
void set_checking(bool on) { g_checking = on; }

void track_output(const void* p, int64_t n, size_t elem) {
  if (!g_checking || n <= 0) return;
  const char* b = static_cast<const char*>(p);
  emu().pending.push_back(Range{b, b + n * elem, elem, std::vector<uint8_t>(n, 0)});
}

static Range* find_range(const void* p) {
  const char* c = static_cast<const char*>(p);
  for (Range& r : emu().active)
    if (c >= r.begin && c < r.end) return &r;
  return nullptr;
}

void note_read(const void* p) {
  Range* r = find_range(p);
  if (r == nullptr) return;
  const size_t i = (static_cast<const char*>(p) - r->begin) / r->elem;
  if (r->writes[i] == 0) {
    std::ostringstream msg;
    msg << "output element " << i << " read before it was written (thread " << threadIdx.x
        << " of block " << blockIdx.x << ")";
    violation(msg.str());
  }
}

void note_write(const void* p) {
  Range* r = find_range(p);
  if (r == nullptr) return;
  const size_t off = static_cast<const char*>(p) - r->begin;
  if (off % r->elem != 0) {
    violation("misaligned write into an output");
    return;
  }
  const size_t i = off / r->elem;
  if (r->writes[i] < 255) ++r->writes[i];
  if (r->writes[i] == 2) {
    std::ostringstream msg;
    msg << "output element " << i << " written twice (thread " << threadIdx.x << " of block "
        << blockIdx.x << ")";
    violation(msg.str());
  }
}

void guard_enter() { ++emu().guards; }
void guard_exit() { --emu().guards; }

void run_grid(const char* name, dim3 grid, dim3 block, size_t smem, const std::function<void()>& body) {
  Emu& e = emu();
  std::lock_guard<std::mutex> lock(e.launch_mu);
  e.name = name;
  e.messages = 0;
  e.active.swap(e.pending);
  e.pending.clear();
  const int64_t nthreads = int64_t(block.x) * block.y * block.z;
  e.launches.emplace_back(name, int64_t(grid.x) * grid.y * grid.z, nthreads);
  if (e.guards <= 0) violation("launched without a CUDAGuard in scope (wrong device on a multi-GPU machine)");
  if (nthreads == 0 || nthreads > kMaxThreads || block.x > 1024 || block.y > 1024 || block.z > 64 ||
      grid.x == 0 || grid.x > 2147483647u || grid.y == 0 || grid.y > 65535 || grid.z == 0 || grid.z > 65535) {
    if (e.last_error.empty()) e.last_error = std::string(name) + ": invalid configuration argument";
    e.active.clear();
    return;
  }
  if (smem > 48 * 1024) {
    if (e.last_error.empty()) e.last_error = std::string(name) + ": too many resources requested for launch";
    e.active.clear();
    return;
  }
  if (e.stacks == nullptr) {
    void* m = mmap(nullptr, kStack * kMaxThreads, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    TORCH_CHECK(m != MAP_FAILED, "emulator: cannot map fiber stacks");
    e.stacks = static_cast<char*>(m);
  }
  gridDim = grid;
  blockDim = block;
  e.body = &body;
  const int64_t nblocks = int64_t(grid.x) * grid.y * grid.z;
  for (int64_t b : ordering(nblocks, false)) {
    blockIdx = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
                     static_cast<unsigned>(b / (int64_t(grid.x) * grid.y))};
    if (!run_block(nthreads)) break;
  }
  e.body = nullptr;
  for (const Range& r : e.active) {
    for (size_t i = 0; i < r.writes.size(); ++i) {
      if (r.writes[i] == 0) {
        std::ostringstream msg;
        msg << "output element " << i << " of " << r.writes.size() << " never written";
        violation(msg.str());
        break;
      }
    }
  }
  e.active.clear();
}

void launch_check(const char* file, int line) {
  Emu& e = emu();
  if (e.last_error.empty()) return;
  const std::string msg = e.last_error;
  e.last_error.clear();
  TORCH_CHECK(false, "CUDA error (emulated): ", msg, " at ", file, ":", line);
}

}  // namespace fcn_emu

void __syncthreads() { fcn_emu::barrier(fcn_emu::kSync, 0); }
int __syncthreads_or(int predicate) { return fcn_emu::barrier(fcn_emu::kSyncOr, predicate); }

namespace {

std::vector<std::string> take_violations() {
  std::vector<std::string> v;
  v.swap(fcn_emu::emu().violations);
  fcn_emu::emu().last_error.clear();
  return v;
}

std::vector<std::tuple<std::string, int64_t, int64_t>> take_launches() {
  std::vector<std::tuple<std::string, int64_t, int64_t>> v;
  v.swap(fcn_emu::emu().launches);
  return v;
}

// ---- self-tests of the emulator: kernels with the faults it must report -------
__global__ void selftest_write(fcn_emu::Tracked<float>* out, int n, int skip, int twice) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    if (i == skip) continue;
    out[i] = float(i);
    if (i == twice) out[i] = 0.f;
  }
}
__global__ void selftest_barrier(int* out, int early, int mixed) {
  if (early && threadIdx.x == 5) return;  // a thread leaves before the barrier
  if (mixed && threadIdx.x == 3) {
    __syncthreads();
  } else {
    out[threadIdx.x] = __syncthreads_or(threadIdx.x == 7);
  }
}

// kind: "ok", "threads_2048", "no_guard", "skip_write", "write_twice", "early_return", "mixed_barriers";
// returns the launch error message ("" when none).
std::string selftest(const std::string& kind) {
  take_violations();
  std::vector<float> f(1000);
  std::vector<int> o(64);
  auto tracked = [&] { fcn_emu::track_output(f.data(), int64_t(f.size()), sizeof(float)); };
  const bool check = fcn_emu::g_checking;
  fcn_emu::set_checking(true);
  at::cuda::CUDAStream stream;
  std::string err;
  try {
    std::unique_ptr<c10::cuda::CUDAGuard> guard;
    if (kind != "no_guard") guard.reset(new c10::cuda::CUDAGuard(c10::Device(c10::kCPU)));
    if (kind == "ok" || kind == "no_guard" || kind == "skip_write" || kind == "write_twice") {
      tracked();
      FCN_LAUNCH(selftest_write, 3, 128, 0, stream, reinterpret_cast<fcn_emu::Tracked<float>*>(f.data()), 1000, kind == "skip_write" ? 17 : -1,
                 kind == "write_twice" ? 42 : -1);
    } else if (kind == "threads_2048") {
      FCN_LAUNCH(selftest_write, 1, 2048, 0, stream, reinterpret_cast<fcn_emu::Tracked<float>*>(f.data()), 1000, -1, -1);
    } else if (kind == "early_return" || kind == "mixed_barriers") {
      FCN_LAUNCH(selftest_barrier, 1, 64, 0, stream, o.data(), kind == "early_return", kind == "mixed_barriers");
    } else if (kind == "barrier_or") {
      FCN_LAUNCH(selftest_barrier, 2, 64, 0, stream, o.data(), 0, 0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      for (int v : o) TORCH_CHECK(v == 1, "__syncthreads_or did not see thread 7's predicate");
    } else {
      TORCH_CHECK(false, "unknown self-test ", kind);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } catch (const c10::Error& e) {
    err = e.what_without_backtrace();
  }
  fcn_emu::set_checking(check);
  take_violations();
  return err;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("selftest", &selftest, "runs a kernel with a known fault; returns the launch error ('' if none)");
  m.doc() = "fcn_repro's CUDA kernels run by the test emulator (torch.ops.fcn_repro_emu.*)";
  m.def("set_order", &fcn_emu::set_order, "0 sequential, 1 reversed, 2 shuffled (seed), 3 warp-interleaved");
  m.def("set_sm_count", &fcn_emu::set_sm_count);
  m.def("set_checking", &fcn_emu::set_checking, "write-once / read-after-write checking of outputs");
  m.def("set_force_index64", [](bool on) { fcn_repro::cuda::force_index64 = on; });
  m.def("take_violations", &take_violations, "violations since the last call (and clears the launch error)");
  m.def("take_launches", &take_launches, "(kernel, blocks, threads per block) of the launches since the last call");
}
