// Bad input from a raw socket or a hostile UCX peer is rejected and counted, and the
// process keeps serving a good peer afterwards.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <random>

#include "tests/integration/transport_test_util.h"
#include "tests/support/raw_ucx_client.h"
#include "transport/address.h"
#include "transport/auth.h"
#include "transport/envelope.h"

namespace troupe::testing {
namespace {

using transport::EncodedEnvelope;
using transport::EncodeEnvelope;
using transport::FrameHeader;
using transport::FrameKind;
using transport::HandshakeInfo;
using transport::UcxTransport;
using namespace std::chrono_literals;

constexpr uint64_t kMaxFrame = 1u << 20;

std::string Encode(FrameKind kind, const HandshakeInfo* hs, uint16_t version = transport::kEnvelopeVersion) {
  EncodedEnvelope enc;
  FrameHeader h;
  h.dst_node = kPeerNode;
  EXPECT_TRUE(EncodeEnvelope(kind, h, hs, &enc, version).ok());
  return std::string(reinterpret_cast<const char*>(enc.bytes), enc.size);
}

HandshakeInfo Hello(transport::NodeId id, const std::string& nonce) {
  HandshakeInfo hs;
  hs.node_id = id;
  hs.node_name = "hostile";
  hs.nonce = nonce;
  return hs;
}

class BadInputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    peer_ = StartPeer({"--max-frame", std::to_string(kMaxFrame), "--handshake-timeout-ms", "1000"},
                      &peer_address_);
    ASSERT_NE(peer_, nullptr);
  }

  /// A well-behaved peer with the right token still gets its echo.
  void ExpectGoodPeerServed(transport::NodeId id) {
    auto config = LocalConfig("");
    config.node_id = id;
    UcxTransport good(config);
    TransportInbox inbox;
    ASSERT_TRUE(good.Start(inbox.Handler()).ok());
    good.AddPeer(kPeerNode, peer_address_);
    ASSERT_TRUE(good.Send(kPeerNode, FrameHeader{}, Buffer::CopyOf("still-serving")).ok());
    ASSERT_TRUE(inbox.WaitForFrames(1, 20s)) << "the peer stopped serving good peers";
    EXPECT_EQ(inbox.TakeFrames()[0].second.payload.view(), "still-serving");
  }

  std::unique_ptr<ChildProcess> peer_;
  std::string peer_address_;
};

TEST_F(BadInputTest, RawSocketGarbageNeverCrashesTheListener) {
  auto addr = transport::ParseSocketAddress(peer_address_);
  ASSERT_TRUE(addr.ok());
  std::mt19937_64 rng(42);
  std::vector<int> open_sockets;
  for (int attempt = 0; attempt < 5; ++attempt) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(connect(fd, reinterpret_cast<const sockaddr*>(&addr->storage), addr->length), 0);
    std::string garbage(1024 * (attempt + 1), '\0');
    for (auto& c : garbage) c = static_cast<char>(rng());
    ASSERT_GT(write(fd, garbage.data(), garbage.size()), 0);
    if (attempt % 2 == 0) {
      close(fd);
    } else {
      open_sockets.push_back(fd);  // a connection that stays open and says nothing useful
    }
  }
  ExpectGoodPeerServed(10);
  for (int fd : open_sockets) close(fd);
  ExpectGoodPeerServed(11);
}

TEST_F(BadInputTest, GarbageTruncatedAndUnknownVersionEnvelopesAreRejectedAndCounted) {
  RawUcxClient hostile;
  ASSERT_TRUE(hostile.Connect(peer_address_, "").ok());
  std::mt19937_64 rng(7);
  std::string garbage(64, '\0');
  for (auto& c : garbage) c = static_cast<char>(rng());
  ASSERT_TRUE(hostile.SendAm(garbage, "").ok());                       // garbage envelope

  RawUcxClient truncated;
  ASSERT_TRUE(truncated.Connect(peer_address_, "").ok());
  HandshakeInfo hello = Hello(20, transport::RandomNonce());
  std::string full = Encode(FrameKind::kHello, &hello);
  ASSERT_TRUE(truncated.SendAm(full.substr(0, full.size() / 2 / 8 * 8), "").ok());  // truncated envelope

  RawUcxClient old_version;
  ASSERT_TRUE(old_version.Connect(peer_address_, "").ok());
  ASSERT_TRUE(old_version.SendAm(Encode(FrameKind::kHello, &hello, /*version=*/99), "").ok());

  RawUcxClient data_first;
  ASSERT_TRUE(data_first.Connect(peer_address_, "").ok());
  ASSERT_TRUE(data_first.SendAm(Encode(FrameKind::kData, nullptr), "payload before auth").ok());

  RawUcxClient anonymous;
  ASSERT_TRUE(anonymous.Connect(peer_address_, "").ok());
  ASSERT_TRUE(anonymous.SendAm(Encode(FrameKind::kHello, &hello), "", /*reply=*/false).ok());

  // Let the frames land before asking for the counters.
  for (RawUcxClient* c : {&hostile, &truncated, &old_version, &data_first, &anonymous}) c->Progress(50ms);
  ExpectGoodPeerServed(12);
  auto stats = PeerStats(peer_.get());
  EXPECT_GE(stats["rejected_malformed"], 2u) << "garbage and truncated envelopes";
  EXPECT_GE(stats["rejected_version"], 1u);
  EXPECT_GE(stats["rejected_unauthenticated"], 2u) << "data before auth, and a frame with no reply endpoint";
  EXPECT_EQ(stats["frames_received"], 1u) << "only the good peer's frame was delivered";
}

TEST_F(BadInputTest, WrongClientProofIsRefusedWithARejectAndCounted) {
  RawUcxClient hostile;
  ASSERT_TRUE(hostile.Connect(peer_address_, "").ok());
  std::string nonce = transport::RandomNonce();
  HandshakeInfo hello = Hello(30, nonce);
  ASSERT_TRUE(hostile.SendAm(Encode(FrameKind::kHello, &hello), "").ok());
  auto challenge_bytes = hostile.ReceiveAm(10s);
  ASSERT_TRUE(challenge_bytes.ok()) << "no challenge: " << challenge_bytes.status();
  auto challenge = transport::DecodeEnvelope(challenge_bytes->data(), challenge_bytes->size());
  ASSERT_TRUE(challenge.ok());
  ASSERT_EQ(challenge->kind, FrameKind::kChallenge);
  EXPECT_EQ(challenge->handshake.proof.find(kTestToken), std::string::npos) << "token sent in the clear";

  HandshakeInfo auth;
  auth.node_id = 30;
  auth.proof = transport::ComputeProof("wrong-token", transport::AuthRole::kClient, nonce,
                                       challenge->handshake.nonce, 30, kPeerNode);
  ASSERT_TRUE(hostile.SendAm(Encode(FrameKind::kAuth, &auth), "").ok());
  auto reject_bytes = hostile.ReceiveAm(10s);
  ASSERT_TRUE(reject_bytes.ok()) << "no reject: " << reject_bytes.status();
  auto reject = transport::DecodeEnvelope(reject_bytes->data(), reject_bytes->size());
  ASSERT_TRUE(reject.ok());
  EXPECT_EQ(reject->kind, FrameKind::kReject);
  EXPECT_NE(reject->handshake.reason.find("token"), std::string::npos) << reject->handshake.reason;

  // Data on the refused connection is never delivered.
  hostile.SendAm(Encode(FrameKind::kData, nullptr), "sneaky").IgnoreError();
  hostile.Progress(50ms);
  ExpectGoodPeerServed(13);
  auto stats = PeerStats(peer_.get());
  EXPECT_GE(stats["auth_failures"], 1u);
  EXPECT_EQ(stats["frames_received"], 1u);
}

TEST_F(BadInputTest, TransportWithWrongTokenIsRefusedOnBothSides) {
  auto config = LocalConfig("");
  config.node_id = 40;
  config.cluster_token = "not-the-cluster-token";
  UcxTransport wrong(config);
  TransportInbox inbox;
  ASSERT_TRUE(wrong.Start(inbox.Handler()).ok());
  wrong.AddPeer(kPeerNode, peer_address_);
  SendResults results;
  ASSERT_TRUE(wrong.Send(kPeerNode, FrameHeader{}, Buffer::CopyOf("x"), results.Callback()).ok());
  ASSERT_TRUE(results.WaitFor(1, 10s));
  EXPECT_EQ(results.results()[0].code(), StatusCode::kPermissionDenied) << results.results()[0];
  auto reason = inbox.WaitForFailure(kPeerNode, 10s);
  ASSERT_TRUE(reason.has_value());
  EXPECT_EQ(reason->code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(wrong.stats().auth_failures, 1u);
  ExpectGoodPeerServed(14);
  EXPECT_GE(PeerStats(peer_.get())["auth_failures"], 1u);
}

TEST_F(BadInputTest, OversizedFrameIsRefusedAndTheSenderIsTold) {
  auto config = LocalConfig("");
  config.node_id = 50;
  UcxTransport sender(config);
  TransportInbox inbox;
  ASSERT_TRUE(sender.Start(inbox.Handler()).ok());
  sender.AddPeer(kPeerNode, peer_address_);
  SendResults big;
  SendResults small;
  ASSERT_TRUE(sender.Send(kPeerNode, FrameHeader{}, Buffer::Allocate(2 * kMaxFrame), big.Callback()).ok());
  ASSERT_TRUE(sender.Send(kPeerNode, FrameHeader{}, Buffer::CopyOf("small"), small.Callback()).ok());
  ASSERT_TRUE(big.WaitFor(1, 20s));
  ASSERT_TRUE(small.WaitFor(1, 20s));
  EXPECT_EQ(big.results()[0].code(), StatusCode::kResourceExhausted) << big.results()[0];
  EXPECT_TRUE(small.results()[0].ok()) << small.results()[0];
  ASSERT_TRUE(inbox.WaitForFrames(1, 20s)) << "the small frame after the oversized one was not echoed";
  auto frames = inbox.TakeFrames();
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].second.payload.view(), "small");
  EXPECT_EQ(PeerStats(peer_.get())["rejected_oversized"], 1u);
}

// A batch record: u32 envelope size, envelope, u32 payload size, payload (little endian).
std::string BatchRecord(const std::string& envelope, const std::string& payload) {
  std::string out;
  auto put = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  put(static_cast<uint32_t>(envelope.size()));
  out += envelope;
  put(static_cast<uint32_t>(payload.size()));
  out += payload;
  return out;
}

TEST_F(BadInputTest, MalformedBatchesAreRejectedAfterDeliveringTheFramesBeforeTheFault) {
  // An authenticated peer (it knows the token) that sends broken batches.
  RawUcxClient hostile;
  ASSERT_TRUE(hostile.Connect(peer_address_, "").ok());
  std::string nonce = transport::RandomNonce();
  HandshakeInfo hello = Hello(60, nonce);
  ASSERT_TRUE(hostile.SendAm(Encode(FrameKind::kHello, &hello), "").ok());
  auto challenge_bytes = hostile.ReceiveAm(10s);
  ASSERT_TRUE(challenge_bytes.ok()) << "no challenge: " << challenge_bytes.status();
  auto challenge = transport::DecodeEnvelope(challenge_bytes->data(), challenge_bytes->size());
  ASSERT_TRUE(challenge.ok());
  HandshakeInfo auth;
  auth.node_id = 60;
  auth.proof = transport::ComputeProof(kTestToken, transport::AuthRole::kClient, nonce, challenge->handshake.nonce,
                                       60, kPeerNode);
  ASSERT_TRUE(hostile.SendAm(Encode(FrameKind::kAuth, &auth), "").ok());
  auto accept_bytes = hostile.ReceiveAm(10s);
  ASSERT_TRUE(accept_bytes.ok()) << "no accept: " << accept_bytes.status();
  auto accept = transport::DecodeEnvelope(accept_bytes->data(), accept_bytes->size());
  ASSERT_TRUE(accept.ok());
  ASSERT_EQ(accept->kind, FrameKind::kAccept);

  std::string data = Encode(FrameKind::kData, nullptr);
  // Two good frames, then a record cut short: the two are delivered, the rest is refused.
  std::string truncated = BatchRecord(data, "one") + BatchRecord(data, "two") + std::string("\x05\x00", 2);
  ASSERT_TRUE(hostile.SendAm(Encode(FrameKind::kBatch, nullptr), truncated).ok());
  // A payload size beyond the end of the batch.
  std::string overlong = BatchRecord(data, "three");
  overlong[4 + data.size()] = '\x7f';
  ASSERT_TRUE(hostile.SendAm(Encode(FrameKind::kBatch, nullptr), overlong).ok());
  // A handshake smuggled inside a batch.
  ASSERT_TRUE(hostile.SendAm(Encode(FrameKind::kBatch, nullptr), BatchRecord(Encode(FrameKind::kHello, &hello), "")).ok());
  // Garbage where an envelope should be.
  ASSERT_TRUE(hostile.SendAm(Encode(FrameKind::kBatch, nullptr), BatchRecord(std::string(16, '\xff'), "x")).ok());
  hostile.Progress(100ms);

  ExpectGoodPeerServed(61);
  auto stats = PeerStats(peer_.get());
  EXPECT_EQ(stats["rejected_malformed"], 4u) << "each broken batch counts once";
  EXPECT_EQ(stats["frames_received"], 3u) << "'one' and 'two' from the first batch, and the good peer's frame";
}

TEST_F(BadInputTest, SilentConnectionIsClosedAfterTheHandshakeTimeout) {
  RawUcxClient silent;
  ASSERT_TRUE(silent.Connect(peer_address_, "").ok());
  // Wire up the endpoint with a frame the server ignores (no reply endpoint), then say nothing.
  ASSERT_TRUE(silent.SendAm("", "", /*reply=*/false).ok());
  // The server (handshake timeout 1 s) must close the connection and count it.
  auto deadline = std::chrono::steady_clock::now() + 20s;
  std::map<std::string, uint64_t> stats;
  bool opened = false;
  while (std::chrono::steady_clock::now() < deadline) {
    silent.Progress(20ms);
    stats = PeerStats(peer_.get());
    if (stats["connections_open"] > 0) opened = true;
    if (stats["auth_failures"] >= 1 && stats["connections_open"] == 0) break;
  }
  EXPECT_TRUE(opened || stats["auth_failures"] >= 1) << "the server never saw the silent connection";
  EXPECT_GE(stats["auth_failures"], 1u);
  EXPECT_EQ(stats["connections_open"], 0u) << "the server kept an unauthenticated connection open past its timeout";
}

}  // namespace
}  // namespace troupe::testing
