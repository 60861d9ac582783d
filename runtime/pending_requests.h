// PendingRequests: the bridge's table of requests to remote actors that await a reply, with
// the deadlines after which they are forgotten.
#pragma once

#include <caf/actor_control_block.hpp>
#include <caf/message_id.hpp>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <queue>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/status.h"
#include "runtime/actor_ref.h"

namespace troupe::runtime {

/// One request to a remote actor: an actor's request (src and mid: its reply goes to that
/// actor) or one of the runtime's control requests (spawn, lookup: `done` gets the reply).
struct PendingRequest {
  using RefCallback = std::function<void(StatusOr<ActorRef>)>;

  NodeId node = 0;              ///< where the request went
  caf::strong_actor_ptr src;    ///< the requester (actor requests)
  caf::message_id mid;          ///< its request id
  Clock::TimePoint deadline;    ///< forgotten after this
  RefCallback done;             ///< control requests
  Clock::TimePoint start;       ///< when it was made (for the latency histogram)
};

/// The requests sent to other nodes that await a reply, by the request id that their frames
/// carry (1, 2, 3, ...; 0 is never used). Each is forgotten at its deadline: actor requests
/// after `request_ttl` (CAF times them out on its own; this only bounds the table), control
/// requests after their own timeout (their callback is then owed DeadlineExceeded).
///
/// Owned by the Bridge and used under its mutex: not thread-safe itself. Reads time from the
/// injected clock only when a request is added and when Expire() runs.
class PendingRequests {
 public:
  PendingRequests(const Clock& clock, std::chrono::milliseconds request_ttl, size_t max_pending);

  /// Adds an actor's request to `node`, remembered for request_ttl; returns its request id,
  /// or 0 if max_pending requests are pending already (the caller refuses it).
  uint64_t AddActorRequest(NodeId node, caf::strong_actor_ptr src, caf::message_id mid);
  /// Adds a control request to `node` with its own `timeout` (never refused: the runtime makes
  /// few); returns its request id.
  uint64_t AddControlRequest(NodeId node, Clock::Duration timeout, PendingRequest::RefCallback done);

  /// Takes out request `id` for its reply from `from`: false (and nothing taken) if it is not
  /// pending or went to another node (a late or misdirected reply).
  bool TakeReply(uint64_t id, NodeId from, PendingRequest* out);
  /// Takes out request `id` (to fail it); false if it is not pending.
  bool Take(uint64_t id, PendingRequest* out);
  /// Takes out every request to `node` (lost), appending them to `out`.
  void TakeNode(NodeId node, std::vector<PendingRequest>* out);
  /// Takes out every request (shutdown).
  std::vector<PendingRequest> TakeAll();

  /// Forgets the requests whose deadline has passed; appends the control requests among them
  /// (whose callbacks are owed DeadlineExceeded) to `timed_out`.
  void Expire(std::vector<PendingRequest>* timed_out);

  size_t size() const { return pending_.size(); }
  /// Deadlines held (some of them of requests answered since): for tests of the compaction.
  size_t deadlines_held() const { return actor_deadlines_.size() + control_deadlines_.size(); }

 private:
  using Table = std::unordered_map<uint64_t, PendingRequest>;
  using Deadline = std::pair<Clock::TimePoint, uint64_t>;

  const Clock& clock_;
  const std::chrono::milliseconds request_ttl_;
  const size_t max_pending_;
  Table pending_;
  uint64_t next_id_ = 0;
  // Nodes of answered requests, reused by the next ones: a request then costs the table no
  // allocation (at most kSpare are kept).
  static constexpr size_t kSpare = 256;
  std::vector<Table::node_type> spare_;
  // Actor requests in the order they were made (one TTL for all, so that order is also the order
  // of their deadlines: appending is all a request costs); control requests (each with its own
  // timeout) in a heap. Answered requests leave their deadline behind until it passes, or until
  // Expire() compacts them away.
  std::deque<Deadline> actor_deadlines_;
  std::priority_queue<Deadline, std::vector<Deadline>, std::greater<Deadline>> control_deadlines_;
};

}  // namespace troupe::runtime
