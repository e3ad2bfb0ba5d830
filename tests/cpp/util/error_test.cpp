// The error hierarchy and the ENSTACK_CHECK / ENSTACK_ASSERT macros.
#include <gtest/gtest.h>

#include "enstack/util/error.h"

namespace enstack {
namespace {

TEST(Error, CheckThrowsTheNamedTypeWithTheMessage) {
  try {
    ENSTACK_CHECK(1 + 1 == 3, ConfigError, "train.batch_size is ", 0, "; it must be positive.");
    FAIL() << "ENSTACK_CHECK did not throw";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "train.batch_size is 0; it must be positive.");
  }
}

TEST(Error, CheckDoesNothingWhenTheConditionHolds) {
  EXPECT_NO_THROW(ENSTACK_CHECK(true, DataError, "unused"));
}

TEST(Error, EveryUserErrorIsAnEnstackError) {
  EXPECT_THROW(throw ConfigError("x"), Error);
  EXPECT_THROW(throw DataError("x"), Error);
  EXPECT_THROW(throw CheckpointError("x"), Error);
  EXPECT_THROW(throw ModelError("x"), Error);
  EXPECT_THROW(throw Error("x"), std::runtime_error);
}

TEST(Error, AssertThrowsInternalErrorWithLocationInsteadOfAborting) {
  try {
    ENSTACK_ASSERT(2 < 1, "cursor ", 7);
    FAIL() << "ENSTACK_ASSERT did not throw";
  } catch (const InternalError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("error_test.cpp"), std::string::npos) << what;
    EXPECT_NE(what.find("2 < 1"), std::string::npos) << what;
    EXPECT_NE(what.find("cursor 7"), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace enstack
