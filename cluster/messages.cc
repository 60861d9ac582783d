// Cluster protocol codecs.
#include "cluster/messages.h"

#include "cluster/protocol.capnp.h"

namespace troupe::cluster {

namespace {

void Fill(const NodeRecord& r, wire::NodeRecord::Builder b) {
  b.setName(r.name);
  b.setNodeId(r.node_id);
  b.setAddress(r.address);
  b.setState(r.state);
  b.setCpus(r.cpus);
  b.setMemoryBytes(r.memory_bytes);
  auto gpus = b.initGpus(static_cast<unsigned>(r.gpus.size()));
  for (size_t i = 0; i < r.gpus.size(); ++i) {
    gpus[i].setName(r.gpus[i].name);
    gpus[i].setMemoryBytes(r.gpus[i].memory_bytes);
    gpus[i].setSimulated(r.gpus[i].simulated);
  }
  b.setSliceMemoryBytes(r.slice_memory_bytes);
  b.setPid(r.pid);
  b.setJoins(r.joins);
  b.setLastChangeUnixMs(r.last_change_unix_ms);
  b.setHeartbeatAgeMs(r.heartbeat_age_ms);
  b.setReason(r.reason);
  b.setMetricsAddress(r.metrics_address);
}

NodeRecord Read(wire::NodeRecord::Reader in) {
  NodeRecord r;
  r.name = in.getName();
  r.node_id = in.getNodeId();
  r.address = in.getAddress();
  r.state = in.getState();
  r.cpus = in.getCpus();
  r.memory_bytes = in.getMemoryBytes();
  for (auto g : in.getGpus()) r.gpus.push_back(GpuInfo{g.getName(), g.getMemoryBytes(), g.getSimulated()});
  r.slice_memory_bytes = in.getSliceMemoryBytes();
  r.pid = in.getPid();
  r.joins = in.getJoins();
  r.last_change_unix_ms = in.getLastChangeUnixMs();
  r.heartbeat_age_ms = in.getHeartbeatAgeMs();
  r.reason = in.getReason();
  r.metrics_address = in.getMetricsAddress();
  return r;
}

}  // namespace

std::string EncodeNodeRecord(const NodeRecord& record) {
  Buffer flat = runtime::EncodeFlat<wire::NodeRecord>([&](wire::NodeRecord::Builder b) { Fill(record, b); });
  return std::string(flat.view());
}

StatusOr<NodeRecord> DecodeNodeRecord(std::string_view bytes) {
  NodeRecord record;
  RETURN_IF_ERROR(runtime::ReadFlat<wire::NodeRecord>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                                                      "node record", [&](wire::NodeRecord::Reader r) {
                                                        record = Read(r);
                                                        return OkStatus();
                                                      }));
  return record;
}

Status AddClusterCodecs(runtime::CodecRegistry& r) {
  using runtime::RefCodec;
  RETURN_IF_ERROR((r.Add<JoinRequest, wire::JoinRequest>(
      kJoinRequest, "cluster.JoinRequest",
      [](const JoinRequest& m, wire::JoinRequest::Builder b, RefCodec& refs) {
        Fill(m.node, b.initNode());
        refs.EncodeRef(m.agent, b.initAgent());
      },
      [](wire::JoinRequest::Reader in, RefCodec& refs) -> StatusOr<JoinRequest> {
        return JoinRequest{Read(in.getNode()), refs.DecodeRef(in.getAgent())};
      })));
  RETURN_IF_ERROR((r.Add<JoinReply, wire::JoinReply>(
      kJoinReply, "cluster.JoinReply",
      [](const JoinReply& m, wire::JoinReply::Builder b, RefCodec&) {
        b.setClusterName(m.cluster_name);
        b.setNodeId(m.node_id);
      },
      [](wire::JoinReply::Reader in, RefCodec&) -> StatusOr<JoinReply> {
        return JoinReply{in.getClusterName(), in.getNodeId()};
      })));
  RETURN_IF_ERROR((r.Add<ListNodes, wire::ListNodes>(
      kListNodes, "cluster.ListNodes", [](const ListNodes&, wire::ListNodes::Builder, RefCodec&) {},
      [](wire::ListNodes::Reader, RefCodec&) -> StatusOr<ListNodes> { return ListNodes{}; })));
  RETURN_IF_ERROR((r.Add<SubscribeMembership, wire::SubscribeMembership>(
      kSubscribeMembership, "cluster.SubscribeMembership",
      [](const SubscribeMembership& m, wire::SubscribeMembership::Builder b, RefCodec& refs) {
        refs.EncodeRef(m.subscriber, b.initSubscriber());
      },
      [](wire::SubscribeMembership::Reader in, RefCodec& refs) -> StatusOr<SubscribeMembership> {
        return SubscribeMembership{refs.DecodeRef(in.getSubscriber())};
      })));
  RETURN_IF_ERROR((r.Add<MembershipEvent, wire::MembershipEvent>(
      kMembershipEvent, "cluster.MembershipEvent",
      [](const MembershipEvent& m, wire::MembershipEvent::Builder b, RefCodec&) { Fill(m.node, b.initNode()); },
      [](wire::MembershipEvent::Reader in, RefCodec&) -> StatusOr<MembershipEvent> {
        return MembershipEvent{Read(in.getNode())};
      })));
  return r.Add<NodeList, wire::NodeList>(
      kNodeList, "cluster.NodeList",
      [](const NodeList& m, wire::NodeList::Builder b, RefCodec&) {
        b.setClusterName(m.cluster_name);
        auto nodes = b.initNodes(static_cast<unsigned>(m.nodes.size()));
        for (size_t i = 0; i < m.nodes.size(); ++i) Fill(m.nodes[i], nodes[i]);
      },
      [](wire::NodeList::Reader in, RefCodec&) -> StatusOr<NodeList> {
        NodeList list;
        list.cluster_name = in.getClusterName();
        for (auto n : in.getNodes()) list.nodes.push_back(Read(n));
        return list;
      });
}

}  // namespace troupe::cluster
