// Bridge: the bridge between CAF and the transport. Remote actors appear in this process as
// proxies whose messages reach the bridge; frames from peers become messages to local actors.
#pragma once

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/mailbox_element.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/status.h"
#include "runtime/actor_ref.h"
#include "runtime/codec.h"
#include "runtime/failure_detector.h"
#include "runtime/internal/progress_executor.h"
#include "runtime/pending_requests.h"
#include "transport/transport.h"

namespace troupe::runtime {

struct BridgeConfig {
  /// How long a request to a remote actor is remembered for routing its reply and for failing
  /// it fast when the node is lost. CAF times the request out on its own; this only bounds the
  /// table. Requests with longer timeouts still work but lose the fail-fast on node loss.
  std::chrono::milliseconds request_ttl{60000};
  /// More outstanding remote requests than this are refused with ResourceExhausted.
  size_t max_pending_requests = size_t{1} << 20;
  /// A connected node that sent nothing (not even a heartbeat) for this long is disconnected
  /// and counts as lost.
  std::chrono::milliseconds heartbeat_timeout{1000};
  /// Run an actor woken by a frame on the transport's progress thread (up to 32 messages a
  /// turn, then CAF's workers take over) instead of waking a CAF worker: a round trip then
  /// crosses no thread. Actors with long handlers should be spawned `caf::detached` (they
  /// keep their own thread): a handler that holds the progress thread delays this node's
  /// heartbeats and traffic.
  bool run_actors_on_progress_thread = true;
  /// Nodes that were lost whose addresses are still kept (a node that comes back tells its
  /// address again); beyond it the oldest are forgotten, so a head that serves a stream of
  /// short-lived clients (each a new node id) keeps a bounded table.
  size_t max_departed_nodes = 1024;
};

/// Upper bounds (seconds) of the remote request latency histogram's buckets (x4 apart).
inline constexpr double kLatencyBuckets[] = {10e-6,  40e-6,  160e-6, 640e-6, 2.56e-3, 10.24e-3,
                                             40.96e-3, 163.84e-3, 655.36e-3, 2.62144, 10.48576};
inline constexpr size_t kLatencyBucketCount = sizeof(kLatencyBuckets) / sizeof(kLatencyBuckets[0]);

/// Counters since start; read from any thread.
struct BridgeStats {
  uint64_t messages_out = 0;         ///< messages and replies handed to the transport
  uint64_t messages_in = 0;          ///< messages and replies delivered to local actors
  uint64_t requests_pending = 0;     ///< remote requests awaiting a reply now
  uint64_t requests_failed_node_lost = 0;  ///< pending requests failed because their node was lost
  /// Pending requests failed because their frame could not be sent (the transport refused it or
  /// reported it lost, often the first sign of a lost node; or the runtime stopped).
  uint64_t requests_failed_send = 0;
  uint64_t error_replies_sent = 0;   ///< requests from peers answered with an error by the bridge
  uint64_t dropped = 0;              ///< one-way messages that could not be encoded, decoded or delivered
  uint64_t late_replies = 0;         ///< replies for requests no longer pending
  uint64_t proxies = 0;              ///< proxies of remote actors alive now
  uint64_t nodes_lost = 0;           ///< peer failures (transport errors and missed heartbeats)
  uint64_t heartbeat_timeouts = 0;   ///< peers disconnected for missed heartbeats
  /// Remote request round trips (request sent to reply delivered): per-bucket counts (not
  /// cumulative; the last entry is +Inf), their number and sum.
  std::array<uint64_t, kLatencyBucketCount + 1> latency_buckets{};
  uint64_t latency_count = 0;
  double latency_sum_seconds = 0;
};

/// Frames of type ids [first_type, last_type] that bypass the actor layer (no codec, no mailbox):
/// the bulk path (runtime/bulk.h) receives payloads by rendezvous straight into buffers it
/// provides. Every function runs on the transport's progress thread and must not block.
struct FrameTap {
  uint32_t first_type = 0;
  uint32_t last_type = 0;
  /// The buffer a tapped frame's payload of `size` bytes lands in (an empty Buffer refuses it).
  std::function<Buffer(const transport::FrameHeader& header, size_t size)> allocate;
  /// A tapped frame (it counts as a sign of life of `peer`).
  std::function<void(NodeId peer, transport::Frame frame)> on_frame;
  /// `peer` is lost (after the bridge's own handling).
  std::function<void(NodeId peer, const Status& reason)> on_peer_failed;
};

/// What the bridge asks its runtime to do for peers: spawn and name lookup.
class ControlHandler {
 public:
  virtual ~ControlHandler() = default;
  virtual StatusOr<ActorRef> SpawnForPeer(const std::string& type_name, uint32_t args_type_id,
                                          const uint8_t* args, size_t args_size) = 0;
  virtual StatusOr<ActorRef> LookupForPeer(const std::string& name) = 0;
};

/// One per process, owned (through a shared_ptr) by the Runtime. It is thread-safe rather than
/// an actor with a mailbox: proxies call it on the sender's thread and the transport calls it
/// on the progress thread, so a message crosses no extra thread on its way out or in. Its CAF
/// face (actor()) is an actor whose enqueue runs inline.
///
/// Lifecycle: constructed -> Start() -> running -> Shutdown() (final: proxies are killed,
/// pending requests fail with Cancelled, later messages are refused).
class Bridge : public RefCodec, public std::enable_shared_from_this<Bridge> {
 public:
  Bridge(caf::actor_system& system, transport::Transport& transport, const CodecRegistry& codecs,
          BridgeConfig config, const Clock& clock, uint32_t incarnation);
  ~Bridge() override;

  /// Creates the bridge's CAF face. Call once, before the transport starts.
  void Start();
  void Shutdown();
  void set_control_handler(ControlHandler* handler) { control_ = handler; }
  /// Installs (or, with null, removes) the one frame tap. After a removal returns no call of the
  /// old tap is running or will start.
  void SetFrameTap(std::shared_ptr<FrameTap> tap);

  /// The actor every proxy forwards to.
  caf::actor actor() const { return actor_; }
  NodeId self() const { return self_; }
  uint32_t incarnation() const { return incarnation_; }

  // ---- Transport side (progress thread) ----
  /// The handler to start the transport with: it hands frames and peer events to the three
  /// calls below. The bridge must outlive the transport's run.
  transport::TransportHandler Handler();
  void OnFrame(NodeId peer, transport::Frame frame);
  void OnPeerConnected(NodeId peer);
  void OnPeerFailed(NodeId peer, const Status& reason);

  // ---- CAF side (any thread) ----
  /// Everything sent to actor(): proxy-creation notices, and the links and unlinks that CAF
  /// forwards from proxies (messages to proxies go to OnForward directly).
  void OnLocalMessage(caf::mailbox_element& element, caf::execution_unit* context);
  /// A message from `src` (null for anonymous sends) to remote actor `dest_id` of node
  /// `dest_node`: a request, a one-way message, or a local actor's reply to a peer's request.
  void OnForward(caf::strong_actor_ptr src, const caf::node_id& dest_node, caf::actor_id dest_id,
                 caf::message_id mid, caf::message msg);
  /// The same, for a destination node given as a troupe node id (what proxies know).
  void OnForward(caf::strong_actor_ptr src, NodeId dest_node, caf::actor_id dest_id, caf::message_id mid,
                 caf::message msg);

  /// Heartbeats, failure detection and the pending-request sweep. The runtime calls it every
  /// heartbeat interval; tests call it after advancing a ManualClock.
  void Tick();

  // ---- Refs ----
  /// The ref of a local or proxy actor.
  ActorRef RefOf(const caf::strong_actor_ptr& actor);
  /// The ref of actor `wire_id` on `node` (a proxy unless node is this one).
  ActorRef RefTo(NodeId node, uint64_t wire_id);
  /// Makes a local actor addressable by peers (until it exits). Encoding a ref does this.
  void MakeAddressable(const caf::strong_actor_ptr& actor);
  /// Records where `node` accepts connections.
  void AddNode(NodeId node, const std::string& address);
  void EncodeRef(const ActorRef& ref, wire::ActorAddress::Builder out) override;
  ActorRef DecodeRef(wire::ActorAddress::Reader in) override;

  /// Sends a runtime control request (spawn, lookup) to `node`; `done` runs once with the
  /// ActorRef of the reply or an error (Unavailable, DeadlineExceeded after `timeout`, or the
  /// peer's error).
  using RefCallback = PendingRequest::RefCallback;
  void ControlRequest(NodeId node, uint32_t type_id, Buffer payload, Clock::Duration timeout,
                      RefCallback done);

  BridgeStats stats() const;
  /// How long nothing has come from `node` (nullopt if it is not connected).
  std::optional<Clock::Duration> Silence(NodeId node) const;

 private:
  using Pending = PendingRequest;
  struct NodeState {
    std::unordered_map<uint64_t, caf::strong_actor_ptr> proxies;
  };

  void OnProxyCreated(const caf::strong_actor_ptr& proxy);
  /// Records a frame from `peer` as a sign of life (TouchLocked: with mu_ held; returns the
  /// peer's proxies, or null if it has none).
  void Touch(NodeId peer);
  NodeState* TouchLocked(NodeId peer);
  void Deliver(NodeId peer, const transport::FrameHeader& header, const Buffer& payload);
  void OnResponse(NodeId peer, const transport::FrameHeader& header, const Buffer& payload);
  void OnControl(NodeId peer, const transport::FrameHeader& header, const Buffer& payload);
  void OnMonitorRequest(NodeId peer, uint64_t wire_id);
  void OnDownNotice(NodeId peer, uint64_t wire_id, const Buffer& payload);
  void OnLocalActorDown(NodeId watcher, uint64_t wire_id, const caf::error& reason);

  /// The local actor with wire id `wire_id`, or NotFound saying why not.
  StatusOr<caf::strong_actor_ptr> LocalActor(uint64_t wire_id) const;
  uint64_t WireIdOf(const caf::strong_actor_ptr& actor) const;
  bool IsLocal(const caf::strong_actor_ptr& actor) const;
  caf::strong_actor_ptr ProxyFor(NodeId node, uint64_t wire_id);
  caf::strong_actor_ptr ExistingProxy(NodeId node, uint64_t wire_id);
  /// Removes the proxy from the table and returns it (null if there is none), for killing.
  caf::strong_actor_ptr TakeProxy(NodeId node, uint64_t wire_id);

  void SendFrame(NodeId peer, transport::FrameHeader header, Buffer payload,
                 transport::SendCallback done = {});
  void ReplyError(NodeId peer, const transport::FrameHeader& request, const Status& status);
  void SendDown(NodeId watcher, uint64_t wire_id, const caf::error& reason);
  /// Completes pending request `request_id` with `status`, its send's failure (if it is still
  /// pending).
  void FailPending(uint64_t request_id, const Status& status);
  void Complete(Pending pending, const Status& status);
  /// Delivers `reply` to the actor that made request `pending` and cancels its timeout.
  void AnswerRequester(const Pending& pending, caf::strong_actor_ptr sender, caf::message reply,
                       caf::execution_unit* context);
  std::string AddressOf(NodeId node);

  caf::actor_system& system_;
  transport::Transport& transport_;
  const CodecRegistry& codecs_;
  const BridgeConfig config_;
  const Clock& clock_;
  const NodeId self_;
  const uint32_t incarnation_;
  caf::actor actor_;
  std::unique_ptr<internal::ProgressExecutor> executor_;  // progress thread only
  ControlHandler* control_ = nullptr;
  std::atomic<int64_t> last_slow_warning_{0};
  std::atomic<bool> stopped_{false};
  // The frame tap: tap_mu_ is held while the tap runs, so SetFrameTap(nullptr) waits for it.
  std::atomic<bool> has_tap_{false};
  std::mutex tap_mu_;
  std::shared_ptr<FrameTap> tap_;

  mutable std::mutex mu_;  // guards everything below; never held while calling CAF or the transport
  std::unordered_map<NodeId, NodeState> nodes_;
  std::unordered_map<NodeId, std::string> addresses_;
  std::deque<NodeId> departed_;  // lost nodes, oldest first: their addresses go past max_departed_nodes
  PendingRequests pending_;    // requests to remote actors awaiting a reply
  FailureDetector detector_;   // heartbeat timeouts of connected peers
  std::set<std::pair<uint64_t, NodeId>> watches_;  // (local wire id, watching node)
  std::unordered_set<caf::actor_id> addressable_;     // local actors put in CAF's registry

  void RecordLatency(Clock::Duration d);
  std::array<std::atomic<uint64_t>, kLatencyBucketCount + 1> latency_buckets_{};
  std::atomic<uint64_t> latency_sum_ns_{0};
  std::atomic<uint64_t> messages_out_{0}, messages_in_{0}, requests_failed_node_lost_{0},
      requests_failed_send_{0}, error_replies_sent_{0}, dropped_{0}, late_replies_{0}, nodes_lost_{0},
      heartbeat_timeouts_{0};
};

}  // namespace troupe::runtime
