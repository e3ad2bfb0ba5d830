// EncoderConfig <-> Hugging Face config.json, with validation that names the
// offending key (see enstack/model/encoder_config.h).
#include "enstack/model/encoder_config.h"

#include <set>
#include <sstream>

#include "enstack/util/error.h"
#include "enstack/util/files.h"

namespace enstack::model {
namespace {

using nlohmann::json;

// Keys read into typed fields; everything else is kept in `extra`.
const std::set<std::string> kInterpretedKeys = {
    "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
    "classifier_dropout", "max_position_embeddings", "type_vocab_size", "pad_token_id",
    "layer_norm_eps", "initializer_range", "id2label", "label2id", "num_labels", "architectures",
    "position_embedding_type", "is_decoder", "add_cross_attention"};

template <typename T>
void read_key(const json& j, const char* key, T& out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return;
  try {
    out = it->get<T>();
  } catch (const json::exception&) {
    throw ModelError(util::str_cat("config.json key '", key, "' has value ", it->dump(),
                                   " of the wrong type; fix or remove the key."));
  }
}

std::vector<std::string> read_labels(const json& j) {
  auto it = j.find("id2label");
  if (it == j.end() || it->is_null()) {
    int64_t n = 2;
    read_key(j, "num_labels", n);
    ENSTACK_CHECK(n >= 1 && n <= 100000, ModelError, "config.json key 'num_labels' is ", n,
                  "; it must be between 1 and 100000.");
    std::vector<std::string> labels;
    for (int64_t i = 0; i < n; ++i) labels.push_back(util::str_cat("LABEL_", i));
    return labels;
  }
  ENSTACK_CHECK(it->is_object() && !it->empty(), ModelError,
                "config.json key 'id2label' must be a non-empty object {\"0\": name, ...}.");
  std::vector<std::string> labels(it->size());
  std::vector<bool> seen(it->size(), false);
  for (const auto& [key, value] : it->items()) {
    std::size_t index = 0;
    std::size_t used = 0;
    try {
      index = std::stoul(key, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    ENSTACK_CHECK(used == key.size() && index < labels.size() && !seen[index], ModelError,
                  "config.json key 'id2label' has id '", key, "'; ids must be 0..",
                  labels.size() - 1, ", each once.");
    ENSTACK_CHECK(value.is_string(), ModelError, "config.json key 'id2label' maps ", key,
                  " to a non-string value.");
    labels[index] = value.get<std::string>();
    seen[index] = true;
  }
  return labels;
}

}  // namespace

std::string EncoderConfig::base_prefix() const {
  return model_type == ModelType::kRoberta ? "roberta." : "bert.";
}

void EncoderConfig::set_num_labels(int64_t n) {
  ENSTACK_CHECK(n >= 1 && n <= 100000, ModelError, "num_labels is ", n,
                "; it must be between 1 and 100000.");
  id2label.clear();
  for (int64_t i = 0; i < n; ++i) id2label.push_back(util::str_cat("LABEL_", i));
}

void EncoderConfig::validate() const {
  std::ostringstream problems;
  auto need = [&](bool ok, const std::string& what) {
    if (!ok) problems << "\n  - " << what;
  };
  need(vocab_size > 0, "vocab_size must be positive");
  need(hidden_size > 0, "hidden_size must be positive");
  need(num_hidden_layers > 0, "num_hidden_layers must be positive");
  need(num_attention_heads > 0 && hidden_size % std::max<int64_t>(num_attention_heads, 1) == 0,
       util::str_cat("hidden_size (", hidden_size, ") must be a multiple of num_attention_heads (",
                     num_attention_heads, ")"));
  need(intermediate_size > 0, "intermediate_size must be positive");
  need(hidden_act == "gelu" || hidden_act == "gelu_new" || hidden_act == "gelu_pytorch_tanh" ||
           hidden_act == "relu",
       util::str_cat("hidden_act '", hidden_act,
                     "' is not supported (use gelu, gelu_new, gelu_pytorch_tanh or relu)"));
  for (auto [name, p] : {std::pair{"hidden_dropout_prob", hidden_dropout_prob},
                         std::pair{"attention_probs_dropout_prob", attention_probs_dropout_prob}}) {
    need(p >= 0.0 && p < 1.0, util::str_cat(name, " must be in [0, 1), got ", p));
  }
  need(classifier_dropout < 1.0, "classifier_dropout must be below 1");
  need(type_vocab_size >= 1, "type_vocab_size must be at least 1");
  need(pad_token_id >= 0 && pad_token_id < vocab_size,
       util::str_cat("pad_token_id (", pad_token_id, ") must be in [0, vocab_size)"));
  need(layer_norm_eps > 0, "layer_norm_eps must be positive");
  need(!id2label.empty(), "there must be at least one label");
  if (model_type == ModelType::kRoberta) {
    need(max_position_embeddings > pad_token_id + 1,
         util::str_cat("max_position_embeddings (", max_position_embeddings,
                       ") must exceed pad_token_id + 1 for RoBERTa position ids"));
  } else {
    need(max_position_embeddings > 0, "max_position_embeddings must be positive");
  }
  const std::string text = problems.str();
  ENSTACK_CHECK(text.empty(), ModelError, "unsupported model configuration:", text);
}

EncoderConfig EncoderConfig::from_json(const json& j) {
  ENSTACK_CHECK(j.is_object(), ModelError, "config.json must hold a JSON object.");
  EncoderConfig c;
  std::string type;
  read_key(j, "model_type", type);
  if (type == "roberta" || type == "xlm-roberta") {
    c.model_type = ModelType::kRoberta;
  } else if (type == "bert") {
    c.model_type = ModelType::kBert;
    c.pad_token_id = 0;
    c.layer_norm_eps = 1e-12;
    c.max_position_embeddings = 512;
    c.type_vocab_size = 2;
  } else {
    throw ModelError(util::str_cat(
        "config.json key 'model_type' is '", type,
        "'; enstack supports the RoBERTa family (roberta: CodeBERT, GraphCodeBERT, UniXcoder) "
        "and bert. Use a checkpoint of one of those."));
  }
  std::string position_type = "absolute";
  read_key(j, "position_embedding_type", position_type);
  ENSTACK_CHECK(position_type == "absolute", ModelError,
                "config.json key 'position_embedding_type' is '", position_type,
                "'; only 'absolute' position embeddings are supported.");
  bool flag = false;
  read_key(j, "is_decoder", flag);
  ENSTACK_CHECK(!flag, ModelError, "config.json key 'is_decoder' is true; enstack needs an encoder.");
  read_key(j, "add_cross_attention", flag);
  ENSTACK_CHECK(!flag, ModelError,
                "config.json key 'add_cross_attention' is true; cross-attention is not supported.");

  read_key(j, "vocab_size", c.vocab_size);
  read_key(j, "hidden_size", c.hidden_size);
  read_key(j, "num_hidden_layers", c.num_hidden_layers);
  read_key(j, "num_attention_heads", c.num_attention_heads);
  read_key(j, "intermediate_size", c.intermediate_size);
  read_key(j, "hidden_act", c.hidden_act);
  read_key(j, "hidden_dropout_prob", c.hidden_dropout_prob);
  read_key(j, "attention_probs_dropout_prob", c.attention_probs_dropout_prob);
  read_key(j, "classifier_dropout", c.classifier_dropout);
  read_key(j, "max_position_embeddings", c.max_position_embeddings);
  read_key(j, "type_vocab_size", c.type_vocab_size);
  read_key(j, "pad_token_id", c.pad_token_id);
  read_key(j, "layer_norm_eps", c.layer_norm_eps);
  read_key(j, "initializer_range", c.initializer_range);
  c.id2label = read_labels(j);
  for (const auto& [key, value] : j.items()) {
    if (!kInterpretedKeys.count(key)) c.extra[key] = value;
  }
  c.validate();
  return c;
}

EncoderConfig EncoderConfig::from_file(const std::filesystem::path& config_json) {
  const std::string text = util::read_file<ModelError>(config_json);
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  ENSTACK_CHECK(!j.is_discarded(), ModelError, config_json.string(),
                " is not valid JSON; re-download the model or fix the file.");
  try {
    return from_json(j);
  } catch (const ModelError& e) {
    throw ModelError(util::str_cat(config_json.string(), ": ", e.what()));
  }
}

json EncoderConfig::to_json() const {
  json j = extra;
  const bool roberta = model_type == ModelType::kRoberta;
  j["model_type"] = roberta ? "roberta" : "bert";
  j["architectures"] = {roberta ? "RobertaForSequenceClassification" : "BertForSequenceClassification"};
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["intermediate_size"] = intermediate_size;
  j["hidden_act"] = hidden_act;
  j["hidden_dropout_prob"] = hidden_dropout_prob;
  j["attention_probs_dropout_prob"] = attention_probs_dropout_prob;
  j["classifier_dropout"] = classifier_dropout < 0 ? json(nullptr) : json(classifier_dropout);
  j["max_position_embeddings"] = max_position_embeddings;
  j["type_vocab_size"] = type_vocab_size;
  j["pad_token_id"] = pad_token_id;
  j["layer_norm_eps"] = layer_norm_eps;
  j["initializer_range"] = initializer_range;
  j["position_embedding_type"] = "absolute";
  json id2label_json = json::object();
  json label2id_json = json::object();
  for (std::size_t i = 0; i < id2label.size(); ++i) {
    id2label_json[std::to_string(i)] = id2label[i];
    label2id_json[id2label[i]] = i;
  }
  j["id2label"] = id2label_json;
  j["label2id"] = label2id_json;
  return j;
}

std::string EncoderConfig::to_string() const {
  return util::str_cat("EncoderConfig(model_type=", model_type == ModelType::kRoberta ? "roberta" : "bert",
                       ", layers=", num_hidden_layers, ", hidden=", hidden_size, ", heads=",
                       num_attention_heads, ", intermediate=", intermediate_size, ", vocab=", vocab_size,
                       ", positions=", max_position_embeddings, ", labels=", num_labels(), ")");
}

}  // namespace enstack::model
