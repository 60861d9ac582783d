// A RefCodec for the fuzz targets: refs come back dangling, so decoding needs no bridge.
#pragma once

#include "runtime/codec.h"
#include "runtime/messages.capnp.h"

namespace troupe::fuzz {

class FakeRefCodec final : public runtime::RefCodec {
 public:
  void EncodeRef(const runtime::ActorRef& ref, runtime::wire::ActorAddress::Builder out) override {
    out.setNode(ref.node());
    out.setActor(ref.id());
    out.setAddress("fuzz");
  }
  runtime::ActorRef DecodeRef(runtime::wire::ActorAddress::Reader in) override {
    return runtime::ActorRef::Dangling(in.getNode(), in.getActor());
  }
};

}  // namespace troupe::fuzz
