# The rendezvous store's protocol (type ids 1600-1603; collectives/rendezvous.h): the key -> bytes
# map a group's ranks form their communicator through (Gloo's pair addresses, NCCL's unique id).
@0xc41d0a3a86f2b7e5;

$import "/capnp/c++.capnp".namespace("troupe::collectives::wire");

struct RendezvousSet {
  key @0 :Text;
  value @1 :Data;
}

struct RendezvousSetReply {
  keys @0 :UInt32;        # keys in the store after the set
  bytes @1 :UInt64;       # bytes of keys and values in the store after the set
  waiting @2 :UInt32;     # Gets waiting for keys after the set
}

struct RendezvousGet {
  keys @0 :List(Text);
  timeoutMs @1 :UInt32;   # how long the store waits for missing keys; 0: answer at once
  values @2 :Bool;        # false: only wait (the reply has no values)
}

struct RendezvousValues {
  values @0 :List(Data);  # in the order of the request's keys
}
