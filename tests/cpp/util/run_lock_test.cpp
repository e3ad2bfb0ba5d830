// Tests of the run-directory lock: another process is refused with a message that
// names the holder, the lock is re-entrant within a process, and it is released on
// release and on the holder's death (kernel flock semantics).
#include "enstack/util/run_lock.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "enstack/util/error.h"

namespace enstack::util {
namespace {

namespace fs = std::filesystem;

fs::path fresh_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / (name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  return dir;
}

// A process forked while the lock is held shares it (flock belongs to the open file,
// which fork shares), so the holder is always the child here and the parent asks.
TEST(RunLockTest, AnotherProcessIsRefusedWithTheHolderNamed) {
  const fs::path dir = fresh_dir("enstack_lock_refused");
  int ready[2], done[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(done), 0);
  const pid_t holder = ::fork();
  if (holder == 0) {
    ::close(done[1]);  // else its own copy keeps `done` open and the read below never ends
    RunLock lock(dir, "training");
    char byte = 1;
    if (::write(ready[1], &byte, 1) != 1) ::_exit(2);
    if (::read(done[0], &byte, 1) < 0) ::_exit(3);  // held until the parent closes `done`
    ::_exit(0);
  }
  char byte = 0;
  ASSERT_EQ(::read(ready[0], &byte, 1), 1);
  try {
    RunLock second(dir, "preparing data");
    ADD_FAILURE() << "a second process took a held run lock";
  } catch (const CheckpointError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("in use by pid " + std::to_string(holder)), std::string::npos) << what;
    EXPECT_NE(what.find("(training, since"), std::string::npos) << what;
  }
  ::close(done[1]);
  ::waitpid(holder, nullptr, 0);
  {
    RunLock first(dir, "training");
    RunLock again(dir, "preparing data");  // the same process: shared, not a conflict
  }
  EXPECT_NO_THROW(RunLock(dir, "released"));
  ::close(ready[0]);
  ::close(ready[1]);
  ::close(done[0]);
  fs::remove_all(dir);
}

TEST(RunLockTest, TheDeathOfTheHolderReleasesIt) {
  const fs::path dir = fresh_dir("enstack_lock_death");
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t holder = ::fork();
  if (holder == 0) {
    RunLock lock(dir, "training");
    const char byte = 1;
    if (::write(ready[1], &byte, 1) != 1) ::_exit(2);
    ::pause();  // held until killed
    ::_exit(0);
  }
  char byte = 0;
  ASSERT_EQ(::read(ready[0], &byte, 1), 1);  // the holder has the lock
  EXPECT_THROW(RunLock(dir, "second"), CheckpointError);
  ::kill(holder, SIGKILL);
  ::waitpid(holder, nullptr, 0);
  EXPECT_NO_THROW(RunLock(dir, "after the holder died"));
  ::close(ready[0]);
  ::close(ready[1]);
  fs::remove_all(dir);
}

TEST(RunLockTest, AFileWhereTheDirectoryShouldBeIsAConfigError) {
  const fs::path file = fresh_dir("enstack_lock_file");
  { std::ofstream(file) << "not a directory"; }
  EXPECT_THROW(RunLock(file / "run", "training"), ConfigError);
  fs::remove(file);
}

}  // namespace
}  // namespace enstack::util
