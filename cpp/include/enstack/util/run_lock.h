// RunLock: the exclusive lock on a run directory (<output_dir>/.lock) held while
// a process trains or prepares data there, so two processes (two notebook tabs,
// two `enstack train`) never write one run. It is an flock(2) on the file: the
// kernel releases it when the process dies in any way, so a SIGKILL never leaves
// a stale lock. Within one process the lock is shared (re-entrant by path):
// prepare() inside fit() takes it again without conflict; a forked child shares
// its parent's lock, as flock locks belong to the open file that fork shares.
#pragma once

#include <filesystem>
#include <string>

namespace enstack::util {

inline constexpr const char* kRunLockName = ".lock";

class RunLock {
 public:
  // Takes the lock on `dir` (created if missing) or throws CheckpointError naming the
  // process that holds it (host, pid, since, what it does) and what to do.
  RunLock(const std::filesystem::path& dir, const std::string& purpose);
  ~RunLock();
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace enstack::util
