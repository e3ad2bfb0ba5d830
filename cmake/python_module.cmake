# The pybind11 module enstack._C: enstack_core + torch_python, built with the
# pybind11 headers that torch bundles so one pybind11 lives in the process.
set(ENSTACK_BINDINGS
  cpp/bindings/bind_ckpt.cpp
  cpp/bindings/bind_data.cpp
  cpp/bindings/bind_loader.cpp
  cpp/bindings/bind_model.cpp
  cpp/bindings/bind_optim.cpp
  cpp/bindings/bind_token_store.cpp
  cpp/bindings/bind_train.cpp
  cpp/bindings/bind_util.cpp
  cpp/bindings/module.cpp
)
Python_add_library(_C MODULE WITH_SOABI ${ENSTACK_BINDINGS})
target_include_directories(_C PRIVATE cpp/bindings)
if(EXISTS "${ENSTACK_TORCH_LIB_DIR}/../include/pybind11/pybind11.h")
  message(STATUS "enstack: using the pybind11 headers bundled with torch")
else()
  message(FATAL_ERROR "enstack: this torch ships no pybind11 headers (${ENSTACK_TORCH_LIB_DIR}/../include/pybind11); "
                      "enstack needs torch's own copy so a single pybind11 is loaded. Use a full torch wheel.")
endif()
target_link_libraries(_C PRIVATE enstack_core ${ENSTACK_TORCH_PYTHON_LIBRARY})
# Static archives' symbols become local, and the version script exports the module
# init alone: the dynamic symbol table holds nothing torch (or anyone) could bind to.
target_link_options(_C PRIVATE "LINKER:--exclude-libs,ALL"
                    "LINKER:--version-script=${CMAKE_CURRENT_SOURCE_DIR}/cmake/_C.map")
set_property(TARGET _C APPEND PROPERTY LINK_DEPENDS "${CMAKE_CURRENT_SOURCE_DIR}/cmake/_C.map")
target_compile_definitions(_C PRIVATE ENSTACK_TORCH_VERSION="${ENSTACK_TORCH_VERSION}")
set_target_properties(_C PROPERTIES
  CXX_VISIBILITY_PRESET hidden
  VISIBILITY_INLINES_HIDDEN ON
  # Found next to the installed package: site-packages/enstack/_C*.so -> site-packages/torch/lib
  INSTALL_RPATH "$ORIGIN/../torch/lib"
  BUILD_WITH_INSTALL_RPATH OFF)
if(ENSTACK_USE_PCH)
  target_precompile_headers(_C PRIVATE cpp/bindings/bindings_pch.h)
endif()

configure_file(cmake/_build_info.py.in "${CMAKE_CURRENT_BINARY_DIR}/_build_info.py" @ONLY)
# Component enstack: the wheel installs only this (not what bundled libraries install).
install(TARGETS _C LIBRARY DESTINATION . COMPONENT enstack)
install(FILES "${CMAKE_CURRENT_BINARY_DIR}/_build_info.py" DESTINATION . COMPONENT enstack)
