// The scheduler's placement logic and queue.
#include "cluster/scheduler.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <tuple>

namespace troupe::cluster::sched {

namespace {

// A broken invariant of the caller (not bad input): crash loudly.
void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "scheduler invariant broken: %s\n", what);
    std::abort();
  }
}

bool NeedsGpu(const Request& r) { return r.slice_memory_bytes > 0 || r.compute_percent > 0; }

bool NodeFits(const NodeState& n, const Request& r) {
  return n.schedulable && n.cpus_free >= r.cpus && n.memory_free_bytes >= r.host_memory_bytes;
}

bool Contains(const std::vector<uint32_t>& v, uint32_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

}  // namespace

std::string_view PolicyName(Policy p) {
  switch (p) {
    case Policy::kPack: return "pack";
    case Policy::kSpread: return "spread";
    case Policy::kStrictSpread: return "strict_spread";
  }
  return "?";
}
std::string_view PriorityName(Priority p) { return p == Priority::kUrgent ? "urgent" : "normal"; }

StatusOr<Policy> ParsePolicy(std::string_view text) {
  if (text == "pack") return Policy::kPack;
  if (text == "spread") return Policy::kSpread;
  if (text == "strict_spread" || text == "strict-spread") return Policy::kStrictSpread;
  return InvalidArgumentError("placement policy '" + std::string(text) + "': expected pack, spread or strict_spread");
}
StatusOr<Priority> ParsePriority(std::string_view text) {
  if (text == "urgent") return Priority::kUrgent;
  if (text == "normal") return Priority::kNormal;
  return InvalidArgumentError("priority '" + std::string(text) + "': expected urgent or normal");
}

// ---- Snapshot ----

uint32_t Snapshot::AddNode(NodeState node, std::vector<GpuState> gpus) {
  const auto index = static_cast<uint32_t>(nodes_.size());
  node.gpus.clear();
  for (auto& gpu : gpus) {
    Check(gpu.slices_total >= 1 && gpu.slices_free <= gpu.slices_total, "GPU slice counts");
    gpu.node = index;
    const auto g = static_cast<uint32_t>(gpus_.size());
    node.gpus.push_back(g);
    uint32_t shape = 0;
    while (shape < shapes_.size() && (shapes_[shape].slices_total != gpu.slices_total ||
                                      shapes_[shape].slice_memory_bytes != gpu.slice_memory_bytes)) {
      ++shape;
    }
    if (shape == shapes_.size()) {
      shapes_.push_back(Shape{gpu.slices_total, gpu.slice_memory_bytes, std::vector<Bucket>(gpu.slices_total + 1)});
    }
    slices_taken_ += gpu.slices_total - gpu.slices_free;
    gpus_.push_back(std::move(gpu));
    shape_of_.push_back(shape);
    indexed_load_.push_back(-1);
  }
  node_by_name_[node.name] = index;
  nodes_.push_back(std::move(node));
  ++topology_version_;
  for (uint32_t g : nodes_.back().gpus) Index(g);
  return index;
}

std::optional<uint32_t> Snapshot::FindNode(const std::string& name) const {
  auto it = node_by_name_.find(name);
  if (it == node_by_name_.end()) return std::nullopt;
  return it->second;
}

Snapshot Snapshot::Emptied() const {
  Snapshot out;
  for (const auto& node : nodes_) {
    NodeState n = node;
    n.cpus_free = n.cpus_total;
    n.memory_free_bytes = n.memory_total_bytes;
    std::vector<GpuState> gpus;
    for (uint32_t g : node.gpus) {
      GpuState gpu = gpus_[g];
      gpu.slices_free = gpu.slices_total;
      gpu.utilisation = 0;
      gpu.memory_used_bytes = 0;
      gpus.push_back(std::move(gpu));
    }
    n.schedulable = true;
    const uint32_t index = out.AddNode(std::move(n), std::move(gpus));
    if (!node.schedulable) out.SetSchedulable(index, false);
  }
  return out;
}

void Snapshot::SetSchedulable(uint32_t node, bool schedulable) {
  auto& n = nodes_.at(node);
  if (n.schedulable == schedulable) return;
  ++topology_version_;
  for (uint32_t g : n.gpus) Unindex(g);
  n.schedulable = schedulable;
  for (uint32_t g : n.gpus) Index(g);
}

void Snapshot::ReportLoad(uint32_t gpu, double utilisation, uint64_t memory_used_bytes) {
  Unindex(gpu);
  gpus_.at(gpu).utilisation = std::clamp(utilisation, 0.0, 1.0);
  gpus_[gpu].memory_used_bytes = memory_used_bytes;
  Index(gpu);
}

void Snapshot::Unindex(uint32_t g) {
  if (indexed_load_[g] < 0) return;
  shapes_[shape_of_[g]].by_free[gpus_[g].slices_free].erase({indexed_load_[g], g});
  indexed_load_[g] = -1;
}

void Snapshot::Index(uint32_t g) {
  const GpuState& gpu = gpus_[g];
  if (!nodes_[gpu.node].schedulable || gpu.slices_free == 0) return;
  indexed_load_[g] = Load(gpu);
  shapes_[shape_of_[g]].by_free[gpu.slices_free].insert({indexed_load_[g], g});
}

uint32_t Snapshot::SlicesNeeded(const GpuState& gpu, const Request& r) {
  if (!NeedsGpu(r)) return 0;
  uint64_t by_memory = 0;
  if (r.slice_memory_bytes > 0) {
    if (gpu.slice_memory_bytes == 0) return 0;
    by_memory = (r.slice_memory_bytes + gpu.slice_memory_bytes - 1) / gpu.slice_memory_bytes;
  }
  const uint64_t by_compute = (uint64_t{r.compute_percent} * gpu.slices_total + 99) / 100;
  const uint64_t n = std::max<uint64_t>({by_memory, by_compute, 1});
  return n > gpu.slices_total ? 0 : static_cast<uint32_t>(n);
}

double Snapshot::Load(const GpuState& gpu) {
  const double handed_out = 1.0 - static_cast<double>(gpu.slices_free) / gpu.slices_total;
  const double used = gpu.memory_total_bytes == 0
                          ? 0.0
                          : static_cast<double>(gpu.memory_used_bytes) / static_cast<double>(gpu.memory_total_bytes);
  return 0.5 * gpu.utilisation + 0.5 * std::min(1.0, std::max(handed_out, used));
}

void Snapshot::Take(const Assignment& a) {
  NodeState& n = nodes_.at(a.node);
  Check(n.cpus_free >= a.cpus && n.memory_free_bytes >= a.host_memory_bytes, "node oversubscribed");
  n.cpus_free -= a.cpus;
  n.memory_free_bytes -= a.host_memory_bytes;
  if (a.gpu == kNoGpu) return;
  Check(gpus_.at(a.gpu).node == a.node && gpus_[a.gpu].slices_free >= a.slices, "GPU oversubscribed");
  Unindex(a.gpu);
  gpus_[a.gpu].slices_free -= a.slices;
  slices_taken_ += a.slices;
  Index(a.gpu);
}

void Snapshot::Give(const Assignment& a) {
  NodeState& n = nodes_.at(a.node);
  n.cpus_free += a.cpus;
  n.memory_free_bytes += a.host_memory_bytes;
  Check(n.cpus_free <= n.cpus_total && n.memory_free_bytes <= n.memory_total_bytes, "node over-returned");
  if (a.gpu == kNoGpu) return;
  Unindex(a.gpu);
  gpus_.at(a.gpu).slices_free += a.slices;
  slices_taken_ -= a.slices;
  Check(gpus_[a.gpu].slices_free <= gpus_[a.gpu].slices_total, "GPU over-returned");
  Index(a.gpu);
}

bool Snapshot::EverFits(const Request& r) const {
  for (const auto& n : nodes_) {
    if (!n.schedulable || n.cpus_total < r.cpus || n.memory_total_bytes < r.host_memory_bytes) continue;
    if (!NeedsGpu(r)) return true;
    for (uint32_t g : n.gpus) {
      if (SlicesNeeded(gpus_[g], r) > 0) return true;
    }
  }
  return false;
}

// ---- Place ----

namespace {

// The best GPU for one more worker, or kNoGpu.
struct Candidate {
  uint32_t gpu = kNoGpu;
  std::tuple<uint32_t, double, uint64_t, uint32_t> key{UINT32_MAX, 2.0, UINT64_MAX, UINT32_MAX};  // lower is better
};

}  // namespace

std::optional<std::vector<Assignment>> Place(Snapshot& s, const Request& r, uint32_t workers,
                                             const std::vector<Assignment>& already) {
  if (workers == 0) workers = r.count;
  std::vector<uint32_t> used;  // nodes this request's workers are on
  for (const auto& a : already) used.push_back(a.node);
  std::vector<Assignment> out;
  out.reserve(workers);
  auto undo = [&]() -> std::optional<std::vector<Assignment>> {
    for (auto it = out.rbegin(); it != out.rend(); ++it) s.Give(*it);
    return std::nullopt;
  };
  const bool strict = r.policy == Policy::kStrictSpread;
  for (uint32_t w = 0; w < workers; ++w) {
    Assignment a;
    a.cpus = r.cpus;
    a.host_memory_bytes = r.host_memory_bytes;
    if (!NeedsGpu(r)) {
      // CPU-only worker: pack takes the node with the fewest free CPUs that fit, spread the most.
      uint32_t best = UINT32_MAX;
      std::tuple<int, int64_t, uint32_t> best_key{2, 0, 0};
      for (uint32_t n = 0; n < s.nodes_.size(); ++n) {
        const NodeState& node = s.nodes_[n];
        if (!NodeFits(node, r)) continue;
        const bool on_used = Contains(used, n);
        if (strict && on_used) continue;
        const int64_t free = node.cpus_free;
        std::tuple<int, int64_t, uint32_t> key = r.policy == Policy::kPack
                                                     ? std::make_tuple(on_used ? 0 : 1, free, n)
                                                     : std::make_tuple(on_used ? 1 : 0, -free, n);
        if (key < best_key) best_key = key, best = n;
      }
      if (best == UINT32_MAX) return undo();
      a.node = best;
    } else {
      Candidate best;
      auto consider = [&](uint32_t g, uint32_t need, uint32_t tier) {
        const GpuState& gpu = s.gpus_[g];
        const double load = Snapshot::Load(gpu);
        // Memory handed out beyond what was asked (slice rounding): the tie-breaker.
        const uint64_t waste = uint64_t{need} * gpu.slice_memory_bytes - std::min<uint64_t>(
                                                                              r.slice_memory_bytes,
                                                                              uint64_t{need} * gpu.slice_memory_bytes);
        // Pack: best fit (fewest slices left over) first; spread: least loaded first.
        std::tuple<uint32_t, double, uint64_t, uint32_t> key =
            r.policy == Policy::kPack ? std::make_tuple(tier * 1000000 + (gpu.slices_free - need), load, waste, g)
                                      : std::make_tuple(tier, load, waste, g);
        if (key < best.key) best.key = key, best.gpu = g;
      };
      if (r.policy == Policy::kPack) {
        // GPUs on nodes the request already uses come first (tier 0).
        for (uint32_t n : used) {
          if (!NodeFits(s.nodes_[n], r)) continue;
          for (uint32_t g : s.nodes_[n].gpus) {
            const uint32_t need = Snapshot::SlicesNeeded(s.gpus_[g], r);
            if (need > 0 && s.gpus_[g].slices_free >= need) consider(g, need, 0);
          }
        }
      }
      if (best.gpu == kNoGpu) {
        // Spread tries nodes the request does not use yet first (tier 0), then (non-strict) any.
        for (uint32_t pass = 0; pass < 2 && best.gpu == kNoGpu; ++pass) {
          const bool avoid_used = r.policy != Policy::kPack && pass == 0 && !used.empty();
          if (pass == 1 && (strict || r.policy == Policy::kPack || used.empty())) break;
          for (const auto& shape : s.shapes_) {
            GpuState probe;
            probe.slices_total = shape.slices_total;
            probe.slice_memory_bytes = shape.slice_memory_bytes;
            const uint32_t need = Snapshot::SlicesNeeded(probe, r);
            if (need == 0) continue;
            for (uint32_t k = need; k <= shape.slices_total; ++k) {
              bool found = false;
              for (const auto& [load, g] : shape.by_free[k]) {
                const uint32_t n = s.gpus_[g].node;
                if (!NodeFits(s.nodes_[n], r)) continue;
                if ((avoid_used || strict) && Contains(used, n)) continue;
                consider(g, need, 1);
                found = true;
                break;
              }
              // Best fit: the first bucket with a fitting GPU is the one pack wants.
              if (found && r.policy == Policy::kPack) break;
            }
          }
        }
      }
      if (best.gpu == kNoGpu) return undo();
      a.node = s.gpus_[best.gpu].node;
      a.gpu = best.gpu;
      a.slices = Snapshot::SlicesNeeded(s.gpus_[best.gpu], r);
    }
    s.Take(a);
    out.push_back(a);
    used.push_back(a.node);
  }
  return out;
}

// ---- Scheduler ----

Scheduler::Scheduler(Snapshot snapshot, Quotas quotas) : snapshot_(std::move(snapshot)), quotas_(std::move(quotas)) {}

uint64_t Scheduler::MemoryOf(const std::vector<Assignment>& assignments) const {
  uint64_t bytes = 0;
  for (const auto& a : assignments) {
    if (a.gpu != kNoGpu) bytes += uint64_t{a.slices} * snapshot_.gpus()[a.gpu].slice_memory_bytes;
  }
  return bytes;
}

uint64_t Scheduler::TenantHeld(const std::string& tenant) const {
  auto it = held_.find(tenant);
  return it == held_.end() ? 0 : it->second;
}

Status Scheduler::Submit(const Request& r, Time now) {
  if (r.count == 0 || r.count > 100000) {
    return InvalidArgumentError("request " + std::to_string(r.id) + ": count must be 1..100000, not " +
                                std::to_string(r.count));
  }
  if (r.compute_percent > 100) {
    return InvalidArgumentError("request " + std::to_string(r.id) + ": compute share must be 0..100%, not " +
                                std::to_string(r.compute_percent));
  }
  if (r.tenant.empty()) return InvalidArgumentError("request " + std::to_string(r.id) + ": empty tenant");
  if (queues_[0].size() + queues_[1].size() >= max_waiting_) {
    return ResourceExhaustedError(std::to_string(max_waiting_) +
                                  " requests are already waiting; ask again once some are placed or withdrawn");
  }
  if (granted_.count(r.id)) return AlreadyExistsError("request " + std::to_string(r.id) + " exists");
  for (const auto& q : queues_) {
    for (const auto& w : q) {
      if (w.request.id == r.id) return AlreadyExistsError("request " + std::to_string(r.id) + " exists");
    }
  }
  if (!snapshot_.EverFits(r)) {
    return ResourceExhaustedError("request " + std::to_string(r.id) +
                                  ": no node of the cluster could ever hold one worker (" +
                                  std::to_string(r.slice_memory_bytes) + " bytes of GPU memory, " +
                                  std::to_string(r.compute_percent) + "% compute, " + std::to_string(r.cpus) +
                                  " CPUs, " + std::to_string(r.host_memory_bytes) + " bytes of memory)");
  }
  if (r.policy == Policy::kStrictSpread) {
    size_t schedulable = 0;
    for (const auto& n : snapshot_.nodes()) schedulable += n.schedulable ? 1 : 0;
    if (r.count > schedulable) {
      return ResourceExhaustedError("request " + std::to_string(r.id) + ": strict spread of " +
                                    std::to_string(r.count) + " workers needs as many nodes; the cluster has " +
                                    std::to_string(schedulable));
    }
  }
  if (auto q = quotas_.find(r.tenant); q != quotas_.end() && r.slice_memory_bytes * r.count > q->second) {
    return ResourceExhaustedError("request " + std::to_string(r.id) + ": " + std::to_string(r.count) + " x " +
                                  std::to_string(r.slice_memory_bytes) + " bytes exceeds tenant '" + r.tenant +
                                  "' quota of " + std::to_string(q->second) + " bytes");
  }
  queues_[static_cast<int>(r.priority)].push_back(Waiting{r, now, {}, "capacity"});
  return OkStatus();
}

bool Scheduler::TryPlace(Waiting& w) {
  const Request& r = w.request;
  const auto quota = quotas_.find(r.tenant);
  uint64_t& held = held_[r.tenant];
  auto over_quota = [&](uint64_t more) { return quota != quotas_.end() && held + more > quota->second; };
  // Quotas count the GPU memory requested (as Kubernetes' ResourceQuota counts requests), not
  // what slice rounding hands out, so a decision never depends on which GPU would be chosen.
  const uint32_t workers = r.gang ? r.count : 1;
  while (w.placed.size() < r.count) {
    if (over_quota(r.slice_memory_bytes * workers)) {
      w.reason = "quota";
      return false;
    }
    auto placed = Place(snapshot_, r, workers, w.placed);
    if (!placed) {
      w.reason = "capacity";
      return false;
    }
    held += r.slice_memory_bytes * workers;
    w.placed.insert(w.placed.end(), placed->begin(), placed->end());
  }
  return true;
}

bool Scheduler::GiveBackPart(Waiting& w) {
  if (w.placed.empty()) return false;
  for (const auto& a : w.placed) snapshot_.Give(a);
  held_[w.request.tenant] -= w.request.slice_memory_bytes * w.placed.size();
  w.placed.clear();
  return true;
}

bool Scheduler::CanEverBeGranted(Waiting& w) {
  if (w.fits_version != snapshot_.topology_version()) {
    Snapshot empty = snapshot_.Emptied();
    w.fits_empty = Place(empty, w.request, w.request.count).has_value();
    w.fits_version = snapshot_.topology_version();
  }
  return w.fits_empty;
}

std::vector<Grant> Scheduler::Schedule(Time now) {
  std::vector<Grant> grants;
  // A second pass when the first gave parts back: what waited ahead of them may fit now. The
  // second gives nothing back (what is held back already holds nothing), so two passes settle.
  for (int pass = 0; pass < 4; ++pass) {
    bool gave_back = false;
    bool urgent_waiting = false;
    for (int p = 0; p < 2; ++p) {
      auto& queue = queues_[p];
      std::string behind;  // set once a request of this priority is past the backfill limit, short of capacity
      for (auto it = queue.begin(); it != queue.end();) {
        // A request held back gives back what it holds in part: the request it waits for may need
        // exactly that, and would otherwise wait for ever for a request that waits for it.
        if ((p == 1 && urgent_waiting) || !behind.empty()) {
          it->reason = !behind.empty() ? behind : "urgent requests ahead";
          gave_back |= GiveBackPart(*it);
          ++it;
          continue;
        }
        if (it->fits_version == snapshot_.topology_version() && !it->fits_empty) {
          // Known not to fit the live nodes (below); tried again when nodes come or go.
          it->reason = "larger than the live nodes can hold";
          gave_back |= GiveBackPart(*it);
          ++it;
          continue;
        }
        if (TryPlace(*it)) {
          Grant g{it->request, std::move(it->placed), now - it->since};
          granted_[g.request.id] = g;
          grants.push_back(std::move(g));
          it = queue.erase(it);
          continue;
        }
        const bool would_hold_back =
            it->reason == "capacity" && ((p == 0 && !urgent_waiting) || now - it->since >= backfill_limit_);
        if (would_hold_back && !CanEverBeGranted(*it)) {
          // The live nodes could not hold it even empty (nodes it needed were lost since it was
          // submitted): it waits for the cluster to grow, but holds nobody back and nothing, or
          // everything behind it (or needing what it holds) would wait for ever.
          it->reason = "larger than the live nodes can hold";
          gave_back |= GiveBackPart(*it);
          ++it;
          continue;
        }
        if (p == 0 && it->reason != "quota") urgent_waiting = true;
        if (it->reason == "capacity" && now - it->since >= backfill_limit_) {
          behind = "waiting behind request " + std::to_string(it->request.id);
        }
        ++it;
      }
    }
    if (!gave_back) break;
  }
  return grants;
}

bool Scheduler::Release(uint64_t id) {
  auto give_all = [&](const Request& r, const std::vector<Assignment>& assignments) {
    for (const auto& a : assignments) snapshot_.Give(a);
    held_[r.tenant] -= r.slice_memory_bytes * assignments.size();
  };
  if (auto it = granted_.find(id); it != granted_.end()) {
    give_all(it->second.request, it->second.assignments);
    granted_.erase(it);
    return true;
  }
  for (auto& queue : queues_) {
    for (auto it = queue.begin(); it != queue.end(); ++it) {
      if (it->request.id != id) continue;
      GiveBackPart(*it);
      queue.erase(it);
      return true;
    }
  }
  return false;
}

std::vector<Grant> Scheduler::LoseNode(uint32_t node) {
  snapshot_.SetSchedulable(node, false);
  std::vector<Grant> lost;
  for (auto it = granted_.begin(); it != granted_.end();) {
    const auto& as = it->second.assignments;
    if (std::none_of(as.begin(), as.end(), [&](const Assignment& a) { return a.node == node; })) {
      ++it;
      continue;
    }
    for (const auto& a : as) snapshot_.Give(a);
    held_[it->second.request.tenant] -= it->second.request.slice_memory_bytes * as.size();
    lost.push_back(std::move(it->second));
    it = granted_.erase(it);
  }
  for (auto& queue : queues_) {
    for (auto& w : queue) {
      auto keep = std::stable_partition(w.placed.begin(), w.placed.end(),
                                        [&](const Assignment& a) { return a.node != node; });
      std::vector<Assignment> gone(keep, w.placed.end());
      for (const auto& a : gone) snapshot_.Give(a);
      held_[w.request.tenant] -= w.request.slice_memory_bytes * gone.size();
      w.placed.erase(keep, w.placed.end());
    }
  }
  return lost;
}

Status Scheduler::Adopt(const Request& r, const std::vector<Assignment>& part) {
  for (const auto& queue : queues_) {
    for (const auto& w : queue) {
      if (w.request.id == r.id) return FailedPreconditionError("lease " + std::to_string(r.id) + " is waiting, not granted");
    }
  }
  // Check the whole part before taking any of it: what a node reports must not oversubscribe.
  std::map<uint32_t, std::pair<uint64_t, uint64_t>> node_need;  // node -> (cpus, host memory)
  std::map<uint32_t, uint64_t> gpu_need;                        // gpu -> slices
  for (const auto& a : part) {
    if (a.node >= snapshot_.nodes().size()) return FailedPreconditionError("adopt: no node " + std::to_string(a.node));
    node_need[a.node].first += a.cpus;
    node_need[a.node].second += a.host_memory_bytes;
    if (a.gpu == kNoGpu) continue;
    if (a.gpu >= snapshot_.gpus().size() || snapshot_.gpus()[a.gpu].node != a.node) {
      return FailedPreconditionError("adopt: GPU " + std::to_string(a.gpu) + " is not on node " +
                                     snapshot_.nodes()[a.node].name);
    }
    gpu_need[a.gpu] += a.slices;
  }
  for (const auto& [node, need] : node_need) {
    const NodeState& n = snapshot_.nodes()[node];
    if (n.cpus_free < need.first || n.memory_free_bytes < need.second) {
      return FailedPreconditionError("adopt: lease " + std::to_string(r.id) + " needs more CPUs or memory than node " +
                                     n.name + " has free");
    }
  }
  for (const auto& [gpu, slices] : gpu_need) {
    const GpuState& g = snapshot_.gpus()[gpu];
    if (g.slices_free < slices) {
      return FailedPreconditionError("adopt: lease " + std::to_string(r.id) + " holds " + std::to_string(slices) +
                                     " slice(s) of GPU " + std::to_string(g.index) + " on node " +
                                     snapshot_.nodes()[g.node].name + ", which has " +
                                     std::to_string(g.slices_free) + " free");
    }
  }
  for (const auto& a : part) snapshot_.Take(a);
  auto it = granted_.try_emplace(r.id, Grant{r, {}, {}}).first;
  it->second.assignments.insert(it->second.assignments.end(), part.begin(), part.end());
  held_[it->second.request.tenant] += it->second.request.slice_memory_bytes * part.size();
  return OkStatus();
}

std::vector<PendingInfo> Scheduler::Pending(Time now) const {
  std::vector<PendingInfo> out;
  for (const auto& queue : queues_) {
    for (const auto& w : queue) {
      out.push_back(PendingInfo{w.request, static_cast<uint32_t>(w.placed.size()), now - w.since, w.reason});
    }
  }
  return out;
}

}  // namespace troupe::cluster::sched
