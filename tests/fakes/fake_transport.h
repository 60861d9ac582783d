// FakeTransport: a Transport that records what is sent and lets a test inject frames and
// failures, for deterministic unit tests of the layer above (the runtime's bridge).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "transport/transport.h"

namespace troupe::testing {

class FakeTransport final : public transport::Transport {
 public:
  explicit FakeTransport(transport::NodeId self) : self_(self) {}

  Status Start(transport::TransportHandler handler) override {
    handler_ = std::move(handler);
    return OkStatus();
  }
  void Stop() override {}
  transport::NodeId self() const override { return self_; }
  std::string listen_address() const override { return "fake:" + std::to_string(self_); }
  void AddPeer(transport::NodeId peer, const std::string& address) override {
    std::lock_guard<std::mutex> lock(mu_);
    addresses_[peer] = address;
  }
  std::string PeerAddress(transport::NodeId peer) const override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = addresses_.find(peer);
    return it == addresses_.end() ? "" : it->second;
  }
  Status Send(transport::NodeId peer, const transport::FrameHeader& header, Buffer payload,
              transport::SendCallback done) override {
    transport::Frame frame{header, std::move(payload)};
    frame.header.dst_node = peer;
    {
      std::lock_guard<std::mutex> lock(mu_);
      sent_.push_back(std::move(frame));
    }
    cv_.notify_all();
    if (done) done(fail_sends_ ? UnavailableError("fake: send failed") : OkStatus());
    return OkStatus();
  }
  void Disconnect(transport::NodeId peer, const Status& reason) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      disconnected_.emplace_back(peer, reason);
    }
    if (handler_.on_peer_failed) handler_.on_peer_failed(peer, reason);
  }
  transport::TransportStats stats() const override { return {}; }
  std::vector<transport::PeerTraffic> peer_traffic() const override { return {}; }

  // ---- test controls ----
  void Deliver(transport::NodeId peer, transport::FrameHeader header, Buffer payload) {
    header.src_node = peer;
    handler_.on_frame(peer, transport::Frame{header, std::move(payload)});
  }
  void Connect(transport::NodeId peer) { handler_.on_peer_connected(peer); }
  void Fail(transport::NodeId peer, const Status& reason) { handler_.on_peer_failed(peer, reason); }
  void set_fail_sends(bool fail) { fail_sends_ = fail; }

  std::vector<transport::Frame> TakeSent() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::exchange(sent_, {});
  }
  /// Waits (bounded) for a sent frame matching `match`; removes and returns it.
  std::optional<transport::Frame> WaitForSent(const std::function<bool(const transport::Frame&)>& match,
                                              std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    std::optional<transport::Frame> out;
    cv_.wait_for(lock, timeout, [&] {
      for (auto it = sent_.begin(); it != sent_.end(); ++it) {
        if (match(*it)) {
          out = std::move(*it);
          sent_.erase(it);
          return true;
        }
      }
      return false;
    });
    return out;
  }
  std::vector<std::pair<transport::NodeId, Status>> disconnected() const {
    std::lock_guard<std::mutex> lock(mu_);
    return disconnected_;
  }

 private:
  const transport::NodeId self_;
  transport::TransportHandler handler_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<transport::NodeId, std::string> addresses_;
  std::vector<transport::Frame> sent_;
  std::vector<std::pair<transport::NodeId, Status>> disconnected_;
  bool fail_sends_ = false;
};

}  // namespace troupe::testing
