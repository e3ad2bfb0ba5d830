// Trainer state and full-state checkpoints (see trainer_state.h).
#include "trainer_state.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Generator.h>

#include <cmath>
#include <mutex>

#include "enstack/ckpt/checkpoint_dir.h"
#include "enstack/model/safetensors.h"
#include "enstack/model/weights.h"
#include "enstack/util/error.h"
#include "enstack/util/files.h"
#include "enstack/util/logging.h"

namespace enstack::train {
namespace fs = std::filesystem;

namespace {

constexpr const char* kRngKey = "rng.cpu";
constexpr const char* kScalerPrefix = "scaler.";

nlohmann::json nan_to_null(double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); }

}  // namespace

nlohmann::json TrainerState::to_json() const {
  return {{"epoch", epoch}, {"batch_cursor", batch_cursor}, {"global_step", global_step},
          {"skipped_steps", skipped_steps}, {"epochs_completed", epochs_completed},
          {"epoch_complete", batch_cursor == 0 && epochs_completed == epoch}, {"finished", finished},
          {"early_stopped", early_stopped}, {"best_metric", nan_to_null(best_metric)}, {"best_step", best_step},
          {"patience_counter", patience_counter}, {"num_threads", num_threads},
          {"train_fingerprint", train_fingerprint}, {"eval_fingerprint", eval_fingerprint},
          {"config_fingerprint", config_fingerprint}, {"last_eval", last_eval}, {"best_eval", best_eval}};
}

TrainerState TrainerState::from_json(const nlohmann::json& j) {
  TrainerState s;
  try {
    s.epoch = j.at("epoch");
    s.batch_cursor = j.at("batch_cursor");
    s.global_step = j.at("global_step");
    s.skipped_steps = j.at("skipped_steps");
    s.epochs_completed = j.at("epochs_completed");
    s.finished = j.at("finished");
    s.early_stopped = j.at("early_stopped");
    s.best_metric = j.at("best_metric").is_null() ? std::nan("") : j.at("best_metric").get<double>();
    s.best_step = j.at("best_step");
    s.patience_counter = j.at("patience_counter");
    s.num_threads = j.at("num_threads");
    s.train_fingerprint = j.at("train_fingerprint");
    s.eval_fingerprint = j.at("eval_fingerprint");
    s.config_fingerprint = j.at("config_fingerprint");
    s.last_eval = j.value("last_eval", nlohmann::json(nullptr));
    s.best_eval = j.value("best_eval", nlohmann::json(nullptr));
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError(util::str_cat("trainer_state.json is incomplete (", e.what(), ")."));
  }
  return s;
}

void save_full_checkpoint(const fs::path& dir, const model::EncoderClassifier& model, const AdamW& optimizer,
                          const GradScaler& scaler, const TrainerState& state, const nlohmann::json& options) {
  std::map<std::string, torch::Tensor> extra = optimizer.state_tensors();
  for (auto& [name, tensor] : scaler.state_tensors()) extra.emplace(kScalerPrefix + name, tensor);
  {
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    extra.emplace(kRngKey, generator.get_state());
  }
  ckpt::CheckpointWriter writer(dir);
  writer.add_json("config.json", model.config().to_json());
  writer.add_tensors("model.safetensors", model::state_of(model));
  writer.add_tensors("optimizer.safetensors", extra);
  writer.add_json("trainer_state.json", {{"state", state.to_json()}, {"options", options}});
  writer.commit(state.global_step, "full",
                {{"epoch", state.epoch}, {"batch_cursor", state.batch_cursor}, {"finished", state.finished}});
}

TrainerState load_full_checkpoint(const fs::path& dir, model::EncoderClassifier& model, AdamW& optimizer,
                                  GradScaler& scaler) {
  ckpt::verify(dir);
  model::SafetensorsReader weights(dir / "model.safetensors");
  model::StateMap state;
  for (const auto& name : weights.names()) state.emplace(name, weights.tensor(name, torch::kFloat));
  model::load_state(model, state);

  model::SafetensorsReader extra(dir / "optimizer.safetensors");
  std::map<std::string, torch::Tensor> optimizer_state, scaler_state;
  torch::Tensor rng;
  for (const auto& name : extra.names()) {
    if (name == kRngKey) {
      rng = extra.tensor(name);
    } else if (name.rfind(kScalerPrefix, 0) == 0) {
      scaler_state.emplace(name.substr(std::string(kScalerPrefix).size()), extra.tensor(name));
    } else {
      optimizer_state.emplace(name, extra.tensor(name));
    }
  }
  optimizer.load_state_tensors(optimizer_state);
  scaler.load_state_tensors(scaler_state);
  ENSTACK_CHECK(rng.defined(), CheckpointError, dir.string(), " lacks the RNG state; it cannot resume exactly.");
  {
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(rng);
  }
  auto j = nlohmann::json::parse(util::read_file<CheckpointError>(dir / "trainer_state.json"), nullptr, false);
  ENSTACK_CHECK(!j.is_discarded() && j.contains("state"), CheckpointError, dir.string(),
                "/trainer_state.json is not valid.");
  return TrainerState::from_json(j["state"]);
}

std::optional<fs::path> find_resume_checkpoint(const fs::path& checkpoints) {
  auto latest = ckpt::latest_valid({checkpoints}, "step-");
  const fs::path recovery = checkpoints / "recovery";
  if (fs::exists(recovery)) {
    try {
      const auto manifest = ckpt::verify(recovery);
      const int64_t latest_step = latest ? ckpt::verify(*latest).step : -1;
      if (manifest.kind == "full" && manifest.step >= latest_step) return recovery;
    } catch (const CheckpointError& e) {
      ENSTACK_LOG_WARN("ignoring the recovery checkpoint: ", e.what());
    }
  }
  return latest;
}

}  // namespace enstack::train
