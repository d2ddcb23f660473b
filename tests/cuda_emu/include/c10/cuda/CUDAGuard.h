// Stand-in for c10/cuda/CUDAGuard.h in the CUDA emulator: the guard only
// records that one is in scope (a launch without one is flagged).
#pragma once

#include <c10/core/Device.h>

#include "fcn_emu/runtime.h"

namespace c10 {
namespace cuda {

class CUDAGuard {
 public:
  explicit CUDAGuard(c10::Device) { ::fcn_emu::guard_enter(); }
  ~CUDAGuard() { ::fcn_emu::guard_exit(); }
  CUDAGuard(const CUDAGuard&) = delete;
  CUDAGuard& operator=(const CUDAGuard&) = delete;
};

}  // namespace cuda
}  // namespace c10
