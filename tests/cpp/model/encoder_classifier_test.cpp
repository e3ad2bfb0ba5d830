// EncoderClassifier invariants that need no Python: Hugging Face parameter
// names, RoBERTa position ids, padding invariance, dropout in train mode,
// save/load round trips and the one-error-lists-all weight loading.
// (Numerical parity with transformers is tested in tests/python/test_model.py.)
#include <gtest/gtest.h>

#include <torch/nn.h>
#include <torch/utils.h>

#include <filesystem>
#include <fstream>

#include "enstack/model/encoder_classifier.h"
#include "enstack/model/weights.h"
#include "enstack/util/error.h"

namespace enstack::model {
namespace {

namespace fs = std::filesystem;

EncoderConfig tiny(ModelType type = ModelType::kRoberta) {
  EncoderConfig c;
  c.model_type = type;
  c.vocab_size = 40;
  c.hidden_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.intermediate_size = 24;
  c.max_position_embeddings = 34;
  c.pad_token_id = type == ModelType::kRoberta ? 1 : 0;
  c.type_vocab_size = 2;
  c.set_num_labels(3);
  return c;
}

fs::path temp_dir(const std::string& name) {
  auto dir = fs::temp_directory_path() / ("enstack_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

TEST(EncoderClassifier, ParameterNamesAreHuggingFaceNames) {
  torch::manual_seed(0);
  EncoderClassifier model(tiny());
  auto params = model.named_parameters();
  EXPECT_EQ(params.size(), 5u + 16u * 2u + 4u);
  for (const char* name : {"roberta.embeddings.word_embeddings.weight",
                           "roberta.embeddings.LayerNorm.bias",
                           "roberta.encoder.layer.1.attention.self.value.weight",
                           "roberta.encoder.layer.0.attention.output.LayerNorm.weight",
                           "roberta.encoder.layer.1.intermediate.dense.bias",
                           "roberta.encoder.layer.0.output.dense.weight",
                           "classifier.dense.weight", "classifier.out_proj.bias"}) {
    EXPECT_NE(params.find(name), nullptr) << name;
  }
  EncoderClassifier bert(tiny(ModelType::kBert));
  EXPECT_NE(bert.named_parameters().find("bert.pooler.dense.weight"), nullptr);
  EXPECT_NE(bert.named_parameters().find("classifier.weight"), nullptr);
}

TEST(EncoderClassifier, InitialisationFollowsTransformers) {
  torch::manual_seed(0);
  auto c = tiny();
  c.initializer_range = 0.5;
  EncoderClassifier model(c);
  auto p = model.named_parameters();
  EXPECT_TRUE(p["roberta.embeddings.word_embeddings.weight"][c.pad_token_id].eq(0).all().item<bool>());
  EXPECT_TRUE(p["classifier.dense.bias"].eq(0).all().item<bool>());
  EXPECT_TRUE(p["roberta.embeddings.LayerNorm.weight"].eq(1).all().item<bool>());
  const double std = p["roberta.encoder.layer.0.intermediate.dense.weight"].std().item<double>();
  EXPECT_NEAR(std, 0.5, 0.1);
}

TEST(EncoderClassifier, PaddingDoesNotChangeLogits) {
  torch::manual_seed(1);
  EncoderClassifier model(tiny());
  model.eval();
  auto ids = torch::tensor({{0, 7, 9, 11, 2}}, torch::kLong);
  auto alone = model.forward(ids, torch::ones_like(ids));
  auto padded_ids = torch::tensor({{0, 7, 9, 11, 2, 1, 1, 1}}, torch::kLong);
  auto mask = torch::tensor({{1, 1, 1, 1, 1, 0, 0, 0}}, torch::kLong);
  auto padded = model.forward(padded_ids, mask);
  EXPECT_TRUE(torch::allclose(alone, padded, 1e-5, 1e-6)) << alone << padded;
}

TEST(EncoderClassifier, RejectsSequencesLongerThanThePositions) {
  EncoderClassifier model(tiny());
  auto ids = torch::full({1, 33}, 5, torch::kLong);  // RoBERTa allows 34 - 1 - 1 = 32
  EXPECT_THROW(model.forward(ids), ModelError);
  EXPECT_NO_THROW(model.forward(ids.narrow(1, 0, 32)));
  EXPECT_THROW(model.forward(torch::ones({2, 3}, torch::kFloat)), ModelError);
}

TEST(EncoderClassifier, DropoutActsOnlyInTrainMode) {
  torch::manual_seed(2);
  EncoderClassifier model(tiny());
  auto ids = torch::randint(3, 40, {2, 6}, torch::kLong);
  model.eval();
  auto a = model.forward(ids), b = model.forward(ids);
  EXPECT_TRUE(torch::equal(a, b));
  model.train();
  auto c = model.forward(ids), d = model.forward(ids);
  EXPECT_FALSE(torch::equal(c, d));
}

TEST(Weights, SaveThenLoadGivesIdenticalLogits) {
  torch::manual_seed(3);
  auto dir = temp_dir("roundtrip");
  EncoderClassifier model(tiny());
  model.eval();
  save_pretrained(model, dir);
  EXPECT_TRUE(fs::exists(dir / "config.json"));
  auto loaded = load_pretrained(dir);
  loaded->eval();
  auto ids = torch::randint(3, 40, {3, 7}, torch::kLong);
  EXPECT_TRUE(torch::equal(model.forward(ids), loaded->forward(ids)));
  EXPECT_EQ(loaded->config().id2label, model.config().id2label);
  fs::remove_all(dir);
}

TEST(Weights, BaseCheckpointWithoutHeadGetsAFreshHead) {
  torch::manual_seed(4);
  EncoderClassifier model(tiny());
  StateMap base;
  for (auto& [name, tensor] : state_of(model)) {
    if (name.rfind("roberta.", 0) == 0) base.emplace(name.substr(8), tensor.clone());  // RobertaModel names
  }
  base.emplace("pooler.dense.weight", torch::zeros({16, 16}));
  base.emplace("lm_head.bias", torch::zeros({40}));
  EncoderClassifier fresh(tiny());
  load_state(fresh, base);
  EXPECT_TRUE(torch::equal(fresh.named_parameters()["roberta.encoder.layer.1.output.dense.weight"],
                           model.named_parameters()["roberta.encoder.layer.1.output.dense.weight"]));
}

TEST(Weights, OneErrorListsMissingUnexpectedAndMisshapedKeys) {
  EncoderClassifier model(tiny());
  StateMap state = state_of(model);
  state.erase("roberta.encoder.layer.0.attention.self.key.bias");
  state["roberta.encoder.layer.0.attention.self.query.weight"] = torch::zeros({3, 3});
  state["roberta.encoder.layer.9.made.up"] = torch::zeros({1});
  try {
    load_state(model, state);
    FAIL() << "load_state accepted a broken state";
  } catch (const ModelError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("layer.0.attention.self.key.bias"), std::string::npos) << what;
    EXPECT_NE(what.find("layer.9.made.up"), std::string::npos) << what;
    EXPECT_NE(what.find("query.weight (checkpoint [3, 3]"), std::string::npos) << what;
  }
}

TEST(Weights, DirectoryProblemsAreModelErrors) {
  auto dir = temp_dir("empty");
  EXPECT_THROW(load_pretrained(dir), ModelError);
  EXPECT_THROW(read_weights(dir / "absent"), ModelError);
  std::ofstream(dir / "pytorch_model.bin") << "pickle";
  try {
    read_weights(dir);
    FAIL();
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("enstack.model.load"), std::string::npos);
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace enstack::model
