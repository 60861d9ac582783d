// The runtime's Prometheus families carry the transport's counters, batches included, with the
// values the transport reports: two runtimes in one process, a real UCX connection between them.
#include "runtime/metrics.h"

#include <gtest/gtest.h>

#include <optional>
#include <thread>

#include "runtime/runtime.h"
#include "tests/runtime/test_actors.h"

namespace troupe::testing {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<runtime::Runtime> StartNode(const std::string& name) {
  runtime::RuntimeConfig config;
  config.node_name = name;
  config.transport.cluster_token = "metrics-test";
  runtime::CodecRegistry codecs;
  EXPECT_TRUE(AddTestCodecs(codecs).ok());
  auto rt = runtime::Runtime::Start(config, std::move(codecs));
  EXPECT_TRUE(rt.ok()) << rt.status();
  return rt.ok() ? std::move(*rt) : nullptr;
}

// The value of counter `name` in `families`, if it is there.
std::optional<double> CounterValue(const std::vector<prometheus::MetricFamily>& families, const std::string& name) {
  for (const auto& f : families) {
    if (f.name == name && f.type == prometheus::MetricType::Counter && f.metric.size() == 1) {
      return f.metric[0].counter.value;
    }
  }
  return std::nullopt;
}

TEST(RuntimeMetrics, TransportCountersAndBatchesAreExported) {
  auto a = StartNode("metrics-a");
  auto b = StartNode("metrics-b");
  ASSERT_TRUE(a && b);
  a->AddNode(b->node_id(), b->address());
  b->AddNode(a->node_id(), a->address());

  // On b, an actor that answers one message with `n` messages to its sender. It runs on b's
  // progress thread (the frame woke it), so its sends leave together at the end of that turn:
  // one batch.
  auto fan = b->Spawn([](caf::event_based_actor* self) -> caf::behavior {
    return {[self](Add& m) {
      auto back = caf::actor_cast<caf::actor>(self->current_sender());
      for (int64_t i = 0; i < m.n; ++i) self->send(back, Seq{static_cast<uint64_t>(i)});
    }};
  });
  // What encoding the ref into a message would do: b publishes it, a makes a proxy of it.
  b->bridge().MakeAddressable(caf::actor_cast<caf::strong_actor_ptr>(fan.handle()));
  runtime::ActorRef remote_fan = a->bridge().RefTo(b->node_id(), fan.id());
  ASSERT_TRUE(remote_fan.valid());
  auto counter = a->Spawn(Counter, int64_t{0});
  caf::send_as(counter.handle(), remote_fan.handle(), Add{20});

  auto seen = AwaitSeq(counter, 20, 5s);
  ASSERT_TRUE(seen.ok()) << seen.status();
  ASSERT_EQ(seen->received, 20u) << "the fan's messages did not all arrive";
  EXPECT_TRUE(seen->in_order);

  // A send counts once UCX completes it, which can come after the peer already has the data.
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (b->stats().transport.frames_sent < 20 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::yield();
  }
  ASSERT_GE(b->stats().transport.frames_sent, 20u) << "b's sends never completed";

  std::vector<prometheus::MetricFamily> families;
  runtime::RuntimeMetrics(*b)(families);
  auto stats = b->stats().transport;  // read after the families: counters only grow
  auto batches = CounterValue(families, "troupe_transport_batches_sent_total");
  ASSERT_TRUE(batches.has_value()) << "troupe_transport_batches_sent_total is not exported";
  EXPECT_GE(*batches, 1) << "the fan's 20 sends from one handler left as a batch";
  EXPECT_LE(*batches, static_cast<double>(stats.batches_sent));
  auto frames = CounterValue(families, "troupe_transport_frames_sent_total");
  ASSERT_TRUE(frames.has_value());
  EXPECT_GE(*frames, 20);
  EXPECT_LE(*frames, static_cast<double>(stats.frames_sent));

  // Both actors go before the runtimes: an actor alive when its actor system is destroyed is
  // never freed (the runtime does not wait for actors), which LeakSanitizer reports.
  caf::anon_send_exit(fan.handle(), caf::exit_reason::user_shutdown);
  caf::anon_send_exit(counter.handle(), caf::exit_reason::user_shutdown);
  a->Stop();
  b->Stop();
  EXPECT_TRUE(a->AwaitActors(5s)) << "actors of a still run";
  EXPECT_TRUE(b->AwaitActors(5s)) << "actors of b still run";
}

}  // namespace
}  // namespace troupe::testing
