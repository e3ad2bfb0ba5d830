// Crash-consistent checkpoint directories (see enstack/ckpt/checkpoint_dir.h).
#include "enstack/ckpt/checkpoint_dir.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>

#include "enstack/ckpt/snapshot.h"
#include "enstack/model/safetensors.h"
#include "enstack/util/error.h"
#include "enstack/util/files.h"
#include "enstack/util/hash.h"
#include "enstack/util/logging.h"

namespace enstack::ckpt {
namespace {

std::string checksum_of(const fs::path& file, uint64_t& size) {
  util::MappedFile mapped(file);
  size = mapped.size();
  return util::Fnv1a64().update(mapped.data(), mapped.size()).hex();
}

fs::path unique_sibling(const fs::path& final_dir, const std::string& tag) {
  static std::atomic<uint64_t> counter{0};
  return final_dir.parent_path() /
         util::str_cat(".", tag, "-", final_dir.filename().string(), "-", ::getpid(), "-", counter.fetch_add(1));
}

// Deletes a checkpoint so that no moment of the deletion looks complete: the
// manifest goes first (and that is made durable), then the files.
void remove_checkpoint_dir(const fs::path& dir, std::error_code& ec) {
  fs::remove(dir / kManifestName, ec);
  if (ec) return;  // keep the files: a checkpoint with its manifest must stay whole
  try {
    util::fsync_directory(dir);
  } catch (const Error& e) {
    ENSTACK_LOG_WARN("deleting ", dir.string(), ": ", e.what());
  }
  fs::remove_all(dir, ec);
}

bool process_is_gone(const std::string& name, std::size_t pid_at) {
  const long pid = std::strtol(name.c_str() + pid_at, nullptr, 10);
  return pid > 0 && pid != ::getpid() && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

// Leftovers of writers that died: their temporary directories, and the previous
// checkpoint they had moved aside once the new one is in place.
void remove_stale_siblings(const fs::path& final_dir) {
  const std::string tmp_prefix = ".tmp-" + final_dir.filename().string() + "-";
  const std::string old_prefix = ".old-" + final_dir.filename().string() + "-";
  const bool final_complete = fs::exists(final_dir / kManifestName);
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(final_dir.parent_path(), ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(tmp_prefix, 0) == 0 && process_is_gone(name, tmp_prefix.size())) {
      fs::remove_all(entry.path(), ec);
    } else if (final_complete && name.rfind(old_prefix, 0) == 0 && process_is_gone(name, old_prefix.size())) {
      remove_checkpoint_dir(entry.path(), ec);
    }
  }
}

Manifest read_manifest(const fs::path& dir) {
  const fs::path path = dir / kManifestName;
  ENSTACK_CHECK(fs::exists(path), CheckpointError, dir.string(), " has no ", kManifestName,
                ": the checkpoint was not completed (a crash during saving); an older one will be used.");
  auto j = nlohmann::json::parse(util::read_file<CheckpointError>(path), nullptr, false);
  ENSTACK_CHECK(!j.is_discarded(), CheckpointError, path.string(), " is not valid JSON.");
  return Manifest::from_json(j, dir);
}

}  // namespace

nlohmann::json Manifest::to_json() const {
  nlohmann::json files_json = nlohmann::json::array();
  for (const auto& f : files) files_json.push_back({{"name", f.name}, {"size", f.size}, {kChecksumKey, f.checksum}});
  return {{"format", "enstack-checkpoint"}, {"version", version}, {"step", step}, {"kind", kind},
          {"files", files_json}, {"extra", extra}};
}

Manifest Manifest::from_json(const nlohmann::json& j, const fs::path& where) {
  auto bad = [&](const std::string& what) {
    return CheckpointError(util::str_cat(where.string(), "/", kManifestName, ": ", what));
  };
  try {
    if (!j.is_object() || j.value("format", "") != "enstack-checkpoint") throw bad("not an enstack manifest");
    Manifest m;
    m.version = j.at("version").get<int>();
    if (m.version != kManifestVersion) {
      throw bad(util::str_cat("manifest version ", m.version, "; this enstack reads version ", kManifestVersion));
    }
    m.step = j.at("step").get<int64_t>();
    m.kind = j.at("kind").get<std::string>();
    for (const auto& f : j.at("files")) {
      const std::string name = f.at("name").get<std::string>();
      // Plain file names only: a name with a separator or ".." would reach outside the checkpoint.
      if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
          name.find('\\') != std::string::npos || name.find('\0') != std::string::npos) {
        throw bad(util::str_cat("lists the file name '", name, "', which is not a plain file name"));
      }
      m.files.push_back({name, f.at("size").get<uint64_t>(), f.at(kChecksumKey).get<std::string>()});
    }
    m.extra = j.value("extra", nlohmann::json::object());
    return m;
  } catch (const nlohmann::json::exception& e) {
    throw bad(util::str_cat("malformed (", e.what(), ")"));
  }
}

CheckpointWriter::CheckpointWriter(fs::path final_dir) : final_(std::move(final_dir)) {
  std::error_code ec;
  fs::create_directories(final_.parent_path(), ec);
  ENSTACK_CHECK(!ec, Error, "cannot create ", final_.parent_path().string(), ": ", ec.message(),
                ". Check the path and free space.");
  remove_stale_siblings(final_);
  temp_ = unique_sibling(final_, "tmp");
  fs::create_directory(temp_, ec);
  ENSTACK_CHECK(!ec, Error, "cannot create ", temp_.string(), ": ", ec.message(), ". Check the path and free space.");
}

CheckpointWriter::~CheckpointWriter() {
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(temp_, ec);
  }
}

void CheckpointWriter::add_file(const std::string& name, const void* data, uint64_t size) {
  util::AtomicFileWriter file(temp_ / name);
  file.write(data, static_cast<std::size_t>(size));
  file.commit();
  // The checksum is of the bytes in memory: the file is not read back.
  entries_.push_back({name, size, util::Fnv1a64().update(data, static_cast<std::size_t>(size)).hex()});
}

void CheckpointWriter::add_tensors(const std::string& name, const std::map<std::string, torch::Tensor>& tensors,
                                   const std::map<std::string, std::string>& metadata) {
  const model::SafetensorsImage image(tensors, metadata, temp_ / name);
  std::vector<std::byte> bytes(image.size());
  image.fill(bytes.data());
  add_file(name, bytes.data(), bytes.size());
}

void CheckpointWriter::add_json(const std::string& name, const nlohmann::json& value) {
  add_bytes(name, value.dump(2) + "\n");
}

void CheckpointWriter::add_bytes(const std::string& name, const std::string& bytes) {
  add_file(name, bytes.data(), bytes.size());
}

fs::path write_snapshot(const Snapshot& snapshot, const fs::path& final_dir) {
  CheckpointWriter writer(final_dir);
  for (const auto& file : snapshot.files()) writer.add_file(file.name, file.data(), file.size);
  return writer.commit(snapshot.step(), snapshot.kind(), snapshot.extra());
}

void install_directory(const fs::path& temp, const fs::path& final_dir) {
  util::fsync_directory(temp);
  fs::path old;
  std::error_code ec;
  if (fs::exists(final_dir)) {
    old = unique_sibling(final_dir, "old");
    fs::rename(final_dir, old, ec);
    ENSTACK_CHECK(!ec, Error, "cannot move the previous checkpoint ", final_dir.string(), " aside: ", ec.message());
  }
  fs::rename(temp, final_dir, ec);
  if (ec) {
    if (!old.empty()) fs::rename(old, final_dir);  // put the previous one back
    throw Error(util::str_cat("cannot move the new checkpoint into ", final_dir.string(), ": ", ec.message(),
                              "; the previous checkpoint is unchanged."));
  }
  util::fsync_directory(final_dir.parent_path());
  if (!old.empty()) remove_checkpoint_dir(old, ec);
}

Manifest copy_checkpoint(const fs::path& source, const fs::path& final_dir) {
  const Manifest manifest = read_manifest(source);
  std::error_code ec;
  fs::create_directories(final_dir.parent_path(), ec);
  ENSTACK_CHECK(!ec, Error, "cannot create ", final_dir.parent_path().string(), ": ", ec.message(),
                ". Check that the mirror folder is mounted and writable.");
  remove_stale_siblings(final_dir);
  const fs::path temp = unique_sibling(final_dir, "tmp");
  fs::create_directory(temp, ec);
  ENSTACK_CHECK(!ec, Error, "cannot create ", temp.string(), ": ", ec.message(), ". Check the mirror folder.");
  try {
    constexpr std::size_t kChunk = 8u << 20;
    for (const auto& file : manifest.files) {
      const util::MappedFile in(source / file.name);
      util::AtomicFileWriter out(temp / file.name);
      for (std::size_t at = 0; at < in.size(); at += kChunk) {
        out.write(in.data() + at, std::min(kChunk, in.size() - at));
      }
      out.commit();
    }
    // The manifest goes last, as when the checkpoint was first written; then the
    // copy is checked against it before it can be seen under its final name.
    util::write_file_atomic(temp / kManifestName, util::read_file<CheckpointError>(source / kManifestName));
    const Manifest copied = verify(temp);
    ENSTACK_CHECK(copied.step == manifest.step, CheckpointError, "the source checkpoint ", source.string(),
                  " changed while it was copied.");
    install_directory(temp, final_dir);
    return copied;
  } catch (...) {
    fs::remove_all(temp, ec);
    throw;
  }
}

fs::path CheckpointWriter::commit(int64_t step, const std::string& kind, const nlohmann::json& extra) {
  ENSTACK_ASSERT(!committed_, "checkpoint committed twice");
  Manifest manifest;
  manifest.step = step;
  manifest.kind = kind;
  manifest.files = entries_;
  manifest.extra = extra;
  // Every data file was fsynced by its atomic write; the manifest goes last.
  util::write_file_atomic(temp_ / kManifestName, manifest.to_json().dump(2) + "\n");
  install_directory(temp_, final_);
  committed_ = true;
  return final_;
}

std::string file_checksum(const fs::path& file) {
  uint64_t size = 0;
  return checksum_of(file, size);
}

Manifest verify(const fs::path& dir) {
  ENSTACK_CHECK(fs::is_directory(dir), CheckpointError, "checkpoint ", dir.string(), " does not exist.");
  Manifest manifest = read_manifest(dir);
  for (const auto& file : manifest.files) {
    const fs::path path = dir / file.name;
    ENSTACK_CHECK(fs::is_regular_file(path), CheckpointError, "checkpoint ", dir.string(), " lacks ", file.name,
                  " listed in its manifest; it is damaged, use an older one.");
    uint64_t size = 0;
    const std::string sum = checksum_of(path, size);
    ENSTACK_CHECK(size == file.size, CheckpointError, "checkpoint file ", path.string(), " has ", size,
                  " bytes, its manifest says ", file.size, " (truncated or partially copied); use an older one.");
    ENSTACK_CHECK(sum == file.checksum, CheckpointError, "checkpoint file ", path.string(),
                  " does not match its checksum (corrupted); use an older one.");
  }
  return manifest;
}

std::vector<std::pair<int64_t, fs::path>> list_by_step(const fs::path& root, const std::string& prefix) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    const bool candidate = name.rfind(prefix, 0) == 0 || name.rfind(".old-" + prefix, 0) == 0;
    if (!candidate || name.rfind(".tmp-", 0) == 0 || !entry.is_directory()) continue;
    try {
      out.emplace_back(read_manifest(entry.path()).step, entry.path());
    } catch (const Error&) {
      // Not completed or unreadable: never a resume candidate.
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::optional<fs::path> latest_valid(const std::vector<fs::path>& roots, const std::string& prefix) {
  std::vector<std::tuple<int64_t, std::size_t, fs::path>> candidates;
  for (std::size_t r = 0; r < roots.size(); ++r) {
    for (auto& [step, path] : list_by_step(roots[r], prefix)) candidates.emplace_back(step, r, path);
  }
  // Highest step first; on a tie the earlier root (the local copy) wins.
  std::sort(candidates.begin(), candidates.end(), [](const auto& a, const auto& b) {
    return std::get<0>(a) != std::get<0>(b) ? std::get<0>(a) > std::get<0>(b) : std::get<1>(a) < std::get<1>(b);
  });
  for (const auto& [step, root, path] : candidates) {
    try {
      verify(path);
      return path;
    } catch (const CheckpointError& e) {
      ENSTACK_LOG_WARN("skipping checkpoint ", path.string(), " (step ", step, "): ", e.what());
    }
  }
  return std::nullopt;
}

void prune(const fs::path& root, const std::string& prefix, int keep, const std::vector<fs::path>& protect,
           const fs::path& newest_verified) {
  auto all = list_by_step(root, prefix);
  if (keep < 1 || static_cast<int>(all.size()) <= keep) return;
  if (all.back().second != newest_verified) verify(all.back().second);  // delete nothing unless the newest is sound
  const std::size_t excess = all.size() - static_cast<std::size_t>(keep);
  for (std::size_t i = 0; i < excess; ++i) {
    const auto& path = all[i].second;
    if (std::find(protect.begin(), protect.end(), path) != protect.end()) continue;
    std::error_code ec;
    remove_checkpoint_dir(path, ec);
    if (ec) ENSTACK_LOG_WARN("could not delete old checkpoint ", path.string(), ": ", ec.message());
  }
}

}  // namespace enstack::ckpt
