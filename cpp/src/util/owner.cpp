// Process identity for locks and leases (see enstack/util/owner.h).
#include "enstack/util/owner.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>

#include <chrono>
#include <ctime>

#include "enstack/util/error.h"

namespace enstack::util {
namespace {

const double g_started = unix_seconds();

std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "?";
  return name;
}

std::string boot_id() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(in, id);
  return id;
}

std::string utc(double seconds) {
  const std::time_t t = static_cast<std::time_t>(seconds);
  std::tm tm {};
  ::gmtime_r(&t, &tm);
  char text[64];
  std::strftime(text, sizeof(text), "%Y-%m-%d %H:%M:%S UTC", &tm);
  return text;
}

}  // namespace

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

nlohmann::json this_process(const std::string& purpose) {
  return {{"host", host_name()}, {"boot_id", boot_id()}, {"pid", static_cast<int64_t>(::getpid())},
          {"started", g_started}, {"purpose", purpose}};
}

bool owner_is_gone(const nlohmann::json& owner) {
  if (!owner.is_object() || owner.value("host", std::string()) != host_name()) return false;
  const std::string boot = boot_id();
  if (boot.empty() || owner.value("boot_id", std::string()) != boot) return false;
  const int64_t pid = owner.value("pid", int64_t{-1});
  if (pid <= 0 || pid == static_cast<int64_t>(::getpid())) return false;
  return ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

std::string describe_owner(const nlohmann::json& owner) {
  if (!owner.is_object()) return "an unknown process";
  return str_cat("pid ", owner.value("pid", int64_t{-1}), " on host ", owner.value("host", std::string("?")), " (",
                 owner.value("purpose", std::string("?")), ", since ", utc(owner.value("started", 0.0)), ")");
}

std::string describe_this_process(const std::string& purpose) { return describe_owner(this_process(purpose)); }

}  // namespace enstack::util
