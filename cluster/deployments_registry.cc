// DeploymentsRegistry.
#include "cluster/deployments_registry.h"

#include <caf/all.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <optional>

namespace troupe::cluster {

using serving::DeploymentEvent;
using serving::DeploymentSpec;
using serving::DeploymentStatus;
using Json = nlohmann::json;

struct DeploymentsRegistry::Deployment {
  DeploymentSpec spec;
  DeploymentStatus status;
  // The spec an update replaced (troupe serve rollback goes back to it).
  std::optional<DeploymentSpec> previous;
  caf::actor actor;
  uint64_t next_event = 0;
};

// The deployment actors' DeploymentHost: their calls become messages to the controller, which
// calls the registry on its mailbox.
class DeploymentsRegistry::Host : public serving::DeploymentHost {
 public:
  explicit Host(caf::actor controller) : controller_(std::move(controller)) {}
  void RequestReplicaPlacement(const DeploymentSpec& spec, const serving::VersionSpec& version,
                               const std::string& replica, const caf::actor& deployment) override {
    caf::anon_send(controller_, ReplicaPlacementRequest{spec, version, replica, deployment});
  }
  void WithdrawReplicaPlacement(const std::string& replica, const caf::actor& deployment) override {
    caf::anon_send(controller_, ReplicaPlacementWithdraw{replica, deployment});
  }
  void ReleaseReplicaPlacement(uint64_t lease_id) override { caf::anon_send(controller_, ReplicaLeaseRelease{lease_id}); }
  void Update(const caf::actor& deployment, const DeploymentStatus& status, const DeploymentEvent& event) override {
    caf::anon_send(controller_, DeploymentStatusUpdate{status, event, deployment.address()});
  }

 private:
  caf::actor controller_;
};

namespace {

std::string EventKey(const std::string& name, uint64_t seq) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(seq));
  return name + "/" + buf;
}

std::string RecordJson(const DeploymentSpec& spec, const DeploymentStatus& status,
                       const std::optional<DeploymentSpec>& previous = std::nullopt) {
  Json record{{"spec", Json::parse(serving::DeploymentSpecToJson(spec))},
              {"status", Json::parse(serving::DeploymentStatusToJson(status))}};
  if (previous) record["previous_spec"] = Json::parse(serving::DeploymentSpecToJson(*previous));
  return record.dump();
}

Status NoSuchDeployment(const std::string& name) {
  return NotFoundError("no deployment named '" + name + "' (troupe serve list shows the deployments)");
}

}  // namespace

DeploymentsRegistry::DeploymentsRegistry(const ClusterConfig& config, HeadStore* store, LeaseRegistry* leases,
                                         const NodeDirectory* nodes, runtime::Runtime* runtime, const Clock* clock)
    : config_(config), store_(store), leases_(leases), nodes_(nodes), runtime_(runtime), clock_(clock) {}

std::vector<runtime::MetricsSource> DeploymentsRegistry::MetricsSources() const {
  return {serving::RouterMetricsSource(router_metrics_), serving::AutoscalerMetricsSource(autoscaler_metrics_),
          serving::ReplicaMetricsSource(replica_metrics_)};
}

DeploymentsRegistry::~DeploymentsRegistry() {
  for (auto& [name, d] : deployments_) {
    if (d->actor) caf::anon_send_exit(d->actor, caf::exit_reason::user_shutdown);
  }
}

Status DeploymentsRegistry::Recover(const caf::actor& controller) {
  host_ = std::make_unique<Host>(controller);
  ASSIGN_OR_RETURN(deployments_table_, store_->env().OpenTable("deployments"));
  ASSIGN_OR_RETURN(events_table_, store_->env().OpenTable("deployment_events"));
  ASSIGN_OR_RETURN(auto txn, store_->env().BeginRead());
  std::vector<std::pair<std::string, std::string>> rows;
  RETURN_IF_ERROR(txn.ForEach(deployments_table_, "", [&](std::string_view key, std::string_view value) {
    rows.emplace_back(std::string(key), std::string(value));
    return true;
  }));
  for (const auto& [name, value] : rows) {
    auto d = std::make_unique<Deployment>();
    try {
      auto json = Json::parse(value);
      auto spec = serving::DeploymentSpecFromJson(json.at("spec").dump());
      auto status = serving::DeploymentStatusFromJson(json.at("status").dump());
      if (!spec.ok() || !status.ok()) {
        spdlog::error("head: deployment record '{}' does not decode ({}); left out",
                      name, (!spec.ok() ? spec.status() : status.status()).ToString());
        continue;
      }
      d->spec = std::move(*spec);
      d->status = std::move(*status);
      if (json.contains("previous_spec")) {
        auto previous = serving::DeploymentSpecFromJson(json.at("previous_spec").dump());
        if (previous.ok()) {
          d->previous = std::move(*previous);
        } else {
          spdlog::error("head: deployment '{}': its previous spec does not decode ({}); no rollback to it",
                        name, previous.status().ToString());
        }
      }
    } catch (const std::exception& e) {
      spdlog::error("head: deployment record '{}' does not decode ({}); left out", name, e.what());
      continue;
    }
    const std::string prefix = name + "/";
    RETURN_IF_ERROR(txn.ForEach(events_table_, prefix, [&](std::string_view key, std::string_view) {
      if (key.substr(0, prefix.size()) != prefix) return false;
      ++d->next_event;
      return true;
    }));
    deployments_[name] = std::move(d);
  }
  txn.Abort();
  for (auto& [name, d] : deployments_) {
    // The replicas of the earlier head kept running on their nodes: the new deployment actor
    // takes back those whose lease the lease registry takes back too (the leases become its own
    // here, before any node rejoins, so TakeBack watches it and not the earlier actor), and each
    // node's join tells it which of them still run (NodeJoined). A replica whose lease is gone
    // (its node died under the earlier head) is not waited for.
    std::vector<serving::ReplicaView> kept;
    for (const auto& r : d->status.replicas) {
      if (r.state == "pending" || (r.lease_id != 0 && leases_->IsRecovered(r.lease_id))) kept.push_back(r);
    }
    d->status.replicas = std::move(kept);
    StartActor(*d);
    for (const auto& r : d->status.replicas) {
      if (r.lease_id != 0) (void)leases_->AdoptRecovered(r.lease_id, runtime_->Ref(d->actor));
    }
  }
  return OkStatus();
}

void DeploymentsRegistry::NodeJoined(const std::string& node, const runtime::ActorRef& agent,
                                     const std::vector<serving::RunningReplica>& replicas) const {
  std::map<std::string, std::vector<serving::RunningReplica>> by_deployment;
  for (const auto& r : replicas) {
    // A replica runs on its lease: one whose lease the head no longer has (its node was declared
    // dead before this join, and the lease ended) is stopped, and its deployment, not hearing of
    // it, replaces it. The join took back the node's leases just before (LeaseRegistry::TakeBack).
    if (!leases_->IsGranted(r.lease_id)) {
      spdlog::warn("head: node '{}' runs replica {} on lease {}, which the head does not hold; stopping it", node,
                   r.name, r.lease_id);
      agent.Send(serving::StopReplica{r.name});
      continue;
    }
    by_deployment[r.deployment].push_back(r);
  }
  for (const auto& [name, d] : deployments_) {
    // Every deployment actor hears of the join, with none of its replicas too: the replicas it
    // waits for on that node and that the node no longer runs are replaced at once.
    if (!d->actor) continue;
    auto it = by_deployment.find(name);
    serving::ReplicasFound found{node, agent, it == by_deployment.end() ? std::vector<serving::RunningReplica>{}
                                                                         : std::move(it->second)};
    if (it != by_deployment.end()) by_deployment.erase(it);
    caf::anon_send(d->actor, std::move(found));
  }
  // Replicas of deployments that are gone (deleted just before the head died) or run no actor.
  for (const auto& [name, rs] : by_deployment) {
    for (const auto& r : rs) {
      spdlog::warn("head: node '{}' runs replica {} of deployment '{}', which {}; stopping it", node, r.name, name,
                   deployments_.count(name) == 0 ? "the head does not know" : "has no deployment actor");
      agent.Send(serving::StopReplica{r.name});
    }
  }
}

void DeploymentsRegistry::StartActor(Deployment& d) {
  serving::DeploymentInit init;
  init.spec = d.spec;
  init.status = d.status;
  init.host = host_.get();
  init.runtime = runtime_;
  init.clock = clock_;
  init.router_metrics = router_metrics_;
  init.autoscaler_metrics = autoscaler_metrics_;
  init.replica_metrics = replica_metrics_;
  // The head declares a node of the earlier head dead once failure_timeout passed without its
  // join, and a join reports the node's replicas: by twice that, every live node has reported.
  init.recovery_timeout = 2 * std::chrono::duration_cast<std::chrono::milliseconds>(config_.failure_timeout);
  d.actor = serving::SpawnDeployment(runtime_->system(), std::move(init));
}

std::string DeploymentsRegistry::LeaseKey(const std::string& replica, const caf::actor& deployment) const {
  return "serving/" + replica + "/" + std::to_string(runtime_->Ref(deployment).id());
}

LeaseRequest DeploymentsRegistry::LeaseRequestOf(const DeploymentSpec& spec, const serving::VersionSpec& version,
                                                 const std::string& replica, const caf::actor& deployment) const {
  LeaseRequest r;
  r.tenant = spec.tenant;
  r.count = 1;
  // As a training worker's: `slices` slices of at least `slice_memory` each (one byte: any slice
  // size); none for a CPU-only replica.
  const auto& res = version.resources;
  r.slice_memory_bytes = res.slices == 0 ? 0 : uint64_t{res.slices} * std::max<uint64_t>(res.slice_memory_bytes, 1);
  r.compute_percent = res.slices == 0 ? 0 : res.compute_percent;
  r.cpus = res.cpus;
  r.host_memory_bytes = res.host_memory_bytes;
  // Spread: a replica goes to the least loaded node, so one node's loss takes as few as it can.
  r.policy = "spread";
  r.gang = false;
  r.owner = runtime_->Ref(deployment);
  r.key = LeaseKey(replica, deployment);
  return r;
}

void DeploymentsRegistry::Place(const ReplicaPlacementRequest& request) {
  const NodeDirectory* nodes = nodes_;
  const caf::actor deployment = request.deployment;
  const std::string replica = request.replica;
  auto answer = [nodes, deployment, replica](StatusOr<LeaseGrant> grant) {
    serving::ReplicaPlacementAnswer out;
    out.replica = replica;
    if (!grant.ok()) {
      out.status = grant.status();
    } else if (grant->workers.empty()) {
      out.status = InternalError("lease " + std::to_string(grant->lease_id) + " names no node");
      out.place.lease_id = grant->lease_id;
    } else {
      const auto& w = grant->workers.front();
      out.place.lease_id = grant->lease_id;
      out.place.node = w.node;
      out.place.gpu_index = w.gpu_index == kNoGpuIndex ? serving::kNoReplicaGpu : w.gpu_index;
      out.place.gpu_id = w.gpu_id;
      out.place.memory_bytes = w.memory_bytes;
      out.place.compute_percent = w.compute_percent;
      out.place.simulated = w.simulated;
      const runtime::ActorRef* agent = nodes->AgentOf(w.node);
      if (agent == nullptr) {
        out.status = UnavailableError("node '" + w.node + "' has no agent at the head");
      } else {
        out.place.agent = *agent;
      }
    }
    caf::anon_send(deployment, std::move(out));
  };
  auto now = leases_->Request(LeaseRequestOf(request.spec, request.version, replica, deployment),
                              [&]() -> LeaseReply { return answer; });
  if (now) answer(std::move(*now));
}

std::string DeploymentsRegistry::WithQueueState(const Deployment& d) const {
  Json record = Json::parse(RecordJson(d.spec, d.status, d.previous));
  if (!d.actor) return record.dump();
  for (auto& r : record["status"]["replicas"]) {
    if (r.value("state", "") != "pending") continue;
    auto waiting = leases_->WaitingByKey(LeaseKey(r.value("name", ""), d.actor));
    if (!waiting) continue;
    r["waiting"] = "queue position " + std::to_string(waiting->second) + " (" + waiting->first.priority +
                   "), waited " + std::to_string(waiting->first.waited_ms) + " ms: " + waiting->first.reason;
  }
  return record.dump();
}

void DeploymentsRegistry::Withdraw(const ReplicaPlacementWithdraw& withdraw) {
  (void)leases_->Withdraw(LeaseKey(withdraw.replica, withdraw.deployment));
}

void DeploymentsRegistry::Release(uint64_t lease_id) {
  auto released = leases_->Release(lease_id);
  if (!released.ok() && released.status().code() != StatusCode::kNotFound) {
    spdlog::warn("head: replica lease {}: {}", lease_id, released.status().ToString());
  }
}

Status DeploymentsRegistry::Store(const Deployment& d) {
  return store_->Write(
      [&](storage::Txn& txn) { return txn.Put(deployments_table_, d.spec.name, RecordJson(d.spec, d.status, d.previous)); });
}

Status DeploymentsRegistry::StoreEvent(const std::string& name, const DeploymentEvent& event) {
  auto it = deployments_.find(name);
  if (it == deployments_.end()) return NoSuchDeployment(name);
  Deployment& d = *it->second;
  const uint64_t seq = d.next_event++;
  return store_->Write([&](storage::Txn& txn) {
    RETURN_IF_ERROR(txn.Put(deployments_table_, name, RecordJson(d.spec, d.status, d.previous)));
    RETURN_IF_ERROR(txn.Put(events_table_, EventKey(name, seq), serving::DeploymentEventToJson(event)));
    if (seq >= kMaxEventsPerDeployment) {
      Status gone = txn.Delete(events_table_, EventKey(name, seq - kMaxEventsPerDeployment));
      if (!gone.ok() && gone.code() != StatusCode::kNotFound) return gone;
    }
    return OkStatus();
  });
}

void DeploymentsRegistry::Record(const DeploymentStatusUpdate& update) {
  auto it = deployments_.find(update.status.name);
  // Deleted meanwhile, or an actor that is no longer the deployment's (deleted and deployed again).
  if (it == deployments_.end() || !it->second->actor || it->second->actor.address() != update.deployment) return;
  Deployment& d = *it->second;
  d.status = update.status;
  Status stored = update.event.what.empty() ? Store(d) : StoreEvent(d.spec.name, update.event);
  if (!stored.ok()) spdlog::error("head: deployment '{}': status not stored: {}", d.spec.name, stored.ToString());
}

void DeploymentsRegistry::ActorGone(const caf::actor_addr& who) {
  for (auto& [name, d] : deployments_) {
    if (d->actor && d->actor.address() == who) {
      spdlog::warn("head: the deployment actor of '{}' ended; it runs no replica until the head restarts", name);
      d->actor = nullptr;
    }
  }
}

Status DeploymentsRegistry::CheckFits(const DeploymentSpec& spec, const caf::actor& deployment) const {
  for (const auto& v : spec.versions) {
    auto request = SchedRequestOf(0, LeaseRequestOf(spec, v, spec.name + "/" + v.name + "/fit-check", deployment));
    if (!request.ok()) return request.status();
    if (!leases_->scheduler().snapshot().EverFits(*request)) {
      return ResourceExhaustedError("deployment '" + spec.name + "', version '" + v.name + "': one replica (" +
                                    std::to_string(v.resources.cpus) + " CPU(s), " +
                                    std::to_string(v.resources.slices) +
                                    " slice(s)) can never fit a node of the cluster; ask for less, or add a node");
    }
  }
  return OkStatus();
}

StatusOr<std::string> DeploymentsRegistry::Update(const std::string& name, const std::string& body, bool rollback) {
  auto it = deployments_.find(name);
  if (it == deployments_.end()) return NoSuchDeployment(name);
  Deployment& d = *it->second;
  if (!d.actor) {
    return UnavailableError("deployment '" + name + "' has no deployment actor (it ended); restart the head");
  }
  DeploymentSpec spec;
  if (rollback) {
    if (!d.previous) {
      return FailedPreconditionError("rollback of deployment '" + name +
                                     "': there is no earlier spec (no update was accepted since it was deployed)");
    }
    spec = *d.previous;
  } else {
    ASSIGN_OR_RETURN(spec, serving::DeploymentSpecFromJson(body));
    if (spec.name != name) {
      return InvalidArgumentError("update of deployment '" + name + "': the spec is named '" + spec.name +
                                  "'; an update keeps the name (deploy a new deployment for a new name)");
    }
  }
  RETURN_IF_ERROR(CheckFits(spec, d.actor));
  // Stored before the actor hears of it or the client is answered: an accepted update survives a
  // head restart; a refused or failed one leaves the record as it was.
  const DeploymentSpec before = d.spec;
  const std::optional<DeploymentSpec> previous_before = d.previous;
  d.previous = d.spec;
  d.spec = spec;
  Status stored = StoreEvent(name, DeploymentEvent{clock_->UnixMs(), rollback ? "rollback requested" : "update requested",
                                                    std::to_string(spec.versions.size()) + " version(s)"});
  if (!stored.ok()) {
    d.spec = before;
    d.previous = previous_before;
    return stored;
  }
  caf::anon_send(d.actor, serving::UpdateDeployment{spec, rollback ? "troupe serve rollback" : "troupe serve update"});
  return RecordJson(d.spec, d.status, d.previous);
}

StatusOr<std::string> DeploymentsRegistry::Deploy(const std::string& body) {
  ASSIGN_OR_RETURN(DeploymentSpec spec, serving::DeploymentSpecFromJson(body));
  if (auto it = deployments_.find(spec.name); it != deployments_.end()) {
    return AlreadyExistsError("a deployment named '" + spec.name + "' exists (" + it->second->status.state +
                              "); delete it first (troupe serve delete " + spec.name + ") or choose another name");
  }
  auto d = std::make_unique<Deployment>();
  d->spec = spec;
  d->status.name = spec.name;
  d->status.router = serving::RouterName(spec.name);
  d->status.deployed_unix_ms = clock_->UnixMs();
  d->status.reason = "deployed";
  Deployment& ref = *d;
  deployments_[spec.name] = std::move(d);
  // Stored before it is acknowledged or started: a deploy the client saw succeed survives a head
  // restart.
  Status stored = StoreEvent(spec.name, DeploymentEvent{clock_->UnixMs(), "deploy requested",
                                                         std::to_string(spec.versions.size()) + " version(s)"});
  if (!stored.ok()) {
    deployments_.erase(spec.name);
    return stored;
  }
  StartActor(ref);
  return RecordJson(ref.spec, ref.status, ref.previous);
}

StatusOr<std::string> DeploymentsRegistry::Delete(const std::string& name) {
  auto it = deployments_.find(name);
  if (it == deployments_.end()) return NoSuchDeployment(name);
  Deployment& d = *it->second;
  // Its actor stops every replica and releases every lease (and they end with it in any case: it
  // owns them).
  if (d.actor) caf::anon_send(d.actor, serving::StopDeployment{"troupe serve delete"});
  RETURN_IF_ERROR(store_->Write([&](storage::Txn& txn) {
    RETURN_IF_ERROR(txn.Delete(deployments_table_, name));
    std::vector<std::string> keys;
    const std::string prefix = name + "/";
    RETURN_IF_ERROR(txn.ForEach(events_table_, prefix, [&](std::string_view key, std::string_view) {
      if (key.substr(0, prefix.size()) != prefix) return false;
      keys.emplace_back(key);
      return true;
    }));
    for (const auto& k : keys) RETURN_IF_ERROR(txn.Delete(events_table_, k));
    return OkStatus();
  }));
  d.status.state = "deleted";
  std::string out = RecordJson(d.spec, d.status, d.previous);
  deployments_.erase(it);
  return out;
}

StatusOr<std::string> DeploymentsRegistry::Events(const std::string& name) {
  if (deployments_.count(name) == 0) return NoSuchDeployment(name);
  Json events = Json::array();
  ASSIGN_OR_RETURN(auto txn, store_->env().BeginRead());
  const std::string prefix = name + "/";
  RETURN_IF_ERROR(txn.ForEach(events_table_, prefix, [&](std::string_view key, std::string_view value) {
    if (key.substr(0, prefix.size()) != prefix) return false;
    events.push_back(Json::parse(value, nullptr, false));
    return true;
  }));
  return events.dump();
}

StatusOr<std::string> DeploymentsRegistry::Command(const serving::DeploymentCommand& command) {
  const std::string& op = command.op;
  if (op == "deploy") return Deploy(command.body);
  if (op == "update") return Update(command.name, command.body, false);
  if (op == "rollback") return Update(command.name, "", true);
  if (op == "list") {
    Json list = Json::array();
    for (const auto& [name, d] : deployments_) list.push_back(Json::parse(WithQueueState(*d)));
    return list.dump();
  }
  if (op == "delete") return Delete(command.name);
  if (op == "events") return Events(command.name);
  if (op == "show" || op == "scale") {
    auto it = deployments_.find(command.name);
    if (it == deployments_.end()) return NoSuchDeployment(command.name);
    Deployment& d = *it->second;
    if (op == "show") return WithQueueState(d);
    uint32_t count = 0;
    try {
      size_t used = 0;
      const long long n = std::stoll(command.body, &used);
      if (used != command.body.size() || n < 0 || n > serving::kMaxDeploymentReplicas) throw std::out_of_range("");
      count = static_cast<uint32_t>(n);
    } catch (const std::exception&) {
      return InvalidArgumentError("scale " + command.name + ": '" + command.body + "' is not a replica count (0.." +
                                  std::to_string(serving::kMaxDeploymentReplicas) + ")");
    }
    if (!d.actor) {
      return UnavailableError("deployment '" + command.name + "' has no deployment actor (it ended); restart the head");
    }
    caf::anon_send(d.actor, serving::ScaleDeployment{count});
    return RecordJson(d.spec, d.status, d.previous);
  }
  return InvalidArgumentError("unknown deployment operation '" + op +
                              "' (expected deploy, update, rollback, list, show, events, scale or delete)");
}

}  // namespace troupe::cluster
