// TokenStore: round trips at both id widths, fingerprint identity, and
// rejection of truncated, corrupted and foreign files. Also the FNV-1a hash
// against its published test vectors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "enstack/data/token_store.h"
#include "enstack/util/error.h"
#include "enstack/util/hash.h"

namespace enstack::data {
namespace {

namespace fs = std::filesystem;

class TokenStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("enstack_token_store_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path write_sample(const std::string& name, int64_t vocab = 1000, std::string identity = "bpe-abc") {
    const auto path = dir_ / name;
    TokenStore::write(path, ids_, labels_, 1, vocab, 16, identity);
    return path;
  }

  std::string read(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
  }
  void write_bytes(const fs::path& p, const std::string& bytes) {
    std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
  }

  fs::path dir_;
  std::vector<std::vector<int32_t>> ids_ = {{0, 5, 999, 2}, {}, {0, 2}, {0, 17, 18, 19, 20, 2}};
  std::vector<int32_t> labels_ = {3, 0, 4, 1};
};

TEST(Fnv1a64, MatchesPublishedVectors) {
  EXPECT_EQ(util::Fnv1a64().update("").digest(), 0xcbf29ce484222325ULL);
  EXPECT_EQ(util::Fnv1a64().update("a").digest(), 0xaf63dc4c8601ec8cULL);
  EXPECT_EQ(util::Fnv1a64().update("foobar").digest(), 0x85944171f73967e8ULL);
  // Streaming in pieces equals one update.
  EXPECT_EQ(util::Fnv1a64().update("foo").update("bar").digest(), 0x85944171f73967e8ULL);
  EXPECT_EQ(util::Fnv1a64().update("foobar").hex(), "85944171f73967e8");
}

TEST_F(TokenStoreTest, RoundTripsWithSixteenBitIds) {
  const auto path = write_sample("a.tokens");
  auto store = TokenStore::open(path, /*verify_data=*/true);
  ASSERT_EQ(store->size(), 4);
  EXPECT_EQ(store->info().id_width, 2u);
  EXPECT_EQ(store->info().total_tokens, 12u);
  EXPECT_EQ(store->info().max_length, 16u);
  EXPECT_EQ(store->info().tokenizer_identity, "bpe-abc");
  for (int64_t i = 0; i < 4; ++i) {
    EXPECT_EQ(store->ids(i), ids_[i]);
    EXPECT_EQ(store->labels(i)[0], labels_[i]);
  }
  EXPECT_EQ(store->lengths(), (std::vector<int64_t>{4, 0, 2, 6}));
  EXPECT_THROW(store->ids(4), DataError);
  EXPECT_THROW(store->length(-1), DataError);
}

TEST_F(TokenStoreTest, LargeVocabulariesUseThirtyTwoBitIds) {
  ids_[0][2] = 70000;
  const auto path = write_sample("wide.tokens", 80000);
  auto store = TokenStore::open(path, true);
  EXPECT_EQ(store->info().id_width, 4u);
  EXPECT_EQ(store->ids(0), ids_[0]);
}

TEST_F(TokenStoreTest, MultiLabelRows) {
  std::vector<int32_t> multi = {1, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1};
  const auto path = dir_ / "multi.tokens";
  TokenStore::write(path, ids_, multi, 3, 1000, 16, "id");
  auto store = TokenStore::open(path);
  ASSERT_EQ(store->labels(2).size(), 3u);
  EXPECT_EQ(store->labels(2)[0], 1);
  EXPECT_EQ(store->labels(3)[2], 1);
  EXPECT_THROW(TokenStore::write(path, ids_, multi, 2, 1000, 16, "id"), DataError);
}

TEST_F(TokenStoreTest, FingerprintIdentifiesContentTokenizerAndMaxLength) {
  const auto base = TokenStore::open(write_sample("a.tokens"))->info().fingerprint;
  EXPECT_EQ(TokenStore::open(write_sample("b.tokens"))->info().fingerprint, base);
  EXPECT_NE(TokenStore::open(write_sample("c.tokens", 1000, "bpe-other"))->info().fingerprint, base);
  labels_[1] = 2;
  EXPECT_NE(TokenStore::open(write_sample("d.tokens"))->info().fingerprint, base);
  labels_[1] = 0;
  ids_[3][2] = 21;
  EXPECT_NE(TokenStore::open(write_sample("e.tokens"))->info().fingerprint, base);
  ids_[3][2] = 18;
  TokenStore::write(dir_ / "f.tokens", ids_, labels_, 1, 1000, 32, "bpe-abc");
  EXPECT_NE(TokenStore::open(dir_ / "f.tokens")->info().fingerprint, base);
}

TEST_F(TokenStoreTest, IdsOutsideTheVocabularyAreRefusedAndNothingIsWritten) {
  ids_[0][1] = 1000;
  EXPECT_THROW(write_sample("bad.tokens"), DataError);
  EXPECT_FALSE(fs::exists(dir_ / "bad.tokens"));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 0);
}

TEST_F(TokenStoreTest, EveryTruncationIsRejected) {
  const auto path = write_sample("a.tokens");
  const std::string bytes = read(path);
  for (std::size_t cut = 0; cut < bytes.size(); ++cut) {
    write_bytes(dir_ / "cut.tokens", bytes.substr(0, cut));
    EXPECT_THROW(TokenStore::open(dir_ / "cut.tokens"), DataError) << "cut at " << cut;
  }
  write_bytes(dir_ / "long.tokens", bytes + "x");
  EXPECT_THROW(TokenStore::open(dir_ / "long.tokens"), DataError);
}

TEST_F(TokenStoreTest, EveryHeaderByteFlipIsRejected) {
  const auto path = write_sample("a.tokens");
  const std::string bytes = read(path);
  for (std::size_t i = 0; i < 256; ++i) {
    std::string flipped = bytes;
    flipped[i] = static_cast<char>(flipped[i] ^ 0x5a);
    write_bytes(dir_ / "flip.tokens", flipped);
    EXPECT_THROW(TokenStore::open(dir_ / "flip.tokens"), DataError) << "byte " << i;
  }
}

TEST_F(TokenStoreTest, DataCorruptionIsCaughtByVerification) {
  const auto path = write_sample("a.tokens");
  std::string bytes = read(path);
  bytes[bytes.size() - 12] ^= 0x01;  // inside the labels
  write_bytes(dir_ / "data.tokens", bytes);
  EXPECT_NO_THROW(TokenStore::open(dir_ / "data.tokens", /*verify_data=*/false));
  try {
    TokenStore::open(dir_ / "data.tokens", true);
    FAIL() << "corruption not detected";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("data checksum"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("enstack data prepare"), std::string::npos) << e.what();
  }
}

TEST_F(TokenStoreTest, MissingAndForeignFilesAreDataErrors) {
  EXPECT_THROW(TokenStore::open(dir_ / "absent.tokens"), DataError);
  write_bytes(dir_ / "foreign.tokens", std::string(400, 'x'));
  EXPECT_THROW(TokenStore::open(dir_ / "foreign.tokens"), DataError);
}

}  // namespace
}  // namespace enstack::data
