# The cluster protocol between node agents, the head and clients, and the head's stored records.
@0xd3a1c5e7f9b24680;

$import "/capnp/c++.capnp".namespace("troupe::cluster::wire");
using Rt = import "/runtime/messages.capnp";

struct Gpu {
  name @0 :Text;
  memoryBytes @1 :UInt64;
  simulated @2 :Bool;
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

struct JoinRequest { node @0 :NodeRecord; agent @1 :Rt.ActorAddress; }
struct JoinReply { clusterName @0 :Text; nodeId @1 :UInt64; }
struct ListNodes {}
struct NodeList { clusterName @0 :Text; nodes @1 :List(NodeRecord); }

# Membership events: a subscriber gets the current nodes, then every change, until it exits.
struct SubscribeMembership { subscriber @0 :Rt.ActorAddress; }
struct MembershipEvent { node @0 :NodeRecord; }
