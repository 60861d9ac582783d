# The counter example's messages.
@0xa7c3e1f0b2d94c51;

$import "/capnp/c++.capnp".namespace("counter::wire");

struct Increment { by @0 :Int64; }
struct Value { value @0 :Int64; }
