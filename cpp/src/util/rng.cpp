// Implements the portable PRNG of enstack/util/rng.h: SplitMix64, xoshiro256**,
// Lemire's unbiased bounded integers and Fisher-Yates.
#include "enstack/util/rng.h"

#include <utility>

#include "enstack/util/error.h"

namespace enstack::util {
namespace {

constexpr uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

// High and low 64 bits of a 64x64-bit product, from 32-bit halves so that no
// compiler extension (__uint128_t) is needed.
void multiply_wide(uint64_t a, uint64_t b, uint64_t& high, uint64_t& low) {
  constexpr uint64_t kMask32 = 0xffffffffULL;
  const uint64_t a_lo = a & kMask32, a_hi = a >> 32;
  const uint64_t b_lo = b & kMask32, b_hi = b >> 32;
  const uint64_t lo_lo = a_lo * b_lo;
  const uint64_t hi_lo = a_hi * b_lo;
  const uint64_t lo_hi = a_lo * b_hi;
  const uint64_t hi_hi = a_hi * b_hi;
  const uint64_t cross = (lo_lo >> 32) + (hi_lo & kMask32) + lo_hi;
  high = hi_hi + (hi_lo >> 32) + (cross >> 32);
  low = (cross << 32) | (lo_lo & kMask32);
}

}  // namespace

uint64_t SplitMix64::next() { return splitmix64_mix(state_ += 0x9e3779b97f4a7c15ULL); }

uint64_t mix_seed(uint64_t a, uint64_t b) {
  SplitMix64 first(a);
  SplitMix64 second(first.next() ^ b);
  return second.next();
}

Rng::Rng(uint64_t seed) {
  SplitMix64 seeder(seed);
  for (auto& word : state_) word = seeder.next();
}

Rng Rng::from_state(const State& state) {
  ENSTACK_ASSERT(state[0] != 0 || state[1] != 0 || state[2] != 0 || state[3] != 0,
                 "xoshiro256** needs a state that is not all zero.");
  Rng rng;
  rng.state_ = state;
  return rng;
}

uint64_t Rng::next_u64() {
  auto& s = state_;
  const uint64_t result = rotl(s[1] * 5, 7) * 9;
  const uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

// Lemire, "Fast Random Integer Generation in an Interval" (2019): the high word
// of x * n is uniform in [0, n) once the few low words below 2^64 mod n are
// rejected.
uint64_t Rng::uniform_below(uint64_t n) {
  ENSTACK_ASSERT(n > 0, "uniform_below needs a positive bound.");
  uint64_t high = 0, low = 0;
  multiply_wide(next_u64(), n, high, low);
  if (low < n) {
    const uint64_t threshold = (0 - n) % n;  // 2^64 mod n
    while (low < threshold) multiply_wide(next_u64(), n, high, low);
  }
  return high;
}

void Rng::shuffle(std::vector<int64_t>& values) {
  for (std::size_t i = values.size(); i > 1; --i) {
    const auto j = static_cast<std::size_t>(uniform_below(i));
    std::swap(values[i - 1], values[j]);
  }
}

}  // namespace enstack::util
