// A portable pseudo-random generator: xoshiro256** (Blackman & Vigna) seeded
// through SplitMix64, with unbiased bounded integers (Lemire's multiply-shift
// with rejection) and a Fisher-Yates shuffle. Everything here is plain 64-bit
// integer arithmetic, so a seed gives the same stream on every compiler and
// standard library; std::*_distribution and std::shuffle do not, which is why
// the epoch plan (and so exact resume) uses this instead.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace enstack::util {

// SplitMix64 (Steele, Lea & Flood): used to expand one seed into a full state.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next();

 private:
  uint64_t state_;
};

// SplitMix64's output mixer (a bijection of 64-bit words).
constexpr uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Output number `index` (from 0) of SplitMix64(seed), in O(1): the generator is a
// counter (state += golden gamma) through the mixer, so any position can be read
// directly. Dropout masks use this to regenerate any element's bits in backward.
constexpr uint64_t splitmix64_at(uint64_t seed, uint64_t index) {
  return splitmix64_mix(seed + (index + 1) * 0x9e3779b97f4a7c15ULL);
}

// Mixes two values into one well-spread seed, e.g. (run seed, epoch).
uint64_t mix_seed(uint64_t a, uint64_t b);

class Rng {
 public:
  using State = std::array<uint64_t, 4>;

  // The state is the first four SplitMix64 outputs of `seed` (the reference seeding).
  explicit Rng(uint64_t seed);
  // A raw xoshiro256** state (must not be all zero); for tests against reference vectors.
  static Rng from_state(const State& state);

  uint64_t next_u64();
  // Uniform in [0, n), unbiased; n must be > 0.
  uint64_t uniform_below(uint64_t n);
  // Uniform permutation of `values` in place (Fisher-Yates, from the back).
  void shuffle(std::vector<int64_t>& values);

  const State& state() const { return state_; }

 private:
  Rng() = default;
  State state_{};
};

}  // namespace enstack::util
