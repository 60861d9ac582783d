// EventLog: the head's ring of supervision events.
#include "cluster/event_log.h"

#include <gtest/gtest.h>

namespace troupe::cluster {
namespace {

runtime::SupervisorEvent Event(int n) {
  runtime::SupervisorEvent e;
  e.supervisor = "sup";
  e.child = "child-" + std::to_string(n);
  e.kind = "restarting";
  e.unix_ms = n;
  return e;
}

TEST(EventLog, KeepsTheNewestEventsOldestFirstWhenItWrapsAround) {
  EventLog log(3);
  for (int i = 1; i <= 5; ++i) log.Add(Event(i));
  auto events = log.List();
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].child, "child-3");
  EXPECT_EQ(events[1].child, "child-4");
  EXPECT_EQ(events[2].child, "child-5");
}

TEST(EventLog, HoldsAThousandByDefault) {
  EventLog log;
  EXPECT_TRUE(log.List().empty());
  for (int i = 1; i <= 1001; ++i) log.Add(Event(i));
  EXPECT_EQ(log.size(), EventLog::kDefaultCapacity);
  auto events = log.List();
  EXPECT_EQ(events.front().unix_ms, 2);
  EXPECT_EQ(events.back().unix_ms, 1001);
}

}  // namespace
}  // namespace troupe::cluster
