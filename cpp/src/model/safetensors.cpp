// Safetensors reader (mmap + full validation of the header before any tensor is
// touched) and atomic writer, compatible with Hugging Face's safetensors files.
#include "enstack/model/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "enstack/util/error.h"
#include "enstack/util/files.h"

namespace enstack::model {

// Tensor bytes and the header length are little-endian in the file and are copied as is.
static_assert(std::endian::native == std::endian::little,
              "enstack's safetensors I/O assumes a little-endian host");

namespace {

using json = nlohmann::json;
using util::str_cat;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr const char* kMetadataKey = "__metadata__";
constexpr const char* kCorrupt =
    "; the file is corrupted or was not written by safetensors — re-download or re-save it.";

struct DtypeEntry {
  const char* name;
  torch::ScalarType type;
  uint64_t size;
};

constexpr DtypeEntry kDtypes[] = {
    {"F64", torch::kDouble, 8}, {"F32", torch::kFloat, 4},  {"F16", torch::kHalf, 2},
    {"BF16", torch::kBFloat16, 2}, {"I64", torch::kLong, 8}, {"I32", torch::kInt, 4},
    {"I16", torch::kShort, 2},  {"I8", torch::kChar, 1},    {"U8", torch::kByte, 1},
    {"BOOL", torch::kBool, 1},
};

const DtypeEntry* find_dtype(const std::string& name) {
  for (const auto& entry : kDtypes) {
    if (name == entry.name) return &entry;
  }
  return nullptr;
}

const DtypeEntry* find_dtype(torch::ScalarType type) {
  for (const auto& entry : kDtypes) {
    if (type == entry.type) return &entry;
  }
  return nullptr;
}

std::string supported_dtypes() {
  std::string out;
  for (const auto& entry : kDtypes) out += str_cat(out.empty() ? "" : ", ", entry.name);
  return out;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) out += str_cat(i ? ", " : "", shape[i]);
  return out + "]";
}

// The error for a malformed file: names the file, the failed check, and what to do.
ModelError corrupt(const std::filesystem::path& path, const std::string& what) {
  return ModelError(str_cat(path.string(), ": ", what, kCorrupt));
}

// Reads a non-negative JSON integer that fits in int64; nullopt otherwise.
std::optional<int64_t> non_negative_int(const json& value) {
  if (value.is_number_unsigned()) {
    const auto v = value.get<uint64_t>();
    if (v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return static_cast<int64_t>(v);
    return std::nullopt;
  }
  if (value.is_number_integer() && value.get<int64_t>() >= 0) return value.get<int64_t>();
  return std::nullopt;
}

// Parses and validates one tensor entry of the header against a data section of
// `data_size` bytes.
TensorInfo parse_entry(const std::filesystem::path& path, const std::string& name,
                       const json& entry, uint64_t data_size) {
  const std::string where = str_cat("tensor '", name, "'");
  if (!entry.is_object()) {
    throw corrupt(path, str_cat(where, " is a JSON ", entry.type_name(),
                                " but must be an object with dtype, shape and data_offsets"));
  }
  TensorInfo info;
  info.name = name;

  const auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) {
    throw corrupt(path, str_cat(where, " has no \"dtype\" string"));
  }
  info.dtype = dtype_it->get<std::string>();
  const DtypeEntry* dtype = find_dtype(info.dtype);
  if (dtype == nullptr) {
    throw ModelError(str_cat(path.string(), ": ", where, " has dtype '", info.dtype,
                             "', which enstack does not support (supported: ", supported_dtypes(),
                             "); re-save the weights in one of these dtypes."));
  }

  const auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) {
    throw corrupt(path, str_cat(where, " has no \"shape\" array"));
  }
  // Torch computes strides as products of max(dim, 1), and numel; both must fit in int64.
  uint64_t stride_product = 1;
  bool has_zero = false;
  for (const json& dim : *shape_it) {
    const std::optional<int64_t> d = non_negative_int(dim);
    if (!d) {
      throw corrupt(path, str_cat(where, " has shape entry ", dim.dump(),
                                  ", but dimensions must be non-negative integers"));
    }
    info.shape.push_back(*d);
    has_zero = has_zero || *d == 0;
    if (__builtin_mul_overflow(stride_product, static_cast<uint64_t>(std::max<int64_t>(*d, 1)),
                               &stride_product) ||
        stride_product > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      throw corrupt(path, str_cat(where, " has shape ", shape_it->dump(),
                                  " whose number of elements overflows int64"));
    }
  }
  const uint64_t numel = has_zero ? 0 : stride_product;

  const auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
      !(*offsets_it)[0].is_number_unsigned() || !(*offsets_it)[1].is_number_unsigned()) {
    throw corrupt(path, str_cat(where, " has no \"data_offsets\" array of two non-negative integers"));
  }
  info.begin = (*offsets_it)[0].get<uint64_t>();
  info.end = (*offsets_it)[1].get<uint64_t>();
  if (info.end < info.begin) {
    throw corrupt(path, str_cat(where, " has data_offsets [", info.begin, ", ", info.end,
                                "] whose end is before its begin"));
  }
  if (info.end > data_size) {
    throw corrupt(path, str_cat(where, " has data_offsets [", info.begin, ", ", info.end,
                                "] beyond the data section of ", data_size,
                                " bytes (the file is truncated?)"));
  }
  uint64_t needed = 0;
  const bool too_big = __builtin_mul_overflow(numel, dtype->size, &needed);
  if (too_big || needed != info.end - info.begin) {
    throw corrupt(path, str_cat(where, " has data_offsets [", info.begin, ", ", info.end, "] (",
                                info.end - info.begin, " bytes) but shape ", shape_string(info.shape),
                                " of ", info.dtype, " needs ",
                                too_big ? std::string("more than 2^64") : std::to_string(needed),
                                " bytes"));
  }
  return info;
}

std::map<std::string, std::string> parse_metadata(const std::filesystem::path& path,
                                                  const json& value) {
  if (!value.is_object()) {
    throw corrupt(path, str_cat("\"__metadata__\" is a JSON ", value.type_name(),
                                " but must be an object of strings"));
  }
  std::map<std::string, std::string> out;
  for (const auto& [key, item] : value.items()) {
    if (!item.is_string()) {
      throw corrupt(path, str_cat("\"__metadata__\" value for key '", key, "' is a JSON ",
                                  item.type_name(), " but must be a string"));
    }
    out.emplace(key, item.get<std::string>());
  }
  return out;
}

// Rejects two tensors sharing bytes. Empty ranges share none and are skipped.
void check_no_overlap(const std::filesystem::path& path,
                      const std::map<std::string, TensorInfo>& tensors) {
  std::vector<const TensorInfo*> ranges;
  for (const auto& [name, info] : tensors) {
    if (info.end > info.begin) ranges.push_back(&info);
  }
  std::sort(ranges.begin(), ranges.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  for (std::size_t i = 1; i < ranges.size(); ++i) {
    const TensorInfo& prev = *ranges[i - 1];
    const TensorInfo& cur = *ranges[i];
    if (prev.end > cur.begin) {
      throw corrupt(path, str_cat("tensor '", prev.name, "' at bytes [", prev.begin, ", ", prev.end,
                                  ") overlaps tensor '", cur.name, "' at bytes [", cur.begin, ", ",
                                  cur.end, ")"));
    }
  }
}

}  // namespace

torch::ScalarType scalar_type_from_safetensors(const std::string& dtype) {
  const DtypeEntry* entry = find_dtype(dtype);
  ENSTACK_CHECK(entry != nullptr, ModelError, "unknown safetensors dtype '", dtype,
                "'; enstack supports ", supported_dtypes(), ".");
  return entry->type;
}

std::string safetensors_dtype_name(torch::ScalarType type) {
  const DtypeEntry* entry = find_dtype(type);
  ENSTACK_CHECK(entry != nullptr, ModelError, "tensors of dtype ", c10::toString(type),
                " cannot be stored in safetensors by enstack (supported: ", supported_dtypes(),
                "); convert the tensor, e.g. with .to(torch::kFloat), first.");
  return entry->name;
}

SafetensorsReader::SafetensorsReader(const std::filesystem::path& path) {
  try {
    file_ = std::make_unique<util::MappedFile>(path);
  } catch (const Error& e) {
    throw ModelError(str_cat(e.what(), "; check that the weights file exists and is readable."));
  }
  const uint64_t size = file_->size();
  if (size < 8) {
    throw corrupt(path, str_cat("file is ", size,
                                " bytes, shorter than the 8-byte header length of a safetensors file"));
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, file_->data(), sizeof(header_len));
  if (header_len > kMaxHeaderBytes) {
    throw corrupt(path, str_cat("header length field says ", header_len,
                                " bytes, above the safetensors limit of ", kMaxHeaderBytes, " bytes"));
  }
  if (header_len > size - 8) {
    throw corrupt(path, str_cat("header length field says ", header_len, " bytes but the file has only ",
                                size - 8, " bytes after it (the file is truncated?)"));
  }
  data_start_ = 8 + header_len;
  const uint64_t data_size = size - data_start_;

  const auto* header_begin = reinterpret_cast<const char*>(file_->data()) + 8;
  json header;
  try {
    header = json::parse(header_begin, header_begin + header_len, nullptr,
                         /*allow_exceptions=*/false);
  } catch (const std::exception& e) {  // allow_exceptions=false should not throw; be safe
    throw corrupt(path, str_cat("header is not valid JSON (", e.what(), ")"));
  }
  if (header.is_discarded()) throw corrupt(path, "header is not valid JSON");
  if (!header.is_object()) {
    throw corrupt(path, str_cat("header is a JSON ", header.type_name(),
                                " but must be an object mapping tensor names to "
                                "{dtype, shape, data_offsets}"));
  }
  for (const auto& [name, entry] : header.items()) {
    if (name == kMetadataKey) {
      metadata_ = parse_metadata(path, entry);
    } else {
      tensors_.emplace(name, parse_entry(path, name, entry, data_size));
    }
  }
  check_no_overlap(path, tensors_);
}

SafetensorsReader::~SafetensorsReader() = default;

const std::filesystem::path& SafetensorsReader::path() const { return file_->path(); }

std::vector<std::string> SafetensorsReader::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, info] : tensors_) out.push_back(name);
  return out;
}

bool SafetensorsReader::contains(const std::string& name) const { return tensors_.count(name) > 0; }

const TensorInfo& SafetensorsReader::info(const std::string& name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    std::string examples;
    int shown = 0;
    for (auto i = tensors_.begin(); i != tensors_.end() && shown < 5; ++i, ++shown) {
      examples += str_cat(shown ? ", '" : "'", i->first, "'");
    }
    throw ModelError(str_cat(path().string(), ": no tensor named '", name, "' (the file has ",
                             tensors_.size(), " tensors", tensors_.empty() ? "" : ", e.g. ", examples,
                             "); check that the weights belong to this model architecture."));
  }
  return it->second;
}

const std::map<std::string, std::string>& SafetensorsReader::metadata() const { return metadata_; }

torch::Tensor SafetensorsReader::tensor(const std::string& name,
                                        std::optional<torch::ScalarType> dtype) const {
  const TensorInfo& meta = info(name);
  const torch::ScalarType stored = scalar_type_from_safetensors(meta.dtype);
  // BOOL is read as bytes and normalized, so a corrupted byte cannot make an invalid bool.
  const torch::ScalarType read_as = stored == torch::kBool ? torch::kByte : stored;
  torch::Tensor out = torch::empty(meta.shape, torch::TensorOptions().dtype(read_as));
  const uint64_t nbytes = meta.end - meta.begin;
  if (nbytes > 0) {
    // A copy, not from_blob over the mapping: the bytes may be unaligned for the dtype,
    // and the tensor must outlive this reader.
    std::memcpy(out.data_ptr(), file_->data() + data_start_ + meta.begin, nbytes);
  }
  if (stored == torch::kBool) out = out.ne(0);
  if (dtype && *dtype != stored && torch::isFloatingType(stored) && torch::isFloatingType(*dtype)) {
    out = out.to(*dtype);
  }
  return out;
}

SafetensorsImage::SafetensorsImage(const std::map<std::string, torch::Tensor>& tensors,
                                   const std::map<std::string, std::string>& metadata,
                                   const std::filesystem::path& path) {
  tensors_.reserve(tensors.size());
  json header = json::object();
  for (const auto& [name, tensor] : tensors) {
    auto fail = [&](const std::string& why) {
      return ModelError(str_cat("cannot save tensor '", name, "' to ", path.string(), ": ", why));
    };
    if (name == kMetadataKey) throw fail("the name \"__metadata__\" is reserved by safetensors; rename it.");
    if (!tensor.defined()) throw fail("the tensor is undefined; pass a real tensor.");
    if (tensor.layout() != torch::kStrided) throw fail("sparse tensors are not supported; call .to_dense() first.");
    std::string dtype;
    try {
      dtype = safetensors_dtype_name(tensor.scalar_type());
    } catch (const ModelError& e) {
      throw fail(e.what());
    }
    const auto nbytes = static_cast<uint64_t>(tensor.numel()) * tensor.element_size();
    header[name] = {{"dtype", dtype}, {"shape", tensor.sizes().vec()},
                    {"data_offsets", {data_bytes_, data_bytes_ + nbytes}}};
    offsets_.push_back(data_bytes_);
    data_bytes_ += nbytes;
    tensors_.push_back(tensor.detach());
  }
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {
    throw ModelError(str_cat("cannot save ", path.string(),
                             ": a tensor name or metadata string is not valid UTF-8 (", e.what(),
                             "); use UTF-8 names."));
  }
  // Pad with spaces (valid JSON whitespace) so the data section starts 8-byte aligned.
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');
  const uint64_t header_len = text.size();
  header_.resize(8);
  std::memcpy(header_.data(), &header_len, 8);
  header_ += text;
}

void SafetensorsImage::fill(std::byte* dst, bool non_blocking) const {
  std::memcpy(dst, header_.data(), header_.size());
  std::byte* data = dst + header_.size();
  for (std::size_t i = 0; i < tensors_.size(); ++i) {
    const auto& t = tensors_[i];
    if (t.numel() == 0) continue;
    if (t.is_cpu() && t.is_contiguous() && !t.is_conj() && !t.is_neg()) {
      // Plain bytes: a memcpy, which also runs on any thread without torch's thread pool.
      std::memcpy(data + offsets_[i], t.data_ptr(), static_cast<std::size_t>(t.numel()) * t.element_size());
      continue;
    }
    // A CPU view of the destination bytes; copy_ handles device, strides, conj and neg views.
    auto view = torch::from_blob(data + offsets_[i], t.sizes(), torch::TensorOptions().dtype(t.scalar_type()));
    view.copy_(t, non_blocking);
  }
}

void save_safetensors(const std::filesystem::path& path,
                      const std::map<std::string, torch::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  const SafetensorsImage image(tensors, metadata, path);
  std::vector<std::byte> bytes(image.size());
  image.fill(bytes.data());
  util::write_file_atomic(path, std::span<const std::byte>(bytes));
}

}  // namespace enstack::model
