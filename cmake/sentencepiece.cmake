# sentencepiece, compiled from its pinned sources into static libraries with hidden
# visibility and linked into enstack (never a shared system copy: Debian's
# libsentencepiece.so exported absl's FLAGS_minloglevel over c10's, which turned
# every CPU out-of-memory error in the process into an abort).
#
# The sources are the PyPI sdist, which carries the whole C++ tree (with its
# bundled protobuf-lite and absl subset) and is reachable wherever pip is:
#   ENSTACK_SENTENCEPIECE_SOURCE  a directory (the unpacked sdist, or the C++ tree
#                                 itself) or the sdist archive; else
#   <build>/_deps/downloads       where `pip download` puts the pinned sdist
#                                 (ENSTACK_FETCH_DEPS=ON); its SHA-256 is checked.
# Defines enstack::sentencepiece.
set(ENSTACK_SPM_VERSION 0.2.1)
set(ENSTACK_SPM_SHA256 8138cec27c2f2282f4a34d9a016e3374cd40e5c6e9cb335063db66a0a3b71fad)
set(ENSTACK_SENTENCEPIECE_SOURCE "$ENV{ENSTACK_SENTENCEPIECE_SOURCE}" CACHE PATH
    "sentencepiece ${ENSTACK_SPM_VERSION} sources: a directory or sentencepiece-${ENSTACK_SPM_VERSION}.tar.gz; empty: pip downloads it")

function(_enstack_spm_check_archive archive)
  file(SHA256 "${archive}" _sum)
  if(NOT _sum STREQUAL ENSTACK_SPM_SHA256)
    message(FATAL_ERROR "enstack: ${archive} is not the pinned sentencepiece-${ENSTACK_SPM_VERSION} sdist "
                        "(SHA-256 ${_sum}, expected ${ENSTACK_SPM_SHA256}). Delete it, or point "
                        "ENSTACK_SENTENCEPIECE_SOURCE at the right file or an unpacked source directory.")
  endif()
endfunction()

# The sdist's archive: given, already downloaded, or downloaded now through pip.
function(_enstack_spm_archive out)
  set(_dir "${CMAKE_BINARY_DIR}/_deps/downloads")
  set(_archive "${_dir}/sentencepiece-${ENSTACK_SPM_VERSION}.tar.gz")
  if(NOT EXISTS "${_archive}")
    _enstack_require_fetch(sentencepiece)
    message(STATUS "enstack: downloading the sentencepiece-${ENSTACK_SPM_VERSION} sdist with pip")
    execute_process(
      COMMAND "${Python_EXECUTABLE}" -m pip download --quiet --no-deps --no-binary=:all:
              --disable-pip-version-check "sentencepiece==${ENSTACK_SPM_VERSION}" --dest "${_dir}"
      RESULT_VARIABLE _rc ERROR_VARIABLE _err OUTPUT_QUIET)
    if(NOT _rc EQUAL 0 OR NOT EXISTS "${_archive}")
      message(FATAL_ERROR "enstack: could not download sentencepiece-${ENSTACK_SPM_VERSION} with pip (${_err}). "
                          "Download it where PyPI is reachable (`pip download --no-deps --no-binary=:all: "
                          "sentencepiece==${ENSTACK_SPM_VERSION}`) and build with "
                          "ENSTACK_SENTENCEPIECE_SOURCE=/path/to/sentencepiece-${ENSTACK_SPM_VERSION}.tar.gz.")
    endif()
  endif()
  set(${out} "${_archive}" PARENT_SCOPE)
endfunction()

# The directory holding sentencepiece's top CMakeLists.txt.
function(_enstack_spm_source_dir out)
  set(_given "${ENSTACK_SENTENCEPIECE_SOURCE}")
  if(_given AND IS_DIRECTORY "${_given}")
    set(_root "${_given}")
    set(_how "dir")
  else()
    if(_given)
      if(NOT EXISTS "${_given}")
        message(FATAL_ERROR "enstack: ENSTACK_SENTENCEPIECE_SOURCE=${_given} does not exist.")
      endif()
      set(_archive "${_given}")
    else()
      _enstack_spm_archive(_archive)
    endif()
    _enstack_spm_check_archive("${_archive}")
    set(_root "${CMAKE_BINARY_DIR}/_deps/sentencepiece-${ENSTACK_SPM_VERSION}")
    if(NOT EXISTS "${_root}/.unpacked")
      file(REMOVE_RECURSE "${_root}")
      file(ARCHIVE_EXTRACT INPUT "${_archive}" DESTINATION "${_root}")
      file(TOUCH "${_root}/.unpacked")
    endif()
    set(_how "sdist")
  endif()
  # The sdist nests the C++ tree in sentencepiece-X/sentencepiece/; a git checkout is the tree.
  file(GLOB _candidates LIST_DIRECTORIES true "${_root}" "${_root}/sentencepiece" "${_root}/*/sentencepiece")
  foreach(_c IN LISTS _candidates)
    if(EXISTS "${_c}/CMakeLists.txt" AND EXISTS "${_c}/src/sentencepiece_processor.h")
      set(${out} "${_c}" PARENT_SCOPE)
      set(ENSTACK_SPM_HOW "${_how}" PARENT_SCOPE)
      return()
    endif()
  endforeach()
  message(FATAL_ERROR "enstack: no sentencepiece C++ sources (CMakeLists.txt + src/sentencepiece_processor.h) "
                      "under ${_root}.")
endfunction()

_enstack_spm_source_dir(_enstack_spm_dir)
set(SPM_ENABLE_SHARED OFF CACHE BOOL "" FORCE)
set(SPM_ENABLE_TCMALLOC OFF CACHE BOOL "" FORCE)
set(SPM_BUILD_TEST OFF CACHE BOOL "" FORCE)
set(SPM_PROTOBUF_PROVIDER internal CACHE STRING "" FORCE)
set(SPM_ABSL_PROVIDER internal CACHE STRING "" FORCE)
# EXCLUDE_FROM_ALL: only the two libraries enstack links are built (not spm_* tools);
# its install rules sit in another component than enstack's, so nothing of it enters a wheel.
add_subdirectory("${_enstack_spm_dir}" "${CMAKE_BINARY_DIR}/_deps/sentencepiece-build" EXCLUDE_FROM_ALL SYSTEM)
foreach(_t sentencepiece-static sentencepiece_train-static)
  set_target_properties(${_t} PROPERTIES CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON
                                         POSITION_INDEPENDENT_CODE ON)
endforeach()
add_library(enstack_spm INTERFACE)
target_link_libraries(enstack_spm INTERFACE sentencepiece_train-static sentencepiece-static)
target_include_directories(enstack_spm SYSTEM INTERFACE "${_enstack_spm_dir}/src")
add_library(enstack::sentencepiece ALIAS enstack_spm)
_enstack_record(sentencepiece "static-${ENSTACK_SPM_VERSION}-${ENSTACK_SPM_HOW}")
