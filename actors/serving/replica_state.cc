// ReplicaState.
#include "actors/serving/replica_state.h"

namespace troupe::serving {

const char* ReplicaStateName(ReplicaState state) {
  switch (state) {
    case ReplicaState::kStarting:
      return "starting";
    case ReplicaState::kReady:
      return "ready";
    case ReplicaState::kDraining:
      return "draining";
    case ReplicaState::kStopped:
      return "stopped";
  }
  return "unknown";
}

std::optional<ReplicaState> ParseReplicaState(const std::string& name) {
  for (ReplicaState state :
       {ReplicaState::kStarting, ReplicaState::kReady, ReplicaState::kDraining, ReplicaState::kStopped}) {
    if (name == ReplicaStateName(state)) return state;
  }
  return std::nullopt;
}

bool IsReplicaTransition(ReplicaState from, ReplicaState to) {
  switch (from) {
    case ReplicaState::kStarting:
      return to == ReplicaState::kReady || to == ReplicaState::kStopped;
    case ReplicaState::kReady:
      return to == ReplicaState::kDraining || to == ReplicaState::kStopped;
    case ReplicaState::kDraining:
      return to == ReplicaState::kStopped;
    case ReplicaState::kStopped:
      return false;
  }
  return false;
}

}  // namespace troupe::serving
