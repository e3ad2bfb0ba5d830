// What the training loop writes (see trainer_impl.h): evaluations and the best
// model, checkpoints and the saver's reports, the SWA model, and the recovery
// checkpoint after running out of memory; and the resume-side mirror restore.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>

#include <cmath>
#include <mutex>

#include "enstack/model/weights.h"
#include "enstack/util/error.h"
#include "enstack/util/files.h"
#include "enstack/util/logging.h"
#include "trainer_impl.h"

namespace enstack::train {

nlohmann::json Trainer::Impl::options_json() const {
  return {{"epochs", o.epochs}, {"batch_size", o.batch_size}, {"grad_accum", o.grad_accum},
          {"learning_rate", o.learning_rate}, {"seed", o.seed}, {"precision", o.precision},
          {"lr_schedule", o.lr_schedule}, {"total_steps", total_steps}, {"warmup_steps", warmup},
          {"train_examples", t.train_->size()}, {"batches_per_epoch", (t.train_->size() + o.batch_size - 1) / o.batch_size},
          {"steps_per_epoch", windows_per_epoch}, {"swa_enabled", o.swa_enabled}};
}

void Trainer::Impl::restore_from_mirror() {
  if (o.mirror_dir.empty()) return;
  for (const char* name : {kBestDir, kSwaDir}) {
    const fs::path local = t.checkpoints_dir() / name, mirrored = fs::path(o.mirror_dir) / kCheckpointsDir / name;
    if (fs::exists(local / ckpt::kManifestName) || !fs::exists(mirrored / ckpt::kManifestName)) continue;
    try {
      ckpt::copy_checkpoint(mirrored, local);
      ENSTACK_LOG_INFO("restored ", local.string(), " from the mirror");
    } catch (const std::exception& e) {
      ENSTACK_LOG_WARN("could not restore ", local.string(), " from the mirror: ", e.what());
    }
  }
}

void Trainer::Impl::evaluate_and_track() {
  if (!t.eval_) return;
  const auto metrics = t.evaluate(*t.eval_);
  auto record = metrics.to_json(o.label_names);
  record["step"] = s.global_step;
  record["epoch"] = s.epoch;
  if (writes) {
    fs::create_directories(fs::path(o.output_dir) / "metrics");
    util::write_file_atomic(fs::path(o.output_dir) / "metrics" / util::str_cat("eval-step-", s.global_step, ".json"),
                            record.dump(2));
  }
  s.last_eval = record;
  if (o.metric_for_best.empty()) {  // train.metric_for_best: null: no best/ and no early stopping
    ENSTACK_LOG_INFO("eval at step ", s.global_step, ": loss ", metrics.loss, ", accuracy ", metrics.accuracy);
    emit({{"event", "eval"}, {"step", s.global_step}, {"metrics", record}, {"best", false}});
    return;
  }
  const double value = metrics.get(o.metric_for_best);
  const bool first = std::isnan(s.best_metric);
  const bool improved = first || (o.greater_is_better ? value > s.best_metric + o.threshold
                                                      : value < s.best_metric - o.threshold);
  if (improved) {
    s.best_metric = value;
    s.best_step = s.global_step;
    s.best_eval = record;
    s.patience_counter = 0;
    if (writes) saver.submit(snapshot_model(model, s.global_step, o.best_model_dtype == "fp16",
                                {{"metric", o.metric_for_best}, {"value", value}}, &saver.pool()),
                 t.checkpoints_dir() / kBestDir);
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

std::map<std::string, torch::Tensor> Trainer::Impl::gather_rank_rng() {
  std::map<std::string, torch::Tensor> out;
  if (!dist) return out;
  torch::Tensor cpu;
  {
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    cpu = generator.get_state();
  }
  const auto states = dist->all_gather(cpu);
  for (int r = 1; r < dist->world_size(); ++r) out.emplace(util::str_cat(kRngKey, kRankSuffix, r), states[r]);
  if (device.is_cuda()) {
    torch::Tensor cuda;
    {
      auto generator = at::globalContext().defaultGenerator(device);
      std::lock_guard<std::mutex> lock(generator.mutex());
      cuda = generator.get_state();
    }
    const auto cuda_states = dist->all_gather(cuda);
    for (int r = 1; r < dist->world_size(); ++r) {
      out.emplace(util::str_cat(kCudaRngKey, kRankSuffix, r), cuda_states[r]);
    }
  }
  return out;
}

void Trainer::Impl::save(const std::string& name) {
  last_save_time = util::monotonic_seconds();
  auto rank_rng = gather_rank_rng();  // every rank takes part; rank 0 writes
  if (!writes) return;
  const auto start = std::chrono::steady_clock::now();
  auto snapshot = snapshot_full_checkpoint(model, optimizer, scaler, swa.get(), s, options_json(), device,
                                           &saver.pool(), rank_rng);
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
    if (e.kind == Kind::kSaved && (dir.rfind(kStepPrefix, 0) == 0 || dir == kRecoveryDir)) result.last_checkpoint = e.path;
    if (e.kind == Kind::kSaveFailed) {
      ++result.save_errors;
      result.last_save_error = e.error;
    }
    emit(record);
  }
}

[[noreturn]] void Trainer::Impl::out_of_memory(const c10::Error& e, const data::StepWindow& window) {
  // The step did not happen: drop its partial gradients and save the state before it.
  optimizer.zero_grad();
  if (device.is_cuda()) at::accelerator::emptyCache();
  std::string saved = "nothing could be saved";
  try {
    // Under torch.distributed the other ranks are inside the step: no collective save is
    // possible, and the run resumes from its newest checkpoint.
    if (dist) throw Error("data-parallel ranks cannot save outside a step boundary");
    save(kRecoveryDir);
    saver.flush();
    report_saves();
    saved = "the state before this step is in " + (t.checkpoints_dir() / kRecoveryDir).string();
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

void Trainer::Impl::fill_saved_result() {
  const fs::path best = t.checkpoints_dir() / kBestDir;
  result.best_dir.clear();
  result.best_saved_step = -1;
  if (fs::exists(best / ckpt::kManifestName)) {
    try {
      result.best_saved_step = verify_checkpoint(best).step;
      result.best_dir = best.string();
    } catch (const CheckpointError& e) {
      ENSTACK_LOG_WARN("the best model in ", best.string(), " is not valid: ", e.what());
    }
  }
  if (result.last_checkpoint.empty()) {
    try {
      if (auto found = find_resume_checkpoint({t.checkpoints_dir()})) result.last_checkpoint = found->string();
    } catch (const CheckpointError&) {
      // none valid: last_checkpoint stays empty and save_errors says why
    }
  }
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
      if (writes) {
        fs::create_directories(fs::path(o.output_dir) / "metrics");
        util::write_file_atomic(fs::path(o.output_dir) / "metrics" / "eval-swa.json", record.dump(2));
      }
      s.swa_eval = record;
      if (!o.metric_for_best.empty()) {
        extra["metric"] = o.metric_for_best;
        extra["value"] = metrics.get(o.metric_for_best);
      }
      ENSTACK_LOG_INFO("SWA model (", swa->count(), " snapshots): loss ", metrics.loss, ", accuracy ",
                       metrics.accuracy, s.best_eval.is_null() ? "" : util::str_cat(" (best checkpoint: ",
                       o.metric_for_best, " ", s.best_metric, ")"));
      emit({{"event", "swa_eval"}, {"step", s.global_step}, {"metrics", record}});
    }
    if (writes) {
      saver.submit(snapshot_model(model, s.global_step, o.best_model_dtype == "fp16", extra, &saver.pool()),
                   t.checkpoints_dir() / kSwaDir);
    }
    snapshot_wait_seconds += saver.wait_for_snapshots();  // the copy reads the swapped-in weights
  } catch (...) {
    saver.wait_for_snapshots();
    swa->swap_with_parameters();
    throw;
  }
  swa->swap_with_parameters();
}

}  // namespace enstack::train
