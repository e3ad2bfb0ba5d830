// Bindings for the enstack::data tokenizers: the Tokenizer interface (byte-level
// BPE or SentencePiece behind it). Mirrors enstack/data/tokenizer.h. Texts may
// be str (encoded as UTF-8) or bytes (taken as they are).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "bindings.h"
#include "enstack/data/tokenizer.h"

namespace py = pybind11;

namespace enstack::bindings {
namespace {

using data::Tokenizer;

// A view of the UTF-8 of a str or the contents of a bytes object, valid while `text` lives.
std::string_view text_view(const py::handle& text) {
  if (PyBytes_Check(text.ptr())) {
    return {PyBytes_AS_STRING(text.ptr()), static_cast<std::size_t>(PyBytes_GET_SIZE(text.ptr()))};
  }
  if (PyUnicode_Check(text.ptr())) {
    Py_ssize_t size = 0;
    const char* data = PyUnicode_AsUTF8AndSize(text.ptr(), &size);
    if (data == nullptr) throw py::error_already_set();
    return {data, static_cast<std::size_t>(size)};
  }
  throw py::type_error("a text to encode must be str or bytes, not " +
                       std::string(py::str(py::type::of(text).attr("__name__"))));
}

int64_t length_or_zero(std::optional<int64_t> max_length) { return max_length.value_or(0); }

// list[int] built with the C API directly: batches hold millions of ids, and this
// skips the per-element caster machinery of the generic STL conversion.
py::list id_list(const std::vector<int32_t>& ids) {
  py::list out(ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    PyObject* value = PyLong_FromLong(ids[i]);
    if (value == nullptr) throw py::error_already_set();
    PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), value);
  }
  return out;
}

py::list encode(const Tokenizer& self, const py::object& text, std::optional<int64_t> max_length) {
  const std::string_view view = text_view(text);  // str and bytes are immutable: safe without the GIL
  std::vector<int32_t> ids;
  {
    py::gil_scoped_release release;
    ids = self.encode(view, length_or_zero(max_length));
  }
  return id_list(ids);
}

py::list encode_batch(const Tokenizer& self, const py::iterable& texts, std::optional<int64_t> max_length,
                      int num_threads) {
  std::vector<std::string> copies;
  for (const py::handle& text : texts) copies.emplace_back(text_view(text));
  std::vector<std::vector<int32_t>> batch;
  {
    py::gil_scoped_release release;
    batch = self.encode_batch(copies, length_or_zero(max_length), num_threads);
  }
  py::list out(batch.size());
  for (std::size_t i = 0; i < batch.size(); ++i) {
    PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), id_list(batch[i]).release().ptr());
    std::vector<int32_t>().swap(batch[i]);
  }
  return out;
}

std::string repr(const Tokenizer& self) {
  return "Tokenizer(kind='" + self.kind() + "', vocab_size=" + std::to_string(self.vocab_size()) +
         ", identity='" + self.identity() + "')";
}

}  // namespace

void bind_data(py::module_& m) {
  py::class_<Tokenizer, std::shared_ptr<Tokenizer>>(m, "Tokenizer",
      "A native tokenizer (byte-level BPE for RoBERTa/CodeBERT/GraphCodeBERT/UniXcoder, or "
      "SentencePiece): ids framed <s> ... </s> and truncated as transformers does.")
      .def_static(
          "from_pretrained",
          [](const std::filesystem::path& path) {
            return std::shared_ptr<Tokenizer>(Tokenizer::from_pretrained(path));
          },
          py::arg("path"),
          "Loads a directory with tokenizer.json, or vocab.json + merges.txt, or a SentencePiece *.model "
          "(or the path of such a file).")
      .def("encode", &encode, py::arg("text"), py::arg("max_length") = py::none(),
           "Ids of one text (str or bytes), framed <s> ... </s>; max_length truncates the content to "
           "max_length - 2 ids.")
      .def("encode_batch", &encode_batch, py::arg("texts"), py::arg("max_length") = py::none(),
           py::arg("num_threads") = 0,
           "encode() of each text, on num_threads threads (0: all cores); the ids do not depend on it.")
      .def_property_readonly("vocab_size", &Tokenizer::vocab_size)
      .def_property_readonly("pad_id", &Tokenizer::pad_id)
      .def_property_readonly("bos_id", &Tokenizer::bos_id)
      .def_property_readonly("eos_id", &Tokenizer::eos_id)
      .def_property_readonly("unk_id", &Tokenizer::unk_id)
      .def_property_readonly("identity", &Tokenizer::identity,
                             "Hex digest of everything that determines the ids.")
      .def_property_readonly("kind", &Tokenizer::kind, "'bpe' or 'sentencepiece'.")
      .def("__repr__", &repr);
}

}  // namespace enstack::bindings
