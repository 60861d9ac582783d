// LeaseRegistry: the slice leases the head grants (the scheduler, waiting and granted leases,
// leases of an earlier head taken back as their nodes rejoin) and the LMDB table `leases`.
#pragma once

#include <caf/actor_addr.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "cluster/config.h"
#include "cluster/head_store.h"
#include "cluster/membership.h"
#include "cluster/messages.h"
#include "cluster/scheduler.h"
#include "common/clock.h"
#include "runtime/codec.h"
#include "storage/table.h"

namespace troupe::cluster {

/// Answers a waiting lease request: its grant, or why it was not granted.
using LeaseReply = std::function<void(StatusOr<LeaseGrant>)>;

/// Counts of the registry's leases, for the head's metrics.
struct LeaseCounts {
  uint64_t slices_leased = 0;
  uint64_t granted = 0;
  uint64_t pending = 0;
};

/// The leases of GPU slices, CPUs and memory the head hands out, and the scheduler that places
/// them over the nodes membership knows.
///
/// Owned by the head's controller actor and used only on its mailbox: a node's loss and the end
/// of its leases happen in one message, so no request can be placed on a node in between.
/// Collaborators come in: the nodes and their agents (NodeDirectory), the owners' addresses in
/// stored leases (RefCodec), watching an owner (`watch_owner`: the head monitors it and calls
/// EndLeasesOwnedBy when it goes), the clock, and where lease counts go (`on_counts`).
///
/// A lease's states:
///
///     (Request) --> waiting --(placed and stored)--> granted --(Release, owner gone,
///                      |                                |       node lost)--> ended
///                      \--(owner gone, cannot be stored)--> ended (the requester is told)
///     (stored, head restarts) --> recovered --(each node rejoins with it)--> granted
///                                     \--(a node does not hold it, is dead, or never rejoins)--> ended
///
/// Durability: a lease is granted only once stored (table `leases`); one that cannot be stored
/// is refused (ResourceExhausted when head.data_dir is full). A lease's removal that fails is
/// acknowledged and retried before every later write (HeadStore).
class LeaseRegistry {
 public:
  LeaseRegistry(const ClusterConfig& config, HeadStore* store, storage::Table<uint64_t, std::string> table,
                const NodeDirectory* nodes, runtime::RefCodec* refs, const Clock* clock,
                std::function<void(const runtime::ActorRef& owner)> watch_owner,
                std::function<void(const LeaseCounts&)> on_counts);

  /// Loads the granted leases an earlier head stored; they come back as their nodes rejoin
  /// (TakeBack). Those that used a node known to be dead end at once.
  Status Recover();
  /// A lease of an earlier head, not taken back yet, gets a new owner (the new supervisor of
  /// the job that held it): it is watched instead of the earlier head's owner, which is gone.
  /// False if no such lease waits to be taken back.
  bool AdoptRecovered(uint64_t id, const runtime::ActorRef& owner);
  /// Whether lease `id` of an earlier head waits to be taken back (AdoptRecovered would take it).
  bool IsRecovered(uint64_t id) const { return recovered_.count(id) != 0; }
  /// Whether lease `id` is granted now (taken back from an earlier head included).
  bool IsGranted(uint64_t id) const {
    auto it = leases_.find(id);
    return it != leases_.end() && it->second.granted;
  }
  /// Whether leases of an earlier head wait for their nodes.
  bool HasRecovered() const { return !recovered_.empty(); }

  /// A lease request: the answer now (a grant, or an error), or nullopt when it waits, and then
  /// `open_reply()` (called at most once, before anything can be granted) made the LeaseReply
  /// that answers it. A request with a known key gets that lease, not a second one.
  std::optional<StatusOr<LeaseGrant>> Request(const LeaseRequest& request,
                                              const std::function<LeaseReply()>& open_reply);
  /// Its holder ends a granted lease; NotFound if there is none by that id.
  StatusOr<LeaseGrant> Release(uint64_t id);
  /// Its requester no longer wants the request waiting under `key` (LeaseRequest::key): it
  /// leaves the queue and is answered Cancelled. False if none waits under that key (never
  /// made, or granted already: Release that one).
  bool Withdraw(const std::string& key);
  /// The owner `owner` is gone: its leases, granted or waiting, end.
  void EndLeasesOwnedBy(const caf::actor_addr& owner, const Status& why);
  /// A node's GPU load, for placement.
  void ReportLoad(const GpuReport& report);
  /// Every GPU's slices, who holds them, and the requests waiting.
  SliceList ListSlices() const;
  /// The request waiting under `key` (LeaseRequest::key) and its place in the queue (from 1;
  /// urgent requests first, then by arrival), or nullopt if none waits under that key.
  std::optional<std::pair<PendingLease, size_t>> WaitingByKey(const std::string& key) const;

  /// Adds a joining node's CPUs, memory and GPU slices to the scheduler's snapshot, or makes a
  /// node it knows schedulable again.
  void AddNodeToScheduler(const NodeRecord& record);
  /// Adds a dead node to the scheduler's snapshot as unschedulable (`troupe slices` shows its
  /// GPUs as dead; it takes no work).
  void AddDeadNodeToScheduler(const NodeRecord& record);
  /// A node joined holding `held`: leases of an earlier head come back (the scheduler counts
  /// their slices again and `watch_owner` watches their owners); a lease the head does not know
  /// is released on the node; a lease of an earlier head the node should hold and does not ends.
  void TakeBack(const std::string& node, const std::vector<AssignSlices>& held, const runtime::ActorRef& agent);
  /// The node's process is gone: every lease with a worker there ends, its owner is told `why`
  /// (default "node '<name>' was lost"), and its slices elsewhere return.
  void LoseLeasesOn(const std::string& name, std::string why = "");
  /// Nodes that leases of an earlier head wait for, or use, and that membership has no record
  /// of or knows to be dead.
  std::set<std::string> NodesUnheardOf() const;
  /// Places what fits; grants go to their requesters and the nodes' agents.
  void RunScheduler();

  const sched::Scheduler& scheduler() const { return scheduler_; }

 private:
  // A lease as the head tracks it: waiting (reply open) or granted.
  struct Entry {
    LeaseRequest request;
    LeaseReply reply;
    caf::actor_addr owner;
    bool granted = false;
    LeaseGrant grant;
    // A lease of an earlier head, taken back node by node as the nodes rejoin: those whose part
    // has not been reported yet.
    std::set<std::string> awaiting;
  };

  template <class Msg>
  void ToAgents(const LeaseGrant& grant, const std::function<Msg(const std::string& node)>& make) const;
  LeaseGrant GrantOf(uint64_t id, const sched::Grant& g) const;
  void ReportCounts() const;
  void EndLease(uint64_t id, const Status& why, bool tell_owner = false);
  void DropRecovered(const std::function<bool(uint64_t, const LeaseGrant&)>& pred, const std::string& why);
  void ForgetKey(const std::string& key, uint64_t id);
  Status StoreLease(const LeaseRequest& request, const LeaseGrant& grant);
  Status DeleteLease(storage::Txn& txn, uint64_t id);
  void ForgetLease(uint64_t id);
  void RetryUnforgotten();
  StatusOr<std::vector<sched::Assignment>> PartOn(const std::string& node, const std::vector<LeaseWorker>& workers);
  Status RefusalOfStore(uint64_t id, const Status& stored) const;

  const ClusterConfig config_;
  HeadStore* store_;
  storage::Table<uint64_t, std::string> table_;
  const NodeDirectory* nodes_;
  runtime::RefCodec* refs_;
  const Clock* clock_;
  std::function<void(const runtime::ActorRef&)> watch_owner_;
  std::function<void(const LeaseCounts&)> on_counts_;
  sched::Scheduler scheduler_;
  // Lease ids stay unique across head restarts (node agents may still hold earlier leases).
  uint64_t next_lease_;
  std::map<uint64_t, Entry> leases_;
  // Leases of an earlier head that no node has reported yet (recovered from the table).
  std::map<uint64_t, std::pair<LeaseRequest, LeaseGrant>> recovered_;
  // Lease keys (LeaseRequest::key) of the leases above and in `leases_`: a request sent again
  // gets its lease, not a second one.
  std::map<std::string, uint64_t> by_key_;
  // Ended leases whose removal from the table failed, removed again before every later write.
  std::set<uint64_t> unforgotten_;
};

/// The scheduler's request for a lease request; InvalidArgument for an unknown priority or policy.
StatusOr<sched::Request> SchedRequestOf(uint64_t id, const LeaseRequest& request);
/// Whether the grant has a worker on `node`.
bool HasWorkerOn(const LeaseGrant& grant, const std::string& node);

}  // namespace troupe::cluster
