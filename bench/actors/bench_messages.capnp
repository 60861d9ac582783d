# The actor benchmark's request and reply.
@0xb5d2c8e4f1a37690;

$import "/capnp/c++.capnp".namespace("troupe::bench::wire");

struct Ping { value @0 :UInt64; }
struct Pong { value @0 :UInt64; }
