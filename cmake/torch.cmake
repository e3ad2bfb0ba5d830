# Finds LibTorch through the Python interpreter that runs the build, so the
# extension is compiled against exactly the torch that will import it.
#
# The paths, ABI and feature macros come from torch itself (as torch's own
# CppExtension does), not from find_package(Torch): against a CUDA build of torch
# that stops unless a full CUDA toolkit (nvcc) is installed, and enstack has no
# CUDA code. So one recipe builds against any torch wheel, CPU or CUDA.
#
# Defines: target `torch` (imported), ENSTACK_TORCH_VERSION (torch.__version__, local
#          label included), ENSTACK_TORCH_ABI_DEFINE, ENSTACK_TORCH_PYTHON_LIBRARY,
#          ENSTACK_TORCH_LIB_DIR, ENSTACK_TORCH_CUDA (the CUDA version torch was built
#          with, "" for a CPU build).
if(ENSTACK_BUILD_PYTHON)
  find_package(Python 3.9 REQUIRED COMPONENTS Interpreter Development.Module)
else()
  find_package(Python 3.9 REQUIRED COMPONENTS Interpreter)
endif()

# One line per fact: version, root, ABI, CUDA version, then the feature macros torch's
# own CMake package would give its consumers (they change what the headers declare).
set(_enstack_torch_query [=[
import os, torch
import torch.distributed as dist
print(torch.__version__)
print(os.path.dirname(torch.__file__))
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(torch.version.cuda or "")
macros = []
if dist.is_available():
    macros.append("USE_DISTRIBUTED")
    if dist.is_gloo_available():
        macros.append("USE_C10D_GLOO")
    try:
        import torch.distributed.rpc as rpc
        if rpc.is_available():
            macros.append("USE_RPC")
            if hasattr(getattr(torch._C, "_distributed_rpc", None), "TensorPipeAgent"):
                macros.append("USE_TENSORPIPE")
    except ImportError:
        pass
print(";".join(macros))
]=])
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c "${_enstack_torch_query}"
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
string(REPLACE "\n" "|" _enstack_torch_out "${_enstack_torch_out}")
string(REPLACE "|" ";" _enstack_torch_lines "${_enstack_torch_out}")
list(GET _enstack_torch_lines 0 ENSTACK_TORCH_VERSION)
list(GET _enstack_torch_lines 1 _enstack_torch_root)
list(GET _enstack_torch_lines 2 _enstack_torch_abi)
list(LENGTH _enstack_torch_lines _enstack_torch_n)
set(ENSTACK_TORCH_CUDA "")
set(_enstack_torch_macros "")
if(_enstack_torch_n GREATER 3)
  list(GET _enstack_torch_lines 3 ENSTACK_TORCH_CUDA)
endif()
if(_enstack_torch_n GREATER 4)
  list(SUBLIST _enstack_torch_lines 4 -1 _enstack_torch_macros)
endif()

set(ENSTACK_TORCH_LIB_DIR "${_enstack_torch_root}/lib")
# The libstdc++ ABI must match torch's in every target (enstack_log included),
# because std::string crosses between them. Read it, never hard-code it.
set(ENSTACK_TORCH_ABI_DEFINE "_GLIBCXX_USE_CXX11_ABI=${_enstack_torch_abi}")
set(TORCH_CXX_FLAGS "-D${ENSTACK_TORCH_ABI_DEFINE}")
# Everywhere, the bundled libraries included: sentencepiece's API takes std::string.
add_compile_definitions(${ENSTACK_TORCH_ABI_DEFINE})

# The CPU libraries are all enstack calls (CUDA work goes through torch's device-generic
# API), so a CUDA build of torch needs neither its CUDA libraries nor a toolkit here.
set(_enstack_torch_libs "")
foreach(_lib torch_cpu c10)
  find_library(ENSTACK_TORCH_${_lib}_LIBRARY ${_lib} PATHS "${ENSTACK_TORCH_LIB_DIR}" NO_DEFAULT_PATH)
  if(NOT ENSTACK_TORCH_${_lib}_LIBRARY)
    message(FATAL_ERROR "enstack: lib${_lib} not found in ${ENSTACK_TORCH_LIB_DIR}; is this a full torch install?")
  endif()
  list(APPEND _enstack_torch_libs "${ENSTACK_TORCH_${_lib}_LIBRARY}")
endforeach()
add_library(torch INTERFACE IMPORTED)
target_include_directories(torch SYSTEM INTERFACE
  "${_enstack_torch_root}/include" "${_enstack_torch_root}/include/torch/csrc/api/include")
target_compile_definitions(torch INTERFACE ${_enstack_torch_macros})
target_link_libraries(torch INTERFACE ${_enstack_torch_libs})
message(STATUS "enstack: torch ${ENSTACK_TORCH_VERSION} from ${_enstack_torch_root} "
               "(CUDA build: ${ENSTACK_TORCH_CUDA}; ABI ${ENSTACK_TORCH_ABI_DEFINE}; macros ${_enstack_torch_macros})")

if(ENSTACK_BUILD_PYTHON)
  find_library(ENSTACK_TORCH_PYTHON_LIBRARY torch_python PATHS "${ENSTACK_TORCH_LIB_DIR}" NO_DEFAULT_PATH)
  if(NOT ENSTACK_TORCH_PYTHON_LIBRARY)
    message(FATAL_ERROR "enstack: libtorch_python not found in ${ENSTACK_TORCH_LIB_DIR}; "
                        "is this a full torch wheel (not a C++-only LibTorch)?")
  endif()
endif()
