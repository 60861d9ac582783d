// The deployment actor's pure parts: replicas per version, the status as JSON, taking replicas
// back after a head restart (no actor system).
#include "actors/serving/deployment.h"

#include <gtest/gtest.h>

namespace troupe::serving {
namespace {

DeploymentSpec Versions(std::vector<std::pair<std::string, uint32_t>> weights) {
  DeploymentSpec spec;
  spec.name = "chat";
  for (const auto& [name, weight] : weights) {
    VersionSpec v;
    v.name = name;
    v.weight = weight;
    spec.versions.push_back(v);
  }
  return spec;
}

TEST(ReplicasPerVersion, EachWeightedVersionGetsOneThenTheRestByLargestRemainder) {
  const DeploymentSpec split = Versions({{"stable", 90}, {"canary", 10}});
  EXPECT_EQ(ReplicasPerVersion(split, 0), (std::map<std::string, uint32_t>{{"stable", 0}, {"canary", 0}}));
  EXPECT_EQ(ReplicasPerVersion(split, 1), (std::map<std::string, uint32_t>{{"stable", 1}, {"canary", 0}}));
  EXPECT_EQ(ReplicasPerVersion(split, 2), (std::map<std::string, uint32_t>{{"stable", 1}, {"canary", 1}}));
  EXPECT_EQ(ReplicasPerVersion(split, 4), (std::map<std::string, uint32_t>{{"stable", 3}, {"canary", 1}}));
  EXPECT_EQ(ReplicasPerVersion(split, 12), (std::map<std::string, uint32_t>{{"stable", 10}, {"canary", 2}}));
  // The canary first while there is one replica only when it is the heavier.
  EXPECT_EQ(ReplicasPerVersion(Versions({{"a", 1}, {"b", 3}}), 1), (std::map<std::string, uint32_t>{{"a", 0}, {"b", 1}}));
  // Weight 0 (a standby version) gets none, however many there are.
  EXPECT_EQ(ReplicasPerVersion(Versions({{"live", 1}, {"standby", 0}}), 5),
            (std::map<std::string, uint32_t>{{"live", 5}, {"standby", 0}}));
  // The counts always add up to the desired count.
  const DeploymentSpec three = Versions({{"a", 1}, {"b", 1}, {"c", 1}});
  for (uint32_t n = 0; n < 20; ++n) {
    uint32_t sum = 0;
    for (const auto& [name, count] : ReplicasPerVersion(three, n)) sum += count;
    EXPECT_EQ(sum, n);
  }
}

TEST(DeploymentStatusJson, RoundTripsWithCountsByState) {
  DeploymentStatus st;
  st.name = "chat";
  st.state = "reconciling";
  st.reason = "1 of 2 replicas ready";
  st.desired = 2;
  st.scaled_by_hand = true;
  st.generation = 7;
  st.router = RouterName("chat");
  st.deployed_unix_ms = 1767225600000;
  st.replicas = {{"chat/v1/replica-0", "v1", "ready", "a", 11}, {"chat/v1/replica-1", "v1", "pending", "", 0}};
  const std::string json = DeploymentStatusToJson(st);
  EXPECT_NE(json.find(R"("replicas_by_state":{"draining":0,"pending":1,"ready":1,"recovering":0,"starting":0})"), std::string::npos)
      << json;
  auto back = DeploymentStatusFromJson(json);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->router, "serving.router.chat");
  EXPECT_EQ(back->desired, 2u);
  EXPECT_TRUE(back->scaled_by_hand);
  EXPECT_EQ(back->generation, 7u);
  EXPECT_EQ(back->deployed_unix_ms, 1767225600000);
  ASSERT_EQ(back->replicas.size(), 2u);
  EXPECT_EQ(back->replicas[0].node, "a");
  EXPECT_EQ(back->replicas[0].lease_id, 11u);
  EXPECT_EQ(back->replicas[1].state, "pending");
  EXPECT_FALSE(back->replicas[0].outdated);
  EXPECT_TRUE(back->standby.empty());
  EXPECT_FALSE(DeploymentStatusFromJson("[]").ok());
  EXPECT_NE(DeploymentEventToJson({5, "replica x ready", ""}).find(R"("what":"replica x ready")"), std::string::npos);
}

// The blue-green standby counts are part of the stored status (a head restart starts them
// again), with each replica's outdated and standby marks.
TEST(DeploymentStatusJson, KeepsTheStandbyCountsAndEachReplicasMarks) {
  DeploymentStatus st;
  st.name = "chat";
  st.desired = 1;
  st.standby = {{"blue", 2}};
  st.replicas = {{"chat/blue/replica-0", "blue", "ready", "a", 1, false, true},
                 {"chat/green/replica-2", "green", "ready", "b", 3, true, false}};
  const std::string json = DeploymentStatusToJson(st);
  EXPECT_NE(json.find(R"("standby":{"blue":2})"), std::string::npos) << json;
  auto back = DeploymentStatusFromJson(json);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->standby, (std::map<std::string, uint32_t>{{"blue", 2}}));
  ASSERT_EQ(back->replicas.size(), 2u);
  EXPECT_TRUE(back->replicas[0].standby);
  EXPECT_FALSE(back->replicas[0].outdated);
  EXPECT_TRUE(back->replicas[1].outdated);
}

// The autoscaler is told the replicas that serve: standby and draining ones aside, and during a
// rollout at most the desired count (the surge replicas are not capacity it ordered).
TEST(AutoscalerReplicaCount, LeavesOutStandbyDrainingAndSurgeReplicas) {
  DeploymentStatus st;
  st.desired = 2;
  st.replicas = {{"d/v1/replica-0", "v1", "ready", "a", 1}, {"d/v1/replica-1", "v1", "starting", "b", 2},
                 {"d/v1/replica-2", "v1", "pending", "", 0}, {"d/v1/replica-3", "v1", "draining", "a", 4}};
  EXPECT_EQ(AutoscalerReplicaCount(st), 3u) << "pending, starting and ready count; draining does not";
  // Blue-green: a standby replica serves nothing.
  st.replicas = {{"d/blue/replica-0", "blue", "ready", "a", 1, false, true},
                 {"d/green/replica-1", "green", "ready", "b", 2}, {"d/green/replica-2", "green", "ready", "a", 3}};
  EXPECT_EQ(AutoscalerReplicaCount(st), 2u);
  // A rollout at desired 2 with max_surge 1: two outdated ready, one new starting.
  st.replicas = {{"d/v1/replica-0", "v1", "ready", "a", 1, true, false},
                 {"d/v1/replica-1", "v1", "ready", "b", 2, true, false},
                 {"d/v2/replica-2", "v2", "starting", "a", 3}};
  EXPECT_EQ(AutoscalerReplicaCount(st), 2u) << "the surge replica is not counted";
  st.replicas.back().state = "ready";
  st.replicas[0].state = "draining";
  EXPECT_EQ(AutoscalerReplicaCount(st), 2u);
}

// Beside the count, the ready ones among them (the autoscaler holds the start count until that
// many were ready): starting, pending, draining and standby replicas are not, and during a rollout
// at most the desired count.
TEST(AutoscalerReadyCount, CountsOnlyReadyServingReplicasAtMostDesiredDuringARollout) {
  DeploymentStatus st;
  st.desired = 2;
  st.replicas = {{"d/v1/replica-0", "v1", "ready", "a", 1}, {"d/v1/replica-1", "v1", "starting", "b", 2},
                 {"d/v1/replica-2", "v1", "pending", "", 0}, {"d/v1/replica-3", "v1", "draining", "a", 4}};
  EXPECT_EQ(AutoscalerReadyCount(st), 1u);
  st.replicas = {{"d/blue/replica-0", "blue", "ready", "a", 1, false, true},
                 {"d/green/replica-1", "green", "ready", "b", 2}, {"d/green/replica-2", "green", "starting", "a", 3}};
  EXPECT_EQ(AutoscalerReadyCount(st), 1u) << "the standby replica is not counted";
  st.replicas = {{"d/v1/replica-0", "v1", "ready", "a", 1, true, false},
                 {"d/v1/replica-1", "v1", "ready", "b", 2, true, false},
                 {"d/v2/replica-2", "v2", "ready", "a", 3}};
  EXPECT_EQ(AutoscalerReadyCount(st), 2u) << "the ready surge replica is not counted";
}


// After a head restart: the stored replicas that had a lease wait as "recovering" (a pending one
// is asked for again), and a new replica is never named like a stored one.
TEST(ReplicasToTakeBack, TakesBackLeasedReplicasAsRecoveringAndNamesNewOnesAfterThem) {
  DeploymentStatus stored;
  stored.name = "chat";
  stored.replicas = {{"chat/v1/replica-3", "v1", "ready", "a", 11},
                     {"chat/v1/replica-7", "v1", "starting", "b", 12},
                     {"chat/v1/replica-8", "v1", "draining", "a", 13, /*outdated=*/true},
                     {"chat/v1/replica-9", "v1", "pending", "", 0}};
  uint64_t next = 0;
  const auto back = ReplicasToTakeBack(stored, &next);
  ASSERT_EQ(back.size(), 3u);
  for (const auto& r : back) EXPECT_EQ(r.state, "recovering") << r.name;
  EXPECT_EQ(back[0].name, "chat/v1/replica-3");
  EXPECT_EQ(back[0].node, "a");
  EXPECT_EQ(back[0].lease_id, 11u);
  EXPECT_EQ(back[1].node, "b");
  EXPECT_TRUE(back[2].outdated);
  EXPECT_EQ(next, 10u) << "after every stored name, the pending one's included";
  // The stored next index wins when it is higher (replicas named before were removed since).
  stored.next_replica = 42;
  (void)ReplicasToTakeBack(stored, &next);
  EXPECT_EQ(next, 42u);
  // A name not of the form <deployment>/<version>/replica-<n> is taken back but names nothing.
  DeploymentStatus odd;
  odd.replicas = {{"chat/v1/replica-x", "v1", "ready", "a", 5}, {"chat/v1/replica-", "v1", "ready", "a", 6}};
  EXPECT_EQ(ReplicasToTakeBack(odd, &next).size(), 2u);
  EXPECT_EQ(next, 0u);
  // A status without replicas (a new deployment) takes back none.
  EXPECT_TRUE(ReplicasToTakeBack(DeploymentStatus{}, &next).empty());
}

// A node joins with what it runs: the replicas expected there are adopted, those the deployment
// no longer has (or has elsewhere) are stopped, and those still recovering there but not reported
// are lost (replaced).
TEST(PlanTakeBack, AdoptsTheExpectedStopsTheUnwantedAndFindsTheLost) {
  const std::vector<ReplicaView> known = {
      {"chat/v1/replica-0", "v1", "recovering", "a", 10},  // reported by a: adopted
      {"chat/v1/replica-1", "v1", "recovering", "a", 11},  // not reported by a: lost
      {"chat/v1/replica-2", "v1", "recovering", "b", 12},  // on b: nothing to say about it at a's join
      {"chat/v1/replica-3", "v1", "ready", "a", 13},       // a lost the head for a while: watched again
      {"chat/v1/replica-4", "v1", "ready", "b", 14},       // a runs one of that name: not this one
      {"chat/v1/replica-5", "v1", "pending", "", 0},       // pending: an earlier one of that name goes
  };
  auto running = [](const std::string& name) { return RunningReplica{name, "chat", 0, {}}; };
  const ReplicaTakeBack plan =
      PlanTakeBack(known, "a",
                   {running("chat/v1/replica-0"), running("chat/v1/replica-3"), running("chat/v1/replica-4"),
                    running("chat/v1/replica-5"), running("chat/v1/replica-9")});
  EXPECT_EQ(plan.adopt, (std::vector<std::string>{"chat/v1/replica-0", "chat/v1/replica-3"}));
  EXPECT_EQ(plan.stop,
            (std::vector<std::string>{"chat/v1/replica-4", "chat/v1/replica-5", "chat/v1/replica-9"}));
  EXPECT_EQ(plan.lost, (std::vector<std::string>{"chat/v1/replica-1"}));
  // A node that reports nothing loses every replica still recovering there, and only those.
  const ReplicaTakeBack empty = PlanTakeBack(known, "b", {});
  EXPECT_TRUE(empty.adopt.empty());
  EXPECT_TRUE(empty.stop.empty());
  EXPECT_EQ(empty.lost, (std::vector<std::string>{"chat/v1/replica-2"}));
  // The status JSON keeps the next index and counts recovering replicas by state.
  DeploymentStatus st;
  st.name = "chat";
  st.next_replica = 6;
  st.replicas = known;
  const std::string json = DeploymentStatusToJson(st);
  EXPECT_NE(json.find(R"("recovering":3)"), std::string::npos) << json;
  auto back = DeploymentStatusFromJson(json);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->next_replica, 6u);
}

}  // namespace
}  // namespace troupe::serving
