// The cluster protocol's C++ messages and their codecs (type ids 1100-1199).
#pragma once

#include <caf/allowed_unsafe_message_type.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "runtime/actor_ref.h"
#include "runtime/codec.h"

namespace troupe::cluster {

struct GpuInfo {
  std::string name;
  uint64_t memory_bytes = 0;
  bool simulated = false;
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

struct JoinRequest {
  NodeRecord node;
  runtime::ActorRef agent;
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

enum ClusterTypeId : uint32_t {
  kJoinRequest = 1100, kJoinReply, kListNodes, kNodeList, kSubscribeMembership, kMembershipEvent,
};

/// Registers the codecs of the cluster protocol.
Status AddClusterCodecs(runtime::CodecRegistry& registry);

/// A NodeRecord as stored bytes (Cap'n Proto), and back.
std::string EncodeNodeRecord(const NodeRecord& record);
StatusOr<NodeRecord> DecodeNodeRecord(std::string_view bytes);

}  // namespace troupe::cluster

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::JoinRequest)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::JoinReply)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::ListNodes)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::NodeList)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::SubscribeMembership)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::MembershipEvent)
