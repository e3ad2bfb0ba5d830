// Tests of the file helpers: atomic writes (contents, overwrite, no leftover
// temporaries, failures leave the old file), memory mappings and read_file errors.
#include "enstack/util/files.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "enstack/util/error.h"

namespace enstack::util {
namespace {

namespace fs = std::filesystem;

class FilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           (std::string("enstack_files_") + test->name() + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ignored;
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add, ignored);
    fs::remove_all(dir_, ignored);
  }

  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_)) names.push_back(entry.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }

  fs::path dir_;
};

TEST_F(FilesTest, AtomicWriteCreatesTheFile) {
  const fs::path path = dir_ / "a.json";
  write_file_atomic(path, std::string("{\"x\": 1}"));
  EXPECT_EQ(read_file<ConfigError>(path), "{\"x\": 1}");
}

TEST_F(FilesTest, AtomicWriteOfBinaryBytes) {
  const std::string text("bin\0ary\xff", 8);
  const fs::path path = dir_ / "b.bin";
  write_file_atomic(path, std::as_bytes(std::span<const char>(text.data(), text.size())));
  EXPECT_EQ(read_file<DataError>(path), text);
  write_file_atomic(path, std::string());
  EXPECT_EQ(read_file<DataError>(path), "");
}

TEST_F(FilesTest, AtomicWriteReplacesAndLeavesNoTemporaries) {
  const fs::path path = dir_ / "state.json";
  write_file_atomic(path, std::string("old contents that are longer"));
  for (int i = 0; i < 5; ++i) write_file_atomic(path, "new " + std::to_string(i));
  EXPECT_EQ(read_file<CheckpointError>(path), "new 4");
  EXPECT_EQ(entries(), std::vector<std::string>{"state.json"});
}

TEST_F(FilesTest, AtomicWriteIntoMissingDirectoryThrows) {
  const fs::path path = dir_ / "missing" / "f.txt";
  try {
    write_file_atomic(path, std::string("x"));
    FAIL() << "no exception";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(path.string()), std::string::npos) << message;
    EXPECT_NE(message.find("No such file or directory"), std::string::npos) << message;
  }
  EXPECT_EQ(entries(), std::vector<std::string>{});
}

TEST_F(FilesTest, FailedRenameRemovesTheTemporary) {
  // A non-empty directory at the target path makes the rename fail after the data was written.
  fs::create_directories(dir_ / "target" / "child");
  EXPECT_THROW(write_file_atomic(dir_ / "target", std::string("x")), Error);
  EXPECT_EQ(entries(), std::vector<std::string>{"target"});
  EXPECT_TRUE(fs::is_directory(dir_ / "target" / "child"));
}

TEST_F(FilesTest, FailedWriteLeavesTheOldFile) {
  // root bypasses directory permissions, so a read-only directory cannot make the write fail.
  if (::geteuid() == 0) GTEST_SKIP() << "running as root: permissions are not enforced";
  const fs::path path = dir_ / "keep.txt";
  write_file_atomic(path, std::string("old"));
  fs::permissions(dir_, fs::perms::owner_read | fs::perms::owner_exec);
  EXPECT_THROW(write_file_atomic(path, std::string("new")), Error);
  fs::permissions(dir_, fs::perms::owner_all);
  EXPECT_EQ(read_file<ModelError>(path), "old");
  EXPECT_EQ(entries(), std::vector<std::string>{"keep.txt"});
}

TEST_F(FilesTest, MappedFileReadsTheBytes) {
  const std::string text("mapped\0bytes", 12);
  const fs::path path = dir_ / "m.bin";
  write_file_atomic(path, text);
  MappedFile mapped(path);
  EXPECT_EQ(mapped.path(), path);
  ASSERT_EQ(mapped.size(), text.size());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(mapped.data()), mapped.size()), text);
}

TEST_F(FilesTest, MappedEmptyFileHasSizeZero) {
  const fs::path path = dir_ / "empty.bin";
  write_file_atomic(path, std::string());
  MappedFile mapped(path);
  EXPECT_EQ(mapped.size(), 0u);
  EXPECT_EQ(mapped.data(), nullptr);
}

TEST_F(FilesTest, MappedFileErrorsNameThePath) {
  const fs::path path = dir_ / "absent.bin";
  try {
    MappedFile mapped(path);
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
  }
  EXPECT_THROW(MappedFile{dir_}, Error);  // a directory is not a regular file
}

TEST_F(FilesTest, ReadFileOfMissingPathThrowsTheRequestedType) {
  const fs::path path = dir_ / "config.json";
  try {
    (void)read_file<ModelError>(path);
    FAIL() << "no exception";
  } catch (const ModelError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(path.string()), std::string::npos) << message;
    EXPECT_NE(message.find("No such file or directory"), std::string::npos) << message;
  }
  EXPECT_THROW((void)read_file<ConfigError>(path), ConfigError);
  EXPECT_THROW((void)read_file<DataError>(dir_), DataError);  // a directory
}

}  // namespace
}  // namespace enstack::util
