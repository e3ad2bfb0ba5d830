// EpochPlan: the batch order of one epoch as a pure function of (seed, epoch,
// dataset size, lengths when grouping, batch size, shuffle, group_by_length).
// The permutation is computed once when the plan is built, so resuming at batch
// k reads batch k directly: nothing proportional to k is done or touched.
//
// Order:
//   shuffle:           a uniform permutation of 0..n-1 (xoshiro256**, seeded by
//                      mix_seed(seed, epoch)); otherwise 0..n-1.
//   group_by_length:   as transformers' LengthGroupedSampler: cut that order into
//                      mega-batches of batch_size * 50, sort each by length,
//                      longest first (stable, so ties keep the permuted order),
//                      cut into batches. enstack's variant: when shuffling, the
//                      order of the full batches is then shuffled (a second,
//                      independent stream), so the longest batch is not always
//                      first and batch length does not fall in a saw-tooth over
//                      each mega-batch; the short remainder batch stays last.
// The last batch holds n % batch_size examples when that is not zero (there is
// no drop_last): every example is seen exactly once per epoch.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace enstack::data {

struct EpochPlanConfig {
  int64_t num_examples = 0;
  int64_t batch_size = 1;
  uint64_t seed = 0;
  int64_t epoch = 0;
  bool shuffle = true;
  bool group_by_length = false;

  void validate() const;  // throws ConfigError / DataError saying what to change
  std::string to_string() const;
};

// An optimizer step's micro-batches: batches [first_batch, end_batch), holding
// num_samples examples in all (the loss of the window is divided by it).
struct StepWindow {
  int64_t index = 0;
  int64_t first_batch = 0;
  int64_t end_batch = 0;
  int64_t num_samples = 0;
};

class EpochPlan {
 public:
  static constexpr int64_t kMegaBatchMultiplier = 50;

  // `lengths` (token counts per example) is needed only with group_by_length.
  explicit EpochPlan(const EpochPlanConfig& config, std::span<const int64_t> lengths = {});
  // A plan with an explicit order (a permutation of 0..n-1), e.g. inference over
  // examples sorted by length; config().shuffle is false.
  EpochPlan(int64_t batch_size, std::vector<int64_t> order);
  // A plan over part of a dataset of `dataset_size` examples: `indices` distinct, in
  // range, in the given order (a data-parallel rank's share of every global batch, or of
  // the evaluation batches).
  static EpochPlan of_indices(int64_t batch_size, std::vector<int64_t> indices, int64_t dataset_size);

  const EpochPlanConfig& config() const { return config_; }
  int64_t num_examples() const { return config_.num_examples; }
  // The size of the dataset the indices refer to: num_examples(), or more for a plan of_indices.
  int64_t dataset_size() const { return dataset_size_ >= 0 ? dataset_size_ : config_.num_examples; }
  int64_t batch_size() const { return config_.batch_size; }
  int64_t num_batches() const { return num_batches_; }

  // Example indices of batch k, in order; O(batch size).
  std::vector<int64_t> batch(int64_t k) const;
  std::span<const int64_t> batch_view(int64_t k) const;
  int64_t batch_size_of(int64_t k) const;
  // The whole epoch's order (batch 0 first).
  const std::vector<int64_t>& order() const { return order_; }

  // Optimizer-step windows of grad_accum micro-batches each; the last window
  // may have fewer batches and a short last batch. Their num_samples sum to n.
  std::vector<StepWindow> windows(int64_t grad_accum) const;
  static int64_t num_windows(int64_t num_batches, int64_t grad_accum);

  // 16 hex digits identifying the config and the resulting order.
  const std::string& fingerprint() const { return fingerprint_; }

 private:
  void check_batch(int64_t k) const;
  void group_by_length(std::span<const int64_t> lengths);
  void shuffle_full_batches();

  EpochPlanConfig config_;
  int64_t num_batches_ = 0;
  std::vector<int64_t> order_;
  std::string fingerprint_;
  int64_t dataset_size_ = -1;
};

}  // namespace enstack::data
