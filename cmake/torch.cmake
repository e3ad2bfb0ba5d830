# Finds LibTorch through the Python interpreter that runs the build, so the
# extension is compiled against exactly the torch that will import it.
#
# Defines: target `torch` (imported), ENSTACK_TORCH_VERSION (torch.__version__, local label included), ENSTACK_TORCH_ABI_DEFINE,
#          ENSTACK_TORCH_PYTHON_LIBRARY, ENSTACK_TORCH_LIB_DIR.
if(ENSTACK_BUILD_PYTHON)
  find_package(Python 3.9 REQUIRED COMPONENTS Interpreter Development.Module)
else()
  find_package(Python 3.9 REQUIRED COMPONENTS Interpreter)
endif()

execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
    "import torch, torch.utils; print(torch.utils.cmake_prefix_path); print(torch.__version__)"
  OUTPUT_VARIABLE _enstack_torch_out
  ERROR_VARIABLE _enstack_torch_err
  RESULT_VARIABLE _enstack_torch_rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _enstack_torch_rc EQUAL 0)
  message(FATAL_ERROR
    "enstack: the build interpreter ${Python_EXECUTABLE} cannot import torch.\n"
    "enstack compiles against the torch that will run it. Install torch first "
    "(e.g. `pip install torch`), then build with `pip install --no-build-isolation .` "
    "so the build sees it.\nPython said: ${_enstack_torch_err}")
endif()
string(REPLACE "\n" ";" _enstack_torch_out "${_enstack_torch_out}")
list(GET _enstack_torch_out 0 _enstack_torch_prefix)
list(GET _enstack_torch_out 1 ENSTACK_TORCH_VERSION)
list(APPEND CMAKE_PREFIX_PATH "${_enstack_torch_prefix}")

# Torch's CMake files still carry old cmake_minimum_required calls that CMake 4 rejects.
if(NOT DEFINED CMAKE_POLICY_VERSION_MINIMUM)
  set(CMAKE_POLICY_VERSION_MINIMUM 3.5)
endif()
find_package(Torch REQUIRED CONFIG)
message(STATUS "enstack: torch ${ENSTACK_TORCH_VERSION} from ${_enstack_torch_prefix}")

# The libstdc++ ABI must match torch's in every target (enstack_log included),
# because std::string crosses between them. Read it, never hard-code it.
string(REGEX MATCH "-D_GLIBCXX_USE_CXX11_ABI=[01]" _enstack_abi "${TORCH_CXX_FLAGS}")
if(_enstack_abi)
  string(REPLACE "-D" "" ENSTACK_TORCH_ABI_DEFINE "${_enstack_abi}")
else()
  # Recent torch leaves TORCH_CXX_FLAGS empty; the running torch still knows its ABI.
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))"
    OUTPUT_VARIABLE _enstack_abi_value OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _enstack_abi_rc)
  if(_enstack_abi_rc EQUAL 0 AND _enstack_abi_value MATCHES "^[01]$")
    set(ENSTACK_TORCH_ABI_DEFINE "_GLIBCXX_USE_CXX11_ABI=${_enstack_abi_value}")
  else()
    set(ENSTACK_TORCH_ABI_DEFINE "")
  endif()
endif()
message(STATUS "enstack: torch C++ flags '${TORCH_CXX_FLAGS}' -> ABI '${ENSTACK_TORCH_ABI_DEFINE}'")

get_filename_component(ENSTACK_TORCH_LIB_DIR "${TORCH_LIBRARY}" DIRECTORY)
if(ENSTACK_BUILD_PYTHON)
  find_library(ENSTACK_TORCH_PYTHON_LIBRARY torch_python PATHS "${ENSTACK_TORCH_LIB_DIR}" NO_DEFAULT_PATH)
  if(NOT ENSTACK_TORCH_PYTHON_LIBRARY)
    message(FATAL_ERROR "enstack: libtorch_python not found in ${ENSTACK_TORCH_LIB_DIR}; "
                        "is this a full torch wheel (not a C++-only LibTorch)?")
  endif()
endif()
