# Messages of the test actors used by the runtime's unit, integration and example tests.
@0xe1d0a9b5c2f46e37;

$import "/capnp/c++.capnp".namespace("troupe::testing::wire");
using Rt = import "/runtime/messages.capnp";

struct Add { n @0 :Int64; }
struct Get {}
struct Count { value @0 :Int64; }
struct Seq { n @0 :UInt64; }
struct SeqReport {}
struct SeqResult { received @0 :UInt64; inOrder @1 :Bool; }
struct CallVia { target @0 :Rt.ActorAddress; n @1 :Int64; }
struct Quit { code @0 :UInt8; text @1 :Text; }
struct Hold {}
struct CounterArgs { start @0 :Int64; }
