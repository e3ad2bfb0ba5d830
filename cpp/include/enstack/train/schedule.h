// Learning-rate schedules as pure functions of the optimizer step, numerically
// equal to transformers' get_{linear,cosine,constant}_schedule_with_warmup
// (LambdaLR multipliers), so a resumed run needs only the step to continue.
#pragma once

#include <cstdint>
#include <string>

namespace enstack::train {

enum class Schedule { kLinear, kCosine, kConstant };

Schedule parse_schedule(const std::string& name);  // throws ConfigError

// The multiplier of the base learning rate before optimizer step `step` (0-based).
double lr_multiplier(Schedule schedule, int64_t step, int64_t warmup_steps, int64_t total_steps);

// warmup_steps from a ratio, as transformers' TrainingArguments.get_warmup_steps: ceil(ratio * total).
int64_t warmup_steps_for(double warmup_ratio, int64_t total_steps);

}  // namespace enstack::train
