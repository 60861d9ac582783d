// The head.
#include "cluster/head.h"

#include <caf/all.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <algorithm>
#include <deque>
#include <map>
#include <set>

#include "cluster/messages.h"
#include "cluster/scheduler.h"
#include "common/file_util.h"
#include "storage/table.h"

namespace troupe::storage {
template <>
struct ValueCodec<cluster::NodeRecord> {
  static std::string Encode(const cluster::NodeRecord& r) { return cluster::EncodeNodeRecord(r); }
  static StatusOr<cluster::NodeRecord> Decode(std::string_view b) { return cluster::DecodeNodeRecord(b); }
};
}  // namespace troupe::storage

namespace troupe::cluster {

namespace {

// Sent by the controller to itself `failure_timeout` after it starts: nodes of the earlier head
// that have not rejoined by then are dead.
using rejoin_deadline_atom = caf::atom_constant<caf::atom("rejoin_dl")>;
// Sent by the controller to itself a while after a write of the targets file failed: it tries again.
using retry_targets_atom = caf::atom_constant<caf::atom("retry_tgts")>;
constexpr std::chrono::seconds kTargetsRetryInterval{1};

// "1s", "1500 ms": a duration as the config would say it.
std::string DurationText(std::chrono::milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + "s";
  return std::to_string(d.count()) + " ms";
}

int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A stored state as seen now: an alive node silent for half the failure timeout is suspect.
std::string StateNow(const NodeRecord& record, std::optional<Clock::Duration> silence,
                     std::chrono::milliseconds failure_timeout) {
  if (record.state == "alive" && silence && *silence > failure_timeout / 2) return "suspect";
  return record.state;
}

// What the scrape thread and the targets file see of the controller's state.
struct ClusterView {
  std::mutex mu;
  std::map<std::string, NodeRecord> nodes;
  uint64_t slices_leased = 0;
  uint64_t leases_granted = 0;
  uint64_t leases_pending = 0;
};

// A lease as the head tracks it: waiting (promise open) or granted.
struct LeaseEntry {
  LeaseRequest request;
  caf::typed_response_promise<LeaseGrant> promise;
  caf::actor_addr owner;
  bool granted = false;
  LeaseGrant grant;
  // A lease of an earlier head, taken back node by node as the nodes rejoin: those whose part
  // has not been reported yet.
  std::set<std::string> awaiting;
};

struct ControllerState {
  ClusterConfig config;
  std::shared_ptr<ClusterView> view;
  std::string head_metrics_address;
  runtime::Runtime* runtime = nullptr;
  storage::LmdbEnv* env = nullptr;
  std::optional<storage::Table<std::string, NodeRecord>> table;
  std::optional<storage::Table<uint64_t, std::string>> lease_table;  // granted leases (StoredLease)
  // Leases of an earlier head that no node has reported yet (recovered from lease_table).
  std::map<uint64_t, std::pair<LeaseRequest, LeaseGrant>> recovered;
  // Lease keys (LeaseRequest::key) of the leases above and in `leases`: a request sent again
  // gets its lease, not a second one.
  std::map<std::string, uint64_t> by_key;
  std::map<std::string, NodeRecord> nodes;
  std::map<std::string, runtime::ActorRef> agents;
  std::vector<runtime::ActorRef> subscribers;
  sched::Scheduler scheduler;
  // Lease ids stay unique across head restarts (node agents may still hold earlier leases).
  uint64_t next_lease = static_cast<uint64_t>(UnixMs()) * 1000;
  std::map<uint64_t, LeaseEntry> leases;
  std::deque<runtime::SupervisorEvent> events;  // the newest kMaxEvents
  static constexpr size_t kMaxEvents = 1000;
  // Changes acknowledged although their write failed (see Write): node records to store again
  // and leases to delete again, retried before every later write until one succeeds.
  std::set<std::string> unsaved_nodes;
  std::set<uint64_t> unforgotten_leases;
  bool retrying_unsaved = false;
  // Whether the last write of the Prometheus targets file failed (logged once, not per publish),
  // and how to have Publish called again later (set by the controller).
  bool targets_failing = false;
  bool targets_retry_scheduled = false;
  std::function<void()> schedule_targets_retry;

  // Adds a joining node to the scheduler's snapshot (or makes a known one schedulable again).
  void Schedulable(const NodeRecord& record) {
    auto& snap = scheduler.snapshot();
    if (auto known = snap.FindNode(record.name)) {
      snap.SetSchedulable(*known, true);
      return;
    }
    sched::NodeState node;
    node.name = record.name;
    node.cpus_total = node.cpus_free = record.cpus;
    node.memory_total_bytes = node.memory_free_bytes = record.memory_bytes;
    std::vector<sched::GpuState> gpus;
    for (const auto& g : record.gpus) {
      sched::GpuState gpu;
      gpu.id = g.uuid.empty() ? g.name : g.uuid;
      gpu.index = g.index;
      const uint64_t slice = SliceSize(g.memory_bytes, record.slice_memory_bytes);
      if (slice == 0) continue;
      // The node agent refuses such a GPU itself; a node record from elsewhere (an older or
      // hostile peer with the token) must not make the scheduler index millions of slices.
      if (Status capped = CheckSliceCount(g.name, g.memory_bytes, slice); !capped.ok()) {
        spdlog::error("head: node '{}': GPU {} not scheduled: {}", record.name, g.index, capped.message());
        continue;
      }
      gpu.slices_total = gpu.slices_free = SliceCount(g.memory_bytes, record.slice_memory_bytes);
      gpu.slice_memory_bytes = slice;
      gpu.memory_total_bytes = g.memory_bytes;
      gpu.simulated = g.simulated;
      gpus.push_back(gpu);
    }
    snap.AddNode(std::move(node), std::move(gpus));
  }

  // Sends `msg` to the agent of every node the grant has a worker on.
  template <class Msg>
  void ToAgents(const LeaseGrant& grant, const std::function<Msg(const std::string& node)>& make) {
    std::set<std::string> done;
    for (const auto& w : grant.workers) {
      if (!done.insert(w.node).second) continue;
      if (auto agent = agents.find(w.node); agent != agents.end()) agent->second.Send(make(w.node));
    }
  }

  LeaseGrant GrantOf(uint64_t id, const sched::Grant& g) const {
    LeaseGrant out;
    out.lease_id = id;
    out.tenant = g.request.tenant;
    out.waited_ms = std::chrono::duration_cast<std::chrono::milliseconds>(g.waited).count();
    const auto& snap = scheduler.snapshot();
    for (const auto& a : g.assignments) {
      LeaseWorker w;
      const auto& node = snap.nodes()[a.node];
      w.node = node.name;
      if (auto rec = nodes.find(node.name); rec != nodes.end()) w.node_id = rec->second.node_id;
      w.cpus = a.cpus;
      w.host_memory_bytes = a.host_memory_bytes;
      if (a.gpu != sched::kNoGpu) {
        const auto& gpu = snap.gpus()[a.gpu];
        w.gpu_index = gpu.index;
        w.gpu_id = gpu.id;
        w.slices = a.slices;
        w.memory_bytes = uint64_t{a.slices} * gpu.slice_memory_bytes;
        w.compute_percent = a.slices * 100 / gpu.slices_total;
        w.simulated = gpu.simulated;
      }
      out.workers.push_back(std::move(w));
    }
    return out;
  }

  void PublishLeases() {
    std::lock_guard<std::mutex> lock(view->mu);
    view->slices_leased = scheduler.snapshot().slices_taken();
    view->leases_granted = scheduler.granted().size();
    view->leases_pending = leases.size() - scheduler.granted().size();
  }

  // Places what fits; grants go to their requesters and the nodes' agents.
  void RunScheduler() {
    for (auto& g : scheduler.Schedule(std::chrono::steady_clock::now())) {
      auto it = leases.find(g.request.id);
      if (it == leases.end()) continue;
      LeaseEntry& entry = it->second;
      LeaseGrant grant_to_store = GrantOf(g.request.id, g);
      // Stored before anyone hears of it: a head restarted from here on takes it back. A lease
      // the head could not store is not granted: a restarted head would not know it and would
      // hand its slices out again while its holder still runs.
      Status stored = StoreLease(entry.request, grant_to_store);
      if (!stored.ok()) {
        const uint64_t id = g.request.id;
        // A full disk often surfaces as a short write (LMDB: EIO), so the free space is looked
        // at too: the operator is told which of the two to fix.
        std::error_code ec;
        const auto space = std::filesystem::space(config.head.data_dir, ec);
        const bool full = stored.code() == StatusCode::kResourceExhausted || (!ec && space.available < (1u << 20));
        std::string where = config.head.data_dir;
        if (!ec) where += ", " + std::to_string(space.available) + " bytes free";
        Status refused(full ? StatusCode::kResourceExhausted : StatusCode::kInternal,
                       "the head could not store lease " + std::to_string(id) + " in head.data_dir (" + where +
                           "): " + stored.message() + "; it was not granted (a restarted head would not know it): " +
                           (full ? "free space in head.data_dir and ask again"
                                 : "check head.data_dir (free space, permissions, disk errors) and ask again"));
        spdlog::error("head: {}", refused.message());
        scheduler.Release(id);
        entry.promise.deliver(runtime::ToCafError(refused));
        ForgetKey(entry.request.key, id);
        leases.erase(it);
        continue;
      }
      entry.granted = true;
      entry.grant = std::move(grant_to_store);
      spdlog::info("head: lease {} granted to tenant '{}' after {} ms: {} worker(s)", entry.grant.lease_id,
                   entry.grant.tenant, entry.grant.waited_ms, entry.grant.workers.size());
      const auto& grant = entry.grant;
      const auto owner = entry.request.owner;
      ToAgents<AssignSlices>(grant, [&](const std::string& node) {
        AssignSlices assign{grant.lease_id, owner.ToString(), {}};
        for (const auto& w : grant.workers) {
          if (w.node == node) assign.workers.push_back(w);
        }
        return assign;
      });
      entry.promise.deliver(entry.grant);
    }
    PublishLeases();
  }

  // The node's process is gone (dead, never back after a head restart, or replaced by a new
  // incarnation): every lease with a worker there ends, its owner is told `why` (default "node
  // '<name>' was lost"), and its slices on other nodes return.
  void LoseLeasesOn(const std::string& name, std::string why = "") {
    if (why.empty()) why = "node '" + name + "' was lost";
    if (auto index = scheduler.snapshot().FindNode(name)) {
      for (const auto& lost : scheduler.LoseNode(*index)) {
        auto entry = leases.find(lost.request.id);
        if (entry == leases.end()) continue;
        spdlog::warn("head: lease {} lost with node '{}'", lost.request.id, name);
        const uint64_t id = lost.request.id;
        ToAgents<ReleaseSlices>(entry->second.grant, [id](const std::string&) { return ReleaseSlices{id}; });
        entry->second.request.owner.Send(LeaseEnded{id, why});
        ForgetLease(id);
        ForgetKey(entry->second.request.key, id);
        leases.erase(entry);
      }
    }
    // Leases taken back only in part, waiting for this node's report, and leases of an earlier
    // head not reported yet: their part here is gone. (A node the head knows only from its
    // store is in no scheduler snapshot's grants, so only these can hold it.)
    std::vector<uint64_t> partial;
    for (const auto& [id, entry] : leases) {
      if (entry.awaiting.count(name) != 0) partial.push_back(id);
    }
    for (uint64_t id : partial) EndLease(id, UnavailableError(why), /*tell_owner=*/true);
    DropRecovered([&](uint64_t, const LeaseGrant& grant) { return HasWorkerOn(grant, name); }, why);
  }

  // `failure_timeout` after the head started: a node of the earlier head that has not rejoined
  // is dead like any other (its process was lost while the head was down), and so are the leases
  // of the earlier head on it, or on a node the head has no record of.
  void DeclareUnrejoinedDead() {
    const std::string after = "did not rejoin within " + DurationText(config.failure_timeout) +
                              " after the head restarted";
    std::set<std::string> gone;
    for (auto& [name, record] : nodes) {
      if (record.state != "unknown") continue;
      record.state = "dead";
      record.reason = after;
      record.last_change_unix_ms = UnixMs();
      spdlog::warn("head: node '{}' is dead: {}", name, record.reason);
      Persist(record);
      Notify(record);
      // Shown by `troupe slices` as dead, like a node lost under this head; it takes no work.
      Schedulable(record);
      if (auto index = scheduler.snapshot().FindNode(name)) scheduler.snapshot().SetSchedulable(*index, false);
      gone.insert(name);
    }
    auto unheard = [&](const std::string& node) {
      auto known = nodes.find(node);
      return known == nodes.end() || known->second.state == "dead";
    };
    for (const auto& [id, entry] : leases) {
      for (const auto& node : entry.awaiting) {
        if (unheard(node)) gone.insert(node);
      }
    }
    for (const auto& [id, lease] : recovered) {
      for (const auto& w : lease.second.workers) {
        if (unheard(w.node)) gone.insert(w.node);
      }
    }
    if (gone.empty()) return;
    Publish();
    for (const auto& name : gone) LoseLeasesOn(name, "node '" + name + "' " + after);
    RunScheduler();
  }

  // Ends the leases of an earlier head that `pred` picks and no node has reported yet.
  void DropRecovered(const std::function<bool(uint64_t, const LeaseGrant&)>& pred, const std::string& why) {
    for (auto it = recovered.begin(); it != recovered.end();) {
      if (!pred(it->first, it->second.second)) {
        ++it;
        continue;
      }
      const uint64_t id = it->first;
      spdlog::warn("head: lease {} of the earlier head ended: {}", id, why);
      ToAgents<ReleaseSlices>(it->second.second, [id](const std::string&) { return ReleaseSlices{id}; });
      it->second.first.owner.Send(LeaseEnded{id, why});
      ForgetLease(id);
      ForgetKey(it->second.first.key, id);
      it = recovered.erase(it);
    }
  }

  // A node joined with the leases it holds. Leases of an earlier head come back: the scheduler
  // counts their slices again (nothing is handed out twice) and the head watches their owners.
  // A lease the head does not know is released on the node; a lease of an earlier head that the
  // node should hold and does not is over (the node restarted meanwhile).
  void TakeBack(const std::string& node, const std::vector<AssignSlices>& held, const runtime::ActorRef& agent,
                const std::function<void(const caf::actor&)>& monitor) {
    std::set<uint64_t> reported;
    for (const auto& h : held) {
      const uint64_t id = h.lease_id;
      reported.insert(id);
      auto known = leases.find(id);
      if (known != leases.end() && known->second.granted && known->second.awaiting.count(node) == 0) {
        continue;  // counted already (the node lost the head for a while, not the head its state)
      }
      LeaseEntry* entry = nullptr;
      if (known != leases.end() && known->second.granted) {
        entry = &known->second;
      } else if (auto rec = recovered.find(id); rec != recovered.end()) {
        LeaseEntry back;
        back.request = std::move(rec->second.first);
        back.grant = std::move(rec->second.second);
        back.granted = true;
        for (const auto& w : back.grant.workers) back.awaiting.insert(w.node);
        recovered.erase(rec);
        entry = &leases.emplace(id, std::move(back)).first->second;
        if (entry->request.owner.valid()) {
          entry->owner = entry->request.owner.handle().address();
          monitor(entry->request.owner.handle());
        }
        spdlog::info("head: lease {} of tenant '{}' taken back from the earlier head (owner {})", id,
                     entry->grant.tenant, entry->request.owner.ToString());
      } else {
        spdlog::warn("head: node '{}' holds lease {}, which the head does not know; releasing it there", node, id);
        agent.Send(ReleaseSlices{id});
        continue;
      }
      entry->awaiting.erase(node);
      auto part = PartOn(node, entry->grant.workers);
      auto request = SchedRequestOf(id, entry->request);
      Status adopted = !part.ok()      ? part.status()
                       : !request.ok() ? request.status()
                                       : scheduler.Adopt(*request, *part);
      if (adopted.ok() && !entry->request.owner.valid()) adopted = NotFoundError("its owner is unknown");
      if (!adopted.ok()) {
        spdlog::error("head: cannot take back lease {} on node '{}': {}", id, node, adopted.ToString());
        EndLease(id, adopted, /*tell_owner=*/true);
      }
    }
    std::vector<uint64_t> gone;
    for (const auto& [id, entry] : leases) {
      if (entry.awaiting.count(node) != 0 && reported.count(id) == 0) gone.push_back(id);
    }
    for (uint64_t id : gone) EndLease(id, UnavailableError("node '" + node + "' no longer holds it"), /*tell_owner=*/true);
    DropRecovered([&](uint64_t id, const LeaseGrant& grant) { return reported.count(id) == 0 && HasWorkerOn(grant, node); },
                  "node '" + node + "' no longer holds it");
    PublishLeases();
  }

  void ForgetKey(const std::string& key, uint64_t id) {
    if (auto k = by_key.find(key); !key.empty() && k != by_key.end() && k->second == id) by_key.erase(k);
  }

  static bool HasWorkerOn(const LeaseGrant& grant, const std::string& node) {
    return std::any_of(grant.workers.begin(), grant.workers.end(),
                       [&](const LeaseWorker& w) { return w.node == node; });
  }

  // What the head does when a write fails (head.data_dir full, LMDB failing), by kind of change:
  // - a granted lease (StoreLease): not acknowledged. The request fails with the reason and the
  //   slices return (RunScheduler): a restarted head would not know the lease, and would hand
  //   its slices out again while its holder still runs.
  // - a node record (Persist: join, death) and a lease's end (ForgetLease): acknowledged, kept
  //   in unsaved_nodes / unforgotten_leases and written again before every later write. What
  //   the store would lose here, a restarted head learns again: a live node rejoins by itself
  //   with the leases it holds; a stored lease that no node reports is ended then; a node that
  //   never rejoins is declared dead after failure_timeout (DeclareUnrejoinedDead).

  // One write transaction running `write`, after the changes still unsaved.
  Status Write(const std::function<Status(storage::Txn&)>& write) {
    RetryUnsaved();
    return Commit(write);
  }

  Status Commit(const std::function<Status(storage::Txn&)>& write) {
    auto txn = env->BeginWrite();
    Status s = txn.ok() ? write(*txn) : txn.status();
    if (s.ok()) s = txn->Commit();
    return s;
  }

  // Writes again what was acknowledged unstored; what still fails stays for the next write.
  void RetryUnsaved() {
    if (retrying_unsaved || (unsaved_nodes.empty() && unforgotten_leases.empty())) return;
    retrying_unsaved = true;
    for (auto it = unsaved_nodes.begin(); it != unsaved_nodes.end();) {
      auto record = nodes.find(*it);
      if (record == nodes.end() || Commit([&](storage::Txn& txn) { return table->Put(txn, *it, record->second); }).ok()) {
        if (record != nodes.end()) spdlog::info("head: node '{}' stored now (an earlier write had failed)", *it);
        it = unsaved_nodes.erase(it);
      } else {
        ++it;
      }
    }
    for (auto it = unforgotten_leases.begin(); it != unforgotten_leases.end();) {
      if (Commit([&](storage::Txn& txn) { return DeleteLease(txn, *it); }).ok()) {
        spdlog::info("head: lease {} removed from the store now (an earlier write had failed)", *it);
        it = unforgotten_leases.erase(it);
      } else {
        ++it;
      }
    }
    retrying_unsaved = false;
  }

  Status StoreLease(const LeaseRequest& request, const LeaseGrant& grant) {
    return Write([&](storage::Txn& txn) {
      return lease_table->Put(txn, grant.lease_id, EncodeStoredLease(request, grant, runtime->bridge()));
    });
  }

  Status DeleteLease(storage::Txn& txn, uint64_t id) {
    Status s = lease_table->Delete(txn, id);
    return s.code() == StatusCode::kNotFound ? OkStatus() : s;
  }

  void ForgetLease(uint64_t id) {
    Status s = Write([&](storage::Txn& txn) { return DeleteLease(txn, id); });
    if (s.ok()) return;
    spdlog::error("head: cannot remove ended lease {} from {}: {}; it is removed at a later write (until then a "
                  "restarted head ends it when no node reports it)",
                  id, config.head.data_dir, s.ToString());
    unforgotten_leases.insert(id);
  }

  // The scheduler's view of a node's part of a granted lease, from the workers it reports.
  StatusOr<std::vector<sched::Assignment>> PartOn(const std::string& node, const std::vector<LeaseWorker>& workers) {
    const auto& snap = scheduler.snapshot();
    auto index = snap.FindNode(node);
    if (!index) return NotFoundError("node '" + node + "' is not in the scheduler");
    std::vector<sched::Assignment> part;
    for (const auto& w : workers) {
      if (w.node != node) continue;
      sched::Assignment a;
      a.node = *index;
      a.cpus = w.cpus;
      a.host_memory_bytes = w.host_memory_bytes;
      if (w.gpu_index != kNoGpuIndex) {
        a.slices = w.slices;
        for (uint32_t g : snap.nodes()[*index].gpus) {
          if (snap.gpus()[g].index == w.gpu_index) a.gpu = g;
        }
        if (a.gpu == sched::kNoGpu) {
          return NotFoundError("node '" + node + "' has no GPU " + std::to_string(w.gpu_index));
        }
      }
      part.push_back(a);
    }
    return part;
  }

  // The scheduler's request for a lease request; InvalidArgument for an unknown priority or policy.
  static StatusOr<sched::Request> SchedRequestOf(uint64_t id, const LeaseRequest& req) {
    ASSIGN_OR_RETURN(sched::Priority priority, sched::ParsePriority(req.priority));
    ASSIGN_OR_RETURN(sched::Policy policy, sched::ParsePolicy(req.policy));
    sched::Request r;
    r.id = id;
    r.tenant = req.tenant.empty() ? "default" : req.tenant;
    r.count = req.count;
    r.slice_memory_bytes = req.slice_memory_bytes;
    r.compute_percent = req.compute_percent;
    r.cpus = req.cpus;
    r.host_memory_bytes = req.host_memory_bytes;
    r.priority = priority;
    r.policy = policy;
    r.gang = req.gang;
    return r;
  }

  // Ends a lease (granted or waiting) and returns its slices. The owner of a granted lease is
  // told (LeaseEnded) when `tell_owner`: the lease ended without it asking and while it lives.
  void EndLease(uint64_t id, const Status& why, bool tell_owner = false) {
    auto it = leases.find(id);
    if (it == leases.end()) return;
    scheduler.Release(id);
    if (it->second.granted) {
      ToAgents<ReleaseSlices>(it->second.grant, [id](const std::string&) { return ReleaseSlices{id}; });
      if (tell_owner) it->second.request.owner.Send(LeaseEnded{id, why.ToString()});
      ForgetLease(id);
      spdlog::info("head: lease {} ended: {}", id, why.ToString());
    } else {
      it->second.promise.deliver(runtime::ToCafError(why));
    }
    ForgetKey(it->second.request.key, id);
    leases.erase(it);
    RunScheduler();
  }

  void Notify(const NodeRecord& record) {
    for (const auto& s : subscribers) s.Send(MembershipEvent{record});
  }

  // Publishes the node table to the scrape thread and rewrites the Prometheus file-SD list.
  void Publish() {
    {
      std::lock_guard<std::mutex> lock(view->mu);
      view->nodes = nodes;
    }
    // Prometheus's file-SD format: [{"targets": [host:port], "labels": {...}}, ...].
    nlohmann::ordered_json targets = nlohmann::ordered_json::array();
    targets.push_back({{"targets", nlohmann::ordered_json::array({head_metrics_address})},
                       {"labels", {{"cluster", config.name}, {"role", "head"}, {"node", "head"}}}});
    for (const auto& [name, record] : nodes) {
      if (record.metrics_address.empty() || record.state == "dead") continue;
      targets.push_back({{"targets", nlohmann::ordered_json::array({record.metrics_address})},
                         {"labels", {{"cluster", config.name}, {"role", "node"}, {"node", name}}}});
    }
    const std::string json =
        targets.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
    std::string path = config.head.data_dir + "/prometheus-targets.json";
    // Replaced whole: Prometheus never reads an empty or half-written list. On failure the old
    // list stays; logged once until a write succeeds again.
    Status written = WriteFileAtomically(path, json);
    if (!written.ok() && !targets_failing) {
      spdlog::error("head: {}; Prometheus keeps the previous list until a write succeeds", written.ToString());
    } else if (written.ok() && targets_failing) {
      spdlog::info("head: {} written again", path);
    }
    targets_failing = !written.ok();
    // Written again later even if membership does not change meanwhile (the disk has space again).
    if (targets_failing && !targets_retry_scheduled && schedule_targets_retry) {
      targets_retry_scheduled = true;
      schedule_targets_retry();
    }
  }

  void Persist(const NodeRecord& record) {
    Status s = Write([&](storage::Txn& txn) { return table->Put(txn, record.name, record); });
    if (s.ok()) {
      unsaved_nodes.erase(record.name);
      return;
    }
    if (unsaved_nodes.insert(record.name).second) {
      spdlog::error("head: cannot store node '{}' in {}: {}; it is stored at a later write (until then a restarted "
                    "head learns it again when the node rejoins)",
                    record.name, config.head.data_dir, s.ToString());
    }
  }
};

caf::behavior Controller(caf::stateful_actor<ControllerState>* self, ControllerState init) {
  self->state = std::move(init);
  self->state.schedule_targets_retry = [self] {
    self->delayed_send(self, kTargetsRetryInterval, retry_targets_atom::value);
  };
  self->state.Publish();
  // Nodes and leases of an earlier head wait for their nodes to rejoin, for failure_timeout.
  const bool awaiting_rejoins =
      !self->state.recovered.empty() ||
      std::any_of(self->state.nodes.begin(), self->state.nodes.end(),
                  [](const auto& n) { return n.second.state == "unknown"; });
  if (awaiting_rejoins) self->delayed_send(self, self->state.config.failure_timeout, rejoin_deadline_atom::value);
  runtime::MailboxDepths* depths = &self->state.runtime->mailbox_depths();
  runtime::StartMailboxSampling(self, depths, "head.controller");
  self->set_down_handler([self](caf::down_msg& msg) {
    auto& st = self->state;
    std::vector<uint64_t> owned;
    for (const auto& [id, lease] : st.leases) {
      if (lease.owner == msg.source) owned.push_back(id);
    }
    for (uint64_t id : owned) {
      st.EndLease(id, CancelledError("lease owner gone: " + runtime::ToStatus(msg.reason).ToString()));
    }
    st.subscribers.erase(std::remove_if(st.subscribers.begin(), st.subscribers.end(),
                                        [&](const runtime::ActorRef& r) {
                                          return r.handle() && r.handle().address() == msg.source;
                                        }),
                         st.subscribers.end());
    for (auto& [agent_name, agent] : st.agents) {
      if (agent.handle() && agent.handle().address() == msg.source) {
        const std::string name = agent_name;  // the entry is erased below
        auto& record = st.nodes[name];
        record.state = "dead";
        record.reason = runtime::ToStatus(msg.reason).ToString();
        record.last_change_unix_ms = UnixMs();
        spdlog::warn("head: node '{}' is dead: {}", name, record.reason);
        st.Persist(record);
        st.agents.erase(name);
        st.Publish();
        st.Notify(record);
        st.LoseLeasesOn(name);
        st.RunScheduler();
        break;
      }
    }
  });
  return {
      runtime::MailboxSampleHandler(self, depths, "head.controller"),
      [self](rejoin_deadline_atom) { self->state.DeclareUnrejoinedDead(); },
      [self](retry_targets_atom) {
        self->state.targets_retry_scheduled = false;
        if (self->state.targets_failing) self->state.Publish();
      },
      [self](JoinRequest& join) -> caf::result<JoinReply> {
        auto& st = self->state;
        NodeRecord record = join.node;
        if (record.name.empty()) return runtime::ToCafError(InvalidArgumentError("join: empty node name"));
        auto known = st.nodes.find(record.name);
        record.joins = known == st.nodes.end() ? 1 : known->second.joins + 1;
        record.state = "alive";
        record.reason.clear();
        record.last_change_unix_ms = UnixMs();
        if (!st.config.FindNode(record.name)) {
          spdlog::warn("head: node '{}' is not in {}; accepting it anyway", record.name, st.config.source);
        }
        st.nodes[record.name] = record;
        if (auto old = st.agents.find(record.name); old != st.agents.end()) {
          self->demonitor(old->second.handle());
          // A new process under a known name (restarted before its loss was noticed): what the old
          // one held is gone with it. The same agent joining again (it lost the head) keeps it.
          if (old->second.id() != join.agent.id()) {
            spdlog::warn("head: node '{}' rejoined as a new process; its earlier process is gone", record.name);
            st.LoseLeasesOn(record.name);
          }
        }
        st.agents[record.name] = join.agent;
        self->monitor(join.agent.handle());
        st.Persist(record);
        st.Publish();
        st.Notify(record);
        st.Schedulable(record);
        st.TakeBack(record.name, join.held, join.agent, [self](const caf::actor& owner) { self->monitor(owner); });
        st.RunScheduler();
        spdlog::info("head: node '{}' ({}) joined from {} (join #{})", record.name, record.node_id, record.address,
                     record.joins);
        return JoinReply{st.config.name, record.node_id};
      },
      [self](SubscribeMembership& sub) -> caf::result<NodeList> {
        if (!sub.subscriber.valid()) return runtime::ToCafError(InvalidArgumentError("subscribe: empty subscriber"));
        auto& st = self->state;
        st.subscribers.push_back(sub.subscriber);
        self->monitor(sub.subscriber.handle());
        NodeList list;
        list.cluster_name = st.config.name;
        for (const auto& [name, record] : st.nodes) list.nodes.push_back(record);
        return list;
      },
      [self](LeaseRequest& req) -> caf::result<LeaseGrant> {
        auto& st = self->state;
        if (!req.owner.valid()) return runtime::ToCafError(InvalidArgumentError("lease request without an owner"));
        // Checked before the key lookup: a malformed request is refused, never matched.
        auto checked = ControllerState::SchedRequestOf(0, req);
        if (!checked.ok()) return runtime::ToCafError(checked.status());
        if (auto known = st.by_key.find(req.key); !req.key.empty() && known != st.by_key.end()) {
          // Sent again (a reply was lost, or the head restarted): the same lease, not a second.
          const uint64_t id = known->second;
          auto same_owner = [&](const runtime::ActorRef& owner) {
            return owner.node() == req.owner.node() && owner.id() == req.owner.id();
          };
          if (auto entry = st.leases.find(id); entry != st.leases.end()) {
            if (!same_owner(entry->second.request.owner)) {
              return runtime::ToCafError(AlreadyExistsError("lease key '" + req.key + "' belongs to another owner"));
            }
            if (entry->second.granted) return entry->second.grant;
            entry->second.promise.deliver(runtime::ToCafError(CancelledError("the request was sent again")));
            entry->second.promise = self->make_response_promise<LeaseGrant>();
            return entry->second.promise;
          }
          if (auto rec = st.recovered.find(id); rec != st.recovered.end()) {
            if (!same_owner(rec->second.first.owner)) {
              return runtime::ToCafError(AlreadyExistsError("lease key '" + req.key + "' belongs to another owner"));
            }
            return rec->second.second;
          }
          st.by_key.erase(known);
        }
        sched::Request r = std::move(*checked);
        r.id = st.next_lease++;
        Status submitted = st.scheduler.Submit(r, std::chrono::steady_clock::now());
        if (!submitted.ok()) return runtime::ToCafError(submitted);
        LeaseEntry entry;
        entry.request = req;
        entry.owner = req.owner.handle().address();
        entry.promise = self->make_response_promise<LeaseGrant>();
        auto promise = entry.promise;
        st.leases.emplace(r.id, std::move(entry));
        if (!req.key.empty()) st.by_key[req.key] = r.id;
        self->monitor(req.owner.handle());
        st.RunScheduler();
        return promise;
      },
      [self](ReleaseLease& release) -> caf::result<LeaseGrant> {
        auto& st = self->state;
        auto it = st.leases.find(release.lease_id);
        if (it == st.leases.end() || !it->second.granted) {
          return runtime::ToCafError(NotFoundError("no granted lease " + std::to_string(release.lease_id)));
        }
        LeaseGrant grant = it->second.grant;
        st.EndLease(release.lease_id, CancelledError("released by its holder"));
        return grant;
      },
      [self](GpuReport& report) {
        auto& st = self->state;
        auto node = st.scheduler.snapshot().FindNode(report.node);
        if (!node) return;
        for (const auto& load : report.gpus) {
          for (uint32_t g : st.scheduler.snapshot().nodes()[*node].gpus) {
            if (st.scheduler.snapshot().gpus()[g].index == load.index) {
              st.scheduler.snapshot().ReportLoad(g, load.utilisation, load.memory_used_bytes);
            }
          }
        }
      },
      [self](ListSlices&) -> SliceList {
        auto& st = self->state;
        const auto& snap = st.scheduler.snapshot();
        std::map<uint32_t, std::vector<SliceLeaseInfo>> by_gpu;
        for (const auto& [id, grant] : st.scheduler.granted()) {
          auto entry = st.leases.find(id);
          std::string owner = entry == st.leases.end() ? "" : entry->second.request.owner.ToString();
          for (const auto& a : grant.assignments) {
            if (a.gpu != sched::kNoGpu) by_gpu[a.gpu].push_back(SliceLeaseInfo{id, grant.request.tenant, owner, a.slices});
          }
        }
        SliceList list;
        for (uint32_t g = 0; g < snap.gpus().size(); ++g) {
          const auto& gpu = snap.gpus()[g];
          GpuSlices out;
          out.node = snap.nodes()[gpu.node].name;
          if (auto rec = st.nodes.find(out.node); rec != st.nodes.end()) {
            out.node_state = rec->second.state;
            for (const auto& info : rec->second.gpus) {
              if (info.index == gpu.index) out.gpu = info;
            }
          }
          out.slices_total = gpu.slices_total;
          out.slices_free = gpu.slices_free;
          out.slice_memory_bytes = gpu.slice_memory_bytes;
          out.utilisation = gpu.utilisation;
          out.memory_used_bytes = gpu.memory_used_bytes;
          out.leases = by_gpu[g];
          list.gpus.push_back(std::move(out));
        }
        for (const auto& p : st.scheduler.Pending(std::chrono::steady_clock::now())) {
          list.pending.push_back(PendingLease{p.request.id, p.request.tenant, p.request.count, p.placed,
                                              std::chrono::duration_cast<std::chrono::milliseconds>(p.waited).count(),
                                              p.reason, std::string(sched::PriorityName(p.request.priority))});
        }
        return list;
      },
      [self](runtime::SupervisorEvent& event) {
        auto& st = self->state;
        st.events.push_back(std::move(event));
        if (st.events.size() > ControllerState::kMaxEvents) st.events.pop_front();
      },
      [self](ListEvents&) -> EventList {
        return EventList{std::vector<runtime::SupervisorEvent>(self->state.events.begin(), self->state.events.end())};
      },
      [self](ListNodes&) -> NodeList {
        auto& st = self->state;
        NodeList list;
        list.cluster_name = st.config.name;
        for (auto [name, record] : st.nodes) {
          auto silence = st.runtime->bridge().Silence(record.node_id);
          record.heartbeat_age_ms =
              silence ? std::chrono::duration_cast<std::chrono::milliseconds>(*silence).count() : -1;
          record.state = StateNow(record, silence, st.config.failure_timeout);
          list.nodes.push_back(std::move(record));
        }
        return list;
      },
  };
}

}  // namespace

StatusOr<std::unique_ptr<Head>> Head::Start(const ClusterConfig& config) {
  if (config.head.data_dir.empty()) {
    return InvalidArgumentError(config.source + ": head.data_dir is required (the head keeps its state there)");
  }
  std::error_code ec;
  std::filesystem::create_directories(config.head.data_dir, ec);
  if (ec) return InvalidArgumentError("head.data_dir: cannot create " + config.head.data_dir + ": " + ec.message());
  std::unique_ptr<Head> head(new Head());
  storage::LmdbOptions options;
  options.path = config.head.data_dir;
  options.map_size = uint64_t{256} << 20;
  ASSIGN_OR_RETURN(head->env_, storage::LmdbEnv::Open(options));
  ASSIGN_OR_RETURN(auto table, (storage::Table<std::string, NodeRecord>::Open(*head->env_, "nodes")));
  ASSIGN_OR_RETURN(auto lease_table, (storage::Table<uint64_t, std::string>::Open(*head->env_, "leases")));

  ControllerState init;
  init.config = config;
  init.env = head->env_.get();
  init.table = table;
  init.lease_table = lease_table;
  init.scheduler = sched::Scheduler({}, config.quotas);
  init.scheduler.SetBackfillLimit(config.backfill_limit);
  {
    ASSIGN_OR_RETURN(auto txn, head->env_->BeginRead());
    RETURN_IF_ERROR(table.ForEach(txn, [&](const std::string& name, const NodeRecord& stored) {
      NodeRecord record = stored;
      if (record.state != "dead") record.state = "unknown";
      init.nodes[name] = record;
      return true;
    }));
  }
  if (!init.nodes.empty()) {
    spdlog::info("head: recovered {} node(s) from {}", init.nodes.size(), config.head.data_dir);
  }

  std::string listen = config.head.address + ":" + std::to_string(config.head.port);
  ASSIGN_OR_RETURN(head->runtime_,
                   runtime::Runtime::Start(RuntimeConfigFor(config, "head", HeadNodeId(config), listen), ClusterCodecs()));
  init.runtime = head->runtime_.get();
  {
    // Granted leases of an earlier head: the nodes still hold them; they come back as the nodes
    // rejoin (ControllerState::TakeBack). The owners' addresses need the runtime's bridge.
    ASSIGN_OR_RETURN(auto txn, head->env_->BeginRead());
    RETURN_IF_ERROR(lease_table.ForEach(txn, [&](const uint64_t& id, const std::string& bytes) {
      auto lease = DecodeStoredLease(bytes, head->runtime_->bridge());
      if (!lease.ok()) {
        spdlog::error("head: stored lease {} in {} does not decode ({}); its slices are released when its nodes rejoin",
                      id, config.head.data_dir, lease.status().ToString());
        return true;
      }
      if (!lease->first.key.empty()) init.by_key[lease->first.key] = id;
      init.recovered.emplace(id, std::move(*lease));
      init.next_lease = std::max(init.next_lease, id + 1);
      return true;
    }));
  }
  // A node that died under the earlier head took its leases with it.
  init.DropRecovered(
      [&](uint64_t, const LeaseGrant& grant) {
        return std::any_of(grant.workers.begin(), grant.workers.end(), [&](const LeaseWorker& w) {
          auto node = init.nodes.find(w.node);
          return node != init.nodes.end() && node->second.state == "dead";
        });
      },
      "a node it used is dead");
  if (!init.recovered.empty()) {
    spdlog::info("head: {} lease(s) of the earlier head wait for their nodes to rejoin", init.recovered.size());
  }
  ASSIGN_OR_RETURN(head->metrics_, runtime::MetricsServer::Start(config.head.address, config.head.metrics_port));
  head->metrics_->AddSource(runtime::RuntimeMetrics(*head->runtime_));
  auto view = std::make_shared<ClusterView>();
  init.view = view;
  init.head_metrics_address = head->metrics_->address();
  runtime::Runtime* rt = head->runtime_.get();
  std::chrono::milliseconds timeout = config.failure_timeout;
  std::string cluster_name = config.name;
  head->metrics_->AddSource([view, rt, timeout, cluster_name](std::vector<prometheus::MetricFamily>& out) {
    std::map<std::string, NodeRecord> nodes;
    {
      std::lock_guard<std::mutex> lock(view->mu);
      nodes = view->nodes;
    }
    std::map<std::string, int> by_state = {{"alive", 0}, {"suspect", 0}, {"dead", 0}, {"unknown", 0}};
    auto age = runtime::GaugeFamily("troupe_cluster_node_heartbeat_age_seconds",
                                    "Time since the head last heard from the node");
    double gpus_real = 0, gpus_sim = 0, gpu_memory = 0, slices = 0;
    for (const auto& [name, record] : nodes) {
      auto silence = rt->bridge().Silence(record.node_id);
      std::string state = StateNow(record, silence, timeout);
      ++by_state[state];
      if (silence) {
        runtime::AddSample(age, std::chrono::duration<double>(*silence).count(), {{"cluster", cluster_name}, {"node", name}});
      }
      if (state == "dead") continue;
      for (const auto& gpu : record.gpus) {
        (gpu.simulated ? gpus_sim : gpus_real) += 1;
        gpu_memory += gpu.memory_bytes;
        slices += SliceCount(gpu.memory_bytes, record.slice_memory_bytes);
      }
    }
    auto states = runtime::GaugeFamily("troupe_cluster_nodes", "Nodes by membership state");
    for (const auto& [state, n] : by_state) runtime::AddSample(states, n, {{"cluster", cluster_name}, {"state", state}});
    out.push_back(std::move(states));
    out.push_back(std::move(age));
    auto gpus = runtime::GaugeFamily("troupe_cluster_gpus", "GPUs of live nodes (simulated ones labelled)");
    runtime::AddSample(gpus, gpus_real, {{"cluster", cluster_name}, {"simulated", "false"}});
    runtime::AddSample(gpus, gpus_sim, {{"cluster", cluster_name}, {"simulated", "true"}});
    out.push_back(std::move(gpus));
    auto memory = runtime::GaugeFamily("troupe_cluster_gpu_memory_bytes", "GPU memory of live nodes");
    runtime::AddSample(memory, gpu_memory, {{"cluster", cluster_name}});
    out.push_back(std::move(memory));
    auto slice_total = runtime::GaugeFamily("troupe_cluster_slices_total", "GPU slices of live nodes");
    runtime::AddSample(slice_total, slices, {{"cluster", cluster_name}});
    out.push_back(std::move(slice_total));
    uint64_t leased = 0, granted = 0, pending = 0;
    {
      std::lock_guard<std::mutex> lock(view->mu);
      leased = view->slices_leased;
      granted = view->leases_granted;
      pending = view->leases_pending;
    }
    auto slices_leased = runtime::GaugeFamily("troupe_cluster_slices_leased", "GPU slices leased now");
    runtime::AddSample(slices_leased, static_cast<double>(leased), {{"cluster", cluster_name}});
    out.push_back(std::move(slices_leased));
    auto lease_states = runtime::GaugeFamily("troupe_cluster_leases", "Slice leases by state");
    runtime::AddSample(lease_states, static_cast<double>(granted), {{"cluster", cluster_name}, {"state", "granted"}});
    runtime::AddSample(lease_states, static_cast<double>(pending), {{"cluster", cluster_name}, {"state", "pending"}});
    out.push_back(std::move(lease_states));
  });
  // Detached: it writes LMDB (fsync) and must not hold the transport's progress thread.
  head->controller_ = head->runtime_->system().spawn<caf::detached>(Controller, std::move(init));
  RETURN_IF_ERROR(head->runtime_->RegisterName(kHeadActorName, head->runtime_->Ref(head->controller_)));
  head->address_ = head->runtime_->address();
  head->address_file_ = config.head.data_dir + "/head.address";
  RETURN_IF_ERROR(WriteFileAtomically(head->address_file_, head->address_ + "\n"));
  return head;
}

Head::~Head() { Stop(); }

void Head::Stop() {
  if (!runtime_) return;
  if (controller_) caf::anon_send_exit(controller_, caf::exit_reason::user_shutdown);
  runtime_->Stop();
  std::remove(address_file_.c_str());
}

}  // namespace troupe::cluster
