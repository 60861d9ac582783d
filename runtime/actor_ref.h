// ActorRef: one handle for an actor wherever it lives (this process, another process, another
// host), with send, request and monitor.
#pragma once

#include <caf/actor.hpp>
#include <caf/actor_cast.hpp>
#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include <chrono>
#include <functional>
#include <string>

#include "common/status.h"
#include "runtime/error.h"
#include "transport/frame.h"

namespace troupe::runtime {

using transport::NodeId;

/// A location-transparent actor handle. For a local actor it wraps the caf::actor; for a
/// remote one it wraps the CAF proxy whose traffic the bridge carries. Copyable, cheap, and
/// usable from any thread and inside messages to other nodes (codecs encode it with
/// RefCodec::EncodeRef).
///
/// Semantics (docs/actors.md): delivery is at most once and ordered per sender/receiver pair;
/// every request has a timeout; a request to an actor whose node is lost fails at once with
/// Unavailable; a monitor fires when the actor exits or its node is lost.
///
/// Inside an actor, use CAF directly on handle() (`self->request(ref.handle(), ...)`,
/// `self->monitor(ref.handle())`): the blocking Request below must not run on an actor's
/// thread.
class ActorRef {
 public:
  ActorRef() = default;
  ActorRef(caf::actor handle, NodeId node, uint64_t wire_id)
      : handle_(std::move(handle)), node_(node), id_(wire_id) {}

  /// A ref that names an actor but has no handle: the actor does not exist (any more).
  /// Sends are dropped and requests fail with NotFound.
  static ActorRef Dangling(NodeId node, uint64_t wire_id) { return ActorRef({}, node, wire_id); }

  /// True if the ref has a handle (the actor may still have exited since).
  bool valid() const { return static_cast<bool>(handle_); }
  explicit operator bool() const { return valid(); }
  /// The node the actor lives on (0 for an empty ref).
  NodeId node() const { return node_; }
  /// The actor's wire id, unique on its node across restarts.
  uint64_t id() const { return id_; }
  const caf::actor& handle() const { return handle_; }
  /// "actor 0x5a0000000007 on node 12".
  std::string ToString() const;

  /// Sends `msg` without a sender. At most once; dropped if the actor is gone.
  template <class T>
  void Send(T&& msg) const {
    if (handle_) caf::anon_send(handle_, std::forward<T>(msg));
  }

  /// Sends `msg` and blocks the calling (non-actor) thread for the reply, at most `timeout`.
  /// Errors: DeadlineExceeded (no reply in time), Unavailable (the actor or its node is
  /// gone), NotFound (no such actor), InvalidArgument (the actor does not take `msg`, or it
  /// cannot be encoded or decoded), or whatever Status the actor replied with.
  template <class Reply, class T>
  StatusOr<Reply> Request(T&& msg, std::chrono::milliseconds timeout) const {
    if (!handle_) return NotFoundError(ToString() + " does not exist");
    StatusOr<Reply> out = DeadlineExceededError("no reply from " + ToString());
    caf::scoped_actor self{handle_->home_system()};
    self->request(handle_, timeout, std::forward<T>(msg))
        .receive([&](Reply& reply) { out = std::move(reply); },
                 [&](caf::error& error) { out = ToStatus(error); });
    return out;
  }

  /// Asynchronous request: `done` runs once, on an actor thread, with the reply or error.
  template <class Reply, class T>
  void Request(T&& msg, std::chrono::milliseconds timeout,
               std::function<void(StatusOr<Reply>)> done) const {
    if (!handle_) {
      done(NotFoundError(ToString() + " does not exist"));
      return;
    }
    auto target = handle_;
    handle_->home_system().spawn([target, timeout, msg = std::forward<T>(msg),
                                  done = std::move(done)](caf::event_based_actor* self) mutable {
      self->request(target, timeout, std::move(msg))
          .then([done](Reply& reply) { done(std::move(reply)); },
                [done](caf::error& error) { done(ToStatus(error)); });
    });
  }

  /// Calls `on_down` once, on an actor thread, when the actor exits (OK for a normal exit,
  /// otherwise the reason) or its node is lost (Unavailable). For an empty or dangling ref
  /// it is called at once with NotFound.
  void Monitor(std::function<void(const Status& reason)> on_down) const;

  friend bool operator==(const ActorRef& a, const ActorRef& b) {
    return a.node_ == b.node_ && a.id_ == b.id_;
  }
  friend bool operator!=(const ActorRef& a, const ActorRef& b) { return !(a == b); }

 private:
  caf::actor handle_;
  NodeId node_ = 0;
  uint64_t id_ = 0;
};

}  // namespace troupe::runtime
