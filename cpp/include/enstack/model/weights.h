// Hugging Face model directories in and out: reading weight files (single or
// sharded safetensors), loading a state into an EncoderClassifier with one
// error listing every missing, unexpected and mis-shaped key, and writing a
// directory that transformers loads. Pickled pytorch_model.bin files are read
// in Python with torch.load(weights_only=True) and handed over as a state map:
// the C++ core never unpickles.
#pragma once

#include <torch/types.h>

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "enstack/model/encoder_classifier.h"

namespace enstack::model {

using StateMap = std::map<std::string, torch::Tensor>;

// Reads model.safetensors, or the shards named by model.safetensors.index.json,
// converting floating tensors to `dtype`. Throws ModelError when the directory
// has neither (naming what it has, e.g. a pytorch_model.bin to load from Python).
StateMap read_weights(const std::filesystem::path& model_dir, torch::ScalarType dtype = torch::kFloat);

// Copies `state` into `model`. Accepts names with or without the "roberta."/"bert."
// prefix, legacy LayerNorm gamma/beta names, and ignores pre-training heads
// (lm_head.*, cls.*), the unused RoBERTa pooler and position_ids buffers. When
// every classification-head tensor is absent the head is initialised fresh (info
// log); anything else missing, unexpected or mis-shaped is listed in one ModelError.
void load_state(EncoderClassifier& model, const StateMap& state);

// The model's parameters by Hugging Face name.
StateMap state_of(const EncoderClassifier& model);

// Builds a model from a directory with config.json and safetensors weights.
// `num_labels`, when given and different from the config's, replaces the labels
// (and requires the head to be absent from the weights or of that size).
std::shared_ptr<EncoderClassifier> load_pretrained(const std::filesystem::path& model_dir,
                                                   std::optional<int64_t> num_labels = std::nullopt);

// Builds a model from config.json plus an already-read state (the Python path
// for pytorch_model.bin).
std::shared_ptr<EncoderClassifier> from_state(const std::filesystem::path& config_json,
                                              const StateMap& state,
                                              std::optional<int64_t> num_labels = std::nullopt);

// Writes config.json and model.safetensors into `out_dir` (created if needed),
// each file atomically. `dtype` lets best/ and swa/ be stored in fp16/bf16.
void save_pretrained(const EncoderClassifier& model, const std::filesystem::path& out_dir,
                     torch::ScalarType dtype = torch::kFloat);

}  // namespace enstack::model
