// Bridge: CAF <-> transport.
#include "runtime/bridge.h"

#include <caf/all.hpp>
#include <caf/forwarding_actor_proxy.hpp>
#include <caf/monitorable_actor.hpp>
#include <capnp/message.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "runtime/messages.capnp.h"
#include "runtime/node_identity.h"
#include "runtime/wire_types.h"

namespace troupe::runtime {

namespace {

using transport::FrameHeader;

/// The bridge's CAF face: an actor whose enqueue runs on the sender's thread.
class BridgeActor final : public caf::monitorable_actor {
 public:
  BridgeActor(caf::actor_config& cfg, std::weak_ptr<Bridge> core)
      : caf::monitorable_actor(cfg), core_(std::move(core)) {}

  void enqueue(caf::mailbox_element_ptr what, caf::execution_unit* context) override {
    if (!what) return;
    if (auto core = core_.lock()) core->OnLocalMessage(*what, context);
  }

 private:
  std::weak_ptr<Bridge> core_;
};

/// A forwarding_actor_proxy that hands what is sent to it straight to the bridge (CAF's own
/// proxy wraps each message in a forward_atom tuple and a second mailbox element for the
/// bridge actor to unpack), and that, once killed (its node or actor is gone), answers requests
/// at once with the kill reason instead of dropping them (CAF's own proxy drops them and the
/// requester waits for its timeout). Links and unlinks still go through CAF's forwarding.
class RemoteProxy final : public caf::forwarding_actor_proxy {
 public:
  RemoteProxy(caf::actor_config& cfg, caf::actor bridge, std::weak_ptr<Bridge> core, NodeId node)
      : caf::forwarding_actor_proxy(cfg, std::move(bridge)), core_(std::move(core)), node_(node) {}

  void enqueue(caf::mailbox_element_ptr what, caf::execution_unit* context) override {
    if (!what) return;
    if (killed_.load(std::memory_order_acquire)) {
      if (what->mid.is_request() && what->sender) {
        caf::error reason;
        {
          std::lock_guard<std::mutex> lock(mu_);
          reason = reason_;
        }
        if (!reason) reason = ToCafError(UnavailableError("the actor has exited"));
        what->sender->enqueue(caf::make_mailbox_element(caf::strong_actor_ptr{ctrl()},
                                                        what->mid.response_id(), {},
                                                        caf::make_message(std::move(reason))),
                              context);
      }
      return;
    }
    if (auto core = core_.lock()) core->OnForward(std::move(what->sender), node_, id(), what->mid,
                                                  what->move_content_to_message());
  }

  void kill_proxy(caf::execution_unit* context, caf::error reason) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      reason_ = reason;
    }
    killed_.store(true, std::memory_order_release);
    caf::forwarding_actor_proxy::kill_proxy(context, std::move(reason));
  }

 private:
  const std::weak_ptr<Bridge> core_;
  const NodeId node_;  // node() as a troupe node id
  std::atomic<bool> killed_{false};
  std::mutex mu_;
  caf::error reason_;
};

void KillProxy(const caf::strong_actor_ptr& proxy, const caf::error& reason) {
  auto* p = static_cast<caf::actor_proxy*>(caf::actor_cast<caf::abstract_actor*>(proxy));
  p->kill_proxy(nullptr, reason);
}

// The error of an error reply; never empty (undecodable bytes become InvalidArgument).
caf::error ReadErrorReply(const Buffer& payload) {
  caf::error error;
  Status status = ReadFlat<wire::ErrorInfo>(payload.data(), payload.size(), "error reply",
                                            [&](wire::ErrorInfo::Reader r) {
                                              error = ReadErrorInfo(r);
                                              return OkStatus();
                                            });
  if (!status.ok()) return ToCafError(status);
  if (!error) return ToCafError(InternalError("error reply without an error"));
  return error;
}

// Request ids from peers become CAF request message ids (normal priority).
caf::message_id RequestMessageId(uint64_t request_id) {
  return caf::message_id((caf::message_id::normal_message_category << caf::message_id::category_offset) |
                         (request_id & caf::message_id::request_id_mask));
}

}  // namespace

Bridge::Bridge(caf::actor_system& system, transport::Transport& transport, const CodecRegistry& codecs,
                 BridgeConfig config, const Clock& clock, uint32_t incarnation)
    : system_(system),
      transport_(transport),
      codecs_(codecs),
      config_(config),
      clock_(clock),
      self_(transport.self()),
      incarnation_(incarnation),
      pending_(clock, config.request_ttl, config.max_pending_requests),
      detector_(clock, config.heartbeat_timeout) {}

Bridge::~Bridge() = default;

void Bridge::Start() {
  caf::actor_config cfg;
  auto ptr = caf::make_actor<BridgeActor, caf::actor>(system_.next_actor_id(), system_.node(), &system_, cfg,
                                                      weak_from_this());
  actor_ = std::move(ptr);
  if (config_.run_actors_on_progress_thread) {
    executor_ = std::make_unique<internal::ProgressExecutor>(system_, /*max_jobs=*/128, /*max_throughput=*/32);
  }
}

void Bridge::Shutdown() {
  if (stopped_.exchange(true)) return;
  std::unordered_map<NodeId, NodeState> nodes;
  std::vector<Pending> pending;
  {
    std::lock_guard<std::mutex> lock(mu_);
    nodes.swap(nodes_);
    detector_.Clear();
    pending = pending_.TakeAll();
    watches_.clear();
  }
  std::unordered_set<caf::actor_id> addressable;
  {
    std::lock_guard<std::mutex> lock(mu_);
    addressable.swap(addressable_);
  }
  for (auto id : addressable) system_.registry().erase(id);
  auto reason = ToCafError(CancelledError("the runtime of node " + std::to_string(self_) + " stopped"));
  for (auto& [node, state] : nodes) {
    for (auto& [id, proxy] : state.proxies) KillProxy(proxy, reason);
  }
  for (auto& p : pending) Complete(std::move(p), CancelledError("the runtime stopped"));
}

// ---------------------------------------------------------------------------------------------
// Local side

bool Bridge::IsLocal(const caf::strong_actor_ptr& actor) const { return actor && actor->node() == system_.node(); }

uint64_t Bridge::WireIdOf(const caf::strong_actor_ptr& actor) const {
  return IsLocal(actor) ? MakeWireActorId(incarnation_, actor->id()) : actor->id();
}

void Bridge::OnLocalMessage(caf::mailbox_element& element, caf::execution_unit*) {
  auto& content = element.content();
  if (content.match_elements<caf::forward_atom, caf::strong_actor_ptr, std::vector<caf::strong_actor_ptr>,
                             caf::strong_actor_ptr, caf::message_id, caf::message>()) {
    // Links and unlinks: RemoteProxy hands messages to OnForward itself, but CAF forwards these
    // through forwarding_actor_proxy's private forward_msg, which cannot be overridden.
    auto src = content.get_as<caf::strong_actor_ptr>(1);
    const auto& dest = content.get_as<caf::strong_actor_ptr>(3);
    auto mid = content.get_as<caf::message_id>(4);
    auto msg = content.get_as<caf::message>(5);
    if (dest) OnForward(std::move(src), dest->node(), dest->id(), mid, std::move(msg));
    return;
  }
  if (content.match_elements<caf::monitor_atom, caf::strong_actor_ptr>()) {
    OnProxyCreated(content.get_as<caf::strong_actor_ptr>(1));
    return;
  }
  // Links across nodes are not supported (use monitors); anything else is a bug elsewhere.
  spdlog::debug("bridge: ignoring local message {}", caf::to_string(content));
}

void Bridge::OnForward(caf::strong_actor_ptr src, const caf::node_id& dest_node, caf::actor_id dest_id,
                        caf::message_id mid, caf::message msg) {
  auto node = FromCafNode(dest_node);
  if (!node) {
    spdlog::error("bridge: message for {} which is not a troupe proxy", caf::to_string(dest_node));
    return;
  }
  OnForward(std::move(src), *node, dest_id, mid, std::move(msg));
}

void Bridge::OnForward(caf::strong_actor_ptr src, NodeId dest_node, caf::actor_id dest_id, caf::message_id mid,
                        caf::message msg) {
  FrameHeader header;
  header.dst_node = dest_node;
  header.dst_actor = dest_id;
  header.src_actor = IsLocal(src) ? WireIdOf(src) : 0;
  if (spdlog::should_log(spdlog::level::trace)) {  // the arguments cost even when off
    spdlog::trace("bridge: forward {} to node {} actor {:#x} ({})", caf::to_string(msg), dest_node, dest_id,
                  mid.is_response() ? "reply" : mid.is_request() ? "request" : "one-way");
  }

  if (mid.is_response()) {
    // A local actor answers a peer's request: route the reply by the peer's request id.
    header.flags = kFlagResponse;
    header.request_id = mid.integer_value() & caf::message_id::request_id_mask;
    Buffer payload;
    if (msg.size() == 1 && msg.match_element<caf::error>(0)) {
      header.type_id = kErrorReply;
      const auto& error = msg.get_as<caf::error>(0);
      payload = EncodeFlat<wire::ErrorInfo>([&](wire::ErrorInfo::Builder b) { FillErrorInfo(b, error); });
    } else if (msg.empty()) {
      header.type_id = kEmptyReply;
    } else {
      auto encoded = codecs_.Encode(msg, *this);
      if (encoded.ok()) {
        header.type_id = encoded->type_id;
        payload = std::move(encoded->payload);
      } else {
        header.type_id = kErrorReply;
        auto error = ToCafError(InvalidArgumentError("reply: " + encoded.status().message()));
        payload = EncodeFlat<wire::ErrorInfo>([&](wire::ErrorInfo::Builder b) { FillErrorInfo(b, error); });
      }
    }
    SendFrame(dest_node, header, std::move(payload));
    return;
  }

  // The receiver sees the sender as a proxy, which watches it from birth (a monitor request
  // to this node): the sender must be findable here, or that proxy dies at once. A request
  // checks that in its pending-table section below, before its frame leaves.
  if (!mid.is_request()) MakeAddressable(src);
  auto encoded = codecs_.Encode(msg, *this);
  if (mid.is_request()) {
    if (!encoded.ok()) {
      Complete(Pending{dest_node, std::move(src), mid, {}, {}, {}}, encoded.status());
      return;
    }
    uint64_t request_id = 0;
    bool addressable = true;
    {
      std::lock_guard<std::mutex> lock(mu_);
      addressable = !IsLocal(src) || addressable_.count(src->id()) > 0;
      request_id = pending_.AddActorRequest(dest_node, src, mid);  // 0: the table is full
    }
    if (request_id == 0) {
      Complete(Pending{dest_node, std::move(src), mid, {}, {}, {}},
               ResourceExhaustedError("more than " + std::to_string(config_.max_pending_requests) +
                                      " remote requests are pending"));
      return;
    }
    if (!addressable) MakeAddressable(src);
    header.flags = kFlagRequest;
    header.request_id = request_id;
    header.type_id = encoded->type_id;
    // `this` outlives every send callback: the runtime stops the transport (which completes
    // them all) before it destroys the bridge. Two words fit std::function's inline storage.
    SendFrame(dest_node, header, std::move(encoded->payload), [this, request_id](const Status& status) {
      if (!status.ok()) FailPending(request_id, status);
    });
    return;
  }

  if (!encoded.ok()) {
    ++dropped_;
    spdlog::warn("bridge: dropped a message to {}: {}", ActorRef({}, dest_node, dest_id).ToString(),
                 encoded.status().message());
    return;
  }
  header.type_id = encoded->type_id;
  SendFrame(dest_node, header, std::move(encoded->payload));
}

void Bridge::OnProxyCreated(const caf::strong_actor_ptr& proxy) {
  // Every proxy watches its remote actor from birth, so local monitors of it fire when the
  // actor exits, whether or not anyone ever sends to it.
  if (!proxy) return;
  auto node = FromCafNode(proxy->node());
  if (!node) return;
  FrameHeader header;
  header.dst_node = *node;
  header.dst_actor = proxy->id();
  header.type_id = kMonitorRequest;
  NodeId peer = *node;
  uint64_t wire_id = proxy->id();
  // `this` outlives send callbacks (see OnForward).
  SendFrame(peer, header, Buffer(), [this, peer, wire_id](const Status& status) {
    if (status.ok()) return;
    // The node cannot be reached: the actor counts as gone.
    if (auto gone = TakeProxy(peer, wire_id)) {
      KillProxy(gone, ToCafError(UnavailableError(DescribeNode(peer) + " cannot be reached: " + status.message())));
    }
  });
}

void Bridge::SendFrame(NodeId peer, FrameHeader header, Buffer payload, transport::SendCallback done) {
  header.src_node = self_;
  if (stopped_) {
    if (done) done(CancelledError("the runtime stopped"));
    return;
  }
  ++messages_out_;
  Status status = transport_.Send(peer, header, std::move(payload), done);
  if (!status.ok()) {
    if (done) {
      done(status);
    } else {
      ++dropped_;
      spdlog::debug("bridge: send to node {} failed: {}", peer, status.ToString());
    }
  }
}

void Bridge::Complete(Pending pending, const Status& status) {
  if (pending.done) {
    pending.done(status);
    return;
  }
  AnswerRequester(pending, nullptr, caf::make_message(ToCafError(status)), nullptr);
}

void Bridge::AnswerRequester(const Pending& pending, caf::strong_actor_ptr sender, caf::message reply,
                              caf::execution_unit* context) {
  if (!pending.src) return;
  // CAF 0.17 leaves a request's timer in its clock until it fires (the timeout it then sends is
  // dropped): every request would hold a timer table entry for its whole timeout. The reply is
  // here, so its timer goes now (and usually cancels out before reaching the table: LazyClock).
  system_.clock().cancel_request_timeout(caf::actor_cast<caf::abstract_actor*>(pending.src),
                                         pending.mid.response_id());
  pending.src->enqueue(caf::make_mailbox_element(std::move(sender), pending.mid.response_id(), {}, std::move(reply)),
                       context);
}

void Bridge::FailPending(uint64_t request_id, const Status& status) {
  Pending pending;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!pending_.Take(request_id, &pending)) return;
  }
  ++requests_failed_send_;
  bool keep = status.code() == StatusCode::kUnavailable || status.code() == StatusCode::kCancelled;
  Status why = keep ? status : UnavailableError(DescribeNode(pending.node) + ": " + status.ToString());
  Complete(std::move(pending), why);
}

// ---------------------------------------------------------------------------------------------
// Transport side

void Bridge::OnPeerConnected(NodeId peer) {
  std::lock_guard<std::mutex> lock(mu_);
  nodes_.try_emplace(peer);
  detector_.Connected(peer);
}

void Bridge::OnPeerFailed(NodeId peer, const Status& reason) {
  NodeState state;
  std::vector<Pending> failed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = nodes_.find(peer);
    if (it != nodes_.end()) {
      state = std::move(it->second);
      nodes_.erase(it);
    }
    detector_.Lost(peer);
    pending_.TakeNode(peer, &failed);
    for (auto w = watches_.begin(); w != watches_.end();) {
      w = w->second == peer ? watches_.erase(w) : std::next(w);
    }
    departed_.push_back(peer);
    while (departed_.size() > config_.max_departed_nodes) {
      const NodeId oldest = departed_.front();
      departed_.pop_front();
      const bool back_or_again = nodes_.count(oldest) != 0 ||
                                 std::find(departed_.begin(), departed_.end(), oldest) != departed_.end();
      if (!back_or_again) addresses_.erase(oldest);
    }
  }
  ++nodes_lost_;
  Status why = UnavailableError(DescribeNode(peer) + " is lost: " + reason.message());
  spdlog::info("bridge: {}; {} proxies killed, {} pending requests failed", why.message(), state.proxies.size(),
               failed.size());
  auto error = ToCafError(why);
  for (auto& [id, proxy] : state.proxies) KillProxy(proxy, error);
  requests_failed_node_lost_ += failed.size();
  for (auto& p : failed) Complete(std::move(p), why);
  if (has_tap_.load(std::memory_order_acquire)) {
    std::lock_guard<std::mutex> lock(tap_mu_);
    if (tap_ != nullptr) tap_->on_peer_failed(peer, why);
  }
}

void Bridge::Touch(NodeId peer) {
  std::lock_guard<std::mutex> lock(mu_);
  TouchLocked(peer);
}

Bridge::NodeState* Bridge::TouchLocked(NodeId peer) {
  detector_.Touch(peer);
  auto it = nodes_.find(peer);
  return it == nodes_.end() ? nullptr : &it->second;
}

void Bridge::SetFrameTap(std::shared_ptr<FrameTap> tap) {
  std::lock_guard<std::mutex> lock(tap_mu_);
  tap_ = std::move(tap);
  has_tap_ = tap_ != nullptr;
}

transport::TransportHandler Bridge::Handler() {
  transport::TransportHandler handler;
  handler.allocate_payload = [this](const FrameHeader& header, size_t size) {
    if (has_tap_.load(std::memory_order_acquire)) {
      std::lock_guard<std::mutex> lock(tap_mu_);
      if (tap_ != nullptr && header.type_id >= tap_->first_type && header.type_id <= tap_->last_type) {
        return tap_->allocate(header, size);
      }
    }
    return Buffer::Allocate(size);
  };
  handler.on_frame = [this](NodeId peer, transport::Frame frame) { OnFrame(peer, std::move(frame)); };
  handler.on_peer_connected = [this](NodeId peer) { OnPeerConnected(peer); };
  handler.on_peer_failed = [this](NodeId peer, const Status& reason) { OnPeerFailed(peer, reason); };
  return handler;
}

void Bridge::OnFrame(NodeId peer, transport::Frame frame) {
  const FrameHeader& header = frame.header;
  if (stopped_) return;
  if (has_tap_.load(std::memory_order_acquire)) {
    std::unique_lock<std::mutex> lock(tap_mu_);
    if (tap_ != nullptr && header.type_id >= tap_->first_type && header.type_id <= tap_->last_type) {
      Touch(peer);
      tap_->on_frame(peer, std::move(frame));
      return;
    }
  }
  // Every frame counts as a sign of life. Messages and replies record it in the locked section
  // they need anyway (Deliver, OnResponse), the runtime's own frames here: one lock per frame.
  switch (header.type_id) {
    case kHeartbeat:
      Touch(peer);
      return;
    case kMonitorRequest:
      Touch(peer);
      OnMonitorRequest(peer, header.dst_actor);
      return;
    case kDownNotice:
      Touch(peer);
      OnDownNotice(peer, header.src_actor, frame.payload);
      return;
    case kSpawnRequest:
    case kNameLookup:
      if (!(header.flags & kFlagResponse)) {
        Touch(peer);
        OnControl(peer, header, frame.payload);
        return;
      }
      break;
    default:
      break;
  }
  if (header.flags & kFlagResponse) {
    OnResponse(peer, header, frame.payload);
  } else {
    Deliver(peer, header, frame.payload);
  }
  if (executor_) {
    auto held = executor_->Drain();
    if (held > std::chrono::milliseconds(5)) {
      // At most one warning every 10 s.
      int64_t now_s = std::chrono::duration_cast<std::chrono::seconds>(clock_.Now().time_since_epoch()).count();
      int64_t last = last_slow_warning_.load();
      if (now_s - last >= 10 && last_slow_warning_.compare_exchange_strong(last, now_s)) {
        spdlog::warn("bridge: actors held the transport's progress thread for {} ms; spawn actors with long "
                     "handlers caf::detached (or turn off run_actors_on_progress_thread)",
                     held.count() / 1000);
      }
    }
  }
}

StatusOr<caf::strong_actor_ptr> Bridge::LocalActor(uint64_t wire_id) const {
  if (IncarnationOf(wire_id) != incarnation_) {
    return NotFoundError("actor " + std::to_string(LocalIdOf(wire_id)) + " belongs to an earlier run of " +
                         DescribeNode(self_) + " (incarnation " + std::to_string(IncarnationOf(wire_id)) +
                         ", now " + std::to_string(incarnation_) + ")");
  }
  auto actor = system_.registry().get(LocalIdOf(wire_id));
  if (!actor) {
    return NotFoundError("no actor " + std::to_string(LocalIdOf(wire_id)) + " on " + DescribeNode(self_) +
                         " (it exited, or never existed)");
  }
  return actor;
}

void Bridge::Deliver(NodeId peer, const FrameHeader& header, const Buffer& payload) {
  // The sender's proxy, if it has one already, found in the same locked section that records
  // the frame as a sign of life.
  caf::strong_actor_ptr sender;
  {
    std::lock_guard<std::mutex> lock(mu_);
    NodeState* node = TouchLocked(peer);
    if (node != nullptr && header.src_actor != 0) {
      if (auto p = node->proxies.find(header.src_actor); p != node->proxies.end()) sender = p->second;
    }
  }
  bool request = (header.flags & kFlagRequest) != 0;
  if (request && (header.request_id == 0 || header.request_id > caf::message_id::request_id_mask)) {
    ++dropped_;
    spdlog::warn("bridge: dropped a request from node {} with invalid request id {}", peer, header.request_id);
    return;
  }
  auto dest = LocalActor(header.dst_actor);
  if (!dest.ok()) {
    if (request) {
      ReplyError(peer, header, dest.status());
    } else {
      ++dropped_;
      spdlog::debug("bridge: dropped a message from node {}: {}", peer, dest.status().message());
    }
    return;
  }
  auto msg = codecs_.Decode(header.type_id, payload, *this);
  if (!msg.ok()) {
    if (request) {
      ReplyError(peer, header, msg.status());
    } else {
      ++dropped_;
      spdlog::warn("bridge: dropped a message from node {}: {}", peer, msg.status().message());
    }
    return;
  }
  if (spdlog::should_log(spdlog::level::trace)) {  // the arguments cost even when off
    spdlog::trace("bridge: deliver {} from node {} actor {:#x} to actor {:#x}{}", codecs_.NameOf(header.type_id), peer,
                  header.src_actor, header.dst_actor, request ? " (request " + std::to_string(header.request_id) + ")" : "");
  }
  if (!sender && header.src_actor != 0) sender = ProxyFor(peer, header.src_actor);
  caf::message_id mid = request ? RequestMessageId(header.request_id) : caf::make_message_id();
  ++messages_in_;
  (*dest)->enqueue(caf::make_mailbox_element(std::move(sender), mid, {}, std::move(msg).value()), executor_.get());
}

void Bridge::OnResponse(NodeId peer, const FrameHeader& header, const Buffer& payload) {
  if (spdlog::should_log(spdlog::level::trace)) {  // the arguments cost even when off
    spdlog::trace("bridge: reply {} from node {} to request {}", codecs_.NameOf(header.type_id), peer, header.request_id);
  }
  Pending pending;
  caf::strong_actor_ptr sender;  // the responder's proxy, if it has one
  {
    std::lock_guard<std::mutex> lock(mu_);
    NodeState* node = TouchLocked(peer);
    if (!pending_.TakeReply(header.request_id, peer, &pending)) {
      ++late_replies_;
      return;
    }
    if (node != nullptr) {
      if (auto proxy = node->proxies.find(header.src_actor); proxy != node->proxies.end()) sender = proxy->second;
    }
  }
  ++messages_in_;
  RecordLatency(clock_.Now() - pending.start);
  if (pending.done) {
    if (header.type_id == kRefReply) {
      ActorRef ref;
      Status status = ReadFlat<wire::RefReply>(payload.data(), payload.size(), "RefReply", [&](wire::RefReply::Reader r) {
        ref = DecodeRef(r.getRef());
        return OkStatus();
      });
      if (status.ok()) {
        pending.done(std::move(ref));
      } else {
        pending.done(status);
      }
      return;
    }
    pending.done(header.type_id == kErrorReply
                     ? ToStatus(ReadErrorReply(payload))
                     : InvalidArgumentError("unexpected reply type " + std::to_string(header.type_id)));
    return;
  }
  caf::message reply;
  if (header.type_id == kErrorReply) {
    reply = caf::make_message(ReadErrorReply(payload));
  } else if (header.type_id == kEmptyReply) {
    reply = caf::make_message();
  } else {
    auto decoded = codecs_.Decode(header.type_id, payload, *this);
    reply = decoded.ok() ? std::move(decoded).value()
                         : caf::make_message(ToCafError(InvalidArgumentError("reply from node " + std::to_string(peer) +
                                                                             ": " + decoded.status().message())));
  }
  AnswerRequester(pending, std::move(sender), std::move(reply), executor_.get());
}

void Bridge::ReplyError(NodeId peer, const FrameHeader& request, const Status& status) {
  ++error_replies_sent_;
  FrameHeader header;
  header.dst_node = peer;
  header.dst_actor = request.src_actor;
  header.src_actor = request.dst_actor;
  header.request_id = request.request_id;
  header.type_id = kErrorReply;
  header.flags = kFlagResponse;
  auto error = ToCafError(status);
  SendFrame(peer, header, EncodeFlat<wire::ErrorInfo>([&](wire::ErrorInfo::Builder b) { FillErrorInfo(b, error); }));
}

void Bridge::OnControl(NodeId peer, const FrameHeader& header, const Buffer& payload) {
  StatusOr<ActorRef> result = FailedPreconditionError("node " + std::to_string(self_) + " serves no spawn or lookup");
  if (control_ != nullptr) {
    if (header.type_id == kSpawnRequest) {
      Status status = ReadFlat<wire::SpawnRequest>(payload.data(), payload.size(), "SpawnRequest", [&](wire::SpawnRequest::Reader r) {
        auto args = r.getArgs();
        result = control_->SpawnForPeer(r.getTypeName(), r.getArgsTypeId(), args.begin(), args.size());
        return OkStatus();
      });
      if (!status.ok()) result = status;
    } else {
      Status status = ReadFlat<wire::NameLookup>(payload.data(), payload.size(), "NameLookup", [&](wire::NameLookup::Reader r) {
        result = control_->LookupForPeer(r.getName());
        return OkStatus();
      });
      if (!status.ok()) result = status;
    }
  }
  if (!result.ok()) {
    ReplyError(peer, header, result.status());
    return;
  }
  FrameHeader reply;
  reply.dst_node = peer;
  reply.request_id = header.request_id;
  reply.type_id = kRefReply;
  reply.flags = kFlagResponse;
  SendFrame(peer, reply, EncodeFlat<wire::RefReply>([&](wire::RefReply::Builder b) { EncodeRef(*result, b.initRef()); }));
}

// ---------------------------------------------------------------------------------------------
// Remote monitoring

void Bridge::OnMonitorRequest(NodeId peer, uint64_t wire_id) {
  auto actor = LocalActor(wire_id);
  if (!actor.ok()) {
    SendDown(peer, wire_id, ToCafError(actor.status()));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!watches_.emplace(wire_id, peer).second) return;
  }
  std::weak_ptr<Bridge> weak = weak_from_this();
  (*actor)->get()->attach_functor([weak, peer, wire_id](const caf::error& reason) {
    if (auto self = weak.lock()) self->OnLocalActorDown(peer, wire_id, reason);
  });
}

void Bridge::OnLocalActorDown(NodeId watcher, uint64_t wire_id, const caf::error& reason) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (watches_.erase({wire_id, watcher}) == 0) return;
  }
  SendDown(watcher, wire_id, reason);
}

void Bridge::SendDown(NodeId watcher, uint64_t wire_id, const caf::error& reason) {
  FrameHeader header;
  header.dst_node = watcher;
  header.src_actor = wire_id;
  header.type_id = kDownNotice;
  SendFrame(watcher, header, EncodeFlat<wire::DownNotice>([&](wire::DownNotice::Builder b) {
              FillErrorInfo(b.initReason(), reason);
            }));
}

void Bridge::OnDownNotice(NodeId peer, uint64_t wire_id, const Buffer& payload) {
  caf::error reason;
  Status status = ReadFlat<wire::DownNotice>(payload.data(), payload.size(), "DownNotice", [&](wire::DownNotice::Reader r) {
    reason = ReadErrorInfo(r.getReason());
    return OkStatus();
  });
  if (!status.ok()) reason = ToCafError(status);
  if (auto proxy = TakeProxy(peer, wire_id)) KillProxy(proxy, reason);
}

// ---------------------------------------------------------------------------------------------
// Refs and proxies

caf::strong_actor_ptr Bridge::TakeProxy(NodeId node, uint64_t wire_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = nodes_.find(node);
  if (it == nodes_.end()) return nullptr;
  auto p = it->second.proxies.find(wire_id);
  if (p == it->second.proxies.end()) return nullptr;
  caf::strong_actor_ptr proxy = std::move(p->second);
  it->second.proxies.erase(p);
  return proxy;
}

caf::strong_actor_ptr Bridge::ExistingProxy(NodeId node, uint64_t wire_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = nodes_.find(node);
  if (it == nodes_.end()) return nullptr;
  auto p = it->second.proxies.find(wire_id);
  return p == it->second.proxies.end() ? nullptr : p->second;
}

caf::strong_actor_ptr Bridge::ProxyFor(NodeId node, uint64_t wire_id) {
  if (auto existing = ExistingProxy(node, wire_id)) return existing;
  // Made outside the lock: creating a proxy calls back into OnLocalMessage (monitor request).
  caf::actor_config cfg;
  caf::strong_actor_ptr proxy = caf::make_actor<RemoteProxy, caf::strong_actor_ptr>(
      wire_id, ToCafNode(node), &system_, cfg, actor_, weak_from_this(), node);
  if (stopped_) {
    KillProxy(proxy, ToCafError(CancelledError("the runtime stopped")));
    return proxy;
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto& slot = nodes_[node].proxies[wire_id];
  if (!slot) slot = proxy;
  return slot;
}

ActorRef Bridge::RefOf(const caf::strong_actor_ptr& actor) {
  if (!actor) return {};
  if (IsLocal(actor)) return ActorRef(caf::actor_cast<caf::actor>(actor), self_, WireIdOf(actor));
  auto node = FromCafNode(actor->node());
  return ActorRef(caf::actor_cast<caf::actor>(actor), node.value_or(0), actor->id());
}

ActorRef Bridge::RefTo(NodeId node, uint64_t wire_id) {
  if (node == 0) return {};
  if (node == self_) {
    auto actor = LocalActor(wire_id);
    return actor.ok() ? ActorRef(caf::actor_cast<caf::actor>(*actor), self_, wire_id)
                      : ActorRef::Dangling(self_, wire_id);
  }
  return ActorRef(caf::actor_cast<caf::actor>(ProxyFor(node, wire_id)), node, wire_id);
}

void Bridge::MakeAddressable(const caf::strong_actor_ptr& actor) {
  if (!IsLocal(actor) || stopped_ || system_.registry().get(actor->id())) return;
  // In the registry before any caller returns: threads encoding the same new ref at once (a job
  // supervisor's spawn helpers, each sending the attempt's rendezvous store to a node) must not
  // send it before it can be found, or a peer's first message to it meets "no actor". The put
  // is idempotent (CAF's registry keeps the first entry and attaches its erase functor once).
  system_.registry().put(actor->id(), actor);
  // CAF's registry keeps the actor until it exits (its own functor erases the entry). We
  // remember the ids too, to erase what is left at shutdown: an actor released by the
  // registry's destructor after CAF's scheduler has stopped crashes in its cleanup.
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!addressable_.insert(actor->id()).second) return;
  }
  std::weak_ptr<Bridge> weak = weak_from_this();
  caf::actor_id id = actor->id();
  actor->get()->attach_functor([weak, id] {
    if (auto self = weak.lock()) {
      std::lock_guard<std::mutex> lock(self->mu_);
      self->addressable_.erase(id);
    }
  });
}

void Bridge::AddNode(NodeId node, const std::string& address) {
  if (node == self_ || node == 0 || address.empty()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto& slot = addresses_[node];
    if (slot == address) return;
    slot = address;
  }
  transport_.AddPeer(node, address);
}

std::string Bridge::AddressOf(NodeId node) {
  if (node == self_) return transport_.listen_address();
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = addresses_.find(node);
    if (it != addresses_.end()) return it->second;
  }
  return transport_.PeerAddress(node);
}

void Bridge::EncodeRef(const ActorRef& ref, wire::ActorAddress::Builder out) {
  if (ref.node() == 0) return;
  // Peers will address it by id: keep it findable (until it exits).
  if (ref.valid()) MakeAddressable(caf::actor_cast<caf::strong_actor_ptr>(ref.handle()));
  out.setNode(ref.node());
  out.setActor(ref.id());
  out.setAddress(AddressOf(ref.node()));
}

ActorRef Bridge::DecodeRef(wire::ActorAddress::Reader in) {
  NodeId node = in.getNode();
  if (node == 0) return {};
  if (node != self_ && in.hasAddress() && in.getAddress().size() > 0) AddNode(node, in.getAddress());
  return RefTo(node, in.getActor());
}

void Bridge::ControlRequest(NodeId node, uint32_t type_id, Buffer payload, Clock::Duration timeout,
                             RefCallback done) {
  uint64_t request_id = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    request_id = pending_.AddControlRequest(node, timeout, std::move(done));
  }
  FrameHeader header;
  header.dst_node = node;
  header.type_id = type_id;
  header.flags = kFlagRequest;
  header.request_id = request_id;
  std::weak_ptr<Bridge> weak = weak_from_this();
  SendFrame(node, header, std::move(payload), [weak, request_id](const Status& status) {
    if (status.ok()) return;
    if (auto self = weak.lock()) self->FailPending(request_id, status);
  });
}

// ---------------------------------------------------------------------------------------------
// Time

void Bridge::Tick() {
  FailureDetector::Verdict verdict;
  std::vector<Pending> timed_out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    verdict = detector_.Check();
    pending_.Expire(&timed_out);
  }
  for (NodeId node : verdict.alive) {
    FrameHeader header;
    header.dst_node = node;
    header.type_id = kHeartbeat;
    SendFrame(node, header, Buffer());
  }
  for (NodeId node : verdict.expired) {
    ++heartbeat_timeouts_;
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(config_.heartbeat_timeout).count();
    transport_.Disconnect(node, UnavailableError("no heartbeat for " + std::to_string(ms) + " ms"));
  }
  for (auto& p : timed_out) p.done(DeadlineExceededError("no reply from " + DescribeNode(p.node) + " in time"));
}

void Bridge::RecordLatency(Clock::Duration d) {
  double seconds = std::chrono::duration<double>(d).count();
  size_t bucket = 0;
  while (bucket < kLatencyBucketCount && seconds > kLatencyBuckets[bucket]) ++bucket;
  latency_buckets_[bucket].fetch_add(1, std::memory_order_relaxed);
  latency_sum_ns_.fetch_add(static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()),
                            std::memory_order_relaxed);
}

std::optional<Clock::Duration> Bridge::Silence(NodeId node) const {
  std::lock_guard<std::mutex> lock(mu_);
  return detector_.Silence(node);
}

BridgeStats Bridge::stats() const {
  BridgeStats s;
  s.messages_out = messages_out_;
  s.messages_in = messages_in_;
  {
    std::lock_guard<std::mutex> lock(mu_);
    s.requests_pending = pending_.size();
    for (const auto& [node, state] : nodes_) s.proxies += state.proxies.size();
  }
  s.requests_failed_node_lost = requests_failed_node_lost_;
  s.requests_failed_send = requests_failed_send_;
  s.error_replies_sent = error_replies_sent_;
  s.dropped = dropped_;
  s.late_replies = late_replies_;
  s.nodes_lost = nodes_lost_;
  s.heartbeat_timeouts = heartbeat_timeouts_;
  for (size_t i = 0; i <= kLatencyBucketCount; ++i) {
    s.latency_buckets[i] = latency_buckets_[i].load(std::memory_order_relaxed);
    s.latency_count += s.latency_buckets[i];
  }
  s.latency_sum_seconds = latency_sum_ns_.load(std::memory_order_relaxed) / 1e9;
  return s;
}

}  // namespace troupe::runtime
