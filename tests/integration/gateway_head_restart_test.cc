// A head restart drops no request (issue 20; docs/gateway.md "A head restart"): clients send whole
// and streamed requests through `troupe up`'s gateway in a bounded loop while the head is killed
// with -9 and `troupe up` restarts it. Every request is answered 200, and the restarted head's
// metering counts each request it admitted once: a request the gateway sent again is not counted
// for both heads, nor twice by the new one.
#include <gtest/gtest.h>

#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "cluster/client.h"
#include "common/logging.h"
#include "tests/support/gateway_calls.h"
#include "tests/support/http_client.h"
#include "tests/support/local_cluster.h"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;
using testing::HttpCall;
using testing::HttpReply;

constexpr int kMaxTokens = 5;

Json Chat(int max_tokens, bool stream) {
  return Json{{"model", "echo"},
              {"messages", Json::array({Json{{"role", "user"}, {"content", "count these words"}}})},
              {"max_tokens", max_tokens},
              {"stream", stream}};
}

// What one client saw: each request's status, when it was sent and answered, and whether the
// gateway sent it to the head more than once.
struct Outcome {
  int status = 0;
  Clock::time_point sent, answered;
  bool retried = false;
  bool cut = false;  // a stream ended with an error event (docs/gateway.md "A head restart")
  std::string error;
};

TEST(GatewayHeadRestart, EveryRequestThroughAHeadKilledWithMinus9IsAnsweredOnceAndMeteredOnce) {
  (void)InitLogging("warn");
  // No usage flush before the kill (every 600 s, and no usage query until the end): the killed
  // head's metering is lost whole, so the restarted head's usage is exactly what it admitted and
  // settled, and each request counted twice would show.
  auto cluster = LocalCluster::Start("troupe-gateway-head-restart", "gwr",
                                     TwoNodeClusterYaml("gwr") +
                                         "gateway:\n  listen: 127.0.0.1:0\n  usage_flush_interval: 600s\n");
  ASSERT_NE(cluster, nullptr);
  cluster::Client& client = *cluster->client;
  const int port = testing::TroupeUpGatewayPort(cluster->dir);
  ASSERT_NE(port, 0);
  // 20 ms to the first token, 100 tokens a second: a request is inside the head ~60 ms, so the
  // kill finds some in flight.
  ASSERT_NO_FATAL_FAILURE(
      testing::DeployTestModel(client, "echo", "default", "{tokens_per_second: 100, first_token_latency: 20ms}", 8));
  ASSERT_TRUE(client.ApiCommand("tenant.create", "default", "{}", 10s).ok());
  auto made = client.ApiCommand("key.create", "", Json{{"tenant", "default"}}.dump(), 10s);
  ASSERT_TRUE(made.ok()) << made.status();
  const std::string key = Json::parse(*made).value("key", "");
  ASSERT_FALSE(key.empty());

  // Four clients of whole requests and one of streams, each in a loop until told to stop (and
  // at most 20 s).
  constexpr int kWhole = 4;
  std::atomic<bool> stop{false};
  std::atomic<int> answered_since_kill{0};
  std::atomic<bool> killed{false};
  std::mutex mu;
  std::vector<Outcome> whole, streams;
  std::vector<std::thread> clients;
  const auto give_up = Clock::now() + 20s;
  for (int c = 0; c <= kWhole; ++c) {
    const bool stream = c == kWhole;
    clients.emplace_back([&, stream] {
      const std::string body = Chat(kMaxTokens, stream).dump();
      while (!stop.load() && Clock::now() < give_up) {
        Outcome o;
        o.sent = Clock::now();
        HttpReply r = HttpCall(port, "POST", "/v1/chat/completions", {{"authorization", "Bearer " + key}}, body, 15s);
        o.answered = Clock::now();
        o.status = r.status;
        o.retried = !r.Header("x-troupe-head-retries").empty();
        if (r.status != 200) {
          o.error = r.error + r.body;
        } else if (stream && r.body.find("data: [DONE]") == std::string::npos) {
          o.status = -1;  // a 200 stream must end with [DONE], even one cut short
          o.error = "the stream did not end with [DONE]: " + r.body;
        } else if (stream && r.body.find("\"error\"") != std::string::npos) {
          o.cut = true;  // its head was lost after its first chunk: ended with an error event
          o.retried = false;
        } else if (!stream && Json::parse(r.body)["usage"].value("completion_tokens", 0) != kMaxTokens) {
          o.status = -1;
          o.error = "not a whole answer: " + r.body;
        }
        if (killed.load()) ++answered_since_kill;
        std::lock_guard<std::mutex> lock(mu);
        (stream ? streams : whole).push_back(std::move(o));
      }
    });
  }
  auto answered = [&] {
    std::lock_guard<std::mutex> lock(mu);
    return whole.size() + streams.size();
  };
  // Some requests before the kill, then kill -9 of the head with requests inside it.
  const auto warm = Clock::now() + 10s;
  while (answered() < 10 && Clock::now() < warm) std::this_thread::yield();
  ASSERT_GE(answered(), 10u) << "the clients were not served before the kill";
  const auto t_kill = Clock::now();
  ASSERT_EQ(kill(cluster->pids.at("head"), SIGKILL), 0);
  killed = true;
  auto restarting = cluster->up->ReadLineWithPrefix("head exited", 30s);
  ASSERT_TRUE(restarting.ok()) << "troupe up did not see its head die: " << restarting.status();
  // Served again: every client has had answers after the kill (the retried ones among them).
  while (answered_since_kill.load() < 20 && Clock::now() < give_up) std::this_thread::yield();
  stop = true;
  for (auto& t : clients) t.join();

  int ok = 0, retried = 0, answered_before_kill = 0, admitted_by_new_head = 0;
  Clock::time_point first_retry_ok = Clock::time_point::max();
  for (const Outcome& o : whole) {
    if (o.retried && o.status == 200) first_retry_ok = std::min(first_retry_ok, o.answered);
  }
  for (const Outcome& o : whole) {
    EXPECT_EQ(o.status, 200) << o.error;
    ok += o.status == 200;
    retried += o.retried;
    answered_before_kill += o.answered < t_kill;
    admitted_by_new_head += o.status == 200 && (o.retried || o.sent > first_retry_ok);
  }
  int streams_ok = 0, streams_cut = 0;
  for (const Outcome& o : streams) {
    EXPECT_EQ(o.status, 200) << "stream: " << o.error;
    streams_ok += o.status == 200;
    streams_cut += o.cut;
  }
  std::printf("%zu whole requests (%d answered 200, %d of them sent to the head again, %d answered before the kill) "
              "and %zu streams (%d answered 200, %d of them ended by an error event after their first chunk) through "
              "kill -9 of the head, answered again %lld ms after the kill\n",
              whole.size(), ok, retried, answered_before_kill, streams.size(), streams_ok, streams_cut,
              static_cast<long long>(
                  std::chrono::duration_cast<std::chrono::milliseconds>(first_retry_ok - t_kill).count()));
  EXPECT_EQ(ok, static_cast<int>(whole.size()));
  EXPECT_LE(streams_cut, 1) << "only a stream running when the head died may be cut short";
  EXPECT_GE(retried, 1) << "no whole request was inside the head when it was killed: the test proved nothing";

  // Metering: the killed head flushed nothing, so the restarted head's usage is what it admitted.
  // Each request sent again was admitted there once (a second count would exceed the bound),
  // every request sent after the first retried one was answered was admitted there, and none was
  // settled as an error.
  const std::string key_id = key.substr(3, 12);
  auto usage = client.ApiCommand("usage", "", Json{{"key_id", key_id}, {"model", "echo"}}.dump(), 10s);
  ASSERT_TRUE(usage.ok()) << usage.status();
  const Json totals = Json::parse(*usage)["totals"];
  const int64_t requests = totals.value("requests", int64_t{0});
  const int64_t answered_after_kill = ok + streams_ok - answered_before_kill;
  std::printf("the restarted head metered %lld requests (at most the %lld answered after the kill, at least the %d "
              "whole ones it admitted for sure)\n",
              static_cast<long long>(requests), static_cast<long long>(answered_after_kill), admitted_by_new_head);
  // A stream cut short was admitted by the killed head: its Settle went to that head, with it.
  EXPECT_EQ(totals.value("errors", int64_t{0}), 0) << totals.dump();
  EXPECT_LE(requests, answered_after_kill) << "more requests metered by the restarted head than were answered after "
                                              "the kill: some were counted twice. " << totals.dump();
  EXPECT_GE(requests, admitted_by_new_head) << totals.dump();
  EXPECT_EQ(totals.value("output_tokens", int64_t{0}), requests * kMaxTokens)
      << "a request metered in part: " << totals.dump();
}

// A stream inside the head when it is killed, before its first chunk (the replica takes 1.5 s to
// its first token): sent again once a head is back, it is answered whole, with no error event.
TEST(GatewayHeadRestart, AStreamWaitingForItsFirstChunkWhenTheHeadIsKilledIsSentAgainAndAnsweredWhole) {
  (void)InitLogging("warn");
  auto cluster = LocalCluster::Start("troupe-gateway-head-restart-stream", "gws",
                                     TwoNodeClusterYaml("gws") + "gateway:\n  listen: 127.0.0.1:0\n");
  ASSERT_NE(cluster, nullptr);
  const int port = testing::TroupeUpGatewayPort(cluster->dir);
  ASSERT_NE(port, 0);
  ASSERT_NO_FATAL_FAILURE(testing::DeployTestModel(*cluster->client, "echo", "default",
                                                   "{tokens_per_second: 100, first_token_latency: 1500ms}", 4));
  ASSERT_TRUE(cluster->client->ApiCommand("tenant.create", "default", "{}", 10s).ok());
  auto made = cluster->client->ApiCommand("key.create", "", Json{{"tenant", "default"}}.dump(), 10s);
  ASSERT_TRUE(made.ok()) << made.status();
  const std::string key = Json::parse(*made).value("key", "");
  HttpReply reply;
  std::thread streaming([&] {
    reply = HttpCall(port, "POST", "/v1/chat/completions", {{"authorization", "Bearer " + key}},
                     Chat(kMaxTokens, true).dump(), 20s);
  });
  // Admitted (in flight at the gateway) and at the router or the replica, its first token 1.5 s
  // away: kill then.
  const auto deadline = Clock::now() + 5s;
  bool admitted = false;
  while (!admitted && Clock::now() < deadline) {
    HttpReply metrics = HttpCall(port, "GET", "/metrics", {}, "", 5s);
    admitted = metrics.body.find("troupe_gateway_requests_in_flight 1") != std::string::npos;
  }
  ASSERT_TRUE(admitted) << "the stream was not admitted within 5 s";
  ASSERT_EQ(kill(cluster->pids.at("head"), SIGKILL), 0);
  streaming.join();
  EXPECT_EQ(reply.status, 200) << reply.error << reply.body;
  EXPECT_NE(reply.body.find("data: [DONE]"), std::string::npos) << reply.body;
  EXPECT_EQ(reply.body.find("\"error\""), std::string::npos) << "the stream was cut instead of sent again: "
                                                              << reply.body;
  HttpReply metrics = HttpCall(port, "GET", "/metrics", {}, "", 5s);
  const std::string kRetries = "\ntroupe_gateway_head_retries_total ";
  const size_t at = metrics.body.find(kRetries);
  ASSERT_NE(at, std::string::npos) << metrics.body;
  const double retries = std::stod(metrics.body.substr(at + kRetries.size()));
  EXPECT_GE(retries, 1) << "the stream was not sent again";
  std::printf("the stream was answered whole after %.0f attempt(s) sent again\n", retries);
}

}  // namespace
}  // namespace troupe
