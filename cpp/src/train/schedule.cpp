// Learning-rate schedules (see enstack/train/schedule.h). The arithmetic mirrors
// transformers' lambdas operation for operation, so results agree to the last bit.
#include "enstack/train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "enstack/util/error.h"

namespace enstack::train {

Schedule parse_schedule(const std::string& name) {
  if (name == "linear") return Schedule::kLinear;
  if (name == "cosine") return Schedule::kCosine;
  if (name == "constant") return Schedule::kConstant;
  throw ConfigError(util::str_cat("train.lr_schedule '", name, "' is unknown; use linear, cosine or constant."));
}

double lr_multiplier(Schedule schedule, int64_t step, int64_t warmup_steps, int64_t total_steps) {
  const auto s = static_cast<double>(step);
  if (step < warmup_steps) return s / static_cast<double>(std::max<int64_t>(1, warmup_steps));
  const auto warmup = static_cast<double>(warmup_steps);
  const auto total = static_cast<double>(total_steps);
  const auto span = static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
  switch (schedule) {
    case Schedule::kConstant:
      return 1.0;
    case Schedule::kLinear:
      return std::max(0.0, (total - s) / span);
    case Schedule::kCosine: {
      const double progress = (s - warmup) / span;
      constexpr double kCycles = 0.5;
      return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * kCycles * 2.0 * progress)));
    }
  }
  return 1.0;
}

int64_t warmup_steps_for(double warmup_ratio, int64_t total_steps) {
  return static_cast<int64_t>(std::ceil(warmup_ratio * static_cast<double>(total_steps)));
}

}  // namespace enstack::train
