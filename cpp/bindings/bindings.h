// Declarations of the per-area binding functions called by module.cpp.
#pragma once

#include <pybind11/pybind11.h>

namespace enstack::bindings {

void bind_util(pybind11::module_& m);
void bind_ckpt(pybind11::module_& m);
void bind_model(pybind11::module_& m);
void bind_data(pybind11::module_& m);         // tokenizers
void bind_token_store(pybind11::module_& m);  // token stores, SentencePiece training
void bind_loader(pybind11::module_& m);       // epoch plans, the batch loader
void bind_train(pybind11::module_& m);
void bind_optim(pybind11::module_& m);        // AdamW, GradScaler, clip_grad_norm (in the train submodule)

}  // namespace enstack::bindings
