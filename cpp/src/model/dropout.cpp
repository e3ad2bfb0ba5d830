// Fast CPU dropout masks (see enstack/model/dropout.h).
#include "enstack/model/dropout.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <mutex>

#include "enstack/util/error.h"
#include "enstack/util/rng.h"

namespace enstack::model {
namespace {

constexpr int64_t kChunk = int64_t{1} << 16;

uint64_t draw_seed() {
  auto generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  return at::check_generator<at::CPUGeneratorImpl>(generator)->random64();
}

}  // namespace

torch::Tensor dropout_mask(const torch::Tensor& like, double p) {
  ENSTACK_CHECK(p >= 0.0 && p < 1.0, ConfigError, "dropout probability must be in [0, 1), got ", p, ".");
  auto mask = torch::empty(like.sizes(), like.options().device(torch::kCPU).memory_format(at::MemoryFormat::Contiguous));
  const uint64_t seed = draw_seed();
  const auto threshold = static_cast<uint32_t>(std::lround(p * 65536.0));  // drop when r < threshold
  const double scale = 1.0 / (1.0 - p);
  const int64_t n = mask.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, mask.scalar_type(), "dropout_mask", [&] {
    auto* out = mask.data_ptr<scalar_t>();
    const auto keep = static_cast<scalar_t>(scale);
    const auto zero = static_cast<scalar_t>(0);
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
      for (int64_t c = first; c < last; ++c) {
        util::Rng rng(util::mix_seed(seed, static_cast<uint64_t>(c)));
        const int64_t begin = c * kChunk, end = std::min(n, begin + kChunk);
        for (int64_t i = begin; i < end; i += 4) {
          uint64_t bits = rng.next_u64();
          for (int64_t j = i; j < std::min(end, i + 4); ++j, bits >>= 16) {
            out[j] = (bits & 0xFFFFu) < threshold ? zero : keep;
          }
        }
      }
    });
  });
  return mask;
}

torch::Tensor fast_dropout(const torch::Tensor& x, double p, bool training) {
  if (!training || p == 0.0) return x;
  if (!x.device().is_cpu()) return torch::dropout(x, p, /*train=*/true);
  return x * dropout_mask(x, p);
}

}  // namespace enstack::model
