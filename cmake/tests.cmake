# One GoogleTest binary per area, linked against enstack_core only (no Python).
include(GoogleTest)

function(enstack_add_test_binary area)
  set(target enstack_${area}_test)
  add_executable(${target} ${ARGN})
  target_link_libraries(${target} PRIVATE enstack_core enstack::json GTest::gtest_main)
  if(ENSTACK_USE_PCH)
    # Reusing the core's PCH needs the same code model: -fPIC, not the -fPIE of executables.
    set_target_properties(${target} PROPERTIES POSITION_INDEPENDENT_CODE OFF)
    target_compile_options(${target} PRIVATE -fPIC)
    target_precompile_headers(${target} REUSE_FROM enstack_core)
  endif()
  gtest_discover_tests(${target} DISCOVERY_TIMEOUT 60 PROPERTIES LABELS ${area})
endfunction()

enstack_add_test_binary(util
  tests/cpp/util/error_test.cpp
  tests/cpp/util/files_test.cpp
  tests/cpp/util/logging_test.cpp
  tests/cpp/util/run_lock_test.cpp
)
enstack_add_test_binary(ckpt
  tests/cpp/ckpt/async_saver_test.cpp
  tests/cpp/ckpt/checkpoint_dir_test.cpp
  tests/cpp/ckpt/mirror_lease_test.cpp
)
enstack_add_test_binary(data
  tests/cpp/data/bpe_tokenizer_test.cpp
  tests/cpp/data/epoch_plan_test.cpp
  tests/cpp/data/loader_test.cpp
  tests/cpp/data/token_store_test.cpp
)
enstack_add_test_binary(model
  tests/cpp/model/encoder_config_test.cpp
  tests/cpp/model/dropout_test.cpp
  tests/cpp/model/encoder_classifier_test.cpp
  tests/cpp/model/safetensors_test.cpp
)
enstack_add_test_binary(train
  tests/cpp/train/adamw_test.cpp
  tests/cpp/train/checkpoint_format_test.cpp
  tests/cpp/train/metrics_schedule_test.cpp
  tests/cpp/train/swa_test.cpp
  tests/cpp/train/trainer_test.cpp
)
