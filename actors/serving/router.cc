// The router.
#include "actors/serving/router.h"

#include <caf/all.hpp>

#include <optional>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <deque>
#include <memory>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "runtime/error.h"

namespace troupe::serving {

namespace {

using queue_tick_atom = caf::atom_constant<caf::atom("rt_qtick")>;
using load_tick_atom = caf::atom_constant<caf::atom("rt_load")>;
using fail_in_flight_atom = caf::atom_constant<caf::atom("rt_fail")>;

// One request the router holds: queued (replica empty) or sent to `replica` (its CAF request id
// `mid`, whose timer is cancelled when the reply comes).
struct Pending {
  caf::typed_response_promise<InferenceResponse> promise;
  InferenceRequest request;  // as sent on: request.id is the router's id
  uint64_t client_id = 0;
  int64_t deadline_unix_ms = 0;
  int64_t admitted_unix_ms = 0;
  bool retried = false;
  caf::actor_addr exclude;  // a retried request avoids the replica that refused it
  caf::actor_addr replica;
  std::string replica_name;
  caf::message_id mid;
  Clock::TimePoint admitted_at;    // for the latency histogram
  VersionTally* tally = nullptr;  // its replica's version's (set when sent)
};

// A replica that left the table with requests still in flight there.
struct Retired {
  std::string name;
  uint32_t outstanding = 0;
};

struct RouterState {
  RouterConfig config;
  const Clock* clock = nullptr;
  std::unique_ptr<RoutingPolicy> policy;
  bool has_set = false;
  uint64_t generation = 0;
  std::vector<ReplicaSlot> slots;
  std::unordered_map<caf::actor_addr, size_t> index;  // slot of each replica in the table
  std::unordered_map<caf::actor_addr, Retired> retired;
  // Replicas seen dying; a set that still lists one (sent before the deployment knew) does not
  // bring it back.
  std::unordered_set<caf::actor_addr> dead;
  std::unordered_map<uint64_t, Pending> in_flight;  // by the router's id
  std::deque<Pending> queue;
  uint64_t next_id = 0;
  bool queue_ticking = false;
  bool load_ticking = false;
  RouterStats stats;
  RequestTally tally;  // published to config.metrics every load_report_interval
  uint64_t completed_at_last_report = 0;
  Clock::TimePoint last_report;
  // A cold start runs: since when a request found no replica in the table (nullopt: none runs).
  std::optional<Clock::TimePoint> cold_since;
};

using Self = caf::stateful_actor<RouterState>;

// Counts `p`'s end in its version's tally ("" when it never reached a replica).
void Count(RouterState& st, const Pending& p, StatusCode code) {
  VersionTally* tally = p.tally != nullptr ? p.tally : &st.tally.versions[""];
  tally->Record(code, std::chrono::duration<double>(st.clock->Now() - p.admitted_at).count());
}

void Fail(Self* self, Pending& p, const Status& status) {
  ++self->state.stats.failed;
  Count(self->state, p, status.code());
  p.promise.deliver(runtime::ToCafError(status));
}

std::string RequestName(const RouterState& st, const Pending& p) {
  return "request " + std::to_string(p.client_id) + " of deployment '" + st.config.deployment + "'";
}

caf::actor_addr AddrOf(const ReplicaSlot& slot) { return slot.info.replica.handle().address(); }

void RebuildIndex(RouterState& st) {
  st.index.clear();
  for (size_t i = 0; i < st.slots.size(); ++i) st.index.emplace(AddrOf(st.slots[i]), i);
}

// The request no longer counts against its replica (answered, failed or given up).
void Release(Self* self, const Pending& p) {
  auto& st = self->state;
  auto it = st.index.find(p.replica);
  if (it != st.index.end()) {
    auto& slot = st.slots[it->second];
    if (slot.outstanding > 0) --slot.outstanding;
    return;
  }
  auto r = st.retired.find(p.replica);
  if (r == st.retired.end()) return;
  if (r->second.outstanding > 0) --r->second.outstanding;
  if (r->second.outstanding == 0 && st.dead.count(p.replica) == 0) {
    self->demonitor(p.replica);
    st.retired.erase(r);
  }
}

void DrainQueue(Self* self);
void Retry(Self* self, Pending p, const Status& why);

void Answered(Self* self, uint64_t id, caf::message_id mid, InferenceResponse& response) {
  auto& st = self->state;
  auto it = st.in_flight.find(id);
  // Failed already (its replica died), or sent again since (a retry keeps the router's id).
  if (it == st.in_flight.end() || it->second.mid != mid) return;
  Pending& p = it->second;
  self->home_system().clock().cancel_request_timeout(self, p.mid);
  Release(self, p);
  ++st.stats.completed;
  Count(st, p, StatusCode::kOk);
  response.request_id = p.client_id;
  p.promise.deliver(std::move(response));
  st.in_flight.erase(it);
  DrainQueue(self);
}

// The replica is gone (a request bounced unread, or its down message): no new request goes there.
// Its requests in flight stay counted under `retired` until FailInFlight.
void DropFromTable(Self* self, const caf::actor_addr& replica) {
  auto& st = self->state;
  auto it = st.index.find(replica);
  if (it == st.index.end()) return;
  const size_t i = it->second;
  st.dead.insert(replica);
  st.retired[replica] = Retired{st.slots[i].info.name, st.slots[i].outstanding};
  st.slots.erase(st.slots.begin() + static_cast<std::ptrdiff_t>(i));
  RebuildIndex(st);
  st.policy->Reset();
}

void Failed(Self* self, uint64_t id, caf::message_id mid, caf::error& error) {
  auto& st = self->state;
  auto it = st.in_flight.find(id);
  if (it == st.in_flight.end() || it->second.mid != mid) return;
  Pending p = std::move(it->second);
  st.in_flight.erase(it);
  if (error != caf::sec::request_timeout) self->home_system().clock().cancel_request_timeout(self, p.mid);
  Release(self, p);
  if (error == caf::sec::request_timeout) {
    // The replica may still be at it: it stops (and answers Cancelled, which nobody waits for).
    if (auto replica = caf::actor_cast<caf::actor>(p.replica)) self->send(replica, CancelRequest{p.request.id});
    Fail(self, p,
         DeadlineExceededError(RequestName(st, p) + ": replica " + p.replica_name + " did not answer within its deadline (" +
                               std::to_string(p.deadline_unix_ms - p.admitted_unix_ms) +
                               " ms after it reached the router); give it more time or add replicas"));
  } else if (error == caf::sec::request_receiver_down) {
    // Bounced from the replica's mailbox as it ended: it never started the request.
    DropFromTable(self, p.replica);
    Status why = UnavailableError("replica " + p.replica_name + " was gone before it started the request");
    Retry(self, std::move(p), why);
  } else {
    Status status = runtime::ToStatus(error);
    if (status.code() == StatusCode::kFailedPrecondition) {
      Retry(self, std::move(p), status);
    } else {
      Fail(self, p, status);
    }
  }
  DrainQueue(self);
}

void Send(Self* self, Pending p, size_t slot_index) {
  auto& st = self->state;
  const int64_t now = st.clock->UnixMs();
  if (p.deadline_unix_ms <= now) {
    Fail(self, p,
         DeadlineExceededError(RequestName(st, p) + ": its deadline passed before a replica had room (" +
                               std::to_string(now - p.admitted_unix_ms) + " ms at the router)"));
    return;
  }
  ReplicaSlot& slot = st.slots[slot_index];
  ++slot.outstanding;
  p.replica = AddrOf(slot);
  p.replica_name = slot.info.name;
  p.tally = &st.tally.versions[slot.info.version];  // unordered_map: the element stays where it is
  const uint64_t id = p.request.id;
  auto handle = self->request(slot.info.replica.handle(), std::chrono::milliseconds(p.deadline_unix_ms - now), p.request);
  const caf::message_id mid = handle.id();
  p.mid = mid;
  st.in_flight.emplace(id, std::move(p));
  handle.then([self, id, mid](InferenceResponse& response) { Answered(self, id, mid, response); },
              [self, id, mid](caf::error& error) { Failed(self, id, mid, error); });
}

size_t ExcludedSlot(const RouterState& st, const Pending& p) {
  if (!p.exclude) return RoutingPolicy::kNone;
  auto it = st.index.find(p.exclude);
  return it == st.index.end() ? RoutingPolicy::kNone : it->second;
}

// Sends `p` to a replica with room; false (p untouched) if none has.
bool TrySend(Self* self, Pending& p) {
  auto& st = self->state;
  auto pick = st.policy->Pick(st.slots, ExcludedSlot(st, p));
  if (!pick) return false;
  Send(self, std::move(p), *pick);
  return true;
}

void StartQueueTicks(Self* self) {
  auto& st = self->state;
  if (st.queue_ticking) return;
  st.queue_ticking = true;
  self->delayed_send(self, st.config.queue_check_interval, queue_tick_atom::value);
}

void Retry(Self* self, Pending p, const Status& why) {
  auto& st = self->state;
  if (p.retried) {
    Fail(self, p, Status(why.code(), RequestName(st, p) + ": " + why.message() + " (after one retry on another replica)"));
    return;
  }
  p.retried = true;
  p.exclude = p.replica;
  p.replica = caf::actor_addr();
  ++st.stats.retried;
  if (st.queue.empty() && TrySend(self, p)) return;
  // It was admitted already: it waits first in line, past the bound.
  st.queue.push_front(std::move(p));
  StartQueueTicks(self);
}

// Sends queued requests in order while replicas have room. A retried request that can go only to
// the replica it avoids stays, and those behind it may pass it.
void DrainQueue(Self* self) {
  auto& st = self->state;
  for (auto it = st.queue.begin(); it != st.queue.end();) {
    const size_t exclude = ExcludedSlot(st, *it);
    auto pick = st.policy->Pick(st.slots, exclude);
    if (!pick) {
      if (exclude == RoutingPolicy::kNone) return;  // every replica is full
      ++it;
      continue;
    }
    Pending p = std::move(*it);
    it = st.queue.erase(it);
    Send(self, std::move(p), *pick);
  }
}

std::string NoRoomReason(const RouterState& st) {
  if (st.slots.empty()) return "no replica of the deployment is ready";
  return "all " + std::to_string(st.slots.size()) + " replicas were at max_ongoing_requests";
}

void ExpireQueued(Self* self) {
  auto& st = self->state;
  const int64_t now = st.clock->UnixMs();
  for (auto it = st.queue.begin(); it != st.queue.end();) {
    if (it->deadline_unix_ms > now) {
      ++it;
      continue;
    }
    Fail(self, *it,
         DeadlineExceededError(RequestName(st, *it) + ": its deadline passed after " +
                               std::to_string(now - it->admitted_unix_ms) + " ms in the router's queue (" +
                               NoRoomReason(st) + "); add replicas or give it more time"));
    it = st.queue.erase(it);
  }
}

void Admit(Self* self, InferenceRequest& request, caf::typed_response_promise<InferenceResponse> promise) {
  auto& st = self->state;
  Pending p;
  p.promise = std::move(promise);
  p.client_id = request.id;
  p.admitted_unix_ms = st.clock->UnixMs();
  p.admitted_at = st.clock->Now();
  p.deadline_unix_ms = request.deadline_unix_ms != 0 ? request.deadline_unix_ms
                                                      : p.admitted_unix_ms + st.config.default_deadline.count();
  p.request = std::move(request);
  p.request.id = ++st.next_id;
  p.request.deadline_unix_ms = p.deadline_unix_ms;  // the replica stops the work there too
  if (p.deadline_unix_ms <= p.admitted_unix_ms) {
    Fail(self, p, DeadlineExceededError(RequestName(st, p) + ": its deadline had passed when it reached the router"));
    return;
  }
  // First come, first served: a request passes none already waiting.
  if (st.queue.empty() && TrySend(self, p)) return;
  if (st.queue.size() >= st.config.max_queued) {
    Fail(self, p,
         ResourceExhaustedError(RequestName(st, p) + ": the router's queue is full (" +
                                std::to_string(st.config.max_queued) + " requests wait; " + NoRoomReason(st) +
                                "); retry later, or raise max_ongoing_requests or the replica count"));
    return;
  }
  if (st.slots.empty() && !st.cold_since) st.cold_since = st.clock->Now();
  st.queue.push_back(std::move(p));
  StartQueueTicks(self);
}

void UseSet(Self* self, ReplicaSet& set) {
  auto& st = self->state;
  if (!st.config.deployment.empty() && set.deployment != st.config.deployment) {
    spdlog::warn("router '{}' of deployment '{}': ignored a replica set of deployment '{}'", st.config.name,
                 st.config.deployment, set.deployment);
    return;
  }
  if (st.has_set && set.generation <= st.generation) return;  // older news
  std::vector<ReplicaSlot> slots;
  slots.reserve(set.replicas.size());
  std::unordered_set<caf::actor_addr> listed;
  for (auto& info : set.replicas) {
    if (!info.replica.valid()) continue;
    caf::actor_addr addr = info.replica.handle().address();
    if (!listed.insert(addr).second) continue;  // listed twice
    if (st.dead.count(addr) != 0) continue;
    ReplicaSlot slot{std::move(info), 0};
    if (auto it = st.index.find(addr); it != st.index.end()) {
      slot.outstanding = st.slots[it->second].outstanding;
    } else if (auto r = st.retired.find(addr); r != st.retired.end()) {
      slot.outstanding = r->second.outstanding;
      st.retired.erase(r);
    } else {
      self->monitor(slot.info.replica.handle());
    }
    slots.push_back(std::move(slot));
  }
  for (auto& old : st.slots) {
    caf::actor_addr addr = AddrOf(old);
    if (listed.count(addr) != 0) continue;
    if (old.outstanding > 0) {
      st.retired[addr] = Retired{old.info.name, old.outstanding};
    } else {
      self->demonitor(addr);
    }
  }
  for (auto it = st.dead.begin(); it != st.dead.end();) it = listed.count(*it) != 0 ? std::next(it) : st.dead.erase(it);
  st.slots = std::move(slots);
  RebuildIndex(st);
  st.policy->Reset();
  st.has_set = true;
  st.generation = set.generation;
  if (!st.slots.empty() && st.cold_since) {
    const double seconds = std::chrono::duration<double>(st.clock->Now() - *st.cold_since).count();
    st.cold_since.reset();
    st.tally.RecordColdStart(seconds);
    spdlog::info("router '{}' of deployment '{}': cold start: {:.3f} s from a request that found no replica to "
                 "the first ready one",
                 st.config.name, st.config.deployment, seconds);
  }
  spdlog::debug("router '{}' of deployment '{}': generation {}, {} replicas", st.config.name, st.config.deployment,
                st.generation, st.slots.size());
  DrainQueue(self);
}

// A replica ended (its down message): no new request goes there, and those in flight there fail
// (FailInFlight) once the requests it never read have come back. CAF bounces those from a dying
// replica's mailbox before its down message, but requests sent after it died (the router learns of
// a replica already dead when it monitors it, from a set) bounce later than the down message: a
// message to itself puts the failing behind those bounces, which are then retried instead. A
// replica on another node is told dead by its node, and a request that reached that node after
// the replica ended bounces later still: but a replica that ended normally (drained) answered
// every request it had started before it quit (replica.cc, Stop), and those answers came before
// its down message on the same connection, so whatever is still in flight there never started
// and is retried too.
void ReplicaDown(Self* self, caf::down_msg& down) {
  auto& st = self->state;
  DropFromTable(self, down.source);
  if (st.retired.count(down.source) == 0) return;
  st.dead.insert(down.source);
  const Status why = runtime::ToStatus(down.reason);
  self->send(self, fail_in_flight_atom::value, down.source, why.ToString(), why.ok());
}

void FailInFlight(Self* self, const caf::actor_addr& replica, const std::string& reason, bool ended_normally) {
  auto& st = self->state;
  auto r = st.retired.find(replica);
  if (r == st.retired.end()) return;
  const std::string name = r->second.name;
  st.retired.erase(r);
  size_t failed = 0;
  std::vector<Pending> unstarted;
  for (auto it = st.in_flight.begin(); it != st.in_flight.end();) {
    if (it->second.replica != replica) {
      ++it;
      continue;
    }
    if (ended_normally) {
      self->home_system().clock().cancel_request_timeout(self, it->second.mid);
      unstarted.push_back(std::move(it->second));
    } else {
      Fail(self, it->second,
           UnavailableError("replica " + name + " died while serving the request (" + RequestName(st, it->second) +
                            "): " + reason + "; it may have run partly, so it is not retried"));
      ++failed;
    }
    it = st.in_flight.erase(it);
  }
  spdlog::info("router '{}' of deployment '{}': replica {} ended ({}); {} requests in flight there failed, {} that "
               "it never started sent again",
               st.config.name, st.config.deployment, name, reason, failed, unstarted.size());
  // After the loop: a retry may send at once, which adds to in_flight.
  for (auto& p : unstarted) {
    Retry(self, std::move(p), UnavailableError("replica " + name + " ended (" + reason + ") before it started the request"));
  }
  DrainQueue(self);
}

std::string MetricsKey(const RouterConfig& config) { return config.deployment + "/" + config.name; }

void Report(Self* self) {
  auto& st = self->state;
  if (st.config.metrics) {
    st.tally.ongoing = static_cast<uint32_t>(st.in_flight.size());
    st.tally.queued = static_cast<uint32_t>(st.queue.size());
    st.tally.retries = st.stats.retried;
    st.config.metrics->Publish(MetricsKey(st.config), st.config.deployment, st.tally);
  }
  if (!st.config.autoscaler.valid()) {
    if (st.config.metrics) {
      self->delayed_send(self, st.config.load_report_interval, load_tick_atom::value);
    } else {
      st.load_ticking = false;
    }
    return;
  }
  const auto now = st.clock->Now();
  const double seconds = std::chrono::duration<double>(now - st.last_report).count();
  LoadReport report;
  report.deployment = st.config.deployment;
  report.source = "router/" + st.config.name;
  report.at_unix_ms = st.clock->UnixMs();
  report.ongoing = static_cast<uint32_t>(st.in_flight.size());
  report.queued = static_cast<uint32_t>(st.queue.size());
  report.completed_per_second =
      seconds > 0 ? static_cast<double>(st.stats.completed - st.completed_at_last_report) / seconds : 0;
  st.completed_at_last_report = st.stats.completed;
  st.last_report = now;
  self->send(st.config.autoscaler.handle(), std::move(report));
  self->delayed_send(self, st.config.load_report_interval, load_tick_atom::value);
}

void StartReports(Self* self) {
  auto& st = self->state;
  if (st.load_ticking || (!st.config.autoscaler.valid() && !st.config.metrics)) return;
  st.load_ticking = true;
  st.last_report = st.clock->Now();
  st.completed_at_last_report = st.stats.completed;
  self->delayed_send(self, st.config.load_report_interval, load_tick_atom::value);
}

caf::behavior Router(Self* self, RouterConfig config) {
  auto& st = self->state;
  st.config = std::move(config);
  st.clock = st.config.clock != nullptr ? st.config.clock : &SteadyClock::Instance();
  st.policy = MakeRoutingPolicy(st.config.policy, st.config.seed);
  self->set_down_handler([self](caf::down_msg& down) { ReplicaDown(self, down); });
  self->set_exit_handler([self](caf::exit_msg& exit) {
    auto& st = self->state;
    const Status why = UnavailableError("router '" + st.config.name + "' of deployment '" + st.config.deployment +
                                        "' stopped (" + runtime::ToStatus(exit.reason).ToString() + "); send it again");
    for (auto& [id, p] : st.in_flight) Fail(self, p, why);
    for (auto& p : st.queue) Fail(self, p, why);
    st.in_flight.clear();
    st.queue.clear();
    if (st.config.metrics) st.config.metrics->Remove(MetricsKey(st.config));
    self->quit(exit.reason);
  });
  StartReports(self);
  return {
      [self](InferenceRequest& request) -> caf::result<InferenceResponse> {
        auto promise = self->make_response_promise<InferenceResponse>();
        Admit(self, request, promise);
        return promise;
      },
      [self](ReplicaSet& set) { UseSet(self, set); },
      [self](SetAutoscaler& msg) {
        self->state.config.autoscaler = std::move(msg.autoscaler);
        StartReports(self);
      },
      [self](ConfigureRouter& settings) {
        auto& st = self->state;
        if (settings.policy != st.config.policy) {
          st.config.policy = settings.policy;
          st.policy = MakeRoutingPolicy(st.config.policy, st.config.seed);
        }
        st.config.max_queued = settings.max_queued;
        st.config.default_deadline = settings.default_deadline;
        spdlog::info("router '{}' of deployment '{}': routing {}, max_queued {}, default deadline {} ms",
                     st.config.name, st.config.deployment, RoutingPolicyName(st.config.policy), st.config.max_queued,
                     st.config.default_deadline.count());
      },
      [self](RouterQuery&) {
        auto& st = self->state;
        RouterStats stats = st.stats;
        stats.generation = st.generation;
        stats.replicas = static_cast<uint32_t>(st.slots.size());
        stats.ongoing = static_cast<uint32_t>(st.in_flight.size());
        stats.queued = static_cast<uint32_t>(st.queue.size());
        return stats;
      },
      [self](queue_tick_atom) {
        auto& st = self->state;
        ExpireQueued(self);
        if (st.queue.empty()) {
          st.queue_ticking = false;
          return;
        }
        self->delayed_send(self, st.config.queue_check_interval, queue_tick_atom::value);
      },
      [self](load_tick_atom) { Report(self); },
      [self](fail_in_flight_atom, caf::actor_addr& replica, std::string& reason, bool ended_normally) {
        FailInFlight(self, replica, reason, ended_normally);
      },
  };
}

}  // namespace

caf::actor SpawnRouter(caf::actor_system& system, RouterConfig config) {
  // A zero interval would make the timers spin; 1 ms is finer than any deadline needs.
  config.queue_check_interval = std::max(config.queue_check_interval, std::chrono::milliseconds(1));
  config.load_report_interval = std::max(config.load_report_interval, std::chrono::milliseconds(1));
  return system.spawn(Router, std::move(config));
}

}  // namespace troupe::serving
