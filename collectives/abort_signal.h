// AbortSignal: a one-shot abort that one thread raises and a blocking setup on another (a
// communicator's formation, GlooCommunicator::Create) watches, so that a stop or a lost peer ends
// the setup at once instead of after its connect timeout. docs/collectives.md, "Peer watch".
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <utility>

#include "common/status.h"

namespace troupe::collectives {

/// A one-shot abort with a reason, and the callbacks that carry it to whatever is blocked: a
/// communicator still forming (GlooOptions::abort) and, once formed, its Abort(). Raised by the
/// owner of a worker (a stop) or by a PeerWatch (a lost peer); the first reason wins for good.
/// Shared (std::shared_ptr) between the raiser and the watchers. Thread-safe; callbacks run on the
/// raising thread (or on the registering one when raised already) and must not call into the same
/// signal.
class AbortSignal {
 public:
  /// Removes its callback when destroyed (or Reset()): after that returns the callback is neither
  /// running nor called any more. Movable; the signal must outlive it.
  class Registration {
   public:
    Registration() = default;
    Registration(Registration&& other) noexcept { *this = std::move(other); }
    Registration& operator=(Registration&& other) noexcept {
      Reset();
      signal_ = std::exchange(other.signal_, nullptr);
      id_ = other.id_;
      return *this;
    }
    Registration(const Registration&) = delete;
    Registration& operator=(const Registration&) = delete;
    ~Registration() { Reset(); }
    void Reset() {
      if (signal_ == nullptr) return;
      std::lock_guard<std::mutex> lock(signal_->mu_);
      signal_->callbacks_.erase(id_);
      signal_ = nullptr;
    }

   private:
    friend class AbortSignal;
    Registration(AbortSignal* signal, uint64_t id) : signal_(signal), id_(id) {}
    AbortSignal* signal_ = nullptr;
    uint64_t id_ = 0;
  };

  /// Aborts with `reason` (an error; OK is taken as Cancelled) and runs every registered callback
  /// with it, once. Later calls change nothing.
  void Abort(Status reason) {
    if (reason.ok()) reason = CancelledError("aborted");
    std::lock_guard<std::mutex> lock(mu_);
    if (!reason_.ok()) return;
    reason_ = std::move(reason);
    for (auto& [id, callback] : callbacks_) callback(reason_);
  }

  /// OK while not aborted; the first reason after.
  Status reason() const {
    std::lock_guard<std::mutex> lock(mu_);
    return reason_;
  }
  bool aborted() const { return !reason().ok(); }

  /// Calls `callback(reason)` at the abort, or at once on this thread if aborted already. The
  /// signal must outlive the registration.
  [[nodiscard]] Registration OnAbort(std::function<void(const Status&)> callback) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!reason_.ok()) {
      callback(reason_);
      return Registration();
    }
    const uint64_t id = next_id_++;
    callbacks_.emplace(id, std::move(callback));
    return Registration(this, id);
  }

 private:
  mutable std::mutex mu_;  // held while callbacks run: Registration::Reset waits for them
  Status reason_;
  uint64_t next_id_ = 1;
  std::map<uint64_t, std::function<void(const Status&)>> callbacks_;
};

}  // namespace troupe::collectives
