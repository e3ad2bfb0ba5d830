// Data-parallel training over a torch.distributed process group.
//
// Python creates (or reuses) the process group from the torchrun environment (Gloo on
// CPUs, NCCL on GPUs) and hands it, with the rendezvous store, to the trainer. All
// communication is c10d's: this class only decides what is reduced and when.
//
// Gradients: the parameters are cut into buckets (the first 1 MiB, then about bucket_bytes each, in reverse
// registration order, roughly the order backward produces them). During the last
// backward of an accumulation window, a hook on each parameter copies its gradient
// (what earlier micro-batches accumulated plus the incoming one) into its bucket; a
// full bucket's all-reduce (sum) starts at once, in bucket order on every rank, so
// communication overlaps the rest of backward. finish_sync() starts what is left
// (zeros for parameters that got no gradient), waits, and writes the sums back. Each
// rank's loss is its samples' summed loss over the whole window's global sample
// count, so the sum of the ranks' gradients is the single-process gradient of the
// global window.
//
// Failure: a rank that fails records "rank R: what" in the store; a rank waiting on a
// collective polls for it (Gloo) and stops with a DistributedError naming the failing
// rank, so no rank hangs on a dead peer. A collective that does not complete within
// timeout_seconds stops with the same error.
#pragma once

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "enstack/util/error.h"

namespace enstack::train {

// Another rank failed, or a collective timed out; the message names the rank.
class DistributedError : public Error {
 public:
  using Error::Error;
};

class Distributed {
 public:
  // `store` may be null (failures of other ranks are then noticed only by the timeout).
  Distributed(c10::intrusive_ptr<c10d::ProcessGroup> group, c10::intrusive_ptr<c10d::Store> store,
              double timeout_seconds = 1800.0);
  ~Distributed();
  Distributed(const Distributed&) = delete;
  Distributed& operator=(const Distributed&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }

  // Registers the gradient hooks (removed by detach() or the destructor).
  void attach(const std::vector<torch::Tensor>& params, int64_t bucket_bytes = 25 << 20);
  void detach();
  // The next backward is the window's last: reduce its gradients as they become ready.
  void begin_sync();
  // Starts the buckets not started yet, waits for all, writes the sums into .grad.
  void finish_sync();
  // True once a bucket started in the current sync (an out-of-memory retry is then impossible).
  bool communicated() const;
  // Drops a sync that has not communicated (a window retried after out of memory).
  void abandon_sync();

  // Element-wise sum / max over the ranks, in place (blocking).
  void all_reduce(torch::Tensor& tensor, bool max = false);
  // Every rank's tensor (all the same shape and dtype), in rank order.
  std::vector<torch::Tensor> all_gather(const torch::Tensor& tensor);
  void barrier();

  // Seconds finish_sync spent waiting for gradient all-reduces since the last call: the
  // communication backward did not hide.
  double take_exposed_seconds();
  // ENSTACK_DDP_OVERLAP=0 in the environment starts every bucket after backward instead
  // (benchmarks/ddp.py measures what the overlap hides with it).
  bool overlaps() const { return overlap_; }

  // Records this rank's failure for the others (best effort; never throws).
  void report_failure(const std::string& what) noexcept;

 private:
  struct Bucket {
    std::vector<int64_t> params;  // indices into params_
    std::vector<int64_t> offsets;
    torch::Tensor flat;
    int64_t pending = 0;
    bool started = false;
    c10::intrusive_ptr<c10d::Work> work;
  };
  void on_grad(int64_t param, const torch::Tensor& grad);
  void start_ready_buckets_locked();
  void start_bucket_locked(Bucket& b);
  void wait(const c10::intrusive_ptr<c10d::Work>& work, const char* what);
  void check_peer_failure();

  c10::intrusive_ptr<c10d::ProcessGroup> group_;
  c10::intrusive_ptr<c10d::Store> store_;
  std::chrono::milliseconds timeout_;
  int rank_ = 0, world_size_ = 1;
  bool poll_ = true;
  bool overlap_ = true;
  double exposed_seconds_ = 0.0;  // CPU collectives (Gloo): wait by polling, so a peer's failure is noticed
  std::vector<torch::Tensor> params_;
  std::vector<unsigned> hooks_;
  std::vector<int64_t> bucket_of_;
  std::vector<char> filled_;
  std::vector<Bucket> buckets_;
  std::size_t next_bucket_ = 0;
  bool syncing_ = false;
  mutable std::mutex mutex_;
  std::chrono::steady_clock::time_point last_store_check_{};
};

}  // namespace enstack::train
