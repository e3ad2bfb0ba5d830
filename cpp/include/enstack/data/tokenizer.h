// Tokenizer: the interface of the native tokenizers (byte-level BPE for the
// RoBERTa family, SentencePiece), with deterministic multi-threaded batch
// encoding. encode() returns the ids a model consumes: framed with the model's
// special tokens (<s> ... </s> for RoBERTa) and truncated to max_length
// exactly as transformers does (content cut to max_length - 2, framing kept).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace enstack::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // max_length <= 0: no truncation. Any byte sequence is accepted (invalid UTF-8 included).
  virtual std::vector<int32_t> encode(std::string_view text, int64_t max_length = 0) const = 0;

  // Same ids as encode() for each text, whatever num_threads is (<= 0: hardware threads).
  std::vector<std::vector<int32_t>> encode_batch(const std::vector<std::string>& texts,
                                                 int64_t max_length = 0, int num_threads = 0) const;

  virtual int64_t vocab_size() const = 0;
  virtual int32_t pad_id() const = 0;
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
  virtual int32_t unk_id() const = 0;
  // A stable hex digest of everything that determines the ids (vocabulary, merges or
  // model, special tokens, kind); part of a token store's fingerprint.
  virtual std::string identity() const = 0;
  virtual std::string kind() const = 0;  // "bpe" or "sentencepiece"

  // A directory with vocab.json + merges.txt, or tokenizer.json, or a SentencePiece
  // *.model file (or the path of such a .model). Throws DataError naming what is missing.
  static std::unique_ptr<Tokenizer> from_pretrained(const std::filesystem::path& path);
};

}  // namespace enstack::data
