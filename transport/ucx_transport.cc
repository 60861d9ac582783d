// UcxTransport: progress thread, connections, handshake, active-message send and receive.
#include "transport/ucx_transport.h"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <ucp/api/ucp.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <future>
#include <iterator>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "transport/address.h"
#include "transport/auth.h"
#include "transport/batch.h"
#include "transport/envelope.h"
#include "transport/handshake.h"

namespace troupe::transport {
namespace {

using Clock = std::chrono::steady_clock;

/// The one active-message id troupe registers; everything else is in the envelope.
constexpr unsigned kAmId = 0x7e;
/// Largest handshake payload (a UCX worker address) accepted.
constexpr size_t kMaxHandshakePayload = 64 * 1024;

std::string UcsError(ucs_status_t status) { return ucs_status_string(status); }

}  // namespace

class UcxTransport::Impl {
 public:
  explicit Impl(UcxTransportConfig config) : config_(std::move(config)) {
    config_.busy_poll = ResolveBusyPoll(config_.busy_poll, std::thread::hardware_concurrency());
  }

  // ---- Called from any thread --------------------------------------------------------

  Status Start(TransportHandler handler);
  void Stop();
  Status Send(NodeId peer, const FrameHeader& header, Buffer payload, SendCallback done);
  void RunOnProgressThread(std::function<void()> fn);
  StatusOr<std::string> DescribePeer(NodeId peer);
  void AddPeer(NodeId peer, const std::string& address) {
    std::lock_guard<std::mutex> lock(mu_);
    addresses_[peer] = address;
    counters_.addresses_known.store(addresses_.size(), std::memory_order_relaxed);
  }
  std::string AddressOf(NodeId peer) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = addresses_.find(peer);
    return it == addresses_.end() ? std::string() : it->second;
  }
  void Disconnect(NodeId peer, const Status& reason);
  TransportStats stats() const;
  std::vector<PeerTraffic> peer_traffic();

  const UcxTransportConfig& config() const { return config_; }
  std::string listen_address() const {
    std::lock_guard<std::mutex> lock(mu_);
    return advertised_address_;
  }
  std::vector<UcxSetting> settings() const {
    std::lock_guard<std::mutex> lock(mu_);
    return settings_;
  }

 private:
  // A command handed to the progress thread: a send, or a function to run there.
  struct Command {
    NodeId peer = 0;
    FrameHeader header;
    Buffer payload;
    SendCallback done;
    std::function<void()> fn;
  };

  enum class ConnState { kHandshaking, kReady, kClosed };

  // A frame received on a connection, waiting for earlier rendezvous frames to land.
  struct Delivery {
    FrameHeader header;
    Buffer payload;
    enum { kPending, kDone, kFailed } state = kPending;
    bool batch = false;  // payload holds several frames (FrameKind::kBatch)
  };

  struct Connection {
    Connection(Impl* owner, Handshake initial) : impl(owner), handshake(std::move(initial)) {}

    Impl* impl = nullptr;
    ucp_ep_h ep = nullptr;            // the listener (bootstrap) endpoint: handshakes
    ucp_ep_h direct_ep = nullptr;     // to the peer's worker address: data, once opened
    bool bootstrap_retired = false;   // `ep` closed after the move to `direct_ep`
    ConnState state = ConnState::kHandshaking;
    NodeId peer = 0;             // handshake.peer(), copied after every handshake step
    std::string remote_address;
    Clock::time_point deadline;
    std::deque<Command> queued;        // sends waiting for Ready
    std::vector<Command> batch;        // sends of this progress turn, flushed at its end
    std::deque<Delivery> deliveries;   // received, in arrival order
    // Sends on this connection that UCX has not completed yet (SendOp::conn). While there are
    // any, a handler's send does not take the direct path (TrySendNow).
    size_t sends_in_flight = 0;
    // Authentication; kReady exactly when it is authenticated (until the connection closes).
    // Last: the fields above are read for every frame, this only during the handshake.
    Handshake handshake;

    ucp_ep_h data_ep() const { return direct_ep != nullptr ? direct_ep : ep; }

    std::string Describe() const {
      if (peer != 0 && state == ConnState::kReady) {
        const std::string& name = handshake.peer_name();
        return "peer " + std::to_string(peer) + (name.empty() ? "" : " '" + name + "'") + " at " + remote_address;
      }
      return "unauthenticated peer at " + remote_address;
    }
  };
  using ConnPtr = std::shared_ptr<Connection>;

  struct Peer {
    ConnPtr send_conn;     // connection used for sending (Ready or Handshaking outbound)
    int ready_conns = 0;
    uint64_t instance = 0; // the process behind the ready connections (0: unknown)
    PeerTraffic traffic;   // counted on the progress thread, no lock
  };

  struct SendOp {
    EncodedEnvelope envelope;
    Buffer payload;
    SendCallback done;
    Impl* impl = nullptr;
    NodeId peer = 0;
    bool data = true;
    size_t frames = 1;        // data frames carried (more than one for a batch)
    size_t frame_bytes = 0;   // their payload bytes
    bool in_flight = false;   // in pending_sends_ (UCX completes it later)
    ConnPtr conn;             // while in flight: counted in its sends_in_flight
  };

  // A rendezvous receive in flight. It owns the payload buffer UCX writes into, and hands
  // it to its delivery slot only once the data has landed: closing a connection frees its
  // deliveries, never a buffer UCX may still be writing.
  struct RecvOp {
    ConnPtr conn;
    Delivery* delivery = nullptr;
    Buffer payload;
    Impl* impl = nullptr;
    size_t length = 0;  // counted in rndv_bytes_in_flight_ until it completes
  };

  struct RndvStart {
    ConnPtr conn;
    Delivery* delivery;
    Buffer payload;
    void* desc;
    size_t length;
  };

  struct Counters {
    std::atomic<uint64_t> frames_sent{0}, frames_received{0}, batches_sent{0}, bytes_sent{0}, bytes_received{0},
        send_errors{0}, connections_accepted{0}, connections_opened{0}, peers_connected{0}, connections_open{0},
        peer_failures{0}, auth_failures{0}, rejected_malformed{0}, rejected_version{0},
        rejected_oversized{0}, rejected_unauthenticated{0}, rejected_busy{0}, connections_refused{0},
        peers_known{0}, addresses_known{0}, rndv_bytes_in_flight{0};
  };

  // ---- Progress thread only -----------------------------------------------------------

  Status InitUcx();
  void Run(std::promise<Status>* started);
  void Shutdown();
  bool DrainCommands();
  // Progress thread: moves what other threads queued into local_, behind what is there.
  void AdoptIncoming();
  // Progress thread, inside ucp_worker_progress: sends a command at once when nothing could be
  // overtaken (local_ empty; a ready connection with nothing batched, queued or still in UCX's
  // hands) and UCX completes the send on the spot; false (cmd untouched) if it must queue.
  bool TrySendNow(Command& cmd);
  // Other threads: queues a command for the progress thread and wakes it; false once the
  // transport is closed (or stopping, if asked).
  bool QueueFromOtherThread(Command cmd, bool refuse_while_stopping);
  void ExecuteSend(Command cmd);
  void FlushBatches();
  void PostBatch(const ConnPtr& conn, std::vector<Command>& cmds, size_t begin, size_t end);
  void DeliverBatch(Connection* conn, const Buffer& batch);
  /// Counts one received frame and hands it to on_frame. False if the handler closed `conn`.
  bool DeliverFrame(Connection* conn, const FrameHeader& header, Buffer payload);
  /// A received message: one frame, or a batch split into its frames. False if a handler
  /// closed `conn`.
  bool DeliverOne(Connection* conn, const FrameHeader& header, Buffer payload, bool batch);
  void HandleConnRequests();
  void StartRndvReceives();
  void CheckDeadlines(Clock::time_point now);
  void ReapClosing();
  int PollTimeoutMs(Clock::time_point now) const;

  ConnPtr Connect(NodeId peer, const std::string& address);
  void RegisterEndpoint(const ConnPtr& conn);
  void SendControl(const ConnPtr& conn, FrameKind kind, const HandshakeInfo& hs,
                   const std::string& payload = {});
  void PostSend(const ConnPtr& conn, ucp_ep_h ep, FrameKind kind, const FrameHeader& header,
                const HandshakeInfo* hs, Buffer payload, SendCallback done, NodeId peer, size_t frames = 1,
                size_t frame_bytes = SIZE_MAX);
  void OpenDirectEndpoint(const ConnPtr& conn);
  void RetireBootstrap(const ConnPtr& conn, bool force);
  void CompleteSend(SendOp* op, ucs_status_t status);
  // Counts data frames whose send completed.
  void CountSent(NodeId peer, size_t frames, size_t frame_bytes);
  void OnHandshake(const ConnPtr& conn, const DecodedEnvelope& env, std::string_view payload);
  void BecomeReady(const ConnPtr& conn);
  // Fails the earlier inbound connections of the process behind the new inbound `conn`.
  void RetireSupersededInbound(const ConnPtr& conn);
  void Fail(const ConnPtr& conn, const Status& reason, bool graceful = false);
  void CloseEndpoint(ucp_ep_h ep, const ConnPtr& conn, bool force);
  void Deliver(Connection* conn);
  void CompleteRndv(RecvOp* op, ucs_status_t status);
  ConnPtr FindConnection(ucp_ep_h ep) const;
  void RejectFrame(const char* counter_name, std::atomic<uint64_t>& counter, const Connection* conn,
                   const std::string& what);
  // A peer with no connection left: its traffic joins departed_traffic_, its entry goes, and the
  // learned address of the peer that went longest ago is forgotten past max_departed_peers.
  void ForgetPeer(NodeId peer);
  Status StatusForSendError(ucs_status_t status, NodeId peer) const;

  static ucs_status_t OnAm(void* arg, const void* header, size_t header_length, void* data,
                           size_t length, const ucp_am_recv_param_t* param);
  ucs_status_t HandleAm(const void* header, size_t header_length, void* data, size_t length,
                        const ucp_am_recv_param_t* param);
  static void OnConnRequest(ucp_conn_request_h request, void* arg);
  static void OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status);
  static void OnSendDone(void* request, ucs_status_t status, void* user_data);
  static void OnRecvDone(void* request, ucs_status_t status, size_t length, void* user_data);

  UcxTransportConfig config_;
  // This process's HandshakeInfo::instance: random per start, never 0.
  uint64_t instance_ = 0;
  // What every handshake says of this process; set once the worker and listener exist.
  HandshakeConfig handshake_config_;
  TransportHandler handler_;
  Counters counters_;

  // Shared between threads, guarded by mu_.
  mutable std::mutex mu_;
  std::vector<Command> incoming_;
  // Set with incoming_ non-empty, so the spinning progress loop checks one atomic
  // instead of taking the lock on every turn.
  std::atomic<bool> has_incoming_{false};
  bool sleeping_ = false;
  bool closed_ = true;  // no worker to signal (not started, or stopped)
  std::string advertised_address_;
  std::vector<UcxSetting> settings_;
  std::unordered_map<NodeId, std::string> addresses_;  // where to dial each peer

  std::atomic<bool> stopping_{false};
  std::thread thread_;
  std::thread::id progress_thread_id_;

  // Progress thread only.
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  ucp_listener_h listener_ = nullptr;
  int efd_ = -1;
  std::string worker_address_;  // this worker's UCX address, sent to authenticating peers
  std::vector<Command> local_;
  // True while the loop's ucp_worker_progress runs and no handler has sent yet: the first
  // frame a receive handler sends then leaves at once (see Send).
  bool direct_send_open_ = false;
  std::vector<ConnPtr> batching_;  // connections with sends in their `batch`
  // Empty between uses; swapped with the vectors above (and a connection's `batch`) so that
  // each keeps its capacity: the loop allocates nothing per frame for its own bookkeeping.
  std::vector<Command> running_;
  std::vector<ConnPtr> flushing_;
  std::vector<Command> flushed_;
  std::vector<ucp_conn_request_h> conn_requests_;
  std::vector<RndvStart> rndv_starts_;
  std::unordered_map<ucp_ep_h, ConnPtr> conns_;
  std::unordered_map<NodeId, Peer> peers_;
  std::vector<std::pair<void*, ConnPtr>> closing_;
  size_t handshaking_ = 0;
  PeerTraffic departed_traffic_;      // what peers no longer in peers_ exchanged
  std::deque<NodeId> departed_;       // peers that went, oldest first (see ForgetPeer)
  uint64_t rndv_bytes_in_flight_ = 0;
  // Rejected frames are logged at most kRejectLogsPerSecond a second; the rest are counted.
  static constexpr int kRejectLogsPerSecond = 10;
  Clock::time_point reject_log_second_{};
  int reject_logs_ = 0;
  uint64_t reject_logs_suppressed_ = 0;
  // Operations UCX still owns; Shutdown() waits for them and completes any left over.
  std::unordered_set<SendOp*> pending_sends_;
  // Finished SendOps kept for reuse: each holds an inline envelope buffer, too big for
  // malloc's fast path.
  std::vector<std::unique_ptr<SendOp>> free_send_ops_;
  std::unordered_set<RecvOp*> pending_recvs_;
};

// ---- Start / Stop ---------------------------------------------------------------------

Status UcxTransport::Impl::Start(TransportHandler handler) {
  if (config_.node_id == 0) return InvalidArgumentError("transport: node_id must be non-zero");
  if (config_.cluster_token.empty()) {
    return InvalidArgumentError("transport: cluster_token is empty; peers authenticate with it");
  }
  if (config_.max_frame_bytes == 0) return InvalidArgumentError("transport: max_frame_bytes must be > 0");
  {
    const std::string random = RandomNonce();
    std::memcpy(&instance_, random.data(), std::min(sizeof instance_, random.size()));
    if (instance_ == 0) instance_ = 1;
  }
  if (config_.node_name.size() > kMaxHandshakeText) {
    return InvalidArgumentError("transport: node_name longer than " + std::to_string(kMaxHandshakeText));
  }
  if (thread_.joinable()) return FailedPreconditionError("transport: already started");
  if (!handler.allocate_payload) {
    handler.allocate_payload = [](const FrameHeader&, size_t size) { return Buffer::Allocate(size); };
  }
  handler_ = std::move(handler);
  std::promise<Status> started;
  auto future = started.get_future();
  thread_ = std::thread([this, &started] { Run(&started); });
  Status status = future.get();
  if (!status.ok()) {
    thread_.join();
  }
  return status;
}

void UcxTransport::Impl::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    if (!closed_ && sleeping_) ucp_worker_signal(worker_);
  }
  if (thread_.joinable() && std::this_thread::get_id() != thread_.get_id()) thread_.join();
}

Status UcxTransport::Impl::InitUcx() {
  auto settings = ResolveUcxSettings(config_, [](const char* name) { return std::getenv(name); });
  if (!settings.ok()) return settings.status();

  ucp_config_t* ucp_config = nullptr;
  ucs_status_t status = ucp_config_read(nullptr, nullptr, &ucp_config);
  if (status != UCS_OK) return InternalError("ucp_config_read: " + UcsError(status));
  for (const auto& s : *settings) {
    if (s.via_environment) {
      // Exported before ucp_init reads the transports' configuration. Resolution only
      // proposes these when the environment has no value of its own, or when the config
      // file names them explicitly.
      setenv(("UCX_" + s.name).c_str(), s.value.c_str(), /*overwrite=*/1);
      spdlog::debug("transport: UCX_{}={} ({}, via environment)", s.name, s.value, s.why);
      continue;
    }
    status = ucp_config_modify(ucp_config, s.name.c_str(), s.value.c_str());
    if (status != UCS_OK) {
      ucp_config_release(ucp_config);
      return InvalidArgumentError("UCX setting UCX_" + s.name + "=" + s.value + " (" + s.why +
                                  ") was refused: " + UcsError(status));
    }
    spdlog::debug("transport: UCX_{}={} ({})", s.name, s.value, s.why);
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  params.name = "troupe";
  status = ucp_init(&params, ucp_config, &context_);
  ucp_config_release(ucp_config);
  if (status != UCS_OK) return InternalError("ucp_init: " + UcsError(status));

  ucp_worker_params_t worker_params{};
  worker_params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  worker_params.thread_mode = UCS_THREAD_MODE_SINGLE;
  status = ucp_worker_create(context_, &worker_params, &worker_);
  if (status != UCS_OK) return InternalError("ucp_worker_create: " + UcsError(status));
  status = ucp_worker_get_efd(worker_, &efd_);
  if (status != UCS_OK) return InternalError("ucp_worker_get_efd: " + UcsError(status));
  if (config_.direct_endpoints) {
    ucp_address_t* address = nullptr;
    size_t address_length = 0;
    status = ucp_worker_get_address(worker_, &address, &address_length);
    if (status != UCS_OK) return InternalError("ucp_worker_get_address: " + UcsError(status));
    worker_address_.assign(reinterpret_cast<const char*>(address), address_length);
    ucp_worker_release_address(worker_, address);
  }

  ucp_am_handler_param_t am{};
  am.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                  UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
  am.id = kAmId;
  am.cb = &Impl::OnAm;
  am.arg = this;
  am.flags = UCP_AM_FLAG_WHOLE_MSG;
  status = ucp_worker_set_am_recv_handler(worker_, &am);
  if (status != UCS_OK) return InternalError("ucp_worker_set_am_recv_handler: " + UcsError(status));

  std::string advertised = config_.advertise_address;
  if (!config_.listen_address.empty()) {
    auto addr = ParseSocketAddress(config_.listen_address);
    if (!addr.ok()) return InvalidArgumentError("transport listen_address: " + addr.status().message());
    ucp_listener_params_t lp{};
    lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
    lp.sockaddr.addr = reinterpret_cast<const sockaddr*>(&addr->storage);
    lp.sockaddr.addrlen = addr->length;
    lp.conn_handler.cb = &Impl::OnConnRequest;
    lp.conn_handler.arg = this;
    status = ucp_listener_create(worker_, &lp, &listener_);
    if (status != UCS_OK) {
      return UnavailableError("cannot listen on " + config_.listen_address + ": " + UcsError(status) +
                              (status == UCS_ERR_BUSY ? " (the port is in use)" : ""));
    }
    ucp_listener_attr_t attr{};
    attr.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
    status = ucp_listener_query(listener_, &attr);
    if (status != UCS_OK) return InternalError("ucp_listener_query: " + UcsError(status));
    std::string bound = FormatSocketAddress(reinterpret_cast<const sockaddr*>(&attr.sockaddr));
    if (advertised.empty()) advertised = bound;
    spdlog::info("transport: node {} listening on {}", config_.node_id, bound);
  }
  handshake_config_.node_id = config_.node_id;
  handshake_config_.node_name = config_.node_name;
  handshake_config_.listen_address = advertised;
  handshake_config_.cluster_token = config_.cluster_token;
  handshake_config_.instance = instance_;
  handshake_config_.worker_address = worker_address_;
  std::lock_guard<std::mutex> lock(mu_);
  advertised_address_ = advertised;
  settings_ = std::move(*settings);
  closed_ = false;
  return OkStatus();
}

void UcxTransport::Impl::Run(std::promise<Status>* started) {
  progress_thread_id_ = std::this_thread::get_id();
  Status init = InitUcx();
  if (!init.ok()) {
    Shutdown();
    started->set_value(init);
    return;
  }
  started->set_value(OkStatus());

  auto last_activity = Clock::now();
  // Idle turns since the clock was last read: reading it every turn slows the spin.
  unsigned idle_turns = 0;
  while (true) {
    bool active = DrainCommands();
    // One progress call per turn, not until UCX runs dry: what the handlers of this call sent
    // (replies, follow-up requests) leaves at the next DrainCommands, while the peer is still
    // sending (all but the first frame, which leaves from inside the call: see Send). Draining
    // everything first made both sides take turns: each let the other's whole window arrive
    // before answering any of it, and idled while the other did the same.
    direct_send_open_ = true;
    if (ucp_worker_progress(worker_) != 0) active = true;
    direct_send_open_ = false;
    if (!conn_requests_.empty()) {
      HandleConnRequests();
      active = true;
    }
    if (!rndv_starts_.empty()) {
      StartRndvReceives();
      active = true;
    }
    if (!closing_.empty()) ReapClosing();
    if (!local_.empty()) continue;
    if (active) {
      idle_turns = 0;
      last_activity = Clock::time_point();  // read lazily on the next idle check
      if (handshaking_ > 0) CheckDeadlines(Clock::now());
      continue;
    }
    if (++idle_turns % 64 != 0 && !stopping_.load(std::memory_order_relaxed)) continue;
    auto now = Clock::now();
    if (last_activity == Clock::time_point()) last_activity = now;
    if (handshaking_ > 0) CheckDeadlines(now);
    if (stopping_.load(std::memory_order_acquire)) break;
    if (now - last_activity < config_.busy_poll) continue;

    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!incoming_.empty()) continue;
      sleeping_ = true;
    }
    ucs_status_t status = ucp_worker_arm(worker_);
    if (status == UCS_OK) {
      pollfd pfd{efd_, POLLIN, 0};
      int rc = poll(&pfd, 1, PollTimeoutMs(now));
      if (rc < 0 && errno != EINTR) spdlog::error("transport: poll failed: {}", std::strerror(errno));
    } else if (status != UCS_ERR_BUSY) {
      spdlog::error("transport: ucp_worker_arm: {}", UcsError(status));
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      sleeping_ = false;
    }
    last_activity = Clock::now();
  }
  Shutdown();
}

int UcxTransport::Impl::PollTimeoutMs(Clock::time_point now) const {
  if (!closing_.empty()) return 1;
  // UCX checks its peers (keepalive) only from progress: wake for it while connected.
  const int keepalive_ms = conns_.empty() ? -1 : static_cast<int>(std::max<int64_t>(1, config_.keepalive_interval.count()));
  if (handshaking_ == 0) return keepalive_ms;
  auto earliest = Clock::time_point::max();
  for (const auto& [ep, conn] : conns_) {
    if (conn->state == ConnState::kHandshaking) earliest = std::min(earliest, conn->deadline);
  }
  if (earliest == Clock::time_point::max()) return keepalive_ms;
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(earliest - now).count() + 1;
  int deadline_ms = static_cast<int>(std::max<int64_t>(ms, 1));
  return keepalive_ms < 0 ? deadline_ms : std::min(deadline_ms, keepalive_ms);
}

void UcxTransport::Impl::Shutdown() {
  std::vector<ConnPtr> all;
  for (auto& [ep, conn] : conns_) all.push_back(conn);
  for (auto& conn : all) Fail(conn, CancelledError("transport stopped"));
  for (auto& cmd : local_) {
    if (cmd.done) cmd.done(CancelledError("transport stopped"));
  }
  local_.clear();
  if (worker_ != nullptr) {
    // A forced close completes its endpoint's requests from later progress calls, so keep
    // progressing until UCX has handed every operation back (bounded).
    auto deadline = Clock::now() + std::chrono::seconds(2);
    while ((!closing_.empty() || !pending_sends_.empty() || !pending_recvs_.empty()) &&
           Clock::now() < deadline) {
      ucp_worker_progress(worker_);
      ReapClosing();
    }
    if (!closing_.empty() || !pending_sends_.empty() || !pending_recvs_.empty()) {
      spdlog::warn("transport: {} closes, {} sends and {} receives still open at shutdown; abandoning them",
                   closing_.size(), pending_sends_.size(), pending_recvs_.size());
    }
    // Whatever UCX did not hand back is completed here; its callbacks can no longer run
    // once the worker is destroyed.
    closing_.clear();
    // UCX never handed these back, so it may still touch their buffers: their owners are
    // told, but the operations (and their payloads) are deliberately leaked, not freed.
    auto sends = std::move(pending_sends_);
    pending_sends_.clear();
    for (SendOp* op : sends) {
      counters_.send_errors.fetch_add(1, std::memory_order_relaxed);
      if (op->done) op->done(CancelledError("transport stopped"));
      op->done = nullptr;
      op->conn.reset();
    }
    pending_recvs_.clear();
  }
  std::vector<Command> pending;
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    pending.swap(incoming_);
  }
  for (auto& cmd : pending) {
    if (cmd.done) cmd.done(CancelledError("transport stopped"));
  }
  for (auto request : conn_requests_) {
    if (listener_ != nullptr) ucp_listener_reject(listener_, request);
  }
  conn_requests_.clear();
  if (listener_ != nullptr) ucp_listener_destroy(listener_);
  listener_ = nullptr;
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  worker_ = nullptr;
  if (context_ != nullptr) ucp_cleanup(context_);
  context_ = nullptr;
}

// ---- Commands from other threads ------------------------------------------------------

Status UcxTransport::Impl::Send(NodeId peer, const FrameHeader& header, Buffer payload,
                                SendCallback done) {
  if (peer == 0) return InvalidArgumentError("send: peer node id 0 is invalid");
  if (payload.size() > config_.max_frame_bytes) {
    return ResourceExhaustedError("send: payload of " + std::to_string(payload.size()) +
                                  " bytes exceeds max_frame_bytes " +
                                  std::to_string(config_.max_frame_bytes));
  }
  Command cmd;
  cmd.peer = peer;
  cmd.header = header;
  cmd.header.src_node = config_.node_id;
  cmd.header.dst_node = peer;
  cmd.payload = std::move(payload);
  cmd.done = std::move(done);
  if (std::this_thread::get_id() == progress_thread_id_) {
    // From a handler: no lock, no wake-up. Frames other threads queued before this call go
    // first (an actor that sent from a CAF worker and now runs here keeps its order).
    AdoptIncoming();
    if (direct_send_open_) {
      // The first frame a receive handler sends in this progress call (a reply, or the request
      // an answered actor sends next) leaves now rather than after progress returns: a round
      // trip then skips the queue's bookkeeping and waits for no other frame. Later frames of
      // the same call queue behind it and are batched as before. (UCX allows sending from an
      // active-message handler.)
      direct_send_open_ = false;
      if (TrySendNow(cmd)) return OkStatus();
    }
    local_.push_back(std::move(cmd));  // the loop drains local_ right after progress
    return OkStatus();
  }
  if (!QueueFromOtherThread(std::move(cmd), /*refuse_while_stopping=*/true)) {
    return CancelledError("send: transport is not running");
  }
  return OkStatus();
}

void UcxTransport::Impl::RunOnProgressThread(std::function<void()> fn) {
  Command cmd;
  cmd.fn = std::move(fn);
  if (std::this_thread::get_id() == progress_thread_id_) {
    AdoptIncoming();
    local_.push_back(std::move(cmd));
    return;
  }
  QueueFromOtherThread(std::move(cmd), /*refuse_while_stopping=*/false);
}

bool UcxTransport::Impl::QueueFromOtherThread(Command cmd, bool refuse_while_stopping) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_ || (refuse_while_stopping && stopping_)) return false;
  incoming_.push_back(std::move(cmd));
  has_incoming_.store(true, std::memory_order_release);
  if (sleeping_) ucp_worker_signal(worker_);
  return true;
}

void UcxTransport::Impl::AdoptIncoming() {
  if (!has_incoming_.load(std::memory_order_acquire)) return;
  std::lock_guard<std::mutex> lock(mu_);
  local_.insert(local_.end(), std::make_move_iterator(incoming_.begin()), std::make_move_iterator(incoming_.end()));
  incoming_.clear();
  has_incoming_.store(false, std::memory_order_relaxed);
}

bool UcxTransport::Impl::TrySendNow(Command& cmd) {
  if (!local_.empty()) return false;  // nothing queued may be overtaken
  auto it = peers_.find(cmd.peer);
  if (it == peers_.end() || it->second.send_conn == nullptr) return false;
  Connection* conn = it->second.send_conn.get();
  if (conn->state != ConnState::kReady || !conn->batch.empty() || !conn->queued.empty() ||
      conn->sends_in_flight != 0) {
    return false;
  }
  // UCX 1.13 does not keep the order of an active message posted from inside ucp_worker_progress
  // against the sends it still holds for the endpoint: such a frame overtook earlier ones still
  // in UCX's hands, or was itself overtaken by the next frame posted after the progress call
  // (transport bench under load: a stream's last frame arrived ahead of up to 11 earlier ones).
  // Hence the direct path only with nothing of this connection in flight, and only for a
  // send UCX completes on the spot (its short path): the frame is then gone before anything
  // after it is posted. Anything else queues and leaves at the end of the turn.
  EncodedEnvelope envelope;
  if (!EncodeEnvelope(FrameKind::kData, cmd.header, nullptr, &envelope).ok()) return false;  // the queue reports it
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS | UCP_OP_ATTR_FLAG_FORCE_IMM_CMPL;
  param.flags = UCP_AM_SEND_FLAG_REPLY;  // see PostSend
  ucs_status_ptr_t request = ucp_am_send_nbx(conn->data_ep(), kAmId, envelope.bytes, envelope.size,
                                             cmd.payload.data(), cmd.payload.size(), &param);
  // With FORCE_IMM_CMPL UCX returns no request: the send completed, or it did not start.
  if (request != nullptr) return false;
  CountSent(cmd.peer, 1, cmd.payload.size());
  if (cmd.done) cmd.done(OkStatus());
  return true;
}

bool UcxTransport::Impl::DrainCommands() {
  bool any = false;
  auto execute = [&](std::vector<Command>& commands) {
    for (auto& cmd : commands) {
      any = true;
      if (cmd.fn) {
        cmd.fn();
      } else {
        ExecuteSend(std::move(cmd));
      }
    }
  };
  auto run_local = [&] {
    while (!local_.empty()) {
      running_.swap(local_);
      execute(running_);
      running_.clear();
    }
  };
  // Sends issued by handlers during the last progress go first: another thread may already be
  // reacting to what those handlers did (a reply it waited for), and its sends must not
  // overtake them (a monitor request must reach the peer before the message that kills the
  // monitored actor). What other threads queued before a handler sent was taken into local_
  // ahead of that send (AdoptIncoming), so each sender's frames keep the order of its calls.
  run_local();
  if (has_incoming_.load(std::memory_order_acquire)) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      running_.swap(incoming_);
      has_incoming_.store(false, std::memory_order_relaxed);
    }
    execute(running_);
    running_.clear();
  }
  run_local();  // sends issued by the fns above
  FlushBatches();
  return any;
}

void UcxTransport::Impl::ExecuteSend(Command cmd) {
  auto it = peers_.find(cmd.peer);
  if (it == peers_.end() || it->second.send_conn == nullptr) {
    std::string address = AddressOf(cmd.peer);
    if (address.empty()) {
      // No entry is made: sends to unknown ids leave no state behind.
      counters_.send_errors.fetch_add(1, std::memory_order_relaxed);
      if (cmd.done) cmd.done(NotFoundError("no connection to node " + std::to_string(cmd.peer) +
                                           " and no address for it"));
      return;
    }
    it = peers_.try_emplace(cmd.peer).first;
    counters_.peers_known.store(peers_.size(), std::memory_order_relaxed);
    it->second.send_conn = Connect(cmd.peer, address);
    if (it->second.send_conn == nullptr) {
      counters_.send_errors.fetch_add(1, std::memory_order_relaxed);
      if (cmd.done) cmd.done(UnavailableError("cannot connect to node " + std::to_string(cmd.peer) +
                                              " at " + address));
      return;
    }
  }
  Connection* conn = it->second.send_conn.get();
  if (conn->state == ConnState::kReady) {
    // Sent at the end of this drain (FlushBatches), with whatever else goes to this peer.
    if (conn->batch.empty()) batching_.push_back(it->second.send_conn);
    conn->batch.push_back(std::move(cmd));
  } else {
    conn->queued.push_back(std::move(cmd));
  }
}

void UcxTransport::Impl::FlushBatches() {
  if (batching_.empty()) return;
  flushing_.swap(batching_);
  for (auto& conn : flushing_) {
    std::vector<Command>& cmds = flushed_;
    cmds.clear();
    cmds.swap(conn->batch);
    if (conn->state != ConnState::kReady) {  // closed during this drain
      for (auto& cmd : cmds) {
        counters_.send_errors.fetch_add(1, std::memory_order_relaxed);
        if (cmd.done) cmd.done(UnavailableError("connection to node " + std::to_string(conn->peer) + " closed"));
      }
      continue;
    }
    // Runs of small frames go as batches; a large frame goes alone. Order is kept.
    size_t i = 0;
    while (i < cmds.size()) {
      size_t end = i;
      size_t bytes = 0;
      while (end < cmds.size() && end - i < kMaxBatchFrames && cmds[end].payload.size() <= kMaxBatchedPayload &&
             bytes + cmds[end].payload.size() + 128 <= kMaxBatchBytes) {
        bytes += cmds[end].payload.size() + 128;  // 128: room for the record's envelope
        ++end;
      }
      if (end - i >= 2) {
        PostBatch(conn, cmds, i, end);
        i = end;
      } else {
        Command& cmd = cmds[i++];
        PostSend(conn, conn->data_ep(), FrameKind::kData, cmd.header, nullptr, std::move(cmd.payload),
                 std::move(cmd.done), cmd.peer);
      }
    }
  }
  flushed_.clear();
  flushing_.clear();
}

void UcxTransport::Impl::PostBatch(const ConnPtr& conn, std::vector<Command>& cmds, size_t begin, size_t end) {
  // Built in a string that the send's buffer then owns (no second copy).
  auto bytes_owner = std::make_unique<std::string>();
  std::string& bytes = *bytes_owner;
  bytes.reserve(kMaxBatchBytes);
  std::vector<SendCallback> dones;
  size_t frame_bytes = 0;
  size_t frames = 0;
  EncodedEnvelope env;
  for (size_t k = begin; k < end; ++k) {
    Command& cmd = cmds[k];
    Status encoded = EncodeEnvelope(FrameKind::kData, cmd.header, nullptr, &env);
    if (!encoded.ok()) {
      counters_.send_errors.fetch_add(1, std::memory_order_relaxed);
      if (cmd.done) cmd.done(encoded);
      continue;
    }
    AppendBatchRecord(env, cmd.payload.data(), cmd.payload.size(), &bytes);
    frame_bytes += cmd.payload.size();
    ++frames;
    if (cmd.done) dones.push_back(std::move(cmd.done));
  }
  if (frames == 0) return;
  SendCallback done;
  if (!dones.empty()) {
    done = [dones = std::move(dones)](const Status& status) {
      for (const auto& d : dones) d(status);
    };
  }
  FrameHeader header;
  header.src_node = config_.node_id;
  header.dst_node = conn->peer;
  counters_.batches_sent.fetch_add(1, std::memory_order_relaxed);
  std::string* owned = bytes_owner.release();
  Buffer payload(reinterpret_cast<uint8_t*>(owned->data()), owned->size(),
                 [owned](uint8_t*, size_t) { delete owned; });
  PostSend(conn, conn->data_ep(), FrameKind::kBatch, header, nullptr, std::move(payload), std::move(done),
           conn->peer, frames, frame_bytes);
}

void UcxTransport::Impl::Disconnect(NodeId peer, const Status& reason) {
  RunOnProgressThread([this, peer, reason] {
    std::vector<ConnPtr> doomed;
    for (auto& [ep, conn] : conns_) {
      if (conn->peer == peer) doomed.push_back(conn);
    }
    for (auto& conn : doomed) Fail(conn, reason);
  });
}

StatusOr<std::string> UcxTransport::Impl::DescribePeer(NodeId peer) {
  auto promise = std::make_shared<std::promise<StatusOr<std::string>>>();
  auto future = promise->get_future();
  RunOnProgressThread([this, peer, promise] {
    auto it = peers_.find(peer);
    if (it == peers_.end() || it->second.send_conn == nullptr ||
        it->second.send_conn->state != ConnState::kReady) {
      promise->set_value(NotFoundError("no ready connection to node " + std::to_string(peer)));
      return;
    }
    char* text = nullptr;
    size_t size = 0;
    FILE* stream = open_memstream(&text, &size);
    ucp_ep_print_info(it->second.send_conn->data_ep(), stream);
    std::fclose(stream);
    std::string out(text, size);
    std::free(text);
    promise->set_value(out);
  });
  if (future.wait_for(std::chrono::seconds(5)) != std::future_status::ready) {
    return UnavailableError("transport progress thread did not answer");
  }
  return future.get();
}

std::vector<PeerTraffic> UcxTransport::Impl::peer_traffic() {
  auto promise = std::make_shared<std::promise<std::vector<PeerTraffic>>>();
  auto future = promise->get_future();
  RunOnProgressThread([this, promise] {
    std::vector<PeerTraffic> out;
    for (const auto& [id, peer] : peers_) {
      out.push_back(peer.traffic);
      out.back().peer = id;
    }
    if (departed_traffic_.frames_in + departed_traffic_.frames_out > 0) {
      out.push_back(departed_traffic_);
      out.back().peer = 0;
    }
    promise->set_value(std::move(out));
  });
  if (future.wait_for(std::chrono::seconds(2)) != std::future_status::ready) return {};
  return future.get();
}

// ---- Connections --------------------------------------------------------------------

UcxTransport::Impl::ConnPtr UcxTransport::Impl::Connect(NodeId peer, const std::string& address) {
  auto addr = ParseSocketAddress(address);
  if (!addr.ok()) {
    spdlog::error("transport: cannot connect to node {}: {}", peer, addr.status().message());
    return nullptr;
  }
  auto conn = std::make_shared<Connection>(this, Handshake::Client(&handshake_config_, peer, RandomNonce()));
  conn->peer = peer;
  conn->remote_address = address;
  conn->deadline = Clock::now() + config_.handshake_timeout;

  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                      UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
  params.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
  params.sockaddr.addr = reinterpret_cast<const sockaddr*>(&addr->storage);
  params.sockaddr.addrlen = addr->length;
  params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  params.err_handler.cb = &Impl::OnEpError;
  params.err_handler.arg = conn.get();
  ucs_status_t status = ucp_ep_create(worker_, &params, &conn->ep);
  if (status != UCS_OK) {
    spdlog::error("transport: cannot connect to node {} at {}: {}", peer, address, UcsError(status));
    return nullptr;
  }
  counters_.connections_opened.fetch_add(1, std::memory_order_relaxed);
  RegisterEndpoint(conn);

  const HandshakeMessage hello = conn->handshake.Hello();
  SendControl(conn, hello.kind, hello.info, hello.payload);
  return conn;
}

void UcxTransport::Impl::RegisterEndpoint(const ConnPtr& conn) {
  conns_[conn->ep] = conn;
  ++handshaking_;
  counters_.connections_open.fetch_add(1, std::memory_order_relaxed);
}

void UcxTransport::Impl::OnConnRequest(ucp_conn_request_h request, void* arg) {
  // Endpoints are created after ucp_worker_progress returns, not inside its callback.
  static_cast<Impl*>(arg)->conn_requests_.push_back(request);
}

void UcxTransport::Impl::HandleConnRequests() {
  std::vector<ucp_conn_request_h> requests;
  requests.swap(conn_requests_);
  for (ucp_conn_request_h request : requests) {
    counters_.connections_accepted.fetch_add(1, std::memory_order_relaxed);
    auto conn = std::make_shared<Connection>(this, Handshake::Server(&handshake_config_, RandomNonce()));
    conn->deadline = Clock::now() + config_.handshake_timeout;
    ucp_conn_request_attr_t attr{};
    attr.field_mask = UCP_CONN_REQUEST_ATTR_FIELD_CLIENT_ADDR;
    if (ucp_conn_request_query(request, &attr) == UCS_OK) {
      conn->remote_address = FormatSocketAddress(reinterpret_cast<const sockaddr*>(&attr.client_address));
    } else {
      conn->remote_address = "<unknown>";
    }
    ucp_ep_params_t params{};
    params.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                        UCP_EP_PARAM_FIELD_ERR_HANDLER;
    params.conn_request = request;
    params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    params.err_handler.cb = &Impl::OnEpError;
    params.err_handler.arg = conn.get();
    ucs_status_t status = ucp_ep_create(worker_, &params, &conn->ep);
    if (status != UCS_OK) {
      spdlog::warn("transport: cannot accept connection from {}: {}", conn->remote_address,
                   UcsError(status));
      continue;
    }
    spdlog::debug("transport: accepted connection from {}", conn->remote_address);
    RegisterEndpoint(conn);
    if (handshaking_ > config_.max_unauthenticated_connections) {
      counters_.connections_refused.fetch_add(1, std::memory_order_relaxed);
      spdlog::warn("transport: closed a connection from {} on arrival: {} connections are already authenticating "
                   "(max_unauthenticated_connections)", conn->remote_address, handshaking_ - 1);
      Fail(conn, ResourceExhaustedError("too many unauthenticated connections"));
    }
  }
}

UcxTransport::Impl::ConnPtr UcxTransport::Impl::FindConnection(ucp_ep_h ep) const {
  auto it = conns_.find(ep);
  return it == conns_.end() ? nullptr : it->second;
}

void UcxTransport::Impl::OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status) {
  auto* raw = static_cast<Connection*>(arg);
  Impl* self = raw->impl;
  ConnPtr conn = self->FindConnection(ep);
  if (conn == nullptr || conn.get() != raw) return;  // already closed
  if (ep == conn->ep && conn->direct_ep != nullptr && conn->state == ConnState::kReady) {
    // The peer closed the listener connection after moving to the direct endpoint.
    self->RetireBootstrap(conn, /*force=*/true);
    return;
  }
  self->Fail(conn, UnavailableError("connection to " + conn->Describe() + " failed: " + UcsError(status)));
}

void UcxTransport::Impl::CheckDeadlines(Clock::time_point now) {
  std::vector<ConnPtr> expired;
  for (auto& [ep, conn] : conns_) {
    if (conn->state == ConnState::kHandshaking && now >= conn->deadline) expired.push_back(conn);
  }
  for (auto& conn : expired) {
    if (conn->state != ConnState::kHandshaking) continue;  // listed twice (two endpoints)
    counters_.auth_failures.fetch_add(1, std::memory_order_relaxed);
    spdlog::warn("transport: {} did not authenticate within {} ms; closing", conn->Describe(),
                 config_.handshake_timeout.count());
    Fail(conn, UnavailableError("handshake with " + conn->Describe() + " timed out"));
  }
}

void UcxTransport::Impl::CloseEndpoint(ucp_ep_h ep, const ConnPtr& conn, bool force) {
  if (ep == nullptr) return;
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  void* request = ucp_ep_close_nbx(ep, &param);
  // The connection (the error handler's argument) lives until the close completes.
  if (UCS_PTR_IS_PTR(request)) closing_.emplace_back(request, conn);
}

void UcxTransport::Impl::OpenDirectEndpoint(const ConnPtr& conn) {
  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER;
  // The address came from a peer that has proved it holds the cluster token.
  params.address = reinterpret_cast<const ucp_address_t*>(conn->handshake.peer_worker_address().data());
  params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  params.err_handler.cb = &Impl::OnEpError;
  params.err_handler.arg = conn.get();
  ucs_status_t status = ucp_ep_create(worker_, &params, &conn->direct_ep);
  if (status != UCS_OK) {
    conn->direct_ep = nullptr;
    spdlog::warn("transport: cannot open a direct endpoint to {}: {}; staying on the listener connection",
                 conn->Describe(), UcsError(status));
    return;
  }
  conns_[conn->direct_ep] = conn;
}

void UcxTransport::Impl::RetireBootstrap(const ConnPtr& conn, bool force) {
  if (conn->bootstrap_retired || conn->ep == nullptr) return;
  conn->bootstrap_retired = true;
  conns_.erase(conn->ep);
  CloseEndpoint(conn->ep, conn, force);
}

void UcxTransport::Impl::ReapClosing() {
  for (size_t i = 0; i < closing_.size();) {
    if (ucp_request_check_status(closing_[i].first) != UCS_INPROGRESS) {
      ucp_request_free(closing_[i].first);
      closing_[i] = std::move(closing_.back());
      closing_.pop_back();
    } else {
      ++i;
    }
  }
}

void UcxTransport::Impl::Fail(const ConnPtr& conn, const Status& reason, bool graceful) {
  if (conn->state == ConnState::kClosed) return;
  bool was_ready = conn->state == ConnState::kReady;
  if (!was_ready) --handshaking_;
  conn->state = ConnState::kClosed;
  counters_.connections_open.fetch_sub(1, std::memory_order_relaxed);
  if (!conn->bootstrap_retired) {
    conns_.erase(conn->ep);
    CloseEndpoint(conn->ep, conn, !graceful);
  }
  if (conn->direct_ep != nullptr) {
    conns_.erase(conn->direct_ep);
    CloseEndpoint(conn->direct_ep, conn, /*force=*/true);
  }
  conn->deliveries.clear();

  Status queued_status = reason.code() == StatusCode::kCancelled || reason.code() == StatusCode::kPermissionDenied
                             ? reason
                             : UnavailableError(reason.message());
  auto queued = std::move(conn->queued);
  conn->queued.clear();
  for (auto& cmd : queued) {
    counters_.send_errors.fetch_add(1, std::memory_order_relaxed);
    if (cmd.done) cmd.done(queued_status);
  }

  if (conn->peer == 0) return;
  auto it = peers_.find(conn->peer);
  if (it == peers_.end()) return;
  Peer& peer = it->second;
  bool was_send_conn = peer.send_conn == conn;
  if (was_ready) --peer.ready_conns;
  if (was_send_conn) {
    peer.send_conn = nullptr;
    for (auto& [ep, other] : conns_) {
      if (other->peer == conn->peer && other->state == ConnState::kReady) {
        peer.send_conn = other;
        break;
      }
    }
  }
  if (was_ready && peer.ready_conns == 0) {
    counters_.peers_connected.fetch_sub(1, std::memory_order_relaxed);
  }
  // Our own Stop() is not a peer failure: nobody is told, only queued sends are failed.
  if ((was_ready || was_send_conn) && peer.ready_conns == 0 && peer.send_conn == nullptr &&
      !stopping_.load(std::memory_order_acquire)) {
    counters_.peer_failures.fetch_add(1, std::memory_order_relaxed);
    spdlog::info("transport: lost node {}: {}", conn->peer, reason.message());
    if (handler_.on_peer_failed) handler_.on_peer_failed(conn->peer, reason);
  }
  // Looked up again: the handler may have sent, and a send may have changed peers_.
  ForgetPeer(conn->peer);
}

// ---- Sending --------------------------------------------------------------------------

void UcxTransport::Impl::SendControl(const ConnPtr& conn, FrameKind kind, const HandshakeInfo& hs,
                                     const std::string& payload) {
  FrameHeader header;
  header.src_node = config_.node_id;
  header.dst_node = conn->peer;
  // Handshakes always travel on the listener endpoint.
  PostSend(conn, conn->ep, kind, header, &hs, Buffer::CopyOf(payload), nullptr, conn->peer);
}

void UcxTransport::Impl::PostSend(const ConnPtr& conn, ucp_ep_h ep, FrameKind kind,
                                  const FrameHeader& header, const HandshakeInfo* hs, Buffer payload, SendCallback done,
                                  NodeId peer, size_t frames, size_t frame_bytes) {
  SendOp* op;
  if (free_send_ops_.empty()) {
    op = new SendOp;
  } else {
    op = free_send_ops_.back().release();
    free_send_ops_.pop_back();
  }
  Status encoded = EncodeEnvelope(kind, header, hs, &op->envelope);
  if (!encoded.ok()) {
    free_send_ops_.emplace_back(op);
    counters_.send_errors.fetch_add(1, std::memory_order_relaxed);
    if (done) done(encoded);
    return;
  }
  op->payload = std::move(payload);
  op->done = std::move(done);
  op->impl = this;
  op->peer = peer;
  op->data = kind == FrameKind::kData || kind == FrameKind::kBatch;
  op->frames = frames;
  op->frame_bytes = frame_bytes == SIZE_MAX ? op->payload.size() : frame_bytes;

  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  param.cb.send = &Impl::OnSendDone;
  param.user_data = op;
  // REPLY makes UCX tell the receiver which endpoint a frame came in on: that is how
  // frames are tied to an authenticated connection.
  param.flags = UCP_AM_SEND_FLAG_REPLY;
  ucs_status_ptr_t request = ucp_am_send_nbx(ep, kAmId, op->envelope.bytes, op->envelope.size,
                                             op->payload.data(), op->payload.size(), &param);
  if (request == nullptr) {
    CompleteSend(op, UCS_OK);
  } else if (UCS_PTR_IS_ERR(request)) {
    CompleteSend(op, UCS_PTR_STATUS(request));
  } else {
    op->in_flight = true;
    op->conn = conn;
    ++conn->sends_in_flight;
    pending_sends_.insert(op);
  }
}

void UcxTransport::Impl::OnSendDone(void* request, ucs_status_t status, void* user_data) {
  auto* op = static_cast<SendOp*>(user_data);
  op->impl->CompleteSend(op, status);
  ucp_request_free(request);
}

Status UcxTransport::Impl::StatusForSendError(ucs_status_t status, NodeId peer) const {
  std::string who = "node " + std::to_string(peer);
  switch (status) {
    case UCS_ERR_EXCEEDS_LIMIT:
      return ResourceExhaustedError(who + " refused the frame: payload above its max_frame_bytes");
    case UCS_ERR_NO_RESOURCE:
      return ResourceExhaustedError(who + " refused the frame: its rendezvous receives in flight are at "
                                          "max_rndv_bytes_in_flight; send again later");
    case UCS_ERR_CANCELED:
      if (stopping_) return CancelledError("transport stopped");
      return UnavailableError("send to " + who + " cancelled: connection closed");
    default:
      return UnavailableError("send to " + who + " failed: " + UcsError(status));
  }
}

void UcxTransport::Impl::CompleteSend(SendOp* op, ucs_status_t status) {
  if (op->in_flight) {
    pending_sends_.erase(op);
    op->in_flight = false;
    --op->conn->sends_in_flight;
    op->conn.reset();
  }
  if (status == UCS_OK) {
    if (op->data) CountSent(op->peer, op->frames, op->frame_bytes);
    if (op->done) op->done(OkStatus());
  } else {
    counters_.send_errors.fetch_add(1, std::memory_order_relaxed);
    if (op->done) op->done(StatusForSendError(status, op->peer));
  }
  op->payload.Reset();
  op->done = nullptr;
  if (free_send_ops_.size() < 1024) {
    free_send_ops_.emplace_back(op);
  } else {
    delete op;
  }
}

void UcxTransport::Impl::CountSent(NodeId peer, size_t frames, size_t frame_bytes) {
  counters_.frames_sent.fetch_add(frames, std::memory_order_relaxed);
  counters_.bytes_sent.fetch_add(frame_bytes, std::memory_order_relaxed);
  auto it = peers_.find(peer);
  PeerTraffic& traffic = it != peers_.end() ? it->second.traffic : departed_traffic_;
  traffic.frames_out += frames;
  traffic.bytes_out += frame_bytes;
}

// ---- Receiving ------------------------------------------------------------------------

ucs_status_t UcxTransport::Impl::OnAm(void* arg, const void* header, size_t header_length, void* data,
                                      size_t length, const ucp_am_recv_param_t* param) {
  return static_cast<Impl*>(arg)->HandleAm(header, header_length, data, length, param);
}

void UcxTransport::Impl::RejectFrame(const char* counter_name, std::atomic<uint64_t>& counter,
                                     const Connection* conn, const std::string& what) {
  counter.fetch_add(1, std::memory_order_relaxed);
  // A hostile peer can send frames faster than a log can take them: a few lines a second, and
  // how many were not logged.
  const auto now = Clock::now();
  if (now - reject_log_second_ >= std::chrono::seconds(1)) {
    if (reject_logs_suppressed_ > 0) {
      spdlog::warn("transport: {} more rejected frame(s) not logged (at most {} lines a second)",
                   reject_logs_suppressed_, kRejectLogsPerSecond);
    }
    reject_log_second_ = now;
    reject_logs_ = 0;
    reject_logs_suppressed_ = 0;
  }
  if (++reject_logs_ > kRejectLogsPerSecond) {
    ++reject_logs_suppressed_;
    return;
  }
  spdlog::warn("transport: rejected frame ({}) from {}: {}", counter_name,
               conn != nullptr ? conn->Describe() : std::string("an unidentified endpoint"), what);
}

void UcxTransport::Impl::ForgetPeer(NodeId id) {
  auto it = peers_.find(id);
  if (it == peers_.end() || it->second.ready_conns != 0 || it->second.send_conn != nullptr) return;
  const PeerTraffic& t = it->second.traffic;
  departed_traffic_.frames_in += t.frames_in;
  departed_traffic_.bytes_in += t.bytes_in;
  departed_traffic_.frames_out += t.frames_out;
  departed_traffic_.bytes_out += t.bytes_out;
  peers_.erase(it);
  counters_.peers_known.store(peers_.size(), std::memory_order_relaxed);
  departed_.push_back(id);
  while (departed_.size() > config_.max_departed_peers) {
    const NodeId oldest = departed_.front();
    departed_.pop_front();
    if (peers_.count(oldest) != 0) continue;  // it came back
    if (std::find(departed_.begin(), departed_.end(), oldest) != departed_.end()) continue;  // went again since
    std::lock_guard<std::mutex> lock(mu_);
    addresses_.erase(oldest);
    counters_.addresses_known.store(addresses_.size(), std::memory_order_relaxed);
  }
}

ucs_status_t UcxTransport::Impl::HandleAm(const void* header, size_t header_length, void* data,
                                          size_t length, const ucp_am_recv_param_t* param) {
  const bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  // For a rendezvous frame, returning an error drops it and fails the sender's send.
  const ucs_status_t refuse = rndv ? UCS_ERR_REJECTED : UCS_OK;
  ConnPtr conn;
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0) conn = FindConnection(param->reply_ep);
  if (conn == nullptr) {
    RejectFrame("unauthenticated", counters_.rejected_unauthenticated, nullptr,
                "frame without a known connection");
    return refuse;
  }
  if (conn->state == ConnState::kClosed) return refuse;

  auto env = DecodeEnvelope(header, header_length);
  if (!env.ok()) {
    if (env.status().code() == StatusCode::kFailedPrecondition) {
      RejectFrame("version", counters_.rejected_version, conn.get(), env.status().message());
    } else {
      RejectFrame("malformed", counters_.rejected_malformed, conn.get(), env.status().message());
    }
    if (conn->state != ConnState::kReady) {
      counters_.auth_failures.fetch_add(1, std::memory_order_relaxed);
      Fail(conn, PermissionDeniedError("bad handshake from " + conn->Describe()));
    }
    return refuse;
  }
  const bool batch = env->kind == FrameKind::kBatch;
  if (env->kind != FrameKind::kData && !batch) {
    // A handshake's payload is at most a worker address, always sent eagerly, and only
    // on the listener endpoint.
    if (rndv || length > kMaxHandshakePayload || param->reply_ep != conn->ep) {
      RejectFrame("malformed", counters_.rejected_malformed, conn.get(),
                  "handshake frame with a " + std::to_string(length) + "-byte payload or on a direct endpoint");
      return refuse;
    }
    OnHandshake(conn, *env, std::string_view(static_cast<const char*>(data), length));
    return UCS_OK;
  }
  if (conn->state == ConnState::kHandshaking && conn->direct_ep != nullptr && param->reply_ep == conn->direct_ep &&
      conn->handshake.OnDirectData()) {
    // Data on our direct endpoint can only come from the server we authenticated, after
    // it accepted us; its accept may still be on its way over the listener connection.
    BecomeReady(conn);
  }
  if (conn->state != ConnState::kReady) {
    RejectFrame("unauthenticated", counters_.rejected_unauthenticated, conn.get(),
                "data frame before authentication");
    return refuse;
  }
  const size_t limit = batch ? kMaxBatchBytesAccepted : config_.max_frame_bytes;
  if (length > limit) {
    RejectFrame("oversized", counters_.rejected_oversized, conn.get(),
                std::string(batch ? "batch" : "payload") + " of " + std::to_string(length) + " bytes exceeds " +
                    (batch ? "the batch limit " : "max_frame_bytes ") + std::to_string(limit));
    return rndv ? UCS_ERR_EXCEEDS_LIMIT : UCS_OK;
  }

  FrameHeader frame_header = env->header;
  frame_header.src_node = conn->peer;  // the authenticated identity, not the claimed one
  // A batch is split into its frames on delivery; each frame's payload then comes from the
  // handler's allocator.
  Buffer payload = batch ? Buffer::Allocate(length) : handler_.allocate_payload(frame_header, length);
  if (payload.size() < length) {
    spdlog::error("transport: payload allocator returned {} bytes for a {}-byte frame from {}",
                  payload.size(), length, conn->Describe());
    return rndv ? UCS_ERR_NO_MEMORY : UCS_OK;
  }
  if (!rndv) {
    if (length > 0) std::memcpy(payload.data(), data, length);
    if (conn->deliveries.empty()) {  // no rendezvous frame ahead of it: deliver now
      DeliverOne(conn.get(), frame_header, std::move(payload), batch);
      return UCS_OK;
    }
    conn->deliveries.push_back({frame_header, std::move(payload), Delivery::kDone, batch});
    Deliver(conn.get());
    return UCS_OK;
  }
  if (rndv_bytes_in_flight_ + length > config_.max_rndv_bytes_in_flight) {
    RejectFrame("busy", counters_.rejected_busy, conn.get(),
                "a " + std::to_string(length) + "-byte rendezvous frame would take the receives in flight above "
                "max_rndv_bytes_in_flight " + std::to_string(config_.max_rndv_bytes_in_flight));
    return UCS_ERR_NO_RESOURCE;
  }
  rndv_bytes_in_flight_ += length;
  counters_.rndv_bytes_in_flight.store(rndv_bytes_in_flight_, std::memory_order_relaxed);
  conn->deliveries.push_back({frame_header, Buffer(), Delivery::kPending, batch});
  rndv_starts_.push_back({conn, &conn->deliveries.back(), std::move(payload), data, length});
  return UCS_INPROGRESS;
}

void UcxTransport::Impl::StartRndvReceives() {
  std::vector<RndvStart> starts;
  starts.swap(rndv_starts_);
  for (auto& start : starts) {
    auto* op = new RecvOp{start.conn, start.delivery, std::move(start.payload), this, start.length};
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    param.cb.recv_am = &Impl::OnRecvDone;
    param.user_data = op;
    ucs_status_ptr_t request =
        ucp_am_recv_data_nbx(worker_, start.desc, op->payload.data(), start.length, &param);
    if (request == nullptr) {
      CompleteRndv(op, UCS_OK);
    } else if (UCS_PTR_IS_ERR(request)) {
      CompleteRndv(op, UCS_PTR_STATUS(request));
    } else {
      pending_recvs_.insert(op);
    }
  }
}

void UcxTransport::Impl::OnRecvDone(void* request, ucs_status_t status, size_t, void* user_data) {
  auto* op = static_cast<RecvOp*>(user_data);
  op->impl->CompleteRndv(op, status);
  ucp_request_free(request);
}

void UcxTransport::Impl::CompleteRndv(RecvOp* op, ucs_status_t status) {
  pending_recvs_.erase(op);
  rndv_bytes_in_flight_ -= op->length;
  counters_.rndv_bytes_in_flight.store(rndv_bytes_in_flight_, std::memory_order_relaxed);
  Connection* conn = op->conn.get();
  if (conn->state != ConnState::kClosed) {
    if (status == UCS_OK) {
      op->delivery->payload = std::move(op->payload);
      op->delivery->state = Delivery::kDone;
    } else {
      op->delivery->state = Delivery::kFailed;
      spdlog::warn("transport: rendezvous receive from {} failed: {}", conn->Describe(), UcsError(status));
    }
    Deliver(conn);
  }
  delete op;
}

void UcxTransport::Impl::Deliver(Connection* conn) {
  while (!conn->deliveries.empty() && conn->deliveries.front().state != Delivery::kPending) {
    Delivery d = std::move(conn->deliveries.front());
    conn->deliveries.pop_front();
    if (d.state == Delivery::kDone && !DeliverOne(conn, d.header, std::move(d.payload), d.batch)) return;
  }
}

bool UcxTransport::Impl::DeliverOne(Connection* conn, const FrameHeader& header, Buffer payload, bool batch) {
  if (!batch) return DeliverFrame(conn, header, std::move(payload));
  DeliverBatch(conn, payload);
  return conn->state != ConnState::kClosed;
}

bool UcxTransport::Impl::DeliverFrame(Connection* conn, const FrameHeader& header, Buffer payload) {
  counters_.frames_received.fetch_add(1, std::memory_order_relaxed);
  counters_.bytes_received.fetch_add(payload.size(), std::memory_order_relaxed);
  PeerTraffic& traffic = peers_[conn->peer].traffic;
  ++traffic.frames_in;
  traffic.bytes_in += payload.size();
  if (handler_.on_frame) handler_.on_frame(conn->peer, Frame{header, std::move(payload)});
  return conn->state != ConnState::kClosed;  // the handler may have disconnected the peer
}

void UcxTransport::Impl::DeliverBatch(Connection* conn, const Buffer& batch) {
  // Each frame is delivered as it is read: a bad record drops the rest of the batch (there is
  // no way to find the next record) and counts as malformed once; the frames before it stay
  // delivered.
  BatchReader reader(batch.data(), batch.size(), config_.max_frame_bytes);
  BatchRecord record;
  while (reader.Next(&record)) {
    const size_t size = record.payload_size;
    if (record.oversized) {
      RejectFrame("oversized", counters_.rejected_oversized, conn,
                  "batched payload of " + std::to_string(size) + " bytes exceeds max_frame_bytes " +
                      std::to_string(config_.max_frame_bytes));
      continue;
    }
    FrameHeader& header = record.header;  // in place: Next() writes the whole header again
    header.src_node = conn->peer;
    Buffer payload = handler_.allocate_payload(header, size);
    if (payload.size() < size) {
      spdlog::error("transport: payload allocator returned {} bytes for a {}-byte frame from {}", payload.size(), size,
                    conn->Describe());
      return;
    }
    if (size > 0) std::memcpy(payload.data(), record.payload, size);
    if (!DeliverFrame(conn, header, std::move(payload))) return;
  }
  if (!reader.status().ok()) {
    RejectFrame("malformed", counters_.rejected_malformed, conn, "batch: " + reader.status().message());
  }
}

// ---- Handshake ------------------------------------------------------------------------

void UcxTransport::Impl::OnHandshake(const ConnPtr& conn, const DecodedEnvelope& env, std::string_view payload) {
  HandshakeStep step = conn->handshake.OnMessage(env, payload);
  conn->peer = conn->handshake.peer();
  if (step.refused) {
    counters_.auth_failures.fetch_add(1, std::memory_order_relaxed);
    spdlog::warn("transport: authentication with {} failed: {}", conn->Describe(), *step.refused);
    const bool tell_peer = step.reply.has_value();
    if (tell_peer) SendControl(conn, step.reply->kind, step.reply->info, step.reply->payload);
    Fail(conn, PermissionDeniedError("authentication with node " + std::to_string(conn->peer) +
                                     " failed: " + *step.refused),
         /*graceful=*/tell_peer);
    return;
  }
  const std::string& learned_address = conn->handshake.peer_listen_address();
  if (step.ready && !learned_address.empty()) {
    // The client's advertised address lets us dial it again later; it has proven the token.
    std::lock_guard<std::mutex> lock(mu_);
    addresses_.emplace(conn->peer, learned_address);
    counters_.addresses_known.store(addresses_.size(), std::memory_order_relaxed);
  }
  if (step.open_direct_endpoint) OpenDirectEndpoint(conn);
  if (step.reply) SendControl(conn, step.reply->kind, step.reply->info, step.reply->payload);
  if (step.ready) BecomeReady(conn);
  if (step.retire_bootstrap && conn->direct_ep != nullptr) RetireBootstrap(conn, /*force=*/true);
}

void UcxTransport::Impl::BecomeReady(const ConnPtr& conn) {
  Peer* peer_entry = &peers_[conn->peer];
  // An authenticated connection from another process under a known node id (a node restarted
  // under its name, as systemd or `troupe up` do, before its loss was noticed): the earlier
  // process is gone. Its connections fail first, so that the handler hears of the loss before
  // the new process's first frame, and nothing of the new one (heartbeats, replies) is ever
  // credited to or sent through the old.
  const uint64_t instance = conn->handshake.peer_instance();
  if (instance != 0 && peer_entry->instance != 0 && peer_entry->instance != instance) {
    Peer& peer = *peer_entry;
    std::vector<ConnPtr> earlier;
    for (auto& [ep, other] : conns_) {
      if (other != conn && other->peer == conn->peer && other->handshake.peer_instance() != instance &&
          std::find(earlier.begin(), earlier.end(), other) == earlier.end()) {
        earlier.push_back(other);
      }
    }
    if (!earlier.empty()) {
      spdlog::info("transport: node {} restarted (process instance {:x}, was {:x}): closing {} connection(s) of "
                   "the earlier process",
                   conn->peer, instance, peer.instance, earlier.size());
      // The new connection is not the earlier process's way out: were it the send connection
      // (this side dialed the new process), the loss would not be reported.
      if (peer.send_conn == conn) peer.send_conn = nullptr;
      const Status replaced = UnavailableError("node " + std::to_string(conn->peer) +
                                               " restarted: a new process replaced the one this side knew");
      for (auto& old : earlier) Fail(old, replaced);
    }
  }
  // Looked up again: failing the earlier connections may have forgotten the peer (ForgetPeer),
  // and their handler may have sent, which can rehash peers_.
  Peer& peer = peers_[conn->peer];
  counters_.peers_known.store(peers_.size(), std::memory_order_relaxed);
  if (instance != 0) peer.instance = instance;
  conn->state = ConnState::kReady;
  --handshaking_;
  if (peer.send_conn == nullptr) peer.send_conn = conn;
  bool first = ++peer.ready_conns == 1;
  if (first) counters_.peers_connected.fetch_add(1, std::memory_order_relaxed);
  spdlog::info("transport: {} authenticated ({})", conn->Describe(), conn->handshake.is_client() ? "outbound" : "inbound");
  // What queued during the handshake goes now, batched like any other turn's sends.
  if (!conn->queued.empty()) {
    if (conn->batch.empty()) batching_.push_back(conn);
    for (auto& cmd : conn->queued) conn->batch.push_back(std::move(cmd));
    conn->queued.clear();
    FlushBatches();
  }
  if (first && handler_.on_peer_connected) handler_.on_peer_connected(conn->peer);
  if (!conn->handshake.is_client() && instance != 0) RetireSupersededInbound(conn);
}

void UcxTransport::Impl::RetireSupersededInbound(const ConnPtr& conn) {
  // A process dials a peer only when it has no connection to it left (Send: no send
  // connection), so an inbound connection from the same process (same instance) that is still
  // ready here is one the peer has given up on: it failed it while this side could not tell (this
  // side was stopped, or the link is shared memory, where a closed endpoint sends nothing). Were
  // it kept, replies could go on through it to an endpoint the peer has closed, and be dropped
  // there for good. The new connection is ready and counted, so the peer is not reported lost.
  const uint64_t instance = conn->handshake.peer_instance();
  std::vector<ConnPtr> superseded;
  for (auto& [ep, other] : conns_) {
    if (other != conn && other->peer == conn->peer && other->state == ConnState::kReady &&
        !other->handshake.is_client() && other->handshake.peer_instance() == instance &&
        std::find(superseded.begin(), superseded.end(), other) == superseded.end()) {
      superseded.push_back(other);
    }
  }
  if (superseded.empty()) return;
  spdlog::info("transport: {} dialed again: closing {} earlier connection(s) it no longer uses", conn->Describe(),
               superseded.size());
  for (auto& old : superseded) {
    Fail(old, UnavailableError("superseded: " + conn->Describe() + " dialed again"));
  }
}

TransportStats UcxTransport::Impl::stats() const {
  TransportStats s;
  auto get = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  s.frames_sent = get(counters_.frames_sent);
  s.frames_received = get(counters_.frames_received);
  s.batches_sent = get(counters_.batches_sent);
  s.bytes_sent = get(counters_.bytes_sent);
  s.bytes_received = get(counters_.bytes_received);
  s.send_errors = get(counters_.send_errors);
  s.connections_accepted = get(counters_.connections_accepted);
  s.connections_opened = get(counters_.connections_opened);
  s.peers_connected = get(counters_.peers_connected);
  s.connections_open = get(counters_.connections_open);
  s.peer_failures = get(counters_.peer_failures);
  s.auth_failures = get(counters_.auth_failures);
  s.rejected_malformed = get(counters_.rejected_malformed);
  s.rejected_version = get(counters_.rejected_version);
  s.rejected_oversized = get(counters_.rejected_oversized);
  s.rejected_unauthenticated = get(counters_.rejected_unauthenticated);
  s.rejected_busy = get(counters_.rejected_busy);
  s.connections_refused = get(counters_.connections_refused);
  s.peers_known = get(counters_.peers_known);
  s.addresses_known = get(counters_.addresses_known);
  s.rndv_bytes_in_flight = get(counters_.rndv_bytes_in_flight);
  return s;
}

// ---- UcxTransport ---------------------------------------------------------------------

UcxTransport::UcxTransport(UcxTransportConfig config) : impl_(std::make_unique<Impl>(std::move(config))) {}
UcxTransport::~UcxTransport() { impl_->Stop(); }
Status UcxTransport::Start(TransportHandler handler) { return impl_->Start(std::move(handler)); }
void UcxTransport::Stop() { impl_->Stop(); }
NodeId UcxTransport::self() const { return impl_->config().node_id; }
std::string UcxTransport::listen_address() const { return impl_->listen_address(); }
Status UcxTransport::Send(NodeId peer, const FrameHeader& header, Buffer payload, SendCallback done) {
  return impl_->Send(peer, header, std::move(payload), std::move(done));
}
TransportStats UcxTransport::stats() const { return impl_->stats(); }
std::vector<PeerTraffic> UcxTransport::peer_traffic() const { return impl_->peer_traffic(); }
StatusOr<std::string> UcxTransport::DescribePeer(NodeId peer) { return impl_->DescribePeer(peer); }
void UcxTransport::AddPeer(NodeId peer, const std::string& address) { impl_->AddPeer(peer, address); }
std::string UcxTransport::PeerAddress(NodeId peer) const { return impl_->AddressOf(peer); }
void UcxTransport::Disconnect(NodeId peer, const Status& reason) { impl_->Disconnect(peer, reason); }
std::vector<UcxSetting> UcxTransport::ucx_settings() const { return impl_->settings(); }

}  // namespace troupe::transport
