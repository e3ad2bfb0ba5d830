// Crash-consistent checkpoint directories (design contract 2).
//
// A checkpoint is written into a temporary sibling directory; every file is
// fsynced; MANIFEST.json (each file's size and checksum, the step, the kind)
// is written last and fsynced; the directory is renamed into place and the
// parent fsynced. An existing checkpoint of the same name is replaced only
// after the new one is complete, and stays loadable until then. Loading
// verifies the manifest, and choosing "the newest" reads steps from manifests,
// never mtimes (FUSE mounts such as Google Drive report unreliable ones). No
// symlinks or hard links are used.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace enstack::ckpt {

namespace fs = std::filesystem;

inline constexpr const char* kManifestName = "MANIFEST.json";
// The key of a file's checksum in a manifest entry.
inline constexpr const char* kChecksumKey = "fnv1a64";
inline constexpr int kManifestVersion = 1;

struct FileEntry {
  std::string name;
  uint64_t size = 0;
  std::string checksum;  // FNV-1a 64, hex
};

struct Manifest {
  int version = kManifestVersion;
  int64_t step = 0;        // optimizer step the state belongs to
  std::string kind;        // "full" (resume state) or "model" (weights only)
  std::vector<FileEntry> files;
  nlohmann::json extra = nlohmann::json::object();  // epoch, batch, ... for listings

  nlohmann::json to_json() const;
  static Manifest from_json(const nlohmann::json& j, const fs::path& where);  // throws CheckpointError
};

class CheckpointWriter {
 public:
  // `final_dir` is where the checkpoint will appear; its parent is created if needed.
  explicit CheckpointWriter(fs::path final_dir);
  ~CheckpointWriter();  // removes the temporary directory unless committed
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  void add_tensors(const std::string& name, const std::map<std::string, torch::Tensor>& tensors,
                   const std::map<std::string, std::string>& metadata = {{"format", "pt"}});
  void add_json(const std::string& name, const nlohmann::json& value);
  void add_bytes(const std::string& name, const std::string& bytes);
  // Writes `size` bytes as file `name` (fsynced); the checksum is taken from memory.
  void add_file(const std::string& name, const void* data, uint64_t size);

  // Writes the manifest and moves the directory into place. Throws enstack::Error on
  // I/O failure, leaving any previous checkpoint at final_dir intact.
  fs::path commit(int64_t step, const std::string& kind, const nlohmann::json& extra = nlohmann::json::object());

  const fs::path& temp_dir() const { return temp_; }

 private:
  fs::path final_;
  fs::path temp_;
  std::vector<FileEntry> entries_;
  bool committed_ = false;
};

class Snapshot;

// Writes a host-memory snapshot as a checkpoint directory (CheckpointWriter).
fs::path write_snapshot(const Snapshot& snapshot, const fs::path& final_dir);

// Copies a complete checkpoint to `final_dir` (e.g. on a mounted Drive) the same
// crash-consistent way: into a temporary sibling, manifest last, verified against
// the manifest, then renamed into place. Throws enstack::Error on failure, leaving
// any previous copy at final_dir intact.
Manifest copy_checkpoint(const fs::path& source, const fs::path& final_dir);

// Moves a finished temporary directory to `final_dir`: fsyncs it, moves any
// previous directory aside, renames, fsyncs the parent, deletes the previous one
// (manifest first).
void install_directory(const fs::path& temp, const fs::path& final_dir);

// The checksum a manifest records for `file` (FNV-1a 64, hex).
std::string file_checksum(const fs::path& file);

// Reads and checks MANIFEST.json and every file it lists (existence, size, checksum).
// Throws CheckpointError naming the first failed check.
Manifest verify(const fs::path& dir);

// Checkpoint directories directly under `root` whose name starts with `prefix` (and
// ".old-" + prefix: a replaced checkpoint whose successor may not have landed), ordered
// by the step in their manifests (oldest first); ones without a readable manifest are skipped.
std::vector<std::pair<int64_t, fs::path>> list_by_step(const fs::path& root, const std::string& prefix = "");

// The newest directory under each root (e.g. the local run and its Drive mirror) that
// verifies; invalid ones are logged and skipped. nullopt when none.
std::optional<fs::path> latest_valid(const std::vector<fs::path>& roots, const std::string& prefix = "");

// Deletes the oldest `prefix*` checkpoints beyond `keep` (the newest `keep` stay),
// never one in `protect`, and only while the newest one verifies (not checked again
// when it is `newest_verified`, e.g. the checkpoint just written from memory).
void prune(const fs::path& root, const std::string& prefix, int keep, const std::vector<fs::path>& protect = {},
           const fs::path& newest_verified = {});

}  // namespace enstack::ckpt
