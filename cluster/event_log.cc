// EventLog.
#include "cluster/event_log.h"

#include <utility>

namespace troupe::cluster {

void EventLog::Add(runtime::SupervisorEvent event) {
  events_.push_back(std::move(event));
  if (events_.size() > capacity_) events_.pop_front();
}

}  // namespace troupe::cluster
