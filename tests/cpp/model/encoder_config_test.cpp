// EncoderConfig from Hugging Face config.json: values, defaults and errors.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "enstack/model/encoder_config.h"
#include "enstack/util/error.h"

namespace enstack::model {
namespace {

using nlohmann::json;

json unixcoder_like() {
  return json::parse(R"({
    "architectures": ["RobertaModel"], "model_type": "roberta", "vocab_size": 51416,
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 1026,
    "type_vocab_size": 10, "pad_token_id": 1, "layer_norm_eps": 1e-05,
    "initializer_range": 0.02, "bos_token_id": 0, "eos_token_id": 2, "output_past": true})");
}

std::string error_of(const json& j) {
  try {
    EncoderConfig::from_json(j);
  } catch (const ModelError& e) {
    return e.what();
  }
  return "";
}

TEST(EncoderConfig, ReadsAUniXcoderConfig) {
  auto c = EncoderConfig::from_json(unixcoder_like());
  EXPECT_EQ(c.model_type, ModelType::kRoberta);
  EXPECT_EQ(c.max_position_embeddings, 1026);
  EXPECT_EQ(c.type_vocab_size, 10);
  EXPECT_EQ(c.vocab_size, 51416);
  EXPECT_EQ(c.num_labels(), 2);  // transformers' default without id2label
  EXPECT_EQ(c.head_dim(), 64);
  EXPECT_DOUBLE_EQ(c.effective_classifier_dropout(), 0.1);
  EXPECT_EQ(c.extra["bos_token_id"], 0);
  EXPECT_FALSE(c.extra.contains("hidden_size"));
}

TEST(EncoderConfig, LabelsComeFromId2Label) {
  auto j = unixcoder_like();
  j["id2label"] = {{"1", "CWE-120"}, {"0", "CWE-119"}, {"2", "CWE-469"}};
  auto c = EncoderConfig::from_json(j);
  ASSERT_EQ(c.num_labels(), 3);
  EXPECT_EQ(c.id2label[0], "CWE-119");
  EXPECT_EQ(c.id2label[2], "CWE-469");
  auto back = c.to_json();
  EXPECT_EQ(back["id2label"]["1"], "CWE-120");
  EXPECT_EQ(back["label2id"]["CWE-469"], 2);
  EXPECT_EQ(back["architectures"][0], "RobertaForSequenceClassification");
  EXPECT_EQ(back["output_past"], true);  // unknown keys survive a round trip
}

TEST(EncoderConfig, BertDefaultsDifferFromRoberta) {
  auto c = EncoderConfig::from_json(json{{"model_type", "bert"}});
  EXPECT_EQ(c.pad_token_id, 0);
  EXPECT_DOUBLE_EQ(c.layer_norm_eps, 1e-12);
  EXPECT_EQ(c.base_prefix(), "bert.");
}

TEST(EncoderConfig, UnsupportedValuesNameTheKey) {
  auto j = unixcoder_like();
  j["model_type"] = "gpt2";
  EXPECT_NE(error_of(j).find("'model_type'"), std::string::npos);
  j = unixcoder_like();
  j["position_embedding_type"] = "relative_key";
  EXPECT_NE(error_of(j).find("'position_embedding_type'"), std::string::npos);
  j = unixcoder_like();
  j["hidden_size"] = "wide";
  EXPECT_NE(error_of(j).find("'hidden_size'"), std::string::npos);
  j = unixcoder_like();
  j["num_attention_heads"] = 7;
  EXPECT_NE(error_of(j).find("num_attention_heads"), std::string::npos);
  j = unixcoder_like();
  j["hidden_act"] = "swish";
  EXPECT_NE(error_of(j).find("hidden_act"), std::string::npos);
  j = unixcoder_like();
  j["id2label"] = {{"0", "a"}, {"5", "b"}};
  EXPECT_NE(error_of(j).find("'id2label'"), std::string::npos);
  j = unixcoder_like();
  j["is_decoder"] = true;
  EXPECT_NE(error_of(j).find("'is_decoder'"), std::string::npos);
}

TEST(EncoderConfig, AllValidationProblemsAreListedAtOnce) {
  auto j = unixcoder_like();
  j["vocab_size"] = 0;
  j["layer_norm_eps"] = -1;
  const auto message = error_of(j);
  EXPECT_NE(message.find("vocab_size"), std::string::npos) << message;
  EXPECT_NE(message.find("layer_norm_eps"), std::string::npos) << message;
}

}  // namespace
}  // namespace enstack::model
