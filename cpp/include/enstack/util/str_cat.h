// Concatenates streamable values into a std::string; used by errors and logs.
// Free of torch and spdlog so every target can include it.
#pragma once

#include <sstream>
#include <string>
#include <utility>

namespace enstack::util {

template <typename... Args>
std::string str_cat(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}

}  // namespace enstack::util
