// Tests of the bridge's pending-request table (runtime/pending_requests.h) on a manual clock.
// No actor system: requests here have no requester actor.
#include <gtest/gtest.h>

#include <vector>

#include "common/clock.h"
#include "runtime/pending_requests.h"

namespace troupe::runtime {
namespace {

using std::chrono::milliseconds;

constexpr NodeId kNodeA = 11;
constexpr NodeId kNodeB = 22;

class PendingRequestsTest : public ::testing::Test {
 protected:
  ManualClock clock_;
  PendingRequests table_{clock_, /*request_ttl=*/milliseconds(1000), /*max_pending=*/4};
};

TEST_F(PendingRequestsTest, NumbersRequestsFromOneAndRefusesThemWhenFull) {
  EXPECT_EQ(table_.AddActorRequest(kNodeA, nullptr, {}), 1u);
  EXPECT_EQ(table_.AddControlRequest(kNodeA, milliseconds(50), [](StatusOr<ActorRef>) {}), 2u);
  EXPECT_EQ(table_.AddActorRequest(kNodeB, nullptr, {}), 3u);
  EXPECT_EQ(table_.AddActorRequest(kNodeB, nullptr, {}), 4u);
  EXPECT_EQ(table_.size(), 4u);
  EXPECT_EQ(table_.AddActorRequest(kNodeB, nullptr, {}), 0u) << "max_pending is 4";
  PendingRequest p;
  ASSERT_TRUE(table_.Take(1, &p));
  EXPECT_EQ(table_.AddActorRequest(kNodeB, nullptr, {}), 5u) << "room again, and ids are never reused";
}

TEST_F(PendingRequestsTest, AReplyIsTakenOnlyFromTheNodeTheRequestWentTo) {
  auto t0 = clock_.Now();
  uint64_t id = table_.AddActorRequest(kNodeA, nullptr, {});
  PendingRequest p;
  EXPECT_FALSE(table_.TakeReply(id, kNodeB, &p)) << "a reply from another node";
  EXPECT_FALSE(table_.TakeReply(id + 1, kNodeA, &p)) << "a reply to no request";
  EXPECT_EQ(table_.size(), 1u);
  clock_.Advance(milliseconds(3));
  ASSERT_TRUE(table_.TakeReply(id, kNodeA, &p));
  EXPECT_EQ(p.node, kNodeA);
  EXPECT_EQ(p.start, t0);
  EXPECT_EQ(p.deadline, t0 + milliseconds(1000));
  EXPECT_EQ(table_.size(), 0u);
  EXPECT_FALSE(table_.TakeReply(id, kNodeA, &p)) << "a second reply is late";
}

TEST_F(PendingRequestsTest, ActorRequestsAreForgottenSilentlyAfterTheirTtl) {
  table_.AddActorRequest(kNodeA, nullptr, {});
  clock_.Advance(milliseconds(500));
  table_.AddActorRequest(kNodeA, nullptr, {});
  std::vector<PendingRequest> timed_out;
  clock_.Advance(milliseconds(499));
  table_.Expire(&timed_out);
  EXPECT_EQ(table_.size(), 2u);
  clock_.Advance(milliseconds(1));  // the first one's deadline: forgotten at it, not after
  table_.Expire(&timed_out);
  EXPECT_EQ(table_.size(), 1u);
  clock_.Advance(milliseconds(500));
  table_.Expire(&timed_out);
  EXPECT_EQ(table_.size(), 0u);
  EXPECT_TRUE(timed_out.empty()) << "CAF times actor requests out itself";
}

TEST_F(PendingRequestsTest, ControlRequestsTimeOutAtTheirOwnDeadlineAndAreHandedBack) {
  table_.AddControlRequest(kNodeA, milliseconds(300), [](StatusOr<ActorRef>) {});
  uint64_t soon = table_.AddControlRequest(kNodeB, milliseconds(100), [](StatusOr<ActorRef>) {});
  table_.AddActorRequest(kNodeA, nullptr, {});  // its TTL (1 s) is longer than both
  std::vector<PendingRequest> timed_out;
  clock_.Advance(milliseconds(99));
  table_.Expire(&timed_out);
  EXPECT_TRUE(timed_out.empty());
  clock_.Advance(milliseconds(1));
  table_.Expire(&timed_out);
  ASSERT_EQ(timed_out.size(), 1u);
  EXPECT_EQ(timed_out[0].node, kNodeB);
  PendingRequest p;
  EXPECT_FALSE(table_.Take(soon, &p));
  clock_.Advance(milliseconds(200));
  table_.Expire(&timed_out);
  ASSERT_EQ(timed_out.size(), 2u);
  EXPECT_EQ(timed_out[1].node, kNodeA);
  EXPECT_TRUE(timed_out[1].done);
  EXPECT_EQ(table_.size(), 1u) << "the actor request is still within its TTL";
}

TEST_F(PendingRequestsTest, ALostNodeTakesOnlyItsOwnRequests) {
  table_.AddActorRequest(kNodeA, nullptr, {});
  uint64_t b = table_.AddActorRequest(kNodeB, nullptr, {});
  table_.AddControlRequest(kNodeA, milliseconds(100), [](StatusOr<ActorRef>) {});
  std::vector<PendingRequest> failed;
  table_.TakeNode(kNodeA, &failed);
  ASSERT_EQ(failed.size(), 2u);
  for (const auto& p : failed) EXPECT_EQ(p.node, kNodeA);
  EXPECT_EQ(table_.size(), 1u);
  PendingRequest p;
  EXPECT_TRUE(table_.Take(b, &p));
}

TEST_F(PendingRequestsTest, TakeAllEmptiesTheTableAndItsDeadlines) {
  table_.AddActorRequest(kNodeA, nullptr, {});
  table_.AddControlRequest(kNodeB, milliseconds(100), [](StatusOr<ActorRef>) {});
  auto all = table_.TakeAll();
  EXPECT_EQ(all.size(), 2u);
  EXPECT_EQ(table_.size(), 0u);
  EXPECT_EQ(table_.deadlines_held(), 0u);
}

TEST(PendingRequests, DeadlinesOfAnsweredRequestsDoNotPileUp) {
  // A busy node answers requests long before their TTL: what they leave behind is dropped once
  // it dominates (more than twice the pending requests, plus 1024).
  ManualClock clock;
  PendingRequests table(clock, milliseconds(60000), size_t{1} << 20);
  PendingRequest p;
  for (int i = 0; i < 5000; ++i) {
    uint64_t actor = table.AddActorRequest(kNodeA, nullptr, {});
    uint64_t control = table.AddControlRequest(kNodeA, milliseconds(60000), [](StatusOr<ActorRef>) {});
    ASSERT_TRUE(table.TakeReply(actor, kNodeA, &p));
    ASSERT_TRUE(table.TakeReply(control, kNodeA, &p));
  }
  uint64_t kept = table.AddControlRequest(kNodeA, milliseconds(60000), [](StatusOr<ActorRef>) {});
  EXPECT_EQ(table.deadlines_held(), 10001u);
  std::vector<PendingRequest> timed_out;
  table.Expire(&timed_out);
  EXPECT_EQ(table.deadlines_held(), 1u) << "only the pending request's deadline is left";
  EXPECT_TRUE(timed_out.empty());
  clock.Advance(milliseconds(60000));
  table.Expire(&timed_out);
  ASSERT_EQ(timed_out.size(), 1u) << "the kept request still times out after compaction";
  EXPECT_FALSE(table.Take(kept, &p));
}

}  // namespace
}  // namespace troupe::runtime
