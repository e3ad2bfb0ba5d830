// Tests of the mirror lease: a fresh lease of another owner is refused, a stale one
// is taken over, a forced take-over works, the holder renews its heartbeat, notices
// when its lease is taken over, and gives the lease up when done.
#include "enstack/ckpt/mirror_lease.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "enstack/util/error.h"
#include "enstack/util/files.h"
#include "enstack/util/owner.h"

namespace enstack::ckpt {
namespace {

namespace fs = std::filesystem;

class MirrorLeaseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / (std::string("enstack_lease_") + test->name() + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  void write_foreign_lease(double heartbeat_age) {
    const nlohmann::json lease = {{"owner", {{"host", "other-runtime"}, {"pid", 4242}, {"started", 0.0},
                                             {"purpose", "training"}}},
                                  {"token", "someone-else"}, {"heartbeat", util::unix_seconds() - heartbeat_age}};
    util::write_file_atomic(dir_ / kLeaseName, lease.dump());
  }
  std::string token_on_disk() {
    return nlohmann::json::parse(util::read_file<CheckpointError>(dir_ / kLeaseName)).value("token", std::string());
  }
  fs::path dir_;
};

TEST_F(MirrorLeaseTest, AFreshLeaseOfAnotherOwnerIsRefusedNamingIt) {
  write_foreign_lease(1.0);
  try {
    MirrorLease lease(dir_, 60.0, false);
    FAIL() << "a fresh foreign lease was taken";
  } catch (const CheckpointError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("other-runtime"), std::string::npos) << what;
    EXPECT_NE(what.find("pid 4242"), std::string::npos) << what;
    EXPECT_NE(what.find("take-over-mirror"), std::string::npos) << what;
  }
  EXPECT_EQ(token_on_disk(), "someone-else");  // untouched
}

TEST_F(MirrorLeaseTest, AStaleLeaseIsTakenOverAndGivenUpWhenDone) {
  write_foreign_lease(120.0);
  {
    MirrorLease lease(dir_, 60.0, false);
    EXPECT_TRUE(lease.held());
    EXPECT_NE(token_on_disk(), "someone-else");
  }
  EXPECT_FALSE(fs::exists(dir_ / kLeaseName));
}

TEST_F(MirrorLeaseTest, AFreshLeaseOfAProcessOfThisMachineThatIsGoneIsTakenOver) {
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ::waitpid(child, nullptr, 0);  // a pid of this machine that no longer runs (a SIGKILLed trainer)
  auto owner = util::this_process("training");
  owner["pid"] = static_cast<int64_t>(child);
  const nlohmann::json lease = {{"owner", owner}, {"token", "killed-run"}, {"heartbeat", util::unix_seconds()}};
  util::write_file_atomic(dir_ / kLeaseName, lease.dump());
  MirrorLease taken(dir_, 60.0, false);
  EXPECT_TRUE(taken.held());
  EXPECT_NE(token_on_disk(), "killed-run");
}

TEST_F(MirrorLeaseTest, AForcedTakeOverTakesAFreshLease) {
  write_foreign_lease(0.0);
  MirrorLease lease(dir_, 60.0, true);
  EXPECT_TRUE(lease.held());
  EXPECT_NE(token_on_disk(), "someone-else");
}

TEST_F(MirrorLeaseTest, TheHolderRenewsAndNoticesATakeOver) {
  MirrorLease lease(dir_, 0.4, false);
  const auto first = nlohmann::json::parse(util::read_file<CheckpointError>(dir_ / kLeaseName))["heartbeat"];
  // Renewals are what this waits for: the heartbeat on disk moving (bounded, not a fixed sleep).
  bool renewed = false;
  for (int i = 0; i < 400 && !renewed; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    const auto now = nlohmann::json::parse(util::read_file<CheckpointError>(dir_ / kLeaseName))["heartbeat"];
    renewed = now.get<double>() > first.get<double>();
  }
  EXPECT_TRUE(renewed);
  // Another runtime takes it over (forced). Written again while the holder still holds it: a
  // renewal that read just before this write overwrites it, as two writers at once would.
  for (int i = 0; i < 400 && lease.held(); ++i) {
    if (token_on_disk() != "someone-else") write_foreign_lease(0.0);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_FALSE(lease.held());
  EXPECT_NE(lease.lost_reason().find("other-runtime"), std::string::npos);
  EXPECT_EQ(token_on_disk(), "someone-else");  // the loser neither rewrites nor deletes it
}

}  // namespace
}  // namespace enstack::ckpt
