// ProgressExecutor.
#include "runtime/internal/progress_executor.h"

#include <caf/scheduler/abstract_coordinator.hpp>

#include "common/clock.h"

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
  if (queue_.empty()) return std::chrono::microseconds(0);
  // The coarse clock: the figure only feeds a warning about drains of several milliseconds.
  auto start = CoarseSteadyNow();
  size_t budget = max_jobs_;
  while (!queue_.empty()) {
    caf::resumable* job = queue_.front();
    queue_.pop_front();
    if (budget == 0) {
      system().scheduler().enqueue(job);
      continue;
    }
    --budget;
    switch (job->resume(this, max_throughput_)) {
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
  return std::chrono::duration_cast<std::chrono::microseconds>(CoarseSteadyNow() - start);
}

}  // namespace troupe::runtime::internal
