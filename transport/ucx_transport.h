// UcxTransport: the Transport that moves frames over UCX active messages.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "transport/transport.h"
#include "transport/ucx_options.h"

namespace troupe::transport {

/// Frames between processes and hosts over UCX: shared memory on one host, RDMA where the
/// hardware has it, TCP otherwise. One UCX context and worker per instance, owned by one
/// progress thread. Other threads hand it commands through a queue and wake it with
/// ucp_worker_signal; when idle it sleeps on the worker's event fd, so an idle process
/// burns no CPU.
///
/// Each frame is one active message: the encoded envelope (transport/envelope.capnp) in
/// the AM header, the payload as the AM body. Payloads at or above the rendezvous
/// threshold are pulled by the receiver straight into the buffer its handler provides.
///
/// A connection's lifecycle. It starts on a listener (sockaddr) endpoint, which only
/// bootstraps: hello and challenge carry each side's UCX worker address, and once both
/// sides have proved the token each opens a direct endpoint to the other's worker address
/// (UCX pairs the two) and data moves there; the client then retires the listener
/// endpoint. A listener endpoint always carries TCP lanes that UCX polls on every progress
/// call; a direct one carries only what the two workers share (shared memory on one host).
///
///   outbound: Connect --hello--> Handshaking --challenge ok: direct ep opened, auth sent-->
///             (wait) --accept, or data on the direct ep--> Ready --error/close--> Closed
///   inbound:  conn request --> Handshaking --hello: challenge sent--> (wait)
///             --auth ok: direct ep opened, accept sent--> Ready --error/close--> Closed
///   any Handshaking state --bad proof / reject / timeout--> Closed (counted)
///
/// Frames for a peer wait in its outbound connection until it is Ready; a peer's frames
/// are delivered in the order it sent them, including across rendezvous transfers.
/// With direct_endpoints off, everything stays on the listener endpoint.
class UcxTransport final : public Transport {
 public:
  explicit UcxTransport(UcxTransportConfig config);
  ~UcxTransport() override;

  Status Start(TransportHandler handler) override;
  void Stop() override;
  NodeId self() const override;
  std::string listen_address() const override;
  std::string PeerAddress(NodeId peer) const override;
  void AddPeer(NodeId peer, const std::string& address) override;
  Status Send(NodeId peer, const FrameHeader& header, Buffer payload,
              SendCallback done = {}) override;
  void Disconnect(NodeId peer, const Status& reason) override;
  TransportStats stats() const override;
  std::vector<PeerTraffic> peer_traffic() const override;

  /// UCX's own description of the connection used to send to `peer`: its lanes and the
  /// transports (posix, sysv, tcp, rc...) that carry them. Blocks until the progress
  /// thread answers; never call it from a handler.
  StatusOr<std::string> DescribePeer(NodeId peer);

  /// The UCX settings troupe applied (name without UCX_, value, why), after Start().
  std::vector<UcxSetting> ucx_settings() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace troupe::transport
