// Build facts compiled into the core (see enstack/util/build_info.h).
#include "enstack/util/build_info.h"

#include <torch/version.h>
#include <ATen/Context.h>

namespace enstack::util {

std::string enstack_version() { return ENSTACK_VERSION; }

std::string torch_version() { return TORCH_VERSION; }

std::string compiler() {
#if defined(__clang__)
  return "Clang " __clang_version__;
#elif defined(__GNUC__)
  return "GCC " __VERSION__;
#else
  return "unknown";
#endif
}

std::string dependencies() { return ENSTACK_DEPS_SUMMARY; }

bool cuda_compiled() { return at::hasCUDA(); }

}  // namespace enstack::util
