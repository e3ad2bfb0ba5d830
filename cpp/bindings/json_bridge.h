// JSON values across the boundary: Python objects <-> nlohmann::json, through
// the json module (records and manifests are small; clarity beats speed here).
#pragma once

#include <pybind11/pybind11.h>

#include <nlohmann/json.hpp>

namespace enstack::bindings {

inline nlohmann::json json_of(const pybind11::object& value) {
  return nlohmann::json::parse(pybind11::module_::import("json").attr("dumps")(value).cast<std::string>());
}

inline pybind11::object python_of(const nlohmann::json& value) {
  return pybind11::module_::import("json").attr("loads")(value.dump());
}

}  // namespace enstack::bindings
