// Trainer: the native training loop (fine-tuning an EncoderClassifier on token
// stores) with exact mid-epoch resume, exact gradient accumulation, autocast
// (fp32/bf16/fp16 with a grad scaler), evaluation with metrics, best-model
// tracking, early stopping and crash-consistent checkpoints.
//
// The position in training is (epoch, batch cursor, optimizer step); a
// checkpoint holds it with every other numeric state (weights, AdamW moments,
// scaler, best metric, patience, RNG state, thread count, dataset fingerprints),
// so a resumed CPU fp32 run ends bitwise equal to an uninterrupted one.
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "enstack/ckpt/checkpoint_dir.h"
#include "enstack/data/token_store.h"
#include "enstack/model/encoder_classifier.h"
#include "enstack/train/metrics.h"

namespace enstack::train {

class Distributed;

struct TrainerOptions {
  std::string output_dir;
  uint64_t seed = 42;
  int num_threads = 0;  // 0: leave torch's setting
  std::string device = "cpu";
  int64_t epochs = 10;
  int64_t batch_size = 16;
  int64_t grad_accum = 1;
  double learning_rate = 2e-5;
  double weight_decay = 0.01;
  double warmup_ratio = 0.0;
  int64_t warmup_steps = 0;
  std::string lr_schedule = "linear";
  double max_grad_norm = 1.0;
  std::string precision = "fp32";  // fp32 | bf16 | fp16
  double loss_scale = 65536.0;     // fp16: the grad scaler's initial scale
  std::string eval_strategy = "epoch";  // epoch | steps
  int64_t eval_steps = 0;
  int64_t save_steps = 0;  // 0: only at epoch ends
  double save_minutes = 0;  // > 0: also save at the first step boundary this much wall time after the last save
  int64_t save_total_limit = 2;  // step-* checkpoints kept; -1: all
  int64_t logging_steps = 50;
  // On out of memory, run each batch as twice as many micro-batches for the rest of the
  // run (same global batch, same update up to summation order) instead of stopping.
  bool auto_microbatch = true;
  std::string metric_for_best = "f1_weighted";  // "": no best/ tracking and no early stopping
  bool greater_is_better = true;
  int64_t patience = 0;  // 0: no early stopping
  double threshold = 0.0;
  bool group_by_length = false;
  int64_t pad_id = 1;
  int64_t max_length = 512;  // tokens per example; 0: no cap
  std::vector<std::string> label_names;
  std::string config_fingerprint;  // of the run's configuration; a resume with another is refused
  bool allow_changes = false;      // accept a changed dataset/config on resume, knowingly
  // Saving (see enstack/ckpt/async_saver.h)
  std::string mirror_dir;          // a second root (e.g. Drive) receiving verified copies; "" for none
  double mirror_lease_seconds = 60.0;   // a mirror lease without a heartbeat for this long is stale
  bool async_save = true;          // write checkpoints on a background thread
  bool save_coalesce = true;       // a save point during a running save replaces a queued one, else waits
  std::string best_model_dtype = "fp32";  // fp32 | fp16: dtype of best/ and swa/ weights
  // Stochastic weight averaging
  bool swa_enabled = false;
  int64_t swa_start_epoch = 0;     // 1-based; 0: at 75% of the epochs
  int64_t swa_every_steps = 0;     // 0: update once at the end of each epoch
  double swa_lr = 0.0;             // > 0: anneal the learning rate to it over one epoch from the SWA start

  void validate() const;  // throws ConfigError listing every problem
  // Throws ConfigError listing every unknown key, mistyped value, and null where the
  // option has no off value. null means off: eval_steps, save_steps, save_minutes,
  // warmup_steps, patience, swa_every_steps, swa_lr (0), save_total_limit (-1: keep all),
  // metric_for_best ("": no best/ tracking), mirror_dir ("": none), swa_start_epoch (0:
  // at 75% of the epochs).
  static TrainerOptions from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;  // the off values as null
  static std::vector<std::string> keys();  // every option's JSON key
};

// A checkpoint as resume accepts it: its manifest and files (ckpt::verify), the files its
// kind requires, and for a full one a complete, typed trainer_state.json. Throws
// CheckpointError saying what is wrong. `enstack ckpt verify/list/inspect` use it too.
ckpt::Manifest verify_checkpoint(const std::filesystem::path& dir);

struct FitResult {
  int64_t global_step = 0;
  int64_t epochs_completed = 0;
  bool early_stopped = false;
  bool resumed = false;
  nlohmann::json last_eval;
  nlohmann::json best_eval;
  double best_metric = 0.0;
  std::string best_dir, last_checkpoint;
  nlohmann::json swa_eval;   // metrics of the SWA model (null without SWA or evaluation data)
  std::string swa_dir;
  int64_t swa_count = 0;
  int64_t save_errors = 0;   // saves that failed during this fit (training went on)
  std::string last_save_error;  // the last of those failures ("" when none)
  // What is on disk when fit returns: best_dir is set only when best/ verifies, and
  // best_saved_step is the step of the model it holds (-1: none), which is older than
  // best_eval's step when the newest best could not be written. last_checkpoint is the
  // newest valid full checkpoint of the run (of an earlier fit too), "" when none.
  int64_t best_saved_step = -1;
  nlohmann::json to_json() const;
};

// Thrown when fit stops at a step boundary because of Ctrl-C (SIGINT), SIGTERM or a
// callback that asked to stop; a recovery checkpoint has been written.
class Interrupted : public std::runtime_error {
 public:
  explicit Interrupted(const std::string& what, int signal = 0) : std::runtime_error(what), signal_(signal) {}
  int signal() const { return signal_; }  // SIGINT, SIGTERM, or 0 (the callback stopped it)

 private:
  int signal_;
};

class Trainer {
 public:
  // Called every logging_steps, after each evaluation and at the end, with a record
  // ({"event": "log"|"eval"|"save"|"end", ...}). Returning false stops training at the
  // next step boundary (as Ctrl-C does).
  using Callback = std::function<bool(const nlohmann::json& record)>;

  Trainer(std::shared_ptr<model::EncoderClassifier> model, std::shared_ptr<const data::TokenStore> train,
          std::shared_ptr<const data::TokenStore> eval, TrainerOptions options);

  // Holds the run directory's lock (util::RunLock) and, with a mirror, its lease
  // (ckpt::MirrorLease) for the whole fit; `take_over_mirror` takes a fresh lease over.
  FitResult fit(bool resume, const Callback& callback = {}, bool take_over_mirror = false);
  // Class probabilities [N, C] (or raw logits) of a store in its own order, without
  // grad, under autocast. Batches are formed from examples sorted by length (little
  // padding), and the results are put back in the store's order.
  enum class Output { kProbabilities, kLogits };
  torch::Tensor predict(const data::TokenStore& store, int64_t batch_size = 0,
                        Output output = Output::kProbabilities);
  ClassificationMetrics evaluate(const data::TokenStore& store);

  const TrainerOptions& options() const { return options_; }
  std::filesystem::path checkpoints_dir() const;

  // Data-parallel training (enstack/train/distributed.h): every rank of the group calls
  // fit (and predict/evaluate) with the same options; train.batch_size is the global
  // batch, each rank runs its share of every global batch. Rank 0 alone writes
  // checkpoints, metrics files and the mirror, and alone calls the callback.
  void set_distributed(std::shared_ptr<Distributed> distributed);
  const std::shared_ptr<Distributed>& distributed() const { return dist_; }

 private:
  struct Impl;
  FitResult fit_local(bool resume, const Callback& callback, bool take_over_mirror);
  std::shared_ptr<Distributed> dist_;
  std::shared_ptr<model::EncoderClassifier> model_;
  std::shared_ptr<const data::TokenStore> train_, eval_;
  TrainerOptions options_;
};

}  // namespace enstack::train
