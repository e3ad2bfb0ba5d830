// Bindings for enstack::util: the exception hierarchy (the one place where C++
// errors become Python exceptions), the log bridge to Python's `logging`, and
// build facts for `enstack doctor`.
#include <c10/util/Exception.h>
#include <torch/python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <ATen/Parallel.h>

#include <filesystem>
#include <memory>
#include <thread>

#include "bindings.h"
#include "enstack/train/distributed.h"
#include "enstack/util/build_info.h"
#include "enstack/util/clock.h"
#include "enstack/util/error.h"
#include "enstack/util/fault_injection.h"
#include "enstack/util/logging.h"
#include "enstack/util/run_lock.h"

namespace py = pybind11;

namespace enstack::bindings {
namespace {

using util::LogLevel;

int python_level(LogLevel level) {
  switch (level) {
    case LogLevel::kTrace:
    case LogLevel::kDebug: return 10;
    case LogLevel::kInfo: return 20;
    case LogLevel::kWarn: return 30;
    default: return 40;
  }
}

// Sends C++ log records to logging.getLogger("enstack"). Called from any thread
// with no enstack lock held; takes the GIL for the call.
void forward_to_python(LogLevel level, std::string_view message) {
  if (!Py_IsInitialized()) return;
  py::gil_scoped_acquire gil;
  try {
    static py::object* logger = new py::object(py::module_::import("logging").attr("getLogger")("enstack"));
    (*logger).attr("log")(python_level(level), py::str(message.data(), message.size()));
  } catch (py::error_already_set& e) {
    e.discard_as_unraisable("enstack log forwarding");
  }
}

void register_exceptions(py::module_& m) {
  auto& base = py::register_exception<enstack::Error>(m, "Error", PyExc_Exception);
  py::register_exception<ConfigError>(m, "ConfigError", base.ptr());
  py::register_exception<DataError>(m, "DataError", base.ptr());
  py::register_exception<CheckpointError>(m, "CheckpointError", base.ptr());
  py::register_exception<ModelError>(m, "ModelError", base.ptr());
  // Another data-parallel rank failed (named in the message), or a collective timed out.
  py::register_exception<train::DistributedError>(m, "DistributedError", base.ptr());
  // TORCH_CHECK and other c10 errors: the Python type torch would use, message
  // without the C++ backtrace.
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const c10::IndexError& e) {
      PyErr_SetString(PyExc_IndexError, e.what_without_backtrace());
    } catch (const c10::ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    } catch (const c10::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what_without_backtrace());
    } catch (const c10::NotImplementedError& e) {
      PyErr_SetString(PyExc_NotImplementedError, e.what_without_backtrace());
    } catch (const c10::Error& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    }
  });
}

void bind_testing(py::module_& m) {
  auto t = m.def_submodule("_testing", "Hooks that let the test-suite cross the C++/Python boundary.");
  t.def("throw_error", [](const std::string& kind, const std::string& message) {
    if (kind == "Error") throw Error(message);
    if (kind == "ConfigError") throw ConfigError(message);
    if (kind == "DataError") throw DataError(message);
    if (kind == "CheckpointError") throw CheckpointError(message);
    if (kind == "ModelError") throw ModelError(message);
    if (kind == "torch_check") TORCH_CHECK(false, message);
    if (kind == "internal") ENSTACK_ASSERT(false, message);
    throw std::invalid_argument("unknown error kind " + kind);
  });
  t.def("log_from_thread", [](const std::string& level, const std::string& message) {
    // A record emitted by a C++ thread that is not Python's, with the GIL released
    // by the caller, as the trainer's loader threads will.
    auto parsed = util::parse_log_level(level);
    py::gil_scoped_release release;
    std::thread([&] { util::log(parsed, message); }).join();
  });
  t.def("advance_clock", &util::advance_test_clock, py::arg("seconds"),
        "Moves the clock of wall-time schedules (train.save_minutes) forward; for tests.");
  t.def("inject_write_fault", [](const std::string& spec) { util::inject_write_fault(util::parse_write_fault(spec)); },
        py::arg("spec"),
        "Arms a file-write failure: 'ERRNO[:PATH_SUBSTRING[:SKIP[:COUNT]]]' (e.g. 'ENOSPC:step-:0:1'; COUNT -1 = "
        "forever). Child processes take the same spec from ENSTACK_INJECT_WRITE_FAULT.");
  t.def("clear_write_faults", &util::clear_write_faults);
  t.def("injected_write_faults", &util::injected_write_faults, "Failures injected since the fault was armed.");
}

// `with RunLock(dir, purpose):` holds the run directory's lock for the block.
struct PyRunLock {
  std::string dir, purpose;
  std::unique_ptr<util::RunLock> lock;
};

void bind_run_lock(py::module_& u) {
  py::class_<PyRunLock>(u, "RunLock", "The exclusive lock on a run directory (<dir>/.lock), as a context manager; "
                                     "re-entrant within one process.")
      .def(py::init([](const std::string& dir, const std::string& purpose) {
             return std::make_unique<PyRunLock>(PyRunLock{dir, purpose, nullptr});
           }), py::arg("dir"), py::arg("purpose"))
      .def("__enter__", [](PyRunLock& l) -> PyRunLock& {
        if (!l.lock) l.lock = std::make_unique<util::RunLock>(l.dir, l.purpose);
        return l;
      })
      .def("__exit__", [](PyRunLock& l, const py::args&) { l.lock.reset(); })
      .def_property_readonly("path", [](const PyRunLock& l) { return (std::filesystem::path(l.dir) / util::kRunLockName).string(); });
}

}  // namespace

void bind_util(py::module_& m) {
  register_exceptions(m);
  auto u = m.def_submodule("util", "Logging and build information of the C++ core.");
  u.def("log", [](const std::string& level, const std::string& message) {
    util::log(util::parse_log_level(level), message);
  }, py::arg("level"), py::arg("message"), "Emits a record through the core's logger.");
  u.def("set_log_level", [](const std::string& level) { util::set_log_level(util::parse_log_level(level)); },
        py::arg("level"));
  u.def("log_level", [] { return std::string(util::log_level_name(util::log_level())); });
  u.def("set_log_file", &util::set_log_file, py::arg("path"),
        "Appends every record to `path` (the run's train.log); an empty path closes it.");
  u.def("forward_logs_to_python", [](bool enabled) {
    if (enabled) {
      util::set_log_forwarder(&forward_to_python);
    } else {
      util::set_log_forwarder({});
    }
  }, py::arg("enabled"),
        "Routes records to logging.getLogger('enstack') (True) or back to stderr (False).");
  u.def("build_info", [] {
    py::dict info;
    info["enstack_version"] = util::enstack_version();
    info["torch_version"] = util::torch_version();
    info["compiler"] = util::compiler();
    info["dependencies"] = util::dependencies();
    info["cuda_compiled"] = util::cuda_compiled();
    info["intra_op_threads"] = at::get_num_threads();
    info["parallel_info"] = at::get_parallel_info();
    return info;
  });
  bind_run_lock(u);
  bind_testing(m);
}

}  // namespace enstack::bindings
