// AdamW decay groups and exact state round trip, GradScaler skip/backoff/growth,
// and clip_grad_norm on hand-computed values (the torch parity tests are in
// tests/python/test_optim.py).
#include <gtest/gtest.h>

#include <torch/types.h>
#include <torch/utils.h>

#include <cmath>

#include "enstack/train/adamw.h"
#include "enstack/train/clip.h"
#include "enstack/train/grad_scaler.h"
#include "enstack/util/error.h"

namespace enstack::train {
namespace {

AdamW::NamedParameters make_params(uint64_t seed) {
  torch::manual_seed(seed);
  AdamW::NamedParameters params = {
      {"roberta.encoder.layer.0.attention.self.query.weight", torch::randn({4, 3})},
      {"roberta.encoder.layer.0.attention.self.query.bias", torch::randn({4})},
      {"roberta.encoder.layer.0.output.LayerNorm.weight", torch::randn({4})},
      {"classifier.dense.weight", torch::randn({2, 4})},
  };
  for (auto& [name, p] : params) p.set_requires_grad(true);
  return params;
}

AdamW::NamedParameters clone_params(const AdamW::NamedParameters& params) {
  AdamW::NamedParameters out;
  for (const auto& [name, p] : params) out.emplace_back(name, p.detach().clone().set_requires_grad(true));
  return out;
}

// Deterministic grads for step `t`; the bias gets none on odd steps.
void set_grads(const AdamW::NamedParameters& params, int t) {
  torch::manual_seed(1000 + t);
  for (size_t i = 0; i < params.size(); ++i) {
    auto g = torch::randn(params[i].second.sizes());
    params[i].second.mutable_grad() = (i == 1 && t % 2 == 1) ? torch::Tensor() : g;
  }
}

void expect_bitwise_equal(const AdamW::NamedParameters& a, const AdamW::NamedParameters& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
}

TEST(AdamW, DecayGroupsFollowTransformersNames) {
  EXPECT_TRUE(applies_weight_decay("roberta.encoder.layer.0.attention.self.query.weight"));
  EXPECT_TRUE(applies_weight_decay("roberta.embeddings.word_embeddings.weight"));
  EXPECT_TRUE(applies_weight_decay("model.normalizer.weight"));
  EXPECT_FALSE(applies_weight_decay("classifier.dense.bias"));
  EXPECT_FALSE(applies_weight_decay("roberta.embeddings.LayerNorm.weight"));
  EXPECT_FALSE(applies_weight_decay("encoder.layer_norm.weight"));
  EXPECT_FALSE(applies_weight_decay("model.norm.weight"));
  EXPECT_FALSE(applies_weight_decay("norm.weight"));
  EXPECT_FALSE(applies_weight_decay("layers.0.post_attention_rmsnorm.weight"));

  AdamW opt(make_params(0), {.weight_decay = 0.01});
  EXPECT_EQ(opt.decay_parameter_names(),
            (std::vector<std::string>{"roberta.encoder.layer.0.attention.self.query.weight",
                                      "classifier.dense.weight"}));
  EXPECT_EQ(opt.no_decay_parameter_names(),
            (std::vector<std::string>{"roberta.encoder.layer.0.attention.self.query.bias",
                                      "roberta.encoder.layer.0.output.LayerNorm.weight"}));
  EXPECT_EQ(opt.implementation(), "fused");
  EXPECT_EQ(opt.hyperparameters()["num_decay_parameters"], 2);
}

TEST(AdamW, BadOptionsAndParametersAreConfigErrors) {
  EXPECT_THROW(AdamW(make_params(0), {.beta1 = 1.0}), ConfigError);
  EXPECT_THROW(AdamW(make_params(0), {.weight_decay = -1.0}), ConfigError);
  auto params = make_params(0);
  params.push_back(params.front());
  EXPECT_THROW(AdamW(params, {}), ConfigError);
  AdamW opt(make_params(0), {});
  EXPECT_THROW(opt.step(-1.0), ConfigError);
}

TEST(AdamW, ParameterWithoutGradIsSkipped) {
  auto params = make_params(0);
  const auto before = params[1].second.detach().clone();
  AdamW opt(params, {.weight_decay = 0.1});
  set_grads(params, 1);  // no grad for params[1]
  opt.step(1e-3);
  EXPECT_TRUE(torch::equal(params[1].second, before));
  EXPECT_EQ(opt.state_tensors().at(params[1].first + ".step").item<float>(), 0.0f);
  EXPECT_EQ(opt.state_tensors().at(params[0].first + ".step").item<float>(), 1.0f);
  opt.zero_grad();
  for (const auto& [name, p] : params) EXPECT_FALSE(p.grad().defined()) << name;
}

// Two optimizers; the second is built mid-way from the first's weights and
// state and must then follow it bitwise.
void check_round_trip(bool fused) {
  const AdamWOptions options{.lr = 1e-2, .weight_decay = 0.05, .fused = fused};
  auto params_a = make_params(0);
  AdamW a(params_a, options);
  for (int t = 0; t < 5; ++t) {
    set_grads(params_a, t);
    a.step(1e-2 * (t + 1));
  }
  auto params_b = clone_params(params_a);
  AdamW b(params_b, options);
  AdamW::StateMap snapshot;
  for (const auto& [key, value] : a.state_tensors()) snapshot[key] = value.clone();
  b.load_state_tensors(snapshot);
  for (int t = 5; t < 12; ++t) {
    set_grads(params_a, t);
    set_grads(params_b, t);
    a.step(1e-2 / t);
    b.step(1e-2 / t);
  }
  expect_bitwise_equal(params_a, params_b);
  for (const auto& [key, value] : a.state_tensors()) EXPECT_TRUE(torch::equal(value, b.state_tensors().at(key))) << key;
}

TEST(AdamW, RestoredStateContinuesBitwiseFused) { check_round_trip(true); }
TEST(AdamW, RestoredStateContinuesBitwisePlain) { check_round_trip(false); }

TEST(AdamW, FusedAndPlainPathsAgree) {
  auto pf = make_params(0);
  auto pp = clone_params(pf);
  AdamW fused(pf, {.weight_decay = 0.1, .fused = true});
  AdamW plain(pp, {.weight_decay = 0.1, .fused = false});
  EXPECT_EQ(plain.implementation(), "plain");
  for (int t = 0; t < 10; ++t) {
    set_grads(pf, t);
    set_grads(pp, t);
    fused.step(1e-2);
    plain.step(1e-2);
  }
  for (size_t i = 0; i < pf.size(); ++i) EXPECT_TRUE(torch::allclose(pf[i].second, pp[i].second, 0, 1e-6));
}

TEST(AdamW, FoundInfMakesTheStepANoOp) {
  for (bool fused : {true, false}) {
    auto params = make_params(0);
    AdamW opt(params, {.weight_decay = 0.1, .fused = fused});
    const auto before = params[0].second.detach().clone();
    set_grads(params, 0);
    opt.step(1e-2, {}, torch::ones({}));
    EXPECT_TRUE(torch::equal(params[0].second, before));
    EXPECT_EQ(opt.state_tensors().at(params[0].first + ".step").item<float>(), 0.0f);
    EXPECT_EQ(opt.state_tensors().at(params[0].first + ".exp_avg").abs().sum().item<float>(), 0.0f);
  }
}

TEST(AdamW, MissingOrMisshapedStateIsACheckpointError) {
  auto params = make_params(0);
  AdamW opt(params, {});
  auto state = opt.state_tensors();
  auto missing = state;
  missing.erase(params[0].first + ".exp_avg_sq");
  EXPECT_THROW(opt.load_state_tensors(missing), CheckpointError);
  auto misshaped = state;
  misshaped[params[3].first + ".exp_avg"] = torch::zeros({4, 2});
  try {
    opt.load_state_tensors(misshaped);
    FAIL() << "expected CheckpointError";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("classifier.dense.weight.exp_avg"), std::string::npos) << e.what();
  }
  auto unexpected = state;
  unexpected["pooler.dense.weight.exp_avg"] = torch::zeros({2});
  EXPECT_THROW(opt.load_state_tensors(unexpected), CheckpointError);
  // A failed load changes nothing.
  EXPECT_EQ(opt.state_tensors().at(params[3].first + ".exp_avg").sizes(), params[3].second.sizes());
}

// GradScaler with growth_interval 2 on hand-made grads.
TEST(GradScaler, SkipsBacksOffAndGrows) {
  GradScaler scaler({.init_scale = 8.0, .growth_interval = 2});
  EXPECT_DOUBLE_EQ(scaler.scale(torch::ones({})).item<double>(), 8.0);
  const auto run = [&](float g0) {
    std::vector<torch::Tensor> grads = {torch::full({2}, g0), torch::full({3}, 4.0f), torch::Tensor()};
    scaler.unscale(grads);
    const bool skipped = scaler.step_was_skipped();
    scaler.update();
    return std::make_pair(skipped, grads[1][0].item<float>());
  };
  auto [skipped, unscaled] = run(8.0f);
  EXPECT_FALSE(skipped);
  EXPECT_FLOAT_EQ(unscaled, 0.5f);  // 4 / 8: unscaled before clipping would see it
  EXPECT_EQ(scaler.growth_tracker(), 1);
  EXPECT_TRUE(run(INFINITY).first);
  EXPECT_DOUBLE_EQ(scaler.get_scale(), 4.0);
  EXPECT_EQ(scaler.growth_tracker(), 0);
  EXPECT_TRUE(run(NAN).first);
  EXPECT_DOUBLE_EQ(scaler.get_scale(), 2.0);
  EXPECT_FALSE(run(1.0f).first);
  EXPECT_FALSE(run(1.0f).first);
  EXPECT_DOUBLE_EQ(scaler.get_scale(), 4.0);
  EXPECT_EQ(scaler.growth_tracker(), 0);
  EXPECT_FALSE(scaler.step_was_skipped());  // still answers after update()
}

TEST(GradScaler, StateRoundTripAndMisuse) {
  GradScaler a({.init_scale = 16.0, .growth_interval = 3});
  a.unscale({torch::ones({2})});
  a.update();
  GradScaler b({.growth_interval = 3});
  b.load_state_tensors(a.state_tensors());
  EXPECT_DOUBLE_EQ(b.get_scale(), 16.0);
  EXPECT_EQ(b.growth_tracker(), 1);
  GradScaler c({.growth_interval = 3});
  c.load_state_json(a.state_json());
  EXPECT_EQ(c.state_json(), a.state_json());
  EXPECT_THROW(c.load_state_tensors({}), CheckpointError);
  EXPECT_THROW(c.load_state_json({{"enabled", false}}), CheckpointError);
  c.unscale({torch::ones({2})});
  EXPECT_THROW(c.unscale({torch::ones({2})}), InternalError);
  c.update();
  EXPECT_THROW(c.update(), InternalError);
  EXPECT_THROW(c.unscale({torch::ones({2}, torch::kHalf)}), ConfigError);
  EXPECT_THROW(GradScaler({.growth_factor = 1.0}), ConfigError);
}

TEST(GradScaler, DisabledIsANoOp) {
  GradScaler scaler({.enabled = false});
  const auto loss = torch::full({}, 3.0f);
  EXPECT_TRUE(scaler.scale(loss).is_same(loss));
  auto g = torch::full({2}, INFINITY);
  scaler.unscale({g});
  scaler.unscale({g});
  scaler.update();
  EXPECT_FALSE(scaler.step_was_skipped());
  EXPECT_TRUE(std::isinf(g[0].item<float>()));
  EXPECT_DOUBLE_EQ(scaler.get_scale(), 1.0);
  EXPECT_TRUE(scaler.state_tensors().empty());
}

TEST(ClipGradNorm, HandComputedNorms) {
  auto a = torch::zeros({2}, torch::requires_grad());
  auto b = torch::zeros({1}, torch::requires_grad());
  auto c = torch::zeros({1}, torch::requires_grad());  // no grad
  a.mutable_grad() = torch::tensor({3.0f, 0.0f});
  b.mutable_grad() = torch::tensor({4.0f});
  EXPECT_NEAR(clip_grad_norm({a, b, c}, 0.0), 5.0, 1e-6);  // measure only
  EXPECT_FLOAT_EQ(a.grad()[0].item<float>(), 3.0f);
  EXPECT_NEAR(clip_grad_norm({a, b, c}, 10.0), 5.0, 1e-6);  // below the limit: unchanged
  EXPECT_FLOAT_EQ(b.grad()[0].item<float>(), 4.0f);
  EXPECT_NEAR(clip_grad_norm({a, b, c}, 1.0), 5.0, 1e-6);
  EXPECT_NEAR(a.grad()[0].item<float>(), 0.6, 1e-6);
  EXPECT_NEAR(b.grad()[0].item<float>(), 0.8, 1e-6);
  EXPECT_NEAR(clip_grad_norm({a, b}, 0.0), 1.0, 1e-6);
  EXPECT_EQ(clip_grad_norm({c}, 1.0), 0.0);
}

}  // namespace
}  // namespace enstack::train
