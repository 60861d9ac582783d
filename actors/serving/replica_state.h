// ReplicaState: the states of a serving replica (docs/serving.md, "Replicas").
#pragma once

#include <optional>
#include <string>

namespace troupe::serving {

/// A replica's states:
///
///     starting --(its backend answers its health check)--> ready --(removed)--> draining
///     draining --(no request in flight, or the drain timeout passed)--> stopped
///     starting --(removed, scaled down, or failed)--> stopped;  ready --(failed)--> stopped
///
/// Routers send requests only to ready replicas; a draining replica finishes what it holds and
/// takes nothing new (Ray Serve's draining replicas kept accepting work). A scale-down removes
/// starting replicas before ready ones.
enum class ReplicaState { kStarting, kReady, kDraining, kStopped };

/// "starting", "ready", "draining", "stopped": the names in specs, events, metrics labels and
/// `troupe serve show`.
const char* ReplicaStateName(ReplicaState state);
/// The state named `name`, or nullopt for an unknown name.
std::optional<ReplicaState> ParseReplicaState(const std::string& name);
/// True if the transition from `from` to `to` is one of the arrows above (a state to itself is
/// not a transition).
bool IsReplicaTransition(ReplicaState from, ReplicaState to);

}  // namespace troupe::serving
