// Tests of the byte-level BPE tokenizer: GPT-2 byte map, Unicode tables, the
// hand-written pre-tokenizer (cases checked against `tokenizers`), ranked merges
// on a tiny hand-made vocabulary, added tokens, truncation and framing, random
// and invalid UTF-8 input, batch encoding, and loading errors. Parity with
// `tokenizers` on large corpora is tested in tests/python/test_tokenizer.py.
#include "enstack/data/bpe_tokenizer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "enstack/data/pretokenizer.h"
#include "enstack/data/tokenizer.h"
#include "enstack/data/unicode_tables.h"
#include "enstack/util/error.h"

namespace enstack::data {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Pieces = std::vector<std::string_view>;

// splitmix64: the same stream on every platform (no std::*_distribution).
uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

TEST(ByteToUnicode, IsGpt2Map) {
  EXPECT_EQ(byte_to_unicode(' '), "\u0120");   // Ġ
  EXPECT_EQ(byte_to_unicode('\n'), "\u010A");  // Ċ
  EXPECT_EQ(byte_to_unicode('\t'), "\u0109");  // ĉ
  EXPECT_EQ(byte_to_unicode('a'), "a");
  EXPECT_EQ(byte_to_unicode('!'), "!");
  EXPECT_EQ(byte_to_unicode(0x00), "\u0100");
  EXPECT_EQ(byte_to_unicode(0x7F), "\u0121");
  EXPECT_EQ(byte_to_unicode(0xAD), "\u0143");
  EXPECT_EQ(byte_to_unicode(0xA1), "\u00A1");
  EXPECT_EQ(byte_to_unicode(0xFF), "\u00FF");
  std::map<std::string, int> seen;
  for (int b = 0; b < 256; ++b) ++seen[byte_to_unicode(static_cast<uint8_t>(b))];
  EXPECT_EQ(seen.size(), 256u);
}

TEST(UnicodeTables, SortedDisjointAndSpotChecks) {
  for (auto table : {unicode::letter_ranges(), unicode::number_ranges(), unicode::white_space_ranges()}) {
    for (std::size_t i = 0; i < table.size(); ++i) {
      EXPECT_LE(table[i].first, table[i].last);
      if (i > 0) {
        EXPECT_GT(table[i].first, table[i - 1].last + 1);
      }
    }
  }
  EXPECT_TRUE(unicode::is_letter('a') && unicode::is_letter(0x4E00) && unicode::is_letter(0x00E9));
  EXPECT_FALSE(unicode::is_letter('1') || unicode::is_letter('_') || unicode::is_letter(0x0301));
  EXPECT_TRUE(unicode::is_number('7') && unicode::is_number(0x0663) && unicode::is_number(0x2167));
  EXPECT_TRUE(unicode::is_white_space(0x3000) && unicode::is_white_space(0x85) && unicode::is_white_space(0xA0));
  EXPECT_FALSE(unicode::is_white_space(0x200B) || unicode::is_white_space(0x1C) || unicode::is_white_space(0x180E));
  EXPECT_FALSE(unicode::is_letter(0xFFFFFFFF) || unicode::is_number(0x110000));
}

TEST(DecodeUtf8, StrictAndTotal) {
  auto d = [](std::string s) { return decode_utf8(s, 0); };
  EXPECT_EQ(d("\xE2\x82\xAC").code_point, 0x20ACu);
  EXPECT_EQ(d("\xE2\x82\xAC").size, 3u);
  EXPECT_EQ(d("\xF0\x9F\x8E\x89").code_point, 0x1F389u);
  for (std::string bad : {"\xC0\x80", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xE2\x82", "\x80", "\xFF", "\xF8\x88"}) {
    EXPECT_EQ(d(bad).code_point, kInvalidCodePoint) << bad.size();
    EXPECT_EQ(d(bad).size, 1u);
  }
}

// Expected splits were produced by tokenizers' ByteLevel pre-tokenizer.
TEST(Pretokenizer, MatchesTokenizersOnHandWrittenCases) {
  const std::vector<std::pair<std::string, Pieces>> cases = {
      {"Hello my friend, how is your day going?",
       {"Hello", " my", " friend", ",", " how", " is", " your", " day", " going", "?"}},
      {"Hello there       dear", {"Hello", " there", "      ", " dear"}},
      {"don't we're I'LL it's", {"don", "'t", " we", "'re", " I", "'", "LL", " it", "'s"}},
      {"'sa", {"'s", "a"}},
      {"x''s", {"x", "''", "s"}},
      {" 's", {" '", "s"}},
      {"a\tb", {"a", "\t", "b"}},
      {"x;\r\n\ty", {"x", ";", "\r\n", "\t", "y"}},
      {"a  b", {"a", " ", " b"}},
      {"a   ", {"a", "   "}},
      {"  a", {" ", " a"}},
      {"\n\n  int", {"\n\n ", " int"}},
      {"a \n b", {"a", " \n", " b"}},
      {"x123 456.78", {"x", "123", " 456", ".", "78"}},
      {"a+=b;->c", {"a", "+=", "b", ";->", "c"}},
      {" ++", {" ++"}},
      {"gr\u00f6\u00dfe \u6570\u636e na\u00efve", {"gr\u00f6\u00dfe", " \u6570\u636e", " na\u00efve"}},
      {"n\u0663", {"n", "\u0663"}},
      {"a\u00a0b", {"a", "\u00a0", "b"}},
      {"a \u3000b", {"a", " ", "\u3000", "b"}},
      {"x\U0001F389\U0001F525!", {"x", "\U0001F389\U0001F525!"}},
      {"", {}},
  };
  for (const auto& [text, expected] : cases) EXPECT_EQ(split_gpt2(text), expected) << text;
}

// A directory with a tiny vocabulary: the five RoBERTa specials, all 256 byte
// symbols and a few merges, written as vocab.json + merges.txt.
class TinyBpe : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("enstack_bpe_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
            std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    for (const char* special : {"<s>", "<pad>", "</s>", "<unk>", "<mask>"}) add(special);
    for (int b = 0; b < 256; ++b) add(byte_to_unicode(static_cast<uint8_t>(b)));
    for (auto [a, b] : std::vector<std::pair<std::string, std::string>>{
             {"l", "o"}, {"lo", "w"}, {"e", "r"}, {"\u0120", "low"}, {"low", "er"}, {"a", "a"}}) {
      merges_.push_back(a + " " + b);
      add(a + b);
    }
    write();
  }
  void TearDown() override { fs::remove_all(dir_); }

  void add(const std::string& token) {
    if (!vocab_.contains(token)) vocab_[token] = static_cast<int32_t>(vocab_.size());
  }
  void write() {
    std::ofstream(dir_ / "vocab.json") << vocab_.dump();
    std::ofstream merges(dir_ / "merges.txt");
    merges << "#version: 0.2\n";
    for (const auto& m : merges_) merges << m << "\n";
  }
  std::unique_ptr<BpeTokenizer> load() { return BpeTokenizer::from_files(dir_ / "vocab.json", dir_ / "merges.txt"); }
  int32_t id(const std::string& token) { return vocab_.at(token).get<int32_t>(); }

  // Inverts encode_raw: added tokens give their text, others their bytes.
  std::string decode(const std::vector<int32_t>& ids) {
    std::map<std::string, uint8_t> byte_of;
    for (int b = 0; b < 256; ++b) byte_of[byte_to_unicode(static_cast<uint8_t>(b))] = static_cast<uint8_t>(b);
    std::map<int32_t, std::string> token_of;
    for (const auto& [token, i] : vocab_.items()) token_of[i.get<int32_t>()] = token;
    std::string out;
    for (int32_t i : ids) {
      const std::string& token = token_of.at(i);
      if (i < 5) {
        out += token;
        continue;
      }
      for (std::size_t p = 0; p < token.size();) {
        const std::size_t n = decode_utf8(token, p).size;
        out += static_cast<char>(byte_of.at(token.substr(p, n)));
        p += n;
      }
    }
    return out;
  }

  fs::path dir_;
  json vocab_ = json::object();
  std::vector<std::string> merges_;
};

TEST_F(TinyBpe, MergesApplyByRank) {
  auto tok = load();
  EXPECT_EQ(tok->encode_raw("lower"), (std::vector<int32_t>{id("lower")}));
  EXPECT_EQ(tok->encode_raw(" lower"), (std::vector<int32_t>{id("\u0120low"), id("er")}));
  EXPECT_EQ(tok->encode_raw("aaa"), (std::vector<int32_t>{id("aa"), id("a")}));
  EXPECT_EQ(tok->encode_raw("aaaa"), (std::vector<int32_t>{id("aa"), id("aa")}));
  EXPECT_EQ(tok->encode_raw("ol"), (std::vector<int32_t>{id("o"), id("l")}));
  EXPECT_EQ(tok->encode_raw("lower lower"), (std::vector<int32_t>{id("lower"), id("\u0120low"), id("er")}));
  EXPECT_EQ(tok->kind(), "bpe");
  EXPECT_EQ(tok->vocab_size(), static_cast<int64_t>(vocab_.size()));
  EXPECT_EQ(tok->bos_id(), 0);
  EXPECT_EQ(tok->pad_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->unk_id(), 3);
}

TEST_F(TinyBpe, SpecialTokensAreSplitOut) {
  auto tok = load();
  EXPECT_EQ(tok->encode_raw("<s>lo</s>"), (std::vector<int32_t>{0, id("lo"), 2}));
  // <mask> takes the spaces before it (lstrip), as RoBERTa's does.
  EXPECT_EQ(tok->encode_raw("lo  <mask> lo"), (std::vector<int32_t>{id("lo"), 4, id("\u0120"), id("lo")}));
  EXPECT_EQ(tok->encode_raw("<mask0>").size(), 7u);  // not an added token: one id per byte
}

TEST_F(TinyBpe, SideFilesAddTokens) {
  add("<mask0>");
  add("<encoder-only>");
  write();
  std::ofstream(dir_ / "added_tokens.json") << json{{"<extra>", vocab_.size()}}.dump();
  std::ofstream(dir_ / "special_tokens_map.json")
      << json{{"additional_special_tokens", {"<mask0>", "<encoder-only>"}}}.dump();
  auto tok = load();
  EXPECT_EQ(tok->encode_raw("a<mask0>b <encoder-only><extra>"),
            (std::vector<int32_t>{id("a"), id("<mask0>"), id("b"), id("\u0120"), id("<encoder-only>"),
                                  static_cast<int32_t>(vocab_.size())}));
  EXPECT_EQ(tok->vocab_size(), static_cast<int64_t>(vocab_.size()) + 1);
}

TEST_F(TinyBpe, FramingAndTruncation) {
  auto tok = load();
  EXPECT_EQ(tok->encode(""), (std::vector<int32_t>{0, 2}));
  EXPECT_EQ(tok->encode("", 2), (std::vector<int32_t>{0, 2}));
  EXPECT_TRUE(tok->encode_raw("").empty());
  const std::string text = "lower lower xyz 123";
  const std::vector<int32_t> raw = tok->encode_raw(text);
  ASSERT_GT(raw.size(), 6u);
  for (int64_t max_length : {2, 3, 5, 8, 1000, 0, -1}) {
    const std::vector<int32_t> ids = tok->encode(text, max_length);
    const std::size_t content = max_length > 0 ? std::min<std::size_t>(raw.size(), max_length - 2) : raw.size();
    ASSERT_EQ(ids.size(), content + 2) << max_length;
    EXPECT_EQ(ids.front(), 0);
    EXPECT_EQ(ids.back(), 2);
    EXPECT_TRUE(std::equal(raw.begin(), raw.begin() + content, ids.begin() + 1));
  }
  EXPECT_THROW(tok->encode(text, 1), ConfigError);
}

TEST_F(TinyBpe, RandomBytesNeverCrashAndRoundTrip) {
  auto tok = load();
  const std::string alphabet =
      std::string("lowera \t\r\n'sx1.") + "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x8E\x89\x80\xFF\xED\xA0";
  uint64_t state = 42;
  for (int round = 0; round < 3000; ++round) {
    std::string text(splitmix64(state) % 120, '\0');
    const bool uniform = round % 2 == 0;
    for (char& c : text) {
      const uint64_t r = splitmix64(state);
      c = uniform ? static_cast<char>(r & 0xFF) : alphabet[r % alphabet.size()];
    }
    std::size_t covered = 0;
    for (std::string_view piece : split_gpt2(text)) {
      ASSERT_FALSE(piece.empty());
      ASSERT_EQ(piece.data(), text.data() + covered);
      covered += piece.size();
    }
    ASSERT_EQ(covered, text.size());
    const std::vector<int32_t> raw = tok->encode_raw(text);
    if (text.find('<') == std::string::npos) {
      ASSERT_EQ(decode(raw), text) << round;
    }
    ASSERT_EQ(tok->encode(text), tok->encode(text));
  }
}

TEST_F(TinyBpe, BatchEqualsSingleForAnyThreadCount) {
  auto tok = load();
  std::vector<std::string> texts;
  uint64_t state = 7;
  for (int i = 0; i < 333; ++i) {
    std::string text;
    for (uint64_t n = splitmix64(state) % 60; n > 0; --n) text += "lower <mask> \xC3\xA9\t\n1'"[splitmix64(state) % 18];
    texts.push_back(text);
  }
  for (int64_t max_length : {0, 9}) {
    std::vector<std::vector<int32_t>> expected;
    for (const auto& t : texts) expected.push_back(tok->encode(t, max_length));
    for (int threads : {1, 2, 4, 0}) EXPECT_EQ(tok->encode_batch(texts, max_length, threads), expected) << threads;
  }
  EXPECT_TRUE(tok->encode_batch({}, 0, 4).empty());
  EXPECT_THROW(tok->encode_batch(texts, 1, 4), ConfigError);
}

TEST_F(TinyBpe, TokenizerJsonGivesTheSameIds) {
  json added = json::array();
  for (int i = 0; i < 5; ++i) {
    const std::string content = std::vector<std::string>{"<s>", "<pad>", "</s>", "<unk>", "<mask>"}[i];
    added.push_back({{"id", i}, {"content", content}, {"single_word", false}, {"lstrip", i == 4},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  }
  const json root = {
      {"version", "1.0"}, {"added_tokens", added}, {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}}},
      {"post_processor", {{"type", "RobertaProcessing"}, {"sep", {"</s>", 2}}, {"cls", {"<s>", 0}}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab_}, {"merges", merges_}, {"unk_token", nullptr}}}};
  fs::create_directories(dir_ / "json");
  std::ofstream(dir_ / "json" / "tokenizer.json") << root.dump();
  auto from_json = Tokenizer::from_pretrained(dir_ / "json");
  auto from_files = Tokenizer::from_pretrained(dir_);
  for (std::string text : {"lower <mask> lower", "<s>aaa\t\n", "", "x \xE2\x82\xAC y"}) {
    EXPECT_EQ(from_json->encode(text), from_files->encode(text)) << text;
  }
  EXPECT_EQ(from_json->identity(), Tokenizer::from_pretrained(dir_ / "json" / "tokenizer.json")->identity());
  EXPECT_EQ(from_json->identity().size(), 16u);
}

TEST_F(TinyBpe, BadFilesAreDataErrors) {
  auto expect_data_error = [&](const std::string& needle) {
    try {
      load();
      ADD_FAILURE() << "no error for " << needle;
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  merges_.push_back("zz q");
  write();
  expect_data_error("missing from the vocabulary");
  merges_.back() = "a b c";
  write();
  expect_data_error("not two tokens");
  std::ofstream(dir_ / "vocab.json") << "{\"a\": ";
  expect_data_error("not valid JSON");
  merges_.pop_back();
  write();
  fs::remove(dir_ / "merges.txt");
  expect_data_error("merges.txt");
}

TEST_F(TinyBpe, FromPretrainedNamesWhatIsMissing) {
  fs::create_directories(dir_ / "empty");
  std::ofstream(dir_ / "empty" / "config.json") << "{}";
  try {
    Tokenizer::from_pretrained(dir_ / "empty");
    ADD_FAILURE() << "no error";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("merges.txt"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Tokenizer::from_pretrained(dir_ / "nonexistent"), DataError);
  std::ofstream(dir_ / "json_model.json") << json{{"model", {{"type", "WordPiece"}, {"vocab", json::object()}}}}.dump();
  EXPECT_THROW(BpeTokenizer::from_tokenizer_json(dir_ / "json_model.json"), DataError);
}

}  // namespace
}  // namespace enstack::data
