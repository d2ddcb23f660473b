// Stand-in for ATen/cuda/CUDAContext.h in the CUDA emulator (tests/cuda_emu):
// the device properties (SM count settable by the tests) and the stream.
#pragma once

#include <cstdint>

#include "fcn_emu/runtime.h"

namespace at {
namespace cuda {

struct EmuDeviceProp {
  int multiProcessorCount;
};
inline EmuDeviceProp* getCurrentDeviceProperties() {
  static EmuDeviceProp prop;
  prop.multiProcessorCount = ::fcn_emu::sm_count();
  return &prop;
}

struct CUDAStream {
  int64_t id() const { return 0; }
};
inline CUDAStream getCurrentCUDAStream() { return CUDAStream{}; }

}  // namespace cuda
}  // namespace at
