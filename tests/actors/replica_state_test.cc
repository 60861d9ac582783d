// ReplicaState: names round-trip and only the documented transitions are allowed.
#include "actors/serving/replica_state.h"

#include <gtest/gtest.h>

namespace troupe::serving {
namespace {

TEST(ReplicaState, NamesRoundTrip) {
  for (ReplicaState state :
       {ReplicaState::kStarting, ReplicaState::kReady, ReplicaState::kDraining, ReplicaState::kStopped}) {
    auto parsed = ParseReplicaState(ReplicaStateName(state));
    ASSERT_TRUE(parsed.has_value()) << ReplicaStateName(state);
    EXPECT_EQ(*parsed, state);
  }
  EXPECT_FALSE(ParseReplicaState("running").has_value());
}

TEST(ReplicaState, ADrainingReplicaNeverBecomesReadyAgainAndStoppedIsFinal) {
  EXPECT_TRUE(IsReplicaTransition(ReplicaState::kStarting, ReplicaState::kReady));
  EXPECT_TRUE(IsReplicaTransition(ReplicaState::kStarting, ReplicaState::kStopped));
  EXPECT_TRUE(IsReplicaTransition(ReplicaState::kReady, ReplicaState::kDraining));
  EXPECT_TRUE(IsReplicaTransition(ReplicaState::kDraining, ReplicaState::kStopped));
  EXPECT_FALSE(IsReplicaTransition(ReplicaState::kDraining, ReplicaState::kReady));
  EXPECT_FALSE(IsReplicaTransition(ReplicaState::kStarting, ReplicaState::kDraining));
  EXPECT_FALSE(IsReplicaTransition(ReplicaState::kReady, ReplicaState::kReady));
  for (ReplicaState to : {ReplicaState::kStarting, ReplicaState::kReady, ReplicaState::kDraining}) {
    EXPECT_FALSE(IsReplicaTransition(ReplicaState::kStopped, to));
  }
}

}  // namespace
}  // namespace troupe::serving
