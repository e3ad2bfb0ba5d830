// Metrics on hand-worked examples and schedule invariants (the scikit-learn and
// transformers parity tests are in tests/python/test_metrics_schedule.py).
#include <gtest/gtest.h>

#include <cmath>

#include "enstack/train/metrics.h"
#include "enstack/train/schedule.h"
#include "enstack/util/error.h"

namespace enstack::train {
namespace {

TEST(Metrics, HandWorkedThreeClassExample) {
  // true: 0 0 1 1 2 2 ; predicted (argmax): 0 1 1 1 2 0
  const std::vector<int64_t> labels = {0, 0, 1, 1, 2, 2};
  const std::vector<float> probs = {
      0.8f, 0.1f, 0.1f,  0.3f, 0.6f, 0.1f,  0.2f, 0.7f, 0.1f,
      0.1f, 0.8f, 0.1f,  0.1f, 0.2f, 0.7f,  0.5f, 0.1f, 0.4f};
  auto m = compute_metrics(probs, labels, 3);
  EXPECT_DOUBLE_EQ(m.accuracy, 4.0 / 6.0);
  EXPECT_EQ(m.confusion[0][1], 1);
  EXPECT_EQ(m.confusion[2][0], 1);
  // class 0: tp 1, predicted 2, support 2 -> P .5 R .5 ; class 1: tp 2, pred 3 -> P 2/3 R 1 ;
  // class 2: tp 1, pred 1 -> P 1 R .5
  EXPECT_DOUBLE_EQ(m.precision[1], 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(m.recall[2], 0.5);
  EXPECT_NEAR(m.f1_macro, (0.5 + 0.8 + 2.0 / 3.0) / 3.0, 1e-12);
  EXPECT_DOUBLE_EQ(m.confusion_percent[0][0], 50.0);
  EXPECT_DOUBLE_EQ(m.get("accuracy"), m.accuracy);
  EXPECT_THROW(m.get("f2"), ConfigError);
}

TEST(Metrics, AucCountsTiesAsHalf) {
  EXPECT_DOUBLE_EQ(roc_auc({0.1f, 0.4f, 0.35f, 0.8f}, {false, false, true, true}), 0.75);
  EXPECT_DOUBLE_EQ(roc_auc({0.5f, 0.5f}, {false, true}), 0.5);
  EXPECT_TRUE(std::isnan(roc_auc({0.5f, 0.7f}, {true, true})));
}

TEST(Metrics, BadInputIsADataError) {
  EXPECT_THROW(compute_metrics({0.5f, 0.5f}, {3}, 2), DataError);
  EXPECT_THROW(compute_metrics({0.5f}, {0}, 2), DataError);
}

TEST(Schedule, WarmupThenDecay) {
  EXPECT_DOUBLE_EQ(lr_multiplier(Schedule::kLinear, 0, 10, 100), 0.0);
  EXPECT_DOUBLE_EQ(lr_multiplier(Schedule::kLinear, 5, 10, 100), 0.5);
  EXPECT_DOUBLE_EQ(lr_multiplier(Schedule::kLinear, 10, 10, 100), 1.0);
  EXPECT_DOUBLE_EQ(lr_multiplier(Schedule::kLinear, 100, 10, 100), 0.0);
  EXPECT_DOUBLE_EQ(lr_multiplier(Schedule::kCosine, 55, 10, 100), 0.5);
  EXPECT_DOUBLE_EQ(lr_multiplier(Schedule::kConstant, 99, 10, 100), 1.0);
  EXPECT_EQ(warmup_steps_for(0.1, 95), 10);
  EXPECT_THROW(parse_schedule("step"), ConfigError);
}

}  // namespace
}  // namespace enstack::train
