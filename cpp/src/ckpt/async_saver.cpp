// Background checkpoint writing and mirroring (see enstack/ckpt/async_saver.h).
#include "enstack/ckpt/async_saver.h"

#include "enstack/ckpt/mirror_lease.h"

#include <chrono>

#include "enstack/ckpt/checkpoint_dir.h"
#include "enstack/util/error.h"
#include "enstack/util/logging.h"

namespace enstack::ckpt {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

const char* SaveEvent::name(Kind kind) {
  switch (kind) {
    case Kind::kSaved: return "save";
    case Kind::kSaveFailed: return "save_error";
    case Kind::kCoalesced: return "save_coalesced";
    case Kind::kMirrored: return "mirror";
    case Kind::kMirrorFailed: return "mirror_error";
  }
  return "?";
}

AsyncSaver::AsyncSaver(AsyncSaverOptions options) : options_(std::move(options)) {
  if (!options_.synchronous) {
    copier_ = std::thread([this] { copier_loop(); });
    writer_ = std::thread([this] { writer_loop(); });
  }
  if (!options_.mirror_root.empty()) mirror_ = std::thread([this] { mirror_loop(); });
}

AsyncSaver::~AsyncSaver() {
  flush();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_copier_.notify_all();
  wake_writer_.notify_all();
  wake_mirror_.notify_all();
  if (copier_.joinable()) copier_.join();
  if (writer_.joinable()) writer_.join();
  if (mirror_.joinable()) mirror_.join();
}

std::string AsyncSaver::slot_of(const fs::path& dir) const {
  const std::string name = dir.filename().string();
  return name.rfind(options_.step_prefix, 0) == 0 ? options_.step_prefix : name;
}

double AsyncSaver::submit(Snapshot snapshot, const fs::path& final_dir) {
  Job job{std::move(snapshot), final_dir, slot_of(final_dir)};
  if (options_.synchronous) {
    job.snapshot.fill_deferred();
    write_job(job);
    return 0.0;
  }
  if (job.snapshot.has_deferred()) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      copy_queue_.push_back(std::move(job));
    }
    wake_copier_.notify_one();
    return 0.0;
  }
  return enqueue_write(std::move(job));
}

double AsyncSaver::enqueue_write(Job job) {
  const auto start = std::chrono::steady_clock::now();
  double waited = 0.0;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    if (options_.coalesce) {
      for (auto& queued : queue_) {
        if (queued.slot != job.slot) continue;
        events_.push_back({SaveEvent::Kind::kCoalesced, queued.final_dir.string(), queued.snapshot.step(),
                           "a newer save of the same kind replaced it before it started", 0.0, 0});
        queued.snapshot.recycle(pool_);
        queued = std::move(job);
        return 0.0;
      }
    } else {
      idle_.wait(lock, [&] { return queue_.empty() && !writing_; });
      waited = seconds_since(start);
    }
    queue_.push_back(std::move(job));
  }
  wake_writer_.notify_one();
  return waited;
}

void AsyncSaver::copier_loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    wake_copier_.wait(lock, [&] { return stopping_ || !copy_queue_.empty(); });
    if (copy_queue_.empty()) return;
    Job job = std::move(copy_queue_.front());
    copy_queue_.pop_front();
    copying_ = true;
    lock.unlock();
    job.snapshot.fill_deferred();
    lock.lock();
    copying_ = false;
    handing_over_ = true;  // in no queue for a moment: flush() must still wait for it
    copied_.notify_all();
    lock.unlock();
    enqueue_write(std::move(job));  // may wait for the writer (coalesce = false)
    lock.lock();
    handing_over_ = false;
    idle_.notify_all();
  }
}

double AsyncSaver::wait_for_snapshots() {
  std::unique_lock<std::mutex> lock(mutex_);
  if (copy_queue_.empty() && !copying_) return 0.0;
  const auto start = std::chrono::steady_clock::now();
  copied_.wait(lock, [&] { return copy_queue_.empty() && !copying_; });
  return seconds_since(start);
}

void AsyncSaver::write_job(Job& job) {
  const auto start = std::chrono::steady_clock::now();
  const uint64_t bytes = job.snapshot.bytes();
  try {
    write_snapshot(job.snapshot, job.final_dir);
  } catch (const std::exception& e) {
    job.snapshot.recycle(pool_);
    ENSTACK_LOG_WARN("saving ", job.final_dir.string(), " failed: ", e.what(),
                     " Training goes on; the previous checkpoint is intact and the next save point tries again.");
    push_event({SaveEvent::Kind::kSaveFailed, job.final_dir.string(), job.snapshot.step(), e.what(),
                seconds_since(start), bytes});
    return;
  }
  job.snapshot.recycle(pool_);
  push_event({SaveEvent::Kind::kSaved, job.final_dir.string(), job.snapshot.step(), "", seconds_since(start), bytes});
  if (job.slot == options_.step_prefix && options_.keep_steps >= 1) {
    std::vector<fs::path> protect;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (mirror_busy_) protect.push_back(*mirror_busy_);
    }
    try {
      prune(job.final_dir.parent_path(), options_.step_prefix, options_.keep_steps, protect, job.final_dir);
    } catch (const std::exception& e) {
      ENSTACK_LOG_WARN("not deleting old checkpoints: ", e.what());
    }
  }
  if (!options_.mirror_root.empty()) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      mirror_pending_[job.slot] = job.final_dir;
    }
    wake_mirror_.notify_one();
  }
}

void AsyncSaver::writer_loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    wake_writer_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, nothing left
    Job job = std::move(queue_.front());
    queue_.pop_front();
    writing_ = true;
    lock.unlock();
    write_job(job);
    lock.lock();
    writing_ = false;
    idle_.notify_all();
  }
}

void AsyncSaver::mirror_loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    wake_mirror_.wait(lock, [&] { return stopping_ || !mirror_pending_.empty(); });
    if (mirror_pending_.empty()) return;
    auto it = mirror_pending_.begin();
    const std::string slot = it->first;
    const fs::path source = it->second;
    mirror_pending_.erase(it);
    mirror_busy_ = source;
    lock.unlock();
    const auto start = std::chrono::steady_clock::now();
    const fs::path target = options_.mirror_root / source.filename();
    try {
      if (options_.mirror_lease && !options_.mirror_lease->held()) {
        throw CheckpointError("this run no longer holds the mirror's lease (" + options_.mirror_lease->lost_reason() +
                              "); nothing more is copied there.");
      }
      const Manifest copied = copy_checkpoint(source, target);
      uint64_t bytes = 0;
      for (const auto& f : copied.files) bytes += f.size;
      push_event({SaveEvent::Kind::kMirrored, target.string(), copied.step, "", seconds_since(start), bytes});
      if (slot == options_.step_prefix && options_.keep_steps >= 1) {
        prune(options_.mirror_root, options_.step_prefix, options_.keep_steps, {}, target);
      }
    } catch (const std::exception& e) {
      ENSTACK_LOG_WARN("copying ", source.string(), " to the mirror ", target.string(), " failed: ", e.what(),
                       " Training goes on; the mirror keeps its previous copy and the next checkpoint is tried.");
      push_event({SaveEvent::Kind::kMirrorFailed, target.string(), 0, e.what(), seconds_since(start), 0});
    }
    lock.lock();
    mirror_busy_.reset();
    idle_.notify_all();
  }
}

void AsyncSaver::push_event(SaveEvent event) {
  std::lock_guard<std::mutex> lock(mutex_);
  events_.push_back(std::move(event));
}

void AsyncSaver::flush() {
  wait_for_snapshots();
  std::unique_lock<std::mutex> lock(mutex_);
  idle_.wait(lock, [&] {
    return copy_queue_.empty() && !copying_ && !handing_over_ && queue_.empty() && !writing_ &&
           mirror_pending_.empty() && !mirror_busy_;
  });
}

std::vector<SaveEvent> AsyncSaver::drain() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<SaveEvent> out;
  out.swap(events_);
  return out;
}

}  // namespace enstack::ckpt
