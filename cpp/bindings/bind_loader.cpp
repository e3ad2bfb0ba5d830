// Bindings for enstack::data::{EpochPlan, Loader}.
// Mirrors enstack/data/{epoch_plan,loader}.h.
#include <torch/python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "enstack/data/epoch_plan.h"
#include "enstack/data/loader.h"
#include "enstack/data/token_store.h"

namespace py = pybind11;

namespace enstack::bindings {
namespace {

using data::EpochPlan;
using data::Loader;

std::shared_ptr<EpochPlan> make_plan(int64_t num_examples, int64_t batch_size, uint64_t seed, int64_t epoch,
                                     bool shuffle, bool group_by_length, const py::object& lengths) {
  data::EpochPlanConfig config;
  config.num_examples = num_examples;
  config.batch_size = batch_size;
  config.seed = seed;
  config.epoch = epoch;
  config.shuffle = shuffle;
  config.group_by_length = group_by_length;
  std::vector<int64_t> values;
  if (!lengths.is_none()) {
    auto t = py::module_::import("torch").attr("as_tensor")(lengths).cast<torch::Tensor>();
    t = t.to(torch::kLong).contiguous().view(-1);
    values.assign(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
  }
  py::gil_scoped_release release;
  return std::make_shared<EpochPlan>(config, values);
}

py::list windows_list(const EpochPlan& plan, int64_t grad_accum) {
  py::list out;
  for (const auto& w : plan.windows(grad_accum)) {
    py::dict d;
    d["index"] = w.index;
    d["first_batch"] = w.first_batch;
    d["end_batch"] = w.end_batch;
    d["num_samples"] = w.num_samples;
    out.append(d);
  }
  return out;
}

py::dict next_batch(Loader& loader) {
  std::optional<data::Batch> batch;
  {
    py::gil_scoped_release release;
    batch = loader.next();
  }
  if (!batch) throw py::stop_iteration();
  py::dict d;
  d["index"] = batch->index;
  d["input_ids"] = batch->input_ids;
  d["attention_mask"] = batch->attention_mask;
  d["labels"] = batch->labels;
  d["real_tokens"] = batch->real_tokens;
  return d;
}

void bind_epoch_plan(py::module_& m) {
  py::class_<EpochPlan, std::shared_ptr<EpochPlan>>(m, "EpochPlan",
      "The batch order of one epoch, a pure function of (seed, epoch, dataset, batch_size).")
      .def(py::init(&make_plan), py::arg("num_examples"), py::arg("batch_size"), py::arg("seed"), py::arg("epoch"),
           py::arg("shuffle") = true, py::arg("group_by_length") = false, py::arg("lengths") = py::none())
      .def_property_readonly("num_batches", &EpochPlan::num_batches)
      .def_property_readonly("num_examples", &EpochPlan::num_examples)
      .def_property_readonly("batch_size", &EpochPlan::batch_size)
      .def_property_readonly("fingerprint", &EpochPlan::fingerprint)
      .def_property_readonly("order", [](const EpochPlan& p) { return torch::tensor(p.order(), torch::kLong); },
                             "The epoch's example order as a LongTensor (batch 0 first).")
      .def("__len__", &EpochPlan::num_batches)
      .def("batch", &EpochPlan::batch, py::arg("k"), "Example indices of batch k.")
      .def("batch_size_of", &EpochPlan::batch_size_of, py::arg("k"))
      .def("windows", &windows_list, py::arg("grad_accum"),
           "Optimizer-step windows: dicts {index, first_batch, end_batch, num_samples}.")
      .def("__repr__", [](const EpochPlan& p) {
        return "EpochPlan(" + p.config().to_string() + ", num_batches=" + std::to_string(p.num_batches()) +
               ", fingerprint=" + p.fingerprint() + ")";
      });
}

void bind_loader_class(py::module_& m) {
  m.def("padded_length", &Loader::padded_length, py::arg("longest"), py::arg("multiple") = 8,
        py::arg("max_length") = 0,
        "The length the loader pads a batch to whose longest example has `longest` tokens: rounded up to "
        "`multiple`, capped at `max_length` (0: no cap).");
  py::class_<Loader>(m, "Loader",
      "Iterates the padded batches [start_batch, end) of an EpochPlan over a TokenStore, prepared by a background "
      "thread. Yields dicts {index, input_ids, attention_mask, labels, real_tokens}.")
      .def(py::init([](std::shared_ptr<data::TokenStore> store, std::shared_ptr<EpochPlan> plan, int64_t start_batch,
                       int64_t pad_id, int64_t max_length, int64_t pad_to_multiple_of, int64_t queue_capacity,
                       const py::object& device) {
             data::LoaderOptions options;
             options.start_batch = start_batch;
             options.pad_id = pad_id;
             options.max_length = max_length;
             options.pad_to_multiple_of = pad_to_multiple_of;
             options.queue_capacity = queue_capacity;
             options.device = torch::Device(py::str(device).cast<std::string>());
             return std::make_unique<Loader>(std::move(store), std::move(plan), options);
           }),
           py::arg("store"), py::arg("plan"), py::arg("start_batch") = 0, py::arg("pad_id") = 1,
           py::arg("max_length") = 0, py::arg("pad_to_multiple_of") = 8, py::arg("queue_capacity") = 4,
           py::arg("device") = "cpu")
      .def("__iter__", [](Loader& self) -> Loader& { return self; }, py::return_value_policy::reference_internal)
      .def("__next__", &next_batch)
      .def("__repr__", [](const Loader& l) { return "Loader(" + l.options().to_string() + ")"; });
}

}  // namespace

void bind_loader(py::module_& m) {
  bind_epoch_plan(m);
  bind_loader_class(m);
}

}  // namespace enstack::bindings
