// NodeAgent: what `troupe node` runs. It joins the head with the node's resources, watches the
// head, and joins again by itself whenever the head is lost (restarted, unreachable).
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "actors/gpu_discovery.h"
#include "actors/training/actor_worker.h"
#include "actors/training/worker_launcher.h"
#include "cluster/config.h"
#include "common/backoff.h"
#include "cluster/messages.h"
#include "runtime/bulk.h"
#include "runtime/metrics.h"
#include "runtime/runtime.h"

namespace troupe::cluster {

/// Between a node agent's failed joins: 100 ms, doubling, without jitter, at most 2 s and at most
/// half of `failure_timeout`. A restarted head declares dead every node of the earlier head that
/// has not rejoined within failure_timeout of its start (docs/scheduling.md), so a node still
/// backing off from the head's downtime must try again well inside that window: with a 2 s cap
/// and a 1 s failure_timeout, a head that took 2.5 s to come back (ASan) found a healthy node
/// retrying 1.6 s later and declared it dead. Jitter (say 0.5) would spread out the rejoins of
/// many nodes after a head restart.
BackoffPolicy RejoinBackoff(std::chrono::milliseconds failure_timeout);

struct NodeReplicas;

class NodeAgent {
 public:
  /// Starts the node's runtime (listening on its configured address). `head_address` overrides
  /// where the head is (see ResolveHeadAddress).
  static StatusOr<std::unique_ptr<NodeAgent>> Start(const ClusterConfig& config, const std::string& name,
                                                    const std::string& head_address);
  ~NodeAgent();

  /// Joins and keeps joined until Stop(); `on_joined` runs after every successful join.
  void Run(const std::function<void(const JoinReply&)>& on_joined);
  /// Makes Run() return (from any thread, e.g. a signal handler thread).
  void Stop();

  runtime::Runtime& runtime() { return *runtime_; }

 private:
  NodeAgent() = default;
  /// One join: finds the head, sends `record`; the head's ref and its reply.
  StatusOr<runtime::ActorRef> Join(const NodeRecord& record, runtime::NodeId head_id, JoinReply* reply);
  /// Waits up to `d`; true if Stop() was called.
  bool WaitStop(std::chrono::milliseconds d);

  struct Slices;
  /// The serving replicas running here (the agent actor keeps them; every join reports them).
  std::shared_ptr<NodeReplicas> replicas_;
  /// The node's GPUs: NVML ("gpus: auto"), the config's simulated ones, or none. InvalidArgument
  /// when one would be cut into more than kMaxSlicesPerGpu slices. Runs before the runtime starts.
  Status DiscoverGpus();
  /// One GpuSlice actor per slice of each GPU, and the agent actor that leases them.
  Status SpawnSlices();
  /// What the GPUs do now (NVML), for the head's load-aware placement.
  GpuReport Report();
  /// At exit: ends the agent and slice actors, stops the runtime, and gives the actors it
  /// ended (the head's watcher among them) a moment to finish. The runtime does not wait for
  /// actors, and one alive when the actor system goes is never freed.
  void Shutdown();

  ClusterConfig config_;
  std::vector<GpuInfo> gpus_;
  std::unique_ptr<actors::Nvml> nvml_;
  std::shared_ptr<Slices> slices_;
  const NodeSpec* spec_ = nullptr;
  std::string head_override_;
  std::unique_ptr<runtime::Runtime> runtime_;
  std::unique_ptr<runtime::MetricsServer> metrics_;
  /// The process workers of training jobs on this node (docs/jobs.md); their logs under
  /// `<data_dir>/jobs`.
  std::shared_ptr<training::WorkerLauncher> workers_;
  /// The actor workers of training jobs on this node: reported with the process workers at every
  /// join, adopted and stopped alike (docs/jobs.md, "When the head restarts").
  std::shared_ptr<training::ActorWorkerTable> actor_workers_;
  /// `checkpoints: send`: the bulk path its actor workers send checkpoint shards over (closed in
  /// Shutdown, before the runtime stops).
  std::shared_ptr<runtime::BulkEndpoint> shard_bulk_;
  runtime::ActorRef agent_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool head_lost_ = false;
};

}  // namespace troupe::cluster
