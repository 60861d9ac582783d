// The head's cluster metrics: what the Prometheus scrape of the head shows of the cluster
// (nodes by state, heartbeat ages, GPUs, slices, leases), computed from a copy of the
// controller's state that the scrape thread may read.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "cluster/lease_registry.h"
#include "cluster/messages.h"
#include "common/clock.h"
#include "runtime/metrics.h"
#include "transport/frame.h"

namespace troupe::cluster {

/// What the scrape thread sees of the controller's state: the controller writes it after each
/// change, the metrics server's thread reads it.
struct ClusterView {
  std::mutex mu;
  std::map<std::string, NodeRecord> nodes;
  LeaseCounts leases;
};

/// How long the head has not heard from a node (the bridge's `Silence`); nullopt when it has no
/// connection to it.
using SilenceOf = std::function<std::optional<Clock::Duration>(transport::NodeId)>;

/// The scrape source of the head's cluster metrics (docs/metrics.md): `troupe_cluster_nodes` by
/// state (StateNow with `failure_timeout`), `troupe_cluster_node_heartbeat_age_seconds`, and for
/// live nodes only `troupe_cluster_gpus` (simulated ones labelled), `troupe_cluster_gpu_memory_bytes`
/// and `troupe_cluster_slices_total` (SliceCount, the scheduler's rule); then
/// `troupe_cluster_slices_leased` and `troupe_cluster_leases` by state. Every series carries
/// `cluster`.
runtime::MetricsSource ClusterMetrics(std::shared_ptr<ClusterView> view, SilenceOf silence,
                                      std::chrono::milliseconds failure_timeout, std::string cluster_name);

}  // namespace troupe::cluster
