// Bindings for enstack::train: metrics and learning-rate schedules.
// Mirrors enstack/train/{metrics,schedule}.h.
#include <torch/python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "enstack/train/metrics.h"
#include "enstack/train/schedule.h"
#include "enstack/util/error.h"

namespace py = pybind11;

namespace enstack::bindings {

void bind_train(py::module_& m) {
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
        std::string text;
        {
          py::gil_scoped_release release;
          text = train::compute_metrics(p, y, num_classes.value_or(probs.size(1))).to_json(label_names).dump();
        }
        return py::module_::import("json").attr("loads")(text);
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
}

}  // namespace enstack::bindings
