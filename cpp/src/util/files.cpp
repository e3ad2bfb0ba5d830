// POSIX implementation of the file helpers: whole-file reads, atomic durable
// writes (temporary sibling, fsync, rename, fsync of the parent) and read-only
// memory mappings.
#include "enstack/util/files.h"
#include "enstack/util/fault_injection.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <system_error>

#include "enstack/util/error.h"

namespace enstack::util {
namespace {

// Thread-safe text for an errno value (strerror is not thread-safe).
std::string os_reason(int err) { return std::error_code(err, std::generic_category()).message(); }

// Closes a descriptor once, on every path out of a scope.
class FdGuard {
 public:
  explicit FdGuard(int fd) : fd_(fd) {}
  ~FdGuard() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  int get() const { return fd_; }
  // Closes now and reports the error (close can surface a delayed write error).
  int close_now() {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

int open_retrying(const char* path, int flags, mode_t mode = 0) {
  int fd;
  do {
    fd = ::open(path, flags, mode);
  } while (fd < 0 && errno == EINTR);
  return fd;
}

std::filesystem::path parent_or_dot(const std::filesystem::path& path) {
  std::filesystem::path parent = path.parent_path();
  return parent.empty() ? std::filesystem::path(".") : parent;
}

// A name no other writer (thread or process) uses at the same time.
std::filesystem::path temporary_sibling(const std::filesystem::path& path) {
  static std::atomic<uint64_t> counter{0};
  const uint64_t n = counter.fetch_add(1, std::memory_order_relaxed);
  return parent_or_dot(path) /
         str_cat(".", path.filename().string(), ".tmp-", ::getpid(), "-", n);
}

[[noreturn]] void throw_write_error(const std::filesystem::path& path, const char* step, int err) {
  throw Error(str_cat("cannot write ", path.string(), ": ", step, " failed: ", os_reason(err),
                      "; the previous file (if any) is unchanged. Check that the directory exists, "
                      "is writable and that the disk is not full."));
}

}  // namespace

template <typename ErrorType>
std::string read_file(const std::filesystem::path& path) {
  auto fail = [&](int err) {
    return ErrorType(str_cat("cannot read ", path.string(), ": ", os_reason(err),
                             "; check that the path is correct and the file is readable."));
  };
  FdGuard fd(open_retrying(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw fail(errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw fail(errno);
  if (S_ISDIR(st.st_mode)) throw fail(EISDIR);

  std::string out;
  if (S_ISREG(st.st_mode) && st.st_size > 0) out.reserve(static_cast<std::size_t>(st.st_size));
  char buffer[1 << 16];
  for (;;) {
    const ssize_t got = ::read(fd.get(), buffer, sizeof(buffer));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw fail(errno);
    }
    if (got == 0) break;
    out.append(buffer, static_cast<std::size_t>(got));
  }
  return out;
}

template std::string read_file<ModelError>(const std::filesystem::path&);
template std::string read_file<ConfigError>(const std::filesystem::path&);
template std::string read_file<DataError>(const std::filesystem::path&);
template std::string read_file<CheckpointError>(const std::filesystem::path&);

AtomicFileWriter::AtomicFileWriter(std::filesystem::path path)
    : path_(std::move(path)), tmp_(temporary_sibling(path_)) {
  if (const int injected = write_fault_for(path_)) throw_write_error(path_, "creating the temporary file", injected);
  fd_ = open_retrying(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd_ < 0) throw_write_error(path_, "creating the temporary file", errno);
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
}

void AtomicFileWriter::fail(const char* step, int err) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  ::unlink(tmp_.c_str());
  committed_ = true;  // nothing left to clean up
  throw_write_error(path_, step, err);
}

void AtomicFileWriter::write(const void* data, std::size_t size) {
  write_at(written_, data, size);
}

void AtomicFileWriter::write_at(uint64_t offset, const void* data, std::size_t size) {
  ENSTACK_ASSERT(fd_ >= 0 && !committed_, "write after commit or failure");
  if (const int injected = write_fault_for(path_)) fail("write", injected);
  const auto* cursor = static_cast<const std::byte*>(data);
  std::size_t left = size;
  while (left > 0) {
    const ssize_t wrote = ::pwrite(fd_, cursor, left, static_cast<off_t>(offset));
    if (wrote < 0) {
      if (errno == EINTR) continue;
      fail("write", errno);
    }
    if (wrote == 0) fail("write", ENOSPC);  // no progress and no error: treat as a full disk
    cursor += wrote;
    offset += static_cast<uint64_t>(wrote);
    left -= static_cast<std::size_t>(wrote);
  }
  written_ = std::max(written_, offset);
}

void AtomicFileWriter::commit() {
  ENSTACK_ASSERT(fd_ >= 0 && !committed_, "commit twice or after failure");
  if (const int injected = write_fault_for(path_)) fail("fsync", injected);
  if (::fsync(fd_) != 0) fail("fsync", errno);
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) fail("close", errno);
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) fail("rename", errno);
  committed_ = true;
  // The new file is in place; a failure here only means the rename may not survive a crash.
  fsync_directory(parent_or_dot(path_));
}

void write_file_atomic(const std::filesystem::path& path, std::span<const std::byte> bytes) {
  AtomicFileWriter writer(path);
  writer.write(bytes.data(), bytes.size());
  writer.commit();
}

void write_file_atomic(const std::filesystem::path& path, const std::string& text) {
  write_file_atomic(path, std::as_bytes(std::span<const char>(text.data(), text.size())));
}

void fsync_directory(const std::filesystem::path& dir) {
  FdGuard fd(open_retrying(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) {
    throw Error(str_cat("cannot open directory ", dir.string(), " to fsync it: ", os_reason(errno),
                        "; check that it exists and is readable."));
  }
  if (::fsync(fd.get()) != 0) {
    const int err = errno;
    // Some filesystems (FUSE mounts such as Google Drive, some network filesystems) do not
    // support fsync on a directory; there is nothing more we can do there, so it is not an error.
    if (err == EINVAL || err == ENOTSUP || err == EROFS) return;
    throw Error(str_cat("cannot fsync directory ", dir.string(), ": ", os_reason(err),
                        "; a rename inside it may not survive a crash. Check the disk."));
  }
}

MappedFile::MappedFile(const std::filesystem::path& path) : path_(path) {
  auto fail = [&](const char* step, int err) {
    return Error(str_cat("cannot map ", path.string(), ": ", step, " failed: ", os_reason(err)));
  };
  FdGuard fd(open_retrying(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw fail("open", errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw fail("fstat", errno);
  if (!S_ISREG(st.st_mode)) {
    throw Error(str_cat("cannot map ", path.string(), ": it is not a regular file"));
  }
  if (st.st_size == 0) return;  // mmap rejects length 0; an empty mapping is data()==nullptr
  const auto size = static_cast<std::size_t>(st.st_size);
  void* addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  if (addr == MAP_FAILED) throw fail("mmap", errno);
  // The mapping stays valid after the descriptor is closed (by fd's destructor).
  data_ = static_cast<const std::byte*>(addr);
  size_ = size;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
}

}  // namespace enstack::util
