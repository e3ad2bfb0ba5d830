// Process identity for locks and leases (see enstack/util/owner.h).
#include "enstack/util/owner.h"

#include <unistd.h>

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
  return {{"host", host_name()}, {"pid", static_cast<int64_t>(::getpid())}, {"started", g_started},
          {"purpose", purpose}};
}

std::string describe_owner(const nlohmann::json& owner) {
  if (!owner.is_object()) return "an unknown process";
  return str_cat("pid ", owner.value("pid", int64_t{-1}), " on host ", owner.value("host", std::string("?")), " (",
                 owner.value("purpose", std::string("?")), ", since ", utc(owner.value("started", 0.0)), ")");
}

std::string describe_this_process(const std::string& purpose) { return describe_owner(this_process(purpose)); }

}  // namespace enstack::util
