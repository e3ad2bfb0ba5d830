// Precompiled header for the binding translation units: torch's Python
// interop (tensor casters) and pybind11's STL casters.
#pragma once

#include <torch/python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>
