// The schedule clock (see enstack/util/clock.h).
#include "enstack/util/clock.h"

#include <atomic>
#include <chrono>

namespace enstack::util {
namespace {
std::atomic<double> g_offset{0.0};
}  // namespace

double monotonic_seconds() {
  const auto now = std::chrono::steady_clock::now().time_since_epoch();
  return std::chrono::duration<double>(now).count() + g_offset.load(std::memory_order_relaxed);
}

void advance_test_clock(double seconds) {
  double current = g_offset.load();
  while (!g_offset.compare_exchange_weak(current, current + seconds)) {}
}

}  // namespace enstack::util
