// Tests of the native training loop from C++ alone (no Python): TrainerOptions
// validation (every problem listed at once, wrong JSON types refused), a short run
// whose checkpoints verify, a run stopped by its callback and resumed ending bitwise
// equal to one never stopped, and a run whose checkpoints are all invalid refused.
#include "enstack/train/trainer.h"

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "enstack/ckpt/checkpoint_dir.h"
#include "enstack/model/encoder_classifier.h"
#include "enstack/util/error.h"
#include "../tiny_encoder.h"

namespace enstack::train {
namespace {

namespace fs = std::filesystem;

class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / (std::string("enstack_trainer_") + test->name() + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::vector<std::vector<int32_t>> ids;
    std::vector<int32_t> labels;
    for (int32_t i = 0; i < 30; ++i) {  // 30 examples: batches of 4 leave a short last batch
      std::vector<int32_t> row = {0};
      for (int32_t j = 0; j < 3 + (i * 5) % 11; ++j) row.push_back(5 + (i * 3 + j * 7) % 30);
      row.push_back(2);
      ids.push_back(row);
      labels.push_back(i % 3);
    }
    data::TokenStore::write(dir_ / "train.tokens", ids, labels, 1, 40, 32, "test");
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::shared_ptr<model::EncoderClassifier> model() const { return enstack::testing::tiny_encoder(); }
  TrainerOptions options(const std::string& run) const {
    TrainerOptions o;
    o.output_dir = (dir_ / run).string();
    o.num_threads = 1;
    o.epochs = 2;
    o.batch_size = 4;
    o.grad_accum = 2;
    o.learning_rate = 1e-3;
    o.save_steps = 2;
    o.logging_steps = 1;
    o.max_length = 32;
    o.label_names = {"a", "b", "c"};
    o.async_save = false;
    return o;
  }
  Trainer trainer(const std::string& run) const {
    return Trainer(model(), data::TokenStore::open(dir_ / "train.tokens"), nullptr, options(run));
  }
  fs::path dir_;
};

TEST(TrainerOptionsTest, ListsEveryProblemAtOnce) {
  TrainerOptions o;
  o.output_dir = "/tmp/x";
  EXPECT_NO_THROW(o.validate());
  o.epochs = 0;
  o.batch_size = 0;
  o.precision = "fp8";
  o.save_minutes = -1;
  o.mirror_lease_seconds = 0;
  try {
    o.validate();
    FAIL() << "invalid options were accepted";
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    for (const char* key : {"train.epochs", "train.batch_size", "train.precision", "train.save_minutes",
                            "run.mirror_lease_seconds"}) {
      EXPECT_NE(what.find(key), std::string::npos) << key << " missing from: " << what;
    }
  }
}

TEST(TrainerOptionsTest, AWrongJsonTypeIsAConfigError) {
  EXPECT_THROW(TrainerOptions::from_json({{"epochs", "three"}}), ConfigError);
  EXPECT_EQ(TrainerOptions::from_json({{"epochs", 3}, {"save_minutes", 1.5}}).save_minutes, 1.5);
}

TEST_F(TrainerTest, AShortRunWritesCheckpointsThatVerify) {
  auto t = trainer("run");
  const auto result = t.fit(false);
  // 8 batches an epoch in windows of 2: 4 steps an epoch.
  EXPECT_EQ(result.global_step, 8);
  EXPECT_EQ(result.epochs_completed, 2);
  ASSERT_FALSE(result.last_checkpoint.empty());
  const auto manifest = verify_checkpoint(result.last_checkpoint);
  EXPECT_EQ(manifest.kind, "full");
  EXPECT_EQ(manifest.step, 8);
}

TEST_F(TrainerTest, StoppedByItsCallbackAndResumedEndsBitwiseEqual) {
  auto straight = trainer("straight");
  straight.fit(false);
  auto stopped = trainer("stopped");
  EXPECT_THROW(stopped.fit(false, [](const nlohmann::json& r) {
                 return !(r.value("event", std::string()) == "log" && r.value("step", 0) == 3);
               }),
               Interrupted);
  auto resumed = trainer("stopped");
  const auto result = resumed.fit(true);
  EXPECT_TRUE(result.resumed);
  const auto a = verify_checkpoint(dir_ / "straight" / "checkpoints" / "step-00000008");
  const auto b = verify_checkpoint(dir_ / "stopped" / "checkpoints" / "step-00000008");
  ASSERT_EQ(a.files.size(), b.files.size());
  int tensors = 0;
  for (std::size_t i = 0; i < a.files.size(); ++i) {
    EXPECT_EQ(a.files[i].name, b.files[i].name);
    if (!a.files[i].name.ends_with(".safetensors")) continue;  // weights, moments, scaler and RNG states
    ++tensors;
    EXPECT_EQ(a.files[i].checksum, b.files[i].checksum) << a.files[i].name;  // bitwise, via the manifest
  }
  EXPECT_EQ(tensors, 2);
}

TEST_F(TrainerTest, CheckpointsThatAreAllInvalidAreRefusedNotRestarted) {
  auto first = trainer("run");
  first.fit(false);
  for (const auto& entry : fs::directory_iterator(dir_ / "run" / "checkpoints")) {
    std::ofstream(entry.path() / ckpt::kManifestName) << "{ torn";
  }
  auto again = trainer("run");
  try {
    again.fit(true);
    FAIL() << "a run whose checkpoints are all invalid started over";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("none of them is valid"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace enstack::train
