// Tests of batch framing: records written by AppendBatchRecord and split from untrusted bytes.
#include "transport/batch.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace troupe::transport {
namespace {

constexpr size_t kNoLimit = 64 << 20;

FrameHeader HeaderFor(uint64_t request_id) {
  FrameHeader h;
  h.src_node = 5;
  h.dst_node = 6;
  h.dst_actor = 7;
  h.request_id = request_id;
  h.type_id = 1100;
  return h;
}

EncodedEnvelope Envelope(FrameKind kind, const FrameHeader& header, const HandshakeInfo* hs = nullptr) {
  EncodedEnvelope env;
  EXPECT_TRUE(EncodeEnvelope(kind, header, hs, &env).ok());
  return env;
}

// One record as AppendBatchRecord writes it.
std::string Record(uint64_t request_id, const std::string& payload) {
  std::string out;
  AppendBatchRecord(Envelope(FrameKind::kData, HeaderFor(request_id)),
                    reinterpret_cast<const uint8_t*>(payload.data()), payload.size(), &out);
  return out;
}

std::string U32(uint32_t v) {
  std::string out;
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  return out;
}

SplitBatchResult Split(const std::string& batch, size_t max_frame_bytes = kNoLimit) {
  return SplitBatch(reinterpret_cast<const uint8_t*>(batch.data()), batch.size(), max_frame_bytes);
}

std::string PayloadOf(const BatchRecord& r) { return std::string(reinterpret_cast<const char*>(r.payload), r.payload_size); }

TEST(BatchFraming, RecordLayoutIsSizeEnvelopeSizePayloadLittleEndian) {
  const EncodedEnvelope env = Envelope(FrameKind::kData, HeaderFor(1));
  const std::string record = Record(1, "abc");
  ASSERT_EQ(record.size(), 4 + env.size + 4 + 3);
  EXPECT_EQ(record.substr(0, 4), U32(static_cast<uint32_t>(env.size)));
  EXPECT_EQ(record.substr(4, env.size), std::string(reinterpret_cast<const char*>(env.bytes), env.size));
  EXPECT_EQ(record.substr(4 + env.size, 4), U32(3));
  EXPECT_EQ(record.substr(8 + env.size), "abc");
}

TEST(BatchFraming, GoodBatchSplitsIntoItsFramesInOrder) {
  const std::string batch = Record(1, "one") + Record(2, "") + Record(3, std::string(2048, 'x'));
  auto split = Split(batch);
  ASSERT_TRUE(split.status.ok()) << split.status;
  ASSERT_EQ(split.records.size(), 3u);
  EXPECT_EQ(split.records[0].header, HeaderFor(1));
  EXPECT_EQ(PayloadOf(split.records[0]), "one");
  EXPECT_EQ(split.records[0].offset, 0u);
  EXPECT_EQ(split.records[1].header, HeaderFor(2));
  EXPECT_EQ(split.records[1].payload_size, 0u) << "a zero-length payload is a frame like any other";
  EXPECT_EQ(split.records[1].offset, Record(1, "one").size());
  EXPECT_EQ(split.records[2].header, HeaderFor(3));
  EXPECT_EQ(PayloadOf(split.records[2]), std::string(2048, 'x'));
  for (const auto& r : split.records) EXPECT_FALSE(r.oversized);
  // The payloads are views into the batch, not copies.
  EXPECT_GE(split.records[2].payload, reinterpret_cast<const uint8_t*>(batch.data()));
  EXPECT_LE(split.records[2].payload + split.records[2].payload_size,
            reinterpret_cast<const uint8_t*>(batch.data()) + batch.size());
}

TEST(BatchFraming, EmptyBatchHasNoFramesAndNoFault) {
  auto split = Split("");
  EXPECT_TRUE(split.status.ok()) << split.status;
  EXPECT_TRUE(split.records.empty());
}

TEST(BatchFraming, TruncatedEnvelopeSizeIsAFaultAfterTheGoodFrames) {
  const std::string good = Record(1, "one") + Record(2, "two");
  auto split = Split(good + std::string("\x05\x00", 2));
  ASSERT_EQ(split.records.size(), 2u) << "the frames before the fault are kept";
  EXPECT_EQ(split.status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(split.status.message().find("record 2 at byte " + std::to_string(good.size())), std::string::npos)
      << split.status;
  EXPECT_NE(split.status.message().find("truncated: 2 byte(s) left where the 4-byte envelope size"), std::string::npos)
      << split.status;
}

TEST(BatchFraming, TruncatedPayloadSizeIsAFault) {
  const EncodedEnvelope env = Envelope(FrameKind::kData, HeaderFor(1));
  const std::string cut = U32(static_cast<uint32_t>(env.size)) +
                          std::string(reinterpret_cast<const char*>(env.bytes), env.size) + std::string(3, '\0');
  auto split = Split(cut);
  EXPECT_TRUE(split.records.empty());
  EXPECT_NE(split.status.message().find("record 0 at byte 0: truncated: 3 byte(s) left where the 4-byte payload size"),
            std::string::npos)
      << split.status;
}

TEST(BatchFraming, PayloadSizeBeyondTheBatchIsAFault) {
  std::string overlong = Record(1, "three");
  const size_t size_at = overlong.size() - 5 - 4;
  overlong[size_at + 3] = '\x7f';  // 0x7f000005 bytes
  auto split = Split(Record(9, "ok") + overlong);
  ASSERT_EQ(split.records.size(), 1u);
  EXPECT_EQ(split.status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(split.status.message().find("record 1"), std::string::npos) << split.status;
  EXPECT_NE(split.status.message().find("payload size " + std::to_string(0x7f000005u) + " beyond the batch (5 bytes left)"),
            std::string::npos)
      << split.status;
}

TEST(BatchFraming, PayloadSizeOneByteTooLongIsAFault) {
  std::string record = Record(1, "abcd");
  record.pop_back();  // the size still says 4
  auto split = Split(record);
  EXPECT_TRUE(split.records.empty());
  EXPECT_NE(split.status.message().find("payload size 4 beyond the batch (3 bytes left)"), std::string::npos)
      << split.status;
}

TEST(BatchFraming, EnvelopeSizeBeyondTheBatchIsAFault) {
  auto split = Split(U32(200) + std::string(100, '\0'));
  EXPECT_TRUE(split.records.empty());
  EXPECT_NE(split.status.message().find("envelope size 200 beyond the batch (100 bytes left)"), std::string::npos)
      << split.status;
}

TEST(BatchFraming, EnvelopeSizeThatWouldOverflowIsAFault) {
  // 0xffffffff: added to the position it would wrap a 32-bit offset; it must be refused, not followed.
  auto split = Split(Record(1, "a") + U32(0xffffffffu) + std::string(8, '\0'));
  ASSERT_EQ(split.records.size(), 1u);
  EXPECT_NE(split.status.message().find("envelope size 4294967295 beyond the batch"), std::string::npos)
      << split.status;
}

TEST(BatchFraming, EnvelopeAboveTheEnvelopeLimitIsAFaultEvenWhenTheBatchHoldsIt) {
  const std::string big(kMaxEnvelopeBytes + 8, '\0');
  auto split = Split(U32(static_cast<uint32_t>(big.size())) + big + U32(0));
  EXPECT_TRUE(split.records.empty());
  EXPECT_NE(split.status.message().find("above the " + std::to_string(kMaxEnvelopeBytes) + "-byte envelope limit"),
            std::string::npos)
      << split.status;
}

TEST(BatchFraming, ZeroLengthEnvelopeIsAFault) {
  auto split = Split(U32(0) + U32(0));
  EXPECT_TRUE(split.records.empty());
  EXPECT_EQ(split.status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(split.status.message().find("record 0 at byte 0: empty envelope"), std::string::npos) << split.status;
}

TEST(BatchFraming, GarbageEnvelopeIsAFault) {
  auto split = Split(Record(1, "a") + U32(16) + std::string(16, '\xff') + U32(1) + "x");
  ASSERT_EQ(split.records.size(), 1u);
  EXPECT_EQ(split.status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(split.status.message().find("record 1"), std::string::npos) << split.status;
}

TEST(BatchFraming, EnvelopeOfAnotherVersionIsAFault) {
  EncodedEnvelope old;
  ASSERT_TRUE(EncodeEnvelope(FrameKind::kData, HeaderFor(1), nullptr, &old, kEnvelopeVersion - 1).ok());
  std::string batch;
  AppendBatchRecord(old, nullptr, 0, &batch);
  auto split = Split(batch);
  EXPECT_TRUE(split.records.empty());
  EXPECT_NE(split.status.message().find("unknown envelope version"), std::string::npos) << split.status;
}

TEST(BatchFraming, RecordThatIsNotADataFrameIsAFault) {
  HandshakeInfo hello;
  hello.node_id = 3;
  hello.nonce = std::string(32, 'n');
  for (FrameKind kind : {FrameKind::kHello, FrameKind::kAccept, FrameKind::kBatch}) {
    std::string batch = Record(1, "a");
    AppendBatchRecord(Envelope(kind, HeaderFor(2), kind == FrameKind::kBatch ? nullptr : &hello), nullptr, 0, &batch);
    auto split = Split(batch);
    ASSERT_EQ(split.records.size(), 1u);
    EXPECT_NE(split.status.message().find("not a data frame (kind " + std::to_string(static_cast<int>(kind)) + ")"),
              std::string::npos)
        << split.status;
  }
}

TEST(BatchFraming, PayloadAboveMaxFrameBytesIsMarkedAndTheBatchGoesOn) {
  const std::string batch = Record(1, "12345") + Record(2, "1234") + Record(3, "123456");
  auto split = Split(batch, /*max_frame_bytes=*/4);
  ASSERT_TRUE(split.status.ok()) << split.status;
  ASSERT_EQ(split.records.size(), 3u);
  EXPECT_TRUE(split.records[0].oversized);
  EXPECT_FALSE(split.records[1].oversized) << "a payload of exactly max_frame_bytes is allowed";
  EXPECT_EQ(PayloadOf(split.records[1]), "1234");
  EXPECT_TRUE(split.records[2].oversized);
  EXPECT_EQ(split.records[2].header, HeaderFor(3)) << "the record after an oversized one is found";
}

TEST(BatchFraming, ReaderStopsAtTheFaultAndStaysThere) {
  const std::string batch = Record(1, "a") + std::string(3, '\0');
  BatchReader reader(reinterpret_cast<const uint8_t*>(batch.data()), batch.size(), kNoLimit);
  BatchRecord record;
  ASSERT_TRUE(reader.Next(&record));
  EXPECT_TRUE(reader.status().ok());
  EXPECT_FALSE(reader.Next(&record));
  EXPECT_FALSE(reader.status().ok());
  EXPECT_FALSE(reader.Next(&record)) << "nothing is read after a fault";
  EXPECT_NE(reader.status().message().find("record 1"), std::string::npos) << reader.status();
}

TEST(BatchFraming, EveryTruncationOfAGoodBatchKeepsOnlyWholeRecords) {
  const std::string batch = Record(1, "one") + Record(2, "two!");
  const size_t first = Record(1, "one").size();
  for (size_t cut = 0; cut < batch.size(); ++cut) {
    auto split = Split(batch.substr(0, cut));
    const size_t whole = cut >= first ? 1 : 0;
    EXPECT_EQ(split.records.size(), whole) << "cut at " << cut;
    EXPECT_EQ(split.status.ok(), cut == 0 || cut == first) << "cut at " << cut << ": " << split.status;
  }
}

}  // namespace
}  // namespace troupe::transport
