// The mask-free CPU dropout (enstack/model/dropout.h) against torch's own operations:
// the kept elements are scaled by 1/(1-p) and the rest are zero, the keep rate is
// 1-p, the same generator state gives the same mask whatever the thread count,
// backward multiplies by the same mask, and the fused forms equal their unfused
// composition (torch::softmax, +) with the mask of the same seed.
#include "enstack/model/dropout.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

namespace enstack::model {
namespace {

torch::Tensor ones_with_grad(std::vector<int64_t> shape) {
  return torch::ones(shape, torch::kFloat).requires_grad_(true);
}

TEST(DropoutTest, EvaluationAndPZeroAreTheIdentity) {
  auto x = torch::randn({4, 8});
  EXPECT_TRUE(torch::equal(fast_dropout(x, 0.5, /*training=*/false), x));
  EXPECT_TRUE(torch::equal(fast_dropout(x, 0.0, /*training=*/true), x));
}

TEST(DropoutTest, KeptElementsAreScaledAndTheKeepRateIsOneMinusP) {
  const double p = 0.25;
  torch::manual_seed(1);
  auto x = torch::randn({256, 1024}) + 3.0;  // no zeros in the input
  auto y = fast_dropout(x, p, true);
  auto kept = y.ne(0);
  // Kept: x / (1 - p), as torch.nn.functional.dropout scales.
  EXPECT_TRUE(torch::allclose(y.masked_select(kept), x.masked_select(kept) / (1 - p), 1e-6, 1e-6));
  const double rate = kept.to(torch::kDouble).mean().item<double>();
  const double n = static_cast<double>(x.numel());
  const double sigma = std::sqrt(p * (1 - p) / n);
  EXPECT_NEAR(rate, 1 - p, 6 * sigma);
}

TEST(DropoutTest, TheGeneratorStateDecidesTheMaskWhateverTheThreadCount) {
  auto x = torch::randn({64, 4096});
  const int threads = at::get_num_threads();
  torch::manual_seed(7);
  at::set_num_threads(1);
  auto a = fast_dropout(x, 0.1, true);
  torch::manual_seed(7);
  at::set_num_threads(2);
  auto b = fast_dropout(x, 0.1, true);
  at::set_num_threads(threads);
  EXPECT_TRUE(torch::equal(a, b));
  auto c = fast_dropout(x, 0.1, true);  // the generator moved on: another mask
  EXPECT_FALSE(torch::equal(a, c));
}

TEST(DropoutTest, BackwardMultipliesByTheForwardMask) {
  auto x = ones_with_grad({32, 100});
  torch::manual_seed(3);
  auto y = fast_dropout(x, 0.3, true);
  auto upstream = torch::randn({32, 100});
  y.backward(upstream);
  // With x = 1, y is the scaled mask itself.
  EXPECT_TRUE(torch::allclose(x.grad(), upstream * y.detach(), 1e-6, 1e-6));
}

TEST(DropoutTest, DropoutAddEqualsResidualPlusDropoutWithTheSameSeed) {
  auto y = torch::randn({8, 16, 32}).requires_grad_(true);
  auto r = torch::randn({8, 16, 32}).requires_grad_(true);
  torch::manual_seed(11);
  auto fused = dropout_add(y, r, 0.2, true);
  torch::manual_seed(11);
  auto y2 = y.detach().clone().requires_grad_(true);
  auto r2 = r.detach().clone().requires_grad_(true);
  auto plain = r2 + fast_dropout(y2, 0.2, true);
  EXPECT_TRUE(torch::allclose(fused, plain, 1e-6, 1e-6));
  auto g = torch::randn_like(fused);
  fused.backward(g);
  plain.backward(g);
  EXPECT_TRUE(torch::allclose(y.grad(), y2.grad(), 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(r.grad(), r2.grad(), 1e-6, 1e-6));
}

TEST(DropoutTest, SoftmaxDropoutMatchesTorchSoftmaxThenTheMaskForwardAndBackward) {
  auto scores = torch::randn({2, 4, 16, 16}).requires_grad_(true);
  const double p = 0.1;
  // The mask of this seed, read off by dropping ones.
  torch::manual_seed(5);
  auto mask = fast_dropout(torch::ones({2, 4, 16, 16}), p, true).detach();
  torch::manual_seed(5);
  auto fused = softmax_dropout(scores, p, true);
  auto s2 = scores.detach().clone().requires_grad_(true);
  auto reference = torch::softmax(s2, -1) * mask;  // torch's softmax and autograd as the reference
  EXPECT_TRUE(torch::allclose(fused, reference, 1e-5, 1e-6));
  auto g = torch::randn_like(fused);
  fused.backward(g);
  reference.backward(g);
  EXPECT_TRUE(torch::allclose(scores.grad(), s2.grad(), 1e-5, 1e-6));
}

}  // namespace
}  // namespace enstack::model
