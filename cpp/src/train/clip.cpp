// clip_grad_norm as torch.nn.utils.clip_grad_norm_(foreach=True) computes it
// (see enstack/train/clip.h).
#include "enstack/train/clip.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <utility>

namespace enstack::train {
namespace {

using Groups = std::vector<std::pair<std::pair<torch::Device, torch::ScalarType>, std::vector<torch::Tensor>>>;

// torch's _group_tensors_by_device_and_dtype: first-seen order, so the norms are
// stacked (and summed) in the same order.
Groups group_by_device_and_dtype(const std::vector<torch::Tensor>& tensors) {
  Groups groups;
  for (const auto& t : tensors) {
    const auto key = std::make_pair(t.device(), t.scalar_type());
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == key; });
    if (it == groups.end()) it = groups.insert(groups.end(), {key, {}});
    it->second.push_back(t);
  }
  return groups;
}

}  // namespace

double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  for (const auto& p : params) {
    if (p.defined() && p.grad().defined()) grads.push_back(p.grad());
  }
  if (grads.empty()) return 0.0;
  const auto first_device = grads.front().device();
  const auto groups = group_by_device_and_dtype(grads);
  std::vector<torch::Tensor> norms;
  for (const auto& [key, group] : groups) {
    for (auto& n : at::_foreach_norm(group, 2.0)) norms.push_back(n.to(first_device));
  }
  const auto total_norm = at::linalg_vector_norm(at::stack(norms), 2.0);
  if (max_norm > 0) {
    // Python's `max_norm / (total_norm + 1e-6)` is Tensor.__rtruediv__: reciprocal() * max_norm.
    const auto clip_coef = (total_norm + 1e-6).reciprocal() * max_norm;
    const auto clamped = at::clamp(clip_coef, std::optional<at::Scalar>(), std::optional<at::Scalar>(1.0));
    for (const auto& [key, group] : groups) at::_foreach_mul_(group, clamped.to(key.first));
  }
  return total_norm.item<double>();
}

}  // namespace enstack::train
