// Trainer state and full-state checkpoints (see trainer_state.h).
#include "trainer_state.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/core/Generator.h>

#include <algorithm>
#include <cstdio>
#include <cmath>
#include <tuple>
#include <mutex>

#include "enstack/ckpt/checkpoint_dir.h"
#include "enstack/model/encoder_config.h"
#include "enstack/model/safetensors.h"
#include "enstack/model/weights.h"
#include "enstack/util/error.h"
#include "enstack/util/files.h"
#include "enstack/util/logging.h"

namespace enstack::train {
namespace fs = std::filesystem;

namespace {


nlohmann::json nan_to_null(double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); }

}  // namespace

std::string step_dir_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "%s%08lld", kStepPrefix, static_cast<long long>(step));
  return name;
}

nlohmann::json TrainerState::to_json() const {
  return {{"epoch", epoch}, {"batch_cursor", batch_cursor}, {"global_step", global_step},
          {"skipped_steps", skipped_steps}, {"epochs_completed", epochs_completed},
          {"epoch_complete", batch_cursor == 0 && epochs_completed == epoch}, {"finished", finished},
          {"early_stopped", early_stopped}, {"best_metric", nan_to_null(best_metric)}, {"best_step", best_step},
          {"patience_counter", patience_counter}, {"num_threads", num_threads},
          {"train_fingerprint", train_fingerprint}, {"eval_fingerprint", eval_fingerprint},
          {"config_fingerprint", config_fingerprint}, {"last_eval", last_eval}, {"best_eval", best_eval},
          {"swa_count", swa_count}, {"swa_eval", swa_eval}, {"imported_from", imported_from},
          {"microbatch_splits", microbatch_splits}, {"world_size", world_size}};
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
    s.swa_count = j.value("swa_count", int64_t{0});
    s.swa_eval = j.value("swa_eval", nlohmann::json(nullptr));
    s.imported_from = j.value("imported_from", nlohmann::json(nullptr));
    s.microbatch_splits = j.value("microbatch_splits", int64_t{1});
    if (s.microbatch_splits < 1) throw CheckpointError("trainer_state.json: microbatch_splits must be >= 1.");
    s.world_size = j.value("world_size", int64_t{1});
    if (s.world_size < 1) throw CheckpointError("trainer_state.json: world_size must be >= 1.");
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError(util::str_cat("trainer_state.json is incomplete (", e.what(), ")."));
  }
  return s;
}

ckpt::Snapshot snapshot_full_checkpoint(const model::EncoderClassifier& model, const AdamW& optimizer,
                                        const GradScaler& scaler, const SwaAverage* swa, const TrainerState& state,
                                        const nlohmann::json& options, const torch::Device& device,
                                        ckpt::BufferPool* pool,
                                        const std::map<std::string, torch::Tensor>& rank_rng) {
  std::map<std::string, torch::Tensor> extra = optimizer.state_tensors();
  for (const auto& [name, state] : rank_rng) extra.emplace(name, state);
  for (auto& [name, tensor] : scaler.state_tensors()) extra.emplace(kScalerPrefix + name, tensor);
  {
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    extra.emplace(kRngKey, generator.get_state());
  }
  if (device.is_cuda()) {
    auto generator = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(generator.mutex());
    extra.emplace(kCudaRngKey, generator.get_state());
  }
  ckpt::Snapshot snapshot(state.global_step, "full",
                          {{"epoch", state.epoch}, {"batch_cursor", state.batch_cursor}, {"finished", state.finished}});
  snapshot.add_json(kConfigFile, model.config().to_json());
  snapshot.add_tensors_deferred(kModelFile, model::state_of(model), pool);
  snapshot.add_tensors_deferred(kOptimizerFile, extra, pool);
  if (swa != nullptr && swa->count() > 0) snapshot.add_tensors_deferred(kSwaFile, swa->state_tensors(), pool);
  snapshot.add_json(kStateFile, {{"state", state.to_json()}, {"options", options}});
  return snapshot;
}

ckpt::Snapshot snapshot_model(const model::EncoderClassifier& model, int64_t step, bool fp16,
                              const nlohmann::json& extra, ckpt::BufferPool* pool) {
  auto weights = model::state_of(model);
  auto config = model.config().to_json();
  if (fp16) {
    for (auto& [name, tensor] : weights) {
      if (tensor.is_floating_point()) tensor = tensor.to(torch::kHalf);
    }
    config["torch_dtype"] = "float16";
  }
  ckpt::Snapshot snapshot(step, "model", extra);
  snapshot.add_json(kConfigFile, config);
  snapshot.add_tensors_deferred(kModelFile, weights, pool);
  return snapshot;
}

TrainerState load_full_checkpoint(const fs::path& dir, model::EncoderClassifier& model, AdamW& optimizer,
                                  GradScaler& scaler, SwaAverage* swa, const torch::Device& device, int rank) {
  ckpt::verify(dir);
  model::SafetensorsReader weights(dir / kModelFile);
  model::StateMap state;
  for (const auto& name : weights.names()) state.emplace(name, weights.tensor(name, torch::kFloat));
  model::load_state(model, state);

  model::SafetensorsReader extra(dir / kOptimizerFile);
  std::map<std::string, torch::Tensor> optimizer_state, scaler_state;
  torch::Tensor rng, cuda_rng;
  const std::string own_rng = util::str_cat(kRngKey, kRankSuffix, rank);
  const std::string own_cuda_rng = util::str_cat(kCudaRngKey, kRankSuffix, rank);
  bool own = false;
  for (const auto& name : extra.names()) {
    if (name == kRngKey) {
      if (!own) rng = extra.tensor(name);
    } else if (name == kCudaRngKey) {
      if (!own) cuda_rng = extra.tensor(name);
    } else if (rank > 0 && name == own_rng) {  // this rank's own stream, saved by the same number of ranks
      rng = extra.tensor(name);
      own = true;
    } else if (rank > 0 && name == own_cuda_rng) {
      cuda_rng = extra.tensor(name);
    } else if (name.rfind(util::str_cat(kRngKey, kRankSuffix), 0) == 0 ||
               name.rfind(util::str_cat(kCudaRngKey, kRankSuffix), 0) == 0) {
      // another rank's
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
  if (device.is_cuda()) {
    if (cuda_rng.defined()) {
      auto generator = at::globalContext().defaultGenerator(device);
      std::lock_guard<std::mutex> lock(generator.mutex());
      generator.set_state(cuda_rng);
    } else {
      ENSTACK_LOG_WARN(dir.string(), " holds no CUDA RNG state (it was saved on another device); dropout after "
                       "the resume will differ from an uninterrupted run.");
    }
  }
  auto j = nlohmann::json::parse(util::read_file<CheckpointError>(dir / kStateFile), nullptr, false);
  ENSTACK_CHECK(!j.is_discarded() && j.contains("state"), CheckpointError, dir.string(),
                "/trainer_state.json is not valid.");
  TrainerState saved = TrainerState::from_json(j["state"]);
  if (swa != nullptr && saved.swa_count > 0) {
    ENSTACK_CHECK(fs::exists(dir / kSwaFile), CheckpointError, dir.string(), " records ", saved.swa_count,
                  " SWA updates but has no ", kSwaFile, "; it is damaged, use an older checkpoint.");
    model::SafetensorsReader average(dir / kSwaFile);
    std::map<std::string, torch::Tensor> tensors;
    for (const auto& name : average.names()) tensors.emplace(name, average.tensor(name, torch::kFloat).to(device));
    swa->load_state_tensors(tensors, saved.swa_count);
  }
  return saved;
}

ckpt::Manifest verify_checkpoint(const fs::path& dir) {
  ckpt::Manifest manifest = ckpt::verify(dir);
  auto bad = [&](const std::string& what) {
    return CheckpointError(util::str_cat("checkpoint ", dir.string(), " ", what,
                                         "; it is damaged or was not written by enstack. Use another checkpoint."));
  };
  std::vector<const char*> required;
  if (manifest.kind == "full") {
    required = {kConfigFile, kModelFile, kOptimizerFile, kStateFile};
  } else if (manifest.kind == "model") {
    required = {kConfigFile, kModelFile};
  } else {
    throw bad("is of the unknown kind '" + manifest.kind + "' (enstack writes full and model)");
  }
  for (const char* name : required) {
    const bool listed = std::any_of(manifest.files.begin(), manifest.files.end(),
                                    [&](const ckpt::FileEntry& f) { return f.name == name; });
    if (!listed) throw bad(util::str_cat("has no ", name, " in its manifest, which every ", manifest.kind, " checkpoint has"));
  }
  if (manifest.kind == "full") {
    auto j = nlohmann::json::parse(util::read_file<CheckpointError>(dir / kStateFile), nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("state")) throw bad(util::str_cat("has an unreadable ", kStateFile));
    try {
      TrainerState::from_json(j["state"]);
    } catch (const CheckpointError& e) {
      throw bad(e.what());
    }
  }
  return manifest;
}

std::optional<fs::path> find_resume_checkpoint(const std::vector<fs::path>& roots) {
  // step-* and recovery/ compete by manifest step; on a tie the earlier root (local) wins.
  std::vector<std::tuple<int64_t, std::size_t, fs::path>> candidates;
  for (std::size_t r = 0; r < roots.size(); ++r) {
    for (auto& [step, path] : ckpt::list_by_step(roots[r], kStepPrefix)) candidates.emplace_back(step, r, path);
    for (auto& [step, path] : ckpt::list_by_step(roots[r], kRecoveryDir)) candidates.emplace_back(step, r, path);
  }
  std::sort(candidates.begin(), candidates.end(), [](const auto& a, const auto& b) {
    if (std::get<0>(a) != std::get<0>(b)) return std::get<0>(a) > std::get<0>(b);
    if (std::get<1>(a) != std::get<1>(b)) return std::get<1>(a) < std::get<1>(b);
    return std::get<2>(a) > std::get<2>(b);  // recovery before step-* of the same step: a fixed order
  });
  std::vector<std::string> rejected;
  for (const auto& [step, root, path] : candidates) {
    try {
      const auto manifest = verify_checkpoint(path);
      if (manifest.kind == "full") return path;
      rejected.push_back(util::str_cat(path.string(), ": a ", manifest.kind, " checkpoint, not a full one"));
    } catch (const CheckpointError& e) {
      ENSTACK_LOG_WARN("skipping checkpoint ", path.string(), " (step ", step, "): ", e.what());
      rejected.push_back(util::str_cat(path.string(), ": ", e.what()));
    }
  }
  // Directories named as checkpoints whose manifest could not even be read.
  for (const auto& root : roots) {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(root, ec)) {
      const std::string name = entry.path().filename().string();
      if (!entry.is_directory() || (name.rfind(kStepPrefix, 0) != 0 && name != kRecoveryDir)) continue;
      const bool listed = std::any_of(candidates.begin(), candidates.end(),
                                      [&](const auto& c) { return std::get<2>(c) == entry.path(); });
      if (listed) continue;
      try {
        ckpt::verify(entry.path());
      } catch (const std::exception& e) {
        rejected.push_back(util::str_cat(entry.path().string(), ": ", e.what()));
      }
    }
  }
  if (rejected.empty()) return std::nullopt;
  std::string list;
  for (const auto& r : rejected) list += "\n  - " + r;
  throw CheckpointError(util::str_cat(
      "cannot resume: checkpoints exist but none of them is valid:", list,
      "\nNothing was changed. To start over knowingly, train with resume=False (`enstack train --no-resume`), "
      "which moves these checkpoints aside; or repair or restore one of them (e.g. from run.mirror_dir)."));
}

fs::path write_full_checkpoint(const fs::path& checkpoints_root, const nlohmann::json& model_config,
                               const std::map<std::string, torch::Tensor>& weights,
                               const std::map<std::string, torch::Tensor>& optimizer_entries,
                               const TrainerState& state, const nlohmann::json& options,
                               const nlohmann::json& manifest_extra) {
  // The parts must be what a resume loads: a model of this config takes the weights, and
  // an AdamW over its parameters takes the moments (both throw, listing what differs).
  model::EncoderClassifier model(model::EncoderConfig::from_json(model_config));
  try {
    model::load_state(model, weights);
  } catch (const std::exception& e) {
    throw CheckpointError(util::str_cat("the weights do not fit the model of config.json: ", e.what()));
  }
  std::map<std::string, torch::Tensor> moments;
  bool has_rng = false;
  for (const auto& [name, tensor] : optimizer_entries) {
    if (name == kRngKey) {
      has_rng = true;
    } else if (name.rfind(kRngKey, 0) != 0 && name.rfind(kCudaRngKey, 0) != 0 &&
               name.rfind(kScalerPrefix, 0) != 0) {
      moments.emplace(name, tensor);
    }
  }
  ENSTACK_CHECK(has_rng, CheckpointError, "a full checkpoint needs the CPU RNG state (", kRngKey, ")");
  std::vector<std::pair<std::string, torch::Tensor>> parameters;
  for (const auto& item : model.named_parameters(true)) parameters.emplace_back(item.key(), item.value());
  AdamW(parameters).load_state_tensors(moments);
  // Round-trip the state through its schema, so the file holds every key, typed.
  const TrainerState typed = TrainerState::from_json(state.to_json());

  const fs::path dir = checkpoints_root / step_dir_name(typed.global_step);
  ckpt::CheckpointWriter writer(dir);
  writer.add_json(kConfigFile, model_config);
  writer.add_tensors(kModelFile, weights);
  writer.add_tensors(kOptimizerFile, optimizer_entries);
  writer.add_json(kStateFile, {{"state", typed.to_json()}, {"options", options}});
  nlohmann::json extra = {{"epoch", typed.epoch}, {"batch_cursor", typed.batch_cursor}, {"finished", typed.finished}};
  if (manifest_extra.is_object()) extra.update(manifest_extra);
  const fs::path out = writer.commit(typed.global_step, "full", extra);
  verify_checkpoint(out);
  return out;
}

}  // namespace enstack::train
