// Tokenizer (see enstack/data/tokenizer.h): deterministic multi-threaded batch
// encoding, and from_pretrained, which picks the tokenizer class from the files
// a model directory holds.
#include "enstack/data/tokenizer.h"

#include <algorithm>
#include <exception>
#include <thread>

#include "enstack/data/bpe_tokenizer.h"
#include "enstack/data/sentencepiece_tokenizer.h"
#include "enstack/util/error.h"

namespace enstack::data {
namespace {

namespace fs = std::filesystem;

// Texts are dealt to threads in chunks, round-robin: a static partition (each
// slot is written by exactly one thread) that still balances long and short texts.
constexpr std::size_t kChunk = 16;

std::size_t thread_count(int requested, std::size_t texts) {
  const std::size_t hardware = std::max(1u, std::thread::hardware_concurrency());
  const std::size_t wanted = requested > 0 ? static_cast<std::size_t>(requested) : hardware;
  return std::max<std::size_t>(1, std::min(wanted, texts));
}

std::vector<fs::path> files_with_extension(const fs::path& dir, const std::string& extension) {
  std::vector<fs::path> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.is_regular_file() && entry.path().extension() == extension) out.push_back(entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string list_directory(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  std::string out;
  for (const std::string& name : names) out += (out.empty() ? "" : ", ") + name;
  return out.empty() ? "nothing" : out;
}

}  // namespace

std::vector<std::vector<int32_t>> Tokenizer::encode_batch(const std::vector<std::string>& texts,
                                                          int64_t max_length, int num_threads) const {
  std::vector<std::vector<int32_t>> out(texts.size());
  const std::size_t threads = thread_count(num_threads, texts.size());
  std::vector<std::exception_ptr> errors(threads);
  auto work = [&](std::size_t t) {
    try {
      for (std::size_t begin = t * kChunk; begin < texts.size(); begin += threads * kChunk) {
        for (std::size_t i = begin; i < std::min(begin + kChunk, texts.size()); ++i) {
          out[i] = encode(texts[i], max_length);
        }
      }
    } catch (...) {
      errors[t] = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  try {
    for (std::size_t t = 1; t < threads; ++t) pool.emplace_back(work, t);
  } catch (...) {  // could not start a thread: finish what started, then report
    for (auto& thread : pool) thread.join();
    throw;
  }
  work(0);
  for (auto& thread : pool) thread.join();
  for (const auto& error : errors) {
    if (error) std::rethrow_exception(error);
  }
  return out;
}

std::unique_ptr<Tokenizer> Tokenizer::from_pretrained(const fs::path& path) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) {
    if (path.extension() == ".model") return SentencePieceTokenizer::from_file(path);
    if (path.filename() == "tokenizer.json") return BpeTokenizer::from_tokenizer_json(path);
    if (path.filename() == "vocab.json") return BpeTokenizer::from_files(path, path.parent_path() / "merges.txt");
    throw DataError(util::str_cat("'", path.string(), "' is not a tokenizer file; pass a model directory, a ",
                                  "tokenizer.json or a SentencePiece .model file."));
  }
  ENSTACK_CHECK(fs::is_directory(path, ec), DataError, "the tokenizer path '", path.string(), "' does not exist; ",
                "pass a model directory (with tokenizer.json, or vocab.json + merges.txt, or a *.model file).");
  if (fs::exists(path / "tokenizer.json")) return BpeTokenizer::from_tokenizer_json(path / "tokenizer.json");
  if (fs::exists(path / "vocab.json") && fs::exists(path / "merges.txt")) {
    return BpeTokenizer::from_files(path / "vocab.json", path / "merges.txt");
  }
  const std::vector<fs::path> models = files_with_extension(path, ".model");
  if (models.size() == 1) return SentencePieceTokenizer::from_file(models[0]);
  ENSTACK_CHECK(models.empty(), DataError, "'", path.string(), "' holds several SentencePiece models (",
                list_directory(path), "); pass the path of the .model file to use.");
  throw DataError(util::str_cat("no tokenizer in '", path.string(), "': it holds ", list_directory(path),
                                ", but a tokenizer needs tokenizer.json, or vocab.json + merges.txt, or one ",
                                "SentencePiece *.model file. Copy the tokenizer files of the model there."));
}

}  // namespace enstack::data
