// SwaAverage against the definition it implements (torch.optim.swa_utils.AveragedModel's
// default: the equal-weight mean of the parameter values seen at each update), its
// checkpoint state, and the swap used to evaluate the averaged model.
#include "enstack/train/swa.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "enstack/util/error.h"

namespace enstack::train {
namespace {

TEST(SwaTest, TheAverageIsTheMeanOfTheValuesAtEachUpdate) {
  torch::manual_seed(0);
  auto w = torch::randn({4, 3});
  auto b = torch::randn({3});
  auto steps = torch::arange(0, 1, torch::kLong);  // non-floating: ignored
  SwaAverage swa({{"w", w}, {"b", b}, {"steps", steps}});
  std::vector<torch::Tensor> ws, bs;
  for (int i = 0; i < 5; ++i) {
    w.add_(torch::randn({4, 3}));
    b.mul_(0.5).add_(1.0);
    swa.update();
    ws.push_back(w.clone());
    bs.push_back(b.clone());
  }
  EXPECT_EQ(swa.count(), 5);
  const auto state = swa.state_tensors();
  ASSERT_EQ(state.size(), 2u);
  EXPECT_TRUE(torch::allclose(state.at("w"), torch::stack(ws).mean(0), 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(state.at("b"), torch::stack(bs).mean(0), 1e-6, 1e-6));
}

TEST(SwaTest, SwappingTwiceRestoresTheLiveParameters) {
  auto w = torch::ones({2, 2});
  SwaAverage swa({{"w", w}});
  swa.update();
  w.fill_(3.0);
  swa.update();  // average 2
  const auto live = w.clone();
  swa.swap_with_parameters();
  EXPECT_TRUE(torch::allclose(w, torch::full({2, 2}, 2.0)));
  swa.swap_with_parameters();
  EXPECT_TRUE(torch::equal(w, live));
}

TEST(SwaTest, ARestoredAverageContinuesAsTheOriginal) {
  auto w1 = torch::zeros({3});
  SwaAverage a({{"w", w1}});
  for (int i = 1; i <= 3; ++i) {
    w1.fill_(static_cast<double>(i));
    a.update();
  }
  auto w2 = w1.clone();
  SwaAverage b({{"w", w2}});
  b.load_state_tensors(a.state_tensors(), a.count());
  w1.fill_(10.0);
  w2.fill_(10.0);
  a.update();
  b.update();
  EXPECT_EQ(b.count(), 4);
  EXPECT_TRUE(torch::equal(a.state_tensors().at("w"), b.state_tensors().at("w")));
}

TEST(SwaTest, AMisShapedOrMissingEntryIsACheckpointError) {
  auto w = torch::zeros({3});
  SwaAverage swa({{"w", w}});
  EXPECT_THROW(swa.load_state_tensors({{"w", torch::zeros({4})}}, 1), CheckpointError);
  EXPECT_THROW(swa.load_state_tensors({}, 1), CheckpointError);
}

}  // namespace
}  // namespace enstack::train
