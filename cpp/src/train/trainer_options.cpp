// TrainerOptions validation and JSON, FitResult JSON, and the trainer's
// evaluation/prediction passes (see enstack/train/trainer.h).
#include <ATen/autocast_mode.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "enstack/data/epoch_plan.h"
#include "enstack/data/loader.h"
#include "enstack/train/distributed.h"
#include "enstack/train/trainer.h"
#include "enstack/util/error.h"
#include "trainer_impl.h"

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
  need(save_total_limit == -1 || save_total_limit >= 1, "train.save_total_limit must be at least 1 (null: keep all)");
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

// Every option once: its JSON key, its field, and whether null means "off" (the field's
// off value below) or is refused. from_json, to_json and the list of known keys all
// come from this table.
#define ENSTACK_TRAINER_OPTIONS(X)                                                         \
  X(output_dir, false) X(seed, false) X(num_threads, false) X(device, false) X(epochs, false) \
  X(batch_size, false) X(grad_accum, false) X(learning_rate, false) X(weight_decay, false)   \
  X(warmup_ratio, false) X(warmup_steps, true) X(lr_schedule, false) X(max_grad_norm, false) \
  X(precision, false) X(loss_scale, false) X(eval_strategy, false) X(eval_steps, true)       \
  X(save_steps, true) X(save_minutes, true) X(save_total_limit, true) X(logging_steps, false)  \
  X(auto_microbatch, false) X(metric_for_best, true) X(greater_is_better, false)              \
  X(patience, true) X(threshold, false) X(group_by_length, false) X(pad_id, false)            \
  X(max_length, false) X(label_names, false) X(config_fingerprint, false)                     \
  X(allow_changes, false) X(mirror_dir, true) X(mirror_lease_seconds, false)                  \
  X(async_save, false) X(save_coalesce, false) X(best_model_dtype, false)                     \
  X(swa_enabled, false) X(swa_start_epoch, true) X(swa_every_steps, true) X(swa_lr, true)

namespace {
// What null means for the nullable options; refused where there is none.
TrainerOptions off_values() {
  TrainerOptions off;
  off.warmup_steps = 0;
  off.eval_steps = 0;
  off.save_steps = 0;
  off.save_minutes = 0;
  off.save_total_limit = -1;  // keep every step checkpoint
  off.metric_for_best = "";   // no best/ tracking, no early stopping
  off.patience = 0;
  off.mirror_dir = "";
  off.swa_start_epoch = 0;  // at 75% of the epochs
  off.swa_every_steps = 0;  // once at the end of each epoch
  off.swa_lr = 0;           // no annealing
  return off;
}
}  // namespace

std::vector<std::string> TrainerOptions::keys() {
  std::vector<std::string> out;
#define ENSTACK_KEY(name, nullable) out.emplace_back(#name);
  ENSTACK_TRAINER_OPTIONS(ENSTACK_KEY)
#undef ENSTACK_KEY
  return out;
}

TrainerOptions TrainerOptions::from_json(const nlohmann::json& j) {
  ENSTACK_CHECK(j.is_object(), ConfigError, "the training options must be a JSON object, not ", j.type_name());
  const auto known = keys();
  std::ostringstream problems;
  for (const auto& [key, value] : j.items()) {
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      problems << "\n  - unknown training option '" << key << "'";
    }
  }
  TrainerOptions o;
  const TrainerOptions off = off_values();
  auto get = [&](const char* key, bool nullable, auto& field, const auto& off_value) {
    if (!j.contains(key)) return;
    const auto& v = j.at(key);
    if (v.is_null()) {
      if (nullable) {
        field = off_value;
      } else {
        problems << "\n  - training option '" << key << "' must not be null";
      }
      return;
    }
    try {
      field = v.get<std::decay_t<decltype(field)>>();
    } catch (const nlohmann::json::exception&) {
      problems << "\n  - training option '" << key << "' has the wrong type (" << v.type_name() << ": " << v.dump()
               << ")";
    }
  };
#define ENSTACK_GET(name, nullable) get(#name, nullable, o.name, off.name);
  ENSTACK_TRAINER_OPTIONS(ENSTACK_GET)
#undef ENSTACK_GET
  const std::string text = problems.str();
  ENSTACK_CHECK(text.empty(), ConfigError, "invalid training options:", text);
  return o;
}

nlohmann::json TrainerOptions::to_json() const {
  nlohmann::json j = nlohmann::json::object();
  const TrainerOptions off = off_values();
#define ENSTACK_PUT(name, nullable) \
  j[#name] = (nullable && name == off.name) ? nlohmann::json(nullptr) : nlohmann::json(name);
  ENSTACK_TRAINER_OPTIONS(ENSTACK_PUT)
#undef ENSTACK_PUT
  return j;
}

#undef ENSTACK_TRAINER_OPTIONS

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
  const int64_t size = batch_size > 0 ? batch_size : options_.batch_size * 2;
  const data::EpochPlan global(size, order);
  // Under torch.distributed, batch k runs on rank k % world, exactly as one process would
  // run it (the same examples padded the same way), and the results are gathered.
  const int world = dist_ ? dist_->world_size() : 1, rank = dist_ ? dist_->rank() : 0;
  std::vector<std::vector<int64_t>> shares(world);
  for (int64_t k = 0; k < global.num_batches(); ++k) {
    const auto batch = global.batch_view(k);
    shares[k % world].insert(shares[k % world].end(), batch.begin(), batch.end());
  }
  auto plan = world == 1 ? std::make_shared<const data::EpochPlan>(global)
                         : std::make_shared<const data::EpochPlan>(
                               data::EpochPlan::of_indices(size, shares[rank], store.size()));
  data::LoaderOptions loader_options;
  loader_options.pad_id = options_.pad_id;
  loader_options.max_length = options_.max_length;
  auto shared = std::shared_ptr<const data::TokenStore>(&store, [](const data::TokenStore*) {});
  data::Loader loader(shared, plan, loader_options);
  const torch::Device device(options_.device);
  const int64_t classes = model_->config().num_labels();
  auto local = torch::empty({static_cast<int64_t>(shares[rank].size()), classes}, torch::kFloat);
  int64_t done = 0;
  while (auto batch = loader.next()) {
    torch::Tensor logits;
    {
      AutocastGuard autocast(options_.precision, device.type());
      logits = model_->forward(batch->input_ids.to(device), batch->attention_mask.to(device));
    }
    logits = logits.to(torch::kFloat);
    auto values = (output == Output::kLogits ? logits : torch::softmax(logits, 1)).cpu();
    local.narrow(0, done, values.size(0)).copy_(values);
    done += values.size(0);
  }
  auto out = torch::empty({store.size(), classes}, torch::kFloat);
  auto place = [&](const std::vector<int64_t>& rows, const torch::Tensor& values) {
    if (rows.empty()) return;
    const auto index = torch::tensor(rows, torch::kLong);
    out.index_copy_(0, index, values.narrow(0, 0, static_cast<int64_t>(rows.size())));
  };
  if (world == 1) {
    place(shares[0], local);
    return out;
  }
  std::size_t most = 0;
  for (const auto& share : shares) most = std::max(most, share.size());
  auto padded = torch::zeros({static_cast<int64_t>(most), classes}, torch::kFloat);
  padded.narrow(0, 0, local.size(0)).copy_(local);
  const auto gathered = dist_->all_gather(padded);
  for (int r = 0; r < world; ++r) place(shares[r], gathered[r].cpu());
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
