// Mask-free CPU dropout and its fused forms (see enstack/model/dropout.h).
#include "enstack/model/dropout.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <array>
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

#include "enstack/util/error.h"
#include "enstack/util/rng.h"

namespace enstack::model {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kGrain = 16384;  // elements per parallel task
constexpr int64_t kBlock = 2048;   // mask multipliers generated at a time (stays in L1)

// The two inner loops of mask generation, compiled for AVX-512 and AVX2 as well as
// the baseline on x86-64 (picked at load time): SplitMix64 needs 64-bit multiplies,
// which only vectorise with those, and generating the mask is most of dropout's cost.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ENSTACK_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define ENSTACK_VECTOR_CLONES
#endif

// 16 random bits per element for groups [first, first + count) of 4 elements:
// SplitMix64 output g, stored as it lies in memory (little-endian: element 4g + j
// gets bits 16j..16j+15).
ENSTACK_VECTOR_CLONES void hash_groups(uint64_t seed, uint64_t first, int64_t count, uint16_t* out) {
  for (int64_t k = 0; k < count; ++k) {
    const uint64_t h = util::splitmix64_at(seed, first + static_cast<uint64_t>(k));
    std::memcpy(out + 4 * k, &h, sizeof h);
  }
}

ENSTACK_VECTOR_CLONES void multipliers(const uint16_t* bits, int64_t n, uint16_t threshold, float keep, float* out) {
  for (int64_t k = 0; k < n; ++k) out[k] = bits[k] < threshold ? 0.0f : keep;
}

ENSTACK_VECTOR_CLONES void multipliers(const uint16_t* bits, int64_t n, uint16_t threshold, double keep,
                                       double* out) {
  for (int64_t k = 0; k < n; ++k) out[k] = bits[k] < threshold ? 0.0 : keep;
}

// One row of softmax_dropout's backward in float: out = p * (g*m - sum(g*m*p)).
// Eight independent partial sums let the reduction vectorise (and fix its order).
ENSTACK_VECTOR_CLONES void softmax_dropout_row_backward(const float* p, const float* g, const float* m, int64_t n,
                                                        float* out) {
  constexpr int kLanes = 8;
  float part[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float v = g[j + l] * m[j + l];
      out[j + l] = v;
      part[l] += v * p[j + l];
    }
  }
  for (; j < n; ++j) {
    out[j] = g[j] * m[j];
    part[0] += out[j] * p[j];
  }
  float dot = 0.0f;
  for (float v : part) dot += v;
  for (j = 0; j < n; ++j) out[j] = p[j] * (out[j] - dot);
}

// The same for other dtypes, accumulating in acc_t; float takes the kernel above.
template <typename scalar_t, typename acc_t>
void row_backward(const scalar_t* p, const scalar_t* g, const acc_t* m, int64_t n, scalar_t* out, acc_t* gm) {
  acc_t dot = 0;
  for (int64_t j = 0; j < n; ++j) {
    gm[j] = static_cast<acc_t>(g[j]) * m[j];
    dot += gm[j] * static_cast<acc_t>(p[j]);
  }
  for (int64_t j = 0; j < n; ++j) out[j] = static_cast<scalar_t>(static_cast<acc_t>(p[j]) * (gm[j] - dot));
}

void row_backward(const float* p, const float* g, const float* m, int64_t n, float* out, float* /*gm*/) {
  softmax_dropout_row_backward(p, g, m, n, out);
}

// One call's mask: element i is kept when its 16 bits are >= threshold.
struct Mask {
  uint64_t seed = 0;
  uint16_t threshold = 0;
  double p = 0.0;

  // Drop when the 16 bits are below p * 65536 (at most 65535: p < 1 always keeps some).
  static uint16_t threshold_for(double p) {
    return static_cast<uint16_t>(std::min<long>(std::lround(p * 65536.0), 65535));
  }

  static Mask draw(double p) {
    ENSTACK_CHECK(p >= 0.0 && p < 1.0, ConfigError, "dropout probability must be in [0, 1), got ", p, ".");
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    Mask mask;
    mask.seed = at::check_generator<at::CPUGeneratorImpl>(generator)->random64();
    mask.threshold = threshold_for(p);
    mask.p = p;
    return mask;
  }

  void save(AutogradContext* ctx) const {
    ctx->saved_data["seed"] = static_cast<int64_t>(seed);
    ctx->saved_data["p"] = p;
  }

  static Mask load(AutogradContext* ctx) {
    Mask mask;
    mask.seed = static_cast<uint64_t>(ctx->saved_data["seed"].toInt());
    mask.p = ctx->saved_data["p"].toDouble();
    mask.threshold = threshold_for(mask.p);
    return mask;
  }

  // The multiplier dropout applies to a kept element, in the tensor's own dtype
  // (as torch's dropout scales by 1 / (1 - p) rounded to that dtype).
  template <typename scalar_t>
  at::opmath_type<scalar_t> keep_value() const {
    return static_cast<scalar_t>(1.0 / (1.0 - p));
  }

  // out[k] = (element begin + k kept) ? keep : 0, for k in [0, end - begin).
  template <typename T>
  void fill(int64_t begin, int64_t end, T keep, T* out) const {
    std::array<uint16_t, kBlock + 8> bits;
    for (int64_t b = begin; b < end; b += kBlock) {
      const int64_t e = std::min(end, b + kBlock);
      const int64_t first_group = b >> 2, groups = ((e + 3) >> 2) - first_group;
      hash_groups(seed, static_cast<uint64_t>(first_group), groups, bits.data());
      multipliers(bits.data() + (b & 3), e - b, threshold, keep, out + (b - begin));
    }
  }
};

// Runs body(begin, end, multipliers) over [0, n) in L1-sized blocks, in parallel.
// The mask is a function of the element index alone, so the split does not matter.
template <typename T, typename Body>
void for_mask_blocks(const Mask& mask, int64_t n, T keep, const Body& body) {
  at::parallel_for(0, n, kGrain, [&](int64_t first, int64_t last) {
    std::array<T, kBlock> m;
    for (int64_t b = first; b < last; b += kBlock) {
      const int64_t e = std::min(last, b + kBlock);
      mask.fill(b, e, keep, m.data());
      body(b, e, m.data());
    }
  });
}

// x * mask, for a contiguous CPU tensor.
torch::Tensor apply_mask(const torch::Tensor& x, const Mask& mask) {
  auto in = x.contiguous();
  auto out = torch::empty_like(in, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.scalar_type(), "enstack_dropout", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* src = in.const_data_ptr<scalar_t>();
    auto* dst = out.mutable_data_ptr<scalar_t>();
    for_mask_blocks(mask, in.numel(), mask.keep_value<scalar_t>(), [&](int64_t b, int64_t e, const acc_t* m) {
      for (int64_t i = b; i < e; ++i) dst[i] = static_cast<scalar_t>(static_cast<acc_t>(src[i]) * m[i - b]);
    });
  });
  return out;
}

class DropoutFunction : public torch::autograd::Function<DropoutFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, double p) {
    const auto mask = Mask::draw(p);
    mask.save(ctx);
    return apply_mask(x, mask);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {apply_mask(grads[0], Mask::load(ctx)), torch::Tensor()};
  }
};

class DropoutAddFunction : public torch::autograd::Function<DropoutAddFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& y, const torch::Tensor& residual,
                               double p) {
    const auto mask = Mask::draw(p);
    mask.save(ctx);
    auto in = y.contiguous();
    auto res = residual.contiguous();
    auto out = torch::empty_like(in, at::MemoryFormat::Contiguous);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.scalar_type(), "enstack_dropout_add", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto* src = in.const_data_ptr<scalar_t>();
      const auto* add = res.const_data_ptr<scalar_t>();
      auto* dst = out.mutable_data_ptr<scalar_t>();
      for_mask_blocks(mask, in.numel(), mask.keep_value<scalar_t>(), [&](int64_t b, int64_t e, const acc_t* m) {
        for (int64_t i = b; i < e; ++i) {
          // Rounded as the unfused residual + (y * mask) is.
          const auto dropped = static_cast<acc_t>(static_cast<scalar_t>(static_cast<acc_t>(src[i]) * m[i - b]));
          dst[i] = static_cast<scalar_t>(static_cast<acc_t>(add[i]) + dropped);
        }
      });
    });
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {apply_mask(grads[0], Mask::load(ctx)), grads[0], torch::Tensor()};
  }
};

class SoftmaxDropoutFunction : public torch::autograd::Function<SoftmaxDropoutFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& scores, double p) {
    const auto mask = Mask::draw(p);
    mask.save(ctx);
    auto probs = at::_softmax(scores.contiguous(), -1, /*half_to_float=*/false);
    ctx->save_for_backward({probs});
    return apply_mask(probs, mask);
  }

  // d scores = probs * (g' - sum(g' * probs)) row by row, with g' = grad * mask
  // regenerated in place: the dropout's and the softmax's backward in one pass.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto mask = Mask::load(ctx);
    const auto probs = ctx->get_saved_variables()[0];
    const auto grad = grads[0].contiguous();
    auto out = torch::empty_like(probs, at::MemoryFormat::Contiguous);
    const int64_t cols = probs.size(-1), rows = cols == 0 ? 0 : probs.numel() / cols;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, probs.scalar_type(), "enstack_softmax_dropout_backward", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto* pr = probs.const_data_ptr<scalar_t>();
      const auto* g = grad.const_data_ptr<scalar_t>();
      auto* dst = out.mutable_data_ptr<scalar_t>();
      const acc_t keep = mask.keep_value<scalar_t>();
      const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(cols, 1));
      at::parallel_for(0, rows, grain, [&](int64_t first, int64_t last) {
        std::vector<acc_t> m(static_cast<size_t>(cols)), gm(static_cast<size_t>(cols));
        for (int64_t r = first; r < last; ++r) {
          const int64_t base = r * cols;
          mask.fill(base, base + cols, keep, m.data());
          row_backward(pr + base, g + base, m.data(), cols, dst + base, gm.data());
        }
      });
    });
    return {out, torch::Tensor()};
  }
};

bool use_native(const torch::Tensor& x) { return !x.device().is_cpu(); }

}  // namespace

torch::Tensor fast_dropout(const torch::Tensor& x, double p, bool training) {
  if (!training || p == 0.0) return x;
  if (use_native(x)) return torch::dropout(x, p, /*train=*/true);
  return DropoutFunction::apply(x, p);
}

torch::Tensor dropout_add(const torch::Tensor& y, const torch::Tensor& residual, double p, bool training) {
  if (!training || p == 0.0) return y + residual;
  if (use_native(y) || y.sizes() != residual.sizes() || y.scalar_type() != residual.scalar_type()) {
    return fast_dropout(y, p, training) + residual;
  }
  return DropoutAddFunction::apply(y, residual, p);
}

torch::Tensor softmax_dropout(const torch::Tensor& scores, double p, bool training) {
  if (!training || p == 0.0) return torch::softmax(scores, -1);
  if (use_native(scores)) return torch::dropout(torch::softmax(scores, -1), p, /*train=*/true);
  return SoftmaxDropoutFunction::apply(scores, p);
}

}  // namespace enstack::model
