// MembershipRegistry and HeadStore: node states and their transitions over a real LMDB file.
#include "cluster/membership.h"

#include <gtest/gtest.h>

#include "cluster/node_agent.h"
#include "tests/cluster/head_test_support.h"

namespace troupe::cluster {
namespace {

using namespace std::chrono_literals;

class Membership : public testing::HeadStoreTest {
 protected:
  std::unique_ptr<MembershipRegistry> Registry() {
    return std::make_unique<MembershipRegistry>(config_, store_.get(), *node_table_, &clock_);
  }
  ManualClock clock_;
};

TEST_F(Membership, AJoinMakesANodeAliveAndCountsItsJoins) {
  auto members = Registry();
  auto first = members->Join(Node("a"));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->state, "alive");
  EXPECT_EQ(first->joins, 1u);
  EXPECT_EQ(first->last_change_unix_ms, ManualClock::kStartUnixMs);
  clock_.Advance(5s);
  auto second = members->Join(Node("a"));
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->joins, 2u);
  EXPECT_EQ(second->last_change_unix_ms, ManualClock::kStartUnixMs + 5000);
  // Not stored until the head says so (it ends a replaced process's leases first).
  EXPECT_EQ(Rows(*node_table_), 0u);
  members->Store(*second);
  EXPECT_EQ(Rows(*node_table_), 1u);
  EXPECT_FALSE(members->Join(NodeRecord{}).ok()) << "a node without a name joined";
}

TEST_F(Membership, ADeadNodeKeepsItsReasonAndLosesItsAgent) {
  auto members = Registry();
  ASSERT_TRUE(members->Join(Node("a")).ok());
  members->AttachAgent("a", runtime::ActorRef::Dangling(7, 1));
  ASSERT_NE(members->AgentOf("a"), nullptr);
  NodeRecord dead = members->MarkDead("a", "connection reset");
  EXPECT_EQ(dead.state, "dead");
  EXPECT_EQ(dead.reason, "connection reset");
  EXPECT_EQ(members->AgentOf("a"), nullptr);
  // Alive again when it rejoins, without the reason.
  auto back = members->Join(Node("a"));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->state, "alive");
  EXPECT_EQ(back->reason, "");
}

TEST_F(Membership, ARestartedHeadKnowsItsNodesAsUnknownUntilTheyRejoinOrTheDeadlinePasses) {
  {
    auto members = Registry();
    for (const char* name : {"a", "b", "c"}) {
      auto joined = members->Join(Node(name));
      ASSERT_TRUE(joined.ok());
      members->Store(*joined);
    }
    members->MarkDead("c", "killed");
  }
  Reopen();
  auto members = Registry();
  ASSERT_TRUE(members->Recover().ok());
  ASSERT_EQ(members->nodes().size(), 3u);
  EXPECT_EQ(members->FindNode("a")->state, "unknown");
  EXPECT_EQ(members->FindNode("b")->state, "unknown");
  EXPECT_EQ(members->FindNode("c")->state, "dead") << "a dead node stays dead across a restart";
  EXPECT_TRUE(members->AwaitingRejoins());
  ASSERT_TRUE(members->Join(Node("a")).ok());
  auto dead = members->DeclareUnknownDead("did not rejoin");
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].name, "b");
  EXPECT_EQ(members->FindNode("b")->reason, "did not rejoin");
  EXPECT_EQ(members->FindNode("a")->state, "alive");
  EXPECT_FALSE(members->AwaitingRejoins());
}

TEST_F(Membership, ANodeSilentForHalfTheFailureTimeoutIsListedSuspect) {
  auto members = Registry();
  for (const char* name : {"quiet", "talking", "gone"}) ASSERT_TRUE(members->Join(Node(name)).ok());
  const uint64_t quiet = Node("quiet").node_id, talking = Node("talking").node_id;
  NodeList list = members->List([&](uint64_t id) -> std::optional<Clock::Duration> {
    if (id == quiet) return std::chrono::milliseconds(600);
    if (id == talking) return std::chrono::milliseconds(400);
    return std::nullopt;
  });
  ASSERT_EQ(list.nodes.size(), 3u);
  EXPECT_EQ(list.cluster_name, "test");
  std::map<std::string, NodeRecord> by_name;
  for (const auto& n : list.nodes) by_name[n.name] = n;
  EXPECT_EQ(by_name["quiet"].state, "suspect");
  EXPECT_EQ(by_name["quiet"].heartbeat_age_ms, 600);
  EXPECT_EQ(by_name["talking"].state, "alive");
  EXPECT_EQ(by_name["gone"].state, "alive");
  EXPECT_EQ(by_name["gone"].heartbeat_age_ms, -1);
  // Suspect is derived, never stored.
  EXPECT_EQ(members->FindNode("quiet")->state, "alive");
}

TEST(HeadStore, EveryWriteFirstRunsTheRetriesInOrderButTheRetriesDoNot) {
  testing::TempDir dir;
  {
    storage::LmdbOptions options;
    options.path = dir.path();
    options.map_size = 16u << 20;
    auto env = storage::LmdbEnv::Open(options);
    ASSERT_TRUE(env.ok());
    HeadStore store(env->get());
    std::string order;
    store.AddRetry([&] {
      order += "n";
      // A retry's own write must not run the retries again.
      EXPECT_TRUE(store.Commit([](storage::Txn&) { return OkStatus(); }).ok());
    });
    store.AddRetry([&] { order += "l"; });
    EXPECT_TRUE(store.Write([&](storage::Txn&) {
      order += "w";
      return OkStatus();
    }).ok());
    EXPECT_EQ(order, "nlw");
    EXPECT_FALSE(store.Write([](storage::Txn&) { return InternalError("refused"); }).ok());
    EXPECT_EQ(order, "nlwnl");
  }
}

// A node still backing off from the head's downtime must rejoin a restarted head within its
// failure_timeout, or the head declares it dead (the ASan pass saw a 1.6 s retry against a 1 s
// window). Every delay of the rejoin back-off stays at or below half of failure_timeout.
TEST(RejoinBackoff, EveryDelayFitsTwiceInTheHeadsRejoinWindow) {
  using std::chrono::milliseconds;
  for (const milliseconds failure_timeout : {milliseconds(150), milliseconds(1000), milliseconds(3000),
                                             milliseconds(60000)}) {
    const BackoffPolicy policy = RejoinBackoff(failure_timeout);
    for (uint32_t attempt = 1; attempt <= 20; ++attempt) {
      EXPECT_LE(policy.Delay(attempt, 0.0) * 2, failure_timeout) << "attempt " << attempt;
      EXPECT_GT(policy.Delay(attempt, 0.0).count(), 0);
    }
  }
  // Long windows keep the 2 s cap (a restarted head is not flooded with joins).
  EXPECT_EQ(RejoinBackoff(milliseconds(60000)).max, milliseconds(2000));
  EXPECT_EQ(RejoinBackoff(milliseconds(60000)).initial, milliseconds(100));
}


// The write-retry path (issue 18): a node record whose write failed (here the LMDB map is full, as a
// full disk would make it) is not lost: the next write of the head writes it first.
TEST_F(Membership, ANodeRecordWhoseWriteFailedIsWrittenByTheHeadsNextWrite) {
  auto members = Registry();
  auto joined = members->Join(Node("a"));
  ASSERT_TRUE(joined.ok());
  members->Store(*joined);
  auto stored_state = [&]() -> std::string {
    auto txn = env_->BeginRead();
    if (!txn.ok()) return "read failed: " + txn.status().ToString();
    auto record = node_table_->Get(*txn, "a");
    return record.ok() ? record->state : record.status().ToString();
  };
  ASSERT_EQ(stored_state(), "alive");

  // Fill the map (64 MiB) until no write fits (MDB_MAP_FULL), while a reader holds the snapshot of
  // before: the pages each commit frees stay pinned by it, so not even a small update finds a page.
  // 1 MiB values, then smaller ones into the space left, down to 16 bytes.
  auto filler = storage::Table<std::string, std::string>::Open(*env_, "filler");
  ASSERT_TRUE(filler.ok()) << filler.status();
  auto reader = env_->BeginRead();
  ASSERT_TRUE(reader.ok()) << reader.status();
  int written = 0;
  for (size_t size = 1 << 20; size >= 16; size /= 4) {
    const std::string chunk(size, 'x');
    while (store_->Commit([&](storage::Txn& txn) { return filler->Put(txn, std::to_string(written), chunk); }).ok()) {
      ASSERT_LT(++written, 100000) << "the 64 MiB map never filled";
    }
  }

  NodeRecord dead = members->MarkDead("a", "connection reset");
  EXPECT_EQ(dead.state, "dead");
  // The reader ends: its pages are free again (as when an operator frees a disk).
  reader->Abort();
  EXPECT_EQ(stored_state(), "alive") << "the write was expected to fail with the map full";

  // Any later write of the head runs the retry first, which stores the dead record.
  auto b = members->Join(Node("b"));
  ASSERT_TRUE(b.ok());
  members->Store(*b);
  EXPECT_EQ(stored_state(), "dead");
  EXPECT_EQ(Rows(*node_table_), 2u);
}

}  // namespace
}  // namespace troupe::cluster
