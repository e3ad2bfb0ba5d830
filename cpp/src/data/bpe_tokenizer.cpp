// Byte-level BPE encoding (see enstack/data/bpe_tokenizer.h). Added tokens are
// split out of the raw text (non-normalized tokens first, then normalized ones
// in what is left, as tokenizers' added_vocabulary.rs), the rest goes through
// the GPT-2 pre-tokenizer, and each piece's bytes are merged by rank exactly as
// tokenizers' word.rs does (a min-heap of (rank, position) whose stale entries
// are skipped), behind a bounded per-thread cache of piece -> ids.
#include "enstack/data/bpe_tokenizer.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <limits>
#include <memory>
#include <unordered_map>

#include "bpe_tokenizer_impl.h"
#include "enstack/data/pretokenizer.h"
#include "enstack/util/error.h"

namespace enstack::data {

using bpe_detail::AddedToken;
using bpe_detail::byte_strings;
using bpe_detail::MergeRule;
using bpe_detail::TokenMatcher;
using bpe_detail::WordCache;

namespace {

constexpr std::size_t kMaxCachedWordBytes = 64;
constexpr std::size_t kMaxCachedWords = 1 << 16;
constexpr std::size_t kCachesPerThread = 4;

// Start of the character that ends at `pos` (> 0); an invalid byte is its own character.
std::size_t previous_char_start(std::string_view text, std::size_t pos) {
  std::size_t start = pos - 1;
  while (start > 0 && pos - start < 4 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  const Utf8Char c = decode_utf8(text, start);
  return c.code_point != kInvalidCodePoint && start + c.size == pos ? start : pos - 1;
}

uint32_t code_point_before(std::string_view text, std::size_t pos) {
  return decode_utf8(text, previous_char_start(text, pos)).code_point;
}

// Rust regex's \w, approximated by \p{L}, \p{N} and '_' (exact for ASCII).
bool is_word_char(uint32_t cp) {
  const CharClass c = classify(cp);
  return c == CharClass::kLetter || c == CharClass::kNumber || cp == '_';
}

// tokenizers' space_leftmost_at_end(text[..pos]): start of the whitespace run ending at pos.
std::size_t spaces_before(std::string_view text, std::size_t pos) {
  while (pos > 0 && classify(code_point_before(text, pos)) == CharClass::kSpace) {
    pos = previous_char_start(text, pos);
  }
  return pos;
}

// space_rightmost_at_start(text[pos..]): end of the whitespace run starting at pos.
std::size_t spaces_after(std::string_view text, std::size_t pos) {
  while (pos < text.size()) {
    const Utf8Char c = decode_utf8(text, pos);
    if (classify(c.code_point) != CharClass::kSpace) break;
    pos += c.size;
  }
  return pos;
}

// A piece of the input: an added token (id >= 0) or text for the model (id < 0).
struct Span {
  std::size_t begin, end;
  int32_t id;
};

// tokenizers' AddedVocabulary::find_matches over `sentence` (offsets shifted by `base`).
void find_matches(std::string_view sentence, std::size_t base, const TokenMatcher& matcher,
                  std::vector<Span>& out) {
  std::size_t done = 0;  // end of the last emitted split
  for (std::size_t pos = 0; !matcher.empty() && pos < sentence.size();) {
    const AddedToken* token = matcher.match_at(sentence, pos);
    if (token == nullptr) {
      ++pos;
      continue;
    }
    std::size_t start = pos, stop = pos + token->content.size();
    pos = stop;
    if (token->single_word && ((start > 0 && is_word_char(code_point_before(sentence, start))) ||
                               (stop < sentence.size() && is_word_char(decode_utf8(sentence, stop).code_point)))) {
      continue;
    }
    if (token->lstrip) start = std::max(spaces_before(sentence, start), done);
    if (token->rstrip) stop = spaces_after(sentence, stop);
    if (start < done) continue;  // only a token that begins with whitespace, after an rstrip
    if (done < start) out.push_back({base + done, base + start, -1});
    out.push_back({base + start, base + stop, token->id});
    done = stop;
  }
  if (done < sentence.size()) out.push_back({base + done, base + sentence.size(), -1});
}

// GPT-2's reversible byte -> printable character map, as UTF-8 strings.
std::array<std::string, 256> make_byte_strings() {
  std::array<uint32_t, 256> cps{};
  uint32_t n = 0;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    cps[b] = printable ? b : 256 + n++;
  }
  std::array<std::string, 256> out;
  for (int b = 0; b < 256; ++b) {
    const uint32_t cp = cps[b];
    out[b] = cp < 0x80 ? std::string(1, static_cast<char>(cp))
                       : std::string{static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
  }
  return out;
}

struct Symbol {
  int32_t id, prev, next;
  uint32_t len;  // 0: merged into its left neighbour
};

struct QueuedMerge {
  uint64_t order;  // rank << 32 | position: the lowest rank first, then the leftmost
  int32_t new_id;
  uint32_t pos() const { return static_cast<uint32_t>(order); }
  // std::*_heap keep the largest on top, so "larger" is a smaller order.
  bool operator<(const QueuedMerge& o) const { return order > o.order; }
};

QueuedMerge queued(const MergeRule& m, int32_t pos) {
  return {static_cast<uint64_t>(m.rank) << 32 | static_cast<uint32_t>(pos), m.new_id};
}

thread_local std::vector<Symbol> t_symbols;
thread_local std::vector<QueuedMerge> t_heap;

}  // namespace

namespace bpe_detail {

// Ids of recently encoded pieces. Filled until full, then only read: ids never depend on it.
class WordCache {
 public:
  bool append(std::string_view word, std::vector<int32_t>& ids) const {
    auto it = map_.find(word);
    if (it == map_.end()) return false;
    ids.insert(ids.end(), ids_.begin() + it->second.first, ids_.begin() + it->second.second);
    return true;
  }
  void insert(std::string_view word, const int32_t* ids, std::size_t n) {
    if (map_.size() >= kMaxCachedWords || word.size() > kMaxCachedWordBytes) return;
    const auto begin = static_cast<uint32_t>(ids_.size());
    ids_.insert(ids_.end(), ids, ids + n);
    map_.emplace(std::string(word), std::make_pair(begin, static_cast<uint32_t>(ids_.size())));
  }

 private:
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, std::pair<uint32_t, uint32_t>, Hash, std::equal_to<>> map_;
  std::vector<int32_t> ids_;
};

// This thread's cache for the tokenizer `uid` (a few tokenizers per thread, oldest dropped).
WordCache& thread_cache(uint64_t uid) {
  thread_local std::vector<std::pair<uint64_t, std::unique_ptr<WordCache>>> caches;
  for (auto& [id, cache] : caches) {
    if (id == uid) return *cache;
  }
  if (caches.size() >= kCachesPerThread) caches.erase(caches.begin());
  caches.emplace_back(uid, std::make_unique<WordCache>());
  return *caches.back().second;
}

const std::array<std::string, 256>& byte_strings() {
  static const std::array<std::string, 256> table = make_byte_strings();
  return table;
}

uint64_t new_tokenizer_uid() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1);
}

}  // namespace bpe_detail

std::string byte_to_unicode(uint8_t byte) { return byte_strings()[byte]; }

// One symbol per byte; bytes missing from the vocabulary become <unk> (fused when
// fuse_unk) if the model has one, else are dropped, as tokenizers' merge_word.
void BpeTokenizer::Impl::initial_symbols(std::string_view word) const {
  t_symbols.clear();
  uint32_t pending_unk = 0;
  auto push = [](int32_t id, uint32_t len) {
    const auto i = static_cast<int32_t>(t_symbols.size());
    t_symbols.push_back({id, i - 1, i + 1, len});
  };
  for (unsigned char b : word) {
    if (byte_ids[b] >= 0) {
      if (pending_unk > 0) push(model_unk, pending_unk);
      pending_unk = 0;
      push(byte_ids[b], 1);
    } else if (model_unk >= 0) {
      if (pending_unk > 0 && !fuse_unk) push(model_unk, pending_unk), pending_unk = 0;
      ++pending_unk;
    }
  }
  if (pending_unk > 0) push(model_unk, pending_unk);
  if (!t_symbols.empty()) t_symbols.back().next = -1;
}

void BpeTokenizer::Impl::encode_word(std::string_view word, std::vector<int32_t>& ids) const {
  if (ignore_merges) {
    std::string mapped;
    for (unsigned char b : word) mapped += byte_strings()[b];
    if (auto it = vocab.find(mapped); it != vocab.end()) return ids.push_back(it->second);
  }
  initial_symbols(word);
  auto& sym = t_symbols;
  auto& heap = t_heap;
  heap.clear();
  const auto n = static_cast<int32_t>(sym.size());
  for (int32_t i = 0; i + 1 < n; ++i) {
    if (const MergeRule* m = merge(sym[i].id, sym[i + 1].id)) heap.push_back(queued(*m, i));
  }
  std::make_heap(heap.begin(), heap.end());
  auto queue = [&](int32_t pos, int32_t right) {
    if (const MergeRule* m = merge(sym[pos].id, sym[right].id)) {
      heap.push_back(queued(*m, pos));
      std::push_heap(heap.begin(), heap.end());
    }
  };
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    const QueuedMerge top = heap.back();
    heap.pop_back();
    const uint32_t pos = top.pos();
    Symbol& left = sym[pos];
    if (left.len == 0 || left.next < 0) continue;
    const Symbol right = sym[left.next];
    const MergeRule* m = merge(left.id, right.id);
    if (m == nullptr || m->new_id != top.new_id) continue;  // stale entry
    sym[left.next].len = 0;
    left = {top.new_id, left.prev, right.next, left.len + right.len};
    if (right.next >= 0) sym[right.next].prev = static_cast<int32_t>(pos);
    if (left.prev >= 0) queue(left.prev, static_cast<int32_t>(pos));
    if (left.next >= 0) queue(static_cast<int32_t>(pos), left.next);
  }
  for (const Symbol& s : sym) {
    if (s.len > 0) ids.push_back(s.id);
  }
}

void BpeTokenizer::Impl::encode_words(std::string_view text, WordCache& cache, std::size_t base,
                                      std::size_t limit, std::vector<int32_t>& ids) const {
  thread_local std::string prefixed;
  if (add_prefix_space && text.front() != ' ') {
    prefixed.assign(1, ' ');
    prefixed.append(text);
    text = prefixed;
  }
  for (std::size_t pos = 0; pos < text.size() && ids.size() - base < limit;) {
    const std::size_t end = use_regex ? next_piece_end(text, pos) : text.size();
    const std::string_view word = text.substr(pos, end - pos);
    pos = end;
    if (cache.append(word, ids)) continue;
    const std::size_t before = ids.size();
    encode_word(word, ids);
    cache.insert(word, ids.data() + before, ids.size() - before);
  }
}

// Content ids of `text`, appended to `ids`; stops once `limit` content ids are
// there (pieces are encoded independently, so the prefix is exact).
void BpeTokenizer::Impl::encode_content(std::string_view text, std::size_t limit,
                                        std::vector<int32_t>& ids) const {
  thread_local std::vector<Span> first, spans;
  first.clear();
  spans.clear();
  find_matches(text, 0, raw_matcher, first);
  for (const Span& s : first) {
    if (s.id >= 0) {
      spans.push_back(s);
    } else {
      find_matches(text.substr(s.begin, s.end - s.begin), s.begin, normalized_matcher, spans);
    }
  }
  WordCache& cache = bpe_detail::thread_cache(uid);
  const std::size_t base = ids.size();
  for (const Span& s : spans) {
    if (ids.size() - base >= limit) break;
    if (s.id >= 0) {
      ids.push_back(s.id);
    } else if (s.end > s.begin) {
      encode_words(text.substr(s.begin, s.end - s.begin), cache, base, limit, ids);
    }
  }
}

BpeTokenizer::BpeTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BpeTokenizer::~BpeTokenizer() = default;

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, int64_t max_length) const {
  ENSTACK_CHECK(max_length <= 0 || max_length >= 2, ConfigError, "max_length=", max_length, " cannot hold the ",
                "<s> and </s> that frame every sequence; use max_length >= 2, or <= 0 for no truncation.");
  const std::size_t limit = max_length > 0 ? static_cast<std::size_t>(max_length - 2)
                                           : std::numeric_limits<std::size_t>::max();
  std::vector<int32_t> ids;
  ids.reserve(std::min(text.size() / 3, limit) + 2);
  ids.push_back(impl_->bos);
  impl_->encode_content(text, limit, ids);
  if (ids.size() - 1 > limit) ids.resize(limit + 1);
  ids.push_back(impl_->eos);
  return ids;
}

std::vector<int32_t> BpeTokenizer::encode_raw(std::string_view text) const {
  std::vector<int32_t> ids;
  impl_->encode_content(text, std::numeric_limits<std::size_t>::max(), ids);
  return ids;
}

int64_t BpeTokenizer::vocab_size() const { return impl_->vocab_size; }
int32_t BpeTokenizer::pad_id() const { return impl_->pad; }
int32_t BpeTokenizer::bos_id() const { return impl_->bos; }
int32_t BpeTokenizer::eos_id() const { return impl_->eos; }
int32_t BpeTokenizer::unk_id() const { return impl_->unk; }
std::string BpeTokenizer::identity() const { return impl_->identity; }

}  // namespace enstack::data
