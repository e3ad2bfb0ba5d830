// Data-parallel communication for the trainer (see enstack/train/distributed.h).
#include "enstack/train/distributed.h"

#include <ATen/DeviceAccelerator.h>
#include <torch/csrc/distributed/c10d/Types.hpp>

#include <cstdlib>
#include <thread>

#include "enstack/util/logging.h"
#include "enstack/util/str_cat.h"

namespace enstack::train {
namespace {
constexpr const char* kFailureKey = "enstack/failure";

// NCCL reduces device tensors only: small CPU values (flags, a loss) travel through the
// current accelerator and come back.
bool needs_device(const torch::Tensor& t, bool cpu_backend) { return !cpu_backend && t.is_cpu(); }
torch::Tensor on_accelerator(const torch::Tensor& t) {
  return t.to(torch::Device(at::accelerator::getAccelerator(true).value(), at::accelerator::getDeviceIndex()));
}
}  // namespace

Distributed::Distributed(c10::intrusive_ptr<c10d::ProcessGroup> group, c10::intrusive_ptr<c10d::Store> store,
                         double timeout_seconds)
    : group_(std::move(group)), store_(std::move(store)),
      timeout_(static_cast<int64_t>(timeout_seconds * 1000.0)) {
  ENSTACK_CHECK(group_, ConfigError, "no process group was given for distributed training");
  rank_ = group_->getRank();
  world_size_ = group_->getSize();
  poll_ = group_->getBackendName() == "gloo";
  const char* overlap = std::getenv("ENSTACK_DDP_OVERLAP");
  overlap_ = !(overlap && std::string(overlap) == "0");
}

double Distributed::take_exposed_seconds() {
  const double out = exposed_seconds_;
  exposed_seconds_ = 0.0;
  return out;
}

Distributed::~Distributed() { detach(); }

void Distributed::attach(const std::vector<torch::Tensor>& params, int64_t bucket_bytes) {
  detach();
  params_ = params;
  bucket_of_.assign(params_.size(), -1);
  filled_.assign(params_.size(), 0);
  buckets_.clear();
  // Reverse registration order: the head's and the last layers' gradients come first.
  int64_t bytes = bucket_bytes;
  for (int64_t i = static_cast<int64_t>(params_.size()) - 1; i >= 0; --i) {
    const auto& p = params_[i];
    if (!p.requires_grad()) continue;
    const int64_t size = p.numel() * static_cast<int64_t>(p.element_size());
    // As DDP: the first bucket is small (1 MiB), so communication starts early in backward.
    const int64_t cap = buckets_.size() <= 1 ? std::min<int64_t>(bucket_bytes, 1 << 20) : bucket_bytes;
    if (buckets_.empty() || bytes + size > cap) {
      buckets_.emplace_back();
      bytes = 0;
    }
    auto& b = buckets_.back();
    b.offsets.push_back(b.params.empty() ? 0 : b.offsets.back() + params_[b.params.back()].numel());
    b.params.push_back(i);
    bucket_of_[i] = static_cast<int64_t>(buckets_.size()) - 1;
    bytes += size;
  }
  for (auto& b : buckets_) {
    const auto& last = params_[b.params.back()];
    b.flat = torch::zeros({b.offsets.back() + last.numel()}, last.options().requires_grad(false));
  }
  for (std::size_t i = 0; i < params_.size(); ++i) {
    if (bucket_of_[i] < 0) {
      hooks_.push_back(~0u);
      continue;
    }
    const auto index = static_cast<int64_t>(i);
    hooks_.push_back(params_[i].register_hook([this, index](const torch::Tensor& grad) {
      on_grad(index, grad);
      return torch::Tensor();
    }));
  }
}

void Distributed::detach() {
  for (std::size_t i = 0; i < hooks_.size() && i < params_.size(); ++i) {
    if (hooks_[i] != ~0u) params_[i].remove_hook(hooks_[i]);
  }
  hooks_.clear();
  params_.clear();
}

void Distributed::begin_sync() {
  std::lock_guard<std::mutex> lock(mutex_);
  syncing_ = true;
  next_bucket_ = 0;
  std::fill(filled_.begin(), filled_.end(), 0);
  for (auto& b : buckets_) {
    b.pending = static_cast<int64_t>(b.params.size());
    b.started = false;
    b.work.reset();
  }
}

bool Distributed::communicated() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return syncing_ && next_bucket_ > 0;
}

void Distributed::abandon_sync() {
  std::lock_guard<std::mutex> lock(mutex_);
  ENSTACK_ASSERT(next_bucket_ == 0 || !syncing_, "a sync that communicated cannot be abandoned");
  syncing_ = false;
}

void Distributed::on_grad(int64_t param, const torch::Tensor& grad) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!syncing_ || filled_[param]) return;
  auto& b = buckets_[bucket_of_[param]];
  const auto& p = params_[param];
  std::size_t slot = 0;
  while (b.params[slot] != param) ++slot;
  auto view = b.flat.narrow(0, b.offsets[slot], p.numel());
  // The hook runs before the incoming gradient is accumulated into .grad.
  if (p.grad().defined()) {
    torch::add_out(view, p.grad().reshape({-1}), grad.reshape({-1}));
  } else {
    view.copy_(grad.reshape({-1}));
  }
  filled_[param] = 1;
  if (--b.pending == 0 && overlap_) start_ready_buckets_locked();
}

void Distributed::start_ready_buckets_locked() {
  // In bucket order on every rank: collectives must be issued in the same order.
  while (next_bucket_ < buckets_.size() && buckets_[next_bucket_].pending == 0) {
    start_bucket_locked(buckets_[next_bucket_]);
    ++next_bucket_;
  }
}

void Distributed::start_bucket_locked(Bucket& b) {
  std::vector<torch::Tensor> tensors{b.flat};
  c10d::AllreduceOptions options;
  options.reduceOp = c10d::ReduceOp::SUM;
  b.work = group_->allreduce(tensors, options);
  b.started = true;
}

void Distributed::finish_sync() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ENSTACK_ASSERT(syncing_, "finish_sync without begin_sync");
    for (auto& b : buckets_) {
      if (b.pending == 0) continue;
      for (std::size_t slot = 0; slot < b.params.size(); ++slot) {
        const int64_t i = b.params[slot];
        if (filled_[i]) continue;
        const auto& p = params_[i];
        auto view = b.flat.narrow(0, b.offsets[slot], p.numel());
        if (p.grad().defined()) {  // accumulated by earlier micro-batches, none in the last one
          view.copy_(p.grad().reshape({-1}));
        } else {
          view.zero_();
        }
        filled_[i] = 1;
      }
      b.pending = 0;
    }
    start_ready_buckets_locked();
    syncing_ = false;
  }
  const auto start = std::chrono::steady_clock::now();
  for (auto& b : buckets_) wait(b.work, "gradient all-reduce");
  exposed_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (auto& b : buckets_) {
    for (std::size_t slot = 0; slot < b.params.size(); ++slot) {
      auto& p = params_[b.params[slot]];
      auto sum = b.flat.narrow(0, b.offsets[slot], p.numel()).view(p.sizes());
      if (p.grad().defined()) {
        p.mutable_grad().copy_(sum);
      } else {
        p.mutable_grad() = sum.clone();
      }
    }
  }
}

void Distributed::all_reduce(torch::Tensor& tensor, bool max) {
  const bool move = needs_device(tensor, poll_);
  std::vector<torch::Tensor> tensors{move ? on_accelerator(tensor) : tensor};
  c10d::AllreduceOptions options;
  options.reduceOp = max ? c10d::ReduceOp::MAX : c10d::ReduceOp::SUM;
  wait(group_->allreduce(tensors, options), "all-reduce");
  if (move) tensor.copy_(tensors[0]);
}

std::vector<torch::Tensor> Distributed::all_gather(const torch::Tensor& tensor) {
  const bool move = needs_device(tensor, poll_);
  std::vector<torch::Tensor> inputs{move ? on_accelerator(tensor).contiguous() : tensor.contiguous()};
  std::vector<std::vector<torch::Tensor>> outputs(1);
  for (int r = 0; r < world_size_; ++r) outputs[0].push_back(torch::empty_like(inputs[0]));
  wait(group_->allgather(outputs, inputs), "all-gather");
  if (move) {
    for (auto& t : outputs[0]) t = t.cpu();
  }
  return outputs[0];
}

void Distributed::barrier() {
  auto t = torch::zeros({1}, torch::kInt);
  all_reduce(t);
}

void Distributed::report_failure(const std::string& what) noexcept {
  if (!store_) return;
  try {
    const std::string text = util::str_cat("rank ", rank_, ": ", what);
    store_->set(kFailureKey, std::vector<uint8_t>(text.begin(), text.end()));
  } catch (...) {  // the store may be gone with the failing peer; the timeout still ends the others
  }
}

void Distributed::check_peer_failure() {
  if (!store_) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_store_check_ < std::chrono::milliseconds(50)) return;
  last_store_check_ = now;
  bool failed = false;
  try {
    failed = store_->check({kFailureKey});
  } catch (const std::exception&) {
    return;  // the store's host may be gone; the timeout decides
  }
  if (!failed) return;
  const auto bytes = store_->get(kFailureKey);
  throw DistributedError(util::str_cat("distributed training stopped: ", std::string(bytes.begin(), bytes.end()),
                                       " (this is rank ", rank_, ", which stops too). Fix the cause and relaunch: "
                                       "the run resumes from its newest valid checkpoint."));
}

void Distributed::wait(const c10::intrusive_ptr<c10d::Work>& work, const char* what) {
  if (!work) return;
  if (poll_) {
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    while (!work->isCompleted()) {
      check_peer_failure();
      if (std::chrono::steady_clock::now() > deadline) {
        throw DistributedError(util::str_cat(
            "rank ", rank_, " waited ", timeout_.count() / 1000.0, " s for the ", what, ", which the other ranks did not "
            "join: one of them is stuck or gone. Relaunch; the run resumes from its newest valid checkpoint."));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  try {
    work->wait();
  } catch (const std::exception& e) {
    check_peer_failure();
    throw DistributedError(util::str_cat("rank ", rank_, ": the ", what, " failed: ", e.what()));
  }
}

}  // namespace enstack::train
