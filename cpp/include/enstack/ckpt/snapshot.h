// Snapshot: a checkpoint held in host memory, every file's final bytes, so that
// another thread can write it while training goes on.
//
// Tensors are copied into buffers laid out as the final safetensors files. Buffers
// come from a BufferPool and go back to it once written, so after the first save
// no memory is allocated or page-faulted in. On CUDA the buffers are pinned and
// the device->host copies asynchronous, with one synchronization. CPU tensors can
// be added *deferred*: the snapshot keeps references and the copy is made later
// by the saver's copy thread (fill_deferred), while the next micro-batches run;
// the trainer only has to wait for it before the tensors change (the next
// optimizer step), which is what makes a CPU save nearly stall-free.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace enstack::ckpt {

// Reusable byte buffers (uint8 CPU tensors, pinned when asked).
class BufferPool {
 public:
  // A buffer of at least `bytes` bytes (a reused one when one is large enough).
  torch::Tensor take(uint64_t bytes, bool pinned);
  void give(torch::Tensor buffer);
  uint64_t pooled_bytes() const;

 private:
  mutable std::mutex mutex_;
  std::vector<torch::Tensor> free_;
};

struct SnapshotFile {
  std::string name;
  torch::Tensor buffer;  // uint8, holds at least `size` bytes
  uint64_t size = 0;
  bool reusable = false;  // a tensor buffer, worth handing back to the pool
  const std::byte* data() const { return static_cast<const std::byte*>(buffer.data_ptr()); }
};

class Snapshot {
 public:
  Snapshot(int64_t step, std::string kind, nlohmann::json extra = nlohmann::json::object())
      : step_(step), kind_(std::move(kind)), extra_(std::move(extra)) {}

  // Copies `tensors` (any device) into a buffer laid out as a safetensors file.
  // `pool` may be null (a fresh buffer); device copies are synchronized before returning.
  void add_tensors(const std::string& name, const std::map<std::string, torch::Tensor>& tensors,
                   BufferPool* pool = nullptr,
                   const std::map<std::string, std::string>& metadata = {{"format", "pt"}});
  // As add_tensors, but for CPU tensors the copy is left to fill_deferred(); the
  // tensors must not change until it has run. Device tensors are copied at once.
  void add_tensors_deferred(const std::string& name, const std::map<std::string, torch::Tensor>& tensors,
                            BufferPool* pool,
                            const std::map<std::string, std::string>& metadata = {{"format", "pt"}});
  bool has_deferred() const { return !deferred_.empty(); }
  void fill_deferred();  // copies the deferred tensors into their buffers (any thread)
  void add_json(const std::string& name, const nlohmann::json& value);
  void add_bytes(const std::string& name, const std::string& bytes);

  int64_t step() const { return step_; }
  const std::string& kind() const { return kind_; }
  const nlohmann::json& extra() const { return extra_; }
  const std::vector<SnapshotFile>& files() const { return files_; }
  uint64_t bytes() const;
  // Hands the buffers back to `pool` (after the snapshot has been written).
  void recycle(BufferPool& pool);

 private:
  int64_t step_;
  std::string kind_;
  nlohmann::json extra_;
  std::vector<SnapshotFile> files_;
  struct Deferred;
  std::vector<std::shared_ptr<Deferred>> deferred_;
};

}  // namespace enstack::ckpt
