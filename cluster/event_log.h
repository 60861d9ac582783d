// EventLog: the supervision events the head keeps for `troupe events`, the newest first to stay.
#pragma once

#include <cstddef>
#include <deque>
#include <vector>

#include "runtime/supervisor.h"

namespace troupe::cluster {

/// A ring of the newest supervision events sent to the head (supervisors' `event_sink`).
///
/// Owned by the head's controller actor and used only on its mailbox, so it takes no lock. Kept
/// in memory only: a restarted head starts with an empty log.
class EventLog {
 public:
  static constexpr size_t kDefaultCapacity = 1000;

  explicit EventLog(size_t capacity = kDefaultCapacity) : capacity_(capacity) {}

  /// Keeps `event`; past the capacity the oldest event is dropped.
  void Add(runtime::SupervisorEvent event);
  /// The events kept, oldest first.
  std::vector<runtime::SupervisorEvent> List() const { return {events_.begin(), events_.end()}; }
  size_t size() const { return events_.size(); }

 private:
  size_t capacity_;
  std::deque<runtime::SupervisorEvent> events_;
};

}  // namespace troupe::cluster
