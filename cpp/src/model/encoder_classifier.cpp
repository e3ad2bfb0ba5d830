// The RoBERTa/BERT encoder classifier (see enstack/model/encoder_classifier.h).
// Module nesting mirrors transformers so named_parameters() yields HF names.
#include "enstack/model/encoder_classifier.h"

#include <ATen/ATen.h>
#include <torch/nn/init.h>

#include <cmath>
#include <limits>

#include "enstack/model/dropout.h"
#include "enstack/util/error.h"

namespace enstack::model {
namespace {

using torch::nn::Module;

std::shared_ptr<Module> child(Module& parent, const std::string& name) {
  return parent.register_module(name, std::make_shared<Module>());
}

torch::nn::LayerNorm make_norm(const EncoderConfig& c) {
  return torch::nn::LayerNorm(
      torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps).elementwise_affine(true));
}

}  // namespace

EncoderClassifier::EncoderClassifier(EncoderConfig config) : config_(std::move(config)) {
  config_.validate();
  const auto& c = config_;
  const bool roberta = c.model_type == ModelType::kRoberta;
  auto base = child(*this, roberta ? "roberta" : "bert");

  auto embeddings = child(*base, "embeddings");
  word_embeddings_ = embeddings->register_module(
      "word_embeddings", torch::nn::Embedding(torch::nn::EmbeddingOptions(c.vocab_size, c.hidden_size)
                                                  .padding_idx(c.pad_token_id)));
  position_embeddings_ = embeddings->register_module(
      "position_embeddings", torch::nn::Embedding(c.max_position_embeddings, c.hidden_size));
  token_type_embeddings_ = embeddings->register_module(
      "token_type_embeddings", torch::nn::Embedding(c.type_vocab_size, c.hidden_size));
  embedding_norm_ = embeddings->register_module("LayerNorm", make_norm(c));
  hidden_dropout_ = c.hidden_dropout_prob;
  classifier_dropout_ = c.effective_classifier_dropout();

  auto encoder = child(*base, "encoder");
  auto layer_list = child(*encoder, "layer");
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    auto block = child(*layer_list, std::to_string(i));
    auto attention = child(*block, "attention");
    auto self = child(*attention, "self");
    auto attention_output = child(*attention, "output");
    auto intermediate = child(*block, "intermediate");
    auto output = child(*block, "output");
    Layer layer;
    layer.query = self->register_module("query", torch::nn::Linear(c.hidden_size, c.hidden_size));
    layer.key = self->register_module("key", torch::nn::Linear(c.hidden_size, c.hidden_size));
    layer.value = self->register_module("value", torch::nn::Linear(c.hidden_size, c.hidden_size));
    layer.attention_dense =
        attention_output->register_module("dense", torch::nn::Linear(c.hidden_size, c.hidden_size));
    layer.attention_norm = attention_output->register_module("LayerNorm", make_norm(c));
    layer.intermediate = intermediate->register_module(
        "dense", torch::nn::Linear(c.hidden_size, c.intermediate_size));
    layer.output =
        output->register_module("dense", torch::nn::Linear(c.intermediate_size, c.hidden_size));
    layer.output_norm = output->register_module("LayerNorm", make_norm(c));
    layers_.push_back(layer);
  }

  if (roberta) {
    auto classifier = child(*this, "classifier");
    head_dense_ = classifier->register_module("dense", torch::nn::Linear(c.hidden_size, c.hidden_size));
    head_out_ =
        classifier->register_module("out_proj", torch::nn::Linear(c.hidden_size, c.num_labels()));
  } else {
    auto pooler = child(*base, "pooler");
    head_dense_ = pooler->register_module("dense", torch::nn::Linear(c.hidden_size, c.hidden_size));
    head_out_ = register_module("classifier", torch::nn::Linear(c.hidden_size, c.num_labels()));
  }

  // transformers' _init_weights for every module.
  torch::NoGradGuard no_grad;
  for (auto* table : {&word_embeddings_, &position_embeddings_, &token_type_embeddings_}) {
    torch::nn::init::normal_((*table)->weight, 0.0, c.initializer_range);
  }
  word_embeddings_->weight[c.pad_token_id].zero_();
  for (auto& layer : layers_) {
    for (auto* linear : {&layer.query, &layer.key, &layer.value, &layer.attention_dense,
                         &layer.intermediate, &layer.output}) {
      init_linear(*linear);
    }
  }
  init_linear(head_dense_);
  init_linear(head_out_);
  // LayerNorms are constructed with weight 1 and bias 0 already.
}

void EncoderClassifier::init_linear(torch::nn::Linear& linear) {
  torch::NoGradGuard no_grad;
  torch::nn::init::normal_(linear->weight, 0.0, config_.initializer_range);
  linear->bias.zero_();
}

void EncoderClassifier::init_head() {
  if (config_.model_type == ModelType::kRoberta) init_linear(head_dense_);
  init_linear(head_out_);
}

std::vector<std::string> EncoderClassifier::head_parameter_names() const {
  if (config_.model_type == ModelType::kRoberta) {
    return {"classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
            "classifier.out_proj.bias"};
  }
  return {"classifier.weight", "classifier.bias"};
}

torch::Tensor EncoderClassifier::position_ids(const torch::Tensor& input_ids) const {
  const int64_t seq = input_ids.size(1);
  if (config_.model_type == ModelType::kBert) {
    return torch::arange(seq, input_ids.options().dtype(torch::kLong)).unsqueeze(0).expand_as(input_ids);
  }
  // RoBERTa: positions count real tokens from padding_idx + 1; padding keeps padding_idx.
  auto not_pad = input_ids.ne(config_.pad_token_id).to(torch::kLong);
  return torch::cumsum(not_pad, 1).mul_(not_pad).add_(config_.pad_token_id);
}

torch::Tensor EncoderClassifier::embed(const torch::Tensor& input_ids, const torch::Tensor& positions,
                                       const torch::Tensor& types) {
  auto x = word_embeddings_(input_ids) + token_type_embeddings_(types) + position_embeddings_(positions);
  return fast_dropout(embedding_norm_(x), hidden_dropout_, is_training());
}

torch::Tensor EncoderClassifier::activation(const torch::Tensor& x) const {
  if (config_.hidden_act == "gelu") return at::gelu(x);
  if (config_.hidden_act == "relu") return at::relu(x);
  return at::gelu(x, "tanh");  // gelu_new, gelu_pytorch_tanh
}

torch::Tensor EncoderClassifier::layer_forward(Layer& layer, const torch::Tensor& x, const Batch& b) {
  const int64_t batch = b.batch, seq = b.seq;
  const int64_t heads = config_.num_attention_heads, head_dim = config_.head_dim();
  auto split = [&](const torch::Tensor& t) {
    return t.view({batch, seq, heads, head_dim}).transpose(1, 2);
  };
  // One GEMM for Q, K and V: the three projections' weights are concatenated on the fly
  // (a [3h, h] copy, small next to the activations), the parameters stay HF's separate ones.
  // On the written-out attention path the 1/sqrt(head_dim) scale is folded into the query
  // weights here rather than applied to the [batch, heads, seq, seq] scores (twice, with backward).
  const bool written_out = use_written_out_attention(x);
  auto query_weight = layer.query->weight, query_bias = layer.query->bias;
  if (written_out) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
    query_weight = query_weight * scale;
    query_bias = query_bias * scale;
  }
  auto weight = torch::cat({query_weight, layer.key->weight, layer.value->weight});
  auto bias = torch::cat({query_bias, layer.key->bias, layer.value->bias});
  auto projected = torch::linear(x, weight, bias);
  auto finish = [&](const torch::Tensor& context) {
    auto attended = layer.attention_norm(dropout_add(layer.attention_dense(context), x, hidden_dropout_, is_training()));
    auto inner = activation(layer.intermediate(attended));
    return layer.output_norm(dropout_add(layer.output(inner), attended, hidden_dropout_, is_training()));
  };
  if (b.packed()) return finish(packed_attention(projected, b, written_out));
  auto qkv = projected.chunk(3, -1);
  auto q = split(qkv[0]);
  auto k = split(qkv[1]);
  auto v = split(qkv[2]);
  auto attended_heads = written_out ? written_out_attention(q, k, v, b.key_bias)
                                    : at::scaled_dot_product_attention(
                                          q, k, v, b.key_mask.defined() ? std::optional<torch::Tensor>(b.key_mask) : std::nullopt,
                                          0.0, /*is_causal=*/false);
  return finish(attended_heads.transpose(1, 2).reshape({batch, seq, config_.hidden_size}));
}

torch::Tensor EncoderClassifier::packed_attention(const torch::Tensor& projected, const Batch& b, bool written_out) {
  const int64_t heads = config_.num_attention_heads, head_dim = config_.head_dim();
  // One split (whose backward is one cat), not a narrow per sequence (each of whose
  // backward would write a full-size gradient).
  const auto pieces = projected.split_with_sizes(b.lengths, 0);
  std::vector<torch::Tensor> contexts;
  contexts.reserve(pieces.size());
  for (const auto& piece : pieces) {
    const int64_t length = piece.size(0);
    // [length, 3 * hidden] -> q, k, v as [heads, length, head_dim] views
    auto qkv = piece.view({length, 3, heads, head_dim}).permute({1, 2, 0, 3});
    auto q = qkv[0], k = qkv[1], v = qkv[2];
    auto context = written_out ? written_out_attention(q, k, v, {})
                               : at::scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0),
                                                                  std::nullopt, 0.0, false).squeeze(0);
    contexts.push_back(context.transpose(0, 1).reshape({length, config_.hidden_size}));
  }
  return torch::cat(contexts);
}

// SDPA's fused kernels serve inference and everything without attention dropout.
// CPU training with attention dropout would take SDPA's math path, whose dropout
// draws each element with bernoulli_ and keeps a [batch, heads, seq, seq] mask;
// there the same math is written out with the mask-free fused softmax + dropout
// (enstack/model/dropout.h). On CUDA SDPA (with its own dropout) serves training too.
bool EncoderClassifier::use_written_out_attention(const torch::Tensor& x) const {
  return is_training() && config_.attention_probs_dropout_prob > 0.0 && x.device().is_cpu();
}

// Attention over [batch, heads, seq, head_dim] queries already scaled by
// 1/sqrt(head_dim), with an additive [batch, 1, 1, seq] key-padding bias (0 or -inf)
// or none: a broadcast add (whose backward is free) instead of a masked_fill over
// the whole score tensor in both directions.
torch::Tensor EncoderClassifier::written_out_attention(const torch::Tensor& q, const torch::Tensor& k,
                                                       const torch::Tensor& v, const torch::Tensor& key_bias) {
  auto scores = torch::matmul(q, k.transpose(-2, -1));
  if (key_bias.defined()) scores.add_(key_bias);
  return torch::matmul(softmax_dropout(scores, config_.attention_probs_dropout_prob, true), v);
}

torch::Tensor EncoderClassifier::encode(const torch::Tensor& input_ids,
                                        const torch::Tensor& attention_mask,
                                        const torch::Tensor& token_type_ids) {
  return run_encoder(input_ids, attention_mask, token_type_ids, /*allow_packing=*/false).first;
}

// Packed: every position-wise layer (the linear layers, LayerNorm, GELU, dropout) runs
// on the real tokens only and attention runs sequence by sequence at its own length
// (the transformers "padding-free" idea): attention costs sum(length^2) instead of
// batch * longest^2, and one sequence's [heads, length, length] scores stay in cache.
// Measured on CPU (1 thread, hidden 128, batch 16, train step): packed is faster from
// about 15% padding, and at any padding from 256 tokens on (1.08x at 256 and 1.36x at
// 512 with no padding at all), but slower for short unpadded batches (0.84x at 64),
// where the per-sequence calls dominate. A sequence's real tokens need not be contiguous
// (a mask with holes attends to exactly them), but its first position must be real,
// since the head reads position 0 (left padding stays padded). CPU only: on CUDA
// reading the lengths would synchronise every step, and many small attention calls
// would underuse the device.
bool EncoderClassifier::use_packing(const torch::Tensor& input_ids, const torch::Tensor& attention_mask) const {
  if (packing_min_padding_ > 1.0 || !attention_mask.defined() || !input_ids.device().is_cpu() ||
      input_ids.numel() == 0) {
    return false;
  }
  const auto real = attention_mask.ne(0);
  const double padding = 1.0 - real.sum().item<double>() / static_cast<double>(real.numel());
  return (padding >= packing_min_padding_ || input_ids.size(1) >= packing_min_length()) &&
         real.select(1, 0).all().item<bool>();
}

std::pair<torch::Tensor, EncoderClassifier::Batch> EncoderClassifier::run_encoder(
    const torch::Tensor& input_ids, const torch::Tensor& attention_mask, const torch::Tensor& token_type_ids,
    bool allow_packing) {
  ENSTACK_CHECK(input_ids.dim() == 2, ModelError, "input_ids must be [batch, seq], got ",
                input_ids.sizes(), ".");
  ENSTACK_CHECK(!at::isFloatingType(input_ids.scalar_type()), ModelError,
                "input_ids must hold integer token ids, got ", input_ids.scalar_type(), ".");
  const int64_t seq = input_ids.size(1);
  const int64_t max_seq = config_.model_type == ModelType::kRoberta
                              ? config_.max_position_embeddings - config_.pad_token_id - 1
                              : config_.max_position_embeddings;
  ENSTACK_CHECK(seq <= max_seq, ModelError, "sequence length ", seq,
                " exceeds what this model's ", config_.max_position_embeddings,
                " position embeddings allow (", max_seq, "); set model.max_length <= ", max_seq, ".");
  ENSTACK_CHECK(!attention_mask.defined() || attention_mask.sizes() == input_ids.sizes(), ModelError,
                "attention_mask shape ", attention_mask.sizes(), " differs from input_ids shape ",
                input_ids.sizes(), ".");
  Batch b;
  b.batch = input_ids.size(0);
  b.seq = seq;
  auto ids = input_ids, positions = position_ids(input_ids);
  auto types = token_type_ids.defined() ? token_type_ids.to(torch::kLong)
                                        : torch::zeros_like(input_ids, input_ids.options().dtype(torch::kLong));
  if (allow_packing && use_packing(input_ids, attention_mask)) {
    const auto real = attention_mask.ne(0);
    const auto lengths = real.sum(1).to(torch::kLong).contiguous();
    b.lengths.assign(lengths.data_ptr<int64_t>(), lengths.data_ptr<int64_t>() + b.batch);
    const auto index = real.reshape({-1}).nonzero().squeeze(1);
    b.first = (torch::cumsum(lengths, 0) - lengths).to(input_ids.device());
    ids = ids.reshape({-1}).index_select(0, index);
    positions = positions.reshape({-1}).index_select(0, index);
    types = types.reshape({-1}).index_select(0, index);
  }
  auto x = embed(ids, positions, types);
  // Boolean key-padding mask [batch, 1, 1, seq]: true where a key may be attended.
  // The written-out attention path takes the same mask as an additive bias of 0 / -inf;
  // every row keeps its first token (<s>/[CLS]), so no row is fully masked.
  if (attention_mask.defined() && !b.packed()) {
    b.key_mask = attention_mask.to(torch::kBool).view({b.batch, 1, 1, seq});
    if (use_written_out_attention(x)) {
      b.key_bias = torch::zeros(b.key_mask.sizes(), x.options())
                       .masked_fill_(b.key_mask.logical_not(), -std::numeric_limits<float>::infinity());
    }
  }
  for (auto& layer : layers_) x = layer_forward(layer, x, b);
  return {x, b};
}

torch::Tensor EncoderClassifier::forward(const torch::Tensor& input_ids,
                                         const torch::Tensor& attention_mask,
                                         const torch::Tensor& token_type_ids) {
  const auto [states, b] = run_encoder(input_ids, attention_mask, token_type_ids, /*allow_packing=*/true);
  auto first = b.packed() ? states.index_select(0, b.first) : states.select(1, 0);
  if (config_.model_type == ModelType::kRoberta) {
    auto h = torch::tanh(head_dense_(fast_dropout(first, classifier_dropout_, is_training())));
    return head_out_(fast_dropout(h, classifier_dropout_, is_training()));
  }
  auto pooled = torch::tanh(head_dense_(first));
  return head_out_(fast_dropout(pooled, classifier_dropout_, is_training()));
}

}  // namespace enstack::model
