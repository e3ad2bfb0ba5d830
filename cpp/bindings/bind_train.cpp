// Bindings for enstack::train: metrics and learning-rate schedules.
// Mirrors enstack/train/{metrics,schedule}.h.
#include <torch/python.h>
#include <torch/csrc/utils/pybind.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <nlohmann/json.hpp>

#include <csignal>

#include "bindings.h"
#include "json_bridge.h"
#include "enstack/data/token_store.h"
#include "enstack/model/encoder_classifier.h"
#include "enstack/train/distributed.h"
#include "enstack/train/metrics.h"
#include "enstack/train/schedule.h"
#include "enstack/train/trainer.h"
#include "enstack/util/error.h"

namespace py = pybind11;

namespace enstack::bindings {

namespace {

void bind_trainer(py::module_& m) {
  using train::Trainer;
  // SIGTERM's stop is a KeyboardInterrupt too (notebooks and scripts already handle
  // that), of its own type so that the CLI can exit with 143 as a terminated process does.
  static PyObject* terminated =
      py::register_exception<train::Interrupted>(m, "Terminated", PyExc_KeyboardInterrupt).ptr();
  py::class_<Trainer>(m, "Trainer", "The native training loop; use enstack.Trainer, which builds it from a config.")
      .def(py::init([](std::shared_ptr<model::EncoderClassifier> model, std::shared_ptr<data::TokenStore> train,
                       std::shared_ptr<data::TokenStore> eval, const py::dict& options) {
             return std::make_unique<Trainer>(std::move(model), std::move(train), std::move(eval),
                                              train::TrainerOptions::from_json(json_of(options)));
           }),
           py::arg("model"), py::arg("train"), py::arg("eval"), py::arg("options"))
      .def("fit", [](Trainer& t, bool resume, const py::object& callback, bool take_over_mirror) {
        // The loop runs without the GIL; the callback takes it for each record.
        std::unique_ptr<py::error_already_set> failure;
        Trainer::Callback cb = [&](const nlohmann::json& record) -> bool {
          if (callback.is_none() || failure) return !failure;
          py::gil_scoped_acquire gil;
          try {
            py::object keep_going = callback(python_of(record));
            return keep_going.is_none() || keep_going.cast<bool>();
          } catch (py::error_already_set& e) {
            failure = std::make_unique<py::error_already_set>(std::move(e));
            return false;
          }
        };
        train::FitResult result;
        try {
          py::gil_scoped_release release;
          result = t.fit(resume, cb, take_over_mirror);
        } catch (const train::Interrupted& e) {
          if (failure) throw std::move(*failure);
          PyErr_SetString(e.signal() == SIGTERM ? terminated : PyExc_KeyboardInterrupt, e.what());
          throw py::error_already_set();
        }
        return python_of(result.to_json());
      }, py::arg("resume") = true, py::arg("callback") = py::none(), py::arg("take_over_mirror") = false)
      .def("set_distributed", [](Trainer& t, const py::object& group, const py::object& store, double timeout) {
        if (group.is_none()) {
          t.set_distributed(nullptr);
          return;
        }
        // torch.distributed's Python objects hold the c10d C++ ones: the trainer uses them directly.
        auto process_group = group.cast<c10::intrusive_ptr<c10d::ProcessGroup>>();
        c10::intrusive_ptr<c10d::Store> rendezvous;
        if (!store.is_none()) rendezvous = store.cast<c10::intrusive_ptr<c10d::Store>>();
        t.set_distributed(std::make_shared<train::Distributed>(process_group, rendezvous, timeout));
      }, py::arg("process_group"), py::arg("store") = py::none(), py::arg("timeout_seconds") = 1800.0,
      "Train data-parallel over a torch.distributed process group (every rank calls fit, predict and evaluate "
      "alike); `store` (the rendezvous store) lets a rank's failure end the others at once. None: one process.")
      .def_property_readonly("rank", [](const Trainer& t) { return t.distributed() ? t.distributed()->rank() : 0; })
      .def_property_readonly("world_size",
                             [](const Trainer& t) { return t.distributed() ? t.distributed()->world_size() : 1; })
      .def("predict", [](Trainer& t, const data::TokenStore& store, int64_t batch_size, const std::string& output) {
        if (output != "probabilities" && output != "logits") {
          throw enstack::ConfigError("predict output must be 'probabilities' or 'logits', not '" + output + "'.");
        }
        py::gil_scoped_release release;
        return t.predict(store, batch_size,
                         output == "logits" ? Trainer::Output::kLogits : Trainer::Output::kProbabilities);
      }, py::arg("store"), py::arg("batch_size") = 0, py::arg("output") = "probabilities",
      "Class probabilities (or logits) [N, C] in the store's order; batches are length-sorted.")
      .def("evaluate", [](Trainer& t, const data::TokenStore& store) {
        nlohmann::json out;
        {
          py::gil_scoped_release release;
          out = t.evaluate(store).to_json(t.options().label_names);
        }
        return python_of(out);
      }, py::arg("store"))
      .def_property_readonly("checkpoints_dir", &Trainer::checkpoints_dir);
}

}  // namespace

void bind_train(py::module_& m) {
  bind_trainer(m);
  m.def(
      "compute_metrics",
      [](const torch::Tensor& probabilities, const torch::Tensor& labels, std::optional<int64_t> num_classes,
         const std::vector<std::string>& label_names) {
        ENSTACK_CHECK(probabilities.dim() == 2, DataError, "probabilities must be [N, C], got ",
                      probabilities.sizes(), ".");
        auto probs = probabilities.detach().to(torch::kCPU, torch::kFloat).contiguous();
        auto ys = labels.detach().to(torch::kCPU, torch::kLong).contiguous();
        std::vector<float> p(probs.data_ptr<float>(), probs.data_ptr<float>() + probs.numel());
        std::vector<int64_t> y(ys.data_ptr<int64_t>(), ys.data_ptr<int64_t>() + ys.numel());
        nlohmann::json out;
        {
          py::gil_scoped_release release;
          out = train::compute_metrics(p, y, num_classes.value_or(probs.size(1))).to_json(label_names);
        }
        return python_of(out);
      },
      py::arg("probabilities"), py::arg("labels"), py::arg("num_classes") = py::none(),
      py::arg("label_names") = std::vector<std::string>{},
      "Accuracy, P/R/F1 (per class, macro, weighted), MCC, confusion matrices and OvR ROC-AUC as a dict.");
  m.def(
      "lr_multiplier",
      [](const std::string& schedule, int64_t step, int64_t warmup_steps, int64_t total_steps) {
        return train::lr_multiplier(train::parse_schedule(schedule), step, warmup_steps, total_steps);
      },
      py::arg("schedule"), py::arg("step"), py::arg("warmup_steps"), py::arg("total_steps"));
  m.def("warmup_steps_for", &train::warmup_steps_for, py::arg("warmup_ratio"), py::arg("total_steps"));
  m.def("trainer_options", [](const py::object& options) {
    auto o = train::TrainerOptions::from_json(json_of(options));
    o.validate();
    return python_of(o.to_json());
  }, py::arg("options"),
  "The native trainer's options as it reads them (off values as None), after its checks: unknown keys, types "
  "and values are refused with a ConfigError listing every problem.");
  m.def("default_trainer_options", [] { return python_of(train::TrainerOptions{}.to_json()); },
        "The native trainer's option defaults (off values as None).");
}

}  // namespace enstack::bindings
