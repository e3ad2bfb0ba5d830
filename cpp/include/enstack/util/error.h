// The enstack error hierarchy. User errors (bad config, data, checkpoint or
// model files) throw a subclass of enstack::Error whose message says what went
// wrong, why, and what to do; the Python bindings map each to the exception of
// the same name. Library code never calls exit() or abort().
#pragma once

#include <stdexcept>
#include <string>

#include "enstack/util/str_cat.h"

namespace enstack {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// A configuration value is missing, unknown or out of range.
class ConfigError : public Error {
 public:
  using Error::Error;
};

// An input data file (raw functions, token store) is malformed or missing.
class DataError : public Error {
 public:
  using Error::Error;
};

// A checkpoint is missing, incomplete, corrupted or does not fit this run.
class CheckpointError : public Error {
 public:
  using Error::Error;
};

// A model directory, config.json or weight file cannot be used.
class ModelError : public Error {
 public:
  using Error::Error;
};

// An enstack invariant was broken: a bug in enstack, never the user's fault.
class InternalError : public std::logic_error {
 public:
  explicit InternalError(const std::string& message) : std::logic_error(message) {}
};

}  // namespace enstack

// User-facing check: throws ErrorType with the concatenated message.
#define ENSTACK_CHECK(cond, ErrorType, ...)                         \
  do {                                                              \
    if (!(cond)) {                                                  \
      throw ErrorType(::enstack::util::str_cat(__VA_ARGS__));       \
    }                                                               \
  } while (0)

// Invariant check: throws InternalError (never aborts) naming the location.
#define ENSTACK_ASSERT(cond, ...)                                              \
  do {                                                                         \
    if (!(cond)) {                                                             \
      throw ::enstack::InternalError(::enstack::util::str_cat(                 \
          "enstack internal error at ", __FILE__, ":", __LINE__, ": ", #cond,  \
          " failed. ", ##__VA_ARGS__,                                          \
          " Please report this at the enstack issue tracker."));               \
    }                                                                          \
  } while (0)
