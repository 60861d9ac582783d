// ProgressExecutor: a CAF execution unit driven by the transport's progress thread, so that an
// actor woken by a frame runs (and answers) right there instead of waking a CAF worker.
#pragma once

#include <caf/actor_system.hpp>
#include <caf/execution_unit.hpp>
#include <caf/resumable.hpp>

#include <chrono>
#include <cstdint>
#include <deque>

namespace troupe::runtime::internal {

/// Jobs (actors) scheduled while the progress thread delivers frames. Drain() runs them on the
/// calling thread: each for at most `max_throughput` messages, at most `max_jobs` per drain;
/// whatever is left, or wants to run longer, goes to CAF's own scheduler. Owned by the
/// Bridge; used only on the progress thread (or the thread that calls Bridge::OnFrame).
class ProgressExecutor final : public caf::execution_unit {
 public:
  ProgressExecutor(caf::actor_system& system, size_t max_jobs, size_t max_throughput)
      : caf::execution_unit(&system), max_jobs_(max_jobs), max_throughput_(max_throughput) {}
  ~ProgressExecutor() override;

  void exec_later(caf::resumable* job) override { queue_.push_back(job); }

  /// Runs the queued jobs. Returns how long they held the thread (0 when none was queued),
  /// read on the coarse clock: 0 or a multiple of the kernel tick (a few milliseconds).
  std::chrono::microseconds Drain();
  /// Hands every queued job to CAF's scheduler (at shutdown).
  void HandOff();

 private:
  std::deque<caf::resumable*> queue_;
  const size_t max_jobs_;
  const size_t max_throughput_;
};

}  // namespace troupe::runtime::internal
