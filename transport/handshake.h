// The authentication handshake of one connection, as a state machine without I/O.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "transport/envelope.h"
#include "transport/frame.h"

namespace troupe::transport {

/// What this process says about itself in handshakes, the same for every connection.
struct HandshakeConfig {
  NodeId node_id = 0;
  std::string node_name;
  /// The address peers are told to dial ("" if nowhere), sent in hello and challenge.
  std::string listen_address;
  /// The shared secret; only proofs computed with it are sent.
  std::string cluster_token;
  /// Random per process start (HandshakeInfo::instance).
  uint64_t instance = 0;
  /// This side's UCX worker address, offered to the peer for a direct endpoint ("": direct
  /// endpoints are off, and none is offered or opened).
  std::string worker_address;
};

/// A handshake message to send on the connection's listener endpoint.
struct HandshakeMessage {
  FrameKind kind = FrameKind::kHello;
  HandshakeInfo info;
  std::string payload;  // a worker address, or empty
};

/// What the connection must do after a handshake message, in this order: on `refused`, send
/// `reply` (a reject) if there is one and close the connection; otherwise open a direct endpoint
/// to peer_worker_address() if asked, send `reply` if there is one, become ready (the peer is
/// authenticated: data flows) if asked, and retire the listener endpoint if asked and a direct
/// endpoint exists.
struct HandshakeStep {
  /// Set when authentication failed: why. The handshake is then in kRefused.
  std::optional<std::string> refused;
  bool open_direct_endpoint = false;
  std::optional<HandshakeMessage> reply;
  bool ready = false;
  bool retire_bootstrap = false;
};

/// The challenge-response handshake of one connection (docs/transport.md, "Authentication").
/// It decides what each received handshake message means and what to answer; the transport's
/// progress thread, which owns the connection, feeds it messages and carries out its steps.
/// The handshake timeout, malformed envelopes and where a message arrived (listener or direct
/// endpoint) are the transport's to check.
///
/// States (client: the side that dialed; server: the side that accepted):
///
///   client: kAwaitingChallenge --challenge--> kAwaitingAccept --accept or data on the
///           direct endpoint--> kAuthenticated (a late accept there retires the listener)
///   server: kAwaitingHello --hello--> kAwaitingAuth --auth--> kAuthenticated
///
/// A reject (in any state), a message out of order, a second hello or challenge, a wrong node
/// id, a nonce of the wrong length or a proof that does not verify leads to kRefused, which
/// is final. Nothing a hello says (name, listen address, worker address) is acted on before
/// its sender has proven the token.
class Handshake {
 public:
  enum class State { kAwaitingHello, kAwaitingAuth, kAwaitingChallenge, kAwaitingAccept, kAuthenticated, kRefused };

  /// The dialing side of a connection to `server`, with its fresh `client_nonce` (kNonceBytes).
  /// `config` must outlive the handshake.
  static Handshake Client(const HandshakeConfig* config, NodeId server, std::string client_nonce);
  /// The accepting side, with its fresh `server_nonce` (kNonceBytes). `config` must outlive it.
  static Handshake Server(const HandshakeConfig* config, std::string server_nonce);

  /// Client: the hello that opens the handshake.
  HandshakeMessage Hello() const;

  /// A received handshake message (any kind but kData and kBatch) and its payload.
  HandshakeStep OnMessage(const DecodedEnvelope& env, std::string_view payload);

  /// A data frame arrived on the direct endpoint that this side opened to the peer's worker
  /// address: only the authenticated server can send there, after accepting us (its accept may
  /// still be on its way over the listener connection). True if that made the handshake
  /// authenticated (a client in kAwaitingAccept); otherwise nothing changes.
  bool OnDirectData();

  State state() const { return state_; }
  bool is_client() const { return client_; }
  bool authenticated() const { return state_ == State::kAuthenticated; }
  /// The peer's node id: the dialed one (client), or the one its hello named (server; 0 before).
  NodeId peer() const { return peer_; }
  const std::string& peer_name() const { return peer_name_; }
  uint64_t peer_instance() const { return peer_instance_; }
  /// The worker address from the peer's hello or challenge ("" if none was offered).
  const std::string& peer_worker_address() const { return peer_worker_address_; }
  /// Server: the listen address the client's hello named, once the client has authenticated
  /// ("" before, and always for a client).
  const std::string& peer_listen_address() const;

 private:
  Handshake(const HandshakeConfig* config, bool client, State state) : config_(config), client_(client), state_(state) {}

  HandshakeStep OnHello(const DecodedEnvelope& env, std::string_view payload);
  HandshakeStep OnAuth(const HandshakeInfo& hs);
  HandshakeStep OnChallenge(const HandshakeInfo& hs, std::string_view payload);
  HandshakeStep Refuse(std::string why, bool tell_peer);
  // A hello or challenge: who this side is, with its nonce.
  HandshakeMessage Introduction(FrameKind kind, const std::string& nonce) const;
  bool offers_direct_endpoint() const { return !config_->worker_address.empty(); }

  const HandshakeConfig* config_;
  bool client_;
  State state_;
  NodeId peer_ = 0;
  std::string peer_name_;
  uint64_t peer_instance_ = 0;
  std::string peer_worker_address_;
  std::string peer_listen_address_;
  std::string client_nonce_;
  std::string server_nonce_;
};

}  // namespace troupe::transport
