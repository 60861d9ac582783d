// LeaseRegistry.
#include "cluster/lease_registry.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>

namespace troupe::cluster {

StatusOr<sched::Request> SchedRequestOf(uint64_t id, const LeaseRequest& req) {
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

bool HasWorkerOn(const LeaseGrant& grant, const std::string& node) {
  return std::any_of(grant.workers.begin(), grant.workers.end(), [&](const LeaseWorker& w) { return w.node == node; });
}

LeaseRegistry::LeaseRegistry(const ClusterConfig& config, HeadStore* store, storage::Table<uint64_t, std::string> table,
                             const NodeDirectory* nodes, runtime::RefCodec* refs, const Clock* clock,
                             std::function<void(const runtime::ActorRef& owner)> watch_owner,
                             std::function<void(const LeaseCounts&)> on_counts)
    : config_(config),
      store_(store),
      table_(std::move(table)),
      nodes_(nodes),
      refs_(refs),
      clock_(clock),
      watch_owner_(std::move(watch_owner)),
      on_counts_(std::move(on_counts)),
      scheduler_({}, config.quotas),
      next_lease_(static_cast<uint64_t>(clock->UnixMs()) * 1000) {
  scheduler_.SetBackfillLimit(config.backfill_limit);
  store_->AddRetry([this] { RetryUnforgotten(); });
}

Status LeaseRegistry::Recover() {
  {
    ASSIGN_OR_RETURN(auto txn, store_->env().BeginRead());
    RETURN_IF_ERROR(table_.ForEach(txn, [&](const uint64_t& id, const std::string& bytes) {
      auto lease = DecodeStoredLease(bytes, *refs_);
      if (!lease.ok()) {
        spdlog::error("head: stored lease {} in {} does not decode ({}); its slices are released when its nodes rejoin",
                      id, config_.head.data_dir, lease.status().ToString());
        return true;
      }
      if (!lease->first.key.empty()) by_key_[lease->first.key] = id;
      recovered_.emplace(id, std::move(*lease));
      next_lease_ = std::max(next_lease_, id + 1);
      return true;
    }));
  }
  // A node that died under the earlier head took its leases with it.
  DropRecovered(
      [&](uint64_t, const LeaseGrant& grant) {
        return std::any_of(grant.workers.begin(), grant.workers.end(), [&](const LeaseWorker& w) {
          const NodeRecord* node = nodes_->FindNode(w.node);
          return node != nullptr && node->state == "dead";
        });
      },
      "a node it used is dead");
  if (!recovered_.empty()) {
    spdlog::info("head: {} lease(s) of the earlier head wait for their nodes to rejoin", recovered_.size());
  }
  return OkStatus();
}

std::optional<StatusOr<LeaseGrant>> LeaseRegistry::Request(const LeaseRequest& req,
                                                           const std::function<LeaseReply()>& open_reply) {
  // Checked before the key lookup: a malformed request is refused, never matched.
  auto checked = SchedRequestOf(0, req);
  if (!checked.ok()) return StatusOr<LeaseGrant>(checked.status());
  if (auto known = by_key_.find(req.key); !req.key.empty() && known != by_key_.end()) {
    // Sent again (a reply was lost, or the head restarted): the same lease, not a second.
    const uint64_t id = known->second;
    auto same_owner = [&](const runtime::ActorRef& owner) {
      return owner.node() == req.owner.node() && owner.id() == req.owner.id();
    };
    if (auto entry = leases_.find(id); entry != leases_.end()) {
      if (!same_owner(entry->second.request.owner)) {
        return StatusOr<LeaseGrant>(AlreadyExistsError("lease key '" + req.key + "' belongs to another owner"));
      }
      if (entry->second.granted) return StatusOr<LeaseGrant>(entry->second.grant);
      entry->second.reply(CancelledError("the request was sent again"));
      entry->second.reply = open_reply();
      return std::nullopt;
    }
    if (auto rec = recovered_.find(id); rec != recovered_.end()) {
      if (!same_owner(rec->second.first.owner)) {
        return StatusOr<LeaseGrant>(AlreadyExistsError("lease key '" + req.key + "' belongs to another owner"));
      }
      return StatusOr<LeaseGrant>(rec->second.second);
    }
    by_key_.erase(known);
  }
  sched::Request r = std::move(*checked);
  r.id = next_lease_++;
  Status submitted = scheduler_.Submit(r, clock_->Now());
  if (!submitted.ok()) return StatusOr<LeaseGrant>(submitted);
  Entry entry;
  entry.request = req;
  entry.owner = req.owner.handle().address();
  entry.reply = open_reply();
  leases_.emplace(r.id, std::move(entry));
  if (!req.key.empty()) by_key_[req.key] = r.id;
  watch_owner_(req.owner);
  RunScheduler();
  return std::nullopt;
}

StatusOr<LeaseGrant> LeaseRegistry::Release(uint64_t id) {
  auto it = leases_.find(id);
  if (it == leases_.end() || !it->second.granted) {
    return NotFoundError("no granted lease " + std::to_string(id));
  }
  LeaseGrant grant = it->second.grant;
  EndLease(id, CancelledError("released by its holder"));
  return grant;
}

bool LeaseRegistry::Withdraw(const std::string& key) {
  auto known = by_key_.find(key);
  if (key.empty() || known == by_key_.end()) return false;
  auto it = leases_.find(known->second);
  if (it == leases_.end() || it->second.granted) return false;
  EndLease(it->first, CancelledError("withdrawn by its requester"));
  return true;
}

void LeaseRegistry::EndLeasesOwnedBy(const caf::actor_addr& owner, const Status& why) {
  std::vector<uint64_t> owned;
  for (const auto& [id, lease] : leases_) {
    if (lease.owner == owner) owned.push_back(id);
  }
  for (uint64_t id : owned) EndLease(id, why);
}

void LeaseRegistry::ReportLoad(const GpuReport& report) {
  auto node = scheduler_.snapshot().FindNode(report.node);
  if (!node) return;
  for (const auto& load : report.gpus) {
    for (uint32_t g : scheduler_.snapshot().nodes()[*node].gpus) {
      if (scheduler_.snapshot().gpus()[g].index == load.index) {
        scheduler_.snapshot().ReportLoad(g, load.utilisation, load.memory_used_bytes);
      }
    }
  }
}

std::optional<std::pair<PendingLease, size_t>> LeaseRegistry::WaitingByKey(const std::string& key) const {
  auto known = by_key_.find(key);
  if (key.empty() || known == by_key_.end()) return std::nullopt;
  const SliceList list = ListSlices();
  for (size_t i = 0; i < list.pending.size(); ++i) {
    if (list.pending[i].lease_id == known->second) return std::make_pair(list.pending[i], i + 1);
  }
  return std::nullopt;
}

SliceList LeaseRegistry::ListSlices() const {
  const auto& snap = scheduler_.snapshot();
  std::map<uint32_t, std::vector<SliceLeaseInfo>> by_gpu;
  for (const auto& [id, grant] : scheduler_.granted()) {
    auto entry = leases_.find(id);
    std::string owner = entry == leases_.end() ? "" : entry->second.request.owner.ToString();
    for (const auto& a : grant.assignments) {
      if (a.gpu != sched::kNoGpu) by_gpu[a.gpu].push_back(SliceLeaseInfo{id, grant.request.tenant, owner, a.slices});
    }
  }
  SliceList list;
  for (uint32_t g = 0; g < snap.gpus().size(); ++g) {
    const auto& gpu = snap.gpus()[g];
    GpuSlices out;
    out.node = snap.nodes()[gpu.node].name;
    if (const NodeRecord* rec = nodes_->FindNode(out.node)) {
      out.node_state = rec->state;
      for (const auto& info : rec->gpus) {
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
  for (const auto& p : scheduler_.Pending(clock_->Now())) {
    list.pending.push_back(PendingLease{p.request.id, p.request.tenant, p.request.count, p.placed,
                                        std::chrono::duration_cast<std::chrono::milliseconds>(p.waited).count(),
                                        p.reason, std::string(sched::PriorityName(p.request.priority))});
  }
  return list;
}

void LeaseRegistry::AddNodeToScheduler(const NodeRecord& record) {
  auto& snap = scheduler_.snapshot();
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

void LeaseRegistry::AddDeadNodeToScheduler(const NodeRecord& record) {
  AddNodeToScheduler(record);
  if (auto index = scheduler_.snapshot().FindNode(record.name)) scheduler_.snapshot().SetSchedulable(*index, false);
}

template <class Msg>
void LeaseRegistry::ToAgents(const LeaseGrant& grant, const std::function<Msg(const std::string& node)>& make) const {
  std::set<std::string> done;
  for (const auto& w : grant.workers) {
    if (!done.insert(w.node).second) continue;
    if (const runtime::ActorRef* agent = nodes_->AgentOf(w.node)) agent->Send(make(w.node));
  }
}

LeaseGrant LeaseRegistry::GrantOf(uint64_t id, const sched::Grant& g) const {
  LeaseGrant out;
  out.lease_id = id;
  out.tenant = g.request.tenant;
  out.waited_ms = std::chrono::duration_cast<std::chrono::milliseconds>(g.waited).count();
  const auto& snap = scheduler_.snapshot();
  for (const auto& a : g.assignments) {
    LeaseWorker w;
    const auto& node = snap.nodes()[a.node];
    w.node = node.name;
    if (const NodeRecord* rec = nodes_->FindNode(node.name)) w.node_id = rec->node_id;
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

void LeaseRegistry::ReportCounts() const {
  if (!on_counts_) return;
  LeaseCounts counts;
  counts.slices_leased = scheduler_.snapshot().slices_taken();
  counts.granted = scheduler_.granted().size();
  counts.pending = leases_.size() - scheduler_.granted().size();
  on_counts_(counts);
}

Status LeaseRegistry::RefusalOfStore(uint64_t id, const Status& stored) const {
  // A full disk often surfaces as a short write (LMDB: EIO), so the free space is looked at
  // too: the operator is told which of the two to fix.
  std::error_code ec;
  const auto space = std::filesystem::space(config_.head.data_dir, ec);
  const bool full = stored.code() == StatusCode::kResourceExhausted || (!ec && space.available < (1u << 20));
  std::string where = config_.head.data_dir;
  if (!ec) where += ", " + std::to_string(space.available) + " bytes free";
  return Status(full ? StatusCode::kResourceExhausted : StatusCode::kInternal,
                "the head could not store lease " + std::to_string(id) + " in head.data_dir (" + where +
                    "): " + stored.message() + "; it was not granted (a restarted head would not know it): " +
                    (full ? "free space in head.data_dir and ask again"
                          : "check head.data_dir (free space, permissions, disk errors) and ask again"));
}

void LeaseRegistry::RunScheduler() {
  for (auto& g : scheduler_.Schedule(clock_->Now())) {
    auto it = leases_.find(g.request.id);
    if (it == leases_.end()) continue;
    Entry& entry = it->second;
    LeaseGrant grant_to_store = GrantOf(g.request.id, g);
    // Stored before anyone hears of it: a head restarted from here on takes it back. A lease
    // the head could not store is not granted: a restarted head would not know it and would
    // hand its slices out again while its holder still runs.
    Status stored = StoreLease(entry.request, grant_to_store);
    if (!stored.ok()) {
      const uint64_t id = g.request.id;
      Status refused = RefusalOfStore(id, stored);
      spdlog::error("head: {}", refused.message());
      scheduler_.Release(id);
      entry.reply(refused);
      ForgetKey(entry.request.key, id);
      leases_.erase(it);
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
    entry.reply(entry.grant);
  }
  ReportCounts();
}

void LeaseRegistry::LoseLeasesOn(const std::string& name, std::string why) {
  if (why.empty()) why = "node '" + name + "' was lost";
  if (auto index = scheduler_.snapshot().FindNode(name)) {
    for (const auto& lost : scheduler_.LoseNode(*index)) {
      auto entry = leases_.find(lost.request.id);
      if (entry == leases_.end()) continue;
      spdlog::warn("head: lease {} lost with node '{}'", lost.request.id, name);
      const uint64_t id = lost.request.id;
      ToAgents<ReleaseSlices>(entry->second.grant, [id](const std::string&) { return ReleaseSlices{id}; });
      entry->second.request.owner.Send(LeaseEnded{id, why});
      ForgetLease(id);
      ForgetKey(entry->second.request.key, id);
      leases_.erase(entry);
    }
  }
  // Leases taken back only in part, waiting for this node's report, and leases of an earlier
  // head not reported yet: their part here is gone. (A node the head knows only from its
  // store is in no scheduler snapshot's grants, so only these can hold it.)
  std::vector<uint64_t> partial;
  for (const auto& [id, entry] : leases_) {
    if (entry.awaiting.count(name) != 0) partial.push_back(id);
  }
  for (uint64_t id : partial) EndLease(id, UnavailableError(why), /*tell_owner=*/true);
  DropRecovered([&](uint64_t, const LeaseGrant& grant) { return HasWorkerOn(grant, name); }, why);
}

std::set<std::string> LeaseRegistry::NodesUnheardOf() const {
  auto unheard = [&](const std::string& node) {
    const NodeRecord* known = nodes_->FindNode(node);
    return known == nullptr || known->state == "dead";
  };
  std::set<std::string> gone;
  for (const auto& [id, entry] : leases_) {
    for (const auto& node : entry.awaiting) {
      if (unheard(node)) gone.insert(node);
    }
  }
  for (const auto& [id, lease] : recovered_) {
    for (const auto& w : lease.second.workers) {
      if (unheard(w.node)) gone.insert(w.node);
    }
  }
  return gone;
}

void LeaseRegistry::DropRecovered(const std::function<bool(uint64_t, const LeaseGrant&)>& pred,
                                  const std::string& why) {
  for (auto it = recovered_.begin(); it != recovered_.end();) {
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
    it = recovered_.erase(it);
  }
}

bool LeaseRegistry::AdoptRecovered(uint64_t id, const runtime::ActorRef& owner) {
  auto rec = recovered_.find(id);
  if (rec == recovered_.end()) return false;
  rec->second.first.owner = owner;
  return true;
}

void LeaseRegistry::TakeBack(const std::string& node, const std::vector<AssignSlices>& held,
                             const runtime::ActorRef& agent) {
  std::set<uint64_t> reported;
  for (const auto& h : held) {
    const uint64_t id = h.lease_id;
    reported.insert(id);
    auto known = leases_.find(id);
    if (known != leases_.end() && known->second.granted && known->second.awaiting.count(node) == 0) {
      continue;  // counted already (the node lost the head for a while, not the head its state)
    }
    Entry* entry = nullptr;
    if (known != leases_.end() && known->second.granted) {
      entry = &known->second;
    } else if (auto rec = recovered_.find(id); rec != recovered_.end()) {
      Entry back;
      back.request = std::move(rec->second.first);
      back.grant = std::move(rec->second.second);
      back.granted = true;
      for (const auto& w : back.grant.workers) back.awaiting.insert(w.node);
      recovered_.erase(rec);
      entry = &leases_.emplace(id, std::move(back)).first->second;
      if (entry->request.owner.valid()) {
        entry->owner = entry->request.owner.handle().address();
        watch_owner_(entry->request.owner);
      }
      spdlog::info("head: lease {} of tenant '{}' taken back from the earlier head (owner {})", id, entry->grant.tenant,
                   entry->request.owner.ToString());
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
                                     : scheduler_.Adopt(*request, *part);
    if (adopted.ok() && !entry->request.owner.valid()) adopted = NotFoundError("its owner is unknown");
    if (!adopted.ok()) {
      spdlog::error("head: cannot take back lease {} on node '{}': {}", id, node, adopted.ToString());
      EndLease(id, adopted, /*tell_owner=*/true);
    }
  }
  std::vector<uint64_t> gone;
  for (const auto& [id, entry] : leases_) {
    if (entry.awaiting.count(node) != 0 && reported.count(id) == 0) gone.push_back(id);
  }
  for (uint64_t id : gone) EndLease(id, UnavailableError("node '" + node + "' no longer holds it"), /*tell_owner=*/true);
  DropRecovered([&](uint64_t id, const LeaseGrant& grant) { return reported.count(id) == 0 && HasWorkerOn(grant, node); },
                "node '" + node + "' no longer holds it");
  ReportCounts();
}

void LeaseRegistry::ForgetKey(const std::string& key, uint64_t id) {
  if (auto k = by_key_.find(key); !key.empty() && k != by_key_.end() && k->second == id) by_key_.erase(k);
}

// What the registry does when a write fails (head.data_dir full, LMDB failing):
// - a granted lease (StoreLease): not acknowledged. The request fails with the reason and the
//   slices return (RunScheduler): a restarted head would not know the lease, and would hand its
//   slices out again while its holder still runs.
// - a lease's end (ForgetLease): acknowledged, kept in unforgotten_ and removed again before
//   every later write. A restarted head ends a stored lease that no node reports.
Status LeaseRegistry::StoreLease(const LeaseRequest& request, const LeaseGrant& grant) {
  return store_->Write(
      [&](storage::Txn& txn) { return table_.Put(txn, grant.lease_id, EncodeStoredLease(request, grant, *refs_)); });
}

Status LeaseRegistry::DeleteLease(storage::Txn& txn, uint64_t id) {
  Status s = table_.Delete(txn, id);
  return s.code() == StatusCode::kNotFound ? OkStatus() : s;
}

void LeaseRegistry::ForgetLease(uint64_t id) {
  Status s = store_->Write([&](storage::Txn& txn) { return DeleteLease(txn, id); });
  if (s.ok()) return;
  spdlog::error("head: cannot remove ended lease {} from {}: {}; it is removed at a later write (until then a "
                "restarted head ends it when no node reports it)",
                id, config_.head.data_dir, s.ToString());
  unforgotten_.insert(id);
}

void LeaseRegistry::RetryUnforgotten() {
  for (auto it = unforgotten_.begin(); it != unforgotten_.end();) {
    if (store_->Commit([&](storage::Txn& txn) { return DeleteLease(txn, *it); }).ok()) {
      spdlog::info("head: lease {} removed from the store now (an earlier write had failed)", *it);
      it = unforgotten_.erase(it);
    } else {
      ++it;
    }
  }
}

StatusOr<std::vector<sched::Assignment>> LeaseRegistry::PartOn(const std::string& node,
                                                               const std::vector<LeaseWorker>& workers) {
  const auto& snap = scheduler_.snapshot();
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

// Ends a lease (granted or waiting) and returns its slices. The owner of a granted lease is told
// (LeaseEnded) when `tell_owner`: the lease ended without it asking and while it lives.
void LeaseRegistry::EndLease(uint64_t id, const Status& why, bool tell_owner) {
  auto it = leases_.find(id);
  if (it == leases_.end()) return;
  scheduler_.Release(id);
  if (it->second.granted) {
    ToAgents<ReleaseSlices>(it->second.grant, [id](const std::string&) { return ReleaseSlices{id}; });
    if (tell_owner) it->second.request.owner.Send(LeaseEnded{id, why.ToString()});
    ForgetLease(id);
    spdlog::info("head: lease {} ended: {}", id, why.ToString());
  } else {
    it->second.reply(why);
  }
  ForgetKey(it->second.request.key, id);
  leases_.erase(it);
  RunScheduler();
}

}  // namespace troupe::cluster
