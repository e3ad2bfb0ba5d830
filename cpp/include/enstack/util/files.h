// File helpers with the durability rules of the design: whole-file reads with
// errors that name the path, and atomic writes (temporary sibling, fsync,
// rename, fsync of the parent directory) so a crash leaves either the old file
// or the new one, never a torn one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>

namespace enstack::util {

// Reads a whole file. Throws ErrorType (an enstack::Error subclass) naming the
// path when it is missing or unreadable.
template <typename ErrorType>
std::string read_file(const std::filesystem::path& path);

// Writes `bytes` to `path` atomically and durably. Throws enstack::Error with
// the OS reason (e.g. "No space left on device") and leaves any existing file
// at `path` untouched on failure.
void write_file_atomic(const std::filesystem::path& path, std::span<const std::byte> bytes);
void write_file_atomic(const std::filesystem::path& path, const std::string& text);

// Streams a file into a temporary sibling; commit() fsyncs it, renames it over
// `path` and fsyncs the parent. Destroyed without commit(), it removes the
// temporary file and leaves `path` untouched. Errors throw enstack::Error.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::filesystem::path path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, std::size_t size);
  // Writes `size` bytes at absolute `offset` (e.g. a header filled in at the end).
  void write_at(uint64_t offset, const void* data, std::size_t size);
  uint64_t written() const { return written_; }
  void commit();

 private:
  [[noreturn]] void fail(const char* step, int err);
  std::filesystem::path path_, tmp_;
  int fd_ = -1;
  uint64_t written_ = 0;
  bool committed_ = false;
};

// fsyncs a directory so that renames inside it are durable.
void fsync_directory(const std::filesystem::path& dir);

// A read-only memory mapping of a whole file. Empty files map to size 0.
class MappedFile {
 public:
  // Throws ErrorType-like enstack::Error (the caller rethrows with context).
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace enstack::util
