// Content hashing for fingerprints and checksums: 64-bit FNV-1a, streamable.
// Not cryptographic: it detects corruption and changed content, not tampering.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace enstack::util {

class Fnv1a64 {
 public:
  Fnv1a64& update(const void* data, std::size_t size);
  Fnv1a64& update(std::string_view text) { return update(text.data(), text.size()); }
  template <typename T>
  Fnv1a64& update_value(const T& value) {
    return update(&value, sizeof(T));
  }
  uint64_t digest() const { return state_; }
  std::string hex() const;  // 16 lowercase hex digits

 private:
  uint64_t state_ = 0xcbf29ce484222325ULL;
};

std::string to_hex(uint64_t value);

}  // namespace enstack::util
