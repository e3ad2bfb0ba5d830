// torch.amp.GradScaler in C++ (see enstack/train/grad_scaler.h).
#include "enstack/train/grad_scaler.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <utility>

#include "enstack/util/error.h"

namespace enstack::train {
namespace {

using DeviceGroups = std::vector<std::pair<torch::Device, std::vector<std::vector<torch::Tensor>>>>;

// Grads by device, then by dtype, in first-seen order (torch's unscale_ grouping).
DeviceGroups group_grads(const std::vector<torch::Tensor>& grads) {
  DeviceGroups devices;
  std::vector<std::vector<torch::ScalarType>> dtypes;  // parallel to `devices`
  for (const auto& g : grads) {
    if (!g.defined()) continue;
    ENSTACK_CHECK(g.scalar_type() != torch::kHalf, ConfigError,
                  "GradScaler: refusing to unscale fp16 gradients (as torch does). Keep the parameters in "
                  "fp32 and use autocast for fp16 compute.");
    ENSTACK_CHECK(!g.is_sparse(), ConfigError, "GradScaler: sparse gradients are not supported.");
    auto d = std::find_if(devices.begin(), devices.end(), [&](const auto& e) { return e.first == g.device(); });
    if (d == devices.end()) {
      devices.emplace_back(g.device(), std::vector<std::vector<torch::Tensor>>{});
      dtypes.emplace_back();
      d = devices.end() - 1;
    }
    auto& types = dtypes[d - devices.begin()];
    auto t = std::find(types.begin(), types.end(), g.scalar_type());
    if (t == types.end()) {
      types.push_back(g.scalar_type());
      d->second.emplace_back();
      t = types.end() - 1;
    }
    d->second[t - types.begin()].push_back(g);
  }
  return devices;
}

torch::Tensor scalar_tensor(double value, torch::ScalarType dtype) {
  return torch::full({}, value, torch::TensorOptions().dtype(dtype));
}

const torch::Tensor& state_entry(const GradScaler::StateMap& state, const std::string& key) {
  const auto it = state.find(key);
  ENSTACK_CHECK(it != state.end() && it->second.defined() && it->second.numel() == 1, CheckpointError,
                "the grad-scaler state has no one-element tensor '", key,
                "' (was the checkpoint written with fp16 off?). Resume with the precision the run was started "
                "with, or start a new run.");
  return it->second;
}

}  // namespace

void GradScalerOptions::validate() const {
  ENSTACK_CHECK(std::isfinite(init_scale) && init_scale > 0, ConfigError,
                "GradScaler: init_scale must be a positive number, got ", init_scale, ".");
  ENSTACK_CHECK(std::isfinite(growth_factor) && growth_factor > 1, ConfigError,
                "GradScaler: growth_factor must be > 1, got ", growth_factor, ".");
  ENSTACK_CHECK(backoff_factor > 0 && backoff_factor < 1, ConfigError,
                "GradScaler: backoff_factor must lie in (0, 1), got ", backoff_factor, ".");
  ENSTACK_CHECK(growth_interval >= 1, ConfigError, "GradScaler: growth_interval must be >= 1, got ",
                growth_interval, ".");
}

std::string GradScalerOptions::to_string() const {
  std::ostringstream out;
  out << "GradScalerOptions(init_scale=" << init_scale << ", growth_factor=" << growth_factor
      << ", backoff_factor=" << backoff_factor << ", growth_interval=" << growth_interval
      << ", enabled=" << (enabled ? "True" : "False") << ")";
  return out.str();
}

GradScaler::GradScaler(GradScalerOptions options) : options_(options) {
  if (options_.enabled) options_.validate();
  scale_ = scalar_tensor(options_.enabled ? options_.init_scale : 1.0, torch::kFloat);
  growth_tracker_ = scalar_tensor(0, torch::kInt);
  found_inf_ = scalar_tensor(0, torch::kFloat);
}

torch::Tensor GradScaler::scale(const torch::Tensor& loss) {
  if (!options_.enabled) return loss;
  if (!placed_) {
    scale_ = scale_.to(loss.device());
    growth_tracker_ = growth_tracker_.to(loss.device());
    found_inf_ = found_inf_.to(loss.device());
    placed_ = true;
  }
  return loss * scale_.to(loss.device());
}

void GradScaler::unscale(const std::vector<torch::Tensor>& grads) {
  if (!options_.enabled) return;
  ENSTACK_ASSERT(!unscaled_, "GradScaler::unscale() was called twice without update() in between.");
  torch::NoGradGuard no_grad;
  auto groups = group_grads(grads);  // may throw: nothing changed yet
  const auto inv_scale = scale_.to(torch::kDouble).reciprocal().to(torch::kFloat);
  found_inf_ = torch::zeros({}, scale_.options().dtype(torch::kFloat));
  for (auto& [device, per_dtype] : groups) {
    const bool home = device == scale_.device();
    auto device_found_inf = home ? found_inf_ : found_inf_.to(device, /*non_blocking=*/false, /*copy=*/true);
    const auto device_inv_scale = inv_scale.to(device);
    for (const auto& group : per_dtype) {
      at::_amp_foreach_non_finite_check_and_unscale_(group, device_found_inf, device_inv_scale);
    }
    if (!home) found_inf_.add_(device_found_inf.to(scale_.device()));
  }
  unscaled_ = true;
}

bool GradScaler::step_was_skipped() const {
  return options_.enabled && found_inf_.item<float>() != 0.0f;
}

void GradScaler::update() {
  if (!options_.enabled) return;
  ENSTACK_ASSERT(unscaled_, "GradScaler::update() was called without unscale() since the last update().");
  at::_amp_update_scale_(scale_, growth_tracker_, found_inf_, options_.growth_factor, options_.backoff_factor,
                         options_.growth_interval);
  unscaled_ = false;
}

double GradScaler::get_scale() const { return options_.enabled ? scale_.item<double>() : 1.0; }

int64_t GradScaler::growth_tracker() const { return options_.enabled ? growth_tracker_.item<int64_t>() : 0; }

GradScaler::StateMap GradScaler::state_tensors() const {
  if (!options_.enabled) return {};
  return {{"scale", scale_.to(torch::kCPU, /*non_blocking=*/false, /*copy=*/true)},
          {"growth_tracker", growth_tracker_.to(torch::kCPU, /*non_blocking=*/false, /*copy=*/true)}};
}

void GradScaler::load_state_tensors(const StateMap& state) {
  if (!options_.enabled) return;
  const double scale = state_entry(state, "scale").item<double>();
  const int64_t tracker = state_entry(state, "growth_tracker").item<int64_t>();
  load_state_json({{"scale", scale}, {"growth_tracker", tracker}});
}

nlohmann::json GradScaler::state_json() const {
  if (!options_.enabled) return {{"enabled", false}};
  return {{"enabled", true},
          {"scale", get_scale()},
          {"growth_tracker", growth_tracker()},
          {"growth_factor", options_.growth_factor},
          {"backoff_factor", options_.backoff_factor},
          {"growth_interval", options_.growth_interval}};
}

void GradScaler::load_state_json(const nlohmann::json& state) {
  if (!options_.enabled) return;
  const bool ok = state.is_object() && state.contains("scale") && state["scale"].is_number() &&
                  state.contains("growth_tracker") && state["growth_tracker"].is_number_integer();
  ENSTACK_CHECK(ok, CheckpointError, "the grad-scaler state needs a numeric 'scale' and an integer "
                "'growth_tracker' (was the checkpoint written with fp16 off?), got ", state.dump(),
                ". Resume with the precision the run was started with, or start a new run.");
  const double scale = state["scale"].get<double>();
  const int64_t tracker = state["growth_tracker"].get<int64_t>();
  ENSTACK_CHECK(std::isfinite(scale) && scale > 0 && tracker >= 0, CheckpointError,
                "the grad-scaler state is out of range (scale ", scale, ", growth_tracker ", tracker,
                "); the checkpoint is corrupted.");
  scale_.fill_(scale);
  growth_tracker_.fill_(tracker);
}

}  // namespace enstack::train
