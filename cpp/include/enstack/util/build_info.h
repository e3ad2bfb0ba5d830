// What this build of the enstack core is: versions and how its dependencies
// were obtained. Printed by `enstack doctor`.
#pragma once

#include <string>

namespace enstack::util {

std::string enstack_version();
std::string torch_version();     // the LibTorch the core was compiled against
std::string compiler();          // e.g. "GCC 12.2.0"
std::string dependencies();      // e.g. "spdlog=system-1.10.0 nlohmann_json=..."
bool cuda_compiled();            // whether LibTorch was built with CUDA

}  // namespace enstack::util
