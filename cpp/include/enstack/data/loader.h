// Loader: one background thread that turns the batches [start_batch, end) of an
// EpochPlan into padded tensors, ahead of the training step, through a bounded
// queue. Each batch is padded to its own longest example rounded up to
// pad_to_multiple_of (capped at max_length). A single producer keeps the order
// deterministic; resuming at start_batch reads only the examples of batches
// >= start_batch. Errors in the thread are rethrown by next().
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <torch/types.h>

#include "enstack/data/epoch_plan.h"

namespace enstack::data {

class TokenStore;

struct Batch {
  int64_t index = 0;             // batch number within the epoch
  torch::Tensor input_ids;       // [B, L] int64, pad_id after each example
  torch::Tensor attention_mask;  // [B, L] int64, 1 on real tokens
  torch::Tensor labels;          // [B] int64 (one label each), else [B, K] float32 (multi-label)
  int64_t real_tokens = 0;       // sum of the examples' lengths (no padding)
};

// Read access to tokenized examples. TokenStore is the real one (see
// token_store_source); tests wrap it to observe which examples are read.
class ExampleSource {
 public:
  virtual ~ExampleSource() = default;
  virtual int64_t size() const = 0;
  virtual int64_t length(int64_t index) const = 0;
  virtual void copy_ids(int64_t index, int32_t* out) const = 0;
  virtual std::span<const int32_t> labels(int64_t index) const = 0;
  virtual int64_t labels_per_example() const = 0;
};

std::shared_ptr<const ExampleSource> token_store_source(std::shared_ptr<const TokenStore> store);

struct LoaderOptions {
  int64_t start_batch = 0;         // resume cursor: the first batch produced
  int64_t pad_id = 1;              // RoBERTa's <pad>
  int64_t max_length = 0;          // cap on the padded length; 0: none
  int64_t pad_to_multiple_of = 8;  // tensor-core friendly lengths
  int64_t queue_capacity = 4;      // batches prepared ahead
  torch::Device device = torch::kCPU;

  void validate() const;
  std::string to_string() const;
};

class Loader {
 public:
  Loader(std::shared_ptr<const ExampleSource> source, std::shared_ptr<const EpochPlan> plan,
         LoaderOptions options = {});
  Loader(std::shared_ptr<const TokenStore> store, std::shared_ptr<const EpochPlan> plan,
         LoaderOptions options = {});
  ~Loader();  // stops and joins the thread, whatever the consumer did
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // Blocks for the next batch; nullopt after the epoch's last batch. Rethrows
  // an exception raised while preparing a batch, after the batches before it.
  std::optional<Batch> next();

  const LoaderOptions& options() const { return options_; }
  const EpochPlan& plan() const { return *plan_; }

  // The padded length of a batch whose longest example has `longest` tokens.
  static int64_t padded_length(int64_t longest, int64_t multiple, int64_t max_length);

 private:
  void run();
  bool stopping();
  Batch make_batch(int64_t k) const;
  torch::Tensor make_labels(std::span<const int64_t> indices) const;
  torch::TensorOptions host_options(torch::ScalarType dtype) const;

  std::shared_ptr<const ExampleSource> source_;
  std::shared_ptr<const EpochPlan> plan_;
  LoaderOptions options_;
  bool to_device_ = false;  // a CUDA target: pinned host tensors, non-blocking copies

  std::mutex mutex_;
  std::condition_variable not_empty_;
  std::condition_variable not_full_;
  std::deque<Batch> queue_;
  bool stop_ = false;
  bool finished_ = false;
  std::exception_ptr error_;
  std::thread thread_;  // last: started once everything above exists
};

}  // namespace enstack::data
