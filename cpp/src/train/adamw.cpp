// AdamW with transformers' decay groups (see enstack/train/adamw.h): the fused
// ATen kernel where it exists, torch.optim.AdamW's single-tensor math elsewhere.
#include "enstack/train/adamw.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <set>
#include <sstream>

#include "enstack/util/error.h"

namespace enstack::train {
namespace {

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// True when `word` occurs in `s` preceded by `before` (or at the start, if
// allowed) and followed by '.' or the end of the name.
bool has_component(const std::string& s, const std::string& word, bool at_start_or_after_dot) {
  for (size_t p = s.find(word); p != std::string::npos; p = s.find(word, p + 1)) {
    const size_t end = p + word.size();
    const bool left_ok = !at_start_or_after_dot || p == 0 || s[p - 1] == '.';
    const bool right_ok = end == s.size() || s[end] == '.';
    if (left_ok && right_ok) return true;
  }
  return false;
}

bool fused_kernel_supports(const torch::Tensor& p) {
  const bool device_ok = p.device().is_cpu() || p.device().is_cuda();
  const auto t = p.scalar_type();
  const bool dtype_ok = t == torch::kFloat || t == torch::kDouble || t == torch::kHalf || t == torch::kBFloat16;
  return device_ok && dtype_ok && !p.is_sparse();
}

template <typename T>
std::string list_some(const std::vector<T>& items, size_t limit = 10) {
  std::ostringstream out;
  for (size_t i = 0; i < items.size() && i < limit; ++i) out << (i ? ", " : "") << items[i];
  if (items.size() > limit) out << ", ... (" << items.size() << " in all)";
  return out.str();
}

}  // namespace

void AdamWOptions::validate() const {
  ENSTACK_CHECK(std::isfinite(lr) && lr >= 0, ConfigError, "AdamW: learning rate must be >= 0, got ", lr, ".");
  ENSTACK_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, ConfigError,
                "AdamW: betas must lie in [0, 1), got (", beta1, ", ", beta2, ").");
  ENSTACK_CHECK(std::isfinite(eps) && eps >= 0, ConfigError, "AdamW: eps must be >= 0, got ", eps, ".");
  ENSTACK_CHECK(std::isfinite(weight_decay) && weight_decay >= 0, ConfigError,
                "AdamW: weight_decay must be >= 0, got ", weight_decay, ".");
}

std::string AdamWOptions::to_string() const {
  std::ostringstream out;
  out << "AdamWOptions(lr=" << lr << ", betas=(" << beta1 << ", " << beta2 << "), eps=" << eps
      << ", weight_decay=" << weight_decay << ", fused=" << (fused ? "True" : "False") << ")";
  return out.str();
}

bool applies_weight_decay(const std::string& name) {
  std::string s = name;
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  if (contains(s, "bias") || contains(s, "layernorm") || contains(s, "rmsnorm")) return false;
  return !has_component(s, "norm", true) && !has_component(s, "_norm", false);
}

AdamW::AdamW(NamedParameters params, AdamWOptions options) : options_(options) {
  options_.validate();
  std::set<std::string> seen;
  torch::NoGradGuard no_grad;
  for (auto& [name, param] : params) {
    ENSTACK_CHECK(param.defined(), ConfigError, "AdamW: parameter '", name, "' is undefined.");
    ENSTACK_CHECK(seen.insert(name).second, ConfigError, "AdamW: parameter name '", name, "' appears twice.");
    ENSTACK_CHECK(param.is_floating_point(), ConfigError, "AdamW: parameter '", name, "' has non-floating dtype ",
                  param.scalar_type(), ".");
    if (!param.requires_grad()) continue;
    Slot slot;
    slot.name = name;
    slot.param = param;
    slot.decay = applies_weight_decay(name);
    slot.fused = options_.fused && fused_kernel_supports(param);
    slot.exp_avg = torch::zeros_like(param, at::MemoryFormat::Preserve);
    slot.exp_avg_sq = torch::zeros_like(param, at::MemoryFormat::Preserve);
    const auto step_device = slot.fused ? param.device() : torch::Device(torch::kCPU);
    slot.step = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat).device(step_device));
    slots_.push_back(std::move(slot));
  }
}

void AdamW::step(double lr, const torch::Tensor& grad_scale, const torch::Tensor& found_inf) {
  ENSTACK_CHECK(std::isfinite(lr) && lr >= 0, ConfigError, "AdamW: learning rate must be >= 0, got ", lr, ".");
  torch::NoGradGuard no_grad;
  int plain_skip = -1;  // computed (with a device sync) only if a plain-path parameter has a grad
  for (const bool decay : {true, false}) {
    const double weight_decay = decay ? options_.weight_decay : 0.0;
    // Fused groups keyed like torch's _group_tensors_by_device_and_dtype, in first-seen order.
    std::vector<std::pair<std::pair<torch::Device, torch::ScalarType>, std::vector<Slot*>>> groups;
    for (auto& slot : slots_) {
      if (slot.decay != decay || !slot.param.grad().defined()) continue;
      if (!slot.fused) {
        if (plain_skip < 0) plain_skip = found_inf.defined() && found_inf.item<double>() != 0.0;
        if (!plain_skip) plain_update(slot, lr, weight_decay, grad_scale);
        continue;
      }
      const auto key = std::make_pair(slot.param.device(), slot.param.scalar_type());
      auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == key; });
      if (it == groups.end()) it = groups.insert(groups.end(), {key, {}});
      it->second.push_back(&slot);
    }
    for (const auto& [key, group] : groups) fused_update(group, lr, weight_decay, grad_scale, found_inf);
  }
}

// torch.optim.adam._fused_adam for one device/dtype group.
void AdamW::fused_update(const std::vector<Slot*>& group, double lr, double weight_decay,
                         const torch::Tensor& grad_scale, const torch::Tensor& found_inf) {
  std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps;
  for (Slot* s : group) {
    params.push_back(s->param);
    grads.push_back(s->param.grad());
    exp_avgs.push_back(s->exp_avg);
    exp_avg_sqs.push_back(s->exp_avg_sq);
    steps.push_back(s->step);
  }
  const auto device = params.front().device();
  std::optional<torch::Tensor> scale, inf;
  if (grad_scale.defined()) scale = grad_scale.to(device);
  if (found_inf.defined()) inf = found_inf.to(device);
  at::_foreach_add_(steps, 1);
  at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, /*max_exp_avg_sqs=*/{}, steps, lr, options_.beta1,
                    options_.beta2, weight_decay, options_.eps, /*amsgrad=*/false, /*maximize=*/false, scale, inf);
  if (inf) at::_foreach_sub_(steps, std::vector<torch::Tensor>(steps.size(), *inf));
}

// torch.optim.adam._single_tensor_adam (capturable=False, decoupled weight
// decay), operation for operation, so the result is bitwise torch's.
void AdamW::plain_update(Slot& slot, double lr, double weight_decay, const torch::Tensor& grad_scale) {
  auto& param = slot.param;
  torch::Tensor grad = param.grad();
  if (grad_scale.defined()) grad = grad / grad_scale.to(grad.device());
  slot.step.add_(1);
  if (weight_decay != 0) param.mul_(1 - lr * weight_decay);
  slot.exp_avg.lerp_(grad, 1 - options_.beta1);
  slot.exp_avg_sq.mul_(options_.beta2).addcmul_(grad, grad, 1 - options_.beta2);
  const double step = slot.step.item<double>();
  const double bias_correction1 = 1 - std::pow(options_.beta1, step);
  const double bias_correction2 = 1 - std::pow(options_.beta2, step);
  const double step_size = lr / bias_correction1;
  const double bias_correction2_sqrt = std::pow(bias_correction2, 0.5);  // Python's `** 0.5`
  auto denom = (slot.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(options_.eps);
  param.addcdiv_(slot.exp_avg, denom, -step_size);
}

void AdamW::zero_grad() {
  for (auto& slot : slots_) slot.param.mutable_grad() = torch::Tensor();
}

AdamW::StateMap AdamW::state_tensors() const {
  StateMap state;
  for (const auto& slot : slots_) {
    state[slot.name + ".exp_avg"] = slot.exp_avg;
    state[slot.name + ".exp_avg_sq"] = slot.exp_avg_sq;
    state[slot.name + ".step"] = slot.step;
  }
  return state;
}

void AdamW::load_state_tensors(const StateMap& state) {
  std::vector<std::string> missing, misshaped, unexpected;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> copies;  // (destination, source)
  std::set<std::string> known;
  for (const auto& slot : slots_) {
    for (const auto& [suffix, target] : {std::pair<std::string, torch::Tensor>{".exp_avg", slot.exp_avg},
                                         {".exp_avg_sq", slot.exp_avg_sq},
                                         {".step", slot.step}}) {
      const std::string key = slot.name + suffix;
      known.insert(key);
      const auto it = state.find(key);
      if (it == state.end() || !it->second.defined()) {
        missing.push_back(key);
      } else if (it->second.sizes() != target.sizes()) {
        std::ostringstream why;
        why << key << " (checkpoint " << it->second.sizes() << ", expected " << target.sizes() << ")";
        misshaped.push_back(why.str());
      } else {
        copies.emplace_back(target, it->second);
      }
    }
  }
  for (const auto& [key, value] : state) {
    if (!known.count(key)) unexpected.push_back(key);
  }
  ENSTACK_CHECK(missing.empty() && misshaped.empty() && unexpected.empty(), CheckpointError,
                "the optimizer state does not fit this model's parameters. Missing: [", list_some(missing),
                "]; mis-shaped: [", list_some(misshaped), "]; unexpected: [", list_some(unexpected),
                "]. Resume from a checkpoint of the same model and configuration, or start a new run.");
  torch::NoGradGuard no_grad;
  for (auto& [target, source] : copies) target.copy_(source);
}

nlohmann::json AdamW::hyperparameters() const {
  return {{"optimizer", "adamw"},
          {"lr", options_.lr},
          {"betas", {options_.beta1, options_.beta2}},
          {"eps", options_.eps},
          {"weight_decay", options_.weight_decay},
          {"implementation", implementation()},
          {"num_decay_parameters", names_where(true).size()},
          {"num_no_decay_parameters", names_where(false).size()}};
}

std::vector<std::string> AdamW::names_where(bool decay) const {
  std::vector<std::string> names;
  for (const auto& slot : slots_) {
    if (slot.decay == decay) names.push_back(slot.name);
  }
  return names;
}

std::vector<std::string> AdamW::decay_parameter_names() const { return names_where(true); }
std::vector<std::string> AdamW::no_decay_parameter_names() const { return names_where(false); }

std::string AdamW::implementation() const {
  if (slots_.empty()) return options_.fused ? "fused" : "plain";
  const auto fused = std::count_if(slots_.begin(), slots_.end(), [](const Slot& s) { return s.fused; });
  if (fused == static_cast<long>(slots_.size())) return "fused";
  return fused == 0 ? "plain" : "mixed";
}

}  // namespace enstack::train
