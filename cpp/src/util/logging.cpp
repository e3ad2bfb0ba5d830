// spdlog behind the enstack logging facade (see enstack/util/logging.h).
// One logger, one routing sink: the routing sink sends each record to the
// Python forwarder when one is installed (else to stderr) and to the run's
// log file when one is open. The forwarder is called with no lock held.
#include "enstack/util/logging.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <memory>
#include <mutex>
#include <stdexcept>

#include "enstack/util/error.h"

namespace enstack::util {
namespace {

spdlog::level::level_enum to_spdlog(LogLevel level) {
  switch (level) {
    case LogLevel::kTrace: return spdlog::level::trace;
    case LogLevel::kDebug: return spdlog::level::debug;
    case LogLevel::kInfo: return spdlog::level::info;
    case LogLevel::kWarn: return spdlog::level::warn;
    case LogLevel::kError: return spdlog::level::err;
    case LogLevel::kOff: return spdlog::level::off;
  }
  return spdlog::level::info;
}

LogLevel from_spdlog(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace: return LogLevel::kTrace;
    case spdlog::level::debug: return LogLevel::kDebug;
    case spdlog::level::info: return LogLevel::kInfo;
    case spdlog::level::warn: return LogLevel::kWarn;
    case spdlog::level::err:
    case spdlog::level::critical: return LogLevel::kError;
    default: return LogLevel::kOff;
  }
}

class RouterSink final : public spdlog::sinks::sink {
 public:
  RouterSink() : stderr_(std::make_shared<spdlog::sinks::stderr_color_sink_mt>()) {
    stderr_->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [enstack] [%^%l%$] %v");
  }

  void log(const spdlog::details::log_msg& msg) override {
    std::shared_ptr<LogForwarder> forwarder;
    std::shared_ptr<spdlog::sinks::sink> file;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      forwarder = forwarder_;
      file = file_;
    }
    if (forwarder) {
      (*forwarder)(from_spdlog(msg.level), std::string_view(msg.payload.data(), msg.payload.size()));
    } else {
      stderr_->log(msg);
    }
    if (file) file->log(msg);
  }

  void flush() override {
    std::shared_ptr<spdlog::sinks::sink> file;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      file = file_;
    }
    stderr_->flush();
    if (file) file->flush();
  }

  void set_pattern(const std::string& pattern) override { stderr_->set_pattern(pattern); }
  void set_formatter(std::unique_ptr<spdlog::formatter> formatter) override {
    stderr_->set_formatter(std::move(formatter));
  }

  void set_forwarder(LogForwarder forwarder) {
    std::lock_guard<std::mutex> lock(mutex_);
    forwarder_ = forwarder ? std::make_shared<LogForwarder>(std::move(forwarder)) : nullptr;
  }

  void set_file(std::shared_ptr<spdlog::sinks::sink> file) {
    std::lock_guard<std::mutex> lock(mutex_);
    file_ = std::move(file);
  }

 private:
  std::shared_ptr<spdlog::sinks::sink> stderr_;
  std::mutex mutex_;
  std::shared_ptr<LogForwarder> forwarder_;
  std::shared_ptr<spdlog::sinks::sink> file_;
};

struct State {
  std::shared_ptr<RouterSink> router = std::make_shared<RouterSink>();
  std::shared_ptr<spdlog::logger> logger = std::make_shared<spdlog::logger>("enstack", router);

  State() {
    logger->set_level(spdlog::level::info);
    // train.log must hold everything up to a crash: flush every record.
    logger->flush_on(spdlog::level::trace);
  }
};

State& state() {
  static State* s = new State();  // never destroyed: logging may happen during exit
  return *s;
}

}  // namespace

void log(LogLevel level, std::string_view message) {
  state().logger->log(to_spdlog(level), spdlog::string_view_t(message.data(), message.size()));
}

bool should_log(LogLevel level) { return state().logger->should_log(to_spdlog(level)); }

void set_log_level(LogLevel level) { state().logger->set_level(to_spdlog(level)); }

LogLevel log_level() { return from_spdlog(state().logger->level()); }

void set_log_forwarder(LogForwarder forwarder) { state().router->set_forwarder(std::move(forwarder)); }

void set_log_file(const std::string& path) {
  if (path.empty()) {
    state().router->set_file(nullptr);
    return;
  }
  try {
    auto file = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, /*truncate=*/false);
    file->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%l] [thread %t] %v");
    state().router->set_file(std::move(file));
  } catch (const spdlog::spdlog_ex& e) {
    throw Error(str_cat("cannot open the log file '", path, "': ", e.what(),
                        ". Check that the directory exists and is writable."));
  }
}

LogLevel parse_log_level(std::string_view name) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (lower == "trace") return LogLevel::kTrace;
  if (lower == "debug") return LogLevel::kDebug;
  if (lower == "info") return LogLevel::kInfo;
  if (lower == "warning" || lower == "warn") return LogLevel::kWarn;
  if (lower == "error" || lower == "critical") return LogLevel::kError;
  if (lower == "off") return LogLevel::kOff;
  throw ConfigError(str_cat("unknown log level '", name,
                            "'; use one of trace, debug, info, warning, error, off."));
}

std::string_view log_level_name(LogLevel level) {
  switch (level) {
    case LogLevel::kTrace: return "trace";
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarn: return "warning";
    case LogLevel::kError: return "error";
    case LogLevel::kOff: return "off";
  }
  return "info";
}

}  // namespace enstack::util
