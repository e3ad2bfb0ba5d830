// The training loop (see enstack/train/trainer.h). One loop, read top to bottom:
// for each optimizer-step window of each epoch, run its micro-batches, step,
// then the "every N steps" blocks (log, evaluate, save, stop?).
#include "enstack/train/trainer.h"

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <tuple>
#include <utility>

#include "enstack/data/epoch_plan.h"
#include "enstack/train/clip.h"
#include "enstack/util/clock.h"
#include "enstack/util/error.h"
#include "enstack/util/files.h"
#include "enstack/util/logging.h"
#include "enstack/util/run_lock.h"
#include "trainer_impl.h"

namespace enstack::train {
namespace {

std::atomic<int> g_stop_signal{0};
extern "C" void on_stop_signal(int sig) { g_stop_signal.store(sig); }

// Ctrl-C (Colab's Interrupt, SIGINT) and SIGTERM (preemption, `kill`, a runtime
// shutting down) set a flag that the loop reads at step boundaries.
class StopSignalGuard {
 public:
  StopSignalGuard() {
    g_stop_signal.store(0);
    struct sigaction action {};
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    for (int i = 0; i < 2; ++i) installed_[i] = ::sigaction(kSignals[i], &action, &previous_[i]) == 0;
  }
  ~StopSignalGuard() {
    for (int i = 0; i < 2; ++i) {
      if (installed_[i]) ::sigaction(kSignals[i], &previous_[i], nullptr);
    }
  }

 private:
  static constexpr int kSignals[2] = {SIGINT, SIGTERM};
  struct sigaction previous_[2] {};
  bool installed_[2] = {false, false};
};

std::vector<torch::Tensor> defined_grads(const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> grads;
  for (const auto& p : params) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  return grads;
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

}  // namespace

void Trainer::Impl::begin(bool resume) {
  if (o.num_threads > 0) at::set_num_threads(o.num_threads);
  s.num_threads = at::get_num_threads();
  s.train_fingerprint = t.train_->info().fingerprint;
  s.eval_fingerprint = t.eval_ ? t.eval_->info().fingerprint : "";
  s.config_fingerprint = o.config_fingerprint;
  s.world_size = dist ? dist->world_size() : 1;
  const auto found = resume ? find_resume_checkpoint(checkpoint_roots()) : std::nullopt;
  if (dist) {  // every rank must continue from the same checkpoint (they read the same directory)
    const int64_t step = found ? TrainerState::from_json(nlohmann::json::parse(
                                     util::read_file<CheckpointError>(*found / kStateFile))["state"]).global_step
                               : -1;
    const auto steps = dist->all_gather(torch::tensor({step}, torch::kLong));
    for (int r = 0; r < dist->world_size(); ++r) {
      ENSTACK_CHECK(steps[r].item<int64_t>() == step, CheckpointError, "rank ", dist->rank(), " resumes from step ",
                    step, " but rank ", r, " from step ", steps[r].item<int64_t>(), ": the ranks do not see the "
                    "same checkpoints. Put run.output_dir on storage every rank reads (one machine, or a shared "
                    "file system).");
    }
  }
  if (!found) {
    ENSTACK_LOG_INFO("training from the start: ", o.epochs, " epochs x ", windows_per_epoch, " steps (",
                     t.train_->size(), " examples, batch ", o.batch_size, " x accumulation ", o.grad_accum, ")");
    return;
  }
  const TrainerState saved =
      load_full_checkpoint(*found, model, optimizer, scaler, swa.get(), device, dist ? dist->rank() : 0);
  if (writes) restore_from_mirror();
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
  s.world_size = dist ? dist->world_size() : 1;
  if (saved.world_size != s.world_size) {
    ENSTACK_LOG_INFO("the checkpoint was written by ", saved.world_size, " data-parallel rank(s), this run has ",
                     s.world_size, ": the global batch of ", o.batch_size, " and its order are unchanged");
  }
  result.resumed = true;
  if (s.finished) return;  // fit() says the run is done; there is no position to report
  const int64_t batches = (t.train_->size() + o.batch_size - 1) / o.batch_size;
  ENSTACK_LOG_INFO("resuming from ", found->string(), ": epoch ", s.epoch + 1, "/", o.epochs, ", batch ",
                   s.batch_cursor, "/", batches, " (", util::str_cat(std::round(1000.0 * s.batch_cursor / batches) / 10),
                   "%), ", batches - s.batch_cursor, " to go; optimizer step ", s.global_step);
  if (!s.imported_from.is_null()) {
    ENSTACK_LOG_INFO("this run continues a checkpoint imported from ", s.imported_from.value("path", std::string("?")),
                     "; the data order before the import is not the one enstack replays");
  }
}

std::vector<data::Batch> Trainer::Impl::take_window(data::Loader& loader, const data::StepWindow& window) {
  std::vector<data::Batch> batches;
  // Under torch.distributed a rank's plan may lack the last batch (its share of a short
  // last global batch is empty).
  const int64_t end = std::min(window.end_batch, loader.plan().num_batches());
  for (int64_t b = window.first_batch; b < end; ++b) {
    auto batch = loader.next();
    ENSTACK_ASSERT(batch && batch->index == b, "loader out of step with the plan");
    ENSTACK_CHECK(batch->labels.dim() == 1, ConfigError, "multi-label training is not supported yet; use "
                  "data.label_policy enstack5, binary or class.");
    batches.push_back(std::move(*batch));
  }
  return batches;
}

double Trainer::Impl::run_window(const std::vector<data::Batch>& batches, const data::StepWindow& window) {
  model.train();
  torch::Tensor window_loss = torch::zeros({}, torch::kDouble);
  int64_t micro_left = 0;  // micro-batches of this window still to run on this rank
  for (const auto& batch : batches) {  // as the loop below cuts them
    const int64_t rows = batch.input_ids.size(0), per = (rows + s.microbatch_splits - 1) / s.microbatch_splits;
    if (rows > 0) micro_left += (rows + per - 1) / per;
  }
  if (dist && micro_left == 0) dist->begin_sync();  // nothing here: contribute zeros
  for (const auto& batch : batches) {
    auto all_ids = batch.input_ids.to(device), all_mask = batch.attention_mask.to(device);
    auto all_labels = batch.labels.to(device);
    const int64_t rows = all_ids.size(0);
    const int64_t per = (rows + s.microbatch_splits - 1) / s.microbatch_splits;
    for (int64_t first = 0; first < rows; first += per) {
      const int64_t n = std::min(per, rows - first);
      auto ids = all_ids.narrow(0, first, n), mask = all_mask.narrow(0, first, n);
      if (s.microbatch_splits > 1) {  // a micro-batch is padded to its own longest example (right padding)
        const int64_t longest = mask.sum(1).max().item<int64_t>();
        ids = ids.narrow(1, 0, longest);
        mask = mask.narrow(1, 0, longest);
      }
      torch::Tensor logits;
      {
        AutocastGuard autocast(o.precision, device.type());
        logits = model.forward(ids, mask);
      }
      // Sum of per-sample losses over the whole window's sample count: exact accumulation.
      auto loss = at::cross_entropy_loss(logits.to(torch::kFloat), all_labels.narrow(0, first, n), {},
                                         at::Reduction::Sum) / static_cast<double>(window.num_samples);
      if (dist && --micro_left == 0) dist->begin_sync();  // the window's last backward: reduce as it goes
      scaler.scale(loss).backward();
      window_loss += loss.detach().to(torch::kCPU, torch::kDouble);
    }
  }
  if (dist) {
    dist->finish_sync();
    dist->all_reduce(window_loss);  // the global window's loss, for the log
  }
  const double value = window_loss.item<double>();
  ENSTACK_CHECK(std::isfinite(value) || scaler.enabled(), Error, "the training loss is ", value, " at step ",
                s.global_step, ". Lower train.learning_rate, check the data, or use precision fp32; the last "
                "checkpoint is intact.");
  for (const auto& batch : batches) log_tokens += batch.real_tokens;  // this rank's
  log_samples += window.num_samples;  // the global window's (all ranks')
  return value;
}

void Trainer::Impl::shrink_microbatch(const c10::Error& e, const std::vector<data::Batch>& batches,
                                      const data::StepWindow& window) {
  int64_t largest = 0;
  for (const auto& batch : batches) largest = std::max<int64_t>(largest, batch.input_ids.size(0));
  const int64_t rows = (largest + s.microbatch_splits - 1) / s.microbatch_splits;
  // Under torch.distributed a retry is possible only before this rank joined the window's
  // all-reduce (the other ranks wait in it); later it ends the run on every rank.
  if (!o.auto_microbatch || rows <= 1 || (dist && dist->communicated())) out_of_memory(e, window);
  if (dist) dist->abandon_sync();
  optimizer.zero_grad();  // the failed attempt's partial gradients
  if (device.is_cuda()) at::accelerator::emptyCache();
  s.microbatch_splits *= 2;
  const int64_t now = (largest + s.microbatch_splits - 1) / s.microbatch_splits;
  ENSTACK_LOG_WARN("out of memory at optimizer step ", s.global_step + 1, ": each batch of ", o.batch_size,
                   " now runs as ", s.microbatch_splits, " micro-batches of up to ", now, " examples for the rest "
                   "of the run (the update is the same; train.auto_microbatch: false stops instead). Device "
                   "message: ", e.what_without_backtrace());
  emit({{"event", "microbatch"}, {"step", s.global_step + 1}, {"microbatch_splits", s.microbatch_splits},
        {"microbatch_size", now}});
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
    if (dist) {
      record["world_size"] = dist->world_size();
      record["allreduce_wait_seconds"] = dist->take_exposed_seconds();  // not hidden behind backward
    }
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
  const bool step_due = o.save_steps > 0 && s.global_step % o.save_steps == 0;
  // Under torch.distributed rank 0's clock decides, agreed at the last step boundary.
  const bool time_due = dist ? std::exchange(time_due_agreed, false) : save_time_due();
  if (step_due || time_due) save(step_dir_name(s.global_step));
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

bool Trainer::Impl::save_time_due() const {
  return o.save_minutes > 0 && util::monotonic_seconds() - last_save_time >= 60.0 * o.save_minutes;
}

void Trainer::Impl::check_interrupt() {
  const int sig = g_stop_signal.load();
  bool stop = sig != 0 || stop_requested;
  if (dist) std::tie(stop, time_due_agreed) = agree(stop, save_time_due());
  if (!stop) return;
  save(kRecoveryDir);
  saver.flush();
  report_saves();
  const char* why = sig == SIGTERM ? "stopped by SIGTERM"
                    : (sig == 0 && !stop_requested) ? "stopped with another rank" : "interrupted";
  throw Interrupted(util::str_cat("training ", why, " at step ", s.global_step, "; state saved to ",
                                  (t.checkpoints_dir() / kRecoveryDir).string(), ". fit(resume=True) continues."),
                    sig);
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
  const auto windows = plan->windows(o.grad_accum);  // of the global batches: the same on every rank
  if (dist) plan = rank_plan(*plan, dist->rank(), dist->world_size());
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
    const auto batches = take_window(loader, window);
    double loss = 0;
    for (bool done = false; !done;) {
      try {
        if (s.global_step + 1 == inject_oom_at_step) {
          inject_oom_at_step = -1;  // once: a retry with smaller micro-batches goes through
          C10_THROW_ERROR(OutOfMemoryError, "injected for testing (ENSTACK_INJECT_OOM_AT_STEP)");
        }
        loss = run_window(batches, window);
        done = true;
      } catch (const c10::OutOfMemoryError& e) {
        shrink_microbatch(e, batches, window);
      } catch (const c10::Error& e) {
        // The CPU allocator reports exhaustion as a plain c10::Error.
        if (std::string(e.what()).find("can't allocate memory") == std::string::npos) throw;
        shrink_microbatch(e, batches, window);
      }
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
  save(step_dir_name(s.global_step));
  check_interrupt();
}

FitResult Trainer::Impl::finish() {
  if (!s.finished) {  // stopped early inside an epoch
    finalize_swa();
    s.finished = true;
    save(step_dir_name(s.global_step));
  }
  saver.flush();  // the final checkpoint is on disk (and mirrored) before fit returns
  report_saves();
  if (dist) dist->barrier();  // ... for every rank
  result.global_step = s.global_step;
  result.epochs_completed = s.epochs_completed;
  result.early_stopped = s.early_stopped;
  result.last_eval = s.last_eval;
  result.best_eval = s.best_eval;
  result.best_metric = s.best_metric;
  fill_saved_result();
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

fs::path Trainer::checkpoints_dir() const { return fs::path(options_.output_dir) / kCheckpointsDir; }

void Trainer::set_distributed(std::shared_ptr<Distributed> distributed) {
  if (distributed && distributed->world_size() > 1) {
    ENSTACK_CHECK(options_.batch_size % distributed->world_size() == 0, ConfigError, "train.batch_size ",
                  options_.batch_size, " is the global batch and must divide among the ", distributed->world_size(),
                  " ranks; use a multiple of ", distributed->world_size(), " (e.g. ",
                  (options_.batch_size / distributed->world_size() + 1) * distributed->world_size(), ").");
    dist_ = std::move(distributed);
  } else {
    dist_.reset();
  }
}

FitResult Trainer::fit(bool resume, const Callback& callback, bool take_over_mirror) {
  if (!dist_) return fit_local(resume, callback, take_over_mirror);
  try {
    return fit_local(resume, callback, take_over_mirror);
  } catch (const DistributedError&) {
    throw;  // another rank's failure, already recorded
  } catch (const Interrupted&) {
    throw;  // every rank stops together
  } catch (const std::exception& e) {
    dist_->report_failure(e.what());
    throw;
  }
}

FitResult Trainer::fit_local(bool resume, const Callback& callback, bool take_over_mirror) {
  std::optional<util::RunLock> run_lock;  // one process writes the run: rank 0
  if (!dist_ || dist_->rank() == 0) run_lock.emplace(options_.output_dir, "training");
  StopSignalGuard stop_signals;
  model_->to(torch::Device(options_.device));
  struct Hooks {
    Distributed* d;
    ~Hooks() {
      if (d) d->detach();
    }
  } hooks{dist_.get()};
  if (dist_) {
    std::vector<torch::Tensor> params;
    for (const auto& item : model_->named_parameters(true)) params.push_back(item.value());
    dist_->attach(params);
  }
  Impl impl(*this, callback, take_over_mirror);
  impl.begin(resume);
  if (impl.s.finished) {
    ENSTACK_LOG_INFO("this run already finished (step ", impl.s.global_step, "); nothing to do");
    impl.result.global_step = impl.s.global_step;
    impl.result.epochs_completed = impl.s.epochs_completed;
    impl.result.best_metric = impl.s.best_metric;
    impl.result.last_eval = impl.s.last_eval;
    impl.result.best_eval = impl.s.best_eval;
    impl.fill_saved_result();
    impl.fill_swa_result();
    return impl.result;
  }
  impl.emit({{"event", "begin"}, {"step", impl.s.global_step}, {"total_steps", impl.total_steps},
             {"resumed", impl.result.resumed}, {"epoch", impl.s.epoch}, {"batch_cursor", impl.s.batch_cursor},
             {"microbatch_splits", impl.s.microbatch_splits}});
  while (impl.s.epoch < options_.epochs && !impl.s.early_stopped) impl.run_epoch();
  return impl.finish();
}

}  // namespace enstack::train
