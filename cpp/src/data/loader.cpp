// Implements Loader (enstack/data/loader.h): the producer thread, the bounded
// queue, batch gathering and padding, and the TokenStore example source.
#include "enstack/data/loader.h"

#include <algorithm>

#include <torch/cuda.h>

#include "enstack/data/token_store.h"
#include "enstack/util/error.h"
#include "enstack/util/str_cat.h"

namespace enstack::data {
namespace {

class TokenStoreSource final : public ExampleSource {
 public:
  explicit TokenStoreSource(std::shared_ptr<const TokenStore> store) : store_(std::move(store)) {}
  int64_t size() const override { return store_->size(); }
  int64_t length(int64_t index) const override { return store_->length(index); }
  void copy_ids(int64_t index, int32_t* out) const override { store_->copy_ids(index, out); }
  std::span<const int32_t> labels(int64_t index) const override { return store_->labels(index); }
  int64_t labels_per_example() const override { return store_->info().labels_per_example; }

 private:
  std::shared_ptr<const TokenStore> store_;
};

}  // namespace

std::shared_ptr<const ExampleSource> token_store_source(std::shared_ptr<const TokenStore> store) {
  ENSTACK_ASSERT(store != nullptr, "token_store_source needs a store.");
  return std::make_shared<TokenStoreSource>(std::move(store));
}

void LoaderOptions::validate() const {
  ENSTACK_CHECK(pad_id >= 0, ConfigError, "the loader's pad_id is ", pad_id,
                "; it must be the tokenizer's padding token id (1 for RoBERTa models).");
  ENSTACK_CHECK(max_length >= 0, ConfigError, "the loader's max_length is ", max_length,
                "; use 0 for no cap or model.max_length.");
  ENSTACK_CHECK(pad_to_multiple_of >= 1, ConfigError, "pad_to_multiple_of is ", pad_to_multiple_of,
                "; it must be at least 1 (1 pads to the longest example, 8 suits tensor cores).");
  ENSTACK_CHECK(queue_capacity >= 1, ConfigError, "the loader's queue capacity is ", queue_capacity,
                "; it must be at least 1.");
  ENSTACK_CHECK(!device.is_cuda() || torch::cuda::is_available(), ConfigError, "the loader targets ", device.str(),
                " but CUDA is not available here. Set run.device to cpu, or use a GPU runtime.");
}

std::string LoaderOptions::to_string() const {
  return util::str_cat("LoaderOptions(start_batch=", start_batch, ", pad_id=", pad_id, ", max_length=", max_length,
                       ", pad_to_multiple_of=", pad_to_multiple_of, ", queue_capacity=", queue_capacity,
                       ", device=", device.str(), ")");
}

Loader::Loader(std::shared_ptr<const TokenStore> store, std::shared_ptr<const EpochPlan> plan, LoaderOptions options)
    : Loader(token_store_source(std::move(store)), std::move(plan), std::move(options)) {}

Loader::Loader(std::shared_ptr<const ExampleSource> source, std::shared_ptr<const EpochPlan> plan,
               LoaderOptions options)
    : source_(std::move(source)), plan_(std::move(plan)), options_(std::move(options)) {
  ENSTACK_ASSERT(source_ != nullptr && plan_ != nullptr, "a Loader needs a source and a plan.");
  options_.validate();
  ENSTACK_CHECK(plan_->dataset_size() == source_->size(), DataError, "the epoch plan covers ",
                plan_->dataset_size(), " examples but the token store holds ", source_->size(),
                ". Build the plan from this store's size (the data changed since the plan was made).");
  ENSTACK_CHECK(options_.start_batch >= 0 && options_.start_batch <= plan_->num_batches(), DataError,
                "cannot start the epoch at batch ", options_.start_batch, ": it has ", plan_->num_batches(),
                " batches. The resume cursor does not fit this dataset and batch_size; resume with the "
                "checkpoint's data and batch_size, or start a new run.");
  to_device_ = options_.device.is_cuda();
  thread_ = std::thread([this] { run(); });
}

Loader::~Loader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  not_full_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool Loader::stopping() {
  std::lock_guard<std::mutex> lock(mutex_);
  return stop_;
}

void Loader::run() {
  try {
    for (int64_t k = options_.start_batch; k < plan_->num_batches() && !stopping(); ++k) {
      Batch batch = make_batch(k);
      std::unique_lock<std::mutex> lock(mutex_);
      not_full_.wait(lock, [this] { return stop_ || static_cast<int64_t>(queue_.size()) < options_.queue_capacity; });
      if (stop_) break;
      queue_.push_back(std::move(batch));
      not_empty_.notify_one();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mutex_);
    error_ = std::current_exception();
  }
  std::lock_guard<std::mutex> lock(mutex_);
  finished_ = true;
  not_empty_.notify_all();
}

std::optional<Batch> Loader::next() {
  std::unique_lock<std::mutex> lock(mutex_);
  not_empty_.wait(lock, [this] { return !queue_.empty() || finished_; });
  if (!queue_.empty()) {
    Batch batch = std::move(queue_.front());
    queue_.pop_front();
    not_full_.notify_one();
    return batch;
  }
  if (error_) std::rethrow_exception(error_);
  return std::nullopt;
}

int64_t Loader::padded_length(int64_t longest, int64_t multiple, int64_t max_length) {
  const int64_t rounded = (longest + multiple - 1) / multiple * multiple;
  return max_length > 0 ? std::min(rounded, max_length) : rounded;
}

torch::TensorOptions Loader::host_options(torch::ScalarType dtype) const {
  return torch::TensorOptions().dtype(dtype).pinned_memory(to_device_);
}

Batch Loader::make_batch(int64_t k) const {
  const auto indices = plan_->batch_view(k);
  const auto rows = static_cast<int64_t>(indices.size());
  std::vector<int64_t> lengths(indices.size());
  for (std::size_t i = 0; i < indices.size(); ++i) {
    lengths[i] = source_->length(indices[i]);
    ENSTACK_CHECK(options_.max_length == 0 || lengths[i] <= options_.max_length, DataError, "example ",
                  indices[i], " has ", lengths[i], " tokens, more than max_length ", options_.max_length,
                  ". Rebuild the token store with this max_length (enstack data prepare).");
  }
  const int64_t longest = lengths.empty() ? 0 : *std::max_element(lengths.begin(), lengths.end());
  const int64_t width = padded_length(longest, options_.pad_to_multiple_of, options_.max_length);

  Batch batch;
  batch.index = k;
  batch.input_ids = torch::empty({rows, width}, host_options(torch::kLong));
  batch.attention_mask = torch::empty({rows, width}, host_options(torch::kLong));
  auto* ids = batch.input_ids.data_ptr<int64_t>();
  auto* mask = batch.attention_mask.data_ptr<int64_t>();
  std::vector<int32_t> scratch(static_cast<std::size_t>(longest));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = lengths[static_cast<std::size_t>(r)];
    source_->copy_ids(indices[static_cast<std::size_t>(r)], scratch.data());
    std::copy_n(scratch.data(), n, ids + r * width);
    std::fill(ids + r * width + n, ids + (r + 1) * width, options_.pad_id);
    std::fill(mask + r * width, mask + r * width + n, int64_t{1});
    std::fill(mask + r * width + n, mask + (r + 1) * width, int64_t{0});
    batch.real_tokens += n;
  }
  batch.labels = make_labels(indices);
  if (to_device_) {
    batch.input_ids = batch.input_ids.to(options_.device, /*non_blocking=*/true);
    batch.attention_mask = batch.attention_mask.to(options_.device, /*non_blocking=*/true);
    batch.labels = batch.labels.to(options_.device, /*non_blocking=*/true);
  }
  return batch;
}

torch::Tensor Loader::make_labels(std::span<const int64_t> indices) const {
  const int64_t per = source_->labels_per_example();
  const auto rows = static_cast<int64_t>(indices.size());
  if (per == 1) {
    auto out = torch::empty({rows}, host_options(torch::kLong));
    auto* dst = out.data_ptr<int64_t>();
    for (int64_t r = 0; r < rows; ++r) dst[r] = source_->labels(indices[static_cast<std::size_t>(r)])[0];
    return out;
  }
  auto out = torch::empty({rows, per}, host_options(torch::kFloat));
  auto* dst = out.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const auto labels = source_->labels(indices[static_cast<std::size_t>(r)]);
    ENSTACK_ASSERT(static_cast<int64_t>(labels.size()) == per);
    for (int64_t j = 0; j < per; ++j) dst[r * per + j] = static_cast<float>(labels[static_cast<std::size_t>(j)]);
  }
  return out;
}

}  // namespace enstack::data
