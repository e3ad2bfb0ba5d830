// EncoderConfig: the architecture of a RoBERTa/BERT encoder classifier, read
// from and written to a Hugging Face config.json.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace enstack::model {

enum class ModelType { kRoberta, kBert };

struct EncoderConfig {
  ModelType model_type = ModelType::kRoberta;
  int64_t vocab_size = 50265;
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;
  std::string hidden_act = "gelu";  // gelu | gelu_new | gelu_pytorch_tanh | relu
  double hidden_dropout_prob = 0.1;
  double attention_probs_dropout_prob = 0.1;
  double classifier_dropout = -1.0;  // < 0: use hidden_dropout_prob (config null)
  int64_t max_position_embeddings = 514;
  int64_t type_vocab_size = 1;
  int64_t pad_token_id = 1;
  double layer_norm_eps = 1e-5;
  double initializer_range = 0.02;
  std::vector<std::string> id2label = {"LABEL_0", "LABEL_1"};  // its size is num_labels

  // Keys of the original config.json that enstack does not interpret
  // (bos_token_id, tokenizer_class, ...), written back unchanged on save.
  nlohmann::json extra = nlohmann::json::object();

  int64_t num_labels() const { return static_cast<int64_t>(id2label.size()); }
  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  double effective_classifier_dropout() const {
    return classifier_dropout < 0 ? hidden_dropout_prob : classifier_dropout;
  }
  // "roberta." or "bert.": the prefix of the encoder's parameter names.
  std::string base_prefix() const;

  // Replaces the labels with `n` generic ones (LABEL_0..), as transformers does.
  void set_num_labels(int64_t n);

  // Throws ModelError naming each unsupported or inconsistent key.
  void validate() const;
  std::string to_string() const;

  static EncoderConfig from_json(const nlohmann::json& json);
  static EncoderConfig from_file(const std::filesystem::path& config_json);
  nlohmann::json to_json() const;  // a config.json for *ForSequenceClassification
};

}  // namespace enstack::model
