// Envelope encoding/decoding on top of the generated Cap'n Proto code.
#include "transport/envelope.h"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>
#include <kj/io.h>

#include <cstring>

#include "transport/envelope.capnp.h"

namespace troupe::transport {
namespace {

constexpr size_t kScratchWords = kMaxEnvelopeBytes / sizeof(capnp::word);
// Handshakes are built in this many words of stack and grow into a second segment when they must.
constexpr size_t kBuilderWords = 32;
// A data envelope (no handshake) is one segment: the root pointer and the struct.
constexpr size_t kDataEnvelopeWords =
    1 + wire::Envelope::_capnpPrivate::dataWordSize + wire::Envelope::_capnpPrivate::pointerCount;
static_assert((1 + kDataEnvelopeWords) * sizeof(capnp::word) <= kMaxEnvelopeBytes);

template <class Builder>
void FillHeader(Builder env, FrameKind kind, const FrameHeader& header, uint16_t version) {
  env.setVersion(version);
  env.setKind(static_cast<wire::Kind>(kind));
  env.setSrcNode(header.src_node);
  env.setDstNode(header.dst_node);
  env.setSrcActor(header.src_actor);
  env.setDstActor(header.dst_actor);
  env.setRequestId(header.request_id);
  env.setTypeId(header.type_id);
  env.setFlags(header.flags);
  env.setTraceIdHigh(header.trace_id_high);
  env.setTraceIdLow(header.trace_id_low);
  env.setSpanId(header.span_id);
}

capnp::Data::Reader AsData(const std::string& s) {
  return capnp::Data::Reader(reinterpret_cast<const kj::byte*>(s.data()), s.size());
}

std::string FromData(capnp::Data::Reader d) {
  return std::string(reinterpret_cast<const char*>(d.begin()), d.size());
}

}  // namespace

Status EncodeEnvelope(FrameKind kind, const FrameHeader& header, const HandshakeInfo* handshake,
                      EncodedEnvelope* out, uint16_t version) {
  if (handshake != nullptr &&
      (handshake->node_name.size() > kMaxHandshakeText ||
       handshake->listen_address.size() > kMaxHandshakeText ||
       handshake->reason.size() > kMaxHandshakeText || handshake->nonce.size() > 64 ||
       handshake->proof.size() > 64)) {
    return InvalidArgumentError("handshake field too long to encode");
  }
  if (handshake == nullptr) {
    // Every frame's case, built in place: a one-word segment table (little-endian uint32
    // segments - 1 = 0, then the segment's size in words), then the segment, written by a
    // FlatMessageBuilder into zeroed words. Cap'n Proto's standard (unpacked) framing, 13 words,
    // with no builder arena and no copy. (Packed, it was a third of the size, but packing and
    // unpacking cost more per frame, about 270 against 110 ns for both ends, than the bigger
    // header costs UCX to carry.)
    auto* words = reinterpret_cast<capnp::word*>(out->bytes);
    std::memset(words, 0, (1 + kDataEnvelopeWords) * sizeof(capnp::word));
    capnp::FlatMessageBuilder builder(kj::arrayPtr(words + 1, kDataEnvelopeWords));
    FillHeader(builder.initRoot<wire::Envelope>(), kind, header, version);
    for (int i = 0; i < 4; ++i) out->bytes[4 + i] = static_cast<uint8_t>(kDataEnvelopeWords >> (8 * i));
    out->size = (1 + kDataEnvelopeWords) * sizeof(capnp::word);
    return OkStatus();
  }
  capnp::word scratch[kBuilderWords];
  std::memset(scratch, 0, sizeof(scratch));
  capnp::MallocMessageBuilder builder(kj::arrayPtr(scratch, kBuilderWords));
  auto env = builder.initRoot<wire::Envelope>();
  FillHeader(env, kind, header, version);
  {
    auto hs = env.initHandshake();
    hs.setNodeId(handshake->node_id);
    hs.setNodeName(handshake->node_name);
    hs.setListenAddress(handshake->listen_address);
    hs.setNonce(AsData(handshake->nonce));
    hs.setProof(AsData(handshake->proof));
    hs.setReason(handshake->reason);
    hs.setInstance(handshake->instance);
  }
  kj::ArrayOutputStream stream(kj::arrayPtr(out->bytes, kMaxEnvelopeBytes));
  KJ_IF_MAYBE(exception, kj::runCatchingExceptions([&]() { capnp::writeMessage(stream, builder); })) {
    return InvalidArgumentError("envelope exceeds " + std::to_string(kMaxEnvelopeBytes) + " bytes");
  }
  out->size = stream.getArray().size();
  return OkStatus();
}

StatusOr<DecodedEnvelope> DecodeEnvelope(const void* bytes, size_t size) {
  if (size == 0) return InvalidArgumentError("empty envelope");
  if (size > kMaxEnvelopeBytes) {
    return InvalidArgumentError("envelope of " + std::to_string(size) + " bytes exceeds the " +
                                std::to_string(kMaxEnvelopeBytes) + "-byte limit");
  }
  if (size % sizeof(capnp::word) != 0) {
    return InvalidArgumentError("envelope of " + std::to_string(size) + " bytes is not a whole number of 8-byte words");
  }
  // The received bytes need not be aligned: the reader works on an aligned copy.
  capnp::word scratch[kScratchWords];
  std::memcpy(scratch, bytes, size);
  const size_t words = size / sizeof(capnp::word);
  DecodedEnvelope out;
  KJ_IF_MAYBE(exception, kj::runCatchingExceptions([&]() {
    capnp::ReaderOptions options;
    options.traversalLimitInWords = kScratchWords * 2;
    options.nestingLimit = 8;
    // The reader checks the segment table and every pointer against the copy's bounds.
    capnp::FlatArrayMessageReader reader(kj::arrayPtr(scratch, words), options);
    KJ_REQUIRE(reader.getEnd() == scratch + words, "bytes after the envelope's last segment");
    auto env = reader.getRoot<wire::Envelope>();
    out.version = env.getVersion();
    out.kind = static_cast<FrameKind>(env.getKind());
    out.header.src_node = env.getSrcNode();
    out.header.dst_node = env.getDstNode();
    out.header.src_actor = env.getSrcActor();
    out.header.dst_actor = env.getDstActor();
    out.header.request_id = env.getRequestId();
    out.header.type_id = env.getTypeId();
    out.header.flags = env.getFlags();
    out.header.trace_id_high = env.getTraceIdHigh();
    out.header.trace_id_low = env.getTraceIdLow();
    out.header.span_id = env.getSpanId();
    if (env.hasHandshake()) {
      auto hs = env.getHandshake();
      out.has_handshake = true;
      out.handshake.node_id = hs.getNodeId();
      out.handshake.node_name = hs.getNodeName();
      out.handshake.listen_address = hs.getListenAddress();
      out.handshake.nonce = FromData(hs.getNonce());
      out.handshake.proof = FromData(hs.getProof());
      out.handshake.reason = hs.getReason();
      out.handshake.instance = hs.getInstance();
    }
  })) {
    return InvalidArgumentError("malformed envelope: " +
                                std::string(exception->getDescription().cStr()));
  }
  if (out.version != kEnvelopeVersion) {
    return FailedPreconditionError("unknown envelope version " + std::to_string(out.version) +
                                   " (this build speaks " + std::to_string(kEnvelopeVersion) + ")");
  }
  if (static_cast<uint16_t>(out.kind) > static_cast<uint16_t>(FrameKind::kBatch)) {
    return InvalidArgumentError("unknown envelope kind " +
                                std::to_string(static_cast<uint16_t>(out.kind)));
  }
  for (const std::string* s : {&out.handshake.node_name, &out.handshake.listen_address,
                               &out.handshake.reason}) {
    if (s->size() > kMaxHandshakeText) return InvalidArgumentError("handshake text too long");
  }
  return out;
}

}  // namespace troupe::transport
