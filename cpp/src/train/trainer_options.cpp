// TrainerOptions validation and JSON, FitResult JSON, and the trainer's
// evaluation/prediction passes (see enstack/train/trainer.h).
#include <ATen/autocast_mode.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "enstack/data/epoch_plan.h"
#include "enstack/data/loader.h"
#include "enstack/train/trainer.h"
#include "enstack/util/error.h"

namespace enstack::train {

void TrainerOptions::validate() const {
  std::ostringstream p;
  auto need = [&](bool ok, const std::string& what) {
    if (!ok) p << "\n  - " << what;
  };
  need(!output_dir.empty(), "run.output_dir must be set");
  need(epochs >= 1, "train.epochs must be at least 1");
  need(batch_size >= 1, "train.batch_size must be at least 1");
  need(grad_accum >= 1, "train.grad_accum must be at least 1");
  need(learning_rate > 0 && learning_rate < 1, "train.learning_rate must be in (0, 1)");
  need(precision == "fp32" || precision == "bf16" || precision == "fp16", "train.precision must be fp32, bf16 or fp16");
  need(eval_strategy == "epoch" || eval_strategy == "steps", "train.eval_strategy must be epoch or steps");
  need(eval_strategy != "steps" || eval_steps >= 1, "train.eval_steps must be set with eval_strategy steps");
  need(save_total_limit >= 1, "train.save_total_limit must be at least 1");
  need(std::isfinite(save_minutes) && save_minutes >= 0, "train.save_minutes must be >= 0 (0: off)");
  need(patience >= 0, "train.early_stopping.patience must not be negative");
  need(best_model_dtype == "fp32" || best_model_dtype == "fp16", "train.best_model_dtype must be fp32 or fp16");
  need(swa_start_epoch >= 0 && swa_start_epoch <= epochs, "train.swa.start_epoch must be in 1..epochs");
  need(swa_every_steps >= 0, "train.swa.every_steps must not be negative");
  need(swa_lr >= 0 && swa_lr < 1, "train.swa.lr must be in (0, 1)");
  need(std::isfinite(loss_scale) && loss_scale > 0, "train.loss_scale must be a positive number");
  need(std::isfinite(mirror_lease_seconds) && mirror_lease_seconds > 0, "run.mirror_lease_seconds must be > 0");
  const std::string text = p.str();
  ENSTACK_CHECK(text.empty(), ConfigError, "invalid training options:", text);
}

TrainerOptions TrainerOptions::from_json(const nlohmann::json& j) {
  TrainerOptions o;
  auto get = [&](const char* key, auto& field) {
    if (j.contains(key) && !j[key].is_null()) field = j[key].get<std::decay_t<decltype(field)>>();
  };
  try {
    get("output_dir", o.output_dir);
    get("seed", o.seed);
    get("num_threads", o.num_threads);
    get("device", o.device);
    get("epochs", o.epochs);
    get("batch_size", o.batch_size);
    get("grad_accum", o.grad_accum);
    get("learning_rate", o.learning_rate);
    get("weight_decay", o.weight_decay);
    get("warmup_ratio", o.warmup_ratio);
    get("warmup_steps", o.warmup_steps);
    get("lr_schedule", o.lr_schedule);
    get("max_grad_norm", o.max_grad_norm);
    get("precision", o.precision);
    get("eval_strategy", o.eval_strategy);
    get("eval_steps", o.eval_steps);
    get("save_steps", o.save_steps);
    get("save_minutes", o.save_minutes);
    get("auto_microbatch", o.auto_microbatch);
    get("save_total_limit", o.save_total_limit);
    get("logging_steps", o.logging_steps);
    get("metric_for_best", o.metric_for_best);
    get("greater_is_better", o.greater_is_better);
    get("patience", o.patience);
    get("threshold", o.threshold);
    get("group_by_length", o.group_by_length);
    get("pad_id", o.pad_id);
    get("max_length", o.max_length);
    get("label_names", o.label_names);
    get("config_fingerprint", o.config_fingerprint);
    get("allow_changes", o.allow_changes);
    get("mirror_dir", o.mirror_dir);
    get("mirror_lease_seconds", o.mirror_lease_seconds);
    get("async_save", o.async_save);
    get("save_coalesce", o.save_coalesce);
    get("best_model_dtype", o.best_model_dtype);
    get("swa_enabled", o.swa_enabled);
    get("swa_start_epoch", o.swa_start_epoch);
    get("swa_every_steps", o.swa_every_steps);
    get("swa_lr", o.swa_lr);
    get("loss_scale", o.loss_scale);
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(util::str_cat("a training option has the wrong type: ", e.what()));
  }
  return o;
}

nlohmann::json FitResult::to_json() const {
  return {{"global_step", global_step}, {"epochs_completed", epochs_completed}, {"early_stopped", early_stopped},
          {"resumed", resumed}, {"last_eval", last_eval}, {"best_eval", best_eval},
          {"best_metric", std::isnan(best_metric) ? nlohmann::json(nullptr) : nlohmann::json(best_metric)},
          {"best_dir", best_dir}, {"last_checkpoint", last_checkpoint}, {"swa_eval", swa_eval},
          {"swa_dir", swa_dir}, {"swa_count", swa_count}, {"save_errors", save_errors},
          {"last_save_error", last_save_error}, {"best_saved_step", best_saved_step}};
}

torch::Tensor Trainer::predict(const data::TokenStore& store, int64_t batch_size, Output output) {
  torch::NoGradGuard no_grad;
  model_->eval();
  // Longest first: similar lengths share a batch, and memory peaks on the first batch.
  const auto lengths = store.lengths();
  std::vector<int64_t> order(lengths.size());
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });
  auto plan = std::make_shared<const data::EpochPlan>(batch_size > 0 ? batch_size : options_.batch_size * 2, order);
  data::LoaderOptions loader_options;
  loader_options.pad_id = options_.pad_id;
  loader_options.max_length = options_.max_length;
  auto shared = std::shared_ptr<const data::TokenStore>(&store, [](const data::TokenStore*) {});
  data::Loader loader(shared, plan, loader_options);
  const torch::Device device(options_.device);
  torch::Tensor out;
  int64_t done = 0;
  while (auto batch = loader.next()) {
    torch::Tensor logits;
    {
      const bool on = options_.precision != "fp32";
      at::autocast::set_autocast_enabled(device.type(), on);
      if (on) at::autocast::set_autocast_dtype(device.type(), options_.precision == "bf16" ? at::kBFloat16 : at::kHalf);
      logits = model_->forward(batch->input_ids.to(device), batch->attention_mask.to(device));
      at::autocast::set_autocast_enabled(device.type(), false);
      if (on) at::autocast::clear_cache();
    }
    logits = logits.to(torch::kFloat);
    auto values = (output == Output::kLogits ? logits : torch::softmax(logits, 1)).cpu();
    if (!out.defined()) out = torch::empty({store.size(), values.size(1)}, torch::kFloat);
    const auto rows = torch::from_blob(order.data() + done, {values.size(0)}, torch::kLong);
    out.index_copy_(0, rows, values);
    done += values.size(0);
  }
  return out;
}

ClassificationMetrics Trainer::evaluate(const data::TokenStore& store) {
  auto probs = predict(store).contiguous();
  std::vector<int64_t> labels(store.size());
  for (int64_t i = 0; i < store.size(); ++i) labels[i] = store.labels(i)[0];
  const int64_t classes = probs.size(1);
  std::vector<float> p(probs.data_ptr<float>(), probs.data_ptr<float>() + probs.numel());
  auto metrics = compute_metrics(p, labels, classes);
  // Mean cross-entropy from the probabilities.
  auto y = torch::tensor(labels, torch::kLong);
  metrics.loss = -probs.clamp_min(1e-12).log().gather(1, y.unsqueeze(1)).mean().item<double>();
  return metrics;
}

}  // namespace enstack::train
