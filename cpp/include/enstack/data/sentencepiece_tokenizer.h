// SentencePiece tokenizers through the sentencepiece library: load a .model,
// or train one from a corpus (the demo's from-scratch model). Ids are framed
// <s> ... </s> and truncated like the BPE tokenizer. Models trained here use
// the RoBERTa id layout (<s>=0, <pad>=1, </s>=2, <unk>=3) so they pair with a
// RoBERTa-type encoder.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "enstack/data/tokenizer.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace enstack::data {

struct SentencePieceTrainOptions {
  int64_t vocab_size = 8000;
  std::string model_type = "unigram";  // unigram | bpe
  int64_t max_sentence_length = 1 << 16;  // bytes; code functions are long
  int64_t input_sentence_size = 0;        // 0: all texts (no sampling, so no seed is involved)
  int num_threads = 1;                    // >1 trains faster but may change the model
};

class SentencePieceTokenizer final : public Tokenizer {
 public:
  static std::unique_ptr<SentencePieceTokenizer> from_file(const std::filesystem::path& model_path);

  // Trains a model on `texts` and writes it to `model_path` (atomically).
  static void train(const std::vector<std::string>& texts, const std::filesystem::path& model_path,
                    const SentencePieceTrainOptions& options = {});

  ~SentencePieceTokenizer() override;

  std::vector<int32_t> encode(std::string_view text, int64_t max_length = 0) const override;
  int64_t vocab_size() const override;
  int32_t pad_id() const override;
  int32_t bos_id() const override;
  int32_t eos_id() const override;
  int32_t unk_id() const override;
  std::string identity() const override { return identity_; }
  std::string kind() const override { return "sentencepiece"; }

 private:
  SentencePieceTokenizer(std::unique_ptr<sentencepiece::SentencePieceProcessor> processor,
                         std::string identity);
  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
  std::string identity_;
};

}  // namespace enstack::data
