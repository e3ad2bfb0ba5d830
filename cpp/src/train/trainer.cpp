// The training loop (see enstack/train/trainer.h). One loop, read top to bottom:
// for each optimizer-step window of each epoch, run its micro-batches, step,
// then the "every N steps" blocks (log, evaluate, save, stop?).
#include "enstack/train/trainer.h"

#include <ATen/DeviceAccelerator.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <c10/util/Exception.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "enstack/ckpt/async_saver.h"
#include "enstack/ckpt/checkpoint_dir.h"
#include "enstack/data/epoch_plan.h"
#include "enstack/data/loader.h"
#include "enstack/model/weights.h"
#include "enstack/train/adamw.h"
#include "enstack/train/clip.h"
#include "enstack/train/grad_scaler.h"
#include "enstack/train/schedule.h"
#include "enstack/util/error.h"
#include "enstack/util/files.h"
#include "enstack/util/logging.h"
#include "trainer_state.h"

namespace enstack::train {
namespace fs = std::filesystem;
namespace {

std::atomic<bool> g_sigint{false};
extern "C" void on_sigint(int) { g_sigint.store(true); }

// Ctrl-C (Colab's Interrupt) sets a flag that the loop reads at step boundaries.
class SigintGuard {
 public:
  SigintGuard() {
    g_sigint.store(false);
    struct sigaction action {};
    action.sa_handler = on_sigint;
    sigemptyset(&action.sa_mask);
    installed_ = ::sigaction(SIGINT, &action, &previous_) == 0;
  }
  ~SigintGuard() {
    if (installed_) ::sigaction(SIGINT, &previous_, nullptr);
  }

 private:
  struct sigaction previous_ {};
  bool installed_ = false;
};

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

std::vector<torch::Tensor> defined_grads(const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> grads;
  for (const auto& p : params) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  return grads;
}

std::string step_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08lld", static_cast<long long>(step));
  return name;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Resident set size of this process (Linux), 0 where unavailable.
int64_t resident_bytes() {
  long pages = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return static_cast<int64_t>(resident) * ::sysconf(_SC_PAGESIZE);
}

// SWA starts after 75% of the epochs unless the config says when.
int64_t swa_start_epoch(const TrainerOptions& o) {
  return o.swa_start_epoch > 0 ? o.swa_start_epoch : std::min(o.epochs, o.epochs * 3 / 4 + 1);
}

ckpt::AsyncSaverOptions saver_options(const TrainerOptions& o) {
  ckpt::AsyncSaverOptions a;
  a.coalesce = o.save_coalesce;
  a.synchronous = !o.async_save;
  a.keep_steps = static_cast<int>(o.save_total_limit);
  if (!o.mirror_dir.empty()) a.mirror_root = fs::path(o.mirror_dir) / "checkpoints";
  return a;
}

}  // namespace

// Everything one fit() needs, so the loop reads as plain statements.
struct Trainer::Impl {
  Trainer& t;
  const TrainerOptions& o;
  model::EncoderClassifier& model;
  torch::Device device;
  AdamW optimizer;
  GradScaler scaler;
  Schedule schedule;
  std::unique_ptr<SwaAverage> swa;
  ckpt::AsyncSaver saver;
  double snapshot_wait_seconds = 0.0;  // training time spent waiting for checkpoint copies
  int64_t windows_per_epoch = 0, total_steps = 0, warmup = 0, swa_start_step = 0;
  // Fault injection for tests: the optimizer step (1-based) whose forward runs out of memory.
  int64_t inject_oom_at_step = std::getenv("ENSTACK_INJECT_OOM_AT_STEP")
                                   ? std::atoll(std::getenv("ENSTACK_INJECT_OOM_AT_STEP")) : -1;
  TrainerState s;
  FitResult result;
  const Callback& callback;
  bool stop_requested = false;
  // since the last log record
  double loss_sum = 0, norm_sum = 0;
  int64_t log_windows = 0, log_samples = 0, log_tokens = 0;
  std::chrono::steady_clock::time_point log_start = std::chrono::steady_clock::now();

  Impl(Trainer& trainer, const Callback& cb)
      : t(trainer), o(trainer.options_), model(*trainer.model_), device(trainer.options_.device),
        optimizer(named_parameters(), adamw_options()), scaler(scaler_options()),
        schedule(parse_schedule(o.lr_schedule)), saver(saver_options(trainer.options_)), callback(cb) {
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
    return g;
  }
  nlohmann::json options_json() const;

  bool emit(const nlohmann::json& record) {
    if (callback && !callback(record)) stop_requested = true;
    return !stop_requested;
  }

  std::vector<fs::path> checkpoint_roots() const {
    std::vector<fs::path> roots{t.checkpoints_dir()};
    if (!o.mirror_dir.empty()) roots.push_back(fs::path(o.mirror_dir) / "checkpoints");
    return roots;
  }
  double learning_rate(int64_t step) const;
  // A fresh runtime that resumes from the mirror gets the model-only directories
  // (best/, swa/) back too, so evaluation and stacking find them where they expect.
  void restore_from_mirror() {
    if (o.mirror_dir.empty()) return;
    for (const char* name : {"best", "swa"}) {
      const fs::path local = t.checkpoints_dir() / name, mirrored = fs::path(o.mirror_dir) / "checkpoints" / name;
      if (fs::exists(local / ckpt::kManifestName) || !fs::exists(mirrored / ckpt::kManifestName)) continue;
      try {
        ckpt::copy_checkpoint(mirrored, local);
        ENSTACK_LOG_INFO("restored ", local.string(), " from the mirror");
      } catch (const std::exception& e) {
        ENSTACK_LOG_WARN("could not restore ", local.string(), " from the mirror: ", e.what());
      }
    }
  }
  void update_swa();
  void finalize_swa();
  void report_saves();
  [[noreturn]] void out_of_memory(const c10::Error& e, const data::StepWindow& window);

  void begin(bool resume);
  void run_epoch();
  double run_window(data::Loader& loader, const data::StepWindow& window);
  void after_step(double lr, double norm);
  void evaluate_and_track();
  void save(const std::string& name);
  void check_interrupt();
  FitResult finish();
  void fill_swa_result() {
    result.swa_count = s.swa_count;
    result.swa_eval = s.swa_eval;
    if (s.swa_count > 0) result.swa_dir = (t.checkpoints_dir() / "swa").string();
  }
};

nlohmann::json Trainer::Impl::options_json() const {
  return {{"epochs", o.epochs}, {"batch_size", o.batch_size}, {"grad_accum", o.grad_accum},
          {"learning_rate", o.learning_rate}, {"seed", o.seed}, {"precision", o.precision},
          {"lr_schedule", o.lr_schedule}, {"total_steps", total_steps}, {"warmup_steps", warmup},
          {"train_examples", t.train_->size()}, {"batches_per_epoch", (t.train_->size() + o.batch_size - 1) / o.batch_size},
          {"steps_per_epoch", windows_per_epoch}, {"swa_enabled", o.swa_enabled}};
}

void Trainer::Impl::begin(bool resume) {
  if (o.num_threads > 0) at::set_num_threads(o.num_threads);
  s.num_threads = at::get_num_threads();
  s.train_fingerprint = t.train_->info().fingerprint;
  s.eval_fingerprint = t.eval_ ? t.eval_->info().fingerprint : "";
  s.config_fingerprint = o.config_fingerprint;
  const auto found = resume ? find_resume_checkpoint(checkpoint_roots()) : std::nullopt;
  if (!found) {
    ENSTACK_LOG_INFO("training from the start: ", o.epochs, " epochs x ", windows_per_epoch, " steps (",
                     t.train_->size(), " examples, batch ", o.batch_size, " x accumulation ", o.grad_accum, ")");
    return;
  }
  const TrainerState saved = load_full_checkpoint(*found, model, optimizer, scaler, swa.get(), device);
  restore_from_mirror();
  auto refuse = [&](const std::string& what, const std::string& then, const std::string& now) {
    if (o.allow_changes) {
      ENSTACK_LOG_WARN("resuming although the ", what, " changed (", then, " -> ", now, ")");
      return;
    }
    throw CheckpointError(util::str_cat(
        "cannot resume from ", found->string(), ": the ", what, " changed since it was saved (", then, " -> ", now,
        "). Resuming would mix two runs. Start a new run (another run.output_dir, or fit(resume=False)), or "
        "accept the change knowingly with allow_changes."));
  };
  if (saved.train_fingerprint != s.train_fingerprint) refuse("training data", saved.train_fingerprint, s.train_fingerprint);
  if (saved.config_fingerprint != s.config_fingerprint) refuse("configuration", saved.config_fingerprint, s.config_fingerprint);
  if (saved.num_threads != s.num_threads) {
    ENSTACK_LOG_INFO("using the checkpoint's ", saved.num_threads, " intra-op threads (not ", s.num_threads,
                     ") so the resumed run computes exactly as the interrupted one");
    at::set_num_threads(saved.num_threads);
  }
  s = saved;
  s.train_fingerprint = t.train_->info().fingerprint;
  s.config_fingerprint = o.config_fingerprint;
  result.resumed = true;
  const int64_t batches = (t.train_->size() + o.batch_size - 1) / o.batch_size;
  ENSTACK_LOG_INFO("resuming from ", found->string(), ": epoch ", s.epoch + 1, "/", o.epochs, ", batch ",
                   s.batch_cursor, "/", batches, " (", util::str_cat(std::round(1000.0 * s.batch_cursor / batches) / 10),
                   "%), ", batches - s.batch_cursor, " to go; optimizer step ", s.global_step);
  if (!s.imported_from.is_null()) {
    ENSTACK_LOG_INFO("this run continues a checkpoint imported from ", s.imported_from.value("path", std::string("?")),
                     "; the data order before the import is not the one enstack replays");
  }
}

double Trainer::Impl::run_window(data::Loader& loader, const data::StepWindow& window) {
  model.train();
  torch::Tensor window_loss = torch::zeros({}, torch::kDouble);
  for (int64_t b = window.first_batch; b < window.end_batch; ++b) {
    auto batch = loader.next();
    ENSTACK_ASSERT(batch && batch->index == b, "loader out of step with the plan");
    auto ids = batch->input_ids.to(device), mask = batch->attention_mask.to(device);
    auto labels = batch->labels.to(device);
    ENSTACK_CHECK(labels.dim() == 1, ConfigError, "multi-label training is not supported yet; use "
                  "data.label_policy enstack5, binary or class.");
    torch::Tensor logits;
    {
      AutocastGuard autocast(o.precision, device.type());
      logits = model.forward(ids, mask);
    }
    // Sum of per-sample losses over the whole window's sample count: exact accumulation.
    auto loss = at::cross_entropy_loss(logits.to(torch::kFloat), labels, {}, at::Reduction::Sum) /
                static_cast<double>(window.num_samples);
    scaler.scale(loss).backward();
    window_loss += loss.detach().to(torch::kCPU, torch::kDouble);
    log_samples += batch->input_ids.size(0);
    log_tokens += batch->real_tokens;
  }
  const double value = window_loss.item<double>();
  ENSTACK_CHECK(std::isfinite(value) || scaler.enabled(), Error, "the training loss is ", value, " at step ",
                s.global_step, ". Lower train.learning_rate, check the data, or use precision fp32; the last "
                "checkpoint is intact.");
  return value;
}

void Trainer::Impl::after_step(double lr, double norm) {
  if (o.logging_steps > 0 && s.global_step % o.logging_steps == 0 && log_windows > 0) {
    const double elapsed = std::max(1e-9, seconds_since(log_start));
    const int64_t batches = (t.train_->size() + o.batch_size - 1) / o.batch_size;
    nlohmann::json record = {
        {"event", "log"}, {"step", s.global_step}, {"epoch", s.epoch + static_cast<double>(s.batch_cursor) / batches},
        {"loss", loss_sum / log_windows}, {"learning_rate", lr}, {"grad_norm", norm_sum / log_windows},
        {"loss_scale", scaler.get_scale()}, {"skipped_steps", s.skipped_steps},
        {"samples_per_second", log_samples / elapsed}, {"tokens_per_second", log_tokens / elapsed},
        {"total_steps", total_steps}, {"rss_bytes", resident_bytes()},
        {"checkpoint_wait_seconds", snapshot_wait_seconds}};
    if (device.is_cuda()) {
      const auto stats = at::accelerator::getDeviceStats(device.index() < 0 ? 0 : device.index());
      const auto aggregate = static_cast<std::size_t>(c10::CachingAllocator::StatType::AGGREGATE);
      record["cuda_max_allocated_bytes"] = stats.allocated_bytes[aggregate].peak;
      record["cuda_max_reserved_bytes"] = stats.reserved_bytes[aggregate].peak;
    }
    if (swa) record["swa_count"] = swa->count();
    emit(record);
    loss_sum = norm_sum = 0;
    log_windows = log_samples = log_tokens = 0;
    log_start = std::chrono::steady_clock::now();
  }
  if (swa && o.swa_every_steps > 0 && s.global_step > swa_start_step &&
      (s.global_step - swa_start_step) % o.swa_every_steps == 0) {
    update_swa();
  }
  if (o.eval_strategy == "steps" && o.eval_steps > 0 && s.global_step % o.eval_steps == 0) evaluate_and_track();
  if (o.save_steps > 0 && s.global_step % o.save_steps == 0) save(step_name(s.global_step));
}

void Trainer::Impl::evaluate_and_track() {
  if (!t.eval_) return;
  const auto metrics = t.evaluate(*t.eval_);
  const double value = metrics.get(o.metric_for_best);
  auto record = metrics.to_json(o.label_names);
  record["step"] = s.global_step;
  record["epoch"] = s.epoch;
  fs::create_directories(fs::path(o.output_dir) / "metrics");
  util::write_file_atomic(fs::path(o.output_dir) / "metrics" / util::str_cat("eval-step-", s.global_step, ".json"),
                          record.dump(2));
  s.last_eval = record;
  const bool first = std::isnan(s.best_metric);
  const bool improved = first || (o.greater_is_better ? value > s.best_metric + o.threshold
                                                      : value < s.best_metric - o.threshold);
  if (improved) {
    s.best_metric = value;
    s.best_step = s.global_step;
    s.best_eval = record;
    s.patience_counter = 0;
    saver.submit(snapshot_model(model, s.global_step, o.best_model_dtype == "fp16",
                                {{"metric", o.metric_for_best}, {"value", value}}, &saver.pool()),
                 t.checkpoints_dir() / "best");
  } else {
    ++s.patience_counter;
  }
  ENSTACK_LOG_INFO("eval at step ", s.global_step, ": ", o.metric_for_best, " ", value,
                   improved ? " (best so far)" : "", ", accuracy ", metrics.accuracy);
  emit({{"event", "eval"}, {"step", s.global_step}, {"metrics", record}, {"best", improved}});
  if (o.patience > 0 && s.patience_counter >= o.patience) {
    s.early_stopped = true;
    ENSTACK_LOG_INFO("early stopping: ", o.metric_for_best, " did not improve by more than ", o.threshold, " in ",
                     o.patience, " evaluations");
  }
}

void Trainer::Impl::save(const std::string& name) {
  const auto start = std::chrono::steady_clock::now();
  auto snapshot = snapshot_full_checkpoint(model, optimizer, scaler, swa.get(), s, options_json(), device,
                                           &saver.pool());
  const double snapshot_seconds = seconds_since(start);
  const double waited = saver.submit(std::move(snapshot), t.checkpoints_dir() / name);
  if (waited > 0.05) {
    ENSTACK_LOG_INFO("waited ", waited, " s for the previous checkpoint to be written (train.save_coalesce: true "
                     "replaces a queued save instead of waiting)");
  }
  ENSTACK_LOG_DEBUG("checkpoint ", name, ": snapshot ", snapshot_seconds, " s, then written in the background");
  report_saves();
}

// Turns the saver's events (writes finished or failed, mirror copies) into log
// records and callback records; called at step boundaries and after flushes.
void Trainer::Impl::report_saves() {
  for (const auto& e : saver.drain()) {
    using Kind = ckpt::SaveEvent::Kind;
    nlohmann::json record = {{"event", ckpt::SaveEvent::name(e.kind)}, {"step", e.step}, {"path", e.path},
                             {"seconds", e.seconds}, {"bytes", e.bytes}};
    if (!e.error.empty()) record["error"] = e.error;
    const std::string dir = fs::path(e.path).filename().string();
    if (e.kind == Kind::kSaved && (dir.rfind("step-", 0) == 0 || dir == "recovery")) result.last_checkpoint = e.path;
    if (e.kind == Kind::kSaveFailed) ++result.save_errors;
    emit(record);
  }
}

[[noreturn]] void Trainer::Impl::out_of_memory(const c10::Error& e, const data::StepWindow& window) {
  // The step did not happen: drop its partial gradients and save the state before it.
  optimizer.zero_grad();
  if (device.is_cuda()) at::accelerator::emptyCache();
  std::string saved = "nothing could be saved";
  try {
    save("recovery");
    saver.flush();
    report_saves();
    saved = "the state before this step is in " + (t.checkpoints_dir() / "recovery").string();
  } catch (const std::exception& inner) {
    saved = std::string("saving a recovery checkpoint failed too (") + inner.what() + ")";
  }
  throw Error(util::str_cat(
      "out of memory at optimizer step ", s.global_step + 1, " (epoch ", s.epoch + 1, ", batches ", window.first_batch,
      "..", window.end_batch - 1, "); ", saved, ". To fit: lower train.batch_size and raise train.grad_accum by "
      "the same factor (the effective batch stays the same, e.g. batch_size ", std::max<int64_t>(1, o.batch_size / 2),
      " with grad_accum ", o.grad_accum * 2, "), lower model.max_length, or use precision fp16 (CUDA) / bf16; then "
      "resume with allow_changes (the batch layout changed). Device message: ", e.what_without_backtrace()));
}

double Trainer::Impl::learning_rate(int64_t step) const {
  const double scheduled = o.learning_rate * lr_multiplier(schedule, step, warmup, total_steps);
  if (!swa || o.swa_lr <= 0 || step < swa_start_step) return scheduled;
  // As torch's SWALR with cosine annealing over one epoch: from the scheduled rate at
  // the SWA start to swa_lr, then constant. A pure function of the step, for exact resume.
  const double from = o.learning_rate * lr_multiplier(schedule, swa_start_step, warmup, total_steps);
  const double t_anneal = std::min(1.0, static_cast<double>(step - swa_start_step + 1) /
                                            static_cast<double>(std::max<int64_t>(1, windows_per_epoch)));
  const double alpha = (1.0 - std::cos(M_PI * t_anneal)) / 2.0;
  return o.swa_lr * alpha + from * (1.0 - alpha);
}

void Trainer::Impl::update_swa() {
  snapshot_wait_seconds += saver.wait_for_snapshots();
  swa->update();
  s.swa_count = swa->count();
}

// Evaluates the SWA model and exports it to swa/ (model only); the live weights are
// swapped back afterwards, so training state and the final checkpoint are unaffected.
void Trainer::Impl::finalize_swa() {
  if (!swa || swa->count() == 0) return;
  snapshot_wait_seconds += saver.wait_for_snapshots();
  swa->swap_with_parameters();
  try {
    nlohmann::json extra = {{"swa_count", swa->count()}};
    if (t.eval_) {
      const auto metrics = t.evaluate(*t.eval_);
      auto record = metrics.to_json(o.label_names);
      record["step"] = s.global_step;
      record["swa_count"] = swa->count();
      fs::create_directories(fs::path(o.output_dir) / "metrics");
      util::write_file_atomic(fs::path(o.output_dir) / "metrics" / "eval-swa.json", record.dump(2));
      s.swa_eval = record;
      extra["metric"] = o.metric_for_best;
      extra["value"] = metrics.get(o.metric_for_best);
      ENSTACK_LOG_INFO("SWA model (", swa->count(), " snapshots): ", o.metric_for_best, " ",
                       metrics.get(o.metric_for_best), ", accuracy ", metrics.accuracy,
                       s.best_eval.is_null() ? "" : util::str_cat(" (best checkpoint: ", s.best_metric, ")"));
      emit({{"event", "swa_eval"}, {"step", s.global_step}, {"metrics", record}});
    }
    saver.submit(snapshot_model(model, s.global_step, o.best_model_dtype == "fp16", extra, &saver.pool()),
                 t.checkpoints_dir() / "swa");
    snapshot_wait_seconds += saver.wait_for_snapshots();  // the copy reads the swapped-in weights
  } catch (...) {
    saver.wait_for_snapshots();
    swa->swap_with_parameters();
    throw;
  }
  swa->swap_with_parameters();
}

void Trainer::Impl::check_interrupt() {
  if (!g_sigint.load() && !stop_requested) return;
  save("recovery");
  saver.flush();
  report_saves();
  throw Interrupted(util::str_cat("training interrupted at step ", s.global_step, "; state saved to ",
                                  (t.checkpoints_dir() / "recovery").string(), ". fit(resume=True) continues."));
}

void Trainer::Impl::run_epoch() {
  data::EpochPlanConfig plan_config;
  plan_config.num_examples = t.train_->size();
  plan_config.batch_size = o.batch_size;
  plan_config.seed = o.seed;
  plan_config.epoch = s.epoch;
  plan_config.group_by_length = o.group_by_length;
  std::vector<int64_t> lengths;
  if (o.group_by_length) lengths = t.train_->lengths();
  auto plan = std::make_shared<const data::EpochPlan>(plan_config, lengths);
  const auto windows = plan->windows(o.grad_accum);
  data::LoaderOptions loader_options;
  loader_options.start_batch = s.batch_cursor;
  loader_options.pad_id = o.pad_id;
  loader_options.max_length = o.max_length;
  loader_options.device = device;
  data::Loader loader(t.train_, plan, loader_options);
  auto params = model.parameters(true);
  for (const auto& window : windows) {
    if (window.end_batch <= s.batch_cursor) continue;  // done before the resume point
    ENSTACK_ASSERT(window.first_batch == s.batch_cursor, "resume cursor is not at a step boundary");
    double loss = 0;
    try {
      if (s.global_step + 1 == inject_oom_at_step) {
        C10_THROW_ERROR(OutOfMemoryError, "injected for testing (ENSTACK_INJECT_OOM_AT_STEP)");
      }
      loss = run_window(loader, window);
    } catch (const c10::OutOfMemoryError& e) {
      out_of_memory(e, window);
    } catch (const c10::Error& e) {
      // The CPU allocator reports exhaustion as a plain c10::Error.
      if (std::string(e.what()).find("can't allocate memory") == std::string::npos) throw;
      out_of_memory(e, window);
    }
    auto grads = defined_grads(params);
    if (scaler.enabled()) scaler.unscale(grads);
    const double norm = clip_grad_norm(params, o.max_grad_norm);
    const bool skipped = scaler.enabled() && scaler.step_was_skipped();
    const double lr = learning_rate(s.global_step);
    if (!skipped) {
      snapshot_wait_seconds += saver.wait_for_snapshots();  // a save's copy must finish before the weights change
      optimizer.step(lr);
    }
    if (scaler.enabled()) scaler.update();
    optimizer.zero_grad();
    s.batch_cursor = window.end_batch;
    if (skipped) {
      ++s.skipped_steps;
      ENSTACK_LOG_INFO("fp16 step skipped (inf/NaN gradients); loss scale now ", scaler.get_scale());
    } else {
      ++s.global_step;
      loss_sum += loss;
      norm_sum += norm;
      ++log_windows;
      after_step(lr, norm);
    }
    report_saves();
    if (s.early_stopped) return;
    check_interrupt();
  }
  s.epoch += 1;
  s.batch_cursor = 0;
  s.epochs_completed = s.epoch;
  if (swa && o.swa_every_steps == 0 && s.epoch >= swa_start_epoch(o)) update_swa();
  if (o.eval_strategy == "epoch") evaluate_and_track();
  // The last epoch's checkpoint is the run's final state; finish() need not write it again.
  if (s.epoch >= o.epochs || s.early_stopped) {
    finalize_swa();
    s.finished = true;
  }
  save(step_name(s.global_step));
  check_interrupt();
}

FitResult Trainer::Impl::finish() {
  if (!s.finished) {  // stopped early inside an epoch
    finalize_swa();
    s.finished = true;
    save(step_name(s.global_step));
  }
  saver.flush();  // the final checkpoint is on disk (and mirrored) before fit returns
  report_saves();
  result.global_step = s.global_step;
  result.epochs_completed = s.epochs_completed;
  result.early_stopped = s.early_stopped;
  result.last_eval = s.last_eval;
  result.best_eval = s.best_eval;
  result.best_metric = s.best_metric;
  if (s.best_step >= 0) result.best_dir = (t.checkpoints_dir() / "best").string();
  fill_swa_result();
  emit({{"event", "end"}, {"result", result.to_json()}});
  return result;
}

Trainer::Trainer(std::shared_ptr<model::EncoderClassifier> model, std::shared_ptr<const data::TokenStore> train,
                 std::shared_ptr<const data::TokenStore> eval, TrainerOptions options)
    : model_(std::move(model)), train_(std::move(train)), eval_(std::move(eval)), options_(std::move(options)) {
  options_.validate();
  ENSTACK_CHECK(train_ && train_->size() > 0, DataError, "the training token store is empty; check data.train.");
  ENSTACK_CHECK(train_->info().labels_per_example == 1, ConfigError,
                "multi-label training is not supported yet; use data.label_policy enstack5, binary or class.");
}

fs::path Trainer::checkpoints_dir() const { return fs::path(options_.output_dir) / "checkpoints"; }

FitResult Trainer::fit(bool resume, const Callback& callback) {
  SigintGuard sigint;
  model_->to(torch::Device(options_.device));
  Impl impl(*this, callback);
  impl.begin(resume);
  if (impl.s.finished) {
    ENSTACK_LOG_INFO("this run already finished (step ", impl.s.global_step, "); nothing to do");
    impl.result.global_step = impl.s.global_step;
    impl.result.epochs_completed = impl.s.epochs_completed;
    impl.result.best_metric = impl.s.best_metric;
    impl.result.last_eval = impl.s.last_eval;
    impl.result.best_eval = impl.s.best_eval;
    if (impl.s.best_step >= 0) impl.result.best_dir = (checkpoints_dir() / "best").string();
    impl.fill_swa_result();
    return impl.result;
  }
  impl.emit({{"event", "begin"}, {"step", impl.s.global_step}, {"total_steps", impl.total_steps},
             {"resumed", impl.result.resumed}, {"epoch", impl.s.epoch}, {"batch_cursor", impl.s.batch_cursor}});
  while (impl.s.epoch < options_.epochs && !impl.s.early_stopped) impl.run_epoch();
  return impl.finish();
}

}  // namespace enstack::train
