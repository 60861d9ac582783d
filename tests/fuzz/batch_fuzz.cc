// Fuzz target: the transport's batch splitter (BatchReader / SplitBatch), which reads every
// received batch of frames, and the handshake state machine driven by a scripted peer.
//
// The first byte picks the mode. Even: the rest is a batch, and bits 1-7 pick max_frame_bytes
// (0: 64 MiB, else 8 bytes per step); every record found must lie inside the input, and the
// records written again must split into the same frames. Odd: the rest scripts a peer's
// handshake messages (bit 1: the handshake under test is a client; bit 2: this side offers a
// direct endpoint); the peer's ids, nonces and proofs are right or wrong as the script says,
// and the handshake must authenticate only a peer that proved the token, and never leave
// kRefused.
#include <cstddef>
#include <cstdint>
#include <string>

#include "transport/auth.h"
#include "transport/batch.h"
#include "transport/handshake.h"

namespace {

using namespace troupe::transport;

[[noreturn]] void Fail() { __builtin_trap(); }
void Require(bool ok) {
  if (!ok) Fail();
}

void FuzzBatch(uint8_t selector, const uint8_t* data, size_t size) {
  const size_t max_frame_bytes = selector == 0 ? size_t{64} << 20 : size_t{selector} * 8;
  SplitBatchResult split = SplitBatch(data, size, max_frame_bytes);
  size_t next = 0;
  for (const BatchRecord& r : split.records) {
    Require(r.offset == next);
    Require(r.payload >= data && r.payload_size <= size && r.payload <= data + size - r.payload_size);
    Require(r.oversized == (r.payload_size > max_frame_bytes));
    next = static_cast<size_t>(r.payload - data) + r.payload_size;
  }
  Require(next <= size);
  Require(split.status.ok() == (next == size));  // a good batch is used up exactly

  // The frames found, written again, split into the same frames.
  std::string again;
  EncodedEnvelope env;
  for (const BatchRecord& r : split.records) {
    Require(EncodeEnvelope(FrameKind::kData, r.header, nullptr, &env).ok());
    AppendBatchRecord(env, r.payload, r.payload_size, &again);
  }
  SplitBatchResult resplit = SplitBatch(reinterpret_cast<const uint8_t*>(again.data()), again.size(), max_frame_bytes);
  Require(resplit.status.ok() && resplit.records.size() == split.records.size());
  for (size_t i = 0; i < split.records.size(); ++i) {
    const BatchRecord& a = split.records[i];
    const BatchRecord& b = resplit.records[i];
    Require(a.header == b.header && a.payload_size == b.payload_size && a.oversized == b.oversized);
    for (size_t k = 0; k < a.payload_size; ++k) Require(a.payload[k] == b.payload[k]);
  }
}

// Reads the script; past its end every byte is 0.
struct Script {
  const uint8_t* data;
  size_t size;
  size_t pos = 0;
  bool done() const { return pos >= size; }
  uint8_t Byte() { return pos < size ? data[pos++] : 0; }
  std::string Text() {
    size_t n = Byte() % 8;
    std::string out;
    while (n-- > 0) out.push_back(static_cast<char>(Byte()));
    return out;
  }
};

void FuzzHandshake(uint8_t flags, const uint8_t* data, size_t size) {
  constexpr NodeId kSelf = 2;
  constexpr NodeId kPeer = 7;
  const bool client = (flags & 1) != 0;
  HandshakeConfig config;
  config.node_id = kSelf;
  config.node_name = "self";
  config.listen_address = "127.0.0.1:7002";
  config.cluster_token = "token";
  config.instance = 9;
  if ((flags & 2) != 0) config.worker_address = "worker";
  const std::string own_nonce(kNonceBytes, 'o');
  const std::string peer_nonce(kNonceBytes, 'p');
  // The handshake under test dials kPeer (client) or is dialed by it (server).
  Handshake h = client ? Handshake::Client(&config, kPeer, own_nonce) : Handshake::Server(&config, own_nonce);
  const NodeId client_id = client ? kSelf : kPeer;
  const NodeId server_id = client ? kPeer : kSelf;
  const std::string& client_nonce = client ? own_nonce : peer_nonce;
  const std::string& server_nonce = client ? peer_nonce : own_nonce;

  Script script{data, size};
  bool proven = false;  // the peer sent a proof that verifies
  bool ready = false;
  for (int turn = 0; turn < 16 && !script.done(); ++turn) {
    const Handshake::State before = h.state();
    const uint8_t op = script.Byte();
    const uint8_t bits = script.Byte();
    if (op % 8 == 0) {
      const bool now = h.OnDirectData();
      Require(now == (before == Handshake::State::kAwaitingAccept));
      if (now) {
        Require(h.authenticated() && proven && !ready);
        ready = true;
      } else {
        Require(h.state() == before);
      }
      continue;
    }
    DecodedEnvelope env;
    env.version = kEnvelopeVersion;
    env.kind = static_cast<FrameKind>(1 + op % 5);  // hello .. reject
    env.has_handshake = (bits & 0x80) == 0;
    env.header.src_node = kPeer;
    env.header.dst_node = (bits & 8) != 0 ? script.Byte() : ((bits & 0x40) != 0 ? 0 : kSelf);
    HandshakeInfo& hs = env.handshake;
    hs.node_id = (bits & 1) != 0 ? script.Byte() : kPeer;
    hs.nonce = (bits & 2) != 0 ? std::string(script.Byte() % 40, 'x') : peer_nonce;
    const bool right_proof = (bits & 4) == 0;
    const AuthRole role = client ? AuthRole::kServer : AuthRole::kClient;
    hs.proof = right_proof ? ComputeProof("token", role, client_nonce, server_nonce, client_id, server_id)
                           : ComputeProof(script.Text(), role, client_nonce, server_nonce, client_id, server_id);
    hs.node_name = script.Text();
    hs.listen_address = script.Text();
    hs.reason = script.Text();
    hs.instance = script.Byte();
    const std::string payload = (bits & 0x10) != 0 ? script.Text() : std::string();

    HandshakeStep step = h.OnMessage(env, payload);
    if (before == Handshake::State::kRefused) Require(step.refused.has_value());
    if (step.refused) {
      Require(h.state() == Handshake::State::kRefused && !step.ready && !step.open_direct_endpoint);
      Require(!step.reply || step.reply->kind == FrameKind::kReject);
      continue;
    }
    // What verifies is a proof made with the token over the nonces the two sides exchanged.
    const bool verifying_message = (client ? env.kind == FrameKind::kChallenge : env.kind == FrameKind::kAuth);
    if (verifying_message) {
      Require(right_proof || hs.proof == ComputeProof("token", role, client_nonce, server_nonce, client_id, server_id));
      if (client) Require(hs.nonce == peer_nonce && hs.node_id == kPeer);
      proven = true;
    }
    if (step.ready) {
      Require(h.authenticated() && proven && !ready);
      ready = true;
    }
    Require(h.authenticated() == ready);
    Require(h.peer_listen_address().empty() || h.authenticated());
    if (step.open_direct_endpoint) Require(!config.worker_address.empty() && !h.peer_worker_address().empty());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  if ((data[0] & 1) == 0) {
    FuzzBatch(static_cast<uint8_t>(data[0] >> 1), data + 1, size - 1);
  } else {
    FuzzHandshake(static_cast<uint8_t>(data[0] >> 1), data + 1, size - 1);
  }
  return 0;
}
