// Tests of envelope encoding and of decoding untrusted bytes.
#include "transport/envelope.h"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "transport/envelope.capnp.h"

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
  // Cap'n Proto's standard framing: a one-word segment table, the root pointer, ten data words
  // and the (null) handshake pointer.
  EXPECT_EQ(enc.size, 104u);
  auto dec = DecodeEnvelope(enc.bytes, enc.size);
  ASSERT_TRUE(dec.ok()) << dec.status();
  EXPECT_EQ(dec->kind, FrameKind::kData);
  EXPECT_EQ(dec->header, SampleHeader());
  EXPECT_FALSE(dec->has_handshake);
}

TEST(Envelope, ADataEnvelopeIsCapnProtosStandardFraming) {
  // The in-place encoding gives exactly the bytes capnp::writeMessage gives for the same fields.
  capnp::MallocMessageBuilder builder;
  auto env = builder.initRoot<wire::Envelope>();
  FrameHeader h = SampleHeader();
  env.setVersion(kEnvelopeVersion);
  env.setKind(wire::Kind::BATCH);
  env.setSrcNode(h.src_node);
  env.setDstNode(h.dst_node);
  env.setSrcActor(h.src_actor);
  env.setDstActor(h.dst_actor);
  env.setRequestId(h.request_id);
  env.setTypeId(h.type_id);
  env.setFlags(h.flags);
  env.setTraceIdHigh(h.trace_id_high);
  env.setTraceIdLow(h.trace_id_low);
  env.setSpanId(h.span_id);
  kj::Array<capnp::word> flat = capnp::messageToFlatArray(builder);
  auto expected = flat.asBytes();
  EncodedEnvelope enc;
  std::memset(enc.bytes, 0xa5, sizeof(enc.bytes));  // what a reused send slot may hold
  ASSERT_TRUE(EncodeEnvelope(FrameKind::kBatch, h, nullptr, &enc).ok());
  ASSERT_EQ(enc.size, expected.size());
  EXPECT_EQ(std::vector<uint8_t>(enc.bytes, enc.bytes + enc.size),
            std::vector<uint8_t>(expected.begin(), expected.end()));
}

TEST(Envelope, HandshakeRoundTrips) {
  HandshakeInfo hs;
  hs.node_id = 5;
  hs.node_name = "node-a";
  hs.listen_address = "127.0.0.1:4000";
  hs.nonce = std::string(32, '\x01');
  hs.proof = std::string(32, '\x02');
  hs.instance = 0xfedcba9876543210ull;
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
  EXPECT_EQ(dec->handshake.instance, hs.instance) << "the process instance tells a restarted node apart";
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

TEST(Envelope, HugeSegmentTablesAreRejectedWithoutAllocating) {
  // Segment-table words {segments - 1, size of the first segment in words}, then one word.
  const uint32_t huge_segment[] = {0, 0x7fffffff, 0, 0};
  const uint32_t many_segments[] = {0x7fffffff, 1, 0, 0};
  for (const uint32_t* claim : {huge_segment, many_segments}) {
    auto dec = DecodeEnvelope(claim, 4 * sizeof(uint32_t));
    ASSERT_FALSE(dec.ok());
    EXPECT_EQ(dec.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(dec.status().message().find("malformed envelope"), std::string::npos) << dec.status();
  }
}

TEST(Envelope, BytesAfterTheMessageAndPartialWordsAreRejected) {
  EncodedEnvelope enc;
  ASSERT_TRUE(EncodeEnvelope(FrameKind::kData, SampleHeader(), nullptr, &enc).ok());
  uint8_t longer[sizeof(enc.bytes) + 8] = {};
  std::memcpy(longer, enc.bytes, enc.size);
  auto trailing = DecodeEnvelope(longer, enc.size + 8);
  ASSERT_FALSE(trailing.ok());
  EXPECT_NE(trailing.status().message().find("after the envelope"), std::string::npos) << trailing.status();
  auto partial = DecodeEnvelope(longer, enc.size + 3);
  ASSERT_FALSE(partial.ok());
  EXPECT_NE(partial.status().message().find("8-byte words"), std::string::npos) << partial.status();
}

TEST(Envelope, OverLimitSizeIsRejected) {
  std::vector<uint8_t> big(kMaxEnvelopeBytes + 8, 0);
  EXPECT_EQ(DecodeEnvelope(big.data(), big.size()).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace troupe::transport
