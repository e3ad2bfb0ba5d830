// Native reader and writer of the safetensors format (Hugging Face's pickle-free
// tensor file): an 8-byte little-endian header length, a JSON header mapping
// tensor names to {dtype, shape, data_offsets} (plus optional "__metadata__"
// string map), then the raw little-endian tensor bytes.
//
// The reader memory-maps the file and validates everything before any tensor
// is touched; a malformed file raises enstack::ModelError saying which check
// failed, never a crash.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace enstack::util {
class MappedFile;
}

namespace enstack::model {

struct TensorInfo {
  std::string name;
  std::string dtype;             // safetensors dtype string: "F32", "F16", "BF16", "I64", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0;            // byte offsets relative to the start of the data section
  uint64_t end = 0;
};

class SafetensorsReader {
 public:
  // Opens and validates `path`. Throws ModelError naming the file and the failed check:
  // file shorter than 8 bytes, header length beyond the file or above 100 MB, header not
  // a JSON object, an entry without dtype/shape/data_offsets, unknown dtype, negative
  // dimension, offsets with end < begin, beyond the data section, overlapping another
  // tensor, or a byte size that differs from shape x dtype size.
  explicit SafetensorsReader(const std::filesystem::path& path);
  ~SafetensorsReader();

  const std::filesystem::path& path() const;
  std::vector<std::string> names() const;                // sorted
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws ModelError if absent
  const std::map<std::string, std::string>& metadata() const;

  // A fresh (owning, contiguous) CPU tensor with the file's dtype, or converted to
  // `dtype` when given and both are floating point. Throws ModelError if absent.
  torch::Tensor tensor(const std::string& name,
                       std::optional<torch::ScalarType> dtype = std::nullopt) const;

 private:
  std::unique_ptr<util::MappedFile> file_;
  uint64_t data_start_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A safetensors file laid out for a set of tensors without copying them yet: the
// header bytes (length prefix, JSON, padding to 8) and each tensor's place. fill()
// copies the tensors into a caller-owned buffer (e.g. a reused, pinned snapshot
// buffer), so a checkpoint costs one device->host copy and no re-serialisation.
class SafetensorsImage {
 public:
  // Throws ModelError (naming `path_for_errors`) for a reserved name, an undefined,
  // sparse or unsupported-dtype tensor, or names that are not UTF-8.
  SafetensorsImage(const std::map<std::string, torch::Tensor>& tensors,
                   const std::map<std::string, std::string>& metadata,
                   const std::filesystem::path& path_for_errors);
  uint64_t size() const { return header_.size() + data_bytes_; }  // the whole file
  // Writes the file's bytes into dst[0, size()). With non_blocking, device tensors are
  // copied asynchronously into (pinned) dst; the caller synchronizes before reading it.
  void fill(std::byte* dst, bool non_blocking = false) const;

 private:
  std::string header_;
  uint64_t data_bytes_ = 0;
  std::vector<torch::Tensor> tensors_;  // in header order; not copied until fill()
  std::vector<uint64_t> offsets_;
};

// Writes tensors (any device, contiguous or not; F32/F16/BF16/F64/I64/I32/I16/I8/U8/BOOL)
// to `path` atomically (util::write_file_atomic). Names are written sorted; the data
// section starts 8-byte aligned. Throws ModelError for an unsupported dtype.
void save_safetensors(const std::filesystem::path& path,
                      const std::map<std::string, torch::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// Maps between safetensors dtype strings and torch scalar types.
torch::ScalarType scalar_type_from_safetensors(const std::string& dtype);  // throws ModelError
std::string safetensors_dtype_name(torch::ScalarType type);               // throws ModelError

}  // namespace enstack::model
