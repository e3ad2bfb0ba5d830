// AsyncSaver: writes checkpoint snapshots on a background thread, so training
// stalls only for the snapshot copy, and copies each finished checkpoint into a
// mirror root (e.g. a Google Drive folder) on a second thread.
//
// Snapshots with deferred CPU tensors (Snapshot::add_tensors_deferred) are filled
// by a copy thread right away; the caller must call wait_for_snapshots() before
// it changes those tensors (the trainer: before the next optimizer step).
//
// At most one save is in flight. A save point reached while one is running
// either waits for the writer to be idle (coalesce = false), or replaces a queued,
// not yet started save of the same slot (coalesce = true: the newer state wins;
// slots are "step-*", "best", "swa", "recovery"). Write errors never throw into
// training: they come back from drain() as events, the previous checkpoint stays
// intact, and the next save point tries again. After a step checkpoint is written,
// older ones beyond keep_steps are deleted (only once the newest verifies), locally
// and on the mirror. The mirror gets the newest checkpoint of each slot; copies go
// through a temporary directory, are verified against the manifest and renamed.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "enstack/ckpt/snapshot.h"

namespace enstack::ckpt {

class MirrorLease;

namespace fs = std::filesystem;

struct SaveEvent {
  enum class Kind { kSaved, kSaveFailed, kCoalesced, kMirrored, kMirrorFailed };
  Kind kind = Kind::kSaved;
  std::string path;
  int64_t step = 0;
  std::string error;      // for the failures
  double seconds = 0.0;   // writing (or copying) time
  uint64_t bytes = 0;
  static const char* name(Kind kind);
};

struct AsyncSaverOptions {
  bool coalesce = true;
  fs::path mirror_root;       // empty: no mirror
  int keep_steps = 2;         // save_total_limit for step checkpoints (local and mirror); < 1: keep all
  std::string step_prefix = "step-";
  bool synchronous = false;   // write on the caller's thread (saving then stalls training)
  // The claim on mirror_root; while it is lost (another runtime took it over) nothing is mirrored.
  std::shared_ptr<const MirrorLease> mirror_lease;
};

class AsyncSaver {
 public:
  explicit AsyncSaver(AsyncSaverOptions options);
  ~AsyncSaver();  // finishes every queued save and mirror copy, then stops
  AsyncSaver(const AsyncSaver&) = delete;
  AsyncSaver& operator=(const AsyncSaver&) = delete;

  // Queues `snapshot` to become the checkpoint directory `final_dir`. Returns the
  // seconds spent waiting for an earlier save (0 when coalescing or idle).
  double submit(Snapshot snapshot, const fs::path& final_dir);
  // Blocks until every submitted snapshot's deferred tensors have been copied, so the
  // caller may change them again; returns the seconds waited.
  double wait_for_snapshots();
  // Blocks until every queued save and mirror copy has finished.
  void flush();
  // Events since the last call, oldest first.
  std::vector<SaveEvent> drain();
  BufferPool& pool() { return pool_; }
  const AsyncSaverOptions& options() const { return options_; }

 private:
  struct Job {
    Snapshot snapshot;
    fs::path final_dir;
    std::string slot;
  };
  std::string slot_of(const fs::path& dir) const;
  void write_job(Job& job);  // on the writer thread (or the caller's when synchronous)
  double enqueue_write(Job job);  // the coalesce-or-wait hand-over to the writer
  void copier_loop();
  void writer_loop();
  void mirror_loop();
  void push_event(SaveEvent event);

  AsyncSaverOptions options_;
  BufferPool pool_;
  std::mutex mutex_;
  std::condition_variable wake_writer_, wake_mirror_, wake_copier_, idle_, copied_;
  std::deque<Job> copy_queue_;  // snapshots whose deferred tensors are still to be copied
  bool copying_ = false, handing_over_ = false;
  std::deque<Job> queue_;
  bool writing_ = false;
  std::map<std::string, fs::path> mirror_pending_;  // slot -> newest local directory
  std::optional<fs::path> mirror_busy_;              // the local directory being copied
  std::vector<SaveEvent> events_;
  bool stopping_ = false;
  std::thread copier_, writer_, mirror_;
};

}  // namespace enstack::ckpt
