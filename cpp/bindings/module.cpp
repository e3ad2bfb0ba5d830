// The only PYBIND11_MODULE: enstack._C, one submodule per area.
#include <torch/python.h>

#include "bindings.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "enstack's C++ core (LibTorch). Import `enstack`, not this module.";
  m.attr("__torch_version__") = ENSTACK_TORCH_VERSION;
  enstack::bindings::bind_util(m);
  auto model = m.def_submodule("model", "RoBERTa/BERT encoder classifiers and Hugging Face weights");
  enstack::bindings::bind_model(model);
  auto data = m.def_submodule("data", "Tokenizers and token stores");
  enstack::bindings::bind_data(data);
  enstack::bindings::bind_token_store(data);
  enstack::bindings::bind_loader(data);
  auto ckpt = m.def_submodule("ckpt", "Crash-consistent checkpoint directories");
  enstack::bindings::bind_ckpt(ckpt);
  auto train = m.def_submodule("train", "Training: metrics and schedules");
  enstack::bindings::bind_train(train);
  enstack::bindings::bind_optim(train);
}
