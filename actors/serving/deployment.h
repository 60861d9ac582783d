// The deployment actor: one per serving deployment, on the head. It runs the deployment's replicas
// on the nodes its scheduler leases give it, supervises them one_for_one, keeps the deployment's
// router and autoscaler, and applies scale decisions with drains (docs/serving.md, "Deployments").
// It talks to the head through DeploymentHost (implemented by cluster/deployments_registry.cc), so
// it depends on neither the cluster nor training.
#pragma once

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/allowed_unsafe_message_type.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "actors/serving/autoscaler.h"
#include "actors/serving/deployment_spec.h"
#include "actors/serving/messages.h"
#include "actors/serving/router_metrics.h"
#include "common/backoff.h"
#include "common/clock.h"
#include "common/status.h"
#include "runtime/actor_ref.h"
#include "runtime/runtime.h"

namespace troupe::serving {

/// The name the deployment's router is registered under on the head's runtime (clients and the
/// HTTP gateway look it up there): "serving.router.<deployment>".
std::string RouterName(const std::string& deployment);

/// How `desired` replicas are divided among the spec's versions (every version is in the map):
/// one for each version of weight > 0 while there are enough (the heaviest first, ties in spec
/// order), the rest by largest remainder of the weight shares (ties in the same order); a version
/// of weight 0 gets none. 4 at 90/10: 3 and 1; 1 at 90/10: 1 and 0.
std::map<std::string, uint32_t> ReplicasPerVersion(const DeploymentSpec& spec, uint32_t desired);

/// Where one replica may run: a scheduler lease of one worker's resources (the version's slices,
/// CPUs, memory) on `node`, whose agent starts the replica.
struct ReplicaPlace {
  uint64_t lease_id = 0;
  std::string node;
  runtime::ActorRef agent;
  /// The lease's slice on `node` (StartReplica's fields of the same names): gpu_index
  /// kNoReplicaGpu for a CPU-only replica.
  uint32_t gpu_index = kNoReplicaGpu;
  std::string gpu_id;
  uint64_t memory_bytes = 0;
  uint32_t compute_percent = 0;
  bool simulated = false;
};

/// The head's answer to DeploymentHost::RequestReplicaPlacement, sent to the deployment actor.
struct ReplicaPlacementAnswer {
  std::string replica;
  Status status;  ///< OK with `place`, or why it cannot be placed (ResourceExhausted: it never fits)
  ReplicaPlace place;
};

/// One replica as `troupe serve show` lists it. States: "pending" (waiting for its lease),
/// "starting", "ready", "draining", and "recovering" (after a head restart: stored by the earlier
/// head, not reported by its node yet; Ray Serve's RECOVERING).
struct ReplicaView {
  std::string name;
  std::string version;
  std::string state;
  std::string node;
  uint64_t lease_id = 0;
  /// Of a version an update changed or removed: an update's rollout replaces it.
  bool outdated = false;
  /// Of a version whose weight an update set to 0 (blue-green standby): kept out of the router's
  /// set, and not counted for the autoscaler.
  bool standby = false;
};

/// A deployment's status (stored by the head with its spec; `troupe serve show`).
struct DeploymentStatus {
  std::string name;
  /// "deploying" (not all desired replicas were ready yet), "running" (desired == ready, nothing
  /// else in flight), "reconciling" (replicas being added, replaced or drained), "updating" (an
  /// update's rollout: outdated replicas left), "deleting".
  std::string state = "deploying";
  std::string reason;
  /// The replicas it aims for now (the autoscaler's last decision, or `troupe serve scale`).
  uint32_t desired = 0;
  /// True once `troupe serve scale` fixed the count: the autoscaler's decisions are ignored.
  bool scaled_by_hand = false;
  /// The ReplicaSet generation the router has.
  uint64_t generation = 0;
  std::string router;
  std::vector<ReplicaView> replicas;
  int64_t deployed_unix_ms = 0;
  /// The versions of weight 0 that keep replicas as a blue-green standby, and how many (an update
  /// set their weight to 0 while they ran them). Stored, so a head restart starts them again.
  std::map<std::string, uint32_t> standby;
  /// The index the next new replica gets ("<deployment>/<version>/replica-<index>"). Stored, so a
  /// restarted head never names a new replica like one of the earlier head's still running.
  uint64_t next_replica = 0;
};

/// The replica count a deployment actor reports to its autoscaler (ReplicaCount): the replicas
/// that serve or will serve (pending, starting, ready), standby replicas aside (they serve
/// nothing). During an update's rollout (any replica outdated) at most `desired`: the surge
/// replicas above it are a passing overlap of old and new replicas, not capacity the autoscaler
/// ordered. Not only the new version's replicas: at the start of a rollout there are none yet,
/// while the old ones still carry the whole load, and a count of 0 or 1 would make the
/// autoscaler panic (panic_threshold x current) and hold the count for a stable window.
uint32_t AutoscalerReplicaCount(const DeploymentStatus& status);
/// The ready count beside it (ReplicaCount::ready): the ready replicas among those
/// AutoscalerReplicaCount counts, standby ones aside, during a rollout at most `desired`. It ends
/// the autoscaler's hold of the count the deployment started at (AutoscalerPolicy, rule 0).
uint32_t AutoscalerReadyCount(const DeploymentStatus& status);

/// One change of a deployment: when, what, why.
struct DeploymentEvent {
  int64_t unix_ms = 0;
  std::string what;
  std::string why;
};

/// JSON: {"name", "state", "reason", "desired", "scaled_by_hand", "generation", "router",
/// "deployed_unix_ms", "next_replica", "replicas": [{"name","version","state","node","lease_id",
/// "outdated","standby"}], "replicas_by_state": {"pending": n, "starting": n, "ready": n,
/// "draining": n, "recovering": n}, "standby": {"<version>": n}}.
std::string DeploymentStatusToJson(const DeploymentStatus& status);
/// Back from DeploymentStatusToJson (replicas_by_state is derived); InvalidArgument otherwise.
StatusOr<DeploymentStatus> DeploymentStatusFromJson(const std::string& json);
/// {"unix_ms", "what", "why"}.
std::string DeploymentEventToJson(const DeploymentEvent& event);

/// What a deployment actor does with the replicas a node reports when it joins the head (after a
/// head restart, or after the node lost the head for a while), given the replicas it knows
/// (`known`: its status's replicas, with their nodes). Kubernetes' ReplicaSet adopts the pods its
/// selector matches; here the match is exact: the replica's stored name on the stored node.
struct ReplicaTakeBack {
  /// Reported, and the deployment has a replica of that name on that node: AdoptReplica (a
  /// "recovering" one is put back in the state the replica reports; any other is only watched
  /// again by the agent).
  std::vector<std::string> adopt;
  /// Reported, and the deployment has no replica of that name there (deleted, scaled down or
  /// replaced while the head was down): StopReplica.
  std::vector<std::string> stop;
  /// "recovering" on that node and not reported: gone while the head was down; replaced.
  std::vector<std::string> lost;
};
ReplicaTakeBack PlanTakeBack(const std::vector<ReplicaView>& known, const std::string& node,
                             const std::vector<RunningReplica>& reported);

/// The replicas of a stored status that a restarted head's deployment actor takes back: those
/// that had a lease (starting, ready, draining; a pending one is asked for again), as
/// "recovering", each keeping its name, version, node, lease and `outdated`; and the index for
/// the next new replica, above every stored name's ("<deployment>/<version>/replica-<index>")
/// and at least the stored next_replica.
std::vector<ReplicaView> ReplicasToTakeBack(const DeploymentStatus& stored, uint64_t* next_replica);

/// What a deployment actor needs of the head; the deployments registry implements it. Called on
/// the deployment actor's thread: implementations post messages, never block.
class DeploymentHost {
 public:
  virtual ~DeploymentHost() = default;
  /// Asks the scheduler for a lease of one replica of `version` (its resources) owned by
  /// `deployment` (so it ends when the deployment actor does). The answer comes as a
  /// ReplicaPlacementAnswer for `replica`; while capacity is short the request waits.
  virtual void RequestReplicaPlacement(const DeploymentSpec& spec, const VersionSpec& version,
                                       const std::string& replica, const caf::actor& deployment) = 0;
  /// Withdraws the request for `replica`'s lease while it waits (a pending replica removed by
  /// a scale-down): it leaves the scheduler's queue. Nothing if it was granted meanwhile (the
  /// answer still comes, and the deployment releases that lease).
  virtual void WithdrawReplicaPlacement(const std::string& replica, const caf::actor& deployment) = 0;
  /// Ends a lease the deployment no longer uses.
  virtual void ReleaseReplicaPlacement(uint64_t lease_id) = 0;
  /// The deployment's new status and the event that made it (empty `what`: none), stored in order.
  virtual void Update(const caf::actor& deployment, const DeploymentStatus& status, const DeploymentEvent& event) = 0;
};

/// Anyone -> deployment actor: run exactly `replicas` replicas from now on (the autoscaler's
/// decisions are ignored afterwards: `troupe serve scale`). No reply; the status says it.
struct ScaleDeployment {
  uint32_t replicas = 0;
};
/// Registry -> deployment actor: run `spec` from now on (same name; `troupe serve update` and
/// `rollback`, docs/serving.md "Updates and rollbacks"). A version whose settings other than its
/// weight are unchanged keeps its replicas (their count follows the new weights); the replicas
/// of a changed or removed version are replaced Kubernetes-style: new ones start while the
/// deployment's live replicas stay within desired + max_surge, and an old ready one leaves
/// (router set without it, Drain, lease released) only while the ready replicas stay at least
/// desired - max_unavailable (ResolveRollout). A version that had replicas and gets weight 0
/// keeps them out of the router's set (blue-green standby) until an update removes it. The
/// router takes the new routing, max_queued_requests and request_timeout (ConfigureRouter), the
/// autoscaler the new autoscaling settings (ConfigureAutoscaler; it starts or stops when min ==
/// max changes). No reply; events say each step and "rollout complete" at the end.
struct UpdateDeployment {
  DeploymentSpec spec;
  std::string why;  ///< "troupe serve update" or "troupe serve rollback"
};
/// Registry -> deployment actor: node `node` joined the head (its agent `agent`) running
/// `replicas` of this deployment (maybe none). The actor takes back the replicas it expects
/// there (PlanTakeBack; AdoptReplica to the agent), and stops the others.
struct ReplicasFound {
  std::string node;
  runtime::ActorRef agent;
  std::vector<RunningReplica> replicas;
};
/// Anyone -> deployment actor: stop every replica at once (no drain), release every lease,
/// unregister the router and exit (`troupe serve delete`).
struct StopDeployment {
  std::string reason;
};

/// How a deployment actor is set up (SpawnDeployment's argument).
struct DeploymentInit {
  DeploymentSpec spec;
  /// The status stored before (a head restart: its desired count, scaled_by_hand and standby
  /// counts are kept, and its replicas that had a lease are taken back: ReplicasToTakeBack,
  /// ReplicasFound). A new deployment: name only.
  DeploymentStatus status;
  /// After a head restart: how long a replica to take back waits for its node to report it
  /// before it counts as lost and is replaced. The head declares a node of the earlier head dead
  /// when it has not rejoined within failure_timeout, and a node reports its replicas in its join,
  /// so the registry gives twice failure_timeout.
  std::chrono::milliseconds recovery_timeout{10000};
  DeploymentHost* host = nullptr;
  /// The head's runtime: the router's name is registered there.
  runtime::Runtime* runtime = nullptr;
  const Clock* clock = nullptr;
  /// How long a node agent may take to answer StartReplica before the start counts as failed.
  std::chrono::milliseconds node_timeout{10000};
  /// Between replacements of failed replicas (one_for_one): jittered exponential, reset when a
  /// replica becomes ready (common/backoff.h; 100 ms doubling to 5 s, equal jitter).
  BackoffPolicy restart_backoff{std::chrono::milliseconds(100), 2.0, std::chrono::milliseconds(5000), 0.5};
  /// Where its router and autoscaler publish their metrics (the head's scrape; null: nowhere).
  std::shared_ptr<RouterMetrics> router_metrics;
  std::shared_ptr<AutoscalerMetrics> autoscaler_metrics;
  /// Where the deployment publishes its replicas by version and state (null: nowhere).
  std::shared_ptr<ReplicaMetrics> replica_metrics;
};

/// Spawns the deployment actor (and, beside it on the same actor system, its router, registered
/// as RouterName(spec.name) on `runtime`, and its autoscaler unless min_replicas == max_replicas).
///
/// It keeps `desired` replicas (status.desired, else autoscaling.initial_replicas) split over
/// the versions by weight (each version of weight > 0 gets one while there are enough, the rest
/// by largest remainder of weight shares), each on its own scheduler lease:
///   pending  -> RequestReplicaPlacement; the answer's node agent gets StartReplica;
///   starting -> the replica says ready (ReplicaStateChanged) -> ready: the router gets a
///               ReplicaSet of the ready replicas (weight: the version's weight divided over its
///               ready replicas) with a new generation;
///   a replica that exits or whose node is lost (its monitor), or that fails
///   health_check.failure_threshold checks in a row (every health_check.interval a HealthProbe
///   through its request path, or a ReplicaQuery without probe_request_path; the replica fails
///   a probe at health_check.timeout and the deployment waits 100 ms more for that answer, so
///   the event says why), is dropped from the ReplicaSet, stopped, its lease released, and
///   replaced after the restart backoff.
/// ScaleDecision (from its autoscaler, bounded by min and max) and ScaleDeployment change the
/// desired count. Scaling down removes pending replicas first, then starting ones (stopped at
/// once), then ready ones: the router gets a ReplicaSet without it first, then the replica gets
/// Drain (the spec's drain timeout) and its lease is released once it has stopped.
/// ReplicaCount goes to the autoscaler after every change. Every change is a DeploymentEvent and
/// a status Update to the host.
///
/// After a head restart (a stored status) it keeps the stored desired count within min and max
/// and starts with the stored replicas that had a lease as
///   recovering -> ReplicasFound from their node's join -> AdoptReplica to its agent -> the state
///                 the replica answers (ready: behind the router again);
///   recovering and not reported by its node (or not within recovery_timeout) -> replaced.
/// A replica a node reports that the deployment does not have there is stopped (StopReplica).
caf::actor SpawnDeployment(caf::actor_system& system, DeploymentInit init);

}  // namespace troupe::serving

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::ReplicaPlacementAnswer)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::ScaleDeployment)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::StopDeployment)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::ReplicasFound)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::UpdateDeployment)
