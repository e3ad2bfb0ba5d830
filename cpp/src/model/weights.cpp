// Hugging Face model directories in and out (see enstack/model/weights.h).
#include "enstack/model/weights.h"

#include <nlohmann/json.hpp>

#include <set>
#include <sstream>

#include "enstack/model/safetensors.h"
#include "enstack/util/error.h"
#include "enstack/util/files.h"
#include "enstack/util/logging.h"

namespace enstack::model {
namespace fs = std::filesystem;
namespace {

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void read_file_into(const fs::path& file, torch::ScalarType dtype, StateMap& out) {
  SafetensorsReader reader(file);
  for (const auto& name : reader.names()) {
    ENSTACK_CHECK(!out.count(name), ModelError, "tensor '", name, "' appears in more than one shard (",
                  file.string(), "); the sharded checkpoint is inconsistent.");
    out.emplace(name, reader.tensor(name, dtype));
  }
}

std::string describe_dir(const fs::path& dir) {
  std::ostringstream names;
  std::error_code ec;
  int shown = 0;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (shown++ == 12) {
      names << " ...";
      break;
    }
    names << " " << entry.path().filename().string();
  }
  return names.str().empty() ? " (nothing)" : names.str();
}

// Maps a checkpoint name onto this model's naming, or "" when it is a tensor
// that sequence classification does not use.
std::string canonical_name(std::string name, const std::string& prefix, bool has_prefix,
                           ModelType type) {
  if (ends_with(name, ".gamma")) name = name.substr(0, name.size() - 6) + ".weight";
  if (ends_with(name, ".beta")) name = name.substr(0, name.size() - 5) + ".bias";
  if (!has_prefix && (starts_with(name, "embeddings.") || starts_with(name, "encoder.") ||
                      starts_with(name, "pooler."))) {
    name = prefix + name;
  }
  const bool ignorable = starts_with(name, "lm_head.") || starts_with(name, "cls.") ||
                         ends_with(name, ".position_ids") || ends_with(name, ".token_type_ids") ||
                         (type == ModelType::kRoberta && starts_with(name, prefix + "pooler."));
  return ignorable ? std::string() : name;
}

}  // namespace

StateMap read_weights(const fs::path& model_dir, torch::ScalarType dtype) {
  ENSTACK_CHECK(fs::is_directory(model_dir), ModelError, "model directory '", model_dir.string(),
                "' does not exist or is not a directory; give the path of a directory holding "
                "config.json and model.safetensors.");
  StateMap state;
  const fs::path single = model_dir / "model.safetensors";
  const fs::path index = model_dir / "model.safetensors.index.json";
  if (fs::exists(single)) {
    read_file_into(single, dtype, state);
    return state;
  }
  if (fs::exists(index)) {
    auto j = nlohmann::json::parse(util::read_file<ModelError>(index), nullptr, false);
    ENSTACK_CHECK(!j.is_discarded() && j.is_object() && j.contains("weight_map") &&
                      j["weight_map"].is_object(),
                  ModelError, index.string(), " is not a valid shard index (needs a \"weight_map\" object).");
    std::set<std::string> shards;
    for (const auto& [tensor, shard] : j["weight_map"].items()) {
      ENSTACK_CHECK(shard.is_string(), ModelError, index.string(), ": shard of '", tensor,
                    "' is not a file name.");
      const std::string file = shard.get<std::string>();
      ENSTACK_CHECK(file.find('/') == std::string::npos && file != ".." && !file.empty(), ModelError,
                    index.string(), ": shard name '", file, "' must be a plain file name in the directory.");
      shards.insert(file);
    }
    for (const auto& shard : shards) read_file_into(model_dir / shard, dtype, state);
    for (const auto& [tensor, shard] : j["weight_map"].items()) {
      ENSTACK_CHECK(state.count(tensor), ModelError, index.string(), " lists '", tensor,
                    "' in ", shard.get<std::string>(), " but that shard does not contain it.");
    }
    return state;
  }
  ENSTACK_CHECK(!fs::exists(model_dir / "pytorch_model.bin"), ModelError, model_dir.string(),
                " holds pytorch_model.bin (a pickle), which the C++ core does not read; load it "
                "with enstack.model.load() from Python, which reads it with "
                "torch.load(weights_only=True).");
  throw ModelError(util::str_cat("no weights in '", model_dir.string(),
                                 "': expected model.safetensors or model.safetensors.index.json; "
                                 "the directory holds:", describe_dir(model_dir), "."));
}

StateMap state_of(const EncoderClassifier& model) {
  StateMap state;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) state.emplace(item.key(), item.value());
  return state;
}

void load_state(EncoderClassifier& model, const StateMap& state) {
  const auto& config = model.config();
  const std::string prefix = config.base_prefix();
  bool has_prefix = false;
  for (const auto& [name, tensor] : state) has_prefix = has_prefix || starts_with(name, prefix);

  auto params = model.named_parameters(/*recurse=*/true);
  std::set<std::string> missing;
  for (const auto& item : params) missing.insert(item.key());
  std::vector<std::string> unexpected, mismatched, ignored;
  std::vector<std::pair<torch::Tensor, const torch::Tensor*>> copies;

  for (const auto& [original, tensor] : state) {
    const std::string name = canonical_name(original, prefix, has_prefix, config.model_type);
    if (name.empty()) {
      ignored.push_back(original);
      continue;
    }
    auto* param = params.find(name);
    if (param == nullptr) {
      unexpected.push_back(original);
      continue;
    }
    missing.erase(name);
    if (param->sizes() != tensor.sizes()) {
      mismatched.push_back(util::str_cat(original, " (checkpoint ", tensor.sizes(), ", model ",
                                         param->sizes(), ")"));
      continue;
    }
    copies.emplace_back(*param, &tensor);
  }

  const auto head = model.head_parameter_names();
  bool head_absent = true;
  for (const auto& name : head) head_absent = head_absent && missing.count(name);
  if (head_absent) {
    for (const auto& name : head) missing.erase(name);
  }

  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    std::ostringstream msg;
    msg << "the weights do not fit this " << config.to_string() << ":";
    auto list = [&](const char* what, const auto& names) {
      if (names.empty()) return;
      msg << "\n  " << what << " (" << names.size() << "):";
      int shown = 0;
      for (const auto& n : names) {
        if (shown++ == 20) {
          msg << "\n    ...";
          break;
        }
        msg << "\n    " << n;
      }
    };
    list("missing", missing);
    list("unexpected", unexpected);
    list("wrong shape", mismatched);
    msg << "\nCheck that config.json belongs to these weights (and, for a different number of "
           "labels, pass num_labels so a fresh head is created).";
    throw ModelError(msg.str());
  }

  torch::NoGradGuard no_grad;
  for (auto& [param, tensor] : copies) param.copy_(*tensor);
  if (head_absent) {
    model.init_head();
    ENSTACK_LOG_INFO("the checkpoint has no classification head; initialised a new ", config.num_labels(),
                     "-label head (normal std ", config.initializer_range, ", zero bias). Fine-tune before use.");
  }
  if (!ignored.empty()) {
    ENSTACK_LOG_INFO("ignored ", ignored.size(), " checkpoint tensors not used for sequence classification (e.g. ",
                     ignored.front(), ")");
  }
}

namespace {

// A num_labels override drops a head of another size from the state, so a fresh one is made.
StateMap drop_foreign_head(const EncoderClassifier& model, const StateMap& state) {
  StateMap kept = state;
  auto own = state_of(model);
  for (const auto& name : model.head_parameter_names()) {
    auto it = kept.find(name);
    if (it != kept.end() && it->second.sizes() != own.at(name).sizes()) {
      ENSTACK_LOG_INFO("replacing the checkpoint's classification head (", name, " ", it->second.sizes(),
                       ") with a fresh ", model.config().num_labels(), "-label head");
      for (const auto& n : model.head_parameter_names()) kept.erase(n);
      break;
    }
  }
  return kept;
}

}  // namespace

std::shared_ptr<EncoderClassifier> from_state(const fs::path& config_json, const StateMap& state,
                                              std::optional<int64_t> num_labels) {
  auto config = EncoderConfig::from_file(config_json);
  const bool relabel = num_labels && *num_labels != config.num_labels();
  if (relabel) config.set_num_labels(*num_labels);
  auto model = std::make_shared<EncoderClassifier>(config);
  load_state(*model, relabel ? drop_foreign_head(*model, state) : state);
  return model;
}

std::shared_ptr<EncoderClassifier> load_pretrained(const fs::path& model_dir,
                                                   std::optional<int64_t> num_labels) {
  const fs::path config_json = model_dir / "config.json";
  ENSTACK_CHECK(fs::exists(config_json), ModelError, "no config.json in '", model_dir.string(),
                "'; a Hugging Face model directory needs config.json next to its weights.");
  auto state = read_weights(model_dir, torch::kFloat);
  try {
    return from_state(config_json, state, num_labels);
  } catch (const ModelError& e) {
    throw ModelError(util::str_cat(model_dir.string(), ": ", e.what()));
  }
}

void save_pretrained(const EncoderClassifier& model, const fs::path& out_dir, torch::ScalarType dtype) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  ENSTACK_CHECK(!ec, Error, "cannot create '", out_dir.string(), "': ", ec.message(), ".");
  StateMap state;
  for (const auto& [name, tensor] : state_of(model)) {
    state.emplace(name, tensor.detach().to(torch::kCPU, dtype).contiguous());
  }
  auto config = model.config().to_json();
  config["torch_dtype"] = safetensors_dtype_name(dtype) == "F32" ? "float32"
                          : safetensors_dtype_name(dtype) == "F16" ? "float16"
                                                                   : "bfloat16";
  save_safetensors(out_dir / "model.safetensors", state, {{"format", "pt"}});
  util::write_file_atomic(out_dir / "config.json", config.dump(2) + "\n");
}

}  // namespace enstack::model
