// TransportInbox: collects what a transport delivers so tests can wait on it with bounds.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

#include "transport/transport.h"

namespace troupe::testing {

/// Frames, connections and failures seen by a transport's handler, guarded by a mutex.
/// Every wait is bounded and names its condition in the caller's assertion.
class TransportInbox {
 public:
  transport::TransportHandler Handler() {
    transport::TransportHandler h;
    h.on_frame = [this](transport::NodeId peer, transport::Frame frame) {
      std::lock_guard<std::mutex> lock(mu_);
      frames_.push_back({peer, std::move(frame)});
      cv_.notify_all();
    };
    h.on_peer_connected = [this](transport::NodeId peer) {
      std::lock_guard<std::mutex> lock(mu_);
      connected_.push_back(peer);
      cv_.notify_all();
    };
    h.on_peer_failed = [this](transport::NodeId peer, const Status& reason) {
      std::lock_guard<std::mutex> lock(mu_);
      failures_.emplace(peer, reason);
      failure_times_.emplace(peer, std::chrono::steady_clock::now());
      cv_.notify_all();
    };
    return h;
  }

  /// Waits until at least `n` frames arrived; false on timeout.
  bool WaitForFrames(size_t n, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return frames_.size() >= n; });
  }

  /// Waits for a frame matching `match`, removes and returns it; nullopt on timeout. Frames
  /// that do not match (heartbeats, say) are left where they are.
  std::optional<transport::Frame> WaitForFrame(const std::function<bool(const transport::Frame&)>& match,
                                               std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    std::optional<transport::Frame> out;
    cv_.wait_for(lock, timeout, [&] {
      for (auto it = frames_.begin(); it != frames_.end(); ++it) {
        if (match(it->second)) {
          out = std::move(it->second);
          frames_.erase(it);
          return true;
        }
      }
      return false;
    });
    return out;
  }

  /// Removes and returns every frame received so far.
  std::vector<std::pair<transport::NodeId, transport::Frame>> TakeFrames() {
    std::lock_guard<std::mutex> lock(mu_);
    auto out = std::move(frames_);
    frames_.clear();
    return out;
  }

  /// Waits for on_peer_failed(peer); returns its reason, or nullopt on timeout.
  std::optional<Status> WaitForFailure(transport::NodeId peer, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return failures_.count(peer) > 0; })) return std::nullopt;
    return failures_.find(peer)->second;
  }

  std::chrono::steady_clock::time_point FailureTime(transport::NodeId peer) {
    std::lock_guard<std::mutex> lock(mu_);
    return failure_times_.find(peer)->second;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::pair<transport::NodeId, transport::Frame>> frames_;
  std::vector<transport::NodeId> connected_;
  std::multimap<transport::NodeId, Status> failures_;
  std::multimap<transport::NodeId, std::chrono::steady_clock::time_point> failure_times_;
};

/// Collects the statuses of send completions.
class SendResults {
 public:
  transport::SendCallback Callback() {
    return [this](const Status& s) {
      std::lock_guard<std::mutex> lock(mu_);
      results_.push_back(s);
      cv_.notify_all();
    };
  }
  bool WaitFor(size_t n, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return results_.size() >= n; });
  }
  std::vector<Status> results() {
    std::lock_guard<std::mutex> lock(mu_);
    return results_;
  }
  size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return results_.size();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Status> results_;
};

}  // namespace troupe::testing
