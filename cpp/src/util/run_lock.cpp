// The run-directory lock (see enstack/util/run_lock.h).
#include "enstack/util/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>

#include "enstack/util/error.h"
#include "enstack/util/owner.h"

namespace enstack::util {
namespace {

// The locks this process holds: path -> (fd, users). flock conflicts between two
// open files of one process too, so the process opens each lock file once.
struct Held {
  int fd = -1;
  int users = 0;
};
std::mutex g_mutex;
std::map<std::string, Held> g_held;

std::string read_owner(int fd) {
  char buffer[1024];
  const ssize_t n = ::pread(fd, buffer, sizeof(buffer) - 1, 0);
  if (n <= 0) return "another process (it left no description)";
  std::string text(buffer, static_cast<std::size_t>(n));
  while (!text.empty() && (text.back() == '\n' || text.back() == '\0')) text.pop_back();
  return text;
}

}  // namespace

RunLock::RunLock(const std::filesystem::path& dir, const std::string& purpose) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  path_ = std::filesystem::absolute(dir / kRunLockName).lexically_normal();
  std::lock_guard<std::mutex> guard(g_mutex);
  auto it = g_held.find(path_.string());
  if (it != g_held.end()) {
    ++it->second.users;
    return;
  }
  const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  ENSTACK_CHECK(fd >= 0, ConfigError, "cannot open the run lock ", path_.string(), ": ", std::strerror(errno),
                ". Check that run.output_dir (", dir.string(), ") is a writable directory.");
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    const std::string owner = read_owner(fd);
    ::close(fd);
    if (err == EWOULDBLOCK) {
      throw CheckpointError(str_cat(
          "the run directory ", dir.string(), " is in use by ", owner, ". Two processes must not train or "
          "prepare into one run directory. Wait for that one to finish or stop it (Ctrl-C saves its state), "
          "or give this run another run.output_dir."));
    }
    throw CheckpointError(str_cat("cannot lock ", path_.string(), ": ", std::strerror(err), "."));
  }
  // Who holds it, for the message a second process prints. Best effort: the lock is the flock.
  const std::string text = describe_this_process(purpose) + "\n";
  if (::ftruncate(fd, 0) == 0) {
    [[maybe_unused]] const ssize_t ignored = ::pwrite(fd, text.data(), text.size(), 0);
  }
  g_held[path_.string()] = Held{fd, 1};
}

RunLock::~RunLock() {
  std::lock_guard<std::mutex> guard(g_mutex);
  auto it = g_held.find(path_.string());
  if (it == g_held.end() || --it->second.users > 0) return;
  // The file stays (deleting it would race with a process opening it); the lock goes.
  if (::ftruncate(it->second.fd, 0) != 0) {}
  ::flock(it->second.fd, LOCK_UN);
  ::close(it->second.fd);
  g_held.erase(it);
}

}  // namespace enstack::util
