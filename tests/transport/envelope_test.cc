// Tests of envelope encoding and of decoding untrusted bytes.
#include "transport/envelope.h"

#include <gtest/gtest.h>

#include <random>

namespace troupe::transport {
namespace {

FrameHeader SampleHeader() {
  FrameHeader h;
  h.src_node = 11;
  h.dst_node = 22;
  h.src_actor = 33;
  h.dst_actor = 44;
  h.request_id = 55;
  h.type_id = 66;
  h.flags = 7;
  h.trace_id_high = 0xdeadbeef;
  h.trace_id_low = 0xfeedface;
  h.span_id = 99;
  return h;
}

TEST(Envelope, DataFrameRoundTrips) {
  EncodedEnvelope enc;
  ASSERT_TRUE(EncodeEnvelope(FrameKind::kData, SampleHeader(), nullptr, &enc).ok());
  // Small enough for UCX's short-message path with an 8-byte payload.
  EXPECT_LE(enc.size, 64u);
  auto dec = DecodeEnvelope(enc.bytes, enc.size);
  ASSERT_TRUE(dec.ok()) << dec.status();
  EXPECT_EQ(dec->kind, FrameKind::kData);
  EXPECT_EQ(dec->header, SampleHeader());
  EXPECT_FALSE(dec->has_handshake);
}

TEST(Envelope, HandshakeRoundTrips) {
  HandshakeInfo hs;
  hs.node_id = 5;
  hs.node_name = "node-a";
  hs.listen_address = "127.0.0.1:4000";
  hs.nonce = std::string(32, '\x01');
  hs.proof = std::string(32, '\x02');
  EncodedEnvelope enc;
  ASSERT_TRUE(EncodeEnvelope(FrameKind::kChallenge, SampleHeader(), &hs, &enc).ok());
  auto dec = DecodeEnvelope(enc.bytes, enc.size);
  ASSERT_TRUE(dec.ok()) << dec.status();
  EXPECT_EQ(dec->kind, FrameKind::kChallenge);
  ASSERT_TRUE(dec->has_handshake);
  EXPECT_EQ(dec->handshake.node_name, "node-a");
  EXPECT_EQ(dec->handshake.listen_address, "127.0.0.1:4000");
  EXPECT_EQ(dec->handshake.nonce, hs.nonce);
  EXPECT_EQ(dec->handshake.proof, hs.proof);
}

TEST(Envelope, OversizedHandshakeTextIsRefusedAtEncode) {
  HandshakeInfo hs;
  hs.node_name = std::string(kMaxHandshakeText + 1, 'x');
  EncodedEnvelope enc;
  EXPECT_EQ(EncodeEnvelope(FrameKind::kHello, {}, &hs, &enc).code(), StatusCode::kInvalidArgument);
}

TEST(Envelope, UnknownVersionIsFailedPreconditionNamingTheVersion) {
  EncodedEnvelope enc;
  ASSERT_TRUE(EncodeEnvelope(FrameKind::kData, SampleHeader(), nullptr, &enc, /*version=*/99).ok());
  auto dec = DecodeEnvelope(enc.bytes, enc.size);
  ASSERT_FALSE(dec.ok());
  EXPECT_EQ(dec.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(dec.status().message().find("99"), std::string::npos);
}

TEST(Envelope, EveryTruncationIsRejectedWithoutCrashing) {
  HandshakeInfo hs;
  hs.node_name = "node-b";
  hs.nonce = std::string(32, 'n');
  EncodedEnvelope enc;
  ASSERT_TRUE(EncodeEnvelope(FrameKind::kHello, SampleHeader(), &hs, &enc).ok());
  for (size_t len = 0; len < enc.size; ++len) {
    auto dec = DecodeEnvelope(enc.bytes, len);
    EXPECT_FALSE(dec.ok()) << "a " << len << "-byte prefix of a " << enc.size << "-byte envelope decoded";
  }
}

TEST(Envelope, RandomBytesNeverCrashTheDecoder) {
  std::mt19937_64 rng(12345);  // fixed seed: deterministic
  uint8_t bytes[kMaxEnvelopeBytes + 64];
  size_t accepted = 0;
  for (int i = 0; i < 20000; ++i) {
    size_t len = rng() % sizeof(bytes);
    for (size_t j = 0; j < len; ++j) bytes[j] = static_cast<uint8_t>(rng());
    auto dec = DecodeEnvelope(bytes, len);
    if (dec.ok()) ++accepted;
  }
  // Random bytes almost never form a valid version-1 envelope.
  EXPECT_LT(accepted, 20u);
}

TEST(Envelope, MutatedValidEnvelopesNeverCrashTheDecoder) {
  HandshakeInfo hs;
  hs.node_name = "node-c";
  hs.nonce = std::string(32, 'n');
  hs.proof = std::string(32, 'p');
  EncodedEnvelope enc;
  ASSERT_TRUE(EncodeEnvelope(FrameKind::kAuth, SampleHeader(), &hs, &enc).ok());
  std::mt19937_64 rng(777);
  for (int i = 0; i < 20000; ++i) {
    EncodedEnvelope copy = enc;
    int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) copy.bytes[rng() % copy.size] ^= static_cast<uint8_t>(1u << (rng() % 8));
    auto dec = DecodeEnvelope(copy.bytes, copy.size);
    if (dec.ok()) {
      EXPECT_LE(dec->handshake.node_name.size(), kMaxHandshakeText);
    }
  }
}

TEST(Envelope, HugeSegmentTableIsRejectedWithoutAllocating) {
  // Packed form of the segment-table word {segments - 1 = 0, size = 0x7fffffff words}:
  // tag 0xf0 says bytes 4..7 are non-zero, and those bytes follow.
  const uint8_t claim[] = {0xf0, 0xff, 0xff, 0xff, 0x7f};
  auto dec = DecodeEnvelope(claim, sizeof(claim));
  ASSERT_FALSE(dec.ok());
  EXPECT_EQ(dec.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(dec.status().message().find("too large"), std::string::npos) << dec.status();
}

TEST(Envelope, OverLimitSizeIsRejected) {
  std::vector<uint8_t> big(kMaxEnvelopeBytes + 8, 0);
  EXPECT_EQ(DecodeEnvelope(big.data(), big.size()).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace troupe::transport
