// Injected write failures (see enstack/util/fault_injection.h).
#include "enstack/util/fault_injection.h"

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <sstream>
#include <vector>

#include "enstack/util/error.h"
#include "enstack/util/str_cat.h"

namespace enstack::util {
namespace {

std::mutex g_mutex;
std::optional<WriteFault> g_fault;
std::atomic<bool> g_armed{false};
std::atomic<int64_t> g_injected{0};
std::once_flag g_env_once;

void arm_from_environment() {
  const char* spec = std::getenv("ENSTACK_INJECT_WRITE_FAULT");
  if (spec != nullptr && *spec != '\0') inject_write_fault(parse_write_fault(spec));
}

int errno_from_name(const std::string& name) {
  if (name == "ENOSPC") return ENOSPC;
  if (name == "EIO") return EIO;
  if (name == "EACCES") return EACCES;
  if (name == "EROFS") return EROFS;
  if (name == "EDQUOT") return EDQUOT;
  char* end = nullptr;
  const long value = std::strtol(name.c_str(), &end, 10);
  ENSTACK_CHECK(end != name.c_str() && *end == '\0' && value > 0, ConfigError, "unknown errno '", name,
                "' in a write-fault spec; use ENOSPC, EIO, EACCES, EROFS, EDQUOT or a number.");
  return static_cast<int>(value);
}

}  // namespace

WriteFault parse_write_fault(const std::string& spec) {
  std::vector<std::string> fields;
  std::stringstream in(spec);
  for (std::string field; std::getline(in, field, ':');) fields.push_back(field);
  ENSTACK_CHECK(!fields.empty() && fields.size() <= 4, ConfigError, "write-fault spec '", spec,
                "' must look like ERRNO[:PATH_SUBSTRING[:SKIP[:COUNT]]].");
  WriteFault f;
  f.error = errno_from_name(fields[0]);
  if (fields.size() > 1) f.path_contains = fields[1];
  if (fields.size() > 2) f.skip = std::stoll(fields[2]);
  if (fields.size() > 3) f.count = std::stoll(fields[3]);
  return f;
}

void inject_write_fault(const WriteFault& fault) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_fault = fault;
  g_injected.store(0);
  g_armed.store(fault.error != 0 && fault.count != 0);
}

void clear_write_faults() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_fault.reset();
  g_injected.store(0);
  g_armed.store(false);
}

int64_t injected_write_faults() { return g_injected.load(); }

int write_fault_for(const std::filesystem::path& path) {
  std::call_once(g_env_once, arm_from_environment);
  if (!g_armed.load(std::memory_order_relaxed)) return 0;
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_fault || path.string().find(g_fault->path_contains) == std::string::npos) return 0;
  if (g_fault->skip > 0) {
    --g_fault->skip;
    return 0;
  }
  const int error = g_fault->error;
  if (g_fault->count > 0 && --g_fault->count == 0) g_armed.store(false);
  g_injected.fetch_add(1);
  return error;
}

}  // namespace enstack::util
