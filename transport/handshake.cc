// The handshake state machine: hello, challenge, auth, accept (and reject), checked and answered.
#include "transport/handshake.h"

#include <utility>

#include "transport/auth.h"

namespace troupe::transport {
namespace {

std::string KindName(FrameKind kind) { return "kind " + std::to_string(static_cast<int>(kind)); }

}  // namespace

Handshake Handshake::Client(const HandshakeConfig* config, NodeId server, std::string client_nonce) {
  Handshake h(config, /*client=*/true, State::kAwaitingChallenge);
  h.peer_ = server;
  h.client_nonce_ = std::move(client_nonce);
  return h;
}

Handshake Handshake::Server(const HandshakeConfig* config, std::string server_nonce) {
  Handshake h(config, /*client=*/false, State::kAwaitingHello);
  h.server_nonce_ = std::move(server_nonce);
  return h;
}

HandshakeMessage Handshake::Introduction(FrameKind kind, const std::string& nonce) const {
  HandshakeMessage m;
  m.kind = kind;
  m.info.node_id = config_->node_id;
  m.info.node_name = config_->node_name;
  m.info.listen_address = config_->listen_address;
  m.info.nonce = nonce;
  m.info.instance = config_->instance;
  return m;
}

HandshakeMessage Handshake::Hello() const {
  HandshakeMessage hello = Introduction(FrameKind::kHello, client_nonce_);
  hello.payload = config_->worker_address;
  return hello;
}

const std::string& Handshake::peer_listen_address() const {
  static const std::string kNone;
  return authenticated() ? peer_listen_address_ : kNone;
}

HandshakeStep Handshake::OnMessage(const DecodedEnvelope& env, std::string_view payload) {
  if (env.kind == FrameKind::kReject) return Refuse("peer rejected us: " + env.handshake.reason, false);
  if (env.kind == FrameKind::kAccept && client_ && state_ == State::kAuthenticated) {
    // Data on the direct endpoint already told us; the accept only retires the listener.
    HandshakeStep step;
    step.retire_bootstrap = true;
    return step;
  }
  if (state_ == State::kAuthenticated || state_ == State::kRefused || !env.has_handshake) {
    return Refuse("unexpected handshake message (" + KindName(env.kind) + ")", false);
  }
  switch (state_) {
    case State::kAwaitingHello:
      if (env.kind == FrameKind::kHello) return OnHello(env, payload);
      break;
    case State::kAwaitingAuth:
      if (env.kind == FrameKind::kAuth) return OnAuth(env.handshake);
      break;
    case State::kAwaitingChallenge:
      if (env.kind == FrameKind::kChallenge) return OnChallenge(env.handshake, payload);
      break;
    case State::kAwaitingAccept:
      if (env.kind == FrameKind::kAccept) {
        state_ = State::kAuthenticated;
        HandshakeStep step;
        step.ready = true;
        // Nothing is in flight on the listener endpoint any more: close it at once.
        step.retire_bootstrap = true;
        return step;
      }
      break;
    case State::kAuthenticated:
    case State::kRefused:
      break;
  }
  return Refuse("handshake message out of order (" + KindName(env.kind) + ")", true);
}

HandshakeStep Handshake::OnHello(const DecodedEnvelope& env, std::string_view payload) {
  const HandshakeInfo& hs = env.handshake;
  if (hs.node_id == 0 || hs.node_id == config_->node_id) {
    return Refuse("hello with invalid node id " + std::to_string(hs.node_id), true);
  }
  if (hs.nonce.size() != kNonceBytes) {
    return Refuse("hello with a nonce of " + std::to_string(hs.nonce.size()) + " bytes", true);
  }
  if (env.header.dst_node != 0 && env.header.dst_node != config_->node_id) {
    return Refuse("peer dialed node " + std::to_string(env.header.dst_node) + " but this is node " +
                      std::to_string(config_->node_id),
                  true);
  }
  state_ = State::kAwaitingAuth;
  peer_ = hs.node_id;
  // Kept, but used only once the client has authenticated.
  peer_instance_ = hs.instance;
  peer_name_ = hs.node_name;
  peer_worker_address_ = std::string(payload);
  peer_listen_address_ = hs.listen_address;
  client_nonce_ = hs.nonce;
  HandshakeStep step;
  HandshakeMessage& challenge = step.reply.emplace(Introduction(FrameKind::kChallenge, server_nonce_));
  challenge.info.proof =
      ComputeProof(config_->cluster_token, AuthRole::kServer, client_nonce_, server_nonce_, peer_, config_->node_id);
  if (offers_direct_endpoint() && !payload.empty()) challenge.payload = config_->worker_address;
  return step;
}

HandshakeStep Handshake::OnAuth(const HandshakeInfo& hs) {
  const std::string expected =
      ComputeProof(config_->cluster_token, AuthRole::kClient, client_nonce_, server_nonce_, peer_, config_->node_id);
  if (!ProofsEqual(hs.proof, expected)) return Refuse("wrong cluster token (client proof did not verify)", true);
  state_ = State::kAuthenticated;
  HandshakeStep step;
  // Opened before accepting, so data sent right after the accept already goes there; the
  // client opened its own before sending auth.
  step.open_direct_endpoint = offers_direct_endpoint() && !peer_worker_address_.empty();
  HandshakeMessage& accept = step.reply.emplace();
  accept.kind = FrameKind::kAccept;
  accept.info.node_id = config_->node_id;
  step.ready = true;
  return step;
}

HandshakeStep Handshake::OnChallenge(const HandshakeInfo& hs, std::string_view payload) {
  if (hs.node_id != peer_) {
    return Refuse("dialed node " + std::to_string(peer_) + " but node " + std::to_string(hs.node_id) + " answered",
                  true);
  }
  if (hs.nonce.size() != kNonceBytes) {
    return Refuse("challenge with a nonce of " + std::to_string(hs.nonce.size()) + " bytes", true);
  }
  const std::string expected =
      ComputeProof(config_->cluster_token, AuthRole::kServer, client_nonce_, hs.nonce, config_->node_id, peer_);
  if (!ProofsEqual(hs.proof, expected)) return Refuse("wrong cluster token (server proof did not verify)", true);
  state_ = State::kAwaitingAccept;
  peer_instance_ = hs.instance;
  peer_name_ = hs.node_name;
  server_nonce_ = hs.nonce;
  peer_worker_address_ = std::string(payload);
  HandshakeStep step;
  step.open_direct_endpoint = offers_direct_endpoint() && !payload.empty();
  HandshakeMessage& auth = step.reply.emplace();
  auth.kind = FrameKind::kAuth;
  auth.info.node_id = config_->node_id;
  auth.info.proof =
      ComputeProof(config_->cluster_token, AuthRole::kClient, client_nonce_, server_nonce_, config_->node_id, peer_);
  return step;
}

bool Handshake::OnDirectData() {
  if (!client_ || state_ != State::kAwaitingAccept) return false;
  state_ = State::kAuthenticated;
  return true;
}

HandshakeStep Handshake::Refuse(std::string why, bool tell_peer) {
  state_ = State::kRefused;
  HandshakeStep step;
  if (tell_peer) {
    HandshakeMessage& reject = step.reply.emplace();
    reject.kind = FrameKind::kReject;
    reject.info.node_id = config_->node_id;
    reject.info.reason = why;
  }
  step.refused = std::move(why);
  return step;
}

}  // namespace troupe::transport
