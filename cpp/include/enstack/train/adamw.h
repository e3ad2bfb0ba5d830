// AdamW over named parameters with the two parameter groups of transformers'
// Trainer (no weight decay for biases and norm weights), numerically equal to
// torch.optim.AdamW, and its state as named tensors for exact resume.
//
// Which kernel runs: with options.fused (the default) every parameter on CPU or
// CUDA with a floating dtype is updated by ATen's fused kernel at::_fused_adamw_
// (what torch.optim.AdamW(fused=True) calls); anything else (other devices, or
// fused=false) takes a per-tensor path whose operations are exactly those of
// torch.optim.AdamW(foreach=False, fused=False), so it is bitwise equal to it.
// The two paths agree to float rounding, not bitwise.
#pragma once

#include <torch/types.h>

#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace enstack::train {

struct AdamWOptions {
  double lr = 5e-5;  // transformers' TrainingArguments default; step() takes the scheduled lr
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  // applied to the decay group only
  bool fused = true;          // use at::_fused_adamw_ where the device and dtype allow

  void validate() const;  // throws ConfigError
  std::string to_string() const;
};

// transformers' Trainer rule (get_decay_parameter_names): a parameter gets weight
// decay unless its lower-cased name contains "bias", "layernorm" or "rmsnorm",
// or matches (^|\.)norm($|\.) or _norm($|\.).
bool applies_weight_decay(const std::string& name);

class AdamW {
 public:
  using NamedParameters = std::vector<std::pair<std::string, torch::Tensor>>;
  using StateMap = std::map<std::string, torch::Tensor>;

  // Parameters that do not require grad are left out, as the Trainer does.
  // Throws ConfigError on duplicate names, undefined or non-floating parameters.
  explicit AdamW(NamedParameters params, AdamWOptions options = {});

  // One update with learning rate `lr`. Parameters without a grad are skipped
  // (their state does not change), as in torch. `grad_scale`, when given, means
  // the grads are still multiplied by it; `found_inf`, when given and non-zero,
  // makes the step a no-op (state and step counts included). A trainer that
  // uses GradScaler::unscale() passes neither and skips calling step() when
  // GradScaler::step_was_skipped().
  void step(double lr, const torch::Tensor& grad_scale = {}, const torch::Tensor& found_inf = {});

  // Sets every parameter's grad to undefined (None), like zero_grad(set_to_none=True).
  void zero_grad();

  // "<name>.exp_avg", "<name>.exp_avg_sq" (shape of the parameter) and
  // "<name>.step" (0-dim float32, the number of updates the parameter received).
  // The tensors alias the live state: copy them before handing them to a
  // writer that runs concurrently with training.
  StateMap state_tensors() const;

  // Copies a state written by state_tensors() into this optimizer. Nothing is
  // changed unless every key is present with the right shape and no key is
  // unknown; otherwise throws CheckpointError listing every problem.
  void load_state_tensors(const StateMap& state);

  // lr, betas, eps, weight_decay, the kernel in use and the group sizes.
  nlohmann::json hyperparameters() const;

  const AdamWOptions& options() const { return options_; }
  std::vector<std::string> decay_parameter_names() const;
  std::vector<std::string> no_decay_parameter_names() const;

  // "fused", "plain" or "mixed" (some parameters on each path).
  std::string implementation() const;

 private:
  struct Slot {
    std::string name;
    torch::Tensor param;
    torch::Tensor exp_avg;
    torch::Tensor exp_avg_sq;
    torch::Tensor step;  // 0-dim float32: on the parameter's device when fused, else on CPU (as torch)
    bool decay = true;
    bool fused = false;
  };

  void fused_update(const std::vector<Slot*>& group, double lr, double weight_decay,
                    const torch::Tensor& grad_scale, const torch::Tensor& found_inf);
  void plain_update(Slot& slot, double lr, double weight_decay, const torch::Tensor& grad_scale);
  std::vector<std::string> names_where(bool decay) const;

  AdamWOptions options_;
  std::vector<Slot> slots_;
};

}  // namespace enstack::train
