// Bindings for enstack::ckpt: crash-consistent checkpoint directories.
// Mirrors enstack/ckpt/checkpoint_dir.h.
#include <torch/python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <nlohmann/json.hpp>

#include "bindings.h"
#include "json_bridge.h"
#include "enstack/ckpt/checkpoint_dir.h"

namespace py = pybind11;

namespace enstack::bindings {
void bind_ckpt(py::module_& m) {
  using ckpt::CheckpointWriter;
  py::class_<CheckpointWriter>(m, "CheckpointWriter",
      "Writes a checkpoint directory crash-consistently: files into a temporary sibling, "
      "MANIFEST.json last, then a rename into place.")
      .def(py::init<std::filesystem::path>(), py::arg("final_dir"))
      .def("add_tensors",
           [](CheckpointWriter& w, const std::string& name, const std::map<std::string, torch::Tensor>& tensors) {
             py::gil_scoped_release release;
             w.add_tensors(name, tensors);
           },
           py::arg("name"), py::arg("tensors"))
      .def("add_json", [](CheckpointWriter& w, const std::string& name, const py::object& value) {
        w.add_json(name, json_of(value));
      }, py::arg("name"), py::arg("value"))
      .def("add_bytes", [](CheckpointWriter& w, const std::string& name, const py::bytes& data) {
        w.add_bytes(name, std::string(data));
      }, py::arg("name"), py::arg("data"))
      .def("commit", [](CheckpointWriter& w, int64_t step, const std::string& kind, const py::object& extra) {
        auto extra_json = extra.is_none() ? nlohmann::json::object() : json_of(extra);
        py::gil_scoped_release release;
        return w.commit(step, kind, extra_json);
      }, py::arg("step"), py::arg("kind") = "full", py::arg("extra") = py::none())
      .def_property_readonly("temp_dir", &CheckpointWriter::temp_dir);

  m.def("verify", [](const std::filesystem::path& dir) {
    ckpt::Manifest manifest;
    {
      py::gil_scoped_release release;
      manifest = ckpt::verify(dir);
    }
    return python_of(manifest.to_json());
  }, py::arg("dir"), "Checks MANIFEST.json and every file's size and checksum; returns the manifest.");
  m.def("list_by_step", &ckpt::list_by_step, py::arg("root"), py::arg("prefix") = "");
  m.def("latest_valid", [](const std::vector<std::filesystem::path>& roots, const std::string& prefix) {
    py::gil_scoped_release release;
    return ckpt::latest_valid(roots, prefix);
  }, py::arg("roots"), py::arg("prefix") = "");
  m.def("prune", [](const std::filesystem::path& root, const std::string& prefix, int keep,
                    const std::vector<std::filesystem::path>& protect) {
    py::gil_scoped_release release;
    ckpt::prune(root, prefix, keep, protect);
  }, py::arg("root"), py::arg("prefix"), py::arg("keep"), py::arg("protect") = std::vector<std::filesystem::path>{});
  m.def("copy_checkpoint", [](const std::filesystem::path& source, const std::filesystem::path& final_dir) {
    ckpt::Manifest manifest;
    {
      py::gil_scoped_release release;
      manifest = ckpt::copy_checkpoint(source, final_dir);
    }
    return python_of(manifest.to_json());
  }, py::arg("source"), py::arg("final_dir"),
  "Copies a complete checkpoint crash-consistently (temporary sibling, manifest last, verified, renamed); "
  "returns the copy's manifest.");
}

}  // namespace enstack::bindings
