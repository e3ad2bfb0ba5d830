// EncoderClassifier: a RoBERTa/BERT encoder with a sequence-classification head,
// numerically equivalent to transformers' RobertaForSequenceClassification and
// BertForSequenceClassification. Parameter names are the Hugging Face names
// ("roberta.encoder.layer.0.attention.self.query.weight", ...), so state moves
// between the two without renaming.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "enstack/model/encoder_config.h"

namespace enstack::model {

class EncoderClassifier : public torch::nn::Module {
 public:
  // Builds the architecture with weights initialised as transformers does
  // (normal(0, initializer_range), zero biases, unit LayerNorm, zero padding row).
  explicit EncoderClassifier(EncoderConfig config);

  // input_ids: [batch, seq] integer token ids; attention_mask: [batch, seq] with
  // 1 for real tokens and 0 for padding (undefined: all ones); token_type_ids:
  // [batch, seq] or undefined (zeros). Returns logits [batch, num_labels] in the
  // autocast dtype when autocast is on, else the parameter dtype.
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {},
                        const torch::Tensor& token_type_ids = {});

  // The [batch, seq, hidden] output of the last encoder layer.
  torch::Tensor encode(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {},
                       const torch::Tensor& token_type_ids = {});

  const EncoderConfig& config() const { return config_; }

  // On CPU, a batch whose padding share is at least packing_min_padding, or whose length
  // is at least packing_min_length, runs packed (see use_packing in encoder_classifier.cpp);
  // a share of 0 always packs, above 1 never. For benchmarks and tests of both paths.
  void set_packing_min_padding(double share) { packing_min_padding_ = share; }
  double packing_min_padding() const { return packing_min_padding_; }
  static constexpr int64_t packing_min_length() { return 192; }

  // Names of the classification-head parameters (initialised fresh when a base
  // checkpoint has none).
  std::vector<std::string> head_parameter_names() const;

  // Re-initialises the head as transformers does for a newly added head.
  void init_head();

 private:
  struct Layer {
    torch::nn::Linear query{nullptr}, key{nullptr}, value{nullptr};
    torch::nn::Linear attention_dense{nullptr};
    torch::nn::LayerNorm attention_norm{nullptr};
    torch::nn::Linear intermediate{nullptr}, output{nullptr};
    torch::nn::LayerNorm output_norm{nullptr};
  };

  // What attention needs besides the hidden states. Padded layout: key_mask, boolean
  // [batch, 1, 1, seq] (SDPA), and key_bias, the same as 0 / -inf (written-out path).
  // Packed layout (lengths not empty): the hidden states are [real tokens, hidden],
  // sequence after sequence, `first` the packed row of each sequence's first token.
  struct Batch {
    torch::Tensor key_mask, key_bias, first;
    std::vector<int64_t> lengths;
    int64_t batch = 0, seq = 0;
    bool packed() const { return !lengths.empty(); }
  };

  // The encoder's output states ([batch, seq, hidden], or packed) and their layout.
  std::pair<torch::Tensor, Batch> run_encoder(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                              const torch::Tensor& token_type_ids, bool allow_packing);
  bool use_packing(const torch::Tensor& input_ids, const torch::Tensor& attention_mask) const;
  torch::Tensor embed(const torch::Tensor& input_ids, const torch::Tensor& positions, const torch::Tensor& types);
  torch::Tensor position_ids(const torch::Tensor& input_ids) const;
  torch::Tensor layer_forward(Layer& layer, const torch::Tensor& x, const Batch& b);
  // Attention of packed [tokens, 3 * hidden] projections, one sequence at a time (no padding).
  torch::Tensor packed_attention(const torch::Tensor& projected, const Batch& b, bool written_out);
  torch::Tensor activation(const torch::Tensor& x) const;
  bool use_written_out_attention(const torch::Tensor& x) const;
  torch::Tensor written_out_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                      const torch::Tensor& key_bias);
  void init_linear(torch::nn::Linear& linear);

  EncoderConfig config_;
  torch::nn::Embedding word_embeddings_{nullptr}, position_embeddings_{nullptr},
      token_type_embeddings_{nullptr};
  torch::nn::LayerNorm embedding_norm_{nullptr};
  double hidden_dropout_ = 0.0, classifier_dropout_ = 0.0;  // see enstack/model/dropout.h
  double packing_min_padding_ = 0.15;
  std::vector<Layer> layers_;
  torch::nn::Linear head_dense_{nullptr};  // RoBERTa: classifier.dense; BERT: bert.pooler.dense
  torch::nn::Linear head_out_{nullptr};    // RoBERTa: classifier.out_proj; BERT: classifier
};

}  // namespace enstack::model
