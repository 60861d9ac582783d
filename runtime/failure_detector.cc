// FailureDetector: heartbeat timeouts of connected peers.
#include "runtime/failure_detector.h"

namespace troupe::runtime {

FailureDetector::FailureDetector(const Clock& clock, std::chrono::milliseconds timeout)
    : clock_(clock), timeout_(timeout) {}

void FailureDetector::Connected(NodeId peer) { peers_[peer] = clock_.Now(); }

void FailureDetector::Touch(NodeId peer) {
  auto it = peers_.find(peer);
  // The coarse clock costs a few nanoseconds instead of a full clock read per frame.
  if (it != peers_.end()) it->second = clock_.NowCoarse();
}

void FailureDetector::Lost(NodeId peer) { peers_.erase(peer); }

FailureDetector::Verdict FailureDetector::Check() {
  const auto now = clock_.Now();
  // If this process itself did not run for a good part of the timeout (an overloaded or
  // suspended host), silence proves nothing about the peers: start their clocks afresh.
  const bool stalled = last_check_ != Clock::TimePoint() && now - last_check_ > timeout_ / 2;
  last_check_ = now;
  Verdict verdict;
  for (auto& [peer, last_seen] : peers_) {
    if (stalled) last_seen = now;
    (now - last_seen > timeout_ ? verdict.expired : verdict.alive).push_back(peer);
  }
  return verdict;
}

std::optional<Clock::Duration> FailureDetector::Silence(NodeId peer) const {
  auto it = peers_.find(peer);
  if (it == peers_.end()) return std::nullopt;
  return clock_.Now() - it->second;
}

}  // namespace troupe::runtime
