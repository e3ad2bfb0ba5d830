// The trainer's per-fit() state and steps, shared by the loop (trainer.cpp) and
// what it writes (trainer_checkpoints.cpp: evaluations and the best model,
// checkpoints and their reports, SWA, out-of-memory recovery). Private to the trainer.
#pragma once

#include <ATen/DeviceAccelerator.h>
#include <ATen/autocast_mode.h>
#include <c10/util/Exception.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <tuple>
#include <string>
#include <utility>
#include <vector>

#include "enstack/ckpt/async_saver.h"
#include "enstack/ckpt/checkpoint_dir.h"
#include "enstack/ckpt/mirror_lease.h"
#include "enstack/data/loader.h"
#include "enstack/train/adamw.h"
#include "enstack/train/distributed.h"
#include "enstack/train/grad_scaler.h"
#include "enstack/train/schedule.h"
#include "enstack/train/swa.h"
#include "enstack/train/trainer.h"
#include "enstack/util/clock.h"
#include "trainer_state.h"

namespace enstack::train {
namespace fs = std::filesystem;

// Autocast on `device` for the run's precision (nothing for fp32), restored on exit,
// exceptions included.
class AutocastGuard {
 public:
  AutocastGuard(const std::string& precision, c10::DeviceType device) : device_(device) {
    if (precision == "fp32") return;
    active_ = true;
    previous_enabled_ = at::autocast::is_autocast_enabled(device);
    previous_dtype_ = at::autocast::get_autocast_dtype(device);
    at::autocast::set_autocast_enabled(device, true);
    at::autocast::set_autocast_dtype(device, precision == "bf16" ? at::kBFloat16 : at::kHalf);
    at::autocast::increment_nesting();
  }
  ~AutocastGuard() {
    if (!active_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(device_, previous_enabled_);
    at::autocast::set_autocast_dtype(device_, previous_dtype_);
  }

 private:
  c10::DeviceType device_;
  bool active_ = false, previous_enabled_ = false;
  at::ScalarType previous_dtype_ = at::kFloat;
};

// Rank r's share of every global batch of `plan`: the r-th of `world` near-equal
// contiguous slices of each batch (all equal to batch / world but in a short last batch,
// where a share may be empty). The batch indices stay the global ones.
inline std::shared_ptr<const data::EpochPlan> rank_plan(const data::EpochPlan& plan, int rank, int world) {
  std::vector<int64_t> mine;
  for (int64_t k = 0; k < plan.num_batches(); ++k) {
    const auto batch = plan.batch_view(k);
    const auto n = static_cast<int64_t>(batch.size());
    mine.insert(mine.end(), batch.begin() + rank * n / world, batch.begin() + (rank + 1) * n / world);
  }
  return std::make_shared<const data::EpochPlan>(
      data::EpochPlan::of_indices(plan.batch_size() / world, std::move(mine), plan.num_examples()));
}

inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// SWA starts after 75% of the epochs unless the config says when.
inline int64_t swa_start_epoch(const TrainerOptions& o) {
  return o.swa_start_epoch > 0 ? o.swa_start_epoch : std::min(o.epochs, o.epochs * 3 / 4 + 1);
}

inline ckpt::AsyncSaverOptions saver_options(const TrainerOptions& o, std::shared_ptr<const ckpt::MirrorLease> lease,
                                             bool writes) {
  ckpt::AsyncSaverOptions a;
  if (!writes) return a;  // a rank other than 0: it never submits
  a.mirror_lease = std::move(lease);
  a.coalesce = o.save_coalesce;
  a.synchronous = !o.async_save;
  a.keep_steps = static_cast<int>(o.save_total_limit);
  if (!o.mirror_dir.empty()) a.mirror_root = fs::path(o.mirror_dir) / kCheckpointsDir;
  return a;
}

// Everything one fit() needs, so the loop reads as plain statements.
struct Trainer::Impl {
  Trainer& t;
  const TrainerOptions& o;
  Distributed* dist;  // null: one process
  bool writes;        // rank 0 (or one process): checkpoints, metrics files, the mirror, the callback
  model::EncoderClassifier& model;
  torch::Device device;
  AdamW optimizer;
  GradScaler scaler;
  Schedule schedule;
  std::unique_ptr<SwaAverage> swa;
  std::shared_ptr<ckpt::MirrorLease> lease;  // before the saver: held until its last mirror copy is done
  ckpt::AsyncSaver saver;
  double snapshot_wait_seconds = 0.0;  // training time spent waiting for checkpoint copies
  double last_save_time = util::monotonic_seconds();  // train.save_minutes counts from here
  int64_t windows_per_epoch = 0, total_steps = 0, warmup = 0, swa_start_step = 0;
  // Fault injection for tests: the optimizer step (1-based) whose forward runs out of memory.
  int64_t inject_oom_at_step = std::getenv("ENSTACK_INJECT_OOM_AT_STEP")
                                   ? std::atoll(std::getenv("ENSTACK_INJECT_OOM_AT_STEP")) : -1;
  TrainerState s;
  FitResult result;
  const Callback& callback;
  bool stop_requested = false;
  bool time_due_agreed = false;  // under torch.distributed: rank 0's save_minutes clock, agreed at the last boundary
  // since the last log record
  double loss_sum = 0, norm_sum = 0;
  int64_t log_windows = 0, log_samples = 0, log_tokens = 0;
  std::chrono::steady_clock::time_point log_start = std::chrono::steady_clock::now();

  Impl(Trainer& trainer, const Callback& cb, bool take_over_mirror)
      : t(trainer), o(trainer.options_), dist(trainer.dist_.get()), writes(!dist || dist->rank() == 0),
        model(*trainer.model_), device(trainer.options_.device),
        optimizer(named_parameters(), adamw_options()), scaler(scaler_options()),
        schedule(parse_schedule(o.lr_schedule)),
        lease(o.mirror_dir.empty() || !writes
                  ? nullptr
                  : std::make_shared<ckpt::MirrorLease>(o.mirror_dir, o.mirror_lease_seconds, take_over_mirror)),
        saver(saver_options(trainer.options_, lease, writes)), callback(cb) {
    windows_per_epoch = data::EpochPlan::num_windows(
        (t.train_->size() + o.batch_size - 1) / o.batch_size, o.grad_accum);
    total_steps = windows_per_epoch * o.epochs;
    warmup = o.warmup_steps > 0 ? o.warmup_steps : warmup_steps_for(o.warmup_ratio, total_steps);
    if (o.swa_enabled) {
      swa = std::make_unique<SwaAverage>(named_parameters());
      swa_start_step = (swa_start_epoch(o) - 1) * windows_per_epoch;
    }
  }

  std::vector<std::pair<std::string, torch::Tensor>> named_parameters() {
    std::vector<std::pair<std::string, torch::Tensor>> out;
    for (const auto& item : model.named_parameters(true)) out.emplace_back(item.key(), item.value());
    return out;
  }
  AdamWOptions adamw_options() const {
    AdamWOptions a;
    a.lr = o.learning_rate;
    a.weight_decay = o.weight_decay;
    return a;
  }
  GradScalerOptions scaler_options() const {
    GradScalerOptions g;
    g.enabled = o.precision == "fp16";
    g.init_scale = o.loss_scale;
    return g;
  }
  nlohmann::json options_json() const;

  bool emit(const nlohmann::json& record) {
    if (writes && callback && !callback(record)) stop_requested = true;
    return !stop_requested;
  }
  // Under torch.distributed: every rank learns whether any rank wants to stop (Ctrl-C,
  // SIGTERM, the callback) and whether rank 0's save_minutes clock is due, at the same
  // step boundary. Returns {stop, time_due}.
  std::pair<bool, bool> agree(bool stop, bool time_due) {
    if (!dist) return {stop, time_due};
    auto flags = torch::tensor({static_cast<int>(stop), static_cast<int>(time_due && writes)}, torch::kInt);
    dist->all_reduce(flags, /*max=*/true);
    return {flags[0].item<int>() != 0, flags[1].item<int>() != 0};
  }
  // The generator states of ranks 1.. for rank 0's checkpoint (a collective: every rank calls it).
  std::map<std::string, torch::Tensor> gather_rank_rng();

  std::vector<fs::path> checkpoint_roots() const {
    std::vector<fs::path> roots{t.checkpoints_dir()};
    if (!o.mirror_dir.empty()) roots.push_back(fs::path(o.mirror_dir) / kCheckpointsDir);
    return roots;
  }
  double learning_rate(int64_t step) const;
  // A fresh runtime that resumes from the mirror gets the model-only directories
  // (best/, swa/) back too, so evaluation and stacking find them where they expect.
  void restore_from_mirror();
  void update_swa();
  void finalize_swa();
  void report_saves();
  [[noreturn]] void out_of_memory(const c10::Error& e, const data::StepWindow& window);

  void begin(bool resume);
  void run_epoch();
  // The window's batches, taken from the loader once so an out-of-memory retry replays them.
  std::vector<data::Batch> take_window(data::Loader& loader, const data::StepWindow& window);
  double run_window(const std::vector<data::Batch>& batches, const data::StepWindow& window);
  // Halves the micro-batch after an out-of-memory error (or rethrows with advice when
  // train.auto_microbatch is off or a micro-batch is one example already).
  void shrink_microbatch(const c10::Error& e, const std::vector<data::Batch>& batches,
                         const data::StepWindow& window);
  void after_step(double lr, double norm);
  void evaluate_and_track();
  void save(const std::string& name);
  void check_interrupt();
  bool save_time_due() const;
  FitResult finish();
  // best_dir/best_saved_step and last_checkpoint as the disk holds them (see FitResult).
  void fill_saved_result();
  void fill_swa_result() {
    result.swa_count = s.swa_count;
    result.swa_eval = s.swa_eval;
    if (s.swa_count > 0) result.swa_dir = (t.checkpoints_dir() / kSwaDir).string();
  }
};

}  // namespace enstack::train
