// 64-bit FNV-1a (see enstack/util/hash.h). Processes 8 bytes per loop turn
// where it can; the result is the byte-wise FNV-1a of the input.
#include "enstack/util/hash.h"

#include <cstdio>

namespace enstack::util {

Fnv1a64& Fnv1a64::update(const void* data, std::size_t size) {
  constexpr uint64_t kPrime = 0x100000001b3ULL;
  const auto* bytes = static_cast<const unsigned char*>(data);
  uint64_t h = state_;
  std::size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    h = (h ^ bytes[i]) * kPrime;
    h = (h ^ bytes[i + 1]) * kPrime;
    h = (h ^ bytes[i + 2]) * kPrime;
    h = (h ^ bytes[i + 3]) * kPrime;
    h = (h ^ bytes[i + 4]) * kPrime;
    h = (h ^ bytes[i + 5]) * kPrime;
    h = (h ^ bytes[i + 6]) * kPrime;
    h = (h ^ bytes[i + 7]) * kPrime;
  }
  for (; i < size; ++i) h = (h ^ bytes[i]) * kPrime;
  state_ = h;
  return *this;
}

std::string to_hex(uint64_t value) {
  char buffer[17];
  std::snprintf(buffer, sizeof(buffer), "%016llx", static_cast<unsigned long long>(value));
  return buffer;
}

std::string Fnv1a64::hex() const { return to_hex(state_); }

}  // namespace enstack::util
