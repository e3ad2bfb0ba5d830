// SentencePiece tokenizers (see enstack/data/sentencepiece_tokenizer.h).
// Torch-free: sentencepiece's headers carry their own absl shims.
#include "enstack/data/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <unordered_map>

#include "enstack/util/error.h"
#include "enstack/util/files.h"
#include "enstack/util/hash.h"

namespace enstack::data {
namespace {

class VectorIterator final : public sentencepiece::SentenceIterator {
 public:
  explicit VectorIterator(const std::vector<std::string>& texts) : texts_(texts) { skip_empty(); }
  bool done() const override { return index_ >= texts_.size(); }
  void Next() override {
    ++index_;
    skip_empty();
  }
  const std::string& value() const override { return texts_[index_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  void skip_empty() {
    while (index_ < texts_.size() && texts_[index_].empty()) ++index_;
  }
  const std::vector<std::string>& texts_;
  std::size_t index_ = 0;
};

}  // namespace

SentencePieceTokenizer::SentencePieceTokenizer(
    std::unique_ptr<sentencepiece::SentencePieceProcessor> processor, std::string identity)
    : processor_(std::move(processor)), identity_(std::move(identity)) {}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::unique_ptr<SentencePieceTokenizer> SentencePieceTokenizer::from_file(
    const std::filesystem::path& model_path) {
  const std::string bytes = util::read_file<DataError>(model_path);
  auto processor = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto status = processor->LoadFromSerializedProto(bytes);
  ENSTACK_CHECK(status.ok(), DataError, model_path.string(), " is not a SentencePiece model (",
                status.ToString(), "); give a .model file written by sentencepiece.");
  const std::string identity =
      util::Fnv1a64().update("sentencepiece\n").update(bytes).hex();
  return std::unique_ptr<SentencePieceTokenizer>(
      new SentencePieceTokenizer(std::move(processor), identity));
}

void SentencePieceTokenizer::train(const std::vector<std::string>& texts,
                                   const std::filesystem::path& model_path,
                                   const SentencePieceTrainOptions& options) {
  ENSTACK_CHECK(options.model_type == "unigram" || options.model_type == "bpe", ConfigError,
                "SentencePiece model_type '", options.model_type, "' is not supported; use unigram or bpe.");
  ENSTACK_CHECK(options.vocab_size >= 300, ConfigError, "SentencePiece vocab_size ", options.vocab_size,
                " is too small: byte fallback alone needs 256 pieces plus the specials; use >= 300.");
  // Code is whitespace-sensitive: no normalization, no whitespace collapsing, bytes for
  // anything unseen. The RoBERTa id layout lets a RoBERTa-type encoder use these ids.
  std::unordered_map<std::string, std::string> args = {
      {"model_type", options.model_type},
      {"vocab_size", std::to_string(options.vocab_size)},
      {"bos_id", "0"}, {"pad_id", "1"}, {"eos_id", "2"}, {"unk_id", "3"},
      {"bos_piece", "<s>"}, {"pad_piece", "<pad>"}, {"eos_piece", "</s>"}, {"unk_piece", "<unk>"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"split_digits", "true"},
      {"byte_fallback", "true"},
      {"character_coverage", "1.0"},
      {"hard_vocab_limit", "false"},
      {"max_sentence_length", std::to_string(options.max_sentence_length)},
      {"input_sentence_size", std::to_string(options.input_sentence_size)},
      {"shuffle_input_sentence", "true"},
      {"num_threads", std::to_string(std::max(1, options.num_threads))},
      {"minloglevel", "2"},
  };
  VectorIterator iterator(texts);
  ENSTACK_CHECK(!iterator.done(), DataError, "cannot train a SentencePiece model: every text is empty.");
  std::string serialized;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &iterator, &serialized);
  ENSTACK_CHECK(status.ok(), DataError, "SentencePiece training failed: ", status.ToString(),
                ". If it says the vocabulary is too large for the corpus, lower model.tokenizer.vocab_size.");
  util::write_file_atomic(model_path, serialized);
}

std::vector<int32_t> SentencePieceTokenizer::encode(std::string_view text, int64_t max_length) const {
  std::vector<int> pieces;
  const auto status = processor_->Encode(std::string_view(text.data(), text.size()), &pieces);
  ENSTACK_CHECK(status.ok(), DataError, "SentencePiece could not encode a text: ", status.ToString());
  const int32_t bos = bos_id(), eos = eos_id();
  const int64_t framing = (bos >= 0) + (eos >= 0);
  std::size_t keep = pieces.size();
  if (max_length > 0) keep = std::min<std::size_t>(keep, static_cast<std::size_t>(std::max<int64_t>(0, max_length - framing)));
  std::vector<int32_t> ids;
  ids.reserve(keep + 2);
  if (bos >= 0) ids.push_back(bos);
  ids.insert(ids.end(), pieces.begin(), pieces.begin() + static_cast<std::ptrdiff_t>(keep));
  if (eos >= 0) ids.push_back(eos);
  return ids;
}

int64_t SentencePieceTokenizer::vocab_size() const { return processor_->GetPieceSize(); }
int32_t SentencePieceTokenizer::pad_id() const { return processor_->pad_id(); }
int32_t SentencePieceTokenizer::bos_id() const { return processor_->bos_id(); }
int32_t SentencePieceTokenizer::eos_id() const { return processor_->eos_id(); }
int32_t SentencePieceTokenizer::unk_id() const { return processor_->unk_id(); }

}  // namespace enstack::data
