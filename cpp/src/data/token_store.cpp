// TokenStore: versioned, memory-mapped token files (see enstack/data/token_store.h).
#include "enstack/data/token_store.h"

#include <bit>
#include <cstring>

#include "enstack/data/tokenizer.h"
#include "enstack/util/error.h"
#include "enstack/util/files.h"
#include "enstack/util/hash.h"

namespace enstack::data {
namespace {

static_assert(std::endian::native == std::endian::little, "token stores are little-endian");

constexpr char kMagic[8] = {'E', 'N', 'S', 'T', 'K', 'T', 'S', '\0'};
constexpr uint32_t kByteOrderMark = 0x01020304;
constexpr std::size_t kHeaderSize = 256;
constexpr std::size_t kIdentitySize = 64;

// Field offsets inside the header.
enum : std::size_t {
  kOffMagic = 0, kOffVersion = 8, kOffByteOrder = 12, kOffIdWidth = 16, kOffLabelsPer = 20,
  kOffCount = 24, kOffTotal = 32, kOffVocab = 40, kOffMaxLength = 44, kOffIdentity = 48,
  kOffFingerprint = 112, kOffDataChecksum = 120, kOffHeaderChecksum = 248,
};

uint64_t align8(uint64_t n) { return (n + 7) & ~uint64_t{7}; }

template <typename T>
void put(std::byte* header, std::size_t offset, T value) {
  std::memcpy(header + offset, &value, sizeof(T));
}

template <typename T>
T get(const std::byte* header, std::size_t offset) {
  T value;
  std::memcpy(&value, header + offset, sizeof(T));
  return value;
}

struct Sections {
  uint64_t offsets_bytes, ids_bytes, labels_bytes;
  uint64_t total() const { return kHeaderSize + offsets_bytes + ids_bytes + labels_bytes; }
};

Sections sections_for(uint64_t count, uint64_t total_tokens, uint32_t id_width, uint32_t labels_per) {
  return {8 * (count + 1), align8(total_tokens * id_width), align8(4 * count * labels_per)};
}

uint64_t fingerprint_of(const std::string& identity, uint32_t max_length, uint64_t data_checksum,
                        uint32_t labels_per) {
  util::Fnv1a64 h;
  h.update("enstack-token-store\n").update(identity).update_value(max_length).update_value(labels_per);
  h.update_value(data_checksum);
  return h.digest();
}

}  // namespace

TokenStore::~TokenStore() = default;

const std::filesystem::path& TokenStore::path() const { return file_->path(); }

TokenStoreInfo TokenStore::write(const std::filesystem::path& path,
                                 const std::vector<std::vector<int32_t>>& ids,
                                 const std::vector<int32_t>& labels, uint32_t labels_per_example,
                                 int64_t vocab_size, int64_t max_length,
                                 const std::string& tokenizer_identity) {
  ENSTACK_CHECK(labels.size() == ids.size() * labels_per_example, DataError, "token store ",
                path.string(), ": ", labels.size(), " labels for ", ids.size(), " examples x ",
                labels_per_example, " labels each.");
  ENSTACK_CHECK(vocab_size > 0 && vocab_size <= (int64_t{1} << 32), DataError,
                "token store vocab size ", vocab_size, " is out of range.");
  ENSTACK_CHECK(tokenizer_identity.size() < kIdentitySize, DataError,
                "tokenizer identity is longer than ", kIdentitySize - 1, " characters.");
  const uint32_t id_width = vocab_size <= 65536 ? 2 : 4;
  uint64_t total = 0;
  for (const auto& row : ids) total += row.size();
  const Sections sections = sections_for(ids.size(), total, id_width, labels_per_example);

  util::AtomicFileWriter out(path);
  std::vector<std::byte> header(kHeaderSize);
  out.write(header.data(), header.size());  // the real header is written last

  util::Fnv1a64 data_hash;
  std::vector<uint64_t> offsets(ids.size() + 1, 0);
  for (std::size_t i = 0; i < ids.size(); ++i) offsets[i + 1] = offsets[i] + ids[i].size();
  out.write(offsets.data(), offsets.size() * 8);
  data_hash.update(offsets.data(), offsets.size() * 8);

  std::vector<std::byte> chunk;
  for (const auto& row : ids) {
    chunk.resize(row.size() * id_width);
    for (std::size_t j = 0; j < row.size(); ++j) {
      const int64_t id = row[j];
      ENSTACK_CHECK(id >= 0 && id < vocab_size, DataError, "token id ", id,
                    " is outside the vocabulary (size ", vocab_size, ").");
      if (id_width == 2) {
        const auto narrow = static_cast<uint16_t>(id);
        std::memcpy(chunk.data() + 2 * j, &narrow, 2);
      } else {
        const auto wide = static_cast<uint32_t>(id);
        std::memcpy(chunk.data() + 4 * j, &wide, 4);
      }
    }
    out.write(chunk.data(), chunk.size());
    data_hash.update(chunk.data(), chunk.size());
  }
  const std::vector<std::byte> zeros(8, std::byte{0});
  out.write(zeros.data(), sections.ids_bytes - total * id_width);
  out.write(labels.data(), labels.size() * 4);
  data_hash.update(labels.data(), labels.size() * 4);
  out.write(zeros.data(), sections.labels_bytes - labels.size() * 4);

  TokenStoreInfo info;
  info.version = kVersion;
  info.id_width = id_width;
  info.labels_per_example = labels_per_example;
  info.count = ids.size();
  info.total_tokens = total;
  info.vocab_size = static_cast<uint32_t>(vocab_size);
  info.max_length = static_cast<uint32_t>(std::max<int64_t>(0, max_length));
  info.tokenizer_identity = tokenizer_identity;
  const uint64_t fingerprint =
      fingerprint_of(tokenizer_identity, info.max_length, data_hash.digest(), labels_per_example);
  info.fingerprint = util::to_hex(fingerprint);

  std::memcpy(header.data() + kOffMagic, kMagic, sizeof(kMagic));
  put(header.data(), kOffVersion, kVersion);
  put(header.data(), kOffByteOrder, kByteOrderMark);
  put(header.data(), kOffIdWidth, id_width);
  put(header.data(), kOffLabelsPer, labels_per_example);
  put(header.data(), kOffCount, info.count);
  put(header.data(), kOffTotal, total);
  put(header.data(), kOffVocab, info.vocab_size);
  put(header.data(), kOffMaxLength, info.max_length);
  std::memcpy(header.data() + kOffIdentity, tokenizer_identity.data(), tokenizer_identity.size());
  put(header.data(), kOffFingerprint, fingerprint);
  put(header.data(), kOffDataChecksum, data_hash.digest());
  put(header.data(), kOffHeaderChecksum,
      util::Fnv1a64().update(header.data(), kOffHeaderChecksum).digest());
  out.write_at(0, header.data(), header.size());
  ENSTACK_ASSERT(out.written() == sections.total(), "token store size mismatch");
  out.commit();
  return info;
}

std::shared_ptr<TokenStore> TokenStore::open(const std::filesystem::path& path, bool verify_data) {
  auto fail = [&](const std::string& what) {
    return DataError(util::str_cat("token store ", path.string(), ": ", what,
                                   ". The file is damaged or from another enstack version; delete it and "
                                   "rebuild it with `enstack data prepare`."));
  };
  std::shared_ptr<TokenStore> store(new TokenStore());
  try {
    store->file_ = std::make_unique<util::MappedFile>(path);
  } catch (const Error& e) {
    throw DataError(util::str_cat(e.what(), ". Build the token store with `enstack data prepare`."));
  }
  const std::byte* base = store->file_->data();
  const uint64_t size = store->file_->size();
  if (size < kHeaderSize) throw fail(util::str_cat("only ", size, " bytes, shorter than the header"));
  if (std::memcmp(base, kMagic, sizeof(kMagic)) != 0) throw fail("not an enstack token store (bad magic)");
  const uint64_t header_sum = util::Fnv1a64().update(base, kOffHeaderChecksum).digest();
  if (header_sum != get<uint64_t>(base, kOffHeaderChecksum)) throw fail("header checksum mismatch");
  if (get<uint32_t>(base, kOffByteOrder) != kByteOrderMark) throw fail("written with another byte order");
  auto& info = store->info_;
  info.version = get<uint32_t>(base, kOffVersion);
  if (info.version != kVersion) {
    throw fail(util::str_cat("format version ", info.version, ", this enstack reads version ", kVersion));
  }
  info.id_width = get<uint32_t>(base, kOffIdWidth);
  info.labels_per_example = get<uint32_t>(base, kOffLabelsPer);
  info.count = get<uint64_t>(base, kOffCount);
  info.total_tokens = get<uint64_t>(base, kOffTotal);
  info.vocab_size = get<uint32_t>(base, kOffVocab);
  info.max_length = get<uint32_t>(base, kOffMaxLength);
  const char* identity = reinterpret_cast<const char*>(base + kOffIdentity);
  info.tokenizer_identity.assign(identity, strnlen(identity, kIdentitySize));
  info.fingerprint = util::to_hex(get<uint64_t>(base, kOffFingerprint));
  if (info.id_width != 2 && info.id_width != 4) throw fail(util::str_cat("id width ", info.id_width));
  if (info.count > size || info.total_tokens > size || info.labels_per_example > 4096) {
    throw fail("header counts exceed the file size");
  }
  const Sections sections = sections_for(info.count, info.total_tokens, info.id_width, info.labels_per_example);
  if (sections.total() != size) {
    throw fail(util::str_cat("file has ", size, " bytes but its header describes ", sections.total(),
                             " (truncated or appended to)"));
  }
  store->offsets_ = reinterpret_cast<const uint64_t*>(base + kHeaderSize);
  store->ids_ = base + kHeaderSize + sections.offsets_bytes;
  store->labels_ = reinterpret_cast<const int32_t*>(store->ids_ + sections.ids_bytes);
  if (store->offsets_[0] != 0 || store->offsets_[info.count] != info.total_tokens) {
    throw fail("offsets do not span the token section");
  }
  for (uint64_t i = 0; i < info.count; ++i) {
    if (store->offsets_[i + 1] < store->offsets_[i]) throw fail(util::str_cat("offsets decrease at example ", i));
  }
  if (verify_data) {
    util::Fnv1a64 h;
    h.update(store->offsets_, sections.offsets_bytes);
    h.update(store->ids_, info.total_tokens * info.id_width);
    h.update(store->labels_, 4 * info.count * info.labels_per_example);
    if (h.digest() != get<uint64_t>(base, kOffDataChecksum)) throw fail("data checksum mismatch");
  }
  return store;
}

int64_t TokenStore::length(int64_t index) const {
  ENSTACK_CHECK(index >= 0 && index < size(), DataError, "example ", index, " is outside the token store (",
                size(), " examples).");
  return static_cast<int64_t>(offsets_[index + 1] - offsets_[index]);
}

void TokenStore::copy_ids(int64_t index, int32_t* out) const {
  const int64_t n = length(index);
  const uint64_t begin = offsets_[index];
  if (info_.id_width == 2) {
    const auto* src = reinterpret_cast<const uint16_t*>(ids_) + begin;
    for (int64_t j = 0; j < n; ++j) out[j] = src[j];
  } else {
    const auto* src = reinterpret_cast<const uint32_t*>(ids_) + begin;
    for (int64_t j = 0; j < n; ++j) out[j] = static_cast<int32_t>(src[j]);
  }
}

std::vector<int32_t> TokenStore::ids(int64_t index) const {
  std::vector<int32_t> out(static_cast<std::size_t>(length(index)));
  copy_ids(index, out.data());
  return out;
}

std::span<const int32_t> TokenStore::labels(int64_t index) const {
  length(index);  // bounds check
  return {labels_ + index * info_.labels_per_example, info_.labels_per_example};
}

std::vector<int64_t> TokenStore::lengths() const {
  std::vector<int64_t> out(info_.count);
  for (uint64_t i = 0; i < info_.count; ++i) out[i] = static_cast<int64_t>(offsets_[i + 1] - offsets_[i]);
  return out;
}

TokenStoreInfo TokenStore::build(const std::filesystem::path& path, const Tokenizer& tokenizer,
                                 const std::vector<std::string>& texts, const std::vector<int32_t>& labels,
                                 uint32_t labels_per_example, int64_t max_length, int num_threads) {
  const auto ids = tokenizer.encode_batch(texts, max_length, num_threads);
  return write(path, ids, labels, labels_per_example, tokenizer.vocab_size(), max_length, tokenizer.identity());
}

}  // namespace enstack::data
