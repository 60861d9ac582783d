// ProgressExecutor.
#include "runtime/internal/progress_executor.h"

#include <caf/scheduler/abstract_coordinator.hpp>

namespace troupe::runtime::internal {

ProgressExecutor::~ProgressExecutor() { HandOff(); }

void ProgressExecutor::HandOff() {
  while (!queue_.empty()) {
    caf::resumable* job = queue_.front();
    queue_.pop_front();
    system().scheduler().enqueue(job);  // the scheduler takes over our reference
  }
}

std::chrono::microseconds ProgressExecutor::Drain() {
  std::chrono::microseconds slowest{0};
  size_t budget = max_jobs_;
  while (!queue_.empty()) {
    caf::resumable* job = queue_.front();
    queue_.pop_front();
    if (budget == 0) {
      system().scheduler().enqueue(job);
      continue;
    }
    --budget;
    auto start = std::chrono::steady_clock::now();
    auto result = job->resume(this, max_throughput_);
    slowest = std::max(slowest, std::chrono::duration_cast<std::chrono::microseconds>(
                                    std::chrono::steady_clock::now() - start));
    switch (result) {
      case caf::resumable::resume_later:
        // It has more to do than one turn: let CAF's workers carry on.
        system().scheduler().enqueue(job);
        break;
      case caf::resumable::awaiting_message:
      case caf::resumable::done:
      case caf::resumable::shutdown_execution_unit:
        caf::intrusive_ptr_release(job);
        break;
    }
  }
  return slowest;
}

}  // namespace troupe::runtime::internal
