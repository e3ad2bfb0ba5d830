// Who this process is, in words and as JSON, for the run lock and the mirror lease:
// the host, the pid, the start time and what it is doing.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace enstack::util {

// {"host", "boot_id", "pid", "started" (unix seconds), "purpose"}
nlohmann::json this_process(const std::string& purpose);
// True when `owner` is a process of this machine (same host name and kernel boot) that
// no longer runs: its claims can be taken over at once.
bool owner_is_gone(const nlohmann::json& owner);
// "pid 123 on host colab-1 (training, since 2026-12-01 22:30:00 UTC)"
std::string describe_owner(const nlohmann::json& owner);
std::string describe_this_process(const std::string& purpose);
double unix_seconds();

}  // namespace enstack::util
