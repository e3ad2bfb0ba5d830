// Dynamic loss scaling for fp16 training with torch.amp.GradScaler's defaults
// and semantics, driven by the same ATen kernels
// (_amp_foreach_non_finite_check_and_unscale_, _amp_update_scale_), with its
// scale and growth tracker as state for exact resume.
//
// One step: scale(loss).backward(); unscale(grads) (once; clipping then sees
// unscaled grads); if !step_was_skipped() run the optimizer; update().
// A skipped step (inf/NaN in the grads) must leave every trainer counter alone:
// no optimizer step, and the schedule, SWA and step counters do not advance.
#pragma once

#include <torch/types.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace enstack::train {

struct GradScalerOptions {
  double init_scale = 65536.0;  // 2**16
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
  bool enabled = true;

  void validate() const;  // throws ConfigError
  std::string to_string() const;
};

class GradScaler {
 public:
  using StateMap = std::map<std::string, torch::Tensor>;

  explicit GradScaler(GradScalerOptions options = {});

  // loss * scale. The scale moves to the device of the first loss it sees.
  // Disabled: returns `loss` itself.
  torch::Tensor scale(const torch::Tensor& loss);

  // Divides the grads in place by the scale and records whether any is inf/NaN.
  // Undefined grads are ignored. Call once per optimizer step, before clipping;
  // a second call before update() is a bug (InternalError). fp16 grads are
  // refused (ConfigError), as torch does: keep fp32 master weights.
  void unscale(const std::vector<torch::Tensor>& grads);

  // 0-dim float32 on the scale's device, non-zero when the last unscale() found
  // an inf/NaN. Stays valid after update() until the next unscale().
  torch::Tensor found_inf() const { return found_inf_; }

  // found_inf() != 0 (a device sync). Always false when disabled.
  bool step_was_skipped() const;

  // Backs off on inf/NaN, otherwise grows the scale after growth_interval clean
  // steps in a row. Needs unscale() since the last update() (InternalError otherwise).
  void update();

  double get_scale() const;       // 1.0 when disabled
  int64_t growth_tracker() const; // 0 when disabled
  bool enabled() const { return options_.enabled; }
  const GradScalerOptions& options() const { return options_; }

  // {"scale": 0-dim float32, "growth_tracker": 0-dim int32}; empty when disabled.
  StateMap state_tensors() const;
  // Restores scale and growth tracker; a no-op when disabled. Throws
  // CheckpointError when a key is missing or not a one-element tensor.
  void load_state_tensors(const StateMap& state);

  // {"enabled", "scale", "growth_tracker", "growth_factor", "backoff_factor",
  // "growth_interval"}; {"enabled": false} when disabled.
  nlohmann::json state_json() const;
  // Restores scale and growth tracker (the factors and interval come from this
  // run's options); a no-op when disabled. Throws CheckpointError when malformed.
  void load_state_json(const nlohmann::json& state);

 private:
  GradScalerOptions options_;
  torch::Tensor scale_;           // 0-dim float32
  torch::Tensor growth_tracker_;  // 0-dim int32
  torch::Tensor found_inf_;       // 0-dim float32, of the last unscale()
  bool placed_ = false;           // scale_ has moved to the loss's device
  bool unscaled_ = false;         // unscale() ran since the last update()
};

}  // namespace enstack::train
