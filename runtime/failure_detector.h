// FailureDetector: the heartbeat failure detector of the bridge: which connected peers went
// silent for too long.
#pragma once

#include <chrono>
#include <optional>
#include <unordered_map>
#include <vector>

#include "common/clock.h"
#include "transport/frame.h"

namespace troupe::runtime {

using transport::NodeId;

/// Tracks, for every connected peer, when anything (a frame of any kind, heartbeats included)
/// last came from it; Check(), run every heartbeat interval, says which peers to send a
/// heartbeat and which were silent for longer than `timeout` (to be disconnected: the
/// transport cannot see a hung peer, DESIGN.md). A fixed timeout over the time since the last
/// frame, as in Erlang's net_kernel ticks, rather than an adaptive (phi accrual) detector: the
/// links are a data centre's, and the timeout is the operator's promise (`failure_timeout`,
/// docs/config.md).
///
/// One rule protects peers from this process's own stalls: if Check() itself ran late by more
/// than half the timeout (an overloaded or suspended host), silence proves nothing about the
/// peers, and every peer's silence starts afresh.
///
/// Owned by the Bridge and used under its mutex: not thread-safe itself. Signs of life are
/// read from the clock's coarse time (heartbeat timeouts are hundreds of milliseconds and more).
class FailureDetector {
 public:
  FailureDetector(const Clock& clock, std::chrono::milliseconds timeout);

  /// `peer` connected: watched from now on.
  void Connected(NodeId peer);
  /// Something came from `peer` (ignored unless it is connected).
  void Touch(NodeId peer);
  /// `peer` is gone: no longer watched.
  void Lost(NodeId peer);
  /// Watches no peer any more (shutdown).
  void Clear() { peers_.clear(); }

  struct Verdict {
    std::vector<NodeId> alive;    ///< connected and heard from within the timeout: send a heartbeat
    std::vector<NodeId> expired;  ///< silent for longer than the timeout: disconnect
  };
  /// The verdict on every connected peer now. An expired peer stays watched (and expired)
  /// until Lost() is called for it.
  Verdict Check();

  /// How long nothing has come from `peer`; nullopt if it is not connected.
  std::optional<Clock::Duration> Silence(NodeId peer) const;

 private:
  const Clock& clock_;
  const std::chrono::milliseconds timeout_;
  std::unordered_map<NodeId, Clock::TimePoint> peers_;  // connected peer -> last sign of life
  Clock::TimePoint last_check_{};
};

}  // namespace troupe::runtime
