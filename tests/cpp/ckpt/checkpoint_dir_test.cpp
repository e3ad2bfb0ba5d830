// checkpoint_dir: the crash-consistent writer (manifest last, rename into place), the
// manifest checks of verify(), listing by manifest step, latest_valid's fallback past
// a damaged checkpoint, pruning, copying, and the manifest checksum (FNV-1a 64,
// checked against the published test vectors).
#include "enstack/ckpt/checkpoint_dir.h"

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "enstack/util/error.h"

namespace enstack::ckpt {
namespace {

namespace fs = std::filesystem;

class CheckpointDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    root_ = fs::temp_directory_path() / (std::string("enstack_ckdir_") + test->name() + "_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  fs::path write(const std::string& name, int64_t step, float value = 1.0f) {
    CheckpointWriter w(root_ / name);
    w.add_tensors("model.safetensors", {{"w", torch::full({3, 2}, value)}});
    w.add_json("state.json", {{"step", step}});
    return w.commit(step, "full", {{"note", name}});
  }
  static void flip_byte(const fs::path& file, std::streamoff at) {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(at);
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x5a);
    f.seekp(at);
    f.write(&c, 1);
  }
  fs::path root_;
};

TEST(FileChecksumTest, IsFnv1a64OfTheBytes) {
  const fs::path dir = fs::temp_directory_path() / ("enstack_fnv_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  auto checksum_of = [&](const std::string& bytes) {
    std::ofstream(dir / "f", std::ios::binary) << bytes;
    return file_checksum(dir / "f");
  };
  // FNV-1a 64-bit test vectors (Fowler/Noll/Vo reference implementation).
  EXPECT_NE(checksum_of("").find("cbf29ce484222325"), std::string::npos);
  EXPECT_NE(checksum_of("a").find("af63dc4c8601ec8c"), std::string::npos);
  EXPECT_NE(checksum_of("foobar").find("85944171f73967e8"), std::string::npos);
  fs::remove_all(dir);
}

TEST_F(CheckpointDirTest, ACommittedCheckpointVerifiesAndLeavesNoTemporaryDirectory) {
  const fs::path dir = write("step-1", 1);
  const Manifest m = verify(dir);
  EXPECT_EQ(m.step, 1);
  EXPECT_EQ(m.kind, "full");
  EXPECT_EQ(m.extra.value("note", ""), "step-1");
  ASSERT_EQ(m.files.size(), 2u);
  for (const auto& f : m.files) EXPECT_EQ(f.size, fs::file_size(dir / f.name)) << f.name;
  int entries = 0;
  for (const auto& e : fs::directory_iterator(root_)) {
    ++entries;
    EXPECT_EQ(e.path().filename(), "step-1");
  }
  EXPECT_EQ(entries, 1);
}

TEST_F(CheckpointDirTest, AWriterThatIsNotCommittedLeavesNothingBehind) {
  {
    CheckpointWriter w(root_ / "step-1");
    w.add_json("state.json", {{"step", 1}});
    EXPECT_TRUE(fs::exists(w.temp_dir()));
  }
  EXPECT_TRUE(fs::is_empty(root_));
}

TEST_F(CheckpointDirTest, VerifyRefusesAChangedByteAMissingFileAndAMissingManifest) {
  const fs::path a = write("a", 1), b = write("b", 2), c = write("c", 3);
  flip_byte(a / "model.safetensors", static_cast<std::streamoff>(fs::file_size(a / "model.safetensors") - 1));
  EXPECT_THROW(verify(a), CheckpointError);
  fs::remove(b / "state.json");
  EXPECT_THROW(verify(b), CheckpointError);
  fs::remove(c / kManifestName);
  EXPECT_THROW(verify(c), CheckpointError);
}

TEST_F(CheckpointDirTest, CommittingOverACheckpointReplacesIt) {
  write("last", 1, 1.0f);
  const fs::path dir = write("last", 2, 2.0f);
  EXPECT_EQ(verify(dir).step, 2);
  for (const auto& e : fs::directory_iterator(root_)) EXPECT_EQ(e.path().filename(), "last");
}

TEST_F(CheckpointDirTest, ListsByManifestStepAndFallsBackPastADamagedNewest) {
  write("step-b", 10);
  write("step-a", 20);  // names sort the other way: the manifest step orders
  const auto listed = list_by_step(root_, "step-");
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_EQ(listed[0].first, 10);
  EXPECT_EQ(listed[1].first, 20);
  EXPECT_EQ(latest_valid({root_}, "step-"), root_ / "step-a");
  flip_byte(root_ / "step-a" / "state.json", 0);
  EXPECT_EQ(latest_valid({root_}, "step-"), root_ / "step-b");
}

TEST_F(CheckpointDirTest, PruneKeepsTheNewestAndTheProtected) {
  for (int step = 1; step <= 5; ++step) write("step-" + std::to_string(step), step);
  prune(root_, "step-", 2, {root_ / "step-1"});
  for (int step = 1; step <= 5; ++step) {
    const bool kept = step == 1 || step >= 4;
    EXPECT_EQ(fs::exists(root_ / ("step-" + std::to_string(step))), kept) << step;
  }
}

TEST_F(CheckpointDirTest, ACopyVerifiesAndHasTheSameChecksums) {
  const fs::path source = write("step-7", 7);
  const Manifest copy = copy_checkpoint(source, root_ / "mirror" / "step-7");
  const Manifest original = verify(source);
  ASSERT_EQ(copy.files.size(), original.files.size());
  for (std::size_t i = 0; i < copy.files.size(); ++i) EXPECT_EQ(copy.files[i].checksum, original.files[i].checksum);
  EXPECT_EQ(verify(root_ / "mirror" / "step-7").step, 7);
}

}  // namespace
}  // namespace enstack::ckpt
