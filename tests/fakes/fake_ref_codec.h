// FakeRefCodec: actor references travel as (node, actor) and come back dangling, so codecs can be
// tested (and fuzzed) without a bridge.
#pragma once

#include "runtime/codec.h"
#include "runtime/messages.capnp.h"

namespace troupe::testing {

class FakeRefCodec final : public runtime::RefCodec {
 public:
  void EncodeRef(const runtime::ActorRef& ref, runtime::wire::ActorAddress::Builder out) override {
    out.setNode(ref.node());
    out.setActor(ref.id());
    out.setAddress("fake");
  }
  runtime::ActorRef DecodeRef(runtime::wire::ActorAddress::Reader in) override {
    return runtime::ActorRef::Dangling(in.getNode(), in.getActor());
  }
};

}  // namespace troupe::testing
