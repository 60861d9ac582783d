// Cluster protocol codecs.
#include "cluster/messages.h"

#include "cluster/protocol.capnp.h"

namespace troupe::cluster {

namespace {

void FillGpu(const GpuInfo& g, wire::Gpu::Builder b) {
  b.setName(g.name);
  b.setMemoryBytes(g.memory_bytes);
  b.setSimulated(g.simulated);
  b.setUuid(g.uuid);
  b.setIndex(g.index);
}

GpuInfo ReadGpu(wire::Gpu::Reader g) {
  return GpuInfo{g.getName(), g.getMemoryBytes(), g.getSimulated(), g.getUuid(), g.getIndex()};
}

void FillWorkers(const std::vector<LeaseWorker>& in, capnp::List<wire::LeaseWorker>::Builder out) {
  for (size_t i = 0; i < in.size(); ++i) {
    auto b = out[static_cast<unsigned>(i)];
    const auto& w = in[i];
    b.setNode(w.node);
    b.setNodeId(w.node_id);
    b.setGpuIndex(w.gpu_index);
    b.setGpuId(w.gpu_id);
    b.setSlices(w.slices);
    b.setMemoryBytes(w.memory_bytes);
    b.setComputePercent(w.compute_percent);
    b.setSimulated(w.simulated);
    b.setCpus(w.cpus);
    b.setHostMemoryBytes(w.host_memory_bytes);
  }
}

std::vector<LeaseWorker> ReadWorkers(capnp::List<wire::LeaseWorker>::Reader in) {
  std::vector<LeaseWorker> out;
  for (auto w : in) {
    out.push_back(LeaseWorker{w.getNode(), w.getNodeId(), w.getGpuIndex(), w.getGpuId(), w.getSlices(),
                              w.getMemoryBytes(), w.getComputePercent(), w.getSimulated(), w.getCpus(),
                              w.getHostMemoryBytes()});
  }
  return out;
}

template <class T>
unsigned Size(const std::vector<T>& v) {
  return static_cast<unsigned>(v.size());
}

void Fill(const NodeRecord& r, wire::NodeRecord::Builder b) {
  b.setName(r.name);
  b.setNodeId(r.node_id);
  b.setAddress(r.address);
  b.setState(r.state);
  b.setCpus(r.cpus);
  b.setMemoryBytes(r.memory_bytes);
  auto gpus = b.initGpus(static_cast<unsigned>(r.gpus.size()));
  for (size_t i = 0; i < r.gpus.size(); ++i) {
    FillGpu(r.gpus[i], gpus[i]);
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
  for (auto g : runtime::CheckedList(in.getGpus())) r.gpus.push_back(ReadGpu(g));
  r.slice_memory_bytes = in.getSliceMemoryBytes();
  r.pid = in.getPid();
  r.joins = in.getJoins();
  r.last_change_unix_ms = in.getLastChangeUnixMs();
  r.heartbeat_age_ms = in.getHeartbeatAgeMs();
  r.reason = in.getReason();
  r.metrics_address = in.getMetricsAddress();
  return r;
}


void Fill(const LeaseRequest& m, wire::LeaseRequest::Builder b, runtime::RefCodec& refs) {
  b.setTenant(m.tenant);
  b.setCount(m.count);
  b.setSliceMemoryBytes(m.slice_memory_bytes);
  b.setComputePercent(m.compute_percent);
  b.setCpus(m.cpus);
  b.setHostMemoryBytes(m.host_memory_bytes);
  b.setPriority(m.priority);
  b.setPolicy(m.policy);
  b.setGang(m.gang);
  refs.EncodeRef(m.owner, b.initOwner());
  b.setKey(m.key);
}

LeaseRequest Read(wire::LeaseRequest::Reader in, runtime::RefCodec& refs) {
  return LeaseRequest{in.getTenant(), in.getCount(),           in.getSliceMemoryBytes(), in.getComputePercent(),
                      in.getCpus(),   in.getHostMemoryBytes(), in.getPriority(),         in.getPolicy(),
                      in.getGang(),   refs.DecodeRef(in.getOwner()), in.getKey()};
}

void Fill(const LeaseGrant& m, wire::LeaseGrant::Builder b) {
  b.setLeaseId(m.lease_id);
  b.setWaitedMs(m.waited_ms);
  b.setTenant(m.tenant);
  FillWorkers(m.workers, b.initWorkers(Size(m.workers)));
}

LeaseGrant Read(wire::LeaseGrant::Reader in) {
  return LeaseGrant{in.getLeaseId(), in.getWaitedMs(), ReadWorkers(runtime::CheckedList(in.getWorkers())), in.getTenant()};
}

void Fill(const AssignSlices& m, wire::AssignSlices::Builder b) {
  b.setLeaseId(m.lease_id);
  b.setOwner(m.owner);
  FillWorkers(m.workers, b.initWorkers(Size(m.workers)));
}

AssignSlices Read(wire::AssignSlices::Reader in) {
  return AssignSlices{in.getLeaseId(), in.getOwner(), ReadWorkers(runtime::CheckedList(in.getWorkers()))};
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

std::string EncodeStoredLease(const LeaseRequest& request, const LeaseGrant& grant, runtime::RefCodec& refs) {
  Buffer flat = runtime::EncodeFlat<wire::StoredLease>([&](wire::StoredLease::Builder b) {
    Fill(request, b.initRequest(), refs);
    Fill(grant, b.initGrant());
  });
  return std::string(flat.view());
}

StatusOr<std::pair<LeaseRequest, LeaseGrant>> DecodeStoredLease(std::string_view bytes, runtime::RefCodec& refs) {
  std::pair<LeaseRequest, LeaseGrant> out;
  RETURN_IF_ERROR(runtime::ReadFlat<wire::StoredLease>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                                                       "stored lease", [&](wire::StoredLease::Reader r) {
                                                         out = {Read(r.getRequest(), refs), Read(r.getGrant())};
                                                         return OkStatus();
                                                       }));
  return out;
}

Status AddClusterCodecs(runtime::CodecRegistry& r) {
  using runtime::RefCodec;
  RETURN_IF_ERROR((r.Add<JoinRequest, wire::JoinRequest>(
      kJoinRequest, "cluster.JoinRequest",
      [](const JoinRequest& m, wire::JoinRequest::Builder b, RefCodec& refs) {
        Fill(m.node, b.initNode());
        refs.EncodeRef(m.agent, b.initAgent());
        auto held = b.initHeld(Size(m.held));
        for (size_t i = 0; i < m.held.size(); ++i) Fill(m.held[i], held[static_cast<unsigned>(i)]);
        training::FillRunningWorkers(m.workers, b.initWorkers(Size(m.workers)), refs);
        serving::FillRunningReplicas(m.replicas, b.initReplicas(Size(m.replicas)), refs);
      },
      [](wire::JoinRequest::Reader in, RefCodec& refs) -> StatusOr<JoinRequest> {
        JoinRequest out{Read(in.getNode()), refs.DecodeRef(in.getAgent()), {}, {}};
        for (auto h : runtime::CheckedList(in.getHeld())) out.held.push_back(Read(h));
        out.workers = training::ReadRunningWorkers(in.getWorkers(), refs);
        out.replicas = serving::ReadRunningReplicas(in.getReplicas(), refs);
        return out;
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
  RETURN_IF_ERROR((r.Add<LeaseRequest, wire::LeaseRequest>(
      kLeaseRequest, "cluster.LeaseRequest",
      [](const LeaseRequest& m, wire::LeaseRequest::Builder b, RefCodec& refs) { Fill(m, b, refs); },
      [](wire::LeaseRequest::Reader in, RefCodec& refs) -> StatusOr<LeaseRequest> { return Read(in, refs); })));
  RETURN_IF_ERROR((r.Add<LeaseGrant, wire::LeaseGrant>(
      kLeaseGrant, "cluster.LeaseGrant",
      [](const LeaseGrant& m, wire::LeaseGrant::Builder b, RefCodec&) { Fill(m, b); },
      [](wire::LeaseGrant::Reader in, RefCodec&) -> StatusOr<LeaseGrant> { return Read(in); })));
  RETURN_IF_ERROR((r.Add<ReleaseLease, wire::ReleaseLease>(
      kReleaseLease, "cluster.ReleaseLease",
      [](const ReleaseLease& m, wire::ReleaseLease::Builder b, RefCodec&) { b.setLeaseId(m.lease_id); },
      [](wire::ReleaseLease::Reader in, RefCodec&) -> StatusOr<ReleaseLease> { return ReleaseLease{in.getLeaseId()}; })));
  RETURN_IF_ERROR((r.Add<AssignSlices, wire::AssignSlices>(
      kAssignSlices, "cluster.AssignSlices",
      [](const AssignSlices& m, wire::AssignSlices::Builder b, RefCodec&) { Fill(m, b); },
      [](wire::AssignSlices::Reader in, RefCodec&) -> StatusOr<AssignSlices> { return Read(in); })));
  RETURN_IF_ERROR((r.Add<ReleaseSlices, wire::ReleaseSlices>(
      kReleaseSlices, "cluster.ReleaseSlices",
      [](const ReleaseSlices& m, wire::ReleaseSlices::Builder b, RefCodec&) { b.setLeaseId(m.lease_id); },
      [](wire::ReleaseSlices::Reader in, RefCodec&) -> StatusOr<ReleaseSlices> {
        return ReleaseSlices{in.getLeaseId()};
      })));
  RETURN_IF_ERROR((r.Add<GpuReport, wire::GpuReport>(
      kGpuReport, "cluster.GpuReport",
      [](const GpuReport& m, wire::GpuReport::Builder b, RefCodec&) {
        b.setNode(m.node);
        auto gpus = b.initGpus(Size(m.gpus));
        for (unsigned i = 0; i < gpus.size(); ++i) {
          gpus[i].setIndex(m.gpus[i].index);
          gpus[i].setUtilisation(m.gpus[i].utilisation);
          gpus[i].setMemoryUsedBytes(m.gpus[i].memory_used_bytes);
        }
      },
      [](wire::GpuReport::Reader in, RefCodec&) -> StatusOr<GpuReport> {
        GpuReport report{in.getNode(), {}};
        for (auto g : runtime::CheckedList(in.getGpus())) report.gpus.push_back(GpuLoad{g.getIndex(), g.getUtilisation(), g.getMemoryUsedBytes()});
        return report;
      })));
  RETURN_IF_ERROR((r.Add<ListSlices, wire::ListSlices>(
      kListSlices, "cluster.ListSlices", [](const ListSlices&, wire::ListSlices::Builder, RefCodec&) {},
      [](wire::ListSlices::Reader, RefCodec&) -> StatusOr<ListSlices> { return ListSlices{}; })));
  RETURN_IF_ERROR((r.Add<SliceList, wire::SliceList>(
      kSliceList, "cluster.SliceList",
      [](const SliceList& m, wire::SliceList::Builder b, RefCodec&) {
        auto gpus = b.initGpus(Size(m.gpus));
        for (unsigned i = 0; i < gpus.size(); ++i) {
          const auto& g = m.gpus[i];
          gpus[i].setNode(g.node);
          FillGpu(g.gpu, gpus[i].initGpu());
          gpus[i].setSlicesTotal(g.slices_total);
          gpus[i].setSlicesFree(g.slices_free);
          gpus[i].setSliceMemoryBytes(g.slice_memory_bytes);
          gpus[i].setUtilisation(g.utilisation);
          gpus[i].setMemoryUsedBytes(g.memory_used_bytes);
          gpus[i].setNodeState(g.node_state);
          auto leases = gpus[i].initLeases(Size(g.leases));
          for (unsigned j = 0; j < leases.size(); ++j) {
            leases[j].setLeaseId(g.leases[j].lease_id);
            leases[j].setTenant(g.leases[j].tenant);
            leases[j].setOwner(g.leases[j].owner);
            leases[j].setSlices(g.leases[j].slices);
          }
        }
        auto pending = b.initPending(Size(m.pending));
        for (unsigned i = 0; i < pending.size(); ++i) {
          const auto& p = m.pending[i];
          pending[i].setLeaseId(p.lease_id);
          pending[i].setTenant(p.tenant);
          pending[i].setCount(p.count);
          pending[i].setPlaced(p.placed);
          pending[i].setWaitedMs(p.waited_ms);
          pending[i].setReason(p.reason);
          pending[i].setPriority(p.priority);
        }
      },
      [](wire::SliceList::Reader in, RefCodec&) -> StatusOr<SliceList> {
        SliceList list;
        for (auto g : runtime::CheckedList(in.getGpus())) {
          GpuSlices gs{g.getNode(), ReadGpu(g.getGpu()), g.getSlicesTotal(), g.getSlicesFree(),
                       g.getSliceMemoryBytes(), g.getUtilisation(), g.getMemoryUsedBytes(), {}, g.getNodeState()};
          for (auto l : runtime::CheckedList(g.getLeases())) gs.leases.push_back(SliceLeaseInfo{l.getLeaseId(), l.getTenant(), l.getOwner(), l.getSlices()});
          list.gpus.push_back(std::move(gs));
        }
        for (auto p : runtime::CheckedList(in.getPending())) {
          list.pending.push_back(PendingLease{p.getLeaseId(), p.getTenant(), p.getCount(), p.getPlaced(),
                                              p.getWaitedMs(), p.getReason(), p.getPriority()});
        }
        return list;
      })));
  RETURN_IF_ERROR((r.Add<ListEvents, wire::ListEvents>(
      kListEvents, "cluster.ListEvents", [](const ListEvents&, wire::ListEvents::Builder, RefCodec&) {},
      [](wire::ListEvents::Reader, RefCodec&) -> StatusOr<ListEvents> { return ListEvents{}; })));
  RETURN_IF_ERROR((r.Add<EventList, wire::EventList>(
      kEventList, "cluster.EventList",
      [](const EventList& m, wire::EventList::Builder b, RefCodec&) {
        auto events = b.initEvents(Size(m.events));
        for (unsigned i = 0; i < events.size(); ++i) {
          const auto& e = m.events[i];
          events[i].setSupervisor(e.supervisor);
          events[i].setChild(e.child);
          events[i].setKind(e.kind);
          events[i].setReason(e.reason);
          events[i].setNode(e.node);
          events[i].setUnixMs(e.unix_ms);
          events[i].setRestarts(e.restarts);
        }
      },
      [](wire::EventList::Reader in, RefCodec&) -> StatusOr<EventList> {
        EventList list;
        for (auto e : runtime::CheckedList(in.getEvents())) {
          list.events.push_back(runtime::SupervisorEvent{e.getSupervisor(), e.getChild(), e.getKind(), e.getReason(),
                                                         e.getNode(), e.getUnixMs(), e.getRestarts()});
        }
        return list;
      })));
  RETURN_IF_ERROR((r.Add<LeaseEnded, wire::LeaseEnded>(
      kLeaseEnded, "cluster.LeaseEnded",
      [](const LeaseEnded& m, wire::LeaseEnded::Builder b, RefCodec&) {
        b.setLeaseId(m.lease_id);
        b.setReason(m.reason);
      },
      [](wire::LeaseEnded::Reader in, RefCodec&) -> StatusOr<LeaseEnded> {
        return LeaseEnded{in.getLeaseId(), in.getReason()};
      })));
  RETURN_IF_ERROR((r.Add<AuditQuery, wire::AuditQuery>(
      kAuditQuery, "cluster.AuditQuery",
      [](const AuditQuery& m, wire::AuditQuery::Builder b, RefCodec&) {
        b.setSinceUnixMs(m.since_unix_ms);
        b.setVerify(m.verify);
      },
      [](wire::AuditQuery::Reader in, RefCodec&) -> StatusOr<AuditQuery> {
        return AuditQuery{in.getSinceUnixMs(), in.getVerify()};
      })));
  RETURN_IF_ERROR((r.Add<AuditReply, wire::AuditReply>(
      kAuditReply, "cluster.AuditReply",
      [](const AuditReply& m, wire::AuditReply::Builder b, RefCodec&) { b.setJson(m.json); },
      [](wire::AuditReply::Reader in, RefCodec&) -> StatusOr<AuditReply> { return AuditReply{in.getJson()}; })));
  RETURN_IF_ERROR((r.Add<RegisterGateway, wire::RegisterGateway>(
      kRegisterGateway, "cluster.RegisterGateway",
      [](const RegisterGateway& m, wire::RegisterGateway::Builder b, RefCodec& refs) {
        b.setName(m.name);
        b.setMetricsAddress(m.metrics_address);
        refs.EncodeRef(m.gateway, b.initGateway());
      },
      [](wire::RegisterGateway::Reader in, RefCodec& refs) -> StatusOr<RegisterGateway> {
        return RegisterGateway{in.getName(), in.getMetricsAddress(), refs.DecodeRef(in.getGateway())};
      })));
  RETURN_IF_ERROR((r.Add<GatewayRegistered, wire::GatewayRegistered>(
      kGatewayRegistered, "cluster.GatewayRegistered",
      [](const GatewayRegistered& m, wire::GatewayRegistered::Builder b, RefCodec&) { b.setClusterName(m.cluster_name); },
      [](wire::GatewayRegistered::Reader in, RefCodec&) -> StatusOr<GatewayRegistered> {
        return GatewayRegistered{in.getClusterName()};
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
        for (auto n : runtime::CheckedList(in.getNodes())) list.nodes.push_back(Read(n));
        return list;
      });
}

}  // namespace troupe::cluster
