// Dropout for CPU training that never stores a mask.
//
// Same semantics as torch.nn.functional.dropout (each element kept with
// probability 1 - p and scaled by 1 / (1 - p)), a different random stream. Each
// call takes one 64-bit seed from torch's default CPU generator (so
// torch.manual_seed and a checkpointed generator state reproduce it exactly);
// element i keeps when 16 bits of SplitMix64(seed) output i / 4 are >= p * 65536
// (so p is rounded to a multiple of 1/65536). The stream is counter-based: any
// element's bits can be computed directly, so
//
// * the mask does not depend on the thread count or on how work is split;
// * nothing is saved for backward but the seed: backward recomputes the mask
//   while it multiplies the gradient (one pass each way, no mask tensor in memory);
// * a consumer can be fused with it: dropout_add (residual + dropout(y)) and
//   softmax_dropout (dropout(softmax(scores)), whose backward does the dropout's
//   and the softmax's backward in one row-wise pass).
//
// Why: torch's CPU dropout draws every element with bernoulli_ from mt19937 and
// keeps a mask as large as the activation; on a small RoBERTa it took a quarter
// of a training step, and the attention-probability mask is [batch, heads, seq,
// seq]. On CUDA torch's fused dropout is already fast and is used as is.
#pragma once

#include <torch/types.h>

namespace enstack::model {

// dropout(x).
torch::Tensor fast_dropout(const torch::Tensor& x, double p, bool training);

// residual + dropout(y), in one pass (same shape and dtype; otherwise the unfused form).
torch::Tensor dropout_add(const torch::Tensor& y, const torch::Tensor& residual, double p, bool training);

// dropout(softmax(scores, dim=-1)). The softmax is torch's; backward is one fused pass.
torch::Tensor softmax_dropout(const torch::Tensor& scores, double p, bool training);

}  // namespace enstack::model
