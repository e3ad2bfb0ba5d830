// Bindings for enstack::ckpt: crash-consistent checkpoint directories.
// Mirrors enstack/ckpt/checkpoint_dir.h.
#include <torch/python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <nlohmann/json.hpp>

#include <chrono>

#include "bindings.h"
#include "json_bridge.h"
#include "enstack/ckpt/async_saver.h"
#include "enstack/ckpt/checkpoint_dir.h"
#include "enstack/model/safetensors.h"
#include "enstack/train/checkpoint_format.h"
#include "enstack/train/trainer.h"
#include "enstack/ckpt/snapshot.h"
#include "enstack/util/error.h"

namespace py = pybind11;

namespace enstack::bindings {
namespace {
// A trainer_state.json "state" from Python, typed by the C++ schema; a key the schema does
// not know is refused (a misspelt key would otherwise be dropped silently).
train::TrainerState typed_state(const py::object& state) {
  const auto j = json_of(state);
  ENSTACK_CHECK(j.is_object(), CheckpointError, "a trainer state must be a JSON object, not ", j.type_name());
  const auto known = train::TrainerState{}.to_json();
  std::string unknown;
  for (const auto& [key, value] : j.items()) {
    if (!known.contains(key)) unknown += (unknown.empty() ? "" : ", ") + key;
  }
  ENSTACK_CHECK(unknown.empty(), CheckpointError, "a trainer state has keys the format does not know: ", unknown);
  return train::TrainerState::from_json(j);
}
}  // namespace

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

  using ckpt::AsyncSaver;
  py::class_<AsyncSaver>(m, "AsyncSaver",
      "Writes checkpoint snapshots on a background thread and mirrors them (enstack/ckpt/async_saver.h).")
      .def(py::init([](bool coalesce, const std::string& mirror_root, int keep_steps, bool synchronous) {
             ckpt::AsyncSaverOptions o;
             o.coalesce = coalesce;
             o.mirror_root = mirror_root;
             o.keep_steps = keep_steps;
             o.synchronous = synchronous;
             return std::make_unique<AsyncSaver>(o);
           }),
           py::arg("coalesce") = true, py::arg("mirror_root") = "", py::arg("keep_steps") = 2,
           py::arg("synchronous") = false)
      .def("save",
           [](AsyncSaver& saver, const std::filesystem::path& final_dir, int64_t step,
              const std::map<std::string, std::map<std::string, torch::Tensor>>& tensor_files,
              const std::map<std::string, py::object>& json_files) {
             // Returns (seconds the caller was held: snapshot + any wait, seconds waited). CPU
             // tensors are copied by the copy thread: call wait_for_snapshots() before changing them.
             std::map<std::string, nlohmann::json> jsons;
             for (const auto& [name, value] : json_files) jsons.emplace(name, json_of(value));
             py::gil_scoped_release release;
             const auto start = std::chrono::steady_clock::now();
             ckpt::Snapshot snapshot(step, "full");
             for (const auto& [name, value] : jsons) snapshot.add_json(name, value);
             for (const auto& [name, tensors] : tensor_files) {
               snapshot.add_tensors_deferred(name, tensors, &saver.pool());
             }
             const double waited = saver.submit(std::move(snapshot), final_dir);
             const double stalled =
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
             return std::make_pair(stalled, waited);
           },
           py::arg("final_dir"), py::arg("step"), py::arg("tensor_files"),
           py::arg("json_files") = std::map<std::string, py::object>{})
      .def("wait_for_snapshots", [](AsyncSaver& saver) {
        py::gil_scoped_release release;
        return saver.wait_for_snapshots();
      }, "Waits until the saved tensors have been copied (they may change again); returns seconds waited.")
      .def("flush", [](AsyncSaver& saver) {
        py::gil_scoped_release release;
        saver.flush();
      })
      .def("drain", [](AsyncSaver& saver) {
        py::list out;
        for (const auto& e : saver.drain()) {
          py::dict d;
          d["event"] = ckpt::SaveEvent::name(e.kind);
          d["path"] = e.path;
          d["step"] = e.step;
          d["error"] = e.error;
          d["seconds"] = e.seconds;
          d["bytes"] = e.bytes;
          out.append(d);
        }
        return out;
      });

  m.def("verify", [](const std::filesystem::path& dir) {
    ckpt::Manifest manifest;
    {
      py::gil_scoped_release release;
      manifest = ckpt::verify(dir);
    }
    return python_of(manifest.to_json());
  }, py::arg("dir"), "Checks MANIFEST.json and every file's size and checksum; returns the manifest.");
  m.def("verify_checkpoint", [](const std::filesystem::path& dir) {
    ckpt::Manifest manifest;
    {
      py::gil_scoped_release release;
      manifest = train::verify_checkpoint(dir);
    }
    return python_of(manifest.to_json());
  }, py::arg("dir"), "verify, plus what resume requires: the kind's files and, for a full checkpoint, a complete "
                     "typed trainer_state.json; returns the manifest.");
  m.def("file_checksum", [](const std::filesystem::path& file) {
    py::gil_scoped_release release;
    return ckpt::file_checksum(file);
  }, py::arg("file"), "The checksum a MANIFEST.json records for a file (FNV-1a 64, hex).");
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
  // The checkpoint format (enstack/train/checkpoint_format.h): the one definition of its names.
  m.attr("MANIFEST_FILE") = ckpt::kManifestName;
  m.attr("MANIFEST_CHECKSUM_KEY") = ckpt::kChecksumKey;
  m.attr("CONFIG_FILE") = train::kConfigFile;
  m.attr("MODEL_FILE") = train::kModelFile;
  m.attr("OPTIMIZER_FILE") = train::kOptimizerFile;
  m.attr("STATE_FILE") = train::kStateFile;
  m.attr("SWA_FILE") = train::kSwaFile;
  m.attr("RNG_CPU_KEY") = train::kRngKey;
  m.attr("RNG_CUDA_KEY") = train::kCudaRngKey;
  m.attr("SCALER_PREFIX") = train::kScalerPrefix;
  m.attr("STEP_PREFIX") = train::kStepPrefix;
  m.attr("RECOVERY_DIR") = train::kRecoveryDir;
  m.attr("BEST_DIR") = train::kBestDir;
  m.attr("SWA_DIR") = train::kSwaDir;
  m.attr("CHECKPOINTS_DIR") = train::kCheckpointsDir;
  m.def("step_dir_name", &train::step_dir_name, py::arg("step"), "step-NNNNNNNN, the name of a step checkpoint.");
  m.def("resume_checkpoint", [](const std::vector<std::filesystem::path>& roots) {
    std::optional<std::filesystem::path> found;
    {
      py::gil_scoped_release release;
      found = train::find_resume_checkpoint(roots);
    }
    return found ? py::object(py::str(found->string())) : py::object(py::none());
  }, py::arg("roots"),
  "The checkpoint fit(resume=True) starts from: the newest valid full checkpoint (step-* or recovery, by manifest "
  "step; on a tie the earlier root) among the roots (the run's checkpoints/ first, then the mirror's). None when "
  "there is none; CheckpointError listing each one and why when none of them is valid.");
  m.def("trainer_state", [](const py::object& state) {
    return python_of(typed_state(state).to_json());
  }, py::arg("state"),
  "A trainer_state.json 'state' as resume reads it: every key, typed (CheckpointError naming a missing or "
  "mistyped key).");
  m.def("default_trainer_state", [] { return python_of(train::TrainerState{}.to_json()); },
        "The state of a run that has not started: every key of trainer_state.json's 'state'.");
  m.def("write_full_checkpoint",
        [](const std::filesystem::path& root, const py::object& config,
           const std::map<std::string, torch::Tensor>& weights, const std::map<std::string, torch::Tensor>& optimizer,
           const py::object& state, const py::object& options, const py::object& extra) {
          const auto config_json = json_of(config), options_json = json_of(options);
          const auto state_typed = typed_state(state);
          const auto extra_json = extra.is_none() ? nlohmann::json::object() : json_of(extra);
          py::gil_scoped_release release;
          return train::write_full_checkpoint(root, config_json, weights, optimizer, state_typed, options_json,
                                              extra_json)
              .string();
        },
        py::arg("checkpoints_root"), py::arg("config"), py::arg("weights"), py::arg("optimizer"), py::arg("state"),
        py::arg("options"), py::arg("extra") = py::none(),
        "Writes <checkpoints_root>/step-NNNNNNNN from its parts crash-consistently and verifies it as resume "
        "would (the weights must fit config.json's model and the AdamW entries its parameters; rng.cpu is "
        "required). Returns its path.");
  m.def("read_safetensors", [](const std::filesystem::path& path) {
    std::map<std::string, torch::Tensor> out;
    {
      py::gil_scoped_release release;
      model::SafetensorsReader reader(path);
      for (const auto& name : reader.names()) out.emplace(name, reader.tensor(name));
    }
    return out;
  }, py::arg("path"),
  "Every tensor of a safetensors file (CPU, the file's dtype), read by the strict reader resume uses; ModelError "
  "naming the file and the failed check when it is malformed.");

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
