// Byte-level BPE as used by RoBERTa, CodeBERT, GraphCodeBERT and UniXcoder
// (GPT-2 byte-to-unicode mapping and pre-tokenization pattern, ranked merges,
// added/special tokens split out before BPE), producing the same ids as the
// Hugging Face `tokenizers` library and transformers' RobertaTokenizer(Fast).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "enstack/data/tokenizer.h"

namespace enstack::data {

// GPT-2's byte-to-unicode map: the UTF-8 of the printable character that stands
// for `byte` in byte-level vocabularies (' ' -> "Ġ", '\n' -> "Ċ", 'a' -> "a").
std::string byte_to_unicode(uint8_t byte);

class BpeTokenizer final : public Tokenizer {
 public:
  // vocab.json + merges.txt (+ optional added_tokens.json / special_tokens_map.json).
  static std::unique_ptr<BpeTokenizer> from_files(const std::filesystem::path& vocab_json,
                                                  const std::filesystem::path& merges_txt);
  // A tokenizers-format tokenizer.json with a BPE model.
  static std::unique_ptr<BpeTokenizer> from_tokenizer_json(const std::filesystem::path& tokenizer_json);

  ~BpeTokenizer() override;

  std::vector<int32_t> encode(std::string_view text, int64_t max_length = 0) const override;
  // Ids without the <s> ... </s> framing and without truncation.
  std::vector<int32_t> encode_raw(std::string_view text) const;

  int64_t vocab_size() const override;
  int32_t pad_id() const override;
  int32_t bos_id() const override;
  int32_t eos_id() const override;
  int32_t unk_id() const override;
  std::string identity() const override;
  std::string kind() const override { return "bpe"; }

  struct Impl;

 private:
  explicit BpeTokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace enstack::data
