// The monotonic clock behind wall-time schedules (train.save_minutes): steady_clock
// plus an offset that only tests move (enstack._C._testing.advance_clock), so a test
// can pass "ten minutes" between two steps without waiting or racing.
#pragma once

namespace enstack::util {

double monotonic_seconds();
void advance_test_clock(double seconds);

}  // namespace enstack::util
