// Stochastic weight averaging (Izmailov et al. 2018): an equal-weight running
// average of the model's floating-point parameters, numerically as
// torch.optim.swa_utils.AveragedModel with its default averaging: the first
// update copies, the n-th sets avg += (p - avg) / n. The average lives on the
// training device in fp32 and is updated with foreach ops over all parameters:
// on CUDA one fused _foreach_lerp_, on CPU sub/div/add, because that is what
// AveragedModel itself does on each device (the two round differently).
//
// The encoders here normalise with LayerNorm only (no BatchNorm running
// statistics), so the averaged weights need no update_bn pass.
#pragma once

#include <torch/types.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace enstack::train {

class SwaAverage {
 public:
  // `params`: the live parameters (name, tensor); non-floating ones are ignored.
  explicit SwaAverage(const std::vector<std::pair<std::string, torch::Tensor>>& params);

  void update();  // folds the parameters' current values into the average
  int64_t count() const { return count_; }

  // The averages by parameter name (fp32, on the training device), for checkpoints.
  std::map<std::string, torch::Tensor> state_tensors() const;
  // Restores averages and count; throws CheckpointError on missing or mis-shaped entries.
  void load_state_tensors(const std::map<std::string, torch::Tensor>& state, int64_t count);

  // Exchanges the averaged values with the live parameters (call twice to undo):
  // evaluate or export the SWA model without a second copy of the model.
  void swap_with_parameters();

 private:
  std::vector<std::string> names_;
  std::vector<torch::Tensor> live_, average_;
  int64_t count_ = 0;
};

}  // namespace enstack::train
