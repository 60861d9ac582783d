// The cluster protocol's C++ messages and their codecs (type ids 1100-1199).
#pragma once

#include <caf/allowed_unsafe_message_type.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "actors/serving/messages.h"
#include "actors/training/messages.h"
#include "runtime/actor_ref.h"
#include "runtime/codec.h"
#include "runtime/supervisor.h"

namespace troupe::cluster {

struct GpuInfo {
  std::string name;
  uint64_t memory_bytes = 0;
  bool simulated = false;
  std::string uuid;
  uint32_t index = 0;
};

struct NodeRecord {
  std::string name;
  uint64_t node_id = 0;
  std::string address;
  std::string state;
  uint32_t cpus = 0;
  uint64_t memory_bytes = 0;
  std::vector<GpuInfo> gpus;
  uint64_t slice_memory_bytes = 0;
  int64_t pid = 0;
  uint64_t joins = 0;
  int64_t last_change_unix_ms = 0;
  int64_t heartbeat_age_ms = -1;
  std::string reason;
  std::string metrics_address;
};

struct JoinReply {
  std::string cluster_name;
  uint64_t node_id = 0;
};
struct ListNodes {};
struct NodeList {
  std::string cluster_name;
  std::vector<NodeRecord> nodes;
};

/// Subscribe `subscriber` to membership events (one MembershipEvent per node now, then one per
/// change). Reply: NodeList (the nodes at subscription time).
struct SubscribeMembership {
  runtime::ActorRef subscriber;
};
struct MembershipEvent {
  NodeRecord node;
};

/// Ask the head's scheduler for `count` workers' worth of GPU slices (and CPUs, memory), leased
/// to `owner`. The reply (LeaseGrant) comes when the lease is granted; until then the request
/// waits in the head's queue. The lease ends when the owner exits or its node is lost.
struct LeaseRequest {
  std::string tenant = "default";
  uint32_t count = 1;
  uint64_t slice_memory_bytes = 0;
  uint32_t compute_percent = 0;
  uint32_t cpus = 0;
  uint64_t host_memory_bytes = 0;
  std::string priority = "normal";
  std::string policy = "spread";
  bool gang = false;
  runtime::ActorRef owner;
  /// The requester's name for this request (empty: none). A request whose key the head already
  /// knows gets that lease (or, while it waits, takes over waiting for it) instead of a second
  /// one, so a request can be sent again safely after a lost reply.
  std::string key;
};
inline constexpr uint32_t kNoGpuIndex = 0xFFFFFFFF;
struct LeaseWorker {
  std::string node;
  uint64_t node_id = 0;
  uint32_t gpu_index = kNoGpuIndex;
  std::string gpu_id;
  uint32_t slices = 0;
  uint64_t memory_bytes = 0;
  uint32_t compute_percent = 0;
  bool simulated = false;
  uint32_t cpus = 0;
  uint64_t host_memory_bytes = 0;
};
struct LeaseGrant {
  uint64_t lease_id = 0;
  int64_t waited_ms = 0;
  std::vector<LeaseWorker> workers;
  std::string tenant;
};
/// Ends a lease (reply: its LeaseGrant). NotFound if there is no such lease.
struct ReleaseLease {
  uint64_t lease_id = 0;
};
struct AssignSlices {
  uint64_t lease_id = 0;
  std::string owner;  ///< the owner ref, printed (nodes do not contact owners)
  std::vector<LeaseWorker> workers;
};
struct ReleaseSlices {
  uint64_t lease_id = 0;
};
/// A node agent joins the head (again, after losing it or the head's restart) with what it holds.
struct JoinRequest {
  NodeRecord node;
  runtime::ActorRef agent;
  std::vector<AssignSlices> held;  ///< the leases the agent holds now, its part of each
  std::vector<training::RunningWorker> workers;  ///< training workers running there (and recent exits, pid 0)
  /// Serving replicas running there (a restarted head's deployment actors take them back or stop
  /// them: DeploymentsRegistry::NodeJoined). Initialized here so that {node, agent, held, workers}
  /// builds without a missing-initializer warning.
  std::vector<serving::RunningReplica> replicas = {};
};
struct GpuLoad {
  uint32_t index = 0;
  double utilisation = 0;
  uint64_t memory_used_bytes = 0;
};
struct GpuReport {
  std::string node;
  std::vector<GpuLoad> gpus;
};
struct ListSlices {};
struct SliceLeaseInfo {
  uint64_t lease_id = 0;
  std::string tenant;
  std::string owner;
  uint32_t slices = 0;
};
struct GpuSlices {
  std::string node;
  GpuInfo gpu;
  uint32_t slices_total = 0;
  uint32_t slices_free = 0;
  uint64_t slice_memory_bytes = 0;
  double utilisation = 0;
  uint64_t memory_used_bytes = 0;
  std::vector<SliceLeaseInfo> leases;
  std::string node_state;
};
struct PendingLease {
  uint64_t lease_id = 0;
  std::string tenant;
  uint32_t count = 0;
  uint32_t placed = 0;
  int64_t waited_ms = 0;
  std::string reason;
  std::string priority;
};
struct SliceList {
  std::vector<GpuSlices> gpus;
  std::vector<PendingLease> pending;
};
struct ListEvents {};
struct EventList {
  std::vector<runtime::SupervisorEvent> events;
};
/// Head -> a lease's owner: the lease ended without the owner asking (a node it used was lost,
/// or a restarted head could not take it back). Its slices are gone; ask again for new ones.
struct LeaseEnded {
  uint64_t lease_id = 0;
  std::string reason;
};

/// Client -> head: the audit log (`troupe audit`, docs/gateway.md "Audit log"): the records
/// with at_unix_ms >= since_unix_ms, oldest first, and with `verify` the whole chain checked.
/// Reply: AuditReply.
struct AuditQuery {
  int64_t since_unix_ms = 0;
  bool verify = false;
};
/// {"records": [{seq, at_unix_ms, who, action, target, detail, result, prev_hash, hash}...] (the
///  newest 10,000 at most), "omitted": older ones left out, "verification": null, or {ok,
///  records, position, problem, anchor: {seq, hash}, tip: {seq, hash}}}
struct AuditReply {
  std::string json;
};

/// A gateway process -> head: list the gateway's Prometheus endpoint (`metrics_address`, host:port
/// of its GET /metrics) in the head's scrape targets under `name` while `gateway` lives. The head
/// monitors `gateway` and drops the entry when it exits or its process is lost (kill -9: after
/// the runtime's heartbeat_timeout). Registering again under the same name replaces the entry
/// (a gateway that lost the head registers with the new one). Reply: GatewayRegistered;
/// InvalidArgument for an empty name, address or actor.
struct RegisterGateway {
  std::string name;
  std::string metrics_address;
  runtime::ActorRef gateway;
};
struct GatewayRegistered {
  std::string cluster_name;
};

enum ClusterTypeId : uint32_t {
  kJoinRequest = 1100, kJoinReply, kListNodes, kNodeList, kSubscribeMembership, kMembershipEvent,
  kLeaseRequest, kLeaseGrant, kReleaseLease, kAssignSlices, kReleaseSlices, kGpuReport, kListSlices, kSliceList,
  kListEvents, kEventList, kLeaseEnded,
};
/// The audit log's messages (1550-1569, issue 21's share).
enum AuditTypeId : uint32_t { kAuditQuery = 1550, kAuditReply };
/// A gateway's scrape registration (1560-1561, also issue 21's share).
enum GatewayTypeId : uint32_t { kRegisterGateway = 1560, kGatewayRegistered };

/// Registers the codecs of the cluster protocol.
Status AddClusterCodecs(runtime::CodecRegistry& registry);

/// A NodeRecord as stored bytes (Cap'n Proto), and back.
std::string EncodeNodeRecord(const NodeRecord& record);
StatusOr<NodeRecord> DecodeNodeRecord(std::string_view bytes);
/// The head's durable record of a granted lease (the owner's address through `refs`).
std::string EncodeStoredLease(const LeaseRequest& request, const LeaseGrant& grant, runtime::RefCodec& refs);
StatusOr<std::pair<LeaseRequest, LeaseGrant>> DecodeStoredLease(std::string_view bytes, runtime::RefCodec& refs);

}  // namespace troupe::cluster

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::JoinRequest)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::JoinReply)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::ListNodes)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::NodeList)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::SubscribeMembership)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::MembershipEvent)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::LeaseRequest)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::LeaseGrant)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::ReleaseLease)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::AssignSlices)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::ReleaseSlices)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::GpuReport)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::ListSlices)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::SliceList)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::ListEvents)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::EventList)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::LeaseEnded)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::AuditQuery)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::AuditReply)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::RegisterGateway)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::GatewayRegistered)
