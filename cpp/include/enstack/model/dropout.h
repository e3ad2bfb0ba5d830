// Dropout with a fast mask generator for CPU training.
//
// Same semantics as torch.nn.functional.dropout (each element kept with
// probability 1 - p and scaled by 1 / (1 - p)), a different random stream: the
// mask comes from xoshiro256** (16 bits per element, so p is rounded to a
// multiple of 1/65536), seeded by one 64-bit draw from torch's default CPU
// generator per call, so torch.manual_seed and a checkpointed generator state
// reproduce it exactly. The tensor is cut into fixed 64 Ki-element chunks, each
// with its own stream, so the mask does not depend on the thread count.
//
// Why: torch's CPU bernoulli_ draws every element from mt19937 one at a time;
// it took 26% of a training step of a small RoBERTa (4 dropout sites per layer).
// On CUDA torch's fused dropout is already fast and is used as is.
#pragma once

#include <torch/types.h>

namespace enstack::model {

torch::Tensor fast_dropout(const torch::Tensor& x, double p, bool training);

// The {0, 1 / (1 - p)} mask dropout multiplies by, with x's shape and dtype (CPU only).
torch::Tensor dropout_mask(const torch::Tensor& like, double p);

}  // namespace enstack::model
