// The scheduler: where GPU-slice requests go. Pure logic over a cluster snapshot (no actors, no
// clocks of its own, no I/O), so that it can be tested exhaustively; the head's controller owns
// one and feeds it nodes, load reports, requests, releases and the time.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/status.h"

namespace troupe::cluster::sched {

/// A GPU is cut into `slices_total` equal slices; each slice is `slice_memory_bytes` of its
/// memory and 1/slices_total of its compute. A worker takes one or more slices of one GPU.
struct GpuState {
  std::string id;             ///< UUID (real GPUs) or the configured name (simulated ones)
  uint32_t node = 0;          ///< index into Snapshot::nodes()
  uint32_t index = 0;         ///< the GPU's index on its node (CUDA_VISIBLE_DEVICES)
  uint32_t slices_total = 1;
  uint32_t slices_free = 1;
  uint64_t slice_memory_bytes = 0;
  uint64_t memory_total_bytes = 0;
  double utilisation = 0;        ///< 0..1, as last reported by the node
  uint64_t memory_used_bytes = 0;  ///< as last reported (includes memory troupe did not hand out)
  bool simulated = false;
};

struct NodeState {
  std::string name;
  uint32_t cpus_total = 0;
  uint32_t cpus_free = 0;
  uint64_t memory_total_bytes = 0;
  uint64_t memory_free_bytes = 0;
  bool schedulable = true;  ///< false once the node is lost; its GPUs take nothing new
  std::vector<uint32_t> gpus;  ///< indices into Snapshot::gpus()
};

enum class Priority { kUrgent = 0, kNormal = 1 };
enum class Policy {
  kPack,          ///< fewest nodes and GPUs: best fit, a gang's workers together
  kSpread,        ///< least loaded GPUs, a gang's workers on different nodes where possible
  kStrictSpread,  ///< every worker of the request on a different node, or none placed
};

/// What one request asks for: `count` workers, each with this much.
struct Request {
  uint64_t id = 0;
  std::string tenant = "default";
  uint32_t count = 1;
  uint64_t slice_memory_bytes = 0;  ///< per worker, at least (0 with compute 0: no GPU)
  uint32_t compute_percent = 0;     ///< per worker, at least, of one GPU (0..100)
  uint32_t cpus = 0;                ///< per worker
  uint64_t host_memory_bytes = 0;   ///< per worker
  Priority priority = Priority::kNormal;
  Policy policy = Policy::kSpread;
  bool gang = false;  ///< all workers placed at once or none; else each as soon as it fits
};

constexpr uint32_t kNoGpu = UINT32_MAX;

/// Where one worker of a request went.
struct Assignment {
  uint32_t node = 0;
  uint32_t gpu = kNoGpu;  ///< index into Snapshot::gpus(), or kNoGpu for a CPU-only worker
  uint32_t slices = 0;
  uint32_t cpus = 0;
  uint64_t host_memory_bytes = 0;
};

/// The cluster's capacity and what is taken of it, with an index that makes a placement
/// decision cost O(slices per GPU) instead of O(GPUs) in the common case.
class Snapshot {
 public:
  /// Adds a node with its GPUs (each GpuState's `node` is set here). Returns its index.
  uint32_t AddNode(NodeState node, std::vector<GpuState> gpus);
  /// The node takes nothing new (its assignments are released by whoever holds them).
  void SetSchedulable(uint32_t node, bool schedulable);
  void ReportLoad(uint32_t gpu, double utilisation, uint64_t memory_used_bytes);

  const std::vector<NodeState>& nodes() const { return nodes_; }
  const std::vector<GpuState>& gpus() const { return gpus_; }
  std::optional<uint32_t> FindNode(const std::string& name) const;
  /// Slices handed out now, over every GPU (kept up to date by Take and Give).
  uint64_t slices_taken() const { return slices_taken_; }

  /// Slices a worker of `r` needs on `gpu`, or 0 if it can never fit there.
  static uint32_t SlicesNeeded(const GpuState& gpu, const Request& r);
  /// The load the scheduler ranks GPUs by (0 idle .. 1 full): reported utilisation and the
  /// larger of reported and handed-out memory.
  static double Load(const GpuState& gpu);

  /// Takes / returns what an assignment holds. Take CHECKs that it fits (callers decide first).
  void Take(const Assignment& a);
  void Give(const Assignment& a);

  /// Could a worker of `r` fit an empty cluster of these nodes? (For refusing at once.)
  bool EverFits(const Request& r) const;
  /// The same nodes and GPUs with nothing taken and no load reported: what an empty cluster of
  /// them could hold. O(nodes + GPUs).
  Snapshot Emptied() const;
  /// Changes whenever a node is added or stops (or starts again) taking work.
  uint64_t topology_version() const { return topology_version_; }

 private:
  friend std::optional<std::vector<Assignment>> Place(Snapshot&, const Request&, uint32_t,
                                                      const std::vector<Assignment>&);
  using Bucket = std::set<std::pair<double, uint32_t>>;  // (load, gpu)
  struct Shape {
    uint32_t slices_total;
    uint64_t slice_memory_bytes;
    std::vector<Bucket> by_free;  // by_free[k]: schedulable GPUs of this shape with k slices free
  };
  void Unindex(uint32_t gpu);
  void Index(uint32_t gpu);

  std::vector<NodeState> nodes_;
  std::vector<GpuState> gpus_;
  std::vector<uint32_t> shape_of_;  // per GPU
  std::vector<double> indexed_load_;  // per GPU: the key it is filed under
  std::vector<Shape> shapes_;
  std::unordered_map<std::string, uint32_t> node_by_name_;
  uint64_t slices_taken_ = 0;
  uint64_t topology_version_ = 0;
};

/// Places `workers` workers of `r` (r.count when 0) on `snapshot` and takes their resources; or,
/// if they do not all fit, leaves the snapshot as it was and returns nothing. `already` are the
/// request's workers placed earlier (for spread and pack). Depends on nothing but its
/// arguments. Never oversubscribes a GPU, a node's CPUs or its memory.
std::optional<std::vector<Assignment>> Place(Snapshot& snapshot, const Request& r, uint32_t workers = 0,
                                             const std::vector<Assignment>& already = {});

/// Per-tenant caps on the GPU memory a tenant's granted and partly placed requests asked for
/// (workers x requested slice memory). A tenant with no entry is not capped.
using Quotas = std::map<std::string, uint64_t>;

using Time = std::chrono::steady_clock::time_point;

/// A request granted in full.
struct Grant {
  Request request;
  std::vector<Assignment> assignments;
  std::chrono::nanoseconds waited{0};
};

/// A request still waiting.
struct PendingInfo {
  Request request;
  uint32_t placed = 0;  ///< workers already placed (non-gang requests place as they fit)
  std::chrono::nanoseconds waited{0};
  std::string reason;   ///< why it waits: capacity, quota, or urgent requests ahead
};

/// The queue and the leases: requests wait in arrival order per priority and are retried when
/// capacity frees. Rules, checked by the property tests:
///  - nothing is ever oversubscribed (Place);
///  - a gang request holds nothing until all its workers are placed;
///  - urgent first: no normal request gets anything in a round that ends with an urgent request
///    waiting for capacity (urgent requests held back only by their own tenant's quota do not
///    block others);
///  - a tenant never holds more GPU memory than its quota;
///  - within a priority, a later request may be placed before an earlier one that does not fit
///    (backfill), so a small request is not stuck behind a large one; but not once the earlier
///    one has waited for capacity for the backfill limit: then the requests of its priority
///    behind it wait too (reason "waiting behind request N"), so freed capacity goes to it and
///    a big gang cannot starve under a stream of small requests;
///  - a request held back (behind urgent ones, or behind one past the backfill limit) gives back
///    the workers it had placed in part: the request it waits for may need exactly those, and
///    would otherwise wait for it in turn, for ever;
///  - a request that the live nodes could not hold even empty (nodes it needed were lost after it
///    was submitted) holds nobody back, urgent or past the backfill limit: it waits (reason "larger
///    than the live nodes can hold") for the cluster to grow, while the rest are placed.
class Scheduler {
 public:
  explicit Scheduler(Snapshot snapshot = {}, Quotas quotas = {});

  Snapshot& snapshot() { return snapshot_; }
  const Snapshot& snapshot() const { return snapshot_; }
  const Quotas& quotas() const { return quotas_; }
  void SetQuota(const std::string& tenant, uint64_t gpu_memory_bytes) { quotas_[tenant] = gpu_memory_bytes; }
  /// How long a request may wait for capacity while later ones overtake it (default 60 s).
  void SetBackfillLimit(std::chrono::nanoseconds limit) { backfill_limit_ = limit; }
  std::chrono::nanoseconds backfill_limit() const { return backfill_limit_; }
  /// How many requests may wait at once (default kMaxWaiting); Submit refuses more with
  /// ResourceExhausted. Each waiting request costs the head a queue entry and a response promise.
  void SetMaxWaiting(size_t n) { max_waiting_ = n; }
  static constexpr size_t kMaxWaiting = 10000;

  /// Queues a request (id must be new). InvalidArgument for a malformed request;
  /// ResourceExhausted for one that could never fit the cluster or its tenant's quota.
  Status Submit(const Request& r, Time now);
  /// Places what fits, urgent requests first. Returns the requests granted in full this round.
  std::vector<Grant> Schedule(Time now);
  /// Ends a grant or a waiting request (and what it holds). False if the id is unknown.
  bool Release(uint64_t id);
  /// Marks a node lost: it takes nothing new, and every grant with a worker on it is ended and
  /// returned (its owner must be told). Waiting requests lose their workers placed there.
  std::vector<Grant> LoseNode(uint32_t node);
  /// Takes back a lease granted before (by an earlier head: the nodes still hold it) with the
  /// part of it that `part` describes; a lease spread over several nodes is adopted node by node
  /// as they report it. Quotas are not checked again. FailedPrecondition, taking nothing, if the
  /// part does not fit what is free (it would oversubscribe) or the id is waiting in the queue.
  Status Adopt(const Request& r, const std::vector<Assignment>& part);

  std::vector<PendingInfo> Pending(Time now) const;
  const std::map<uint64_t, Grant>& granted() const { return granted_; }
  /// GPU memory the tenant's requests hold, as counted against its quota.
  uint64_t TenantHeld(const std::string& tenant) const;
  /// GPU memory the assignments occupy (whole slices).
  uint64_t MemoryOf(const std::vector<Assignment>& assignments) const;

 private:
  struct Waiting {
    Request request;
    Time since;
    std::vector<Assignment> placed;
    std::string reason;
    // Whether the whole request fits the live nodes when they are empty, as of topology version
    // `fits_version` (recomputed only when nodes come or go).
    uint64_t fits_version = UINT64_MAX;
    bool fits_empty = true;
  };
  // Tries to place what `w` still needs; true if it is now complete.
  bool TryPlace(Waiting& w);
  // Returns what `w` holds in part to the snapshot (and its tenant's quota); false if it held nothing.
  bool GiveBackPart(Waiting& w);
  // Could `w` be granted at all by the live nodes, were they empty?
  bool CanEverBeGranted(Waiting& w);

  Snapshot snapshot_;
  Quotas quotas_;
  std::deque<Waiting> queues_[2];  // by Priority
  std::map<uint64_t, Grant> granted_;
  std::map<std::string, uint64_t> held_;  // GPU memory by tenant (granted + partly placed)
  std::chrono::nanoseconds backfill_limit_ = std::chrono::seconds(60);
  size_t max_waiting_ = kMaxWaiting;
};

std::string_view PolicyName(Policy p);
std::string_view PriorityName(Priority p);
StatusOr<Policy> ParsePolicy(std::string_view text);
StatusOr<Priority> ParsePriority(std::string_view text);

}  // namespace troupe::cluster::sched
