// Injected file-write failures, for testing that saving survives a full disk, an
// I/O error or a lost permission (ENOSPC, EIO, EACCES) at a chosen point.
//
// The file writers (AtomicFileWriter, and so every checkpoint file) ask
// write_fault_for() before creating, writing and fsyncing a file; when an armed
// fault matches the path it returns the errno to fail with. Faults are armed from
// tests (enstack._C._testing.inject_write_fault) or, for a child process, from
// the environment: ENSTACK_INJECT_WRITE_FAULT="EIO:<path substring>:<skip>:<count>".
// Disarmed (the normal case) the check is one relaxed atomic load.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace enstack::util {

struct WriteFault {
  int error = 0;              // ENOSPC, EIO, EACCES, ...
  std::string path_contains;  // only files whose path contains this ("" = any)
  int64_t skip = 0;           // matching operations to let through first
  int64_t count = 1;          // failures to inject, then disarm (-1: forever)
};

void inject_write_fault(const WriteFault& fault);  // replaces any armed fault
void clear_write_faults();
int64_t injected_write_faults();  // failures injected since the last inject/clear

// The errno the next write operation on `path` must fail with, or 0.
int write_fault_for(const std::filesystem::path& path);

// Parses "EIO:ckpt:0:1" (errno name or number; later fields optional).
WriteFault parse_write_fault(const std::string& spec);

}  // namespace enstack::util
