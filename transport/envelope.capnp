# The frame envelope: what travels in the UCX active-message header of every troupe frame.
# The payload (an opaque byte string, usually a Cap'n Proto message of the runtime) travels
# as the active-message body, so large payloads can go by rendezvous without a copy.
@0x8829f6965536d4d1;

$import "/capnp/c++.capnp".namespace("troupe::transport::wire");

enum Kind {
  data @0;       # an application frame; only accepted on an authenticated connection
  hello @1;      # client -> server: who I am, my nonce
  challenge @2;  # server -> client: who I am, my nonce, proof that I know the token
  auth @3;       # client -> server: proof that I know the token
  accept @4;     # server -> client: the connection is authenticated
  reject @5;     # either way: authentication failed, with a reason; the link is closed
  batch @6;      # several data frames in one message (see docs/transport.md, "Batching")
}

struct Handshake {
  nodeId @0 :UInt64;            # the sender's node id
  nodeName @1 :Text;            # for logs only
  listenAddress @2 :Text;       # where the sender accepts connections ("" if nowhere)
  nonce @3 :Data;               # 32 random bytes, fresh per connection
  proof @4 :Data;               # HMAC-SHA256 over both nonces and ids, keyed by the token
  reason @5 :Text;              # why a reject was sent
  instance @6 :UInt64;          # random per process start (0: not sent): under a known node id, a
                                # new value is a new process, and the earlier one is gone
}

struct Envelope {
  version @0 :UInt16;           # envelope version; frames of another version are refused
  kind @1 :Kind;
  srcNode @2 :UInt64;
  dstNode @3 :UInt64;
  srcActor @4 :UInt64;
  dstActor @5 :UInt64;
  requestId @6 :UInt64;
  typeId @7 :UInt32;            # message type id for the runtime's codec registry
  flags @8 :UInt32;
  traceIdHigh @9 :UInt64;       # optional trace context (0 = none)
  traceIdLow @10 :UInt64;
  spanId @11 :UInt64;
  handshake @12 :Handshake;     # set on hello/challenge/auth/accept/reject
}
