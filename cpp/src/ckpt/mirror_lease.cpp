// The mirror lease (see enstack/ckpt/mirror_lease.h).
#include "enstack/ckpt/mirror_lease.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>

#include "enstack/util/error.h"
#include "enstack/util/files.h"
#include "enstack/util/logging.h"
#include "enstack/util/owner.h"

namespace enstack::ckpt {
namespace fs = std::filesystem;
namespace {

// The lease as the file holds it; null when there is none or it is unreadable
// (a torn write cannot happen: it is written atomically, so unreadable means foreign).
nlohmann::json read_lease(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return nullptr;
  try {
    auto j = nlohmann::json::parse(util::read_file<CheckpointError>(path));
    return j.is_object() && j.contains("token") ? j : nlohmann::json(nullptr);
  } catch (const std::exception&) {
    return nullptr;
  }
}

std::string new_token() {
  const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
  return util::str_cat(util::describe_this_process(""), "/", now, "/", util::unix_seconds());
}

}  // namespace

MirrorLease::MirrorLease(fs::path mirror_dir, double timeout_seconds, bool take_over)
    : path_(std::move(mirror_dir) / kLeaseName), timeout_(timeout_seconds) {
  ENSTACK_CHECK(timeout_ > 0, ConfigError, "run.mirror_lease_seconds must be > 0, not ", timeout_, ".");
  token_ = new_token();
  std::error_code ec;
  fs::create_directories(path_.parent_path(), ec);
  const auto existing = read_lease(path_);
  if (!existing.is_null()) {
    const double age = util::unix_seconds() - existing.value("heartbeat", 0.0);
    const std::string owner = util::describe_owner(existing.value("owner", nlohmann::json()));
    // A process of this machine that is gone (killed, a restarted kernel) holds nothing.
    const bool gone = util::owner_is_gone(existing.value("owner", nlohmann::json()));
    if (age < timeout_ && !take_over && !gone) {
      throw CheckpointError(util::str_cat(
          "the mirror ", path_.parent_path().string(), " is leased by ", owner, ", whose last heartbeat was ",
          std::lround(std::max(0.0, age)), " s ago: another runtime is training into it. Two runtimes must not "
          "write one mirror. Stop the other runtime, or wait until its lease is ", timeout_, " s old (a dead "
          "runtime's lease expires by itself), or take it over now if you know it is dead: "
          "fit(take_over_mirror=True) / `enstack train --take-over-mirror`."));
    }
    ENSTACK_LOG_WARN("taking over the mirror lease of ", owner, " (",
                     gone ? "its process is gone" : take_over ? "asked to" : "stale", ", last heartbeat ",
                     std::lround(age), " s ago)");
  }
  try {
    ENSTACK_CHECK(renew(), CheckpointError, "the mirror lease ", path_.string(),
                  " was taken by another runtime at the same moment; try again.");
  } catch (const CheckpointError&) {
    throw;
  } catch (const std::exception& e) {
    // An unwritable mirror never stops training: the saver reports its copy errors, and
    // the lease is written as soon as the mirror takes writes again.
    ENSTACK_LOG_WARN("could not write the mirror lease ", path_.string(), ": ", e.what(), " (retried while training)");
  }
  held_.store(true);
  thread_ = std::thread([this] { renew_loop(); });
}

MirrorLease::~MirrorLease() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (!held_.load()) return;
  const auto current = read_lease(path_);
  std::error_code ec;
  if (!current.is_null() && current.value("token", std::string()) == token_) fs::remove(path_, ec);
}

std::string MirrorLease::lost_reason() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return lost_reason_;
}

bool MirrorLease::renew() {
  const auto current = read_lease(path_);
  // A missing lease is written again; another owner's token means it was taken over.
  if (held_.load() && !current.is_null() && current.value("token", std::string()) != token_) {
    std::lock_guard<std::mutex> lock(mutex_);
    lost_reason_ = "taken over by " + util::describe_owner(current.value("owner", nlohmann::json()));
    return false;
  }
  const nlohmann::json lease = {{"owner", util::this_process("training")}, {"token", token_},
                                {"heartbeat", util::unix_seconds()}, {"timeout_seconds", timeout_}};
  util::write_file_atomic(path_, lease.dump(2));
  const auto back = read_lease(path_);  // two takers at once: the last writer wins, the other sees it here
  return !back.is_null() && back.value("token", std::string()) == token_;
}

void MirrorLease::renew_loop() {
  const auto period = std::chrono::duration<double>(std::max(0.05, timeout_ / 4));
  std::unique_lock<std::mutex> lock(mutex_);
  while (!wake_.wait_for(lock, period, [&] { return stopping_; })) {
    lock.unlock();
    bool ok = true;
    try {
      ok = renew();
    } catch (const std::exception& e) {
      // Drive hiccups: the next renewal tries again; the lease expires only after timeout.
      ENSTACK_LOG_WARN("could not renew the mirror lease ", path_.string(), ": ", e.what());
    }
    lock.lock();
    if (!ok) {
      held_.store(false);
      ENSTACK_LOG_ERROR("the mirror lease ", path_.string(), " is lost (", lost_reason_, "); this run stops "
                        "mirroring its checkpoints. Its local checkpoints go on.");
      return;
    }
  }
}

}  // namespace enstack::ckpt
