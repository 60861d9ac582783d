// Metering through crashes on a real local cluster (`troupe up` with head, two CPU nodes and the
// gateway): kill -9 of the head between usage flushes, and kill -9 of a gateway with streams in
// flight. What the head has in LMDB (`usage`) is checked against what the gateway actually served,
// request by request, so a count made twice or lost beyond the last batch fails the test; the
// audit chain is verified across the head's restart (docs/gateway.md, "What a crash costs").
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "cluster/client.h"
#include "cluster/head_store.h"
#include "cluster/usage_store.h"
#include "common/child_process.h"
#include "common/logging.h"
#include "storage/lmdb_env.h"
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
using testing::PortOf;

// Requests, errors and tokens: one usage total as `troupe usage --json` reports it, or a sum of
// what the gateway answered.
struct Counts {
  int64_t requests = 0, errors = 0, input = 0, output = 0;
  static Counts Of(const Json& totals) {
    return Counts{totals.value("requests", int64_t{0}), totals.value("errors", int64_t{0}),
                  totals.value("input_tokens", int64_t{0}), totals.value("output_tokens", int64_t{0})};
  }
  Counts& operator+=(const Counts& o) {
    requests += o.requests;
    errors += o.errors;
    input += o.input;
    output += o.output;
    return *this;
  }
  Counts Times(int64_t n) const { return Counts{requests * n, errors * n, input * n, output * n}; }
  bool operator==(const Counts& o) const {
    return requests == o.requests && errors == o.errors && input == o.input && output == o.output;
  }
};
std::ostream& operator<<(std::ostream& os, const Counts& c) {
  return os << "{requests " << c.requests << ", errors " << c.errors << ", input " << c.input << ", output "
            << c.output << "}";
}

class GatewayCrash : public ::testing::Test {
 protected:
  void SetUp() override {
    (void)InitLogging("warn");
    // A flush every 200 ms: the head test waits for one by the timer and kills the head before
    // the next.
    cluster_ = LocalCluster::Start("troupe-gateway-crash", "gwc",
                                   TwoNodeClusterYaml("gwc") +
                                       "gateway:\n  listen: 127.0.0.1:0\n  usage_flush_interval: 200ms\n");
    ASSERT_NE(cluster_, nullptr);
    client_ = cluster_->client.get();
    std::string url;
    std::getline(std::ifstream(cluster_->dir + "/head/gateway.url"), url);
    ASSERT_FALSE(url.empty()) << "troupe up's gateway wrote no " << cluster_->dir << "/head/gateway.url";
    port_ = PortOf(url);
  }

  // A test-model deployment of one replica, ready.
  void Deploy(const std::string& name, const std::string& backend) {
    testing::DeployTestModel(*client_, name, "default", backend, /*max_ongoing=*/4);
  }

  // A new key's secret (its id is key.substr(3, 12)).
  std::string Key(const Json& body) {
    auto made = client_->ApiCommand("key.create", "", body.dump(), 10s);
    EXPECT_TRUE(made.ok()) << made.status();
    return made.ok() ? Json::parse(*made).value("key", "") : "";
  }

  static Json Chat(const std::string& model, int max_tokens, bool stream = false) {
    return Json{{"model", model},
                {"messages", Json::array({Json{{"role", "user"}, {"content", "count these words"}}})},
                {"max_tokens", max_tokens},
                {"stream", stream}};
  }

  HttpReply Post(int port, const std::string& key, const Json& body) {
    return HttpCall(port, "POST", "/v1/chat/completions", {{"authorization", "Bearer " + key}}, body.dump(), 15s);
  }

  // One whole request that must be answered 200; what it served (1 request, its usage).
  Counts Served(const std::string& key, const Json& body) {
    HttpReply r = Post(port_, key, body);
    EXPECT_EQ(r.status, 200) << r.error << r.body;
    if (r.status != 200) return Counts{};
    const Json usage = Json::parse(r.body).at("usage");
    return Counts{1, 0, usage.at("prompt_tokens").get<int64_t>(), usage.at("completion_tokens").get<int64_t>()};
  }

  // The head's usage totals of `key` for `model` (a `usage` flushes first: every Settle that
  // arrived is in them).
  Counts Usage(const std::string& key, const std::string& model) {
    auto body = client_->ApiCommand("usage", "", Json{{"key_id", key.substr(3, 12)}, {"model", model}}.dump(), 10s);
    EXPECT_TRUE(body.ok()) << body.status();
    return body.ok() ? Counts::Of(Json::parse(*body)["totals"]) : Counts{-1, -1, -1, -1};
  }

  // Usage once `requests` of them have been settled (Settle is one-way: it may follow the
  // response by a little), within 10 s; then once more, to see nothing more comes.
  Counts UsageOnceSettled(const std::string& key, const std::string& model, int64_t requests) {
    const auto deadline = Clock::now() + 10s;
    Counts seen = Usage(key, model);
    while (seen.requests >= 0 && seen.requests < requests && Clock::now() < deadline) seen = Usage(key, model);
    EXPECT_GE(seen.requests, requests) << "settled requests of " << model << " never reached the head's usage";
    return Usage(key, model);
  }

  // What the head has committed to its LMDB file for `key` and `model` (what a kill -9 of the
  // head cannot take back), read from this process without asking the head (a usage query
  // through the head would flush first).
  Counts Durable(const std::string& key, const std::string& model) {
    storage::LmdbOptions options;
    options.path = cluster_->dir + "/head";
    options.map_size = uint64_t{256} << 20;  // the head's (cluster/head.cc)
    auto env = storage::LmdbEnv::Open(options);
    EXPECT_TRUE(env.ok()) << env.status();
    if (!env.ok()) return Counts{-1, -1, -1, -1};
    cluster::HeadStore store(env->get());
    cluster::UsageStore usage(&store);
    Status opened = usage.Open();
    EXPECT_TRUE(opened.ok()) << opened;
    auto rows = opened.ok() ? usage.Query({key.substr(3, 12), "", model, 0})
                            : StatusOr<std::vector<api::UsageRow>>(opened);
    EXPECT_TRUE(rows.ok()) << rows.status();
    Counts sum;
    for (const auto& row : rows.ok() ? *rows : std::vector<api::UsageRow>{}) {
      sum += Counts{static_cast<int64_t>(row.counts.requests), static_cast<int64_t>(row.counts.errors),
                    static_cast<int64_t>(row.counts.input_tokens), static_cast<int64_t>(row.counts.output_tokens)};
    }
    return sum;
  }

  Json Audit(bool verify) {
    auto audit = client_->Audit(0, verify, 10s);
    EXPECT_TRUE(audit.ok()) << audit.status();
    return audit.ok() ? Json::parse(*audit) : Json{{"records", Json::array()}};
  }

  std::unique_ptr<LocalCluster> cluster_;
  cluster::Client* client_ = nullptr;
  int port_ = 0;
};

// kill -9 of the head after some usage was flushed and more was served: a restarted head has
// every flushed count once, loses at most what was settled after the last flush, counts what
// it meters afterwards exactly once, and its audit chain still verifies with every record made
// before the kill.
TEST_F(GatewayCrash, AHeadKilledWithMinus9LosesAtMostTheLastBatchAndCountsNothingTwice) {
  ASSERT_NO_FATAL_FAILURE(Deploy("echo", "{tokens_per_second: 0}"));
  ASSERT_TRUE(client_->ApiCommand("tenant.create", "default", "{}", 10s).ok());
  const std::string key = Key({{"tenant", "default"}});
  const std::string probe = Key({{"tenant", "default"}});  // finds out when the cluster serves again
  const std::string gone = Key({{"tenant", "default"}});
  ASSERT_FALSE(key.empty() || probe.empty() || gone.empty());
  ASSERT_TRUE(client_->ApiCommand("key.revoke", gone.substr(3, 12), "", 10s).ok());
  const Json audit_before = Audit(true)["records"];
  ASSERT_GE(audit_before.size(), 5u) << audit_before.dump();

  // A: whole requests until all of them are durable (a usage query flushes).
  constexpr int kBefore = 8, kTimerFlushed = 2, kUnflushed = 4, kAfter = 5;
  const Json body = Chat("echo", 7);
  Counts one, served_a;
  for (int i = 0; i < kBefore; ++i) {
    const Counts c = Served(key, body);
    if (i == 0) one = c;
    EXPECT_EQ(c, one) << "request " << i << " of the same body was metered differently";
    served_a += c;
  }
  ASSERT_GT(one.input, 0);
  ASSERT_EQ(one.output, 7);
  const Counts durable_a = UsageOnceSettled(key, "echo", kBefore);
  ASSERT_EQ(durable_a, served_a) << "the head's usage before any crash differs from what was served";

  // B: two more, left to the head's flush timer until its LMDB file has them (the last flush
  // before the kill), then two more and kill -9 of the head: at most those two are lost.
  for (int i = 0; i < kTimerFlushed; ++i) EXPECT_EQ(Served(key, body), one);
  Counts timer_flushed = served_a;
  timer_flushed += one.Times(kTimerFlushed);
  const auto flush_deadline = Clock::now() + 10s;
  Counts durable = Durable(key, "echo");
  while (!(durable == timer_flushed) && durable.requests >= 0 && Clock::now() < flush_deadline) {
    durable = Durable(key, "echo");
  }
  ASSERT_EQ(durable, timer_flushed) << "the head's flush timer did not write the usage within 10 s";
  for (int i = kTimerFlushed; i < kUnflushed; ++i) EXPECT_EQ(Served(key, body), one);
  ASSERT_EQ(kill(cluster_->pids.at("head"), SIGKILL), 0);
  auto restarting = cluster_->up->ReadLineWithPrefix("head exited", 30s);
  ASSERT_TRUE(restarting.ok()) << "troupe up did not see its head die: " << restarting.status();

  // The restarted head (same data dir) serves through the same gateway again.
  const auto t_kill = Clock::now();
  HttpReply probed;
  while (Clock::now() - t_kill < 60s && (probed = Post(port_, probe, Chat("echo", 1))).status != 200) {
  }
  ASSERT_EQ(probed.status, 200) << "the gateway did not serve within 60 s of the head's restart: " << probed.error
                                << probed.body;
  std::printf("the gateway served again %lld ms after kill -9 of the head\n",
              static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t_kill).count()));

  // What the restarted head has: all of A, and of B a whole number of requests, at least the
  // two its timer flushed and at most the four served, each counted once.
  const Counts restarted = Usage(key, "echo");
  const int64_t kept = restarted.requests - kBefore;
  EXPECT_GE(kept, kTimerFlushed) << restarted << ": flushed usage was lost (it had " << timer_flushed << ")";
  EXPECT_LE(kept, kUnflushed) << restarted << ": more requests than were served (" << kBefore + kUnflushed << ")";
  Counts expected = served_a;
  expected += one.Times(kept);
  EXPECT_EQ(restarted, expected) << "the restarted head's usage is not A plus " << kept
                                 << " whole requests of B: something was counted twice or in part";
  std::printf("usage kept through kill -9 of the head: %lld of the %d requests served after the last forced flush "
              "(%d of them flushed by the timer before the kill)\n",
              static_cast<long long>(kept), kUnflushed, kTimerFlushed);

  // C: after the restart, every request is counted exactly once.
  Counts served_c;
  for (int i = 0; i < kAfter; ++i) served_c += Served(key, body);
  EXPECT_EQ(served_c, one.Times(kAfter));
  Counts final_expected = restarted;
  final_expected += served_c;
  EXPECT_EQ(UsageOnceSettled(key, "echo", restarted.requests + kAfter), final_expected)
      << "usage metered by the restarted head";

  // The audit chain: every record of before the kill is there unchanged, a new one links to the
  // last of them, and the whole chain verifies (Client and `troupe audit --verify`).
  ASSERT_FALSE(Key({{"tenant", "default"}}).empty());
  const Json after = Audit(true);
  EXPECT_TRUE(after["verification"].value("ok", false)) << after.dump();
  const Json& records = after["records"];
  ASSERT_EQ(records.size(), audit_before.size() + 1) << records.dump();
  for (size_t i = 0; i < audit_before.size(); ++i) {
    EXPECT_EQ(records[i].value("seq", 0u), audit_before[i].value("seq", 0u));
    EXPECT_EQ(records[i].value("hash", ""), audit_before[i].value("hash", "")) << records[i].dump();
  }
  EXPECT_EQ(records.back().value("action", ""), "key.create");
  EXPECT_EQ(records.back().value("prev_hash", ""), audit_before.back().value("hash", ""));
  auto cli = ChildProcess::Spawn({TROUPE_BIN, "audit", "-c", cluster_->config, "--verify"}, {}, /*merge_stderr=*/true);
  ASSERT_TRUE(cli.ok()) << cli.status();
  std::string out;
  for (auto line = (*cli)->ReadLine(20s); line.ok(); line = (*cli)->ReadLine(20s)) out += *line + "\n";
  auto exited = (*cli)->Wait(20s);
  ASSERT_TRUE(exited.ok()) << exited.status();
  EXPECT_TRUE(WIFEXITED(*exited) && WEXITSTATUS(*exited) == 0) << out;
  EXPECT_NE(out.find("chain verified: " + std::to_string(records.size()) + " records"), std::string::npos) << out;
}

// kill -9 of a gateway process with two streams in flight: the head cancels both reservations
// (the key's two concurrency slots and their reserved tokens come back at once, not by refill),
// and charges each as docs/gateway.md says a cancelled request is charged: one request, one
// error, 0 tokens. Nothing is counted twice.
TEST_F(GatewayCrash, AGatewayKilledWithMinus9MidStreamHasItsRequestsCancelledAndChargedOnce) {
  // 5 tokens a second: a 200-token stream runs for 40 s.
  ASSERT_NO_FATAL_FAILURE(Deploy("slow", "{tokens_per_second: 5, first_token_latency: 5ms}"));
  ASSERT_NO_FATAL_FAILURE(Deploy("echo", "{tokens_per_second: 0}"));
  ASSERT_TRUE(client_->ApiCommand("tenant.create", "default", "{}", 10s).ok());
  // Two requests at a time, 500 tokens a minute (8.3 a second of refill). Each stream reserves
  // its prompt estimate and 200: with both open, a 200-token request fits neither the slots nor,
  // for 15 s of refill, the tokens.
  const std::string key =
      Key({{"tenant", "default"}, {"limits", {{"max_concurrent", 2}, {"tokens_per_minute", 500}}}});
  ASSERT_FALSE(key.empty());
  int second_port = 0;
  auto second = testing::StartGateway(cluster_->config, &second_port);
  ASSERT_NE(second, nullptr);

  std::vector<int> streams;
  for (int i = 0; i < 2; ++i) {
    std::string seen;
    const int fd = testing::StartStream(second_port, key, Chat("slow", 200, true).dump(), &seen);
    ASSERT_GE(fd, 0) << "stream " << i << " through the second gateway did not start: " << seen;
    streams.push_back(fd);
  }
  HttpReply held = Post(port_, key, Chat("echo", 200));
  EXPECT_EQ(held.status, 429) << "the two streams do not hold the key's slots: " << held.body;

  second->Signal(SIGKILL);
  ASSERT_TRUE(second->Wait(10s).ok());
  for (int fd : streams) close(fd);
  const auto t_kill = Clock::now();
  HttpReply freed;
  while (Clock::now() - t_kill < 10s && (freed = Post(port_, key, Chat("echo", 200))).status == 429) {
  }
  const auto freed_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t_kill).count();
  ASSERT_EQ(freed.status, 200) << "the killed gateway's reservations were not given back within 10 s: " << freed.error
                               << freed.body;
  std::printf("slots and tokens back %lld ms after kill -9 of a gateway with two streams\n",
              static_cast<long long>(freed_ms));
  const Json usage = Json::parse(freed.body).at("usage");
  const Counts served{1, 0, usage.at("prompt_tokens").get<int64_t>(), usage.at("completion_tokens").get<int64_t>()};

  // Cancelled with their gateway: counted once each, as errors, with no tokens.
  EXPECT_EQ(UsageOnceSettled(key, "slow", 2), (Counts{2, 2, 0, 0}));
  EXPECT_EQ(UsageOnceSettled(key, "echo", 1), served);
}

}  // namespace
}  // namespace troupe
