// An actor-worker group's recovery (actors/training/recovery.h): the timeline's phases and
// summary, the rule that keeps a restart off a node being lost, and the committer's resume lookup
// that reads no shard bytes (NewestIntact). No actor system: time points are made by hand.
#include "actors/training/recovery.h"

#include <gtest/gtest.h>

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "actors/training/checkpoint_committer.h"
#include "storage/checkpoint_store.h"

namespace troupe::training {
namespace {

using namespace std::chrono_literals;
using TimePoint = Clock::TimePoint;

constexpr TimePoint T(std::chrono::microseconds us) { return TimePoint(us); }

TEST(RecoveryTimeline, PhasesRunFromTheDetectionThroughEveryMarkToTheFirstStepOfTheLastRank) {
  RecoveryTimeline t;
  t.Begin(RecoveryMark::kDetected, T(1000us), 2);
  EXPECT_TRUE(t.after_failure());
  t.Mark(RecoveryMark::kDecided, T(1200us));
  t.Mark(RecoveryMark::kPlaced, T(2000us));
  t.Mark(RecoveryMark::kPlaced, T(9000us));  // only the first counts
  t.Mark(RecoveryMark::kResumed, T(2500us));
  t.MarkRank(RecoveryMark::kSpawned, 1, T(4000us));
  EXPECT_FALSE(t.At(RecoveryMark::kSpawned)) << "one of two ranks spawned";
  t.MarkRank(RecoveryMark::kSpawned, 1, T(4500us));  // the same rank again changes nothing
  EXPECT_FALSE(t.At(RecoveryMark::kSpawned));
  t.MarkRank(RecoveryMark::kSpawned, 0, T(5000us));
  t.MarkRank(RecoveryMark::kSpawned, 7, T(5100us));  // out of the world: ignored
  t.MarkRank(RecoveryMark::kFormed, 0, T(20000us));
  t.MarkRank(RecoveryMark::kFormed, 1, T(21000us));
  t.MarkRank(RecoveryMark::kFirstStep, 1, T(30000us));
  EXPECT_FALSE(t.complete());
  EXPECT_FALSE(t.Total());
  t.MarkRank(RecoveryMark::kFirstStep, 0, T(31000us));
  ASSERT_TRUE(t.complete());
  EXPECT_EQ(*t.Total(), 30000us);
  const auto phases = t.Phases();
  ASSERT_EQ(phases.size(), 6u);
  const std::pair<const char*, std::chrono::microseconds> expected[] = {
      {"decided", 200us}, {"placed", 800us}, {"resumed", 500us}, {"spawned", 2500us}, {"formed", 16000us},
      {"first step", 10000us}};
  for (size_t i = 0; i < phases.size(); ++i) {
    EXPECT_EQ(phases[i].first, expected[i].first) << i;
    EXPECT_EQ(phases[i].second, expected[i].second) << i;
  }
  EXPECT_EQ(t.Summary(),
            "recovered in 30.0 ms after the failure was detected: decided +0.2, placed +0.8, resumed +0.5, spawned "
            "+2.5, formed +16.0, first step +10.0 (ms)");
}

TEST(RecoveryTimeline, AFreshStartBeginsAtThePlacementRequestAndSkipsMarksNotReached) {
  RecoveryTimeline t;
  t.Mark(RecoveryMark::kPlaced, T(500us));  // before Begin: ignored
  EXPECT_FALSE(t.begun());
  t.Begin(RecoveryMark::kDecided, T(1000us), 1);
  EXPECT_FALSE(t.after_failure());
  t.Mark(RecoveryMark::kDetected, T(1100us));  // before the start mark: not part of a fresh start
  EXPECT_FALSE(t.At(RecoveryMark::kDetected));
  t.Mark(RecoveryMark::kPlaced, T(3000us));
  t.MarkRank(RecoveryMark::kSpawned, 0, T(4000us));
  t.MarkRank(RecoveryMark::kFirstStep, 0, T(9000us));  // no resume lookup answer, no formed report
  ASSERT_TRUE(t.complete());
  EXPECT_EQ(t.Summary(), "started in 8.0 ms after the placement was asked for: placed +2.0, spawned +1.0, "
                         "first step +5.0 (ms)");
  // Begin again: the earlier marks are forgotten.
  t.Begin(RecoveryMark::kDetected, T(20000us), 1);
  EXPECT_FALSE(t.At(RecoveryMark::kPlaced));
  EXPECT_FALSE(t.complete());
  EXPECT_EQ(t.Summary(), "recovered in (not yet) after the failure was detected: (ms)");
}

TEST(LostNodes, APlacementOnANodeWhoseAgentWasSeenLostIsRefusedUntilTheHoldHasPassed) {
  LostNodes lost(2000ms);
  const TimePoint at = T(0us) + 10s;
  EXPECT_FALSE(lost.Refuses({{"a", 1}, {"b", 2}}, at)) << "nothing lost";
  lost.Lost("a", 1, at);
  EXPECT_FALSE(lost.empty());
  // The head has not declared node a dead: it places rank 1 there again under the same agent.
  EXPECT_EQ(lost.Refuses({{"b", 2}, {"a", 1}, {"b", 2}}, at + 5ms), "a");
  EXPECT_EQ(lost.Refuses({{"a", 1}}, at + 1999ms), "a");
  // Placed elsewhere: used.
  EXPECT_FALSE(lost.Refuses({{"b", 2}, {"b", 2}}, at + 5ms));
  // Node a rejoined as a new process (a new agent): used at once.
  EXPECT_FALSE(lost.Refuses({{"a", 9}, {"b", 2}}, at + 5ms));
  // The same agent after the hold (a stopped node continued and rejoined): used.
  EXPECT_FALSE(lost.Refuses({{"a", 1}}, at + 2000ms));
  // A second loss of the same agent keeps its first time; a new agent's loss starts afresh.
  lost.Lost("a", 1, at + 1500ms);
  EXPECT_FALSE(lost.Refuses({{"a", 1}}, at + 2000ms));
  lost.Lost("a", 9, at + 1500ms);
  EXPECT_EQ(lost.Refuses({{"a", 9}}, at + 2000ms), "a");
  lost.Clear();
  EXPECT_TRUE(lost.empty());
  EXPECT_FALSE(lost.Refuses({{"a", 9}}, at + 2000ms));
}

// After an infrastructure fault of an actor group every node of the group is unconfirmed until
// its agent answers the group's stop or is seen lost: a survivor's collective error (the killed
// node's TCP reset) reaches the supervisor before the runtime has seen the node lost, and the
// restart was placed on the killed node. An answer frees the node at once; a loss keeps it held
// as a lost node; neither within the hold frees it then.
TEST(LostNodes, ANodeOfAGroupThatFailedIsHeldUntilItsAgentAnswersOrIsSeenLost) {
  LostNodes nodes(2000ms);
  const TimePoint fault = T(0us) + 10s;
  nodes.Unconfirmed("a", 1, fault);
  nodes.Unconfirmed("b", 2, fault);
  EXPECT_FALSE(nodes.empty());
  EXPECT_EQ(nodes.Refuses({{"a", 1}, {"b", 2}}, fault + 3ms), "a");
  EXPECT_FALSE(nodes.SeenLost("a")) << "held for an answer, not for a loss";
  // Node b's agent answers the stop: alive, used at once; node a's has not.
  nodes.Confirmed("b", 2);
  EXPECT_EQ(nodes.Refuses({{"b", 2}, {"a", 1}}, fault + 4ms), "a");
  EXPECT_FALSE(nodes.Refuses({{"b", 2}, {"b", 2}}, fault + 4ms));
  // An answer from another agent of node a (a node restarted under its name) does not free it;
  // a placement under that new agent is not held.
  nodes.Confirmed("a", 9);
  EXPECT_EQ(nodes.Refuses({{"a", 1}}, fault + 5ms), "a");
  EXPECT_FALSE(nodes.Refuses({{"a", 9}}, fault + 5ms));
  // Node a is seen lost (the runtime's monitor of its agent): held as lost, from the loss.
  nodes.Lost("a", 1, fault + 60ms);
  EXPECT_TRUE(nodes.SeenLost("a"));
  EXPECT_EQ(nodes.Refuses({{"a", 1}}, fault + 2050ms), "a");
  EXPECT_FALSE(nodes.Refuses({{"a", 1}}, fault + 2060ms));
  // A new fault does not turn a lost node back into one awaiting an answer.
  nodes.Unconfirmed("a", 1, fault + 100ms);
  EXPECT_TRUE(nodes.SeenLost("a"));
  // Unanswered and not seen lost within the hold (a node neither answering nor lost): used then.
  nodes.Unconfirmed("c", 3, fault);
  EXPECT_EQ(nodes.Refuses({{"c", 3}}, fault + 1999ms), "c");
  EXPECT_FALSE(nodes.Refuses({{"c", 3}}, fault + 2000ms));
  nodes.Clear();
  EXPECT_TRUE(nodes.empty());
  EXPECT_FALSE(nodes.Refuses({{"a", 1}, {"c", 3}}, fault + 5ms));
}

namespace fs = std::filesystem;

class NewestIntactTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = (fs::temp_directory_path() / "troupe-intact-XXXXXX").string();
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    dir_ = templ;
    root_ = dir_ + "/checkpoints/job1";
    storage::LmdbOptions options;
    options.path = dir_ + "/db";
    options.map_size = 16u << 20;
    options.no_sync = true;
    auto env = storage::LmdbEnv::Open(options);
    ASSERT_TRUE(env.ok()) << env.status();
    env_ = std::move(*env);
    auto store = storage::CheckpointStore::Open(env_.get(), &clock_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::make_unique<storage::CheckpointStore>(std::move(*store));
  }
  void TearDown() override {
    store_.reset();
    env_.reset();
    fs::remove_all(dir_);
  }
  // One rank saves `contents` at `step` of attempt 1 and it is committed; the committed file.
  std::string Commit(uint64_t step, const std::string& contents) {
    const std::string shard = storage::CheckpointStore::StagingDir(root_, 1) + "/step-" + std::to_string(step);
    fs::create_directories(shard + "/rank-0");
    std::ofstream(shard + "/rank-0/w.bin", std::ios::binary) << contents;
    std::ofstream(shard + "/rank-0.done");
    auto record = store_->Commit("job1", root_, 1, step, 1);
    EXPECT_TRUE(record.ok()) << record.status();
    return record.ok() ? record->dir + "/rank-0/w.bin" : "";
  }

  std::string dir_;
  std::string root_;
  ManualClock clock_;
  std::unique_ptr<storage::LmdbEnv> env_;
  std::unique_ptr<storage::CheckpointStore> store_;
};

TEST_F(NewestIntactTest, FindsTheNewestCheckpointWhoseFilesHaveTheirSizesAndSkipsOneCutShort) {
  std::vector<std::string> fallbacks;
  auto none = NewestIntact(*store_, "job1", &fallbacks);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(*none);
  Commit(10, "weights of step 10");
  const std::string newest = Commit(20, "weights of step 20");
  auto found = NewestIntact(*store_, "job1", &fallbacks);
  ASSERT_TRUE(found.ok() && *found) << found.status();
  EXPECT_EQ((*found)->step, 20u);
  EXPECT_TRUE(fallbacks.empty());
  // A file cut short is seen from its size (no byte is read: Commit checksummed them).
  std::ofstream(newest, std::ios::binary | std::ios::trunc) << "cut";
  found = NewestIntact(*store_, "job1", &fallbacks);
  ASSERT_TRUE(found.ok() && *found) << found.status();
  EXPECT_EQ((*found)->step, 10u);
  ASSERT_EQ(fallbacks.size(), 1u);
  EXPECT_NE(fallbacks[0].find("Skipped checkpoint step 20 of job 'job1': " + newest + " has 3 bytes, the manifest says 18"),
            std::string::npos)
      << fallbacks[0];
  fs::remove(newest);
  fallbacks.clear();
  found = NewestIntact(*store_, "job1", &fallbacks);
  ASSERT_TRUE(found.ok() && *found) << found.status();
  EXPECT_EQ((*found)->step, 10u);
  ASSERT_EQ(fallbacks.size(), 1u);
  EXPECT_NE(fallbacks[0].find(newest + " is missing"), std::string::npos) << fallbacks[0];
}

}  // namespace
}  // namespace troupe::training
