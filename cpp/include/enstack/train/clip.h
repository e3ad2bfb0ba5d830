// Gradient-norm clipping with the math of torch.nn.utils.clip_grad_norm_
// (L2, foreach kernels, coefficient min(max_norm / (norm + 1e-6), 1)).
#pragma once

#include <torch/types.h>

#include <vector>

namespace enstack::train {

// Returns the total L2 norm of the parameters' grads before clipping (0 when
// none has a grad) and, when max_norm > 0, scales the grads in place so the
// norm is at most max_norm. max_norm <= 0 only measures. A non-finite norm is
// returned as is (the grads are then scaled by NaN or 0, as torch does).
double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);

}  // namespace enstack::train
