// Tests of the handshake state machine: every transition, and every message it must refuse.
#include "transport/handshake.h"

#include <gtest/gtest.h>

#include <string>

#include "transport/auth.h"

namespace troupe::transport {
namespace {

constexpr NodeId kClientId = 1;
constexpr NodeId kServerId = 2;
const std::string kToken = "cluster-token";

HandshakeConfig ConfigFor(NodeId id, std::string token, std::string worker_address) {
  HandshakeConfig c;
  c.node_id = id;
  c.node_name = "node-" + std::to_string(id);
  c.listen_address = "127.0.0.1:700" + std::to_string(id);
  c.cluster_token = std::move(token);
  c.instance = 0x100 + id;
  c.worker_address = std::move(worker_address);
  return c;
}

// A message as the peer receives it: encoded and decoded like every envelope on the wire, with
// the header the transport sends handshakes under (src: sender, dst: the node it means).
DecodedEnvelope Received(const HandshakeMessage& m, NodeId from, NodeId to) {
  FrameHeader header;
  header.src_node = from;
  header.dst_node = to;
  EncodedEnvelope enc;
  EXPECT_TRUE(EncodeEnvelope(m.kind, header, &m.info, &enc).ok());
  auto dec = DecodeEnvelope(enc.bytes, enc.size);
  EXPECT_TRUE(dec.ok()) << dec.status();
  return dec.ok() ? *dec : DecodedEnvelope{};
}

void ExpectRefused(const HandshakeStep& step, const Handshake& h, const std::string& why, bool tells_peer) {
  ASSERT_TRUE(step.refused.has_value()) << "expected a refusal: " << why;
  EXPECT_NE(step.refused->find(why), std::string::npos) << *step.refused;
  EXPECT_EQ(h.state(), Handshake::State::kRefused);
  EXPECT_FALSE(h.authenticated());
  EXPECT_FALSE(step.ready);
  EXPECT_FALSE(step.open_direct_endpoint);
  ASSERT_EQ(step.reply.has_value(), tells_peer);
  if (tells_peer) {
    EXPECT_EQ(step.reply->kind, FrameKind::kReject);
    EXPECT_EQ(step.reply->info.reason, *step.refused);
    EXPECT_EQ(step.reply->info.proof, "") << "a reject proves nothing";
  }
}

class HandshakeTest : public ::testing::Test {
 protected:
  HandshakeConfig client_config_ = ConfigFor(kClientId, kToken, "client-worker-address");
  HandshakeConfig server_config_ = ConfigFor(kServerId, kToken, "server-worker-address");
  const std::string client_nonce_ = std::string(kNonceBytes, 'c');
  const std::string server_nonce_ = std::string(kNonceBytes, 's');
  Handshake client_ = Handshake::Client(&client_config_, kServerId, client_nonce_);
  Handshake server_ = Handshake::Server(&server_config_, server_nonce_);

  // Runs hello -> challenge; returns the challenge step (the client has not seen it yet).
  HandshakeStep HelloToServer() {
    HandshakeStep step = server_.OnMessage(Received(client_.Hello(), kClientId, kServerId), client_.Hello().payload);
    EXPECT_FALSE(step.refused.has_value()) << *step.refused;
    EXPECT_TRUE(step.reply.has_value());
    return step;
  }
  // Runs hello -> challenge -> auth; returns the auth step (the server has not seen it yet).
  HandshakeStep ChallengeToClient() {
    HandshakeStep challenge = HelloToServer();
    HandshakeStep step = client_.OnMessage(Received(*challenge.reply, kServerId, kClientId), challenge.reply->payload);
    EXPECT_FALSE(step.refused.has_value()) << *step.refused;
    EXPECT_TRUE(step.reply.has_value());
    return step;
  }
  // Runs the whole handshake up to the server's accept; returns the accept step.
  HandshakeStep AuthToServer() {
    HandshakeStep auth = ChallengeToClient();
    return server_.OnMessage(Received(*auth.reply, kClientId, kServerId), auth.reply->payload);
  }
};

TEST_F(HandshakeTest, StartsAwaitingTheFirstMessageOfItsRole) {
  EXPECT_TRUE(client_.is_client());
  EXPECT_EQ(client_.state(), Handshake::State::kAwaitingChallenge);
  EXPECT_EQ(client_.peer(), kServerId);
  EXPECT_FALSE(server_.is_client());
  EXPECT_EQ(server_.state(), Handshake::State::kAwaitingHello);
  EXPECT_EQ(server_.peer(), 0u) << "the server knows its peer only from the hello";
}

TEST_F(HandshakeTest, HelloSaysWhoTheClientIsAndOffersItsWorkerAddress) {
  HandshakeMessage hello = client_.Hello();
  EXPECT_EQ(hello.kind, FrameKind::kHello);
  EXPECT_EQ(hello.info.node_id, kClientId);
  EXPECT_EQ(hello.info.node_name, "node-1");
  EXPECT_EQ(hello.info.listen_address, "127.0.0.1:7001");
  EXPECT_EQ(hello.info.nonce, client_nonce_);
  EXPECT_EQ(hello.info.instance, 0x101u);
  EXPECT_EQ(hello.info.proof, "") << "the client proves nothing before it has the server's nonce";
  EXPECT_EQ(hello.payload, "client-worker-address");
}

TEST_F(HandshakeTest, FullHandshakeAuthenticatesBothSides) {
  // hello -> challenge
  HandshakeStep challenge = HelloToServer();
  EXPECT_EQ(server_.state(), Handshake::State::kAwaitingAuth);
  EXPECT_EQ(server_.peer(), kClientId);
  EXPECT_EQ(challenge.reply->kind, FrameKind::kChallenge);
  EXPECT_EQ(challenge.reply->info.node_id, kServerId);
  EXPECT_EQ(challenge.reply->info.nonce, server_nonce_);
  EXPECT_EQ(challenge.reply->info.proof,
            ComputeProof(kToken, AuthRole::kServer, client_nonce_, server_nonce_, kClientId, kServerId));
  EXPECT_EQ(challenge.reply->payload, "server-worker-address");
  EXPECT_FALSE(challenge.ready);
  EXPECT_FALSE(challenge.open_direct_endpoint) << "nothing is opened for a peer that has proven nothing";

  // challenge -> auth
  HandshakeStep auth = client_.OnMessage(Received(*challenge.reply, kServerId, kClientId), challenge.reply->payload);
  ASSERT_FALSE(auth.refused.has_value()) << *auth.refused;
  EXPECT_EQ(client_.state(), Handshake::State::kAwaitingAccept);
  EXPECT_TRUE(auth.open_direct_endpoint);
  EXPECT_EQ(client_.peer_worker_address(), "server-worker-address");
  EXPECT_EQ(client_.peer_name(), "node-2");
  EXPECT_EQ(client_.peer_instance(), 0x102u);
  ASSERT_TRUE(auth.reply.has_value());
  EXPECT_EQ(auth.reply->kind, FrameKind::kAuth);
  EXPECT_EQ(auth.reply->info.proof,
            ComputeProof(kToken, AuthRole::kClient, client_nonce_, server_nonce_, kClientId, kServerId));
  EXPECT_FALSE(auth.ready);

  // auth -> accept
  HandshakeStep accept = server_.OnMessage(Received(*auth.reply, kClientId, kServerId), auth.reply->payload);
  ASSERT_FALSE(accept.refused.has_value()) << *accept.refused;
  EXPECT_TRUE(server_.authenticated());
  EXPECT_TRUE(accept.ready);
  EXPECT_TRUE(accept.open_direct_endpoint);
  EXPECT_EQ(server_.peer_worker_address(), "client-worker-address");
  EXPECT_EQ(server_.peer_name(), "node-1");
  EXPECT_EQ(server_.peer_instance(), 0x101u);
  EXPECT_EQ(server_.peer_listen_address(), "127.0.0.1:7001");
  ASSERT_TRUE(accept.reply.has_value());
  EXPECT_EQ(accept.reply->kind, FrameKind::kAccept);
  EXPECT_EQ(accept.reply->info.node_id, kServerId);
  EXPECT_FALSE(accept.retire_bootstrap) << "the client closes the listener connection, not the server";

  // accept -> ready
  HandshakeStep done = client_.OnMessage(Received(*accept.reply, kServerId, kClientId), accept.reply->payload);
  ASSERT_FALSE(done.refused.has_value()) << *done.refused;
  EXPECT_TRUE(client_.authenticated());
  EXPECT_TRUE(done.ready);
  EXPECT_TRUE(done.retire_bootstrap);
  EXPECT_FALSE(done.reply.has_value());
  EXPECT_EQ(client_.peer_listen_address(), "") << "a client keeps no address from the server's challenge";
}

TEST_F(HandshakeTest, HelloToAnyNodeIdIsAccepted) {
  HandshakeStep step = server_.OnMessage(Received(client_.Hello(), kClientId, 0), client_.Hello().payload);
  EXPECT_FALSE(step.refused.has_value()) << *step.refused;
  EXPECT_EQ(server_.state(), Handshake::State::kAwaitingAuth);
}

TEST_F(HandshakeTest, WithoutAWorkerAddressOnEitherSideNoDirectEndpointIsOfferedOrOpened) {
  // The server has direct endpoints off: it offers nothing and opens nothing, though the client offered.
  server_config_.worker_address.clear();
  HandshakeStep auth = ChallengeToClient();
  EXPECT_FALSE(auth.open_direct_endpoint);
  EXPECT_EQ(client_.peer_worker_address(), "");
  HandshakeStep accept = server_.OnMessage(Received(*auth.reply, kClientId, kServerId), auth.reply->payload);
  EXPECT_TRUE(accept.ready);
  EXPECT_FALSE(accept.open_direct_endpoint);
}

TEST_F(HandshakeTest, AClientWithoutAWorkerAddressIsOfferedNone) {
  client_config_.worker_address.clear();
  EXPECT_EQ(client_.Hello().payload, "");
  HandshakeStep challenge = HelloToServer();
  EXPECT_EQ(challenge.reply->payload, "") << "the server offers a direct endpoint only to a client that offered one";
  HandshakeStep auth = client_.OnMessage(Received(*challenge.reply, kServerId, kClientId), challenge.reply->payload);
  EXPECT_FALSE(auth.open_direct_endpoint);
  HandshakeStep accept = server_.OnMessage(Received(*auth.reply, kClientId, kServerId), auth.reply->payload);
  EXPECT_FALSE(accept.open_direct_endpoint);
}

TEST_F(HandshakeTest, DataOnTheDirectEndpointAuthenticatesAClientAwaitingAccept) {
  ChallengeToClient();
  EXPECT_TRUE(client_.OnDirectData());
  EXPECT_TRUE(client_.authenticated());
  EXPECT_FALSE(client_.OnDirectData()) << "only the first data frame changes anything";
  // The accept that was still on its way only retires the listener connection.
  HandshakeMessage accept;
  accept.kind = FrameKind::kAccept;
  accept.info.node_id = kServerId;
  HandshakeStep late = client_.OnMessage(Received(accept, kServerId, kClientId), "");
  EXPECT_FALSE(late.refused.has_value()) << *late.refused;
  EXPECT_FALSE(late.ready) << "the connection is ready already";
  EXPECT_TRUE(late.retire_bootstrap);
  EXPECT_TRUE(client_.authenticated());
}

TEST_F(HandshakeTest, DataBeforeAuthenticationAuthenticatesNothing) {
  EXPECT_FALSE(client_.OnDirectData()) << "data before the challenge";
  EXPECT_EQ(client_.state(), Handshake::State::kAwaitingChallenge);
  EXPECT_FALSE(server_.OnDirectData()) << "data before the hello";
  EXPECT_EQ(server_.state(), Handshake::State::kAwaitingHello);
  HelloToServer();
  EXPECT_FALSE(server_.OnDirectData()) << "data before the auth";
  EXPECT_EQ(server_.state(), Handshake::State::kAwaitingAuth);
}

TEST_F(HandshakeTest, SecondHelloIsRefused) {
  HelloToServer();
  HandshakeStep step = server_.OnMessage(Received(client_.Hello(), kClientId, kServerId), client_.Hello().payload);
  ExpectRefused(step, server_, "handshake message out of order (kind 1)", /*tells_peer=*/true);
}

TEST_F(HandshakeTest, SecondChallengeIsRefused) {
  HandshakeStep challenge = HelloToServer();
  const DecodedEnvelope received = Received(*challenge.reply, kServerId, kClientId);
  ASSERT_FALSE(client_.OnMessage(received, challenge.reply->payload).refused.has_value());
  ExpectRefused(client_.OnMessage(received, challenge.reply->payload), client_, "handshake message out of order (kind 2)",
                true);
}

TEST_F(HandshakeTest, AuthBeforeHelloIsRefused) {
  HandshakeMessage auth;
  auth.kind = FrameKind::kAuth;
  auth.info.node_id = kClientId;
  auth.info.proof = ComputeProof(kToken, AuthRole::kClient, client_nonce_, server_nonce_, kClientId, kServerId);
  HandshakeStep step = server_.OnMessage(Received(auth, kClientId, kServerId), "");
  ExpectRefused(step, server_, "out of order (kind 3)", true);
}

TEST_F(HandshakeTest, AcceptBeforeChallengeIsRefused) {
  HandshakeMessage accept;
  accept.kind = FrameKind::kAccept;
  accept.info.node_id = kServerId;
  HandshakeStep step = client_.OnMessage(Received(accept, kServerId, kClientId), "");
  ExpectRefused(step, client_, "out of order (kind 4)", true);
}

TEST_F(HandshakeTest, MessagesOfTheOtherRoleAreRefused) {
  // A server never takes a challenge or an accept; a client never takes a hello or an auth.
  {
    Handshake server = Handshake::Server(&server_config_, server_nonce_);
    HandshakeMessage challenge;
    challenge.kind = FrameKind::kChallenge;
    challenge.info.node_id = kClientId;
    challenge.info.nonce = client_nonce_;
    ExpectRefused(server.OnMessage(Received(challenge, kClientId, kServerId), ""), server, "out of order (kind 2)", true);
  }
  {
    Handshake client = Handshake::Client(&client_config_, kServerId, client_nonce_);
    HandshakeMessage hello = Handshake::Client(&server_config_, kClientId, server_nonce_).Hello();
    ExpectRefused(client.OnMessage(Received(hello, kServerId, kClientId), ""), client, "out of order (kind 1)", true);
  }
}

TEST_F(HandshakeTest, WrongTokenOnTheServerFailsTheClientsCheckOfTheChallenge) {
  server_config_.cluster_token = "another-token";
  HandshakeStep challenge = HelloToServer();
  HandshakeStep step = client_.OnMessage(Received(*challenge.reply, kServerId, kClientId), challenge.reply->payload);
  ExpectRefused(step, client_, "wrong cluster token (server proof did not verify)", true);
  EXPECT_EQ(client_.peer_worker_address(), "") << "nothing of a refused challenge is kept";
}

TEST_F(HandshakeTest, WrongTokenOnTheClientFailsTheServersCheckOfTheAuth) {
  HandshakeStep challenge = HelloToServer();
  // A client with another token cannot prove it (it would have refused the challenge itself;
  // here it answers anyway, as a hostile peer would).
  HandshakeMessage auth;
  auth.kind = FrameKind::kAuth;
  auth.info.node_id = kClientId;
  auth.info.proof = ComputeProof("another-token", AuthRole::kClient, client_nonce_, server_nonce_, kClientId, kServerId);
  HandshakeStep step = server_.OnMessage(Received(auth, kClientId, kServerId), "");
  ExpectRefused(step, server_, "wrong cluster token (client proof did not verify)", true);
  EXPECT_EQ(server_.peer_listen_address(), "") << "a client that failed the proof leaves no dial address";
}

TEST_F(HandshakeTest, ReflectedOrMisboundProofsAreRefused) {
  HelloToServer();
  const std::string proofs[] = {
      // The server's own proof sent back (reflection): the roles' labels differ.
      ComputeProof(kToken, AuthRole::kServer, client_nonce_, server_nonce_, kClientId, kServerId),
      // Bound to another server nonce (a replay from another connection).
      ComputeProof(kToken, AuthRole::kClient, client_nonce_, std::string(kNonceBytes, 'x'), kClientId, kServerId),
      // Empty, and of the wrong length.
      "",
      "short",
  };
  for (const std::string& proof : proofs) {
    Handshake server = server_;  // a copy awaiting auth
    HandshakeMessage auth;
    auth.kind = FrameKind::kAuth;
    auth.info.node_id = kClientId;
    auth.info.proof = proof;
    ExpectRefused(server.OnMessage(Received(auth, kClientId, kServerId), ""), server, "client proof did not verify", true);
  }
}

TEST_F(HandshakeTest, HelloWithAnInvalidNodeIdIsRefused) {
  for (NodeId id : {NodeId{0}, kServerId}) {
    Handshake server = Handshake::Server(&server_config_, server_nonce_);
    HandshakeMessage hello = client_.Hello();
    hello.info.node_id = id;
    ExpectRefused(server.OnMessage(Received(hello, id, kServerId), ""), server,
                  "hello with invalid node id " + std::to_string(id), true);
    EXPECT_EQ(server.peer(), 0u);
  }
}

TEST_F(HandshakeTest, HelloWithANonceOfTheWrongLengthIsRefused) {
  HandshakeMessage hello = client_.Hello();
  hello.info.nonce = std::string(kNonceBytes - 1, 'c');
  ExpectRefused(server_.OnMessage(Received(hello, kClientId, kServerId), ""), server_, "hello with a nonce of 31 bytes",
                true);
}

TEST_F(HandshakeTest, HelloForAnotherNodeIsRefused) {
  ExpectRefused(server_.OnMessage(Received(client_.Hello(), kClientId, 9), ""), server_,
                "peer dialed node 9 but this is node 2", true);
}

TEST_F(HandshakeTest, ChallengeFromAnotherNodeThanTheDialedOneIsRefused) {
  HandshakeStep challenge = HelloToServer();
  challenge.reply->info.node_id = 9;
  ExpectRefused(client_.OnMessage(Received(*challenge.reply, 9, kClientId), ""), client_,
                "dialed node 2 but node 9 answered", true);
}

TEST_F(HandshakeTest, ChallengeWithANonceOfTheWrongLengthIsRefused) {
  HandshakeStep challenge = HelloToServer();
  challenge.reply->info.nonce = std::string(kNonceBytes + 1, 's');
  ExpectRefused(client_.OnMessage(Received(*challenge.reply, kServerId, kClientId), ""), client_,
                "challenge with a nonce of 33 bytes", true);
}

TEST_F(HandshakeTest, RejectIsRefusedWithoutAnswerInEveryState) {
  HandshakeMessage reject;
  reject.kind = FrameKind::kReject;
  reject.info.node_id = kServerId;
  reject.info.reason = "go away";
  auto check = [&](Handshake h, const char* when) {
    SCOPED_TRACE(when);
    ExpectRefused(h.OnMessage(Received(reject, kServerId, kClientId), ""), h, "peer rejected us: go away", false);
  };
  check(client_, "client awaiting challenge");
  check(server_, "server awaiting hello");
  HandshakeStep auth = ChallengeToClient();
  check(client_, "client awaiting accept");
  check(server_, "server awaiting auth");
  server_.OnMessage(Received(*auth.reply, kClientId, kServerId), "");
  ASSERT_TRUE(server_.authenticated());
  check(server_, "server authenticated");
  ASSERT_TRUE(client_.OnDirectData());
  check(client_, "client authenticated");
}

TEST_F(HandshakeTest, MessageWithoutHandshakeFieldsIsRefusedWithoutAnswer) {
  DecodedEnvelope bare;
  bare.version = kEnvelopeVersion;
  bare.kind = FrameKind::kHello;
  bare.has_handshake = false;
  ExpectRefused(server_.OnMessage(bare, ""), server_, "unexpected handshake message (kind 1)", false);
}

TEST_F(HandshakeTest, HandshakeMessagesAfterAuthenticationAreRefusedWithoutAnswer) {
  HandshakeStep accept = AuthToServer();
  ASSERT_TRUE(accept.ready);
  ExpectRefused(server_.OnMessage(Received(client_.Hello(), kClientId, kServerId), ""), server_,
                "unexpected handshake message (kind 1)", false);
  ASSERT_TRUE(client_.OnDirectData());
  HandshakeMessage auth;
  auth.kind = FrameKind::kAuth;
  auth.info.node_id = kServerId;
  ExpectRefused(client_.OnMessage(Received(auth, kServerId, kClientId), ""), client_,
                "unexpected handshake message (kind 3)", false);
}

TEST_F(HandshakeTest, RefusalIsFinal) {
  HandshakeMessage hello = client_.Hello();
  hello.info.node_id = 0;
  ASSERT_TRUE(server_.OnMessage(Received(hello, 0, kServerId), "").refused.has_value());
  // A good hello afterwards changes nothing.
  HandshakeStep step = server_.OnMessage(Received(client_.Hello(), kClientId, kServerId), client_.Hello().payload);
  ExpectRefused(step, server_, "unexpected handshake message", false);
  EXPECT_FALSE(server_.OnDirectData());
}

TEST_F(HandshakeTest, NothingAHelloSaysIsExposedBeforeItsSenderProvesTheToken) {
  HandshakeStep auth = ChallengeToClient();
  EXPECT_EQ(server_.state(), Handshake::State::kAwaitingAuth);
  EXPECT_EQ(server_.peer_listen_address(), "") << "a dial address from an unproven hello";
  HandshakeStep accept = server_.OnMessage(Received(*auth.reply, kClientId, kServerId), auth.reply->payload);
  EXPECT_TRUE(accept.ready);
  EXPECT_EQ(server_.peer_listen_address(), "127.0.0.1:7001");
}

}  // namespace
}  // namespace troupe::transport
