// The logging facade: levels, the forwarding sink (what the Python bridge
// uses), records from several threads, and the run's log file.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "enstack/util/error.h"
#include "enstack/util/logging.h"

namespace enstack::util {
namespace {

struct Captured {
  std::mutex mutex;
  std::vector<std::pair<LogLevel, std::string>> records;
};

class LoggingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    set_log_level(LogLevel::kInfo);
    set_log_forwarder([this](LogLevel level, std::string_view message) {
      std::lock_guard<std::mutex> lock(captured_.mutex);
      captured_.records.emplace_back(level, std::string(message));
    });
  }
  void TearDown() override {
    set_log_forwarder({});
    set_log_file("");
    set_log_level(LogLevel::kInfo);
  }
  Captured captured_;
};

TEST_F(LoggingTest, ForwarderReceivesRecordsAtOrAboveTheLevel) {
  ENSTACK_LOG_DEBUG("hidden ", 1);
  ENSTACK_LOG_INFO("loaded ", 3, " shards");
  ENSTACK_LOG_WARN("slow mirror");
  ASSERT_EQ(captured_.records.size(), 2u);
  EXPECT_EQ(captured_.records[0].first, LogLevel::kInfo);
  EXPECT_EQ(captured_.records[0].second, "loaded 3 shards");
  EXPECT_EQ(captured_.records[1].first, LogLevel::kWarn);
  set_log_level(LogLevel::kDebug);
  ENSTACK_LOG_DEBUG("now visible");
  EXPECT_EQ(captured_.records.back().second, "now visible");
}

TEST_F(LoggingTest, RecordsFromManyThreadsAllArrive) {
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t] {
      for (int i = 0; i < 50; ++i) ENSTACK_LOG_INFO("thread ", t, " record ", i);
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(captured_.records.size(), 200u);
}

TEST_F(LoggingTest, FileSinkKeepsEveryRecord) {
  const auto path = std::filesystem::temp_directory_path() /
                    ("enstack_logging_test_" + std::to_string(::getpid()) + ".log");
  std::filesystem::remove(path);
  set_log_file(path.string());
  ENSTACK_LOG_INFO("to the file");
  set_log_file("");
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_NE(text.str().find("to the file"), std::string::npos) << text.str();
  std::filesystem::remove(path);
}

TEST_F(LoggingTest, UnopenableFileIsAnEnstackError) {
  // A path below a regular file cannot be created, even by root.
  const auto blocker = std::filesystem::temp_directory_path() /
                       ("enstack_logging_blocker_" + std::to_string(::getpid()));
  std::ofstream(blocker) << "not a directory";
  EXPECT_THROW(set_log_file((blocker / "logs" / "train.log").string()), Error);
  std::filesystem::remove(blocker);
}

TEST(LogLevel, ParsesNamesAndRejectsUnknownOnes) {
  EXPECT_EQ(parse_log_level("WARNING"), LogLevel::kWarn);
  EXPECT_EQ(parse_log_level("debug"), LogLevel::kDebug);
  EXPECT_EQ(log_level_name(parse_log_level("error")), "error");
  EXPECT_THROW(parse_log_level("loud"), ConfigError);
}

}  // namespace
}  // namespace enstack::util
