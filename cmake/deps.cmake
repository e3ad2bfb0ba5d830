# Third-party C++ dependencies: the system package when found (Debian's -dev
# packages), else a pinned, hash-checked download (Colab has no -dev packages).
# Nothing is downloaded when the system package is present.
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
find_package(spdlog CONFIG QUIET)
if(spdlog_FOUND)
  add_library(enstack::spdlog ALIAS spdlog::spdlog)
  _enstack_record(spdlog "system-${spdlog_VERSION}")
else()
  _enstack_require_fetch(spdlog)
  set(SPDLOG_FMT_EXTERNAL OFF CACHE BOOL "" FORCE)
  set(SPDLOG_BUILD_SHARED OFF CACHE BOOL "" FORCE)
  FetchContent_Declare(spdlog
    URL https://github.com/gabime/spdlog/archive/v1.14.1.tar.gz
    URL_HASH SHA256=1586508029a7d0670dfcb2d97575dcdc242d3868a259742b69f100801ab4e16b)
  FetchContent_MakeAvailable(spdlog)
  add_library(enstack::spdlog ALIAS spdlog)
  _enstack_record(spdlog "fetched-1.14.1")
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

# sentencepiece ------------------------------------------------------------
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(ENSTACK_SPM QUIET IMPORTED_TARGET sentencepiece)
endif()
if(ENSTACK_SPM_FOUND)
  add_library(enstack::sentencepiece ALIAS PkgConfig::ENSTACK_SPM)
  _enstack_record(sentencepiece "system-${ENSTACK_SPM_VERSION}")
else()
  _enstack_require_fetch(sentencepiece)
  set(SPM_ENABLE_SHARED OFF CACHE BOOL "" FORCE)
  FetchContent_Declare(sentencepiece
    URL https://github.com/google/sentencepiece/archive/refs/tags/v0.2.0.tar.gz
    URL_HASH SHA256=9970f0a0afee1648890293321665e5b2efa04eaec9f1671fcf8048f456f5bb86)
  FetchContent_MakeAvailable(sentencepiece)
  add_library(enstack_spm INTERFACE)
  target_link_libraries(enstack_spm INTERFACE sentencepiece-static)
  target_include_directories(enstack_spm INTERFACE "${sentencepiece_SOURCE_DIR}/src")
  add_library(enstack::sentencepiece ALIAS enstack_spm)
  _enstack_record(sentencepiece "fetched-0.2.0")
endif()

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
