# The API gateway's protocol with the head's api actor (type ids 1500-1549, actors/api/messages.h,
# where each message's sender and reply are).
@0xbbfeb6c0f8703229;

$import "/capnp/c++.capnp".namespace("troupe::api::wire");

struct Admit {
  apiKey @0 :Text;          # as the client sent it (never logged)
  deployment @1 :Text;      # the body's "model"; empty for /v1/models
  action @2 :UInt32;        # api::Action as an integer
  promptTokens @3 :UInt32;  # the gateway's estimate (an upper bound)
  maxTokens @4 :UInt32;
}
struct Header { name @0 :Text; value @1 :Text; }
struct AdmitReply {
  admitted @0 :Bool;
  httpStatus @1 :UInt32 = 200;
  errorType @2 :Text;
  message @3 :Text;
  retryAfterS @4 :UInt32;
  reservation @5 :UInt64;
  keyId @6 :Text;
  tenant @7 :Text;
  deployments @8 :List(Text);
  headers @9 :List(Header);
}
struct Settle {
  reservation @0 :UInt64;
  deployment @1 :Text;
  promptTokens @2 :UInt32;
  completionTokens @3 :UInt32;
  error @4 :Bool;
}
struct ApiCommand {
  op @0 :Text;
  name @1 :Text;
  body @2 :Data;
  apiKey @3 :Text;
  caller @4 :Text;
}
struct ApiCommandReply { json @0 :Data; }
