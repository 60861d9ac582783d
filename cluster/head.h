// The head: membership of the cluster's nodes (join, alive -> suspect -> dead, rejoin) and the
// slice leases, kept in LMDB so that a restarted head knows its cluster. What node agents and
// clients share with it about finding it is in cluster/bootstrap.h.
#pragma once

#include <memory>
#include <string>

#include "cluster/audit_log.h"
#include "cluster/config.h"
#include "runtime/bulk.h"
#include "runtime/metrics.h"
#include "runtime/runtime.h"
#include "storage/lmdb_env.h"

namespace troupe::cluster {

/// The head process's core. Owns the runtime, the LMDB state and the controller actor, which
/// composes the registries (membership.h, lease_registry.h, event_log.h, scrape_targets.h).
///
/// Node states: a node is `alive` from its join; `suspect` while nothing has come from it for
/// half the failure timeout; `dead` when its agent's monitor fires (process killed, link cut,
/// or no heartbeat for the failure timeout); `alive` again when it rejoins under the same name.
/// After a head restart, stored nodes are `unknown` until they rejoin (they do by themselves);
/// one still `unknown` when the failure timeout has passed since the head started is `dead`
/// ("did not rejoin within ... after the head restarted"), and the earlier head's leases on it
/// end with their owners told, as for any dead node.
///
/// Durability: a lease is granted only once it is stored in LMDB; a lease the head cannot
/// store is refused (ResourceExhausted when head.data_dir is full). Node records and lease
/// removals whose write fails are acknowledged and written again at the next write (a
/// restarted head relearns them from the nodes' rejoins). head.address and
/// prometheus-targets.json are replaced atomically (WriteFileAtomically).
class Head {
 public:
  static StatusOr<std::unique_ptr<Head>> Start(const ClusterConfig& config);
  ~Head();
  void Stop();

  const std::string& address() const { return address_; }
  /// host:port of the head's Prometheus endpoint.
  const std::string& metrics_address() const { return metrics_->address(); }
  runtime::NodeId node_id() const { return runtime_->node_id(); }
  runtime::Runtime& runtime() { return *runtime_; }
  /// The head's audit log (cluster/audit_log.h), for the head's actors that record admin
  /// actions (the controller: deployments and jobs; the api actor: keys and tenants).
  std::shared_ptr<AuditLog> audit_log() const { return audit_; }

 private:
  Head() = default;
  std::unique_ptr<storage::LmdbEnv> env_;
  std::shared_ptr<AuditLog> audit_;  // uses env_
  std::unique_ptr<runtime::Runtime> runtime_;
  std::unique_ptr<runtime::MetricsServer> metrics_;
  /// Takes the checkpoint shards of nodes without shared storage (docs/checkpoints.md).
  std::unique_ptr<runtime::BulkEndpoint> shard_bulk_;
  caf::actor controller_;
  caf::actor api_;  ///< the API gateways' keys, limits and usage (cluster/api_registry.h)
  std::string address_;
  std::string address_file_;
};

}  // namespace troupe::cluster
