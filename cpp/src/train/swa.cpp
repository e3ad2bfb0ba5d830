// SWA running average (see enstack/train/swa.h).
#include "enstack/train/swa.h"

#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_div.h>
#include <ATen/ops/_foreach_lerp.h>
#include <ATen/ops/_foreach_sub.h>

#include <sstream>

#include "enstack/util/error.h"

namespace enstack::train {

SwaAverage::SwaAverage(const std::vector<std::pair<std::string, torch::Tensor>>& params) {
  torch::NoGradGuard no_grad;
  for (const auto& [name, p] : params) {
    if (!p.is_floating_point()) continue;
    names_.push_back(name);
    live_.push_back(p);
    average_.push_back(torch::zeros_like(p, p.options().dtype(torch::kFloat)));
  }
}

void SwaAverage::update() {
  torch::NoGradGuard no_grad;
  if (live_.empty()) {
    ++count_;
    return;
  }
  if (count_ == 0) {
    for (std::size_t i = 0; i < live_.size(); ++i) average_[i].copy_(live_[i]);
  } else if (average_.front().is_cuda()) {
    // As AveragedModel on devices with foreach kernels: one fused lerp by 1 / (n + 1).
    at::_foreach_lerp_(average_, live_, 1.0 / static_cast<double>(count_ + 1));
  } else {
    // As AveragedModel on CPU: avg + (p - avg) / (n + 1), rounded in that order (a lerp
    // rounds differently, by up to ~1e-6 relative), still as foreach ops over all tensors.
    auto delta = at::_foreach_sub(live_, average_);
    at::_foreach_div_(delta, at::Scalar(static_cast<double>(count_ + 1)));
    at::_foreach_add_(average_, delta);
  }
  ++count_;
}

std::map<std::string, torch::Tensor> SwaAverage::state_tensors() const {
  std::map<std::string, torch::Tensor> out;
  for (std::size_t i = 0; i < names_.size(); ++i) out.emplace(names_[i], average_[i]);
  return out;
}

void SwaAverage::load_state_tensors(const std::map<std::string, torch::Tensor>& state, int64_t count) {
  torch::NoGradGuard no_grad;
  std::ostringstream problems;
  for (std::size_t i = 0; i < names_.size(); ++i) {
    const auto it = state.find(names_[i]);
    if (it == state.end()) {
      problems << " missing " << names_[i] << ";";
    } else if (it->second.sizes() != average_[i].sizes()) {
      problems << " " << names_[i] << " has shape " << it->second.sizes() << ", expected " << average_[i].sizes() << ";";
    }
  }
  ENSTACK_CHECK(problems.str().empty() && state.size() == names_.size(), CheckpointError,
                "the SWA average in the checkpoint does not match the model:", problems.str(),
                " (", state.size(), " tensors for ", names_.size(), " parameters). Resume with the model it was "
                "saved with.");
  for (std::size_t i = 0; i < names_.size(); ++i) average_[i].copy_(state.at(names_[i]));
  count_ = count;
}

void SwaAverage::swap_with_parameters() {
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < live_.size(); ++i) {
    auto held = live_[i].clone();
    live_[i].copy_(average_[i]);
    average_[i].copy_(held);
  }
}

}  // namespace enstack::train
