// The trainer's checkpoint format: the names of a run's checkpoint directories and of
// the files and entries inside them, the typed trainer state (trainer_state.json), the
// choice of the checkpoint a resume starts from, and writing a full checkpoint from its
// parts (`enstack ckpt import`). The one definition of each: Python reads them through
// enstack._C.ckpt and never spells a file name or a state key itself.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace enstack::train {

// Files of a checkpoint directory (Hugging Face names where they exist). MANIFEST.json
// is ckpt::kManifestName.
inline constexpr const char* kConfigFile = "config.json";
inline constexpr const char* kModelFile = "model.safetensors";
inline constexpr const char* kOptimizerFile = "optimizer.safetensors";
inline constexpr const char* kStateFile = "trainer_state.json";
inline constexpr const char* kSwaFile = "swa.safetensors";
// Entries of optimizer.safetensors beside the AdamW moments (<param>.exp_avg,
// <param>.exp_avg_sq, <param>.step).
inline constexpr const char* kRngKey = "rng.cpu";
inline constexpr const char* kCudaRngKey = "rng.cuda";
inline constexpr const char* kScalerPrefix = "scaler.";
// Under torch.distributed, rank r > 0's generator states are saved too (rank 0's are
// rng.cpu / rng.cuda): rng.cpu.rank<r>, rng.cuda.rank<r>.
inline constexpr const char* kRankSuffix = ".rank";
// Directories under <output_dir>/checkpoints: step-NNNNNNNN (periodic and epoch-end
// full checkpoints), recovery (written on an interruption or error), best and swa
// (model-only).
inline constexpr const char* kStepPrefix = "step-";
inline constexpr const char* kRecoveryDir = "recovery";
inline constexpr const char* kBestDir = "best";
inline constexpr const char* kSwaDir = "swa";
inline constexpr const char* kCheckpointsDir = "checkpoints";

// "step-00000042".
std::string step_dir_name(int64_t step);

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
  // The number of data-parallel ranks that wrote the checkpoint (train.batch_size is the
  // global batch either way, so a run resumes on any number of ranks that divides it).
  int64_t world_size = 1;

  nlohmann::json to_json() const;
  // Throws CheckpointError naming the missing or mistyped key.
  static TrainerState from_json(const nlohmann::json& j);
};

// A checkpoint as resume accepts it: its manifest and files (ckpt::verify), the files its
// kind requires, and for a full one a complete, typed trainer_state.json. Throws
// CheckpointError saying what is wrong. `enstack ckpt verify/list/inspect` use it too.
// (Declared with its Manifest return type in enstack/train/trainer.h.)

// The newest valid full checkpoint among the roots (the run's checkpoints/ first,
// then its mirror): step-* and recovery directories, by manifest step. nullopt when
// there are none; CheckpointError listing each one and why when none is valid.
std::optional<std::filesystem::path> find_resume_checkpoint(const std::vector<std::filesystem::path>& roots);

// Writes a full checkpoint <checkpoints_root>/step-NNNNNNNN from its parts, crash-
// consistently, and verifies it as resume would: config.json, the weights, the
// optimizer entries (AdamW moments for every weight that is a parameter, rng.cpu,
// optional scaler.*), the state and the run options. Used by `enstack ckpt import`;
// the trainer writes its own through the async saver. Throws CheckpointError when an
// entry is missing or does not fit the weights. Returns the directory.
std::filesystem::path write_full_checkpoint(const std::filesystem::path& checkpoints_root,
                                            const nlohmann::json& model_config,
                                            const std::map<std::string, torch::Tensor>& weights,
                                            const std::map<std::string, torch::Tensor>& optimizer_entries,
                                            const TrainerState& state, const nlohmann::json& options,
                                            const nlohmann::json& manifest_extra);

}  // namespace enstack::train
