// Bindings for enstack::data::TokenStore and SentencePiece training.
// Mirrors enstack/data/{token_store,sentencepiece_tokenizer}.h.
#include <torch/python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include "bindings.h"
#include "enstack/data/sentencepiece_tokenizer.h"
#include "enstack/data/token_store.h"
#include "enstack/data/tokenizer.h"

namespace py = pybind11;

namespace enstack::bindings {
namespace {

using data::TokenStore;
using data::TokenStoreInfo;

py::dict info_dict(const TokenStoreInfo& info) {
  py::dict d;
  d["version"] = info.version;
  d["id_width"] = info.id_width;
  d["labels_per_example"] = info.labels_per_example;
  d["count"] = info.count;
  d["total_tokens"] = info.total_tokens;
  d["vocab_size"] = info.vocab_size;
  d["max_length"] = info.max_length;
  d["tokenizer_identity"] = info.tokenizer_identity;
  d["fingerprint"] = info.fingerprint;
  return d;
}

// Labels as a flat int32 vector: [N] ints or [N][K] rows.
std::vector<int32_t> flatten_labels(const py::object& labels, uint32_t& per_example) {
  auto array = py::module_::import("torch").attr("as_tensor")(labels).cast<torch::Tensor>().to(torch::kInt).contiguous();
  per_example = array.dim() == 1 ? 1 : static_cast<uint32_t>(array.size(1));
  return std::vector<int32_t>(array.data_ptr<int32_t>(), array.data_ptr<int32_t>() + array.numel());
}

}  // namespace

void bind_token_store(py::module_& m) {
  py::class_<TokenStore, std::shared_ptr<TokenStore>>(m, "TokenStore",
      "Tokenized examples in a memory-mapped file; random access by index.")
      .def(py::init([](const std::filesystem::path& path, bool verify) { return TokenStore::open(path, verify); }),
           py::arg("path"), py::arg("verify_data") = false)
      .def("__len__", &TokenStore::size)
      .def("ids", &TokenStore::ids, py::arg("index"))
      .def("labels", [](const TokenStore& s, int64_t i) {
        auto span = s.labels(i);
        return std::vector<int32_t>(span.begin(), span.end());
      }, py::arg("index"))
      .def("length", &TokenStore::length, py::arg("index"))
      .def("lengths", [](const TokenStore& s) { return torch::tensor(s.lengths(), torch::kLong); },
           "Token counts of all examples, as a LongTensor.")
      .def("all_labels", [](const TokenStore& s) {
        const auto per = static_cast<int64_t>(s.info().labels_per_example);
        auto out = torch::empty({s.size(), per}, torch::kInt);
        for (int64_t i = 0; i < s.size(); ++i) {
          auto span = s.labels(i);
          std::copy(span.begin(), span.end(), out.data_ptr<int32_t>() + i * per);
        }
        return per == 1 ? out.squeeze(1) : out;
      }, "Labels of all examples: IntTensor [N] (single label) or [N, K].")
      .def_property_readonly("info", [](const TokenStore& s) { return info_dict(s.info()); })
      .def_property_readonly("fingerprint", [](const TokenStore& s) { return s.info().fingerprint; })
      .def_property_readonly("path", &TokenStore::path)
      .def("__repr__", [](const TokenStore& s) {
        return "TokenStore('" + s.path().string() + "', count=" + std::to_string(s.size()) +
               ", fingerprint=" + s.info().fingerprint + ")";
      });

  m.def(
      "build_token_store",
      [](const std::filesystem::path& path, const data::Tokenizer& tokenizer, std::vector<std::string> texts,
         const py::object& labels, int64_t max_length, int num_threads) {
        uint32_t per_example = 1;
        auto flat = flatten_labels(labels, per_example);
        TokenStoreInfo info;
        {
          py::gil_scoped_release release;
          info = TokenStore::build(path, tokenizer, texts, flat, per_example, max_length, num_threads);
        }
        return info_dict(info);
      },
      py::arg("path"), py::arg("tokenizer"), py::arg("texts"), py::arg("labels"), py::arg("max_length"),
      py::arg("num_threads") = 0,
      "Tokenizes texts (multi-threaded) and writes a token store atomically; returns its info.");
  m.def(
      "write_token_store",
      [](const std::filesystem::path& path, const std::vector<std::vector<int32_t>>& ids, const py::object& labels,
         int64_t vocab_size, int64_t max_length, const std::string& tokenizer_identity) {
        uint32_t per_example = 1;
        auto flat = flatten_labels(labels, per_example);
        TokenStoreInfo info;
        {
          py::gil_scoped_release release;
          info = TokenStore::write(path, ids, flat, per_example, vocab_size, max_length, tokenizer_identity);
        }
        return info_dict(info);
      },
      py::arg("path"), py::arg("ids"), py::arg("labels"), py::arg("vocab_size"), py::arg("max_length"),
      py::arg("tokenizer_identity"));
  m.def(
      "train_sentencepiece",
      [](const std::vector<std::string>& texts, const std::filesystem::path& model_path, int64_t vocab_size,
         const std::string& model_type, int num_threads) {
        data::SentencePieceTrainOptions options;
        options.vocab_size = vocab_size;
        options.model_type = model_type;
        options.num_threads = num_threads;
        py::gil_scoped_release release;
        data::SentencePieceTokenizer::train(texts, model_path, options);
      },
      py::arg("texts"), py::arg("model_path"), py::arg("vocab_size") = 8000, py::arg("model_type") = "unigram",
      py::arg("num_threads") = 1,
      "Trains a SentencePiece model for code (identity normalization, byte fallback, RoBERTa id layout).");
}

}  // namespace enstack::bindings
