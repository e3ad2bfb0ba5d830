// AsyncSaver: background writes that match a synchronous write byte for byte,
// coalescing, waiting, retention, the mirror, and injected write failures
// (ENOSPC, EIO, EACCES) that are reported without touching the previous checkpoint.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "enstack/ckpt/async_saver.h"
#include "enstack/ckpt/checkpoint_dir.h"
#include "enstack/ckpt/snapshot.h"
#include "enstack/model/safetensors.h"
#include "enstack/util/error.h"
#include "enstack/util/fault_injection.h"

namespace enstack::ckpt {
namespace {

namespace fs = std::filesystem;

class AsyncSaverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("enstack-async-saver-" + std::to_string(::getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override {
    util::clear_write_faults();
    fs::remove_all(root_);
  }
  static std::map<std::string, torch::Tensor> state(int64_t step) {
    torch::manual_seed(step);
    return {{"w", torch::randn({64, 32})}, {"b", torch::arange(7, torch::kLong) * step}};
  }
  static Snapshot snapshot(int64_t step, BufferPool* pool = nullptr) {
    Snapshot s(step, "full", {{"note", "test"}});
    s.add_json("state.json", {{"step", step}});
    s.add_tensors("model.safetensors", state(step), pool);
    return s;
  }
  static std::string bytes_of(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  static std::string step_name(int64_t step) { return "step-" + std::to_string(1000 + step); }
  fs::path root_;
};

TEST_F(AsyncSaverTest, BackgroundWriteEqualsASynchronousOne) {
  {
    CheckpointWriter writer(root_ / "sync");
    writer.add_json("state.json", {{"step", 3}});
    writer.add_tensors("model.safetensors", state(3));
    writer.commit(3, "full", {{"note", "test"}});
  }
  AsyncSaver saver({});
  saver.submit(snapshot(3, &saver.pool()), root_ / "async");
  saver.flush();
  const auto events = saver.drain();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kind, SaveEvent::Kind::kSaved);
  EXPECT_EQ(verify(root_ / "async").step, 3);
  for (const char* name : {"state.json", "model.safetensors", "MANIFEST.json"}) {
    EXPECT_EQ(bytes_of(root_ / "sync" / name), bytes_of(root_ / "async" / name)) << name;
  }
  model::SafetensorsReader reader(root_ / "async" / "model.safetensors");
  EXPECT_TRUE(torch::equal(reader.tensor("w"), state(3)["w"]));
}

TEST_F(AsyncSaverTest, DeferredTensorsAreCopiedBeforeWaitReturnsAndChangesAfterDoNotLeakIn) {
  auto live = state(4);
  const auto before = live["w"].clone();
  AsyncSaverOptions o;
  o.coalesce = false;
  AsyncSaver saver(o);
  for (int round = 0; round < 20; ++round) {  // many rounds: a race would show as a changed file
    Snapshot s(round, "full");
    s.add_tensors_deferred("model.safetensors", live, &saver.pool());
    saver.submit(std::move(s), root_ / step_name(round));
    saver.wait_for_snapshots();
    const auto saved_values = live["w"].clone();
    live["w"].add_(1.0);  // the "optimizer step": allowed once wait_for_snapshots returned
    saver.flush();
    model::SafetensorsReader reader(root_ / step_name(round) / "model.safetensors");
    ASSERT_TRUE(torch::equal(reader.tensor("w"), saved_values)) << "round " << round;
  }
  EXPECT_TRUE(torch::allclose(live["w"], before + 20.0));
}

TEST_F(AsyncSaverTest, RetentionKeepsTheNewestAndBuffersAreReused) {
  AsyncSaverOptions o;
  o.coalesce = false;  // every save lands
  o.keep_steps = 2;
  AsyncSaver saver(o);
  for (int64_t step = 1; step <= 5; ++step) saver.submit(snapshot(step, &saver.pool()), root_ / step_name(step));
  saver.flush();
  const auto kept = list_by_step(root_, "step-");
  ASSERT_EQ(kept.size(), 2u);
  EXPECT_EQ(kept[0].first, 4);
  EXPECT_EQ(kept[1].first, 5);
  EXPECT_GT(saver.pool().pooled_bytes(), 0u);  // the tensor buffer came back for the next save
}

TEST_F(AsyncSaverTest, CoalescingReplacesOnlyAQueuedSaveOfTheSameSlot) {
  AsyncSaverOptions o;
  o.coalesce = true;
  o.keep_steps = 100;
  AsyncSaver saver(o);
  for (int64_t step = 1; step <= 20; ++step) {
    saver.submit(snapshot(step), root_ / step_name(step));
    if (step == 10) saver.submit(snapshot(step), root_ / "best");
  }
  saver.flush();
  int saved = 0, coalesced = 0;
  for (const auto& e : saver.drain()) {
    saved += e.kind == SaveEvent::Kind::kSaved;
    coalesced += e.kind == SaveEvent::Kind::kCoalesced;
  }
  EXPECT_EQ(saved + coalesced, 21);
  EXPECT_EQ(verify(root_ / step_name(20)).step, 20);  // the newest always lands
  EXPECT_EQ(verify(root_ / "best").step, 10);         // never displaced by a step save
}

TEST_F(AsyncSaverTest, MirrorGetsVerifiedCopiesAndItsOwnRetention) {
  AsyncSaverOptions o;
  o.coalesce = false;
  o.keep_steps = 2;
  o.mirror_root = root_ / "mirror";
  AsyncSaver saver(o);
  for (int64_t step = 1; step <= 4; ++step) {
    saver.submit(snapshot(step), root_ / "local" / step_name(step));
    saver.flush();
  }
  saver.submit(snapshot(4), root_ / "local" / "best");
  saver.flush();
  const auto mirrored = list_by_step(root_ / "mirror", "step-");
  ASSERT_EQ(mirrored.size(), 2u);
  EXPECT_EQ(mirrored.back().first, 4);
  EXPECT_EQ(verify(root_ / "mirror" / "best").step, 4);
  EXPECT_EQ(bytes_of(root_ / "local" / step_name(4) / "model.safetensors"),
            bytes_of(root_ / "mirror" / step_name(4) / "model.safetensors"));
  EXPECT_EQ(latest_valid({root_ / "local", root_ / "mirror"}, "step-").value(), root_ / "local" / step_name(4));
}

// (errno, write operations let through first): each file is created, written and
// fsynced in turn (state.json, model.safetensors, MANIFEST.json), so 0 fails the
// first creation, 4 the tensor data, 5 its fsync and 7 the manifest.
class InjectedFaultTest : public AsyncSaverTest, public ::testing::WithParamInterface<std::pair<int, int>> {};

TEST_P(InjectedFaultTest, AFailedSaveIsReportedAndThePreviousOneStaysValid) {
  AsyncSaverOptions o;
  o.coalesce = false;
  o.keep_steps = 1;  // a failed save must not let retention delete the last good one
  AsyncSaver saver(o);
  saver.submit(snapshot(1), root_ / step_name(1));
  saver.flush();
  const auto [error, skip] = GetParam();
  util::inject_write_fault({error, step_name(2), skip, 1});
  saver.submit(snapshot(2), root_ / step_name(2));
  saver.flush();
  auto events = saver.drain();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[1].kind, SaveEvent::Kind::kSaveFailed);
  EXPECT_NE(events[1].error.find(std::strerror(error)), std::string::npos) << events[1].error;
  EXPECT_EQ(util::injected_write_faults(), 1);
  EXPECT_FALSE(fs::exists(root_ / step_name(2)));
  EXPECT_EQ(verify(root_ / step_name(1)).step, 1);
  // The next save point tries again and succeeds.
  saver.submit(snapshot(3), root_ / step_name(3));
  saver.flush();
  events = saver.drain();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kind, SaveEvent::Kind::kSaved);
  EXPECT_EQ(list_by_step(root_, "step-").back().first, 3);
}

INSTANTIATE_TEST_SUITE_P(Errnos, InjectedFaultTest,
                         ::testing::Values(std::pair{EACCES, 0}, std::pair{ENOSPC, 4}, std::pair{EIO, 5},
                                           std::pair{ENOSPC, 7}));

TEST_F(AsyncSaverTest, AMirrorFailureNeverAffectsTheLocalCheckpoint) {
  AsyncSaverOptions o;
  o.mirror_root = root_ / "mirror";
  AsyncSaver saver(o);
  saver.submit(snapshot(1), root_ / "local" / step_name(1));
  saver.flush();
  util::inject_write_fault({EIO, (root_ / "mirror").string(), 1, 1});  // fail mid-copy
  saver.submit(snapshot(2), root_ / "local" / step_name(2));
  saver.flush();
  bool mirror_failed = false;
  for (const auto& e : saver.drain()) mirror_failed = mirror_failed || e.kind == SaveEvent::Kind::kMirrorFailed;
  EXPECT_TRUE(mirror_failed);
  EXPECT_EQ(verify(root_ / "local" / step_name(2)).step, 2);
  EXPECT_EQ(latest_valid({root_ / "mirror"}, "step-").value(), root_ / "mirror" / step_name(1));
  for (const auto& entry : fs::directory_iterator(root_ / "mirror")) {
    EXPECT_NE(entry.path().filename().string().rfind(".tmp-", 0), 0u) << "temporary copy left behind";
  }
}

TEST(WriteFaultSpec, ParsesNamesAndNumbers) {
  const auto f = util::parse_write_fault("ENOSPC:step-:2:3");
  EXPECT_EQ(f.error, ENOSPC);
  EXPECT_EQ(f.path_contains, "step-");
  EXPECT_EQ(f.skip, 2);
  EXPECT_EQ(f.count, 3);
  EXPECT_EQ(util::parse_write_fault("5").error, 5);
  EXPECT_THROW(util::parse_write_fault("ENOTANERRNO"), enstack::ConfigError);
}

}  // namespace
}  // namespace enstack::ckpt
