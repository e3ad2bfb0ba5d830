// Bindings for enstack::model: EncoderClassifier and Hugging Face weight I/O.
// Mirrors enstack/model/{encoder_classifier,weights}.h.
#include <torch/python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <nlohmann/json.hpp>

#include "bindings.h"
#include "enstack/model/dropout.h"
#include "enstack/model/encoder_classifier.h"
#include "enstack/model/weights.h"
#include "enstack/util/error.h"

namespace py = pybind11;

namespace enstack::bindings {
namespace {

using model::EncoderClassifier;
using model::StateMap;

torch::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32" || name == "float") return torch::kFloat;
  if (name == "float16" || name == "half") return torch::kHalf;
  if (name == "bfloat16") return torch::kBFloat16;
  throw ConfigError("dtype '" + name + "' is not supported here; use float32, float16 or bfloat16.");
}

torch::Tensor optional_tensor(const std::optional<torch::Tensor>& t) { return t ? *t : torch::Tensor(); }

}  // namespace

void bind_model(py::module_& m) {
  auto forward = [](EncoderClassifier& self, const torch::Tensor& input_ids,
                    const std::optional<torch::Tensor>& attention_mask,
                    const std::optional<torch::Tensor>& token_type_ids) {
    py::gil_scoped_release release;
    return self.forward(input_ids, optional_tensor(attention_mask), optional_tensor(token_type_ids));
  };
  py::class_<EncoderClassifier, std::shared_ptr<EncoderClassifier>>(m, "EncoderClassifier",
      "A RoBERTa/BERT encoder with a sequence-classification head; parameter names are the "
      "Hugging Face names.")
      .def(
          "forward", forward, py::arg("input_ids"), py::arg("attention_mask") = py::none(), py::arg("token_type_ids") = py::none(),
          "Logits [batch, num_labels].")
      .def("__call__", forward, py::arg("input_ids"), py::arg("attention_mask") = py::none(),
           py::arg("token_type_ids") = py::none())
      .def(
          "train", [](EncoderClassifier& self, bool mode) -> EncoderClassifier& {
            self.train(mode);
            return self;
          },
          py::arg("mode") = true, py::return_value_policy::reference_internal)
      .def(
          "eval", [](EncoderClassifier& self) -> EncoderClassifier& {
            self.eval();
            return self;
          },
          py::return_value_policy::reference_internal)
      .def_property_readonly("training", [](const EncoderClassifier& self) { return self.is_training(); })
      .def("named_parameters", [](const EncoderClassifier& self) {
        std::vector<std::pair<std::string, torch::Tensor>> out;
        for (const auto& item : self.named_parameters(true)) out.emplace_back(item.key(), item.value());
        return out;
      })
      .def("parameters", [](const EncoderClassifier& self) { return self.parameters(true); })
      .def("state_dict", [](const EncoderClassifier& self) {
        StateMap state;
        for (const auto& [name, tensor] : model::state_of(self)) state.emplace(name, tensor.detach());
        return state;
      })
      .def("load_state_dict",
           [](EncoderClassifier& self, const StateMap& state) { model::load_state(self, state); },
           py::arg("state"),
           "Copies tensors by Hugging Face name; raises ModelError listing every mismatch.")
      .def(
          "save_pretrained",
          [](const EncoderClassifier& self, const std::filesystem::path& out_dir, const std::string& dtype) {
            auto type = parse_dtype(dtype);
            py::gil_scoped_release release;
            model::save_pretrained(self, out_dir, type);
          },
          py::arg("out_dir"), py::arg("dtype") = "float32",
          "Writes config.json and model.safetensors that transformers loads.")
      .def(
          "to",
          [](EncoderClassifier& self, const std::string& device, const std::optional<std::string>& dtype)
              -> EncoderClassifier& {
            if (dtype) {
              self.to(torch::Device(device), parse_dtype(*dtype));
            } else {
              self.to(torch::Device(device));
            }
            return self;
          },
          py::arg("device"), py::arg("dtype") = py::none(), py::return_value_policy::reference_internal)
      .def("num_parameters", [](const EncoderClassifier& self) {
        int64_t n = 0;
        for (const auto& p : self.parameters(true)) n += p.numel();
        return n;
      })
      .def("config_json", [](const EncoderClassifier& self) { return self.config().to_json().dump(); },
           "The config.json that save_pretrained writes, as a string.")
      .def_property_readonly("num_labels", [](const EncoderClassifier& self) { return self.config().num_labels(); })
      .def_property("packing_min_padding", &EncoderClassifier::packing_min_padding,
                    &EncoderClassifier::set_packing_min_padding,
                    "CPU: batches with at least this share of padding (or of packing_min_length tokens) run "
                    "packed (real tokens only, attention per sequence); 0 always packs, above 1 never.")
      .def_property_readonly_static("packing_min_length",
                                    [](const py::object&) { return EncoderClassifier::packing_min_length(); },
                                    "CPU: batches of at least this many tokens run packed.")
      .def("__repr__", [](const EncoderClassifier& self) { return self.config().to_string(); });

  m.def(
      "load_pretrained",
      [](const std::filesystem::path& model_dir, std::optional<int64_t> num_labels) {
        py::gil_scoped_release release;
        return model::load_pretrained(model_dir, num_labels);
      },
      py::arg("model_dir"), py::arg("num_labels") = py::none(),
      "Loads config.json + model.safetensors (or shards) from a Hugging Face model directory.");
  m.def(
      "from_state",
      [](const std::filesystem::path& config_json, const StateMap& state, std::optional<int64_t> num_labels) {
        py::gil_scoped_release release;
        return model::from_state(config_json, state, num_labels);
      },
      py::arg("config_json"), py::arg("state"), py::arg("num_labels") = py::none(),
      "Builds a model from config.json and a name->tensor mapping (e.g. read from pytorch_model.bin).");
  m.def(
      "from_config",
      [](const std::string& config_json_text, std::optional<int64_t> num_labels) {
        auto j = nlohmann::json::parse(config_json_text, nullptr, false);
        if (j.is_discarded()) throw ModelError("the model configuration is not valid JSON.");
        auto config = model::EncoderConfig::from_json(j);
        if (num_labels) config.set_num_labels(*num_labels);
        return std::make_shared<EncoderClassifier>(config);
      },
      py::arg("config_json"), py::arg("num_labels") = py::none(),
      "A freshly initialised model (from scratch) for a config.json text.");
  m.def("fast_dropout", &model::fast_dropout, py::arg("x"), py::arg("p"), py::arg("training") = true,
        "The encoder's dropout (enstack/model/dropout.h): torch's semantics, a mask-free CPU implementation.");
  m.def("dropout_add", &model::dropout_add, py::arg("y"), py::arg("residual"), py::arg("p"),
        py::arg("training") = true, "residual + dropout(y), fused (enstack/model/dropout.h).");
  m.def("softmax_dropout", &model::softmax_dropout, py::arg("scores"), py::arg("p"), py::arg("training") = true,
        "dropout(softmax(scores, -1)) with a fused backward (enstack/model/dropout.h).");
}

}  // namespace enstack::bindings
