// The deployment actor.
#include "actors/serving/deployment.h"

#include <caf/all.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>
#include <optional>
#include <set>

#include "actors/serving/autoscaler.h"
#include "actors/serving/router.h"

namespace troupe::serving {

namespace {

using Json = nlohmann::json;

// Sent by the deployment actor to itself when a replacement's backoff has passed.
using reconcile_atom = caf::atom_constant<caf::atom("reconcile")>;
// Sent by the deployment actor to itself every health_check.interval: probe the ready replicas.
using health_atom = caf::atom_constant<caf::atom("health")>;
// Sent by a restarted head's deployment actor to itself recovery_timeout after it started: the
// replicas still recovering (their node never reported them) are lost.
using recovered_atom = caf::atom_constant<caf::atom("recovered")>;

// A HealthProbe's replica fails it itself at health_check.timeout, with why ("no answer from its
// backend in 500 ms: the request path is stuck"); the deployment actor waits this much longer for
// that answer, so the event says why, not only that its own wait ran out. A replica actor that
// does not answer at all still fails the check, at timeout + this. troupe's choice: a message's
// round trip to a node is well under it.
constexpr std::chrono::milliseconds kProbeAnswerGrace{100};

constexpr const char* kPending = "pending";
constexpr const char* kStarting = "starting";
constexpr const char* kReady = "ready";
constexpr const char* kDraining = "draining";
// Taken back after a head restart: stored by the earlier head, not reported by its node yet.
constexpr const char* kRecovering = "recovering";

// The index of "<deployment>/<version>/replica-<index>"; nullopt for another name.
std::optional<uint64_t> ReplicaIndexOf(const std::string& name) {
  const auto at = name.rfind("/replica-");
  if (at == std::string::npos) return std::nullopt;
  const std::string digits = name.substr(at + 9);
  if (digits.empty() || digits.size() > 18 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  return std::stoull(digits);
}

struct Replica {
  std::string name;
  std::string version;
  std::string state = kPending;
  uint64_t index = 0;
  ReplicaPlace place;
  runtime::ActorRef ref;
  // Its ReplicaStateChanged(ready) came before the agent's ReplicaStarted (two senders: no order).
  bool ready_seen = false;
  // Health checks failed in a row, and whether one is in flight (checks never overlap).
  uint32_t failed_checks = 0;
  bool checking = false;
  // Of a version an update changed or removed: replaced by a rollout (UpdateDeployment).
  bool outdated = false;
};

struct DeploymentState {
  DeploymentInit init;
  DeploymentStatus status;
  std::map<std::string, Replica> replicas;
  uint64_t next_index = 0;
  caf::actor router;
  caf::actor autoscaler;
  runtime::ActorRef self_ref;
  runtime::ActorRef autoscaler_ref;
  std::optional<Backoff> backoff;
  bool replacement_due = false;  // a backoff timer runs: no replica is added until it fires
  bool reached_desired = false;
  bool stopping = false;
  // An update's rollout runs: some replicas are outdated.
  bool rolling = false;
  // Versions of weight 0 that keep the replicas they had when an update set their weight to 0
  // (blue-green standby): how many.
  std::map<std::string, uint32_t> standby;
  // The weights of versions an update removed, for their outdated replicas until they leave.
  std::map<std::string, uint32_t> retired_weight;

  const DeploymentSpec& spec() const { return init.spec; }
  const VersionSpec* Version(const std::string& name) const {
    for (const auto& v : init.spec.versions) {
      if (v.name == name) return &v;
    }
    return nullptr;
  }
  Replica* ByAddress(const caf::actor_addr& addr) {
    for (auto& [name, r] : replicas) {
      if (r.ref.valid() && r.ref.handle().address() == addr) return &r;
    }
    return nullptr;
  }
  // Pending, starting and ready replicas: those that serve, or will. Of one version: those not
  // outdated.
  uint32_t Live(const std::string& version = "") const {
    uint32_t n = 0;
    for (const auto& [name, r] : replicas) {
      if (r.state != kDraining && (version.empty() || (r.version == version && !r.outdated))) ++n;
    }
    return n;
  }
  // A replica of a weight-0 version that is not outdated: kept, out of the router's set.
  bool Standby(const Replica& r) const {
    const VersionSpec* v = Version(r.version);
    return !r.outdated && v != nullptr && v->weight == 0;
  }
  // The router's weight of a replica's version (a removed version's: its last weight).
  uint32_t WeightOf(const Replica& r) const {
    if (const VersionSpec* v = Version(r.version); v != nullptr) return v->weight;
    auto it = retired_weight.find(r.version);
    return it == retired_weight.end() ? 0 : it->second;
  }
  bool AnyOutdated() const {
    for (const auto& [name, r] : replicas) {
      if (r.outdated) return true;
    }
    return false;
  }
};

using Self = caf::stateful_actor<DeploymentState>;

}  // namespace

std::map<std::string, uint32_t> ReplicasPerVersion(const DeploymentSpec& spec, uint32_t desired) {
  std::map<std::string, uint32_t> out;
  std::vector<const VersionSpec*> weighted;
  uint64_t total = 0;
  for (const auto& v : spec.versions) {
    out[v.name] = 0;
    if (v.weight > 0) {
      weighted.push_back(&v);
      total += v.weight;
    }
  }
  std::stable_sort(weighted.begin(), weighted.end(),
                   [](const VersionSpec* a, const VersionSpec* b) { return a->weight > b->weight; });
  uint32_t left = desired;
  for (const VersionSpec* v : weighted) {
    if (left == 0) break;
    out[v->name] = 1;
    --left;
  }
  if (left == 0 || total == 0) return out;
  const uint32_t extra = left;
  std::vector<std::pair<double, std::string>> remainders;
  for (const VersionSpec* v : weighted) {
    const double share = static_cast<double>(extra) * v->weight / static_cast<double>(total);
    const auto whole = static_cast<uint32_t>(share);
    out[v->name] += whole;
    left -= whole;
    remainders.emplace_back(share - whole, v->name);
  }
  std::stable_sort(remainders.begin(), remainders.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  for (size_t i = 0; left > 0 && i < remainders.size(); ++i, --left) ++out[remainders[i].second];
  return out;
}

namespace {

void Publish(Self* self, const std::string& what, const std::string& why);

// The router gets the ready replicas, each version's weight divided over its ready replicas.
void PushReplicaSet(Self* self) {
  auto& st = self->state;
  // A weight-0 version's replicas (standby) are left out: no policy sends them anything.
  std::map<std::string, uint32_t> ready_of;
  for (const auto& [name, r] : st.replicas) {
    if (r.state == kReady && st.WeightOf(r) > 0) ++ready_of[r.version];
  }
  ReplicaSet set;
  set.deployment = st.spec().name;
  set.generation = ++st.status.generation;
  for (const auto& [name, r] : st.replicas) {
    if (r.state != kReady || st.WeightOf(r) == 0) continue;
    const double weight = static_cast<double>(st.WeightOf(r)) / ready_of[r.version];
    set.replicas.push_back(ReplicaInfo{r.ref, r.name, r.version, weight, st.spec().max_ongoing_requests});
  }
  if (st.router) self->send(st.router, std::move(set));
}

// The status's replicas and standby counts as the actor has them now.
void RefreshView(Self* self) {
  auto& st = self->state;
  st.status.replicas.clear();
  for (const auto& [name, r] : st.replicas) {
    st.status.replicas.push_back(
        ReplicaView{r.name, r.version, r.state, r.place.node, r.place.lease_id, r.outdated, st.Standby(r)});
  }
  st.status.standby = st.standby;
  st.status.next_replica = st.next_index;
}

void SendCount(Self* self) {
  auto& st = self->state;
  if (!st.autoscaler) return;
  RefreshView(self);
  self->send(st.autoscaler,
             ReplicaCount{st.spec().name, AutoscalerReplicaCount(st.status), AutoscalerReadyCount(st.status)});
}

void Publish(Self* self, const std::string& what, const std::string& why) {
  auto& st = self->state;
  RefreshView(self);
  std::map<std::string, uint32_t> by_state;
  std::map<std::pair<std::string, std::string>, uint32_t> by_version_state;
  uint32_t outdated = 0;
  for (const auto& r : st.status.replicas) {
    ++by_state[r.state];
    ++by_version_state[{r.version, r.state}];
    if (r.outdated) ++outdated;
  }
  if (st.init.replica_metrics) {
    std::vector<std::string> versions;
    for (const auto& v : st.spec().versions) versions.push_back(v.name);
    st.init.replica_metrics->Publish(st.spec().name, versions, by_version_state);
  }
  uint32_t want = st.status.desired;
  for (const auto& [version, n] : st.standby) want += n;
  if (st.stopping) {
    st.status.state = "deleting";
  } else if (outdated > 0) {
    st.status.state = "updating";
  } else if (by_state[kReady] == want && st.replicas.size() == want) {
    st.status.state = "running";
    st.reached_desired = true;
  } else {
    st.status.state = st.reached_desired ? "reconciling" : "deploying";
  }
  st.status.reason = std::to_string(by_state[kReady]) + " of " + std::to_string(want) + " replicas ready";
  if (outdated > 0) st.status.reason += ", " + std::to_string(outdated) + " outdated replica(s) to replace";
  if (!what.empty()) spdlog::info("deployment {}: {}{}{}", st.spec().name, what, why.empty() ? "" : ": ", why);
  st.init.host->Update(caf::actor_cast<caf::actor>(self), st.status,
                       DeploymentEvent{what.empty() ? 0 : st.init.clock->UnixMs(), what, why});
}

void Release(Self* self, Replica& r) {
  if (r.place.lease_id != 0) self->state.init.host->ReleaseReplicaPlacement(r.place.lease_id);
  r.place.lease_id = 0;
}

// Ends a replica that is not draining: the node agent stops its actor; its lease is released.
void StopNow(Self* self, Replica& r) {
  if (r.ref.valid() && r.place.agent.valid()) self->send(r.place.agent.handle(), StopReplica{r.name});
  if (r.ref.valid()) self->demonitor(r.ref.handle());
  Release(self, r);
}

void Reconcile(Self* self);

// A replica is gone (exited, its node lost, its start failed): it is replaced after the backoff.
void ReplaceLater(Self* self) {
  auto& st = self->state;
  if (st.replacement_due || st.stopping) return;
  st.replacement_due = true;
  self->delayed_send(self, st.backoff->Next(), reconcile_atom::value);
}

void StartReplicaOn(Self* self, const std::string& name) {
  auto& st = self->state;
  Replica& r = st.replicas.at(name);
  const VersionSpec* v = st.Version(r.version);
  StartReplica start;
  start.deployment = st.spec().name;
  start.version = r.version;
  start.name = r.name;
  start.lease_id = r.place.lease_id;
  start.max_ongoing_requests = st.spec().max_ongoing_requests;
  start.drain_timeout_ms = st.spec().drain_timeout.count();
  if (v != nullptr) {
    start.tokens_per_second = v->test.tokens_per_second;
    start.first_token_latency_us = v->test.first_token_latency.count() * 1000;
    start.max_tokens = v->test.max_tokens;
    start.stall_after = v->test.stall_after;
    start.startup_delay_ms = v->test.startup_delay.count();
    start.fail_every = v->test.fail_every;
    start.crash_after = v->test.crash_after;
    if (v->backend == BackendKind::kProcess) {
      start.process_command = v->process.command;
      for (const auto& [env_name, value] : v->process.env) start.process_env.push_back(env_name + "=" + value);
      start.process_working_dir = v->process.working_dir;
      start.process_port_env = v->process.port_env;
      start.process_health_path = v->process.health_path;
      start.process_ready_timeout_ms = v->process.ready_timeout.count();
    }
  }
  start.gpu_index = r.place.gpu_index;
  start.gpu_id = r.place.gpu_id;
  start.memory_bytes = r.place.memory_bytes;
  start.compute_percent = r.place.compute_percent;
  start.simulated = r.place.simulated;
  start.seed = r.index;
  start.owner = st.self_ref;
  start.autoscaler = st.autoscaler_ref;
  const runtime::ActorRef agent = r.place.agent;
  self->request(agent.handle(), st.init.node_timeout, std::move(start))
      .then(
          [self, name, agent](ReplicaStarted& started) {
            auto& st = self->state;
            auto it = st.replicas.find(name);
            if (it == st.replicas.end() || st.stopping) {
              // Removed while it started: its agent stops it (its lease went with the removal).
              self->send(agent.handle(), StopReplica{name});
              return;
            }
            Replica& r = it->second;
            r.ref = started.replica;
            self->monitor(r.ref.handle());
            if (r.ready_seen) {
              r.state = kReady;
              st.backoff->Reset();
              PushReplicaSet(self);
              Publish(self, "replica " + name + " ready on node " + r.place.node, "");
              SendCount(self);
              if (st.rolling) Reconcile(self);
            } else {
              Publish(self, "replica " + name + " starting on node " + r.place.node, "");
            }
          },
          [self, name](caf::error& error) {
            auto& st = self->state;
            auto it = st.replicas.find(name);
            if (it == st.replicas.end()) return;
            Replica& r = it->second;
            const std::string node = r.place.node;
            Release(self, r);
            st.replicas.erase(it);
            Publish(self, "replica " + name + " failed to start on node " + node,
                    runtime::ToStatus(error).ToString() + "; another replica replaces it");
            SendCount(self);
            ReplaceLater(self);
          });
}

void AddReplica(Self* self, const VersionSpec& version) {
  auto& st = self->state;
  Replica r;
  r.index = st.next_index++;
  r.name = st.spec().name + "/" + version.name + "/replica-" + std::to_string(r.index);
  r.version = version.name;
  const std::string name = r.name;
  st.replicas.emplace(name, std::move(r));
  st.init.host->RequestReplicaPlacement(st.spec(), version, name, caf::actor_cast<caf::actor>(self));
}

// Removes `victim`: a pending or starting one at once, a ready one drained (the router's set
// without it first, then Drain, its lease released once it stopped). `what` says which.
void RemoveReplica(Self* self, Replica* victim, std::string* what) {
  auto& st = self->state;
  {
    const std::string name = victim->name;
    const std::string state = victim->state;
    if (victim->state == kPending) {
      st.init.host->WithdrawReplicaPlacement(name, caf::actor_cast<caf::actor>(self));
    }
    if (victim->state != kReady) {
      StopNow(self, *victim);
      st.replicas.erase(name);
      *what = "replica " + name + " (" + state + ") removed";
      return;
    }
    // Ready: routers stop sending to it first, then it drains and stops; its lease goes then.
    victim->state = kDraining;
    PushReplicaSet(self);
    const auto drain = st.spec().drain_timeout;
    self->request(victim->ref.handle(), drain + st.init.node_timeout, Drain{drain.count()})
        .then(
            [self, name](DrainReply& reply) {
              if (self->state.replicas.count(name) == 0) return;
              Publish(self, "replica " + name + " drained",
                      std::to_string(reply.finished) + " request(s) finished, " + std::to_string(reply.abandoned) +
                          " failed at the drain timeout");
            },
            [self, name](caf::error& error) {
              auto& st = self->state;
              auto it = st.replicas.find(name);
              if (it == st.replicas.end()) return;
              // No answer: it is stopped by its node agent, and its lease goes.
              StopNow(self, it->second);
              st.replicas.erase(it);
              Publish(self, "replica " + name + " stopped without draining", runtime::ToStatus(error).ToString());
            });
    *what = "replica " + name + " draining";
  }
}

// Removes one replica of `version` that is not outdated (`outdated`: one that is): pending
// first, then starting, then ready (drained); the newest of a kind first.
bool RemoveOne(Self* self, const std::string& version, std::string* what, bool outdated = false) {
  auto& st = self->state;
  for (const char* state : {kPending, kStarting, kReady}) {
    Replica* victim = nullptr;
    for (auto& [name, r] : st.replicas) {
      if (r.outdated == outdated && (version.empty() || r.version == version) && r.state == state &&
          (victim == nullptr || r.index > victim->index)) {
        victim = &r;
      }
    }
    if (victim == nullptr) continue;
    RemoveReplica(self, victim, what);
    return true;
  }
  return false;
}

// A ready replica failed `failure_threshold` health checks in a row: it leaves the router's set,
// is stopped by its agent, and is replaced (one_for_one).
void ReplaceUnhealthy(Self* self, const std::string& name, const std::string& why) {
  auto& st = self->state;
  auto it = st.replicas.find(name);
  if (it == st.replicas.end() || it->second.state != kReady) return;
  StopNow(self, it->second);
  st.replicas.erase(it);
  PushReplicaSet(self);
  Publish(self, "replica " + name + " failed " + std::to_string(st.spec().health_check.failure_threshold) +
                    " health checks in a row", why + "; it is replaced (one_for_one)");
  SendCount(self);
  ReplaceLater(self);
}

// One health check of every ready replica not being checked: a HealthProbe through its backend's
// request path (probe_request_path), else a ReplicaQuery (the actor answers: liveness only).
void CheckHealth(Self* self) {
  auto& st = self->state;
  const HealthCheckConfig& hc = st.spec().health_check;
  for (auto& [name, r] : st.replicas) {
    if (r.state != kReady || r.checking || !r.ref.valid()) continue;
    r.checking = true;
    auto passed = [self, name = name] {
      auto it = self->state.replicas.find(name);
      if (it == self->state.replicas.end()) return;
      it->second.checking = false;
      it->second.failed_checks = 0;
    };
    auto failed = [self, name = name](caf::error& error) {
      auto& st = self->state;
      auto it = st.replicas.find(name);
      if (it == st.replicas.end()) return;
      it->second.checking = false;
      if (++it->second.failed_checks >= st.spec().health_check.failure_threshold) {
        ReplaceUnhealthy(self, name, "the last: " + runtime::ToStatus(error).ToString());
      }
    };
    if (hc.probe_request_path) {
      self->request(r.ref.handle(), hc.timeout + kProbeAnswerGrace, HealthProbe{hc.timeout.count()})
          .then([passed](HealthProbeReply&) { passed(); }, failed);
    } else {
      self->request(r.ref.handle(), hc.timeout, ReplicaQuery{}).then([passed](ReplicaStatus&) { passed(); }, failed);
    }
  }
}

// The rollout's part of Reconcile: outdated pending and starting replicas go at once; an outdated
// ready one leaves while the ready replicas that serve stay above desired - max_unavailable.
void RollOutdated(Self* self, const RolloutStep& step) {
  auto& st = self->state;
  std::string what;
  std::vector<std::string> unready;
  for (const auto& [name, r] : st.replicas) {
    if (r.outdated && (r.state == kPending || r.state == kStarting)) unready.push_back(name);
  }
  for (const auto& name : unready) {
    RemoveReplica(self, &st.replicas.at(name), &what);
    Publish(self, what, "rollout: an outdated replica that served nothing yet");
  }
  const uint32_t floor = st.status.desired > step.unavailable ? st.status.desired - step.unavailable : 0;
  for (;;) {
    uint32_t ready = 0;
    Replica* oldest = nullptr;
    Replica* idle = nullptr;  // an outdated ready one of weight 0: it serves nothing
    for (auto& [name, r] : st.replicas) {
      if (r.state != kReady || st.Standby(r)) continue;
      if (r.outdated && st.WeightOf(r) == 0) {
        idle = &r;
        continue;
      }
      ++ready;
      if (r.outdated && (oldest == nullptr || r.index < oldest->index)) oldest = &r;
    }
    if (idle != nullptr) {
      RemoveReplica(self, idle, &what);
      Publish(self, what, "rollout: an outdated replica of weight 0");
      continue;
    }
    if (oldest == nullptr || ready <= floor) return;
    RemoveReplica(self, oldest, &what);
    Publish(self, what, "rollout: " + std::to_string(ready - 1) + " ready replica(s) serve (at least " +
                            std::to_string(floor) + ", desired " + std::to_string(st.status.desired) +
                            " - max_unavailable " + std::to_string(step.unavailable) + ")");
  }
}

void Reconcile(Self* self) {
  auto& st = self->state;
  if (st.stopping) return;
  auto targets = ReplicasPerVersion(st.spec(), st.status.desired);
  for (const auto& [version, n] : st.standby) targets[version] = n;
  for (const auto& v : st.spec().versions) {
    const uint32_t want = targets.at(v.name);
    uint32_t live = st.Live(v.name);
    while (live > want) {
      std::string what;
      if (!RemoveOne(self, v.name, &what)) break;
      --live;
      Publish(self, what, "scaling " + v.name + " to " + std::to_string(want));
    }
  }
  const RolloutStep step = ResolveRollout(st.spec().rollout, st.status.desired);
  if (st.rolling) RollOutdated(self, step);
  if (!st.replacement_due) {
    // Live replicas that serve (standby ones aside) stay within desired + max_surge while
    // outdated ones remain; without them, the sum of the targets is desired.
    uint32_t counted = 0;
    for (const auto& [name, r] : st.replicas) {
      if (r.state != kDraining && !st.Standby(r)) ++counted;
    }
    const uint32_t ceiling = st.status.desired + step.surge;
    for (const auto& v : st.spec().versions) {
      const uint32_t want = targets.at(v.name);
      for (uint32_t live = st.Live(v.name); live < want; ++live) {
        if (v.weight > 0 && counted >= ceiling) break;
        AddReplica(self, v);
        if (v.weight > 0) ++counted;
      }
    }
  }
  if (st.rolling && !st.AnyOutdated()) {
    st.rolling = false;
    st.retired_weight.clear();
    Publish(self, "rollout complete", "every outdated replica was replaced");
  }
  SendCount(self);
  Publish(self, "", "");
}

// A replica to take back after a head restart that is gone, or that its node could not hand
// over: it is stopped there if it runs, its lease goes, and another replica replaces it.
void LoseRecovering(Self* self, const std::string& name, const std::string& why) {
  auto& st = self->state;
  auto it = st.replicas.find(name);
  if (it == st.replicas.end()) return;
  StopNow(self, it->second);
  st.replicas.erase(it);
  Publish(self, "replica " + name + " was not taken back", why + "; another replica replaces it");
  SendCount(self);
  ReplaceLater(self);
}

// Takes back replica `name`, which `found.node`'s agent reports running as `reported`: the agent
// watches this actor as its owner from now on and the replica reports to it (AdoptReplica). A
// recovering one is then put back in the state the replica answers (ready ones behind the
// router); any other one (the node had lost the head for a while) only gets watched again.
void TakeBack(Self* self, const RunningReplica& reported, const ReplicasFound& found) {
  auto& st = self->state;
  Replica& r = st.replicas.at(reported.name);
  const bool recovering = r.state == kRecovering;
  if (recovering) {
    if (r.ref.valid()) self->demonitor(r.ref.handle());
    r.ref = reported.replica;
    r.place.agent = found.agent;
    self->monitor(r.ref.handle());
  }
  const std::string name = reported.name;
  self->request(found.agent.handle(), st.init.node_timeout, AdoptReplica{name, st.self_ref, st.autoscaler_ref})
      .then(
          [self, name, recovering](ReplicaStatus& status) {
            auto& st = self->state;
            auto it = st.replicas.find(name);
            if (!recovering || it == st.replicas.end() || it->second.state != kRecovering) return;
            Replica& r = it->second;
            switch (status.state) {
              case ReplicaState::kStarting:
                r.state = kStarting;
                break;
              case ReplicaState::kReady:
                r.state = kReady;
                break;
              default:  // draining (or stopped): it ends by itself, and its lease goes then
                r.state = kDraining;
                break;
            }
            if (r.state == kReady) PushReplicaSet(self);
            Publish(self, "replica " + name + " taken back on node " + r.place.node + " (" + r.state + ")",
                    "it kept running while the head was down");
            SendCount(self);
            Reconcile(self);
          },
          [self, name, recovering](caf::error& error) {
            auto it = self->state.replicas.find(name);
            if (!recovering || it == self->state.replicas.end() || it->second.state != kRecovering) return;
            LoseRecovering(self, name, "its node could not hand it over: " + runtime::ToStatus(error).ToString());
          });
}

// A node joined with `found.replicas` of this deployment: those it expects there are taken back,
// the others stopped, and those it expected there and the node no longer runs are replaced.
void OnReplicasFound(Self* self, const ReplicasFound& found) {
  auto& st = self->state;
  RefreshView(self);
  const ReplicaTakeBack plan = PlanTakeBack(st.status.replicas, found.node, found.replicas);
  std::string stopped;
  for (const auto& name : plan.stop) {
    self->send(found.agent.handle(), StopReplica{name});
    stopped += (stopped.empty() ? "" : ", ") + name;
  }
  if (!stopped.empty()) {
    Publish(self, "stopped replica(s) " + stopped + " on node " + found.node,
            "the node still ran them, and the deployment no longer has them (removed while the head was down)");
  }
  for (const auto& name : plan.lost) {
    LoseRecovering(self, name, "node " + found.node + " joined the head without it (it ended while the head was down)");
  }
  for (const auto& name : plan.adopt) {
    for (const auto& reported : found.replicas) {
      if (reported.name == name) TakeBack(self, reported, found);
    }
  }
}

bool Autoscaled(const DeploymentSpec& spec) {
  return spec.autoscaling.min_replicas != spec.autoscaling.max_replicas;
}

// The spec's settings of the router.
ConfigureRouter RoutingOf(const DeploymentSpec& spec) {
  return ConfigureRouter{spec.routing, spec.max_queued_requests, spec.request_timeout};
}

// Spawns the deployment's autoscaler (linked: it ends with this actor) for the spec's autoscaling.
void StartAutoscaler(Self* self) {
  auto& st = self->state;
  AutoscalerInit a;
  a.deployment = st.spec().name;
  a.config = st.spec().autoscaling;
  a.target = st.self_ref;
  a.clock = st.init.clock;
  a.metrics = st.init.autoscaler_metrics;
  auto spawned = SpawnAutoscaler(self->home_system(), std::move(a));
  if (!spawned.ok()) {
    spdlog::error("deployment {}: no autoscaler: {}", st.spec().name, spawned.status().ToString());
    return;
  }
  st.autoscaler = *spawned;
  st.autoscaler_ref = st.init.runtime->Ref(st.autoscaler);
  self->link_to(st.autoscaler);
}

// The router and the autoscaler outlive an update: they take the new spec's settings. An
// autoscaler starts when the spec now autoscales (min != max) and stops when it no longer does.
void ApplyRoutingAndAutoscaling(Self* self) {
  auto& st = self->state;
  if (st.router) self->send(st.router, RoutingOf(st.spec()));
  if (Autoscaled(st.spec())) {
    if (st.autoscaler) {
      self->send(st.autoscaler, ConfigureAutoscaler{st.spec().autoscaling});
      return;
    }
    StartAutoscaler(self);
  } else if (st.autoscaler) {
    self->unlink_from(st.autoscaler);
    self->send_exit(st.autoscaler, caf::exit_reason::user_shutdown);
    st.autoscaler = nullptr;
    st.autoscaler_ref = runtime::ActorRef();
  } else {
    return;
  }
  if (st.router) self->send(st.router, SetAutoscaler{st.autoscaler_ref});
}

// Runs `spec` from now on (UpdateDeployment): versions unchanged but for their weight keep their
// replicas; those of changed or removed versions become outdated and are rolled out by Reconcile.
void ApplyUpdate(Self* self, UpdateDeployment& update) {
  auto& st = self->state;
  // A version's settings as JSON, its weight aside (with the deployment's max_ongoing_requests,
  // which its replicas were started with).
  auto settings = [](const DeploymentSpec& spec) {
    std::map<std::string, std::string> out;
    const Json j = Json::parse(DeploymentSpecToJson(spec));
    for (Json v : j.value("versions", Json::array())) {
      v.erase("weight");
      v["max_ongoing_requests"] = spec.max_ongoing_requests;
      out[v.value("name", "")] = v.dump();
    }
    return out;
  };
  const auto before = settings(st.init.spec);
  const auto after = settings(update.spec);
  std::string kept, rolled, removed;
  for (const auto& [name, json] : before) {
    auto it = after.find(name);
    if (it == after.end()) {
      removed += (removed.empty() ? "" : ", ") + name;
      if (const VersionSpec* v = st.Version(name); v != nullptr) st.retired_weight[name] = v->weight;
    } else if (it->second != json) {
      rolled += (rolled.empty() ? "" : ", ") + name;
    } else {
      kept += (kept.empty() ? "" : ", ") + name;
    }
  }
  for (const auto& [name, json] : after) {
    if (before.count(name) == 0) rolled += (rolled.empty() ? "" : ", ") + name + " (new)";
  }
  for (auto& [name, r] : st.replicas) {
    auto it = after.find(r.version);
    if (it == after.end() || it->second != before.at(r.version)) r.outdated = true;
  }
  // Standby (blue-green): an unchanged version that had replicas and now has weight 0 keeps them.
  std::map<std::string, uint32_t> standby;
  for (const auto& v : update.spec.versions) {
    if (v.weight != 0 || before.count(v.name) == 0 || before.at(v.name) != after.at(v.name)) continue;
    const uint32_t live = st.Live(v.name);
    if (live > 0) standby[v.name] = live;
  }
  st.standby = std::move(standby);
  st.init.spec = std::move(update.spec);
  const auto& a = st.spec().autoscaling;
  if (!st.status.scaled_by_hand) {
    st.status.desired = a.min_replicas == a.max_replicas ? a.initial_replicas
                                                         : std::clamp(st.status.desired, a.min_replicas, a.max_replicas);
  }
  ApplyRoutingAndAutoscaling(self);
  st.rolling = st.AnyOutdated();
  const RolloutStep step = ResolveRollout(st.spec().rollout, st.status.desired);
  std::string standby_text;
  for (const auto& [name, n] : st.standby) {
    standby_text += (standby_text.empty() ? "" : ", ") + name + " (" + std::to_string(n) + ")";
  }
  Publish(self, "updated (" + update.why + ")",
          "versions kept: " + (kept.empty() ? "none" : kept) + "; rolled out: " + (rolled.empty() ? "none" : rolled) +
              "; removed: " + (removed.empty() ? "none" : removed) +
              (standby_text.empty() ? "" : "; weight 0, kept as standby: " + standby_text) + "; desired " +
              std::to_string(st.status.desired) + ", max surge " + std::to_string(step.surge) +
              ", max unavailable " + std::to_string(step.unavailable));
  Reconcile(self);
}

caf::behavior Deployment(Self* self, DeploymentInit init) {
  auto& st = self->state;
  st.init = std::move(init);
  if (st.init.clock == nullptr) st.init.clock = &SteadyClock::Instance();
  st.backoff.emplace(st.init.restart_backoff);
  st.status = st.init.status;
  st.status.name = st.spec().name;
  st.status.router = RouterName(st.spec().name);
  if (st.status.deployed_unix_ms == 0) st.status.deployed_unix_ms = st.init.clock->UnixMs();
  // A head restart: a count set by hand stays, and so does the autoscaler's last decision (within
  // the bounds) while the replicas are taken back: starting from the initial count would drain
  // the replicas it had ordered. A new deployment starts from the initial count.
  const bool again = st.status.desired != 0 || !st.status.replicas.empty();
  const auto& bounds = st.spec().autoscaling;
  if (!st.status.scaled_by_hand) {
    st.status.desired = again ? std::clamp(st.status.desired, bounds.min_replicas, bounds.max_replicas)
                              : bounds.initial_replicas;
  }
  // The replicas of the earlier head that had a lease wait, recovering, for their nodes to report
  // them (ReplicasFound); they count as live meanwhile, so none is started in their place.
  for (const auto& v : ReplicasToTakeBack(st.status, &st.next_index)) {
    Replica r;
    r.name = v.name;
    r.version = v.version;
    r.state = kRecovering;
    r.index = ReplicaIndexOf(v.name).value_or(0);
    r.place.node = v.node;
    r.place.lease_id = v.lease_id;
    r.outdated = v.outdated || st.Version(v.version) == nullptr;
    st.replicas.emplace(r.name, std::move(r));
  }
  st.rolling = st.AnyOutdated();
  const size_t to_take_back = st.replicas.size();
  // Blue-green standby counts (stored): the versions still of weight 0 run them again.
  for (const auto& [version, n] : st.status.standby) {
    if (const VersionSpec* v = st.Version(version); v != nullptr && v->weight == 0 && n > 0) st.standby[version] = n;
  }
  runtime::Runtime* rt = st.init.runtime;
  st.self_ref = rt->Ref(caf::actor_cast<caf::actor>(self));
  if (Autoscaled(st.spec())) StartAutoscaler(self);
  RouterConfig rc;
  rc.deployment = st.spec().name;
  const ConfigureRouter routing = RoutingOf(st.spec());
  rc.policy = routing.policy;
  rc.seed = static_cast<uint64_t>(st.status.deployed_unix_ms);
  rc.max_queued = routing.max_queued;
  rc.default_deadline = routing.default_deadline;
  rc.autoscaler = st.autoscaler_ref;
  rc.clock = st.init.clock;
  rc.metrics = st.init.router_metrics;
  st.router = SpawnRouter(self->home_system(), std::move(rc));
  self->link_to(st.router);
  const std::string router_name = RouterName(st.spec().name);
  // A router of an earlier actor of the same deployment (deleted and deployed again) may hold the
  // name for a moment: the new one takes it.
  rt->UnregisterName(router_name);
  if (Status named = rt->RegisterName(router_name, rt->Ref(st.router)); !named.ok()) {
    spdlog::error("deployment {}: router not named: {}", st.spec().name, named.ToString());
  }
  // The name goes when the router exits (with this actor: they are linked).
  // A lease that ends without asking (LeaseEnded: its node was lost) shows as the replica's down
  // message; other unknown messages are dropped too.
  self->set_default_handler(caf::drop);
  self->attach_functor([metrics = st.init.replica_metrics, name = st.spec().name] {
    if (metrics) metrics->Remove(name);
  });
  self->set_down_handler([self](caf::down_msg& down) {
    auto& st = self->state;
    Replica* r = st.ByAddress(down.source);
    if (r == nullptr) return;
    const std::string name = r->name;
    const std::string why = runtime::ToStatus(down.reason).ToString();
    if (r->state == kDraining) {
      Release(self, *r);
      st.replicas.erase(name);
      Publish(self, "replica " + name + " stopped after draining", "lease released");
      SendCount(self);
      if (st.rolling) Reconcile(self);  // the rollout completes once its last outdated one is gone
      return;
    }
    const bool was_ready = r->state == kReady;
    Release(self, *r);
    st.replicas.erase(name);
    if (was_ready) PushReplicaSet(self);
    Publish(self, "replica " + name + " exited", why + "; it is replaced (one_for_one)");
    SendCount(self);
    ReplaceLater(self);
  });
  Publish(self, again ? "started again after a head restart" : "deployed",
          std::to_string(st.status.desired) + " replica(s) desired" +
              (again ? "; " + std::to_string(to_take_back) + " to take back from their nodes" : ""));
  Reconcile(self);
  self->delayed_send(self, st.spec().health_check.interval, health_atom::value);
  if (to_take_back > 0) self->delayed_send(self, st.init.recovery_timeout, recovered_atom::value);
  return {
      [self](reconcile_atom) {
        self->state.replacement_due = false;
        Reconcile(self);
      },
      [self](recovered_atom) {
        auto& st = self->state;
        std::vector<std::pair<std::string, std::string>> lost;  // name, node
        for (const auto& [name, r] : st.replicas) {
          if (r.state == kRecovering && !r.ref.valid()) lost.emplace_back(name, r.place.node);
        }
        for (const auto& [name, node] : lost) {
          LoseRecovering(self, name, "node " + node + " did not report it within " +
                                         std::to_string(st.init.recovery_timeout.count()) +
                                         " ms of the head's restart");
        }
      },
      [self](ReplicasFound& found) {
        if (self->state.stopping) return;
        OnReplicasFound(self, found);
      },
      [self](health_atom) {
        if (self->state.stopping) return;
        CheckHealth(self);
        self->delayed_send(self, self->state.spec().health_check.interval, health_atom::value);
      },
      [self](ReplicaPlacementAnswer& answer) {
        auto& st = self->state;
        auto it = st.replicas.find(answer.replica);
        if (it == st.replicas.end() || st.stopping || it->second.state != kPending) {
          if (answer.status.ok()) st.init.host->ReleaseReplicaPlacement(answer.place.lease_id);
          return;
        }
        Replica& r = it->second;
        if (!answer.status.ok()) {
          st.replicas.erase(it);
          Publish(self, "replica " + answer.replica + " cannot be placed", answer.status.ToString());
          ReplaceLater(self);
          return;
        }
        r.place = answer.place;
        r.state = kStarting;
        StartReplicaOn(self, answer.replica);
      },
      [self](ReplicaStateChanged& changed) {
        auto& st = self->state;
        auto it = st.replicas.find(changed.name);
        if (it == st.replicas.end()) return;
        Replica& r = it->second;
        if (changed.state != ReplicaState::kReady || r.state != kStarting) return;
        if (!r.ref.valid()) {
          r.ready_seen = true;
          return;
        }
        r.state = kReady;
        st.backoff->Reset();
        PushReplicaSet(self);
        Publish(self, "replica " + r.name + " ready on node " + r.place.node, "");
        SendCount(self);
        if (st.rolling) Reconcile(self);
      },
      [self](ScaleDecision& decision) {
        auto& st = self->state;
        if (st.status.scaled_by_hand || st.stopping) return;
        const auto& a = st.spec().autoscaling;
        const uint32_t desired = std::clamp(decision.desired, a.min_replicas, a.max_replicas);
        if (desired == st.status.desired) return;
        const uint32_t before = st.status.desired;
        st.status.desired = desired;
        Publish(self, "autoscaler: " + std::to_string(before) + " -> " + std::to_string(desired) + " replicas",
                decision.reason + (decision.panic ? " (panic)" : ""));
        Reconcile(self);
      },
      [self](ScaleDeployment& scale) {
        auto& st = self->state;
        if (st.stopping) return;
        const uint32_t before = st.status.desired;
        st.status.desired = scale.replicas;
        st.status.scaled_by_hand = true;
        Publish(self, "scaled by hand: " + std::to_string(before) + " -> " + std::to_string(scale.replicas) + " replicas",
                "troupe serve scale (the autoscaler's decisions are ignored from now on)");
        Reconcile(self);
      },
      [self](UpdateDeployment& update) {
        if (self->state.stopping) return;
        ApplyUpdate(self, update);
      },
      [self](StopDeployment& stop) {
        auto& st = self->state;
        st.stopping = true;
        for (auto& [name, r] : st.replicas) StopNow(self, r);
        st.replicas.clear();
        PushReplicaSet(self);  // empty: the router sends nothing more before it ends with this actor
        Publish(self, "deleted", stop.reason);
        self->quit(caf::exit_reason::user_shutdown);
      },
  };
}

}  // namespace

std::string RouterName(const std::string& deployment) { return "serving.router." + deployment; }

ReplicaTakeBack PlanTakeBack(const std::vector<ReplicaView>& known, const std::string& node,
                             const std::vector<RunningReplica>& reported) {
  ReplicaTakeBack plan;
  std::map<std::string, const ReplicaView*> by_name;
  for (const auto& r : known) by_name[r.name] = &r;
  std::set<std::string> seen;
  for (const auto& r : reported) {
    seen.insert(r.name);
    auto it = by_name.find(r.name);
    // A pending replica has no node yet: one reported under its name is an earlier one.
    if (it != by_name.end() && it->second->node == node && it->second->state != kPending) {
      plan.adopt.push_back(r.name);
    } else {
      plan.stop.push_back(r.name);
    }
  }
  for (const auto& r : known) {
    if (r.state == kRecovering && r.node == node && seen.count(r.name) == 0) plan.lost.push_back(r.name);
  }
  return plan;
}

std::vector<ReplicaView> ReplicasToTakeBack(const DeploymentStatus& stored, uint64_t* next_replica) {
  std::vector<ReplicaView> out;
  uint64_t next = stored.next_replica;
  for (const auto& r : stored.replicas) {
    // A new replica is never named like a stored one.
    if (auto index = ReplicaIndexOf(r.name)) next = std::max<uint64_t>(next, *index + 1);
    if (r.state == kPending || r.lease_id == 0 || r.node.empty()) continue;
    ReplicaView back = r;
    back.state = kRecovering;
    out.push_back(std::move(back));
  }
  if (next_replica != nullptr) *next_replica = next;
  return out;
}

std::string DeploymentStatusToJson(const DeploymentStatus& s) {
  Json replicas = Json::array();
  Json by_state = {{kPending, 0}, {kStarting, 0}, {kReady, 0}, {kDraining, 0}, {kRecovering, 0}};
  for (const auto& r : s.replicas) {
    replicas.push_back({{"name", r.name}, {"version", r.version}, {"state", r.state}, {"node", r.node},
                        {"lease_id", r.lease_id}, {"outdated", r.outdated}, {"standby", r.standby}});
    by_state[r.state] = by_state.value(r.state, 0) + 1;
  }
  return Json{{"name", s.name},
              {"state", s.state},
              {"reason", s.reason},
              {"desired", s.desired},
              {"scaled_by_hand", s.scaled_by_hand},
              {"generation", s.generation},
              {"router", s.router},
              {"deployed_unix_ms", s.deployed_unix_ms},
              {"next_replica", s.next_replica},
              {"replicas", replicas},
              {"replicas_by_state", by_state},
              {"standby", s.standby}}
      .dump();
}

StatusOr<DeploymentStatus> DeploymentStatusFromJson(const std::string& json) {
  try {
    const Json j = Json::parse(json);
    DeploymentStatus s;
    s.name = j.at("name").get<std::string>();
    s.state = j.value("state", "deploying");
    s.reason = j.value("reason", "");
    s.desired = j.value("desired", 0u);
    s.scaled_by_hand = j.value("scaled_by_hand", false);
    s.generation = j.value("generation", uint64_t{0});
    s.router = j.value("router", "");
    s.deployed_unix_ms = j.value("deployed_unix_ms", int64_t{0});
    s.next_replica = j.value("next_replica", uint64_t{0});
    for (const auto& r : j.value("replicas", Json::array())) {
      s.replicas.push_back(ReplicaView{r.at("name").get<std::string>(), r.value("version", ""), r.value("state", ""),
                                       r.value("node", ""), r.value("lease_id", uint64_t{0}),
                                       r.value("outdated", false), r.value("standby", false)});
    }
    const Json standby = j.value("standby", Json::object());
    for (const auto& [version, n] : standby.items()) s.standby[version] = n.get<uint32_t>();
    return s;
  } catch (const std::exception& e) {
    return InvalidArgumentError(std::string("deployment status: not the JSON troupe writes: ") + e.what());
  }
}

uint32_t AutoscalerReplicaCount(const DeploymentStatus& status) {
  uint32_t serving = 0;
  bool rolling = false;
  for (const auto& r : status.replicas) {
    rolling = rolling || r.outdated;
    if (r.state != kDraining && !r.standby) ++serving;
  }
  return rolling ? std::min(serving, status.desired) : serving;
}

uint32_t AutoscalerReadyCount(const DeploymentStatus& status) {
  uint32_t ready = 0;
  bool rolling = false;
  for (const auto& r : status.replicas) {
    rolling = rolling || r.outdated;
    if (r.state == kReady && !r.standby) ++ready;
  }
  return rolling ? std::min(ready, status.desired) : ready;
}

std::string DeploymentEventToJson(const DeploymentEvent& e) {
  return Json{{"unix_ms", e.unix_ms}, {"what", e.what}, {"why", e.why}}.dump();
}

caf::actor SpawnDeployment(caf::actor_system& system, DeploymentInit init) {
  return system.spawn(Deployment, std::move(init));
}

}  // namespace troupe::serving
