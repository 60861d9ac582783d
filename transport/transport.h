// Transport: the interface the runtime uses to move frames between processes and hosts.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/buffer.h"
#include "common/status.h"
#include "transport/frame.h"

namespace troupe::transport {

/// Called once per send, on the transport's progress thread, when the frame has left
/// (OK) or cannot be sent (Unavailable: the peer failed; Cancelled: the transport stopped;
/// ResourceExhausted: the peer refused its size; NotFound: no address for the peer). A Send()
/// from a handler may complete at once: its callback then runs before Send() returns, so the
/// caller must not hold a lock the callback takes.
using SendCallback = std::function<void(const Status&)>;

/// What the transport tells its owner. Every callback runs on the progress thread and
/// must not block: hand work to another thread or actor instead.
struct TransportHandler {
  /// A frame from an authenticated peer, in the order that peer sent it.
  std::function<void(NodeId peer, Frame frame)> on_frame;
  /// A peer finished the handshake and is ready for frames.
  std::function<void(NodeId peer)> on_peer_connected;
  /// The last connection to a peer failed or closed (UCX error, kill -9, link cut,
  /// Disconnect). Frames queued for it have already completed with an error. Not called
  /// for connections closed by this transport's own Stop().
  std::function<void(NodeId peer, const Status& reason)> on_peer_failed;
  /// Optional: provides the buffer a payload of `size` bytes is received into. Large
  /// payloads land in it directly by rendezvous. Defaults to Buffer::Allocate.
  std::function<Buffer(const FrameHeader& header, size_t size)> allocate_payload;
};

/// Counters since Start(); read with Transport::stats() from any thread.
struct TransportStats {
  uint64_t frames_sent = 0;
  uint64_t frames_received = 0;
  uint64_t batches_sent = 0;      ///< messages that carried several small frames to one peer
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  uint64_t send_errors = 0;
  uint64_t connections_accepted = 0;
  uint64_t connections_opened = 0;
  uint64_t peers_connected = 0;   ///< currently authenticated peers
  uint64_t connections_open = 0;  ///< connections not yet closed, authenticated or not
  uint64_t peer_failures = 0;
  uint64_t auth_failures = 0;     ///< handshakes refused (wrong token, bad proof, timeout)
  uint64_t rejected_malformed = 0;       ///< garbage or truncated envelopes
  uint64_t rejected_version = 0;         ///< unknown envelope version
  uint64_t rejected_oversized = 0;       ///< payload above max_frame_bytes
  uint64_t rejected_unauthenticated = 0; ///< data before or without authentication
  uint64_t rejected_busy = 0;    ///< rendezvous frames above max_rndv_bytes_in_flight
  uint64_t connections_refused = 0;  ///< closed on arrival: max_unauthenticated_connections reached
  uint64_t peers_known = 0;      ///< peers with transport state now (connected, or connecting)
  uint64_t addresses_known = 0;  ///< dial addresses kept (configured, connected, recently departed)
  uint64_t rndv_bytes_in_flight = 0;
};

/// Frames and payload bytes exchanged with one peer while it was connected. When a peer goes (its
/// last connection closes) its counts move to the entry with `peer` 0, the sum over departed
/// peers, so the list stays as long as the number of peers connected now.
struct PeerTraffic {
  NodeId peer = 0;
  uint64_t frames_in = 0;
  uint64_t bytes_in = 0;
  uint64_t frames_out = 0;
  uint64_t bytes_out = 0;
};

/// Moves frames between this process and its peers. Implementations own one progress
/// thread; Send() may be called from any thread, handlers run on the progress thread.
///
/// Lifecycle: constructed -> Start() -> running -> Stop() -> stopped (Stop is final).
class Transport {
 public:
  virtual ~Transport() = default;

  /// Opens the listener (if configured) and starts the progress thread.
  virtual Status Start(TransportHandler handler) = 0;
  /// Closes every connection, fails queued sends with Cancelled, joins the progress thread.
  virtual void Stop() = 0;

  /// This process's node id.
  virtual NodeId self() const = 0;
  /// "host:port" where peers can connect ("" when not listening). Valid after Start().
  virtual std::string listen_address() const = 0;

  /// Records where `peer` accepts connections; Send() connects on demand.
  virtual void AddPeer(NodeId peer, const std::string& address) = 0;
  /// Where `peer` accepts connections, as given to AddPeer or learnt from its handshake
  /// ("" if unknown).
  virtual std::string PeerAddress(NodeId peer) const = 0;

  /// Queues `payload` for `peer`. Errors found at once (stopped, oversized) are returned
  /// and `done` is not called; otherwise `done` (if set) is called exactly once later.
  /// Frames to one peer leave in the order of their Send() calls whenever one call happens
  /// before the other, on one thread or across threads (a handler's send included).
  virtual Status Send(NodeId peer, const FrameHeader& header, Buffer payload,
                      SendCallback done = {}) = 0;

  /// Closes every connection to `peer` (e.g. after missed heartbeats, which UCX cannot
  /// see): in-flight and queued sends complete with an error and on_peer_failed fires
  /// with `reason`. A later Send() reconnects.
  virtual void Disconnect(NodeId peer, const Status& reason) = 0;

  virtual TransportStats stats() const = 0;
  /// Traffic per peer. Asks the progress thread; never call it from a handler. Empty when the
  /// transport is not running.
  virtual std::vector<PeerTraffic> peer_traffic() const = 0;
};

}  // namespace troupe::transport
