// The checkpoint format from C++ alone: step directory names, TrainerState and
// TrainerOptions JSON (every key, typed; unknown option keys and nulls without an off
// value refused), write_full_checkpoint's checks, and the resume choice between step
// and recovery checkpoints of the local and the mirror root.
#include "enstack/train/checkpoint_format.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "enstack/ckpt/checkpoint_dir.h"
#include "enstack/model/encoder_classifier.h"
#include "enstack/model/weights.h"
#include "enstack/train/adamw.h"
#include "enstack/train/trainer.h"
#include "enstack/util/error.h"
#include "../tiny_encoder.h"

namespace enstack::train {
namespace {

namespace fs = std::filesystem;

TEST(CheckpointFormatTest, StepDirectoriesSortByName) {
  EXPECT_EQ(step_dir_name(42), "step-00000042");
  EXPECT_LT(step_dir_name(9), step_dir_name(10));
}

TEST(CheckpointFormatTest, TrainerStateRoundTripsAndRefusesAMissingKey) {
  TrainerState s;
  s.epoch = 2;
  s.batch_cursor = 7;
  s.global_step = 30;
  s.best_metric = 0.5;
  s.microbatch_splits = 4;
  s.last_eval = {{"accuracy", 0.9}};
  const auto j = s.to_json();
  EXPECT_EQ(TrainerState::from_json(j).to_json(), j);
  auto missing = j;
  missing.erase("global_step");
  EXPECT_THROW(TrainerState::from_json(missing), CheckpointError);
  auto mistyped = j;
  mistyped["epoch"] = "two";
  EXPECT_THROW(TrainerState::from_json(mistyped), CheckpointError);
}

TEST(CheckpointFormatTest, TrainerOptionsRoundTripAndRefuseUnknownKeysAndNulls) {
  TrainerOptions o;
  o.output_dir = "/tmp/run";
  o.save_total_limit = -1;
  o.metric_for_best = "";
  const auto j = o.to_json();
  EXPECT_TRUE(j.at("save_total_limit").is_null());  // off is explicit
  EXPECT_TRUE(j.at("metric_for_best").is_null());
  EXPECT_EQ(TrainerOptions::from_json(j).to_json(), j);
  EXPECT_EQ(j.size(), TrainerOptions::keys().size());
  try {
    TrainerOptions::from_json({{"epochs", nullptr}, {"learning_rat", 0.1}, {"batch_size", "8"}});
    FAIL() << "accepted";
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    for (const char* part : {"'epochs' must not be null", "unknown training option 'learning_rat'", "'batch_size'"}) {
      EXPECT_NE(what.find(part), std::string::npos) << part << " not in: " << what;
    }
  }
}

class WriteFullCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    root_ = fs::temp_directory_path() / (std::string("enstack_format_") + test->name() + "_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    model_ = enstack::testing::tiny_encoder(/*layers=*/1);
    std::vector<std::pair<std::string, torch::Tensor>> params;
    for (const auto& item : model_->named_parameters(true)) params.emplace_back(item.key(), item.value());
    optimizer_ = AdamW(params).state_tensors();
    optimizer_.emplace(kRngKey, at::detail::getDefaultCPUGenerator().get_state());
  }
  void TearDown() override { fs::remove_all(root_); }
  fs::path write(int64_t step, const std::map<std::string, torch::Tensor>& optimizer, const fs::path& root) {
    TrainerState s;
    s.global_step = step;
    return write_full_checkpoint(root, model_->config().to_json(), model::state_of(*model_), optimizer, s,
                                 {{"epochs", 1}}, {{"imported_from", "test"}});
  }
  fs::path root_;
  std::shared_ptr<model::EncoderClassifier> model_;
  std::map<std::string, torch::Tensor> optimizer_;
};

TEST_F(WriteFullCheckpointTest, AWrittenCheckpointIsTheOneResumeChooses) {
  const fs::path dir = write(12, optimizer_, root_ / "checkpoints");
  EXPECT_EQ(dir.filename(), "step-00000012");
  const auto manifest = verify_checkpoint(dir);
  EXPECT_EQ(manifest.kind, "full");
  EXPECT_EQ(manifest.extra.value("imported_from", ""), "test");
  EXPECT_EQ(find_resume_checkpoint({root_ / "checkpoints"}), dir);
}

TEST_F(WriteFullCheckpointTest, PartsThatDoNotFitAreRefusedAndNothingIsWritten) {
  auto no_rng = optimizer_;
  no_rng.erase(kRngKey);
  EXPECT_THROW(write(1, no_rng, root_ / "checkpoints"), CheckpointError);
  auto wrong_shape = optimizer_;
  wrong_shape.begin()->second = torch::zeros({1, 2, 3});
  EXPECT_ANY_THROW(write(1, wrong_shape, root_ / "checkpoints"));
  EXPECT_FALSE(fs::exists(root_ / "checkpoints" / step_dir_name(1)));
}

TEST_F(WriteFullCheckpointTest, ResumeTakesTheNewestStepAcrossRootsAndPrefersTheLocalOnATie) {
  const fs::path local = root_ / "local", mirror = root_ / "mirror";
  write(5, optimizer_, local);
  const fs::path newer = write(9, optimizer_, mirror);
  EXPECT_EQ(find_resume_checkpoint({local, mirror}), newer);
  const fs::path tie = write(9, optimizer_, local);
  EXPECT_EQ(find_resume_checkpoint({local, mirror}), tie);
  // A damaged newest one is skipped for the next valid one.
  std::ofstream(tie / kStateFile, std::ios::app) << " ";
  EXPECT_EQ(find_resume_checkpoint({local, mirror}), newer);
  EXPECT_EQ(find_resume_checkpoint({root_ / "none"}), std::nullopt);
}

}  // namespace
}  // namespace enstack::train
