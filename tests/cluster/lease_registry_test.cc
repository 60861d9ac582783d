// LeaseRegistry: grant, release, keys, node loss and recovery after a head restart, over a real
// LMDB file and the real scheduler, without an actor system (owners and agents are dangling refs).
#include "cluster/lease_registry.h"

#include <gtest/gtest.h>

#include "tests/cluster/head_test_support.h"
#include "tests/fakes/fake_ref_codec.h"

namespace troupe::cluster {
namespace {

using namespace std::chrono_literals;

// The answers a request got, in order.
struct Replies {
  std::vector<StatusOr<LeaseGrant>> got;
  std::function<LeaseReply()> Opener() {
    return [this] { return [this](StatusOr<LeaseGrant> answer) { got.push_back(std::move(answer)); }; };
  }
};

class Leases : public testing::HeadStoreTest {
 protected:
  // A head: membership with node "a" joined, and the lease registry over it.
  void StartHead(bool join = true) {
    members_ = std::make_unique<MembershipRegistry>(config_, store_.get(), *node_table_, &clock_);
    ASSERT_TRUE(members_->Recover().ok());
    leases_ = std::make_unique<LeaseRegistry>(
        config_, store_.get(), *lease_table_, members_.get(), &refs_, &clock_,
        [this](const runtime::ActorRef&) { ++watched_; }, [this](const LeaseCounts& c) { counts_ = c; });
    ASSERT_TRUE(leases_->Recover().ok());
    if (!join) return;
    auto joined = members_->Join(Node("a"));
    ASSERT_TRUE(joined.ok());
    members_->Store(*joined);
    leases_->AddNodeToScheduler(*joined);
  }
  void RestartHead(bool join = true) {
    leases_.reset();
    members_.reset();
    Reopen();
    StartHead(join);
  }
  static LeaseRequest Slices(uint32_t count, std::string key = "", uint64_t owner = 42) {
    LeaseRequest r;
    r.count = count;
    r.slice_memory_bytes = 10ull << 30;
    r.owner = runtime::ActorRef::Dangling(1, owner);
    r.key = std::move(key);
    return r;
  }
  uint32_t FreeSlices() const {
    uint32_t free = 0;
    for (const auto& gpu : leases_->ListSlices().gpus) free += gpu.slices_free;
    return free;
  }
  // Requests `count` slices and expects them granted at once.
  LeaseGrant Grant(uint32_t count, const std::string& key = "") {
    Replies replies;
    auto now = leases_->Request(Slices(count, key), replies.Opener());
    EXPECT_FALSE(now.has_value()) << "a new request is answered through its reply";
    EXPECT_EQ(replies.got.size(), 1u);
    if (replies.got.size() != 1 || !replies.got[0].ok()) {
      ADD_FAILURE() << "not granted";
      return {};
    }
    return *replies.got[0];
  }

  ManualClock clock_;
  troupe::testing::FakeRefCodec refs_;
  std::unique_ptr<MembershipRegistry> members_;
  std::unique_ptr<LeaseRegistry> leases_;
  int watched_ = 0;
  LeaseCounts counts_;
};

TEST_F(Leases, AGrantIsStoredBeforeItIsAnsweredAndAReleaseFreesItsSlices) {
  StartHead();
  EXPECT_EQ(FreeSlices(), 8u);
  LeaseGrant grant = Grant(3);
  ASSERT_EQ(grant.workers.size(), 3u);
  EXPECT_EQ(grant.workers[0].node, "a");
  EXPECT_EQ(grant.workers[0].node_id, Node("a").node_id);
  EXPECT_EQ(grant.workers[0].memory_bytes, 10ull << 30);
  EXPECT_EQ(Rows(*lease_table_), 1u);
  EXPECT_EQ(FreeSlices(), 5u);
  EXPECT_EQ(counts_.slices_leased, 3u);
  EXPECT_EQ(counts_.granted, 1u);
  EXPECT_EQ(watched_, 1) << "the owner is watched";
  auto released = leases_->Release(grant.lease_id);
  ASSERT_TRUE(released.ok()) << released.status();
  EXPECT_EQ(released->lease_id, grant.lease_id);
  EXPECT_EQ(Rows(*lease_table_), 0u);
  EXPECT_EQ(FreeSlices(), 8u);
  EXPECT_EQ(counts_.slices_leased, 0u);
  EXPECT_EQ(leases_->Release(grant.lease_id).status().code(), StatusCode::kNotFound);
}

TEST_F(Leases, LeaseIdsOfARestartedHeadFollowThoseItStored) {
  StartHead();
  const uint64_t first = Grant(1).lease_id;
  EXPECT_GE(first, static_cast<uint64_t>(ManualClock::kStartUnixMs) * 1000);
  RestartHead();
  // Stored and not taken back yet: a new lease gets a later id, never the same.
  EXPECT_GT(Grant(1).lease_id, first);
}

TEST_F(Leases, ARequestSentAgainWithItsKeyGetsItsLeaseNotASecondOne) {
  StartHead();
  LeaseGrant grant = Grant(2, "job-1");
  Replies again;
  auto now = leases_->Request(Slices(2, "job-1"), again.Opener());
  ASSERT_TRUE(now.has_value());
  ASSERT_TRUE(now->ok()) << now->status();
  EXPECT_EQ((*now)->lease_id, grant.lease_id);
  EXPECT_EQ(FreeSlices(), 6u);
  auto other = leases_->Request(Slices(2, "job-1", /*owner=*/43), again.Opener());
  ASSERT_TRUE(other.has_value());
  EXPECT_EQ(other->status().code(), StatusCode::kAlreadyExists);
  EXPECT_TRUE(again.got.empty());
}

TEST_F(Leases, AWaitingRequestSentAgainCancelsItsFirstReplyAndIsGrantedOnce) {
  StartHead();
  LeaseGrant holder = Grant(4);
  Replies first, second;
  ASSERT_FALSE(leases_->Request(Slices(6, "big"), first.Opener()).has_value());
  EXPECT_TRUE(first.got.empty()) << "6 of 4 free slices were granted";
  EXPECT_EQ(counts_.pending, 1u);
  ASSERT_FALSE(leases_->Request(Slices(6, "big"), second.Opener()).has_value());
  ASSERT_EQ(first.got.size(), 1u);
  EXPECT_EQ(first.got[0].status().code(), StatusCode::kCancelled);
  ASSERT_TRUE(leases_->Release(holder.lease_id).ok());
  ASSERT_EQ(second.got.size(), 1u);
  ASSERT_TRUE(second.got[0].ok()) << second.got[0].status();
  EXPECT_EQ(second.got[0]->workers.size(), 6u);
  EXPECT_EQ(first.got.size(), 1u);
}

TEST_F(Leases, AWaitingRequestWithdrawnByItsKeyLeavesTheQueueAndAGrantedOneStays) {
  StartHead();
  LeaseGrant holder = Grant(4);
  LeaseGrant granted = Grant(2, "replica-0");
  Replies waiting, behind;
  ASSERT_FALSE(leases_->Request(Slices(4, "replica-1"), waiting.Opener()).has_value());
  ASSERT_FALSE(leases_->Request(Slices(2, "other"), behind.Opener()).has_value());
  EXPECT_EQ(counts_.pending, 2u);
  EXPECT_TRUE(leases_->Withdraw("replica-1"));
  ASSERT_EQ(waiting.got.size(), 1u);
  EXPECT_EQ(waiting.got[0].status().code(), StatusCode::kCancelled);
  // The request behind it is placed now that nothing is ahead of it.
  ASSERT_EQ(behind.got.size(), 1u);
  EXPECT_TRUE(behind.got[0].ok()) << behind.got[0].status();
  EXPECT_FALSE(leases_->Withdraw("replica-1")) << "withdrawn already";
  EXPECT_FALSE(leases_->Withdraw("replica-0")) << "granted: released, not withdrawn";
  EXPECT_FALSE(leases_->Withdraw(""));
  EXPECT_TRUE(leases_->Release(granted.lease_id).ok());
  EXPECT_TRUE(leases_->Release(holder.lease_id).ok());
  EXPECT_EQ(waiting.got.size(), 1u) << "a withdrawn request is never granted";
}

TEST_F(Leases, AMalformedRequestIsRefusedBeforeItsKeyIsLookedAt) {
  StartHead();
  Grant(1, "k");
  LeaseRequest bad = Slices(1, "k");
  bad.priority = "whenever";
  Replies replies;
  auto now = leases_->Request(bad, replies.Opener());
  ASSERT_TRUE(now.has_value());
  EXPECT_EQ(now->status().code(), StatusCode::kInvalidArgument);
}

TEST_F(Leases, ALostNodeEndsItsLeasesAndTheirStoredRecords) {
  StartHead();
  LeaseGrant grant = Grant(2);
  ASSERT_EQ(Rows(*lease_table_), 1u);
  leases_->LoseLeasesOn("a");
  EXPECT_EQ(Rows(*lease_table_), 0u);
  EXPECT_TRUE(leases_->scheduler().granted().empty());
  EXPECT_EQ(leases_->Release(grant.lease_id).status().code(), StatusCode::kNotFound);
}

TEST_F(Leases, ARestartedHeadAnswersAStoredLeasesKeyWithThatLease) {
  StartHead();
  LeaseGrant grant = Grant(2, "job-1");
  RestartHead(/*join=*/false);
  EXPECT_TRUE(leases_->HasRecovered());
  Replies replies;
  auto now = leases_->Request(Slices(2, "job-1"), replies.Opener());
  ASSERT_TRUE(now.has_value());
  ASSERT_TRUE(now->ok()) << now->status();
  EXPECT_EQ((*now)->lease_id, grant.lease_id);
  EXPECT_EQ((*now)->workers.size(), 2u);
}

TEST_F(Leases, ARecoveredLeaseIsCountedAgainWhenItsNodeRejoinsAndEndsWithoutAKnownOwner) {
  StartHead();
  LeaseGrant grant = Grant(2);
  RestartHead(/*join=*/false);
  auto joined = members_->Join(Node("a"));
  ASSERT_TRUE(joined.ok());
  leases_->AddNodeToScheduler(*joined);
  AssignSlices held{grant.lease_id, "owner", grant.workers};
  leases_->TakeBack("a", {held}, runtime::ActorRef::Dangling(2, 1));
  // Taken back from the store, its slices counted on "a"; but a dangling owner (its process is
  // not reachable from this head) cannot be watched, so the lease ends and its record goes.
  EXPECT_FALSE(leases_->HasRecovered());
  EXPECT_EQ(Rows(*lease_table_), 0u);
  EXPECT_EQ(FreeSlices(), 8u);
}

TEST_F(Leases, ARecoveredLeaseEndsWhenItsNodeRejoinsWithoutIt) {
  StartHead();
  Grant(2);
  RestartHead(/*join=*/false);
  auto joined = members_->Join(Node("a"));
  ASSERT_TRUE(joined.ok());
  leases_->AddNodeToScheduler(*joined);
  leases_->TakeBack("a", {}, runtime::ActorRef::Dangling(2, 1));
  EXPECT_FALSE(leases_->HasRecovered());
  EXPECT_EQ(Rows(*lease_table_), 0u);
}

TEST_F(Leases, ARecoveredLeaseOnANodeStoredDeadEndsAtOnce) {
  StartHead();
  Grant(2);
  members_->MarkDead("a", "killed");
  RestartHead(/*join=*/false);
  EXPECT_FALSE(leases_->HasRecovered());
  EXPECT_EQ(Rows(*lease_table_), 0u);
}

TEST_F(Leases, NodesThatRecoveredLeasesWaitForAndThatAreUnknownOrDeadAreUnheardOf) {
  StartHead();
  Grant(2);
  RestartHead(/*join=*/false);
  // "a" is stored, unknown until it rejoins: not unheard of yet.
  EXPECT_TRUE(leases_->NodesUnheardOf().empty());
  members_->DeclareUnknownDead("did not rejoin");
  EXPECT_EQ(leases_->NodesUnheardOf(), std::set<std::string>{"a"});
  leases_->LoseLeasesOn("a", "node 'a' did not rejoin");
  EXPECT_FALSE(leases_->HasRecovered());
  EXPECT_EQ(Rows(*lease_table_), 0u);
}

TEST_F(Leases, ADeadNodeIsShownButTakesNoWork) {
  StartHead(/*join=*/false);
  NodeRecord dead = Node("b");
  dead.state = "dead";
  leases_->AddDeadNodeToScheduler(dead);
  SliceList slices = leases_->ListSlices();
  ASSERT_EQ(slices.gpus.size(), 1u);
  EXPECT_EQ(slices.gpus[0].slices_total, 8u);
  // Its GPU is no capacity: the request is refused at once, as on a cluster without it.
  Replies replies;
  auto now = leases_->Request(Slices(1), replies.Opener());
  ASSERT_TRUE(now.has_value());
  EXPECT_EQ(now->status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(replies.got.empty()) << "a slice of a dead node was granted";
}

TEST_F(Leases, AGpuOverTheSliceCapIsNotScheduled) {
  StartHead(/*join=*/false);
  NodeRecord tiny = Node("tiny");
  tiny.slice_memory_bytes = 1 << 20;  // 81920 slices of an 80 GiB GPU
  leases_->AddNodeToScheduler(tiny);
  EXPECT_TRUE(leases_->ListSlices().gpus.empty());
}

}  // namespace
}  // namespace troupe::cluster
