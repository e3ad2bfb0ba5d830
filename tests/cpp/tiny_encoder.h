// The tiny RoBERTa classifier the trainer and checkpoint tests train and save: 40 ids,
// hidden 16, 4 heads, 3 classes, initial weights fixed by torch::manual_seed(0).
#pragma once

#include <torch/torch.h>

#include <memory>

#include "enstack/model/encoder_classifier.h"

namespace enstack::testing {

inline std::shared_ptr<model::EncoderClassifier> tiny_encoder(int64_t layers = 2) {
  model::EncoderConfig c;
  c.vocab_size = 40;
  c.hidden_size = 16;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 4;
  c.intermediate_size = 24;
  c.max_position_embeddings = 40;
  c.pad_token_id = 1;
  c.set_num_labels(3);
  torch::manual_seed(0);  // the same initial weights for every run of a test
  return std::make_shared<model::EncoderClassifier>(c);
}

}  // namespace enstack::testing
