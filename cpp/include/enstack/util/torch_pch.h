// Precompiled header for the core's translation units: the torch headers they
// share. Keeping it narrow keeps the PCH (and every rebuild) small.
#pragma once

#include <ATen/ATen.h>
#include <torch/nn.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <nlohmann/json.hpp>
