// DeploymentsRegistry: the serving deployments the head knows (their specs and statuses in the
// LMDB table `deployments`, their events in `deployment_events`), and one deployment actor per
// deployment (actors/serving/deployment.h), composed by the head's controller like JobsRegistry.
#pragma once

#include <caf/actor.hpp>
#include <caf/allowed_unsafe_message_type.hpp>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "actors/serving/deployment.h"
#include "actors/serving/deployment_spec.h"
#include "actors/serving/messages.h"
#include "cluster/config.h"
#include "cluster/head_store.h"
#include "cluster/lease_registry.h"
#include "cluster/membership.h"
#include "runtime/metrics.h"

namespace troupe::cluster {

/// Deployment actor -> controller (local messages; DeploymentHost as messages): a lease for one
/// replica, a lease to end, a status (and event) to store.
struct ReplicaPlacementRequest {
  serving::DeploymentSpec spec;
  serving::VersionSpec version;
  std::string replica;
  caf::actor deployment;
};
struct ReplicaLeaseRelease {
  uint64_t lease_id = 0;
};
struct ReplicaPlacementWithdraw {
  std::string replica;
  caf::actor deployment;
};
struct DeploymentStatusUpdate {
  serving::DeploymentStatus status;
  serving::DeploymentEvent event;
  caf::actor_addr deployment;  ///< who sends it
};

/// The deployments of the cluster (docs/serving.md, "Deployments"). Owned by the head's controller
/// actor and used only on its mailbox; the deployment actors reach it through messages to the
/// controller (ReplicaPlacementRequest, ReplicaLeaseRelease, DeploymentStatusUpdate).
///
/// Durability: a deployment is acknowledged (deploy's reply) only once its record is stored; its
/// status and events are stored in the order its actor sends them. The newest
/// kMaxEventsPerDeployment events are kept until it is deleted. After a head restart every stored
/// deployment gets a deployment actor again, which takes back the replicas of the earlier head
/// that still run (their node agents keep them while the head is lost and report them when they
/// join: NodeJoined) and replaces only those that are gone.
class DeploymentsRegistry {
 public:
  static constexpr size_t kMaxEventsPerDeployment = 1000;

  DeploymentsRegistry(const ClusterConfig& config, HeadStore* store, LeaseRegistry* leases,
                      const NodeDirectory* nodes, runtime::Runtime* runtime, const Clock* clock);
  ~DeploymentsRegistry();

  /// Opens the tables and starts a deployment actor for every stored deployment. Call once the
  /// controller runs (`controller` receives the deployment actors' messages).
  Status Recover(const caf::actor& controller);

  /// A client's DeploymentCommand: deploy (body: the spec's JSON), update (name, body: the new
  /// spec's JSON), rollback (name: back to the spec the last update replaced), list, show,
  /// events, scale (body: the count), delete. The reply's JSON (docs/serving.md; with
  /// "previous_spec" once an update was accepted), or an error: InvalidArgument (bad spec, count
  /// or op, an update under another name), AlreadyExists (a deployment of that name), NotFound
  /// (no such deployment), ResourceExhausted (a replica of a version can never fit the cluster),
  /// FailedPrecondition (a rollback with no earlier spec). An update or rollback is stored
  /// before it is acknowledged (docs/serving.md, "Updates and rollbacks"); a refused one changes
  /// nothing.
  StatusOr<std::string> Command(const serving::DeploymentCommand& command);

  /// Asks the lease registry for one replica's lease; the answer goes to the deployment actor.
  void Place(const ReplicaPlacementRequest& request);
  void Release(uint64_t lease_id);
  /// The replica's lease request leaves the scheduler's queue if it still waits.
  void Withdraw(const ReplicaPlacementWithdraw& withdraw);
  void Record(const DeploymentStatusUpdate& update);
  /// Node `node` joined (its agent `agent`) running `replicas` (JoinRequest::replicas); call after
  /// the join's LeaseRegistry::TakeBack. Each deployment actor gets its own (ReplicasFound, also
  /// when there are none); a replica of a deployment the head does not have (deleted just before
  /// a head restart) or that runs no actor, or whose lease the head does not hold (its node was
  /// declared dead meanwhile), is stopped (StopReplica).
  void NodeJoined(const std::string& node, const runtime::ActorRef& agent,
                  const std::vector<serving::RunningReplica>& replicas) const;
  /// The actor `who` ended (a deployment actor: its deployment runs no actor any more).
  void ActorGone(const caf::actor_addr& who);
  /// The scrape sources of the deployments' routers and autoscalers (docs/metrics.md, "Serving"),
  /// for the head's metrics server.
  std::vector<runtime::MetricsSource> MetricsSources() const;

 private:
  struct Deployment;
  class Host;
  StatusOr<std::string> Deploy(const std::string& body);
  // update (body: the new spec's JSON) or rollback (to the stored previous spec): checked, stored
  // with the replaced spec as the new previous one, then sent to the deployment actor.
  StatusOr<std::string> Update(const std::string& name, const std::string& body, bool rollback);
  // ResourceExhausted for a version whose replica can never fit a node of the cluster
  // (`deployment`: the existing deployment's actor, for the lease request's key).
  Status CheckFits(const serving::DeploymentSpec& spec, const caf::actor& deployment) const;
  StatusOr<std::string> Delete(const std::string& name);
  StatusOr<std::string> Events(const std::string& name);
  void StartActor(Deployment& d);
  // The record as show and list give it: a pending replica's lease request's place in the
  // scheduler's queue and why it waits, as "waiting".
  std::string WithQueueState(const Deployment& d) const;
  Status Store(const Deployment& d);
  Status StoreEvent(const std::string& name, const serving::DeploymentEvent& event);
  LeaseRequest LeaseRequestOf(const serving::DeploymentSpec& spec, const serving::VersionSpec& version,
                              const std::string& replica, const caf::actor& deployment) const;
  // The key of a replica's lease request: its name and its deployment actor's wire id (unique on
  // the head across restarts, so a replica of the same name under a new actor never gets an
  // earlier head's lease).
  std::string LeaseKey(const std::string& replica, const caf::actor& deployment) const;

  const ClusterConfig config_;
  HeadStore* store_;
  LeaseRegistry* leases_;
  const NodeDirectory* nodes_;
  runtime::Runtime* runtime_;
  const Clock* clock_;
  std::unique_ptr<Host> host_;
  std::shared_ptr<serving::RouterMetrics> router_metrics_ = std::make_shared<serving::RouterMetrics>();
  std::shared_ptr<serving::AutoscalerMetrics> autoscaler_metrics_ = std::make_shared<serving::AutoscalerMetrics>();
  std::shared_ptr<serving::ReplicaMetrics> replica_metrics_ = std::make_shared<serving::ReplicaMetrics>();
  storage::TableId deployments_table_;
  storage::TableId events_table_;
  std::map<std::string, std::unique_ptr<Deployment>> deployments_;
};

}  // namespace troupe::cluster

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::ReplicaPlacementRequest)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::ReplicaLeaseRelease)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::ReplicaPlacementWithdraw)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::DeploymentStatusUpdate)
