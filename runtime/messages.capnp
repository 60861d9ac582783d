# The runtime's own payloads: actor addresses inside messages, error replies, remote
# monitoring, remote spawn, name lookup and the directory. Application messages have their
# own schemas; they refer to actors through ActorAddress.
@0xc4b1f07a3e55d2a9;

$import "/capnp/c++.capnp".namespace("troupe::runtime::wire");

# Where an actor lives: enough for any node to reach it, even one that has never talked to
# the actor's node (refs can be forwarded through third nodes).
struct ActorAddress {
  node @0 :UInt64;     # troupe node id; 0 = no actor (an empty ref)
  actor @1 :UInt64;    # wire actor id (incarnation << 40 | CAF actor id)
  address @2 :Text;    # "host:port" of the node's transport listener ("" if unknown)
}

# An error crossing the wire: a reply to a request, or the reason an actor exited.
struct ErrorInfo {
  category @0 :UInt64;  # CAF error category atom; troupe's own category carries a StatusCode
  code @1 :UInt8;
  text @2 :Text;        # human-readable, names what and where
}

# Type ids below 1000 belong to the runtime (see runtime/wire_types.h).
struct DownNotice { reason @0 :ErrorInfo; }                   # the source actor exited
struct SpawnRequest {
  typeName @0 :Text;    # a name registered with Runtime::RegisterActorType
  argsTypeId @1 :UInt32; # codec type id of the arguments; 0 = no arguments
  args @2 :Data;        # the arguments, encoded by that codec
}
struct NameLookup { name @0 :Text; }
struct RefReply { ref @0 :ActorAddress; }

# The directory actor's protocol (codec-registered types, usable from any actor).
struct DirectoryRegister { name @0 :Text; ref @1 :ActorAddress; }
struct DirectoryLookup { name @0 :Text; }
struct DirectoryUnregister { name @0 :Text; }
struct DirectoryEntry { name @0 :Text; ref @1 :ActorAddress; }

# Stop the destination actor (a CAF exit message sent to a remote actor, e.g. by a supervisor).
struct ExitRequest { reason @0 :ErrorInfo; }

# A supervision event (runtime/supervisor.h), sent to a supervisor's event sink.
struct SupervisorEvent {
  supervisor @0 :Text;
  child @1 :Text;
  kind @2 :Text;
  reason @3 :Text;
  node @4 :UInt64;
  unixMs @5 :Int64;
  restarts @6 :UInt32;
}
