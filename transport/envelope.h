// Encoding and decoding of the frame envelope (transport/envelope.capnp) without exposing capnp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/status.h"
#include "transport/frame.h"

namespace troupe::transport {

/// The envelope kinds; numbers match envelope.capnp's Kind.
enum class FrameKind : uint16_t { kData = 0, kHello = 1, kChallenge = 2, kAuth = 3, kAccept = 4, kReject = 5, kBatch = 6 };

/// The handshake fields of hello/challenge/auth/accept/reject envelopes.
struct HandshakeInfo {
  NodeId node_id = 0;
  std::string node_name;
  std::string listen_address;
  std::string nonce;
  std::string proof;
  std::string reason;
  /// Random per process start (0: not sent). A hello or challenge under a known node id with
  /// another instance comes from a new process: the earlier one is gone.
  uint64_t instance = 0;
};

/// The most bytes an encoded envelope may take; larger input is refused as malformed.
inline constexpr size_t kMaxEnvelopeBytes = 2048;
/// Longest node name / address accepted in a handshake.
inline constexpr size_t kMaxHandshakeText = 256;

/// An encoded envelope (Cap'n Proto's standard framing) held inline, without allocation.
struct EncodedEnvelope {
  alignas(8) uint8_t bytes[kMaxEnvelopeBytes];  // word-aligned: data envelopes are built in place
  size_t size = 0;
};

/// Encodes an envelope. `handshake` may be null for data frames. Fails with
/// InvalidArgument when the handshake text is too long to fit.
Status EncodeEnvelope(FrameKind kind, const FrameHeader& header, const HandshakeInfo* handshake,
                      EncodedEnvelope* out, uint16_t version = kEnvelopeVersion);

/// A decoded envelope.
struct DecodedEnvelope {
  uint16_t version = 0;
  FrameKind kind = FrameKind::kData;
  FrameHeader header;
  bool has_handshake = false;
  HandshakeInfo handshake;
};

/// Decodes untrusted bytes. Never throws or crashes: garbage, truncation, excessive size or
/// an unknown kind give InvalidArgument; a version other than kEnvelopeVersion gives
/// FailedPrecondition with the version in the message.
StatusOr<DecodedEnvelope> DecodeEnvelope(const void* bytes, size_t size);

}  // namespace troupe::transport
