// Snapshots and their buffer pool (see enstack/ckpt/snapshot.h).
#include "enstack/ckpt/snapshot.h"

#include <ATen/DeviceAccelerator.h>

#include <algorithm>
#include <cstring>

#include "enstack/model/safetensors.h"

namespace enstack::ckpt {

torch::Tensor BufferPool::take(uint64_t bytes, bool pinned) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // The smallest free buffer that fits, so a small file never takes the big one.
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (static_cast<uint64_t>(it->numel()) >= bytes && it->is_pinned() == pinned &&
          (best == free_.end() || it->numel() < best->numel())) {
        best = it;
      }
    }
    if (best != free_.end()) {
      torch::Tensor out = std::move(*best);
      free_.erase(best);
      return out;
    }
  }
  return torch::empty({static_cast<int64_t>(bytes)}, torch::TensorOptions().dtype(torch::kUInt8).pinned_memory(pinned));
}

void BufferPool::give(torch::Tensor buffer) {
  if (!buffer.defined()) return;
  std::lock_guard<std::mutex> lock(mutex_);
  free_.push_back(std::move(buffer));
}

uint64_t BufferPool::pooled_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  uint64_t total = 0;
  for (const auto& b : free_) total += static_cast<uint64_t>(b.numel());
  return total;
}

void Snapshot::add_tensors(const std::string& name, const std::map<std::string, torch::Tensor>& tensors,
                           BufferPool* pool, const std::map<std::string, std::string>& metadata) {
  const model::SafetensorsImage image(tensors, metadata, name);
  bool on_device = false;
  for (const auto& [key, t] : tensors) on_device = on_device || t.is_cuda();
  SnapshotFile file;
  file.name = name;
  file.size = image.size();
  file.reusable = true;
  file.buffer = pool != nullptr
                    ? pool->take(file.size, on_device)
                    : torch::empty({static_cast<int64_t>(file.size)},
                                   torch::TensorOptions().dtype(torch::kUInt8).pinned_memory(on_device));
  image.fill(static_cast<std::byte*>(file.buffer.data_ptr()), /*non_blocking=*/on_device);
  if (on_device) {
    // The copies were queued on each device's current stream; wait for them once.
    std::vector<c10::DeviceIndex> synced;
    for (const auto& [key, t] : tensors) {
      if (t.is_cuda() && std::find(synced.begin(), synced.end(), t.get_device()) == synced.end()) {
        at::accelerator::synchronizeDevice(t.get_device());
        synced.push_back(t.get_device());
      }
    }
  }
  files_.push_back(std::move(file));
}

struct Snapshot::Deferred {
  std::size_t file_index;
  model::SafetensorsImage image;
};

void Snapshot::add_tensors_deferred(const std::string& name, const std::map<std::string, torch::Tensor>& tensors,
                                    BufferPool* pool, const std::map<std::string, std::string>& metadata) {
  for (const auto& [key, t] : tensors) {
    if (!t.is_cpu()) return add_tensors(name, tensors, pool, metadata);
  }
  model::SafetensorsImage image(tensors, metadata, name);
  SnapshotFile file;
  file.name = name;
  file.size = image.size();
  file.reusable = true;
  file.buffer = pool != nullptr ? pool->take(file.size, false)
                                : torch::empty({static_cast<int64_t>(file.size)}, torch::kUInt8);
  files_.push_back(std::move(file));
  deferred_.push_back(std::make_shared<Deferred>(Deferred{files_.size() - 1, std::move(image)}));
}

void Snapshot::fill_deferred() {
  for (const auto& d : deferred_) {
    d->image.fill(static_cast<std::byte*>(files_[d->file_index].buffer.data_ptr()));
  }
  deferred_.clear();  // drops the references to the live tensors
}

void Snapshot::add_bytes(const std::string& name, const std::string& bytes) {
  SnapshotFile file;
  file.name = name;
  file.size = bytes.size();
  file.buffer = torch::empty({static_cast<int64_t>(bytes.size())}, torch::kUInt8);
  if (!bytes.empty()) std::memcpy(file.buffer.data_ptr(), bytes.data(), bytes.size());
  files_.push_back(std::move(file));
}

void Snapshot::add_json(const std::string& name, const nlohmann::json& value) { add_bytes(name, value.dump(2) + "\n"); }

uint64_t Snapshot::bytes() const {
  uint64_t total = 0;
  for (const auto& f : files_) total += f.size;
  return total;
}

void Snapshot::recycle(BufferPool& pool) {
  for (auto& f : files_) {
    if (f.reusable) pool.give(std::move(f.buffer));
  }
  files_.clear();
}

}  // namespace enstack::ckpt
