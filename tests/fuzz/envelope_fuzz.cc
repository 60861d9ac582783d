// Fuzz target: the transport's frame envelope decoder, which reads every received frame's
// header before anything else does. Untrusted bytes must give a status, never a crash; what
// decodes must encode again and decode to the same header.
#include <cstddef>
#include <cstdint>

#include "transport/envelope.h"

using troupe::transport::DecodeEnvelope;
using troupe::transport::EncodedEnvelope;
using troupe::transport::EncodeEnvelope;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto decoded = DecodeEnvelope(data, size);
  if (!decoded.ok()) return 0;
  static EncodedEnvelope encoded;
  const auto* handshake = decoded->has_handshake ? &decoded->handshake : nullptr;
  if (!EncodeEnvelope(decoded->kind, decoded->header, handshake, &encoded, decoded->version).ok()) return 0;
  auto again = DecodeEnvelope(encoded.bytes, encoded.size);
  if (!again.ok() || again->kind != decoded->kind || again->header.request_id != decoded->header.request_id ||
      again->header.type_id != decoded->header.type_id || again->header.dst_actor != decoded->header.dst_actor) {
    __builtin_trap();
  }
  return 0;
}
