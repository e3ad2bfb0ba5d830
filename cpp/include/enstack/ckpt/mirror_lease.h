// MirrorLease: the claim of one training process on a mirror directory (a Drive
// folder that runtimes on other machines may write too), so that two runtimes
// never write one mirror. A file lock cannot do this across machines, so the
// lease is a file, <mirror>/.lease.json: the owner (host, pid, start, a random
// token) and a heartbeat (unix seconds) that a background thread renews every
// quarter of the timeout. A fresh lease of another owner is refused; a stale one
// (no heartbeat for `timeout_seconds`) is taken over, and so is any lease when
// the user forces it. An owner whose lease was taken over notices at its next
// renewal and stops mirroring (held() turns false); its local checkpoints go on.
#pragma once

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>

namespace enstack::ckpt {

inline constexpr const char* kLeaseName = ".lease.json";

class MirrorLease {
 public:
  // Takes the lease on `mirror_dir` (created if missing), or throws CheckpointError
  // naming the owner, the age of its heartbeat and what to do.
  MirrorLease(std::filesystem::path mirror_dir, double timeout_seconds, bool take_over);
  ~MirrorLease();  // stops renewing and gives the lease up if it is still ours
  MirrorLease(const MirrorLease&) = delete;
  MirrorLease& operator=(const MirrorLease&) = delete;

  bool held() const { return held_.load(); }
  // Why the lease is no longer held ("" while it is).
  std::string lost_reason() const;
  const std::filesystem::path& path() const { return path_; }

 private:
  void renew_loop();
  bool renew();  // false when another owner holds the file now

  std::filesystem::path path_;
  double timeout_;
  std::string token_;
  std::atomic<bool> held_{false};
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::string lost_reason_;
  std::thread thread_;
};

}  // namespace enstack::ckpt
