// Logging facade over spdlog. The implementation is compiled in its own target
// (enstack_log) that never sees torch's headers, because torch bundles a fmt
// that collides with the one the system spdlog is built against.
//
// Records go to stderr by default, optionally to a file (the run's train.log),
// and to a forwarding sink that the Python module installs so that records
// reach the `enstack` Python logger (and so Jupyter/Colab cell output).
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include "enstack/util/str_cat.h"

namespace enstack::util {

enum class LogLevel { kTrace = 0, kDebug, kInfo, kWarn, kError, kOff };

// Receives (level, message). It is called without any enstack lock held, from
// whichever thread logs, so it may block (e.g. to take the Python GIL).
using LogForwarder = std::function<void(LogLevel, std::string_view)>;

void log(LogLevel level, std::string_view message);
bool should_log(LogLevel level);
void set_log_level(LogLevel level);
LogLevel log_level();

// Replaces the forwarding sink; an empty function removes it. While a
// forwarder is installed the stderr sink is silent (the forwarder prints).
void set_log_forwarder(LogForwarder forwarder);

// Adds a file sink (appending); an empty path closes it. Throws enstack::Error
// when the file cannot be opened.
void set_log_file(const std::string& path);

// Parses "trace|debug|info|warning|warn|error|off" (case-insensitive).
LogLevel parse_log_level(std::string_view name);
std::string_view log_level_name(LogLevel level);

}  // namespace enstack::util

#define ENSTACK_LOG_AT(level, ...)                                        \
  do {                                                                    \
    if (::enstack::util::should_log(level)) {                             \
      ::enstack::util::log(level, ::enstack::util::str_cat(__VA_ARGS__)); \
    }                                                                     \
  } while (0)
#define ENSTACK_LOG_DEBUG(...) ENSTACK_LOG_AT(::enstack::util::LogLevel::kDebug, __VA_ARGS__)
#define ENSTACK_LOG_INFO(...) ENSTACK_LOG_AT(::enstack::util::LogLevel::kInfo, __VA_ARGS__)
#define ENSTACK_LOG_WARN(...) ENSTACK_LOG_AT(::enstack::util::LogLevel::kWarn, __VA_ARGS__)
#define ENSTACK_LOG_ERROR(...) ENSTACK_LOG_AT(::enstack::util::LogLevel::kError, __VA_ARGS__)
