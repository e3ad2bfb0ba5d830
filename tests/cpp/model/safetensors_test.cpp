// Tests of the safetensors reader and writer: round trips, dtype conversion,
// metadata, a corpus of malformed files, and a randomized mutation test that
// every corrupted file either loads or raises ModelError, never anything else.
#include "enstack/model/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "enstack/util/error.h"

namespace enstack::model {
namespace {

namespace fs = std::filesystem;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           (std::string("enstack_safetensors_") + test->name() + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  // Writes raw bytes to dir_/name and returns the path.
  fs::path write_raw(const std::string& name, const std::string& bytes) const {
    const fs::path path = dir_ / name;
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    EXPECT_TRUE(out.good()) << "cannot write test file " << path;
    return path;
  }

  fs::path dir_;
};

std::string read_raw(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// An 8-byte little-endian length, the header, then the data section.
std::string make_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t len = header.size();
  std::memcpy(out.data(), &len, 8);
  return out + header + data;
}

// Opens the file and reads every tensor, as a loader would.
void load_everything(const fs::path& path) {
  SafetensorsReader reader(path);
  for (const std::string& name : reader.names()) {
    (void)reader.tensor(name);
    (void)reader.tensor(name, torch::kBFloat16);
  }
  (void)reader.metadata();
}

// Expects ModelError whose message contains the path and every word in `words`.
void expect_model_error(const fs::path& path, const std::vector<const char*>& words) {
  try {
    load_everything(path);
    ADD_FAILURE() << "no ModelError for " << path;
  } catch (const ModelError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(path.string()), std::string::npos) << message;
    for (const char* word : words) {
      EXPECT_NE(message.find(word), std::string::npos) << "'" << word << "' not in: " << message;
    }
  }
}

TEST_F(SafetensorsTest, RoundTripsDtypesAndShapes) {
  std::map<std::string, torch::Tensor> tensors = {
      {"f64", torch::randn({3, 2}, torch::kDouble)},
      {"f32", torch::randn({4, 5})},
      {"f16", torch::randn({7}).to(torch::kHalf)},
      {"bf16", torch::randn({2, 3, 4}).to(torch::kBFloat16)},
      {"i64", torch::arange(-5, 7, torch::kLong).reshape({3, 4})},
      {"i32", torch::arange(0, 6, torch::kInt)},
      {"i16", torch::tensor({-3, 0, 300}, torch::kShort)},
      {"i8", torch::tensor({-128, 0, 127}, torch::kChar)},
      {"u8", torch::tensor({0, 1, 255}, torch::kByte)},
      {"bool", torch::tensor({true, false, true})},
      {"empty", torch::empty({0, 3})},
      {"scalar", torch::tensor(3.5)},
      {"transposed", torch::randn({3, 5}).t()},  // not contiguous
  };
  const fs::path path = dir_ / "model.safetensors";
  save_safetensors(path, tensors);

  const std::string bytes = read_raw(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ((8 + header_len) % 8, 0u) << "data section must start 8-byte aligned";

  SafetensorsReader reader(path);
  EXPECT_EQ(reader.path(), path);
  std::vector<std::string> expected_names;
  for (const auto& [name, t] : tensors) expected_names.push_back(name);
  EXPECT_EQ(reader.names(), expected_names);
  for (const auto& [name, expected] : tensors) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(reader.contains(name));
    const torch::Tensor got = reader.tensor(name);
    EXPECT_EQ(got.scalar_type(), expected.scalar_type());
    EXPECT_EQ(got.sizes(), expected.sizes());
    EXPECT_TRUE(got.is_contiguous());
    EXPECT_TRUE(torch::equal(got, expected));
  }
  EXPECT_EQ(reader.info("scalar").shape, std::vector<int64_t>{});
  EXPECT_EQ(reader.info("empty").begin, reader.info("empty").end);
  EXPECT_EQ(reader.info("f32").dtype, "F32");
  EXPECT_EQ(reader.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  EXPECT_FALSE(reader.contains("missing"));
  EXPECT_THROW(reader.tensor("missing"), ModelError);
  EXPECT_THROW(reader.info("missing"), ModelError);
}

TEST_F(SafetensorsTest, ReadsAHandWrittenFile) {
  // The layout the reference implementation writes: offsets relative to the data section.
  const float values[] = {1.0f, -2.0f, 0.5f};
  std::string data(reinterpret_cast<const char*>(values), sizeof(values));
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},)"
      R"("a":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})";
  SafetensorsReader reader(write_raw("hand.safetensors", make_file(header, data)));
  EXPECT_EQ(reader.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(torch::equal(reader.tensor("a"), torch::tensor(1.0f)));
  EXPECT_TRUE(torch::equal(reader.tensor("b"), torch::tensor({-2.0f, 0.5f})));
}

TEST_F(SafetensorsTest, ConvertsFloatDtypesOnRead) {
  const torch::Tensor f32 = torch::randn({4, 4});
  const fs::path path = dir_ / "w.safetensors";
  save_safetensors(path, {{"w", f32}, {"ids", torch::arange(5, torch::kLong)}});
  SafetensorsReader reader(path);

  const torch::Tensor bf16 = reader.tensor("w", torch::kBFloat16);
  EXPECT_EQ(bf16.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(bf16, f32.to(torch::kBFloat16)));
  const torch::Tensor f16 = reader.tensor("w", torch::kHalf);
  EXPECT_EQ(f16.scalar_type(), torch::kHalf);
  EXPECT_TRUE(torch::equal(f16, f32.to(torch::kHalf)));
  EXPECT_EQ(reader.tensor("w", torch::kFloat).scalar_type(), torch::kFloat);
  // Integer tensors come back as stored even when a floating dtype is asked for.
  EXPECT_EQ(reader.tensor("ids", torch::kHalf).scalar_type(), torch::kLong);
}

TEST_F(SafetensorsTest, RoundTripsMetadata) {
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"enstack_version", "0.1.0"}, {"note", "quotes \" and \\ and ünïcode"}};
  const fs::path path = dir_ / "m.safetensors";
  save_safetensors(path, {{"x", torch::ones({2})}}, metadata);
  EXPECT_EQ(SafetensorsReader(path).metadata(), metadata);

  save_safetensors(path, {{"x", torch::ones({2})}}, {});
  EXPECT_TRUE(SafetensorsReader(path).metadata().empty());
}

TEST_F(SafetensorsTest, WriterRejectsUnsupportedTensors) {
  const fs::path path = dir_ / "bad.safetensors";
  EXPECT_THROW(save_safetensors(path, {{"c", torch::zeros({2}, torch::kComplexFloat)}}), ModelError);
  EXPECT_THROW(save_safetensors(path, {{"__metadata__", torch::zeros({2})}}), ModelError);
  EXPECT_THROW(save_safetensors(path, {{"u", torch::Tensor()}}), ModelError);
  EXPECT_FALSE(fs::exists(path));
  EXPECT_THROW(scalar_type_from_safetensors("F8_XYZ"), ModelError);
  EXPECT_THROW(safetensors_dtype_name(torch::kComplexDouble), ModelError);
  EXPECT_EQ(scalar_type_from_safetensors("BF16"), torch::kBFloat16);
  EXPECT_EQ(safetensors_dtype_name(torch::kBool), "BOOL");
}

TEST_F(SafetensorsTest, MissingFileIsModelError) {
  expect_model_error(dir_ / "nope.safetensors", {"No such file"});
}

// One valid 2x2 F32 tensor `a` needs 16 bytes.
const std::string kData16(16, '\0');

TEST_F(SafetensorsTest, RejectsMalformedFiles) {
  struct Case {
    const char* name;
    std::string bytes;
    std::vector<const char*> words;
  };
  std::string huge_len(8, '\0');
  const uint64_t big = 200'000'000;
  std::memcpy(huge_len.data(), &big, 8);
  std::string beyond_file = make_file(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})", kData16);
  const uint64_t beyond = beyond_file.size();  // more than what follows the length field
  std::memcpy(beyond_file.data(), &beyond, 8);

  const std::vector<Case> cases = {
      {"short", std::string("\x05\0\0", 3), {"shorter than"}},
      {"empty", "", {"0 bytes"}},
      {"header_too_large", huge_len + "{}", {"above the safetensors limit"}},
      {"header_beyond_file", beyond_file, {"truncated"}},
      {"not_json", make_file("{not json", ""), {"not valid JSON"}},
      {"json_array", make_file("[1, 2]", ""), {"array", "must be an object"}},
      {"entry_not_object", make_file(R"({"a": 3})", ""), {"tensor 'a'"}},
      {"missing_dtype", make_file(R"({"a":{"shape":[2,2],"data_offsets":[0,16]}})", kData16),
       {"tensor 'a'", "dtype"}},
      {"unknown_dtype", make_file(R"({"a":{"dtype":"F8_XYZ","shape":[2,2],"data_offsets":[0,16]}})", kData16),
       {"tensor 'a'", "F8_XYZ"}},
      {"missing_shape", make_file(R"({"a":{"dtype":"F32","data_offsets":[0,16]}})", kData16), {"shape"}},
      {"negative_dim", make_file(R"({"a":{"dtype":"F32","shape":[-2,2],"data_offsets":[0,16]}})", kData16),
       {"tensor 'a'", "non-negative"}},
      {"float_dim", make_file(R"({"a":{"dtype":"F32","shape":[2.0,2],"data_offsets":[0,16]}})", kData16), {}},
      {"overflowing_shape",
       make_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}})", ""),
       {"overflows"}},
      {"missing_offsets", make_file(R"({"a":{"dtype":"F32","shape":[2,2]}})", kData16), {"data_offsets"}},
      {"three_offsets", make_file(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,8,16]}})", kData16), {}},
      {"negative_offset", make_file(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[-1,16]}})", kData16), {}},
      {"end_before_begin", make_file(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[16,0]}})", kData16),
       {"tensor 'a'", "before its begin"}},
      {"offsets_beyond_file", make_file(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[8,24]}})", kData16),
       {"tensor 'a'", "beyond the data section"}},
      {"overlap",
       make_file(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
                 R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", kData16),
       {"'a'", "'b'", "overlaps"}},
      {"size_mismatch", make_file(R"({"a.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", kData16),
       {"tensor 'a.weight'", "[0, 12]", "12 bytes", "[2, 2]", "F32", "needs 16 bytes", "re-download"}},
      {"metadata_not_object", make_file(R"({"__metadata__":[1]})", ""), {"__metadata__"}},
      {"metadata_value_not_string", make_file(R"({"__metadata__":{"format":3}})", ""),
       {"__metadata__", "'format'", "must be a string"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const fs::path path = write_raw(std::string(c.name) + ".safetensors", c.bytes);
    EXPECT_THROW(load_everything(path), ModelError);
    expect_model_error(path, c.words);
  }
}

TEST_F(SafetensorsTest, AcceptsEdgeCasesTheFormatAllows) {
  // Zero-element tensors anywhere (even inside another tensor's range), holes, padding.
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
      R"("z":{"dtype":"I64","shape":[0,7],"data_offsets":[8,8]},)"
      R"("b":{"dtype":"U8","shape":[3],"data_offsets":[20,23]}}    )";
  SafetensorsReader reader(write_raw("edge.safetensors", make_file(header, std::string(24, '\1'))));
  EXPECT_EQ(reader.tensor("z").sizes(), (std::vector<int64_t>{0, 7}));
  EXPECT_TRUE(torch::equal(reader.tensor("b"), torch::full({3}, 1, torch::kByte)));
}

// splitmix64: a tiny PRNG whose output is identical on every platform.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return n == 0 ? 0 : next() % n; }

 private:
  uint64_t state_;
};

// Fragments that hit the interesting branches of the validator when spliced into a header.
const char* const kJsonFragments[] = {
    "-1", "0", "1e400", "2.5", "18446744073709551615", "18446744073709551616", "9223372036854775807",
    "\"F8_XYZ\"", "\"BF16\"", "\"BOOL\"", "\"I64\"", "[]", "{}", "null", "true", "[0,", "]", "}", "{",
    "\"__metadata__\"", "\"shape\"", "\"dtype\"", "\"data_offsets\"", "[0,0]", "[4294967296,4294967296]",
    "\"\\ud800\"", ",", ":", "\"\xff\xfe\"", "[[[[[[[[", "\"a\":{}",
};

// Well-formed JSON values that break the semantic checks when put in place of a field.
const char* const kJsonValues[] = {
    "-1", "0", "1", "3", "7", "16", "2.5", "1e30", "18446744073709551615", "9223372036854775807",
    "4294967296", "\"F8_XYZ\"", "\"BF16\"", "\"BOOL\"", "\"U8\"", "\"I64\"", "\"x\"", "[]", "{}",
    "null", "true", "[0]", "[0,0]", "[0,4]", "[8,4]", "[0,1,2]", "[-1,2]", "[4294967296,4294967296,0]",
    "[4294967296,4294967296]", "{\"a\":\"b\"}", "{\"a\":1}",
};

// Replaces one field, entry or the whole header of the valid header with a JSON value,
// or nudges one offset or dimension; the result is always valid JSON.
std::string mutate_structure(const std::string& valid, uint64_t header_len, SplitMix64& rng) {
  nlohmann::json header = nlohmann::json::parse(valid.substr(8, header_len));
  auto random_value = [&] {
    return nlohmann::json::parse(kJsonValues[rng.below(std::size(kJsonValues))]);
  };
  std::vector<std::string> keys;
  for (const auto& item : header.items()) keys.push_back(item.key());
  const std::string key = keys[rng.below(keys.size())];
  nlohmann::json& entry = header[key];
  const char* const fields[] = {"dtype", "shape", "data_offsets"};
  switch (rng.below(7)) {
    case 0:
      header = random_value();
      break;
    case 1:
      entry = random_value();
      break;
    case 2:  // a field of an entry (or a metadata value)
      if (entry.is_object() && !entry.empty()) {
        const std::string field =
            key == "__metadata__" ? entry.begin().key() : fields[rng.below(std::size(fields))];
        entry[field] = random_value();
      }
      break;
    case 3:  // drop a field
      if (entry.is_object()) entry.erase(fields[rng.below(std::size(fields))]);
      break;
    case 4:  // copy another entry (same bytes: overlapping tensors)
      entry = nlohmann::json(header[keys[rng.below(keys.size())]]);
      break;
    default: {  // nudge one number of data_offsets or shape
      nlohmann::json* target = nullptr;
      if (entry.contains("data_offsets")) target = &entry["data_offsets"];
      if (rng.below(2) && entry.contains("shape") && !entry["shape"].empty()) target = &entry["shape"];
      if (target != nullptr && target->is_array() && !target->empty()) {
        nlohmann::json& number = (*target)[rng.below(target->size())];
        if (number.is_number_integer()) {
          number = number.get<int64_t>() + static_cast<int64_t>(rng.below(33)) - 16;
        }
      }
      break;
    }
  }
  const std::string text = header.dump();
  std::string out(8, '\0');
  const uint64_t len = text.size();
  std::memcpy(out.data(), &len, 8);
  return out + text + valid.substr(8 + header_len);
}

std::string mutate(const std::string& valid, uint64_t header_len, SplitMix64& rng) {
  std::string bytes = valid;
  auto set_length = [&](uint64_t len) { std::memcpy(bytes.data(), &len, 8); };
  switch (rng.below(6)) {
    case 0: {  // flip bytes, mostly in the header where the checks are
      const uint64_t flips = 1 + rng.below(8);
      for (uint64_t i = 0; i < flips; ++i) {
        const uint64_t pos = rng.below(2) ? 8 + rng.below(header_len) : rng.below(bytes.size());
        bytes[pos] = static_cast<char>(bytes[pos] ^ static_cast<char>(1 + rng.below(255)));
      }
      break;
    }
    case 1:  // truncate
      bytes.resize(rng.below(bytes.size()));
      break;
    case 2: {  // overwrite the header length field
      const uint64_t choices[] = {rng.next(), header_len + rng.below(16) - 8, bytes.size(),
                                  bytes.size() - 8, 100'000'001, rng.below(bytes.size())};
      set_length(choices[rng.below(6)]);
      break;
    }
    case 3:  // valid JSON with a semantic fault
      return mutate_structure(valid, header_len, rng);
    default: {  // splice a JSON fragment into the header, keeping the length field consistent
      const uint64_t pos = 8 + rng.below(header_len);
      const uint64_t cut = rng.below(12);
      const std::string fragment = kJsonFragments[rng.below(std::size(kJsonFragments))];
      const uint64_t erase = std::min<uint64_t>(cut, 8 + header_len - pos);
      bytes.replace(pos, erase, fragment);
      if (rng.below(4) != 0) set_length(header_len - erase + fragment.size());
      break;
    }
  }
  return bytes;
}

TEST_F(SafetensorsTest, RandomMutationsLoadOrRaiseModelError) {
  const fs::path valid_path = dir_ / "valid.safetensors";
  save_safetensors(valid_path,
                   {{"a.weight", torch::randn({3, 4})},
                    {"b.bias", torch::randn({5}).to(torch::kHalf)},
                    {"c.ids", torch::arange(6, torch::kLong).reshape({2, 3})},
                    {"d.mask", torch::tensor({true, false})},
                    {"e.empty", torch::empty({0})},
                    {"f.scalar", torch::tensor(2.0, torch::kDouble)}},
                   {{"format", "pt"}, {"source", "mutation test"}});
  const std::string valid = read_raw(valid_path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, valid.data(), 8);

  SplitMix64 rng(0x5AFE7E45055EEDull);
  int loaded = 0;
  int rejected = 0;
  for (int iteration = 0; iteration < 3000; ++iteration) {
    const std::string bytes = mutate(valid, header_len, rng);
    // A fresh name each time: truncating and rewriting one file makes ext4 flush it on
    // close (auto_da_alloc), which takes seconds when the disk is busy.
    const fs::path path = dir_ / ("mutated-" + std::to_string(iteration) + ".safetensors");
    {
      std::ofstream out(path, std::ios::binary);
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    }
    try {
      load_everything(path);
      ++loaded;
    } catch (const ModelError&) {
      ++rejected;
    } catch (const std::exception& e) {
      FAIL() << "iteration " << iteration << ": expected ModelError, got another exception: " << e.what();
    }
    fs::remove(path);
  }
  // Both outcomes must occur, or the mutations are not exercising the validator.
  EXPECT_GT(loaded, 20);
  EXPECT_GT(rejected, 1000);
}

}  // namespace
}  // namespace enstack::model
