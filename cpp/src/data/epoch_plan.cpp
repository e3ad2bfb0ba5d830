// Implements EpochPlan (enstack/data/epoch_plan.h): the per-epoch permutation,
// length grouping, batch slicing and optimizer-step windows.
#include "enstack/data/epoch_plan.h"

#include <algorithm>
#include <numeric>

#include "enstack/util/error.h"
#include "enstack/util/hash.h"
#include "enstack/util/rng.h"
#include "enstack/util/str_cat.h"

namespace enstack::data {
namespace {

// Separate streams per purpose, so adding one never changes another's numbers.
constexpr uint64_t kPermutationStream = 0;
constexpr uint64_t kBatchOrderStream = 1;

util::Rng stream(const EpochPlanConfig& c, uint64_t purpose) {
  return util::Rng(util::mix_seed(util::mix_seed(c.seed, static_cast<uint64_t>(c.epoch)), purpose));
}

std::string fingerprint_of(const EpochPlanConfig& c, const std::vector<int64_t>& order) {
  util::Fnv1a64 h;
  h.update("enstack-epoch-plan-v1");
  h.update_value(c.num_examples).update_value(c.batch_size).update_value(c.seed).update_value(c.epoch);
  h.update_value(static_cast<uint8_t>(c.shuffle)).update_value(static_cast<uint8_t>(c.group_by_length));
  h.update(order.data(), order.size() * sizeof(int64_t));
  return h.hex();
}

}  // namespace

void EpochPlanConfig::validate() const {
  ENSTACK_CHECK(num_examples > 0, DataError, "cannot plan an epoch over ", num_examples,
                " examples: the training data is empty. Check the data paths and the label policy of the config.");
  ENSTACK_CHECK(batch_size > 0, ConfigError, "train.batch_size is ", batch_size,
                ", but it must be at least 1. Set a positive batch size.");
  ENSTACK_CHECK(epoch >= 0, ConfigError, "epoch ", epoch, " is negative; epochs count from 0.");
}

std::string EpochPlanConfig::to_string() const {
  return util::str_cat("EpochPlanConfig(num_examples=", num_examples, ", batch_size=", batch_size, ", seed=", seed,
                       ", epoch=", epoch, ", shuffle=", shuffle ? "True" : "False",
                       ", group_by_length=", group_by_length ? "True" : "False", ")");
}

EpochPlan::EpochPlan(const EpochPlanConfig& config, std::span<const int64_t> lengths) : config_(config) {
  config_.validate();
  const int64_t n = config_.num_examples;
  ENSTACK_CHECK(!config_.group_by_length || static_cast<int64_t>(lengths.size()) == n, DataError,
                "group_by_length needs one length per example: got ", lengths.size(), " lengths for ", n,
                " examples. Pass the token store's lengths(), or turn data.group_by_length off.");
  num_batches_ = (n + config_.batch_size - 1) / config_.batch_size;
  order_.resize(static_cast<std::size_t>(n));
  std::iota(order_.begin(), order_.end(), int64_t{0});
  if (config_.shuffle) {
    auto rng = stream(config_, kPermutationStream);
    rng.shuffle(order_);
  }
  if (config_.group_by_length) {
    group_by_length(lengths);
    if (config_.shuffle) shuffle_full_batches();
  }
  fingerprint_ = fingerprint_of(config_, order_);
}

EpochPlan::EpochPlan(int64_t batch_size, std::vector<int64_t> order) {
  config_.num_examples = static_cast<int64_t>(order.size());
  config_.batch_size = batch_size;
  config_.shuffle = false;
  config_.validate();
  std::vector<char> seen(order.size(), 0);
  for (const int64_t i : order) {
    ENSTACK_CHECK(i >= 0 && i < config_.num_examples && !seen[static_cast<std::size_t>(i)], DataError,
                  "an explicit epoch order must be a permutation of 0..", config_.num_examples - 1,
                  "; index ", i, " is out of range or repeated.");
    seen[static_cast<std::size_t>(i)] = 1;
  }
  num_batches_ = (config_.num_examples + batch_size - 1) / batch_size;
  order_ = std::move(order);
  fingerprint_ = fingerprint_of(config_, order_);
}

EpochPlan EpochPlan::of_indices(int64_t batch_size, std::vector<int64_t> indices, int64_t dataset_size) {
  std::vector<char> seen(static_cast<std::size_t>(std::max<int64_t>(dataset_size, 0)), 0);
  for (const int64_t i : indices) {
    ENSTACK_CHECK(i >= 0 && i < dataset_size && !seen[static_cast<std::size_t>(i)], DataError,
                  "a plan over part of a dataset of ", dataset_size, " examples has index ", i,
                  " out of range or repeated.");
    seen[static_cast<std::size_t>(i)] = 1;
  }
  if (indices.empty()) {  // a rank with no share: no batches
    EpochPlan plan(batch_size, std::vector<int64_t>{0});
    plan.order_.clear();
    plan.config_.num_examples = 0;
    plan.num_batches_ = 0;
    plan.dataset_size_ = dataset_size;
    plan.fingerprint_ = fingerprint_of(plan.config_, plan.order_);
    return plan;
  }
  // Built as a permutation of 0..k-1, then given the dataset's indices.
  std::vector<int64_t> identity(indices.size());
  for (std::size_t k = 0; k < identity.size(); ++k) identity[k] = static_cast<int64_t>(k);
  EpochPlan plan(batch_size, std::move(identity));
  plan.order_ = std::move(indices);
  plan.dataset_size_ = dataset_size;
  plan.fingerprint_ = fingerprint_of(plan.config_, plan.order_);
  return plan;
}

// std::stable_sort, not std::sort: with equal lengths the result is then fully
// defined by the comparator, so every standard library gives the same order.
void EpochPlan::group_by_length(std::span<const int64_t> lengths) {
  const int64_t mega = config_.batch_size * kMegaBatchMultiplier;
  const int64_t n = config_.num_examples;
  for (int64_t begin = 0; begin < n; begin += mega) {
    const auto first = order_.begin() + begin;
    const auto last = order_.begin() + std::min(n, begin + mega);
    std::stable_sort(first, last, [&](int64_t a, int64_t b) {
      return lengths[static_cast<std::size_t>(a)] > lengths[static_cast<std::size_t>(b)];
    });
  }
}

// Permutes whole batches of order_ (the short last batch, if any, stays last,
// so only the last batch of an epoch is ever short).
void EpochPlan::shuffle_full_batches() {
  const int64_t bs = config_.batch_size;
  const int64_t full = config_.num_examples / bs;
  std::vector<int64_t> batch_order(static_cast<std::size_t>(full));
  std::iota(batch_order.begin(), batch_order.end(), int64_t{0});
  auto rng = stream(config_, kBatchOrderStream);
  rng.shuffle(batch_order);
  std::vector<int64_t> shuffled(order_.size());
  for (int64_t k = 0; k < full; ++k) {
    std::copy_n(order_.begin() + batch_order[static_cast<std::size_t>(k)] * bs, bs, shuffled.begin() + k * bs);
  }
  std::copy(order_.begin() + full * bs, order_.end(), shuffled.begin() + full * bs);
  order_ = std::move(shuffled);
}

void EpochPlan::check_batch(int64_t k) const {
  ENSTACK_CHECK(k >= 0 && k < num_batches_, DataError, "batch ", k, " is outside this epoch, which has ",
                num_batches_, " batches (", config_.to_string(),
                "). A resume cursor past the end means the dataset or batch_size changed since the checkpoint.");
}

int64_t EpochPlan::batch_size_of(int64_t k) const {
  check_batch(k);
  return std::min(config_.batch_size, config_.num_examples - k * config_.batch_size);
}

std::span<const int64_t> EpochPlan::batch_view(int64_t k) const {
  const int64_t size = batch_size_of(k);
  return {order_.data() + k * config_.batch_size, static_cast<std::size_t>(size)};
}

std::vector<int64_t> EpochPlan::batch(int64_t k) const {
  const auto view = batch_view(k);
  return {view.begin(), view.end()};
}

int64_t EpochPlan::num_windows(int64_t num_batches, int64_t grad_accum) {
  ENSTACK_CHECK(grad_accum > 0, ConfigError, "train.grad_accum is ", grad_accum,
                ", but it must be at least 1 (1 means one optimizer step per batch).");
  return (num_batches + grad_accum - 1) / grad_accum;
}

std::vector<StepWindow> EpochPlan::windows(int64_t grad_accum) const {
  const int64_t count = num_windows(num_batches_, grad_accum);
  std::vector<StepWindow> out(static_cast<std::size_t>(count));
  for (int64_t w = 0; w < count; ++w) {
    auto& window = out[static_cast<std::size_t>(w)];
    window.index = w;
    window.first_batch = w * grad_accum;
    window.end_batch = std::min(num_batches_, window.first_batch + grad_accum);
    // Only the epoch's last batch can be short, so the count is a difference of offsets.
    window.num_samples = std::min(config_.num_examples, window.end_batch * config_.batch_size) -
                         window.first_batch * config_.batch_size;
  }
  return out;
}

}  // namespace enstack::data
