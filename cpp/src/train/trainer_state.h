// The trainer's resumable position and bookkeeping (trainer_state.json), and
// reading/writing full-state checkpoints. Private to the trainer.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <filesystem>
#include <limits>
#include <optional>
#include <string>

#include "enstack/ckpt/snapshot.h"
#include "enstack/model/encoder_classifier.h"
#include "enstack/train/adamw.h"
#include "enstack/train/grad_scaler.h"
#include "enstack/train/swa.h"
#include "enstack/train/trainer.h"

namespace enstack::train {

// The files of a checkpoint directory (Hugging Face names where they exist).
inline constexpr const char* kConfigFile = "config.json";
inline constexpr const char* kModelFile = "model.safetensors";
inline constexpr const char* kOptimizerFile = "optimizer.safetensors";
inline constexpr const char* kStateFile = "trainer_state.json";

struct TrainerState {
  int64_t epoch = 0;          // the epoch in progress (0-based)
  int64_t batch_cursor = 0;   // the next batch of that epoch to run
  int64_t global_step = 0;    // optimizer steps applied
  int64_t skipped_steps = 0;  // windows whose fp16 step was skipped
  int64_t epochs_completed = 0;
  bool finished = false;
  bool early_stopped = false;
  double best_metric = std::numeric_limits<double>::quiet_NaN();
  int64_t best_step = -1;
  int64_t patience_counter = 0;
  int num_threads = 0;
  std::string train_fingerprint, eval_fingerprint, config_fingerprint;
  nlohmann::json last_eval = nullptr, best_eval = nullptr;
  int64_t swa_count = 0;
  nlohmann::json swa_eval = nullptr;
  nlohmann::json imported_from = nullptr;  // set by `enstack ckpt import`; carried along unchanged
  // Each planned batch runs as this many micro-batches (doubled on each out-of-memory
  // with train.auto_microbatch); the plan, the windows and the update are unchanged.
  int64_t microbatch_splits = 1;

  nlohmann::json to_json() const;
  static TrainerState from_json(const nlohmann::json& j);
};

// The full training state as a snapshot for ckpt::AsyncSaver. Small state is copied
// at once; CPU weights, moments and the SWA average are copied by the saver's copy
// thread (deferred), so the caller must saver.wait_for_snapshots() before the next
// optimizer step or SWA update. `swa` may be null.
ckpt::Snapshot snapshot_full_checkpoint(const model::EncoderClassifier& model, const AdamW& optimizer,
                                        const GradScaler& scaler, const SwaAverage* swa, const TrainerState& state,
                                        const nlohmann::json& options, const torch::Device& device,
                                        ckpt::BufferPool* pool);

// A model-only snapshot (best/, swa/): config.json + model.safetensors, in fp16 when
// asked; the weights are copied deferred, as above.
ckpt::Snapshot snapshot_model(const model::EncoderClassifier& model, int64_t step, bool fp16,
                              const nlohmann::json& extra, ckpt::BufferPool* pool);

// Restores model, optimizer, scaler, SWA average and RNG states (CPU, and CUDA when
// training there) from `dir` and returns its state.
TrainerState load_full_checkpoint(const std::filesystem::path& dir, model::EncoderClassifier& model,
                                  AdamW& optimizer, GradScaler& scaler, SwaAverage* swa,
                                  const torch::Device& device);

// The newest valid full checkpoint among the roots (the run's checkpoints/ first,
// then its mirror): step-* and recovery directories, by manifest step. nullopt when
// there are none; CheckpointError listing each one and why when none is valid.
std::optional<std::filesystem::path> find_resume_checkpoint(const std::vector<std::filesystem::path>& roots);

}  // namespace enstack::train
