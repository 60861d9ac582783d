# The cluster protocol between node agents, the head and clients, and the head's stored records.
@0xd3a1c5e7f9b24680;

$import "/capnp/c++.capnp".namespace("troupe::cluster::wire");
using Rt = import "/runtime/messages.capnp";
using Tr = import "/actors/training/training.capnp";
using Sv = import "/actors/serving/serving.capnp";

struct Gpu {
  name @0 :Text;
  memoryBytes @1 :UInt64;
  simulated @2 :Bool;
  uuid @3 :Text;               # NVML UUID ("" for simulated GPUs)
  index @4 :UInt32;            # index on its node (CUDA_VISIBLE_DEVICES)
}

# One node as the head knows it (also the value stored per node in the head's LMDB).
struct NodeRecord {
  name @0 :Text;
  nodeId @1 :UInt64;
  address @2 :Text;
  state @3 :Text;              # alive, suspect, dead, unknown (not seen since the head restarted)
  cpus @4 :UInt32;
  memoryBytes @5 :UInt64;
  gpus @6 :List(Gpu);
  sliceMemoryBytes @7 :UInt64;
  pid @8 :Int64;
  joins @9 :UInt64;            # how many times it has joined (restarts + 1)
  lastChangeUnixMs @10 :Int64;
  heartbeatAgeMs @11 :Int64;   # -1 when unknown; filled in by the head when listing
  reason @12 :Text;            # why it is dead, when it is
  metricsAddress @13 :Text;    # host:port of its Prometheus endpoint
}

# `held`: the leases the node's agent holds now (its part of each), so that a restarted head
# takes them back instead of handing their slices out again; `workers`: the training jobs'
# workers it runs (and recent exits, pid 0), which a restarted head's supervisors take back.
struct JoinRequest {
  node @0 :NodeRecord; agent @1 :Rt.ActorAddress; held @2 :List(AssignSlices); workers @3 :List(Tr.RunningWorker);
  replicas @4 :List(Sv.RunningReplica);
}
struct JoinReply { clusterName @0 :Text; nodeId @1 :UInt64; }
struct ListNodes {}
struct NodeList { clusterName @0 :Text; nodes @1 :List(NodeRecord); }

# Membership events: a subscriber gets the current nodes, then every change, until it exits.
struct SubscribeMembership { subscriber @0 :Rt.ActorAddress; }
struct MembershipEvent { node @0 :NodeRecord; }

# GPU slice leases (the head's scheduler). A lease belongs to its owner actor: it ends when the
# owner exits or its node or process is lost.
struct LeaseRequest {
  tenant @0 :Text;
  count @1 :UInt32;
  sliceMemoryBytes @2 :UInt64;
  computePercent @3 :UInt32;
  cpus @4 :UInt32;
  hostMemoryBytes @5 :UInt64;
  priority @6 :Text;           # urgent, normal
  policy @7 :Text;             # pack, spread, strict_spread
  gang @8 :Bool;
  owner @9 :Rt.ActorAddress;
  key @10 :Text;               # the requester's name for it: the same key twice is one lease
}
struct LeaseWorker {
  node @0 :Text;
  nodeId @1 :UInt64;
  gpuIndex @2 :UInt32;         # 0xFFFFFFFF: no GPU (CPU-only worker)
  gpuId @3 :Text;              # UUID, or the simulated GPU's name
  slices @4 :UInt32;
  memoryBytes @5 :UInt64;      # slices x slice memory
  computePercent @6 :UInt32;   # slices' share of the GPU
  simulated @7 :Bool;
  cpus @8 :UInt32;
  hostMemoryBytes @9 :UInt64;
}
struct LeaseGrant { leaseId @0 :UInt64; waitedMs @1 :Int64; workers @2 :List(LeaseWorker); tenant @3 :Text; }
struct ReleaseLease { leaseId @0 :UInt64; }
# Head -> node agent: lease these slices of the node's GPUs to `owner` / end the lease.
# The owner travels as text (for display): a node never makes a proxy of (and so never connects
# to) an owner; the head watches owners and sends ReleaseSlices.
struct AssignSlices { leaseId @0 :UInt64; owner @1 :Text; workers @2 :List(LeaseWorker); }
struct ReleaseSlices { leaseId @0 :UInt64; }
# The head's durable record of a granted lease (LMDB table "leases", key: lease id).
struct StoredLease { request @0 :LeaseRequest; grant @1 :LeaseGrant; }
# Node agent -> head: what its GPUs are doing (NVML), every few seconds.
struct GpuLoad { index @0 :UInt32; utilisation @1 :Float64; memoryUsedBytes @2 :UInt64; }
struct GpuReport { node @0 :Text; gpus @1 :List(GpuLoad); }
# `troupe slices`: every GPU's slices, owners and free capacity, and the waiting requests.
struct ListSlices {}
struct SliceLeaseInfo { leaseId @0 :UInt64; tenant @1 :Text; owner @2 :Text; slices @3 :UInt32; }
struct GpuSlices {
  node @0 :Text;
  gpu @1 :Gpu;
  slicesTotal @2 :UInt32;
  slicesFree @3 :UInt32;
  sliceMemoryBytes @4 :UInt64;
  utilisation @5 :Float64;
  memoryUsedBytes @6 :UInt64;
  leases @7 :List(SliceLeaseInfo);
  nodeState @8 :Text;
}
struct PendingLease {
  leaseId @0 :UInt64; tenant @1 :Text; count @2 :UInt32; placed @3 :UInt32;
  waitedMs @4 :Int64; reason @5 :Text; priority @6 :Text;
}
struct SliceList { gpus @0 :List(GpuSlices); pending @1 :List(PendingLease); }
# `troupe events`: the supervision events the head was sent (newest last).
struct ListEvents {}
struct EventList { events @0 :List(Rt.SupervisorEvent); }
# Head -> lease owner: the lease ended without the owner asking.
struct LeaseEnded { leaseId @0 :UInt64; reason @1 :Text; }
# `troupe audit`: the head's audit log (cluster/audit_log.h).
struct AuditQuery { sinceUnixMs @0 :Int64; verify @1 :Bool; }
struct AuditReply { json @0 :Text; }
# A gateway process asks to be scraped: listed in the head's Prometheus targets while `gateway` lives.
struct RegisterGateway { name @0 :Text; metricsAddress @1 :Text; gateway @2 :Rt.ActorAddress; }
struct GatewayRegistered { clusterName @0 :Text; }
