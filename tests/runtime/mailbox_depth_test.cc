// Mailbox depth sampling: a sample is handled ahead of the backlog it measures, and the depth
// reaches the process's metrics.
#include "runtime/mailbox_depth.h"

#include <gtest/gtest.h>

#include <future>

#include "runtime/metrics.h"
#include "runtime/runtime.h"

namespace troupe::testing {
namespace {

using namespace std::chrono_literals;

TEST(MailboxDepth, ASampleSeesTheBacklogBehindIt) {
  runtime::RuntimeConfig config;
  config.node_name = "mailbox";
  config.transport.cluster_token = "mailbox-test";
  auto rt = runtime::Runtime::Start(config);
  ASSERT_TRUE(rt.ok()) << rt.status();
  runtime::MailboxDepths* depths = &(*rt)->mailbox_depths();
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  caf::actor busy = (*rt)->system().spawn<caf::detached>([depths, released](caf::event_based_actor* self) -> caf::behavior {
    runtime::StartMailboxSampling(self, depths, "busy");
    return {
        runtime::MailboxSampleHandler(self, depths, "busy", std::chrono::hours(1)),
        [released](caf::ok_atom) { released.wait(); },  // holds the actor while its mailbox fills
        [](int) {},
    };
  });
  auto wait_for = [&](auto pred) {
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < deadline) {
      if (pred()) return true;
      std::this_thread::yield();
    }
    return false;
  };
  ASSERT_TRUE(wait_for([&] { return depths->Snapshot().count("busy") == 1; })) << "no first sample";
  EXPECT_EQ(depths->Snapshot()["busy"], 0u) << "an idle actor";
  caf::anon_send(busy, caf::ok_atom::value);
  for (int i = 0; i < 100; ++i) caf::anon_send(busy, i);
  caf::anon_send<caf::message_priority::high>(busy, runtime::mailbox_sample_atom::value);
  release.set_value();
  // The sample goes to the urgent queue; CAF may still hand out a few queued messages of the
  // batch it fetched before looking there, so the depth is the backlog give or take a few.
  EXPECT_TRUE(wait_for([&] { return depths->Snapshot()["busy"] >= 90; })) << "sampled " << depths->Snapshot()["busy"];
  const size_t sampled = depths->Snapshot()["busy"];
  EXPECT_LE(sampled, 101u);

  std::vector<prometheus::MetricFamily> families;
  runtime::RuntimeMetrics(**rt)(families);
  bool found = false;
  for (const auto& f : families) {
    if (f.name != "troupe_actor_mailbox_depth") continue;
    for (const auto& m : f.metric) {
      for (const auto& l : m.label) {
        found |= l.name == "actor" && l.value == "busy" && m.gauge.value == static_cast<double>(sampled);
      }
    }
  }
  EXPECT_TRUE(found) << "troupe_actor_mailbox_depth{actor=\"busy\"} " << sampled << " is not exported";
  caf::anon_send_exit(busy, caf::exit_reason::user_shutdown);
  EXPECT_TRUE(wait_for([&] { return depths->Snapshot().count("busy") == 0; })) << "entry kept after exit";
  (*rt)->Stop();
}

}  // namespace
}  // namespace troupe::testing
