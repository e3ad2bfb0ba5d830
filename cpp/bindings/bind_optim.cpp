// Bindings for the optimizer side of enstack::train: AdamW, GradScaler and
// clip_grad_norm, SwaAverage. Mirrors enstack/train/{adamw,grad_scaler,clip,swa}.h.
#include <torch/python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "enstack/train/adamw.h"
#include "enstack/train/clip.h"
#include "enstack/train/grad_scaler.h"
#include "enstack/train/swa.h"

namespace py = pybind11;

namespace enstack::bindings {
namespace {

py::object to_python(const nlohmann::json& j) { return py::module_::import("json").attr("loads")(j.dump()); }

nlohmann::json from_python(const py::object& o) {
  return nlohmann::json::parse(py::module_::import("json").attr("dumps")(o).cast<std::string>());
}

torch::Tensor or_undefined(const std::optional<torch::Tensor>& t) { return t.value_or(torch::Tensor()); }

void bind_adamw(py::module_& m) {
  using train::AdamW;
  py::class_<AdamW>(m, "AdamW", "AdamW with transformers' Trainer decay groups (enstack/train/adamw.h).")
      .def(py::init([](AdamW::NamedParameters params, double lr, double weight_decay,
                       std::pair<double, double> betas, double eps, bool fused) {
             train::AdamWOptions o;
             o.lr = lr;
             o.weight_decay = weight_decay;
             o.beta1 = betas.first;
             o.beta2 = betas.second;
             o.eps = eps;
             o.fused = fused;
             return std::make_unique<AdamW>(std::move(params), o);
           }),
           py::arg("named_params"), py::arg("lr") = 5e-5, py::arg("weight_decay") = 0.0,
           py::arg("betas") = std::make_pair(0.9, 0.999), py::arg("eps") = 1e-8, py::arg("fused") = true)
      .def(
          "step",
          [](AdamW& self, std::optional<double> lr, const std::optional<torch::Tensor>& grad_scale,
             const std::optional<torch::Tensor>& found_inf) {
            const auto scale = or_undefined(grad_scale);
            const auto inf = or_undefined(found_inf);
            py::gil_scoped_release release;
            self.step(lr.value_or(self.options().lr), scale, inf);
          },
          py::arg("lr") = py::none(), py::arg("grad_scale") = py::none(), py::arg("found_inf") = py::none())
      .def("zero_grad", &AdamW::zero_grad)
      .def("state_tensors", &AdamW::state_tensors)
      .def("load_state_tensors", &AdamW::load_state_tensors, py::arg("state"))
      .def("hyperparameters", [](const AdamW& self) { return to_python(self.hyperparameters()); })
      .def_property_readonly("implementation", &AdamW::implementation)
      .def_property_readonly("decay_parameter_names", &AdamW::decay_parameter_names)
      .def_property_readonly("no_decay_parameter_names", &AdamW::no_decay_parameter_names)
      .def("__repr__", [](const AdamW& self) { return "AdamW(" + self.options().to_string() + ")"; });
  m.def("applies_weight_decay", &train::applies_weight_decay, py::arg("name"));
}

void bind_grad_scaler(py::module_& m) {
  using train::GradScaler;
  py::class_<GradScaler>(m, "GradScaler", "torch.amp.GradScaler semantics in C++ (enstack/train/grad_scaler.h).")
      .def(py::init([](double init_scale, double growth_factor, double backoff_factor, int64_t growth_interval,
                       bool enabled) {
             return std::make_unique<GradScaler>(
                 train::GradScalerOptions{init_scale, growth_factor, backoff_factor, growth_interval, enabled});
           }),
           py::arg("init_scale") = 65536.0, py::arg("growth_factor") = 2.0, py::arg("backoff_factor") = 0.5,
           py::arg("growth_interval") = 2000, py::arg("enabled") = true)
      .def("scale", &GradScaler::scale, py::arg("loss"))
      .def("unscale", &GradScaler::unscale, py::arg("grads"))
      .def_property_readonly("found_inf", &GradScaler::found_inf)
      .def("step_was_skipped", &GradScaler::step_was_skipped)
      .def("update", &GradScaler::update)
      .def("get_scale", &GradScaler::get_scale)
      .def_property_readonly("growth_tracker", &GradScaler::growth_tracker)
      .def_property_readonly("enabled", &GradScaler::enabled)
      .def("state_tensors", &GradScaler::state_tensors)
      .def("load_state_tensors", &GradScaler::load_state_tensors, py::arg("state"))
      .def("state_json", [](const GradScaler& self) { return to_python(self.state_json()); })
      .def("load_state_json", [](GradScaler& self, const py::object& s) { self.load_state_json(from_python(s)); },
           py::arg("state"))
      .def("__repr__", [](const GradScaler& self) { return "GradScaler(" + self.options().to_string() + ")"; });
}


void bind_swa(py::module_& m) {
  using train::SwaAverage;
  py::class_<SwaAverage>(m, "SwaAverage",
      "Running SWA average of the floating-point parameters, as torch.optim.swa_utils.AveragedModel "
      "(enstack/train/swa.h).")
      .def(py::init<const std::vector<std::pair<std::string, torch::Tensor>>&>(), py::arg("named_params"))
      .def("update", &SwaAverage::update, "Folds the parameters' current values into the average.")
      .def_property_readonly("count", &SwaAverage::count)
      .def("state_tensors", &SwaAverage::state_tensors)
      .def("load_state_tensors", &SwaAverage::load_state_tensors, py::arg("state"), py::arg("count"))
      .def("swap_with_parameters", &SwaAverage::swap_with_parameters);
}

}  // namespace

void bind_optim(py::module_& m) {
  bind_adamw(m);
  bind_grad_scaler(m);
  bind_swa(m);
  m.def(
      "clip_grad_norm",
      [](const std::vector<torch::Tensor>& params, double max_norm) {
        py::gil_scoped_release release;
        return train::clip_grad_norm(params, max_norm);
      },
      py::arg("params"), py::arg("max_norm"),
      "Total L2 norm of the grads before clipping; scales them to max_norm when max_norm > 0.");
}

}  // namespace enstack::bindings
