// TokenStore: tokenized examples in one versioned, memory-mapped file, built
// once and read by index at memory speed (the loader never tokenizes).
//
// Layout (little-endian):
//   header (256 bytes): magic "ENSTKTS\0", format version, byte-order mark,
//     id width (2: uint16 when the vocabulary fits, else 4: uint32), labels per
//     example, count, total tokens, vocab size, max length, tokenizer identity,
//     content fingerprint, data checksum, header checksum;
//   offsets: uint64[count + 1] (token index where example i starts);
//   ids: uint16 or uint32 [total tokens], padded to 8 bytes;
//   labels: int32[count * labels per example].
// The fingerprint identifies content + tokenizer + max length; the trainer keeps
// it in checkpoints to notice a changed dataset on resume.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace enstack::util {
class MappedFile;
}

namespace enstack::data {

class Tokenizer;

struct TokenStoreInfo {
  uint32_t version = 0;
  uint32_t id_width = 0;
  uint32_t labels_per_example = 0;
  uint64_t count = 0;
  uint64_t total_tokens = 0;
  uint32_t vocab_size = 0;
  uint32_t max_length = 0;
  std::string tokenizer_identity;
  std::string fingerprint;  // 16 hex digits
};

class TokenStore {
 public:
  static constexpr uint32_t kVersion = 1;

  // Opens and validates `path` (header checksum, version, byte order, section sizes
  // against the file size, monotonic offsets). `verify_data` also checks the data
  // checksum (reads the whole file). Any failure throws DataError naming the check.
  static std::shared_ptr<TokenStore> open(const std::filesystem::path& path, bool verify_data = false);
  ~TokenStore();

  const TokenStoreInfo& info() const { return info_; }
  const std::filesystem::path& path() const;
  int64_t size() const { return static_cast<int64_t>(info_.count); }
  int64_t length(int64_t index) const;
  // Copies the ids of example `index` into `out` (at least length(index) slots).
  void copy_ids(int64_t index, int32_t* out) const;
  std::vector<int32_t> ids(int64_t index) const;
  std::span<const int32_t> labels(int64_t index) const;
  std::vector<int64_t> lengths() const;

  // Writes a store atomically (temporary file, fsync, rename). `labels` holds
  // labels_per_example entries per example.
  static TokenStoreInfo write(const std::filesystem::path& path,
                              const std::vector<std::vector<int32_t>>& ids,
                              const std::vector<int32_t>& labels, uint32_t labels_per_example,
                              int64_t vocab_size, int64_t max_length,
                              const std::string& tokenizer_identity);

  // Tokenizes `texts` (multi-threaded, deterministic) and writes the store.
  static TokenStoreInfo build(const std::filesystem::path& path, const Tokenizer& tokenizer,
                              const std::vector<std::string>& texts, const std::vector<int32_t>& labels,
                              uint32_t labels_per_example, int64_t max_length, int num_threads = 0);

 private:
  TokenStore() = default;
  std::unique_ptr<util::MappedFile> file_;
  TokenStoreInfo info_;
  const uint64_t* offsets_ = nullptr;
  const std::byte* ids_ = nullptr;
  const int32_t* labels_ = nullptr;
};

}  // namespace enstack::data
