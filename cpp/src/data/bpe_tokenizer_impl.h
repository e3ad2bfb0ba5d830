// Private to bpe_tokenizer.cpp (encoding) and bpe_tokenizer_load.cpp (loading):
// the state of a BpeTokenizer, its added tokens and their matcher.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "enstack/data/bpe_tokenizer.h"

namespace enstack::data::bpe_detail {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = true;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

struct MergeRule {
  uint32_t rank;
  int32_t new_id;
};

inline uint64_t pair_key(int32_t left, int32_t right) {
  return static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32 | static_cast<uint32_t>(right);
}

// Leftmost-longest matching of a fixed set of tokens (what aho-corasick's
// MatchKind::LeftmostLongest gives tokenizers): candidates by first byte, longest first.
class TokenMatcher {
 public:
  // `tokens` must outlive the matcher and stay unchanged.
  void build(const std::vector<AddedToken>& tokens, bool normalized) {
    for (const AddedToken& t : tokens) {
      if (t.normalized != normalized || t.content.empty()) continue;
      by_first_byte_[static_cast<unsigned char>(t.content[0])].push_back(&t);
      empty_ = false;
    }
    for (auto& list : by_first_byte_) {
      std::stable_sort(list.begin(), list.end(),
                       [](const AddedToken* a, const AddedToken* b) { return a->content.size() > b->content.size(); });
    }
  }
  bool empty() const { return empty_; }
  const AddedToken* match_at(std::string_view text, std::size_t pos) const {
    for (const AddedToken* t : by_first_byte_[static_cast<unsigned char>(text[pos])]) {
      if (text.compare(pos, t->content.size(), t->content) == 0) return t;
    }
    return nullptr;
  }

 private:
  std::array<std::vector<const AddedToken*>, 256> by_first_byte_;
  bool empty_ = true;
};

class WordCache;

// GPT-2's byte -> printable character map, as UTF-8 strings.
const std::array<std::string, 256>& byte_strings();
uint64_t new_tokenizer_uid();

}  // namespace enstack::data::bpe_detail

namespace enstack::data {

struct BpeTokenizer::Impl {
  std::unordered_map<std::string, int32_t> vocab;
  std::unordered_map<uint64_t, bpe_detail::MergeRule> merges;
  std::vector<std::pair<std::string, std::string>> merge_pairs;  // by rank
  std::array<int32_t, 256> byte_ids{};                           // -1: byte not in the vocabulary
  std::vector<bpe_detail::AddedToken> added;
  bpe_detail::TokenMatcher raw_matcher, normalized_matcher;
  int32_t bos = -1, eos = -1, pad = -1, unk = -1;
  int32_t model_unk = -1;  // the BPE model's unk_token: what unknown bytes become (-1: dropped)
  bool fuse_unk = false, ignore_merges = false, add_prefix_space = false, use_regex = true;
  int64_t vocab_size = 0;
  std::string identity;
  uint64_t uid = bpe_detail::new_tokenizer_uid();  // keys the per-thread word caches

  const bpe_detail::MergeRule* merge(int32_t left, int32_t right) const {
    auto it = merges.find(bpe_detail::pair_key(left, right));
    return it == merges.end() ? nullptr : &it->second;
  }
  // Checks what the loader filled in and builds the lookup tables and identity.
  void finish(const std::string& where);

  void encode_content(std::string_view text, std::size_t limit, std::vector<int32_t>& ids) const;
  void encode_words(std::string_view text, bpe_detail::WordCache& cache, std::size_t base, std::size_t limit,
                    std::vector<int32_t>& ids) const;
  void encode_word(std::string_view word, std::vector<int32_t>& ids) const;
  void initial_symbols(std::string_view word) const;
};

}  // namespace enstack::data
