// Loader: yields exactly the plan's batches from the start batch on, padded to
// multiples of 8 with correct masks and labels; reads no example of an earlier
// batch (observed through a counting ExampleSource); stops cleanly when dropped
// early; surfaces errors of its thread from next().
#include <gtest/gtest.h>

#include <filesystem>
#include <mutex>
#include <set>
#include <unistd.h>

#include <torch/types.h>

#include "enstack/data/epoch_plan.h"
#include "enstack/data/loader.h"
#include "enstack/data/token_store.h"
#include "enstack/util/error.h"

namespace enstack::data {
namespace {

namespace fs = std::filesystem;

// Wraps a source and records every example index that is read.
class CountingSource final : public ExampleSource {
 public:
  explicit CountingSource(std::shared_ptr<const ExampleSource> inner, int64_t fail_at = -1)
      : inner_(std::move(inner)), fail_at_(fail_at) {}
  int64_t size() const override { return inner_->size(); }
  int64_t length(int64_t i) const override { return touch(i), inner_->length(i); }
  void copy_ids(int64_t i, int32_t* out) const override {
    touch(i);
    ENSTACK_CHECK(i != fail_at_, DataError, "example ", i, " is unreadable (injected).");
    inner_->copy_ids(i, out);
  }
  std::span<const int32_t> labels(int64_t i) const override { return touch(i), inner_->labels(i); }
  int64_t labels_per_example() const override { return inner_->labels_per_example(); }
  std::set<int64_t> touched() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return touched_;
  }

 private:
  void touch(int64_t i) const {
    std::lock_guard<std::mutex> lock(mutex_);
    touched_.insert(i);
  }
  std::shared_ptr<const ExampleSource> inner_;
  int64_t fail_at_;
  mutable std::mutex mutex_;
  mutable std::set<int64_t> touched_;
};

class LoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("enstack_loader_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    for (int32_t i = 0; i < kCount; ++i) {
      std::vector<int32_t> ids = {0};
      for (int32_t j = 0; j < (i * 7) % 19; ++j) ids.push_back(10 + i + j);
      ids.push_back(2);
      ids_.push_back(ids);
      labels_.push_back(i % 5);
    }
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::shared_ptr<TokenStore> store(uint32_t per_example = 1) {
    const auto path = dir_ / ("s" + std::to_string(per_example) + ".tokens");
    std::vector<int32_t> labels;
    for (int32_t i = 0; i < kCount; ++i) {
      for (uint32_t j = 0; j < per_example; ++j) labels.push_back(per_example == 1 ? labels_[i] : (i + j) % 2);
    }
    TokenStore::write(path, ids_, labels, per_example, 1000, 64, "test");
    return TokenStore::open(path);
  }

  std::shared_ptr<EpochPlan> plan(int64_t batch_size, int64_t epoch = 0) {
    EpochPlanConfig c;
    c.num_examples = kCount;
    c.batch_size = batch_size;
    c.seed = 17;
    c.epoch = epoch;
    return std::make_shared<EpochPlan>(c);
  }

  // Checks one batch against the store, independently of the loader's code path.
  void expect_batch(const Batch& b, const std::vector<int64_t>& indices, int64_t pad_id) {
    ASSERT_EQ(b.input_ids.size(0), static_cast<int64_t>(indices.size()));
    const int64_t width = b.input_ids.size(1);
    EXPECT_EQ(width % 8, 0);
    EXPECT_EQ(b.input_ids.dtype(), torch::kLong);
    EXPECT_EQ(b.attention_mask.dtype(), torch::kLong);
    int64_t longest = 0, real = 0;
    for (std::size_t r = 0; r < indices.size(); ++r) {
      const auto& ids = ids_[static_cast<std::size_t>(indices[r])];
      const auto n = static_cast<int64_t>(ids.size());
      longest = std::max(longest, n);
      real += n;
      auto expected = torch::full({width}, pad_id, torch::kLong);
      expected.slice(0, 0, n).copy_(torch::tensor(std::vector<int64_t>(ids.begin(), ids.end())));
      EXPECT_TRUE(torch::equal(b.input_ids[r], expected)) << "row " << r;
      EXPECT_EQ(b.attention_mask[r].sum().item<int64_t>(), n);
      EXPECT_EQ(b.attention_mask[r].slice(0, 0, n).min().item<int64_t>(), 1);
      EXPECT_EQ(b.labels[r].item<int64_t>(), labels_[static_cast<std::size_t>(indices[r])]);
    }
    EXPECT_EQ(width, (longest + 7) / 8 * 8);
    EXPECT_EQ(b.real_tokens, real);
  }

  static constexpr int32_t kCount = 37;
  fs::path dir_;
  std::vector<std::vector<int32_t>> ids_;
  std::vector<int32_t> labels_;
};

TEST_F(LoaderTest, YieldsEveryBatchOfThePlanInOrder) {
  auto p = plan(5);
  Loader loader(store(), p, LoaderOptions{.pad_id = 3});
  for (int64_t k = 0; k < p->num_batches(); ++k) {
    auto b = loader.next();
    ASSERT_TRUE(b.has_value());
    EXPECT_EQ(b->index, k);
    expect_batch(*b, p->batch(k), 3);
  }
  EXPECT_FALSE(loader.next().has_value());
  EXPECT_FALSE(loader.next().has_value());
}

TEST_F(LoaderTest, ResumingReadsOnlyTheRemainingBatches) {
  auto p = plan(4, 3);
  const int64_t start = 6;
  auto counting = std::make_shared<CountingSource>(token_store_source(store()));
  {
    Loader loader(counting, p, LoaderOptions{.start_batch = start, .queue_capacity = 2});
    for (int64_t k = start; k < p->num_batches(); ++k) {
      auto b = loader.next();
      ASSERT_TRUE(b.has_value());
      EXPECT_EQ(b->index, k);
      expect_batch(*b, p->batch(k), 1);
    }
    EXPECT_FALSE(loader.next().has_value());
  }
  std::set<int64_t> expected;
  for (int64_t k = start; k < p->num_batches(); ++k) {
    for (auto i : p->batch(k)) expected.insert(i);
  }
  EXPECT_EQ(counting->touched(), expected);
}

TEST_F(LoaderTest, StartingAtTheEndYieldsNothing) {
  auto p = plan(4);
  Loader loader(store(), p, LoaderOptions{.start_batch = p->num_batches()});
  EXPECT_FALSE(loader.next().has_value());
  EXPECT_THROW(Loader(store(), p, LoaderOptions{.start_batch = p->num_batches() + 1}), DataError);
}

TEST_F(LoaderTest, PaddingIsCappedAtMaxLength) {
  EXPECT_EQ(Loader::padded_length(13, 8, 0), 16);
  EXPECT_EQ(Loader::padded_length(13, 8, 14), 14);
  EXPECT_EQ(Loader::padded_length(16, 8, 0), 16);
  EXPECT_EQ(Loader::padded_length(13, 1, 0), 13);
  auto p = plan(kCount);  // one batch holding the longest example (20 tokens)
  Loader capped(store(), p, LoaderOptions{.max_length = 20});
  EXPECT_EQ(capped.next()->input_ids.size(1), 20);
  Loader too_short(store(), p, LoaderOptions{.max_length = 10});
  EXPECT_THROW(too_short.next(), DataError);
}

TEST_F(LoaderTest, MultiLabelStoresGiveFloatLabelRows) {
  auto p = plan(8);
  Loader loader(store(3), p);
  auto b = loader.next();
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->labels.dtype(), torch::kFloat);
  ASSERT_EQ(b->labels.sizes(), (std::vector<int64_t>{8, 3}));
  const auto indices = p->batch(0);
  for (int64_t r = 0; r < 8; ++r) {
    for (int64_t j = 0; j < 3; ++j) EXPECT_EQ(b->labels[r][j].item<float>(), static_cast<float>((indices[r] + j) % 2));
  }
}

TEST_F(LoaderTest, DroppingTheLoaderEarlyDoesNotHang) {
  auto p = plan(1);  // 37 batches, far more than the queue holds
  { Loader untouched(store(), p, LoaderOptions{.queue_capacity = 1}); }
  {
    Loader loader(store(), p, LoaderOptions{.queue_capacity = 2});
    ASSERT_TRUE(loader.next().has_value());
    ASSERT_TRUE(loader.next().has_value());
  }
  SUCCEED();
}

TEST_F(LoaderTest, ThreadErrorsSurfaceInNextAfterTheGoodBatches) {
  auto p = plan(5);
  const int64_t bad_batch = 3;
  auto failing = std::make_shared<CountingSource>(token_store_source(store()), p->batch(bad_batch)[1]);
  Loader loader(failing, p);
  for (int64_t k = 0; k < bad_batch; ++k) {
    auto b = loader.next();
    ASSERT_TRUE(b.has_value());
    EXPECT_EQ(b->index, k);
  }
  EXPECT_THROW(loader.next(), DataError);
}

// Claims more examples than its store holds, so a plan over it is "bad".
class OversizedSource final : public ExampleSource {
 public:
  explicit OversizedSource(std::shared_ptr<const ExampleSource> inner) : inner_(std::move(inner)) {}
  int64_t size() const override { return inner_->size() + 5; }
  int64_t length(int64_t i) const override { return inner_->length(i); }
  void copy_ids(int64_t i, int32_t* out) const override { inner_->copy_ids(i, out); }
  std::span<const int32_t> labels(int64_t i) const override { return inner_->labels(i); }
  int64_t labels_per_example() const override { return inner_->labels_per_example(); }

 private:
  std::shared_ptr<const ExampleSource> inner_;
};

TEST_F(LoaderTest, AnIndexOutOfRangeSurfacesAsDataError) {
  EpochPlanConfig c;
  c.num_examples = kCount + 5;
  c.batch_size = 4;
  Loader loader(std::make_shared<OversizedSource>(token_store_source(store())), std::make_shared<EpochPlan>(c));
  auto drain = [&] {
    while (loader.next()) {
    }
  };
  EXPECT_THROW(drain(), DataError);
}

TEST_F(LoaderTest, APlanForAnotherDatasetIsRejected) {
  EpochPlanConfig c;
  c.num_examples = kCount + 5;
  c.batch_size = 4;
  EXPECT_THROW(Loader(store(), std::make_shared<EpochPlan>(c)), DataError);
  EXPECT_THROW(Loader(store(), plan(4), LoaderOptions{.pad_to_multiple_of = 0}), ConfigError);
}

}  // namespace
}  // namespace enstack::data
