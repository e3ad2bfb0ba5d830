# Third-party C++ dependencies. Header-only ones (spdlog over fmt, nlohmann-json)
# come from the system package when found (Debian's -dev packages), else from a
# pinned, hash-checked download. sentencepiece is always compiled from its pinned
# sources into a static library (cmake/sentencepiece.cmake). Nothing of theirs is
# a shared library at run time, and _C exports none of their symbols.
#
# Defines aliases enstack::spdlog, enstack::json, enstack::sentencepiece,
# enstack::gtest (tests only) and ENSTACK_DEPS_SUMMARY ("name=system|fetched ...").
include(FetchContent)
set(ENSTACK_DEPS_SUMMARY "")

function(_enstack_record name how)
  set(ENSTACK_DEPS_SUMMARY "${ENSTACK_DEPS_SUMMARY} ${name}=${how}" PARENT_SCOPE)
  message(STATUS "enstack dependency ${name}: ${how}")
endfunction()

function(_enstack_require_fetch name)
  if(NOT ENSTACK_FETCH_DEPS)
    message(FATAL_ERROR "enstack: ${name} was not found on the system and ENSTACK_FETCH_DEPS=OFF. "
                        "Install it (Debian: see `make setup`) or configure with -DENSTACK_FETCH_DEPS=ON.")
  endif()
endfunction()

# spdlog -------------------------------------------------------------------
# Header-only spdlog over header-only fmt: Debian's libspdlog.so/libfmt.so would
# be needed at run time by every wheel built here, and fmt must not meet torch's.
find_package(Threads REQUIRED)
find_package(spdlog CONFIG QUIET)
find_package(fmt CONFIG QUIET)
if(spdlog_FOUND AND TARGET fmt::fmt-header-only)
  get_target_property(_enstack_spdlog_inc spdlog::spdlog_header_only INTERFACE_INCLUDE_DIRECTORIES)
  add_library(enstack_spdlog INTERFACE)
  target_include_directories(enstack_spdlog SYSTEM INTERFACE ${_enstack_spdlog_inc})
  target_compile_definitions(enstack_spdlog INTERFACE SPDLOG_FMT_EXTERNAL)
  target_link_libraries(enstack_spdlog INTERFACE fmt::fmt-header-only Threads::Threads)
  add_library(enstack::spdlog ALIAS enstack_spdlog)
  _enstack_record(spdlog "system-headers-${spdlog_VERSION}")
else()
  _enstack_require_fetch(spdlog)
  set(SPDLOG_FMT_EXTERNAL OFF CACHE BOOL "" FORCE)
  set(SPDLOG_BUILD_SHARED OFF CACHE BOOL "" FORCE)
  FetchContent_Declare(spdlog
    URL https://github.com/gabime/spdlog/archive/v1.14.1.tar.gz
    URL_HASH SHA256=1586508029a7d0670dfcb2d97575dcdc242d3868a259742b69f100801ab4e16b)
  FetchContent_MakeAvailable(spdlog)
  add_library(enstack::spdlog ALIAS spdlog)
  _enstack_record(spdlog "static-1.14.1")
endif()

# nlohmann-json ------------------------------------------------------------
find_package(nlohmann_json 3.10 CONFIG QUIET)
if(nlohmann_json_FOUND)
  add_library(enstack::json ALIAS nlohmann_json::nlohmann_json)
  _enstack_record(nlohmann_json "system-${nlohmann_json_VERSION}")
else()
  _enstack_require_fetch(nlohmann_json)
  set(JSON_BuildTests OFF CACHE INTERNAL "")
  FetchContent_Declare(nlohmann_json
    URL https://github.com/nlohmann/json/archive/v3.11.3.tar.gz
    URL_HASH SHA256=0d8ef5af7f9794e3263480193c491549b2ba6cc74bb018906202ada498a79406)
  FetchContent_MakeAvailable(nlohmann_json)
  add_library(enstack::json ALIAS nlohmann_json)
  _enstack_record(nlohmann_json "fetched-3.11.3")
endif()

include(cmake/sentencepiece.cmake)

# GoogleTest (tests only) ----------------------------------------------------
if(ENSTACK_BUILD_TESTS)
  find_package(GTest CONFIG QUIET)
  if(NOT GTest_FOUND)
    find_package(GTest MODULE QUIET)
  endif()
  if(GTest_FOUND)
    _enstack_record(googletest "system-${GTest_VERSION}")
  else()
    _enstack_require_fetch(googletest)
    set(INSTALL_GTEST OFF CACHE BOOL "" FORCE)
    FetchContent_Declare(googletest
      URL https://github.com/google/googletest/archive/refs/tags/v1.14.0.tar.gz
      URL_HASH SHA256=8ad598c73ad796e0d8280b082cebd82a630d73e73cd3c70057938a6501bba5d7)
    FetchContent_MakeAvailable(googletest)
    _enstack_record(googletest "fetched-1.14.0")
  endif()
endif()

string(STRIP "${ENSTACK_DEPS_SUMMARY}" ENSTACK_DEPS_SUMMARY)
