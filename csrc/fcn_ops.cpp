// The one TORCH_LIBRARY schema block of fcn_repro (ops come with their own issue).
#include <torch/extension.h>

TORCH_LIBRARY(fcn_repro, m) {}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
