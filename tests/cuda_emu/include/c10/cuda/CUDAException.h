// Stand-in for c10/cuda/CUDAException.h in the CUDA emulator: the launch
// check throws when the last emulated launch failed, as the real one does.
#pragma once

#include "fcn_emu/runtime.h"

#define C10_CUDA_KERNEL_LAUNCH_CHECK() ::fcn_emu::launch_check(__FILE__, __LINE__)
