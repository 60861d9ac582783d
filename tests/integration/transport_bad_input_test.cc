// Bad input from a raw socket or a hostile UCX peer is rejected and counted, and the
// process keeps serving a good peer afterwards.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <map>
#include <random>
#include <vector>

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

// "address N" of transport_peer: where it would dial node N ("-": nowhere).
std::string PeerAddressOf(ChildProcess* peer, transport::NodeId node) {
  EXPECT_TRUE(peer->WriteLine("address " + std::to_string(node)).ok());
  auto line = peer->ReadLineWithPrefix("ADDRESS ", 10s);
  EXPECT_TRUE(line.ok()) << line.status();
  return line.ok() ? *line : "";
}

TEST_F(BadInputTest, NothingAHelloSaysIsKeptBeforeItsSenderProvesTheToken) {
  // A peer without the token claims node 77 and a dial address for it, then fails the proof.
  RawUcxClient hostile;
  ASSERT_TRUE(hostile.Connect(peer_address_, "").ok());
  std::string nonce = transport::RandomNonce();
  HandshakeInfo hello = Hello(77, nonce);
  hello.listen_address = "127.0.0.1:9";
  ASSERT_TRUE(hostile.SendAm(Encode(FrameKind::kHello, &hello), "").ok());
  auto challenge_bytes = hostile.ReceiveAm(10s);
  ASSERT_TRUE(challenge_bytes.ok()) << "no challenge: " << challenge_bytes.status();
  auto challenge = transport::DecodeEnvelope(challenge_bytes->data(), challenge_bytes->size());
  ASSERT_TRUE(challenge.ok());
  EXPECT_EQ(PeerAddressOf(peer_.get(), 77), "-") << "the address was kept before the proof";
  HandshakeInfo auth;
  auth.node_id = 77;
  auth.proof = transport::ComputeProof("wrong-token", transport::AuthRole::kClient, nonce,
                                       challenge->handshake.nonce, 77, kPeerNode);
  ASSERT_TRUE(hostile.SendAm(Encode(FrameKind::kAuth, &auth), "").ok());
  ASSERT_TRUE(hostile.ReceiveAm(10s).ok()) << "no reject";
  EXPECT_EQ(PeerAddressOf(peer_.get(), 77), "-") << "a peer that failed the proof pinned a dial address";
}

// Peers that limit what others can make them hold.
class BoundedPeerTest : public ::testing::Test {
 protected:
  void Start(const std::vector<std::string>& flags) {
    std::vector<std::string> args = {"--handshake-timeout-ms", "5000"};
    args.insert(args.end(), flags.begin(), flags.end());
    peer_ = StartPeer(args, &peer_address_);
    ASSERT_NE(peer_, nullptr);
  }
  // Polls transport_peer's stats until `done` holds (10 s at most); returns the last stats.
  std::map<std::string, uint64_t> StatsWhen(const std::function<bool(std::map<std::string, uint64_t>&)>& done) {
    auto deadline = std::chrono::steady_clock::now() + 10s;
    auto stats = PeerStats(peer_.get());
    while (!done(stats) && std::chrono::steady_clock::now() < deadline) stats = PeerStats(peer_.get());
    return stats;
  }
  std::unique_ptr<ChildProcess> peer_;
  std::string peer_address_;
};

TEST_F(BoundedPeerTest, PeersThatGoAreForgottenAndTheirAddressesPastALimit) {
  Start({"--max-departed-peers", "3"});
  // Ten short-lived peers (as ten `troupe status` calls are), each with its own node id. Over
  // TCP, so that the peer sees each go at once when its sockets close (the runtime's heartbeats
  // find the others).
  for (transport::NodeId id = 100; id < 110; ++id) {
    auto config = LocalConfig("tcp");
    config.node_id = id;
    UcxTransport client(config);
    TransportInbox inbox;
    ASSERT_TRUE(client.Start(inbox.Handler()).ok());
    client.AddPeer(kPeerNode, peer_address_);
    ASSERT_TRUE(client.Send(kPeerNode, FrameHeader{}, Buffer::CopyOf("hi")).ok());
    ASSERT_TRUE(inbox.WaitForFrames(1, 20s)) << "peer " << id << " got no echo";
    client.Stop();
  }
  auto stats = StatsWhen([](auto& s) { return s["peers_connected"] == 0 && s["peers_known"] == 0; });
  EXPECT_EQ(stats["peers_connected"], 0u);
  EXPECT_EQ(stats["peers_known"], 0u) << "peers that went are still tracked";
  EXPECT_LE(stats["addresses_known"], 3u) << "addresses of departed peers grow without bound";
  EXPECT_EQ(PeerAddressOf(peer_.get(), 100), "-") << "the oldest departed peer's address was kept";
  EXPECT_NE(PeerAddressOf(peer_.get(), 109), "-") << "the newest departed peer's address was forgotten";
}

TEST_F(BoundedPeerTest, ARendezvousFrameAboveWhatMayBeInFlightIsRefusedAndItsSenderTold) {
  Start({"--max-frame", std::to_string(8u << 20), "--max-rndv-bytes", std::to_string(1u << 20)});
  auto config = LocalConfig("");
  config.node_id = 120;
  UcxTransport sender(config);
  TransportInbox inbox;
  ASSERT_TRUE(sender.Start(inbox.Handler()).ok());
  sender.AddPeer(kPeerNode, peer_address_);
  SendResults big;
  ASSERT_TRUE(sender.Send(kPeerNode, FrameHeader{}, Buffer::Allocate(2u << 20), big.Callback()).ok());
  ASSERT_TRUE(big.WaitFor(1, 20s));
  EXPECT_EQ(big.results()[0].code(), StatusCode::kResourceExhausted) << big.results()[0];
  EXPECT_NE(big.results()[0].message().find("max_rndv_bytes_in_flight"), std::string::npos) << big.results()[0];
  // Below the cap, a rendezvous frame still arrives.
  ASSERT_TRUE(sender.Send(kPeerNode, FrameHeader{}, Buffer::Allocate(512u << 10)).ok());
  ASSERT_TRUE(inbox.WaitForFrames(1, 20s)) << "a frame below the cap was not echoed";
  auto stats = PeerStats(peer_.get());
  EXPECT_EQ(stats["rejected_busy"], 1u);
  EXPECT_EQ(stats["rndv_bytes_in_flight"], 0u);
}

TEST_F(BoundedPeerTest, ConnectionsBeyondTheUnauthenticatedLimitAreClosedOnArrival) {
  Start({"--max-unauthenticated", "2"});
  std::vector<std::unique_ptr<RawUcxClient>> silent;
  for (int i = 0; i < 4; ++i) {
    silent.push_back(std::make_unique<RawUcxClient>());
    ASSERT_TRUE(silent.back()->Connect(peer_address_, "").ok());
    // Wires up the endpoint; it fails for a connection the server closed at once.
    silent.back()->SendAm("", "", /*reply=*/false, 1s).IgnoreError();
  }
  auto stats = StatsWhen([](auto& s) { return s["connections_refused"] >= 2; });
  EXPECT_EQ(stats["connections_refused"], 2u);
  EXPECT_LE(stats["connections_open"], 2u);
}

}  // namespace
}  // namespace troupe::testing
