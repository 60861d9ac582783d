// MembershipRegistry: the cluster's nodes as the head knows them (join, alive -> suspect -> dead,
// rejoin), their agents, the clients subscribed to changes, and the LMDB table `nodes`.
#pragma once

#include <caf/actor_addr.hpp>

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "cluster/config.h"
#include "cluster/head_store.h"
#include "cluster/messages.h"
#include "common/clock.h"
#include "storage/table.h"

namespace troupe::storage {
template <>
struct ValueCodec<cluster::NodeRecord> {
  static std::string Encode(const cluster::NodeRecord& r) { return cluster::EncodeNodeRecord(r); }
  static StatusOr<cluster::NodeRecord> Decode(std::string_view b) { return cluster::DecodeNodeRecord(b); }
};
}  // namespace troupe::storage

namespace troupe::cluster {

/// A stored state as seen now: an alive node silent for more than half the failure timeout is
/// suspect (`silence`: time since the head last heard from it; nullopt when not connected).
std::string StateNow(const NodeRecord& record, std::optional<Clock::Duration> silence,
                     std::chrono::milliseconds failure_timeout);

/// What other registries ask of membership (the lease registry: where to send a node's part of
/// a lease, and whether a node is known and alive).
class NodeDirectory {
 public:
  virtual ~NodeDirectory() = default;
  /// The node's record, or nullptr for a node the head has no record of.
  virtual const NodeRecord* FindNode(const std::string& name) const = 0;
  /// The agent of a node joined to this head and not lost since, or nullptr.
  virtual const runtime::ActorRef* AgentOf(const std::string& name) const = 0;
};

/// The membership of the cluster, kept in the head's LMDB file (table `nodes`) so that a
/// restarted head knows its cluster.
///
/// Owned by the head's controller actor and used only on its mailbox (the head monitors agents
/// and subscribers; this class only records them).
///
/// Node states (NodeRecord::state):
///
///     (join) --> alive --(agent's monitor fires)--> dead --(join)--> alive
///                  \--(silent > failure_timeout / 2)--> suspect   (derived, StateNow; not stored)
///     (stored, head restarts) --> unknown --(join)--> alive
///                                        \--(failure_timeout after the head started)--> dead
///
/// A node stored as dead stays dead after a restart. Writes that fail are acknowledged: the
/// record is kept unsaved and written again before every later write to the store (HeadStore).
class MembershipRegistry final : public NodeDirectory {
 public:
  MembershipRegistry(const ClusterConfig& config, HeadStore* store, storage::Table<std::string, NodeRecord> table,
                     const Clock* clock);

  /// Loads the nodes an earlier head stored: those not dead are unknown until they rejoin.
  Status Recover();

  const std::map<std::string, NodeRecord>& nodes() const { return nodes_; }
  /// Whether a node of an earlier head has not rejoined yet.
  bool AwaitingRejoins() const;

  /// A node joins or rejoins: alive, its joins counted. Not stored yet (Store), and its agent is
  /// not attached yet (AttachAgent): AgentOf still names the agent of its earlier join, whose
  /// leases the head may end first. InvalidArgument for a record without a name.
  StatusOr<NodeRecord> Join(NodeRecord record);
  /// `agent` is the node's agent from now on.
  void AttachAgent(const std::string& name, const runtime::ActorRef& agent);
  /// The node whose agent is `agent`, if any.
  std::optional<std::string> NodeOfAgent(const caf::actor_addr& agent) const;
  /// The node's agent is gone (process killed, link cut, or silent for the failure timeout):
  /// the node is dead with `reason`, stored, and has no agent any more.
  NodeRecord MarkDead(const std::string& name, const std::string& reason);
  /// failure_timeout after the head started: each node still unknown is dead with `reason`,
  /// stored and announced to the subscribers. Returns them.
  std::vector<NodeRecord> DeclareUnknownDead(const std::string& reason);

  /// Writes the node's record; a failed write is retried before every later write.
  void Store(const NodeRecord& record);

  /// Adds a subscriber; returns the nodes as stored.
  NodeList Subscribe(const runtime::ActorRef& subscriber);
  /// Drops the subscriber whose actor is `subscriber`, if there is one.
  void Unsubscribe(const caf::actor_addr& subscriber);
  /// Sends `record` to every subscriber (MembershipEvent).
  void Notify(const NodeRecord& record) const;

  /// The nodes as seen now (`silence_of`: time since the head last heard from a node id, as the
  /// runtime's failure detector says): heartbeat ages filled in, alive nodes suspect when silent.
  NodeList List(const std::function<std::optional<Clock::Duration>(uint64_t node_id)>& silence_of) const;

  // NodeDirectory
  const NodeRecord* FindNode(const std::string& name) const override;
  const runtime::ActorRef* AgentOf(const std::string& name) const override;

 private:
  void RetryUnsaved();

  const ClusterConfig config_;
  HeadStore* store_;
  storage::Table<std::string, NodeRecord> table_;
  const Clock* clock_;
  std::map<std::string, NodeRecord> nodes_;
  std::map<std::string, runtime::ActorRef> agents_;
  std::vector<runtime::ActorRef> subscribers_;
  // Records acknowledged although their write failed, written again before every later write.
  std::set<std::string> unsaved_;
};

}  // namespace troupe::cluster
